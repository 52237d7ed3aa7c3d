//! The canonical form of a JSON request body, the part of a cache key that makes key order and
//! whitespace not matter: written while the body is parsed, without building a value.

use std::fmt;

use serde::Serialize;

use crate::fieldpath::{FieldSet, Node};

/// A rewrite of string values: `Some(new)` to write `new` instead.
pub(crate) type Rewrite = dyn Fn(&str) -> Option<String>;

/// The canonical form of a JSON body, or `None` when the body is not JSON: compact, object keys
/// sorted at every depth (a repeated key: its last value), the fields of `ignore` left out (an
/// object whose `type` is `"item_reference"` keeps them: it is nothing but its id). Byte for byte
/// what serializing the parsed `serde_json::Value` writes (the key layout depends on it; a test
/// compares the two on 20,000 generated bodies), written while parsing instead of building the
/// value (docs/performance.md has what that saves), and strings without escapes are copied as
/// they are. `text`, when given, rewrites every string value (not object keys) first: the
/// portable form ([`super::portable`]).
pub(crate) fn canonical_json(
    ignore: &FieldSet,
    text: Option<&Rewrite>,
    body: &[u8],
) -> Option<Vec<u8>> {
    use serde::de::DeserializeSeed;
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    // Only objects and arrays are worth parsing; a bare scalar body is hashed raw too.
    if *first != b'{' && *first != b'[' {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut de = serde_json::Deserializer::from_slice(body);
    Canonical {
        out: &mut out,
        skip: ignore.root(),
        text,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(out)
}

/// Writes one JSON value's canonical form to `out` as it is parsed (see [`canonical_json`]);
/// `skip`: what of this value to leave out; `text`: the rewrite of string values.
struct Canonical<'o> {
    out: &'o mut Vec<u8>,
    skip: &'o Node,
    text: Option<&'o Rewrite>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Canonical<'_> {
    /// A scalar, written as serde_json writes it (numbers through the same formatting).
    fn scalar<T: Serialize + ?Sized, E: serde::de::Error>(self, v: &T) -> Result<(), E> {
        serde_json::to_writer(self.out, v).map_err(E::custom)
    }
}

impl<'de> serde::de::Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(&v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(&v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // What `Value` keeps of a float (`Number::from_f64`; JSON has no NaN or infinity).
        match serde_json::Number::from_f64(v) {
            Some(n) => self.scalar(&n),
            None => {
                self.out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        if let Some(changed) = self.text.and_then(|t| t(v)) {
            return self.scalar(changed.as_str());
        }
        // Borrowed: the body spelled it without escapes, so it holds no quote, backslash or
        // control character, and serde_json would write it as it is.
        self.out.reserve(v.len() + 2);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        match self.text.and_then(|t| t(v)) {
            Some(changed) => self.scalar(changed.as_str()),
            None => self.scalar(v),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        for i in 0.. {
            let node = self.skip.element(i);
            if node.drops() {
                if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let item = Canonical {
                out: &mut *self.out,
                skip: node,
                text: self.text,
            };
            if seq.next_element_seed(item)?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Each value is written to `values` as it comes; the object is written sorted at the end.
        let mut values = Vec::new();
        // Name, where its value is in `values`, and whether `ignore` leaves it out.
        type Field<'de> = (std::borrow::Cow<'de, str>, std::ops::Range<usize>, bool);
        let mut fields: Vec<Field<'de>> = Vec::new();
        let mut dropped = false;
        while let Some(KeyStr(name)) = map.next_key()? {
            let node = self.skip.field(&name);
            let drop = node.drops();
            if drop && name != "type" {
                // Kept aside, not skipped: an item reference keeps it (see `canonical_json`).
                dropped = true;
            }
            let start = values.len();
            map.next_value_seed(Canonical {
                out: &mut values,
                skip: node,
                text: self.text,
            })?;
            fields.push((name, start..values.len(), drop));
        }
        // Stable: of a repeated name, the last stays last, and only the last is written.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let reference = dropped
            && fields
                .iter()
                .rev()
                .find(|f| f.0 == "type")
                .is_some_and(|f| &values[f.1.clone()] == b"\"item_reference\"");
        self.out.push(b'{');
        let mut first = true;
        for (i, (name, range, drop)) in fields.iter().enumerate() {
            if fields.get(i + 1).is_some_and(|next| next.0 == *name) {
                continue;
            }
            if *drop && !(reference && name != "type") {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut *self.out, name.as_ref())
                .map_err(serde::de::Error::custom)?;
            self.out.push(b':');
            self.out.extend_from_slice(&values[range.clone()]);
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct KeyStr<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::Serializer;
    use serde_json::Value;

    /// The canonical form as relay first wrote it: parse a `Value`, serialize it sorted. The
    /// streaming [`canonical_json`] must write exactly these bytes (keys in files depend on it).
    fn canonical_via_value(ignore_fields: &[String], body: &[u8]) -> Option<Vec<u8>> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' && *first != b'[' {
            return None;
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        serde_json::to_vec(&ByValue {
            value: &value,
            skip: ignore_fields,
        })
        .ok()
    }

    /// Serializes a JSON value with object keys sorted at every depth, leaving out `skip` fields of the
    /// top-level object only.
    struct ByValue<'a> {
        value: &'a Value,
        skip: &'a [String],
    }

    impl Serialize for ByValue<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.value {
                Value::Object(map) => {
                    let mut fields: Vec<(&String, &Value)> = map
                        .iter()
                        .filter(|(k, _)| !self.skip.iter().any(|skip| skip == *k))
                        .collect();
                    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    let mut m = s.serialize_map(Some(fields.len()))?;
                    for (k, v) in fields {
                        m.serialize_entry(
                            k,
                            &ByValue {
                                value: v,
                                skip: &[],
                            },
                        )?;
                    }
                    m.end()
                }
                Value::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for v in items {
                        seq.serialize_element(&ByValue {
                            value: v,
                            skip: &[],
                        })?;
                    }
                    seq.end()
                }
                scalar => scalar.serialize(s),
            }
        }
    }

    /// A seeded pseudo-random JSON text: nested objects and arrays, repeated and escaped keys,
    /// every kind of number and string, random whitespace.
    fn random_json(seed: &mut u64, depth: u32) -> String {
        fn next_in(seed: &mut u64, n: u64) -> u64 {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        }
        const WS: [&str; 5] = [" ", "", "\n", "\t ", ""];
        const NUMBERS: [&str; 14] = [
            "0",
            "-0",
            "7",
            "-12",
            "18446744073709551615",
            "-9223372036854775808",
            "1e3",
            "1.0",
            "-0.0",
            "3.14159",
            "2.5E-7",
            "123456789012345678901234567890",
            "1e308",
            "0.1",
        ];
        const STRINGS: [&str; 9] = [
            "",
            "plain",
            r"tab\there",
            r#"quote\"d"#,
            r"\u00e9t\u00e9",
            "snow \u{2603}",
            r"\ud83d\ude00",
            r"back\\slash",
            r"ctl\u0001",
        ];
        const KEYS: [&str; 10] = [
            "model", "user", "metadata", "b", "a", "\u{e9}", r"a\u0062", "ab", "z", "messages",
        ];
        let pick = next_in(seed, if depth == 0 { 7 } else { 9 });
        let w = WS[next_in(seed, 5) as usize];
        match pick {
            0 => ["null", "true", "false"][next_in(seed, 3) as usize].to_string(),
            1 => NUMBERS[next_in(seed, 14) as usize].to_string(),
            2 => format!("{w}\"{}\"", STRINGS[next_in(seed, 9) as usize]),
            3..=6 if depth < 6 => {
                let n = next_in(seed, 5);
                let fields: Vec<String> = (0..n)
                    .map(|_| {
                        let k = KEYS[next_in(seed, 10) as usize];
                        format!("{w}\"{k}\"{w}:{}", random_json(seed, depth + 1))
                    })
                    .collect();
                format!("{{{}{w}}}", fields.join(","))
            }
            _ if depth < 6 => {
                let n = next_in(seed, 4);
                let items: Vec<String> = (0..n).map(|_| random_json(seed, depth + 1)).collect();
                format!("[{w}{}]", items.join(&format!(",{w}")))
            }
            _ => "1".to_string(),
        }
    }

    #[test]
    fn streaming_canonical_form_is_byte_for_byte_the_values() {
        let ignore: Vec<String> = vec!["user".into(), "metadata".into()];
        let fixed = [
            r#"{"b":1,"a":{"y":[1,2,{"d":null,"c":true}],"x":"é"},"user":"u","metadata":{"k":1}}"#,
            r#"{"a":1,"a":2,"b":{"c":1,"c":{"d":[]}},"user":1,"user":2}"#,
            r#"[{"user":"kept below the top"},{"z":0,"a":-0.0}]"#,
            r#"{"n":[0,-0,1e3,1E3,1.5e-7,18446744073709551615,18446744073709551616,-9223372036854775809,1e308]}"#,
            r#"{"s":"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t\u0001","\u0061":"escaped key","a":"plain key"}"#,
            "  {\n \"model\" : \"gpt-4o\" ,\t\"messages\":[ ] , \"x\":{}}  ",
            r#"{}"#,
            r#"[]"#,
            r#"{"a":1} trailing"#,
            r#"{"a":1,}"#,
            r#"{"a":1e400}"#,
            r#"[1,2"#,
            r#"{"bad":"\ud800"}"#,
        ];
        let (set, none) = (FieldSet::parse(&ignore).unwrap(), FieldSet::default());
        for body in fixed {
            for (skip, set) in [(&ignore[..], &set), (&[], &none)] {
                assert_eq!(
                    canonical_json(set, None, body.as_bytes()),
                    canonical_via_value(skip, body.as_bytes()),
                    "{body}"
                );
            }
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            canonical_json(&set, None, deep.as_bytes()),
            None,
            "nesting limit"
        );
        assert_eq!(canonical_via_value(&ignore, deep.as_bytes()), None);
        let mut seed = 7;
        let mut objects = 0;
        for _ in 0..20_000 {
            let body = random_json(&mut seed, 0);
            let ours = canonical_json(&set, None, body.as_bytes());
            objects += usize::from(ours.as_ref().is_some_and(|o| o.starts_with(b"{")));
            assert_eq!(
                ours,
                canonical_via_value(&ignore, body.as_bytes()),
                "{body}"
            );
        }
        assert!(objects > 5_000, "the generator makes objects: {objects}");
    }

    use super::*;
}
