//! Paths into a JSON request body (`metadata.user_id`, `input[*].id`), as `cache.ignore_fields`
//! writes them, and [`FieldSet`]: a set of them compiled into a tree that is walked while a body
//! is parsed, so leaving fields out costs no second pass.
//!
//! Syntax: field names joined by `.`; `[*]` is every element of an array, `[N]` element N, a
//! `*` segment every field of an object. A name with other characters than letters, digits, `_`,
//! `-`, `$`, `:` and `@` is written quoted: `["a.b"]`. A request body is an object, so a path
//! starts with a field name.
//!
//! The bottom of the tree: it imports nothing of relay's.

use std::fmt;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A field of an object, by name.
    Field(String),
    /// Every field of an object (`*`).
    AnyField,
    /// One element of an array (`[N]`).
    Index(usize),
    /// Every element of an array (`[*]`).
    Each,
}

/// A parsed path; [`FieldPath::parse`] says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    steps: Vec<Step>,
}

/// Why a string is not a path (the config loader names the key it came from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a field path cannot be empty")]
    Empty,
    #[error("{0:?} is not a field path: {1}")]
    Syntax(String, &'static str),
    #[error(
        "{0:?} can never apply: a request body is an object, so a path starts with a field name"
    )]
    StartsWithIndex(String),
    #[error("{0:?} would leave the whole body out of the key")]
    Everything(String),
}

impl FieldPath {
    /// Parses `a.b[*].c`, `input[0]`, `tools[*].*`, `["x.y"].z` (see the module docs).
    pub fn parse(s: &str) -> Result<FieldPath, PathError> {
        let src = s.trim();
        if src.is_empty() {
            return Err(PathError::Empty);
        }
        let bad = |why| PathError::Syntax(src.to_string(), why);
        let b = src.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        // Whether a `.` may (and must) come before a name here.
        let mut after_step = false;
        while i < b.len() {
            match b[i] {
                b'[' => {
                    let close = src[i..]
                        .find(']')
                        .ok_or_else(|| bad("a `[` is not closed"))?
                        + i;
                    let inner = &src[i + 1..close];
                    steps.push(if inner == "*" {
                        Step::Each
                    } else if let Some(q) =
                        inner.strip_prefix('"').and_then(|q| q.strip_suffix('"'))
                    {
                        if q.is_empty() {
                            return Err(bad("a quoted field name cannot be empty"));
                        }
                        Step::Field(q.to_string())
                    } else {
                        Step::Index(
                            inner
                                .parse()
                                .map_err(|_| bad("inside [] goes *, a number or a quoted name"))?,
                        )
                    });
                    i = close + 1;
                    after_step = true;
                }
                b'.' if after_step => {
                    i += 1;
                    after_step = false;
                    if i == b.len() {
                        return Err(bad("a path cannot end with `.`"));
                    }
                    if b[i] == b'.' || b[i] == b'[' {
                        return Err(bad("a `.` must be followed by a field name"));
                    }
                }
                b'.' => return Err(bad("a `.` must follow a field name or `]`")),
                _ if after_step => return Err(bad("steps are joined by `.`")),
                _ => {
                    let end = src[i..].find(['.', '[']).map_or(b.len(), |e| e + i);
                    let name = &src[i..end];
                    if name == "*" {
                        steps.push(Step::AnyField);
                    } else if name.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'$' | b':' | b'@')
                    }) {
                        steps.push(Step::Field(name.to_string()));
                    } else {
                        return Err(bad("quote a field name with other characters: [\"a b\"]"));
                    }
                    i = end;
                    after_step = true;
                }
            }
        }
        match steps.first() {
            Some(Step::Index(_) | Step::Each) => Err(PathError::StartsWithIndex(src.to_string())),
            Some(Step::AnyField) if steps.len() == 1 => Err(PathError::Everything(src.to_string())),
            _ => Ok(FieldPath { steps }),
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Field(n) if is_plain(n) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(n)?;
                }
                Step::Field(n) => write!(f, "[{n:?}]")?,
                Step::AnyField => f.write_str(if i > 0 { ".*" } else { "*" })?,
                Step::Index(n) => write!(f, "[{n}]")?,
                Step::Each => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name != "*"
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'$' | b':' | b'@'))
}

/// A set of paths, compiled into a tree walked alongside the body: at each object or array, the
/// [`Node`] of that value says which of its fields or elements are left out and which to walk into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSet {
    paths: Vec<FieldPath>,
    root: Node,
    /// A digest of the paths as written, in order: what a key memo mixes in (no allocation per
    /// request).
    digest: [u8; 32],
}

/// The part of a [`FieldSet`] under one value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The value itself is left out.
    drop: bool,
    fields: Vec<(String, Node)>,
    any_field: Option<Box<Node>>,
    indexes: Vec<(usize, Node)>,
    each: Option<Box<Node>>,
}

/// What is under nothing: leaves everything in.
static EMPTY: Node = Node {
    drop: false,
    fields: Vec::new(),
    any_field: None,
    indexes: Vec::new(),
    each: None,
};

impl Default for FieldSet {
    /// The empty set.
    fn default() -> FieldSet {
        FieldSet::new(Vec::new())
    }
}

impl FieldSet {
    /// The set of `paths` (duplicates are harmless).
    pub fn new(paths: Vec<FieldPath>) -> FieldSet {
        let mut root = Node::default();
        for p in &paths {
            root.insert(p.steps());
        }
        root.close();
        let mut h = blake3::Hasher::new();
        for p in &paths {
            let p = p.to_string();
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        FieldSet {
            paths,
            root,
            digest: *h.finalize().as_bytes(),
        }
    }

    /// A digest of the paths, in order.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Parses each string ([`FieldPath::parse`]); the error of the first that fails, with its index.
    pub fn parse<S: AsRef<str>>(paths: &[S]) -> Result<FieldSet, (usize, PathError)> {
        let parsed = paths
            .iter()
            .enumerate()
            .map(|(i, p)| FieldPath::parse(p.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FieldSet::new(parsed))
    }

    /// This set and `other`'s paths together.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut paths = self.paths.clone();
        for p in &other.paths {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
        }
        FieldSet::new(paths)
    }

    pub fn paths(&self) -> &[FieldPath] {
        &self.paths
    }

    /// The node of the body itself.
    pub fn root(&self) -> &Node {
        &self.root
    }
}

impl Node {
    fn insert(&mut self, steps: &[Step]) {
        let Some((first, rest)) = steps.split_first() else {
            self.drop = true;
            return;
        };
        let child = match first {
            Step::Field(name) => match self.fields.iter().position(|(n, _)| n == name) {
                Some(i) => &mut self.fields[i].1,
                None => {
                    self.fields.push((name.clone(), Node::default()));
                    &mut self.fields.last_mut().expect("just pushed").1
                }
            },
            Step::AnyField => self.any_field.get_or_insert_with(Default::default),
            Step::Index(n) => match self.indexes.iter().position(|(i, _)| i == n) {
                Some(i) => &mut self.indexes[i].1,
                None => {
                    self.indexes.push((*n, Node::default()));
                    &mut self.indexes.last_mut().expect("just pushed").1
                }
            },
            Step::Each => self.each.get_or_insert_with(Default::default),
        };
        child.insert(rest);
    }

    /// Merges `*` and `[*]` into every named field and index, so that one lookup finds all that
    /// applies to a value (`a.*.x` and `a.b.y` both under `a.b`).
    fn close(&mut self) {
        if let Some(any) = &mut self.any_field {
            any.close();
        }
        if let Some(each) = &mut self.each {
            each.close();
        }
        let any = self.any_field.as_deref().cloned();
        for (_, n) in &mut self.fields {
            if let Some(any) = &any {
                n.merge(any);
            }
            n.close();
        }
        let each = self.each.as_deref().cloned();
        for (_, n) in &mut self.indexes {
            if let Some(each) = &each {
                n.merge(each);
            }
            n.close();
        }
    }

    fn merge(&mut self, other: &Node) {
        self.drop |= other.drop;
        for (name, n) in &other.fields {
            match self.fields.iter_mut().find(|(m, _)| m == name) {
                Some((_, mine)) => mine.merge(n),
                None => self.fields.push((name.clone(), n.clone())),
            }
        }
        for (i, n) in &other.indexes {
            match self.indexes.iter_mut().find(|(j, _)| j == i) {
                Some((_, mine)) => mine.merge(n),
                None => self.indexes.push((*i, n.clone())),
            }
        }
        if let Some(o) = &other.any_field {
            self.any_field.get_or_insert_with(Default::default).merge(o);
        }
        if let Some(o) = &other.each {
            self.each.get_or_insert_with(Default::default).merge(o);
        }
    }

    /// Whether the value itself is left out.
    pub fn drops(&self) -> bool {
        self.drop
    }

    /// The node of field `name` of this object.
    pub fn field(&self, name: &str) -> &Node {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, n)| n)
            .or(self.any_field.as_deref())
            .unwrap_or(&EMPTY)
    }

    /// The node of element `i` of this array.
    pub fn element(&self, i: usize) -> &Node {
        self.indexes
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, n)| n)
            .or(self.each.as_deref())
            .unwrap_or(&EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print_back() {
        for s in [
            "user",
            "metadata.user_id",
            "input[*].id",
            "input[0].content[*].text",
            "tools[*].*",
            "a.*.b",
            "[\"a.b\"].c",
            "x[\"with space\"]",
        ] {
            let p = FieldPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            FieldPath::parse("input[*].id").unwrap().steps(),
            &[
                Step::Field("input".into()),
                Step::Each,
                Step::Field("id".into())
            ]
        );
    }

    #[test]
    fn paths_that_cannot_apply_are_refused() {
        for (s, want) in [
            ("", "empty"),
            ("a..b", "followed by a field name"),
            ("a.", "cannot end"),
            (".a", "must follow"),
            ("a[", "not closed"),
            ("a[x]", "inside []"),
            ("a[*]b", "joined by"),
            ("a b", "quote"),
            ("[*].id", "starts with a field name"),
            ("[0]", "starts with a field name"),
            ("*", "whole body"),
            ("a[\"\"]", "cannot be empty"),
        ] {
            let e = FieldPath::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn the_tree_finds_every_path_that_applies() {
        let set = FieldSet::parse(&["a.*.x", "a.b.y", "l[*].id", "l[1].z", "top"]).unwrap();
        let r = set.root();
        assert!(r.field("top").drops() && !r.field("other").drops());
        let b = r.field("a").field("b");
        assert!(b.field("x").drops() && b.field("y").drops() && !b.field("z").drops());
        let c = r.field("a").field("c");
        assert!(c.field("x").drops() && !c.field("y").drops());
        let l = r.field("l");
        assert!(l.element(0).field("id").drops() && !l.element(0).field("z").drops());
        assert!(l.element(1).field("id").drops() && l.element(1).field("z").drops());
        assert_eq!(
            r.field("none"),
            &EMPTY,
            "a field no path names: nothing under it"
        );
        let (i, e) = FieldSet::parse(&["ok", "bad..path"]).unwrap_err();
        assert_eq!(i, 1, "{e}");
    }
}
