//! Where two request bodies differ, as the cache sees them: both in their portable form with the
//! ignored fields left out, compared value by value. What an offline miss and `relay cache why`
//! report about the nearest recording.

use serde_json::Value;

use super::canonical::canonical_json;
use super::portable::Portable;
use crate::fieldpath::FieldSet;

/// How two bodies differ: the first `limit` paths (in document order) and how many differ in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Differences {
    pub paths: Vec<String>,
    pub count: usize,
}

/// Most differences counted: past this, two bodies are simply far apart.
const COUNT_CAP: usize = 10_000;

/// The differences between `a` and `b` (request bodies). A body that is not JSON differs at `$`
/// unless both are the same bytes.
pub fn differences(ignore: &FieldSet, a: &[u8], b: &[u8], limit: usize) -> Differences {
    let (Some(va), Some(vb)) = (view(ignore, a), view(ignore, b)) else {
        let same = a == b;
        return Differences {
            paths: if same { vec![] } else { vec!["$".to_string()] },
            count: usize::from(!same),
        };
    };
    let mut d = Differences::default();
    walk(&va, &vb, &mut String::new(), limit, &mut d);
    d
}

/// The body as the portable key sees it, parsed.
fn view(ignore: &FieldSet, body: &[u8]) -> Option<Value> {
    let portable = Portable::of(body);
    let rewrite = move |s: &str| portable.rewrite(s);
    let canonical = canonical_json(ignore, Some(&rewrite), body)?;
    serde_json::from_slice(&canonical).ok()
}

fn walk(a: &Value, b: &Value, path: &mut String, limit: usize, d: &mut Differences) {
    if d.count >= COUNT_CAP {
        return;
    }
    let differ = |path: &str, d: &mut Differences| {
        d.count += 1;
        if d.paths.len() < limit {
            d.paths
                .push(if path.is_empty() { "$" } else { path }.to_string());
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Canonical: both sorted by key.
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let at = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
                match (x.get(name), y.get(name)) {
                    (Some(p), Some(q)) => walk(p, q, path, limit, d),
                    _ => differ(path, d),
                }
                path.truncate(at);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let at = path.len();
                path.push_str(&format!("[{i}]"));
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => walk(p, q, path, limit, d),
                    _ => differ(path, d),
                }
                path.truncate(at);
            }
        }
        (p, q) if p == q => {}
        _ => differ(path, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_document_order_and_counted() {
        let none = FieldSet::default();
        let a = br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x"}],"max_tokens":5}"#;
        let b = br#"{"max_tokens":6,"messages":[{"role":"user","content":"ho"}],"model":"m"}"#;
        let d = differences(&none, a, b, 2);
        assert_eq!(d.paths, ["max_tokens", "messages[0].content"]);
        assert_eq!(d.count, 3, "messages[1] too");
        assert_eq!(differences(&none, a, a, 5), Differences::default());
        // Ignored fields and portable text do not count.
        let ignore = FieldSet::parse(&["metadata"]).unwrap();
        let c = br#"{"metadata":{"s":1},"system":"Today's date is 2026-12-01."}"#;
        let e = br#"{"metadata":{"s":2},"system":"Today's date is 2026-12-02."}"#;
        assert_eq!(differences(&ignore, c, e, 5).count, 0);
        assert_eq!(differences(&none, b"x", b"y", 5).paths, ["$"]);
    }
}
