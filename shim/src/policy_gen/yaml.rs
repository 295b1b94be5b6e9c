//! A manifest file's YAML documents as JSON values, and where a field is in the text.
//!
//! `serde_norway` gives values without positions; a field's line is found by parsing the
//! document again with a seed that walks to the field and fails there: the parser stamps its
//! own position on that failure. Exact for block and flow style alike, and only paid for the
//! fields a message or an in-place edit needs.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a document, written as `spec.containers[0].image`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// `a.b.c` (keys only).
    pub fn keys(keys: &[&str]) -> FieldPath {
        FieldPath(keys.iter().map(|k| Seg::Key(k.to_string())).collect())
    }

    pub fn join(&self, other: &FieldPath) -> FieldPath {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }

    /// The value at this path in `v`.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for s in &self.0 {
            cur = match s {
                Seg::Key(k) => cur.get(k)?,
                Seg::Index(i) => cur.get(*i)?,
            };
        }
        Some(cur)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// One YAML document of the file (`null` for an empty one: indices stay those of the stream).
#[derive(Debug, Clone)]
pub struct Document {
    pub index: usize,
    pub value: Value,
}

/// A parse error with the parser's position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Every document of `text`, as JSON values (YAML keys must be strings, as Kubernetes wants).
pub fn documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut out = Vec::new();
    for (index, d) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(d).map_err(|e| {
            let loc = e.location();
            YamlError {
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                // The parser's own text ends with "at line L column C": the position is
                // given separately.
                message: strip_position(&e.to_string()),
            }
        })?;
        out.push(Document { index, value });
    }
    Ok(out)
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Where the field at `path` of document `doc` is: (line, column), 1-based, of its key (of the
/// element itself for a sequence index). `None` if there is no such field.
pub fn locate(text: &str, doc: usize, path: &FieldPath) -> Option<(usize, usize)> {
    if path.0.is_empty() {
        return None;
    }
    let d = serde_norway::Deserializer::from_str(text).nth(doc)?;
    match (Seek { path: &path.0 }).deserialize(d) {
        Ok(()) => None,
        // The message is prefixed with the parser's path ("spec.containers[0]: ...").
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        Err(_) => None,
    }
}

/// The 1-based line of a field, or of its nearest ancestor that can be found.
pub fn line_of(text: &str, doc: usize, path: &FieldPath) -> Option<usize> {
    let mut p = path.clone();
    while !p.0.is_empty() {
        if let Some((line, _)) = locate(text, doc, &p) {
            return Some(line);
        }
        p.0.pop();
    }
    None
}

/// The messages the seek ends with: found (with the parser's position) or not.
const FOUND: &str = "kata-cc-seek-found";
const NOT_FOUND: &str = "kata-cc-seek-not-found";

struct Seek<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.first() {
            // The element itself: fail on its first event.
            None => d.deserialize_any(Fail),
            Some(_) => d.deserialize_any(SeekVisitor { path: self.path }),
        }
    }
}

struct SeekVisitor<'p> {
    path: &'p [Seg],
}

impl<'de> Visitor<'de> for SeekVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping or a sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Seg::Key(want)) = self.path.first() else {
            return Err(de::Error::custom(NOT_FOUND));
        };
        let last = self.path.len() == 1;
        while let Some(hit) = map.next_key_seed(KeySeed { want, last })? {
            if hit {
                return map.next_value_seed(Seek {
                    path: &self.path[1..],
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(de::Error::custom(NOT_FOUND))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Seg::Index(want)) = self.path.first() else {
            return Err(de::Error::custom(NOT_FOUND));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(NOT_FOUND));
            }
        }
        match seq.next_element_seed(Seek {
            path: &self.path[1..],
        })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom(NOT_FOUND)),
        }
    }

    // A scalar where the path goes on: the field is not there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(NOT_FOUND))
    }
}

/// A mapping key: `Ok(true)` when it is the one wanted; when it is also the end of the path,
/// the failure that carries its position.
struct KeySeed<'a> {
    want: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        if v != self.want {
            Ok(false)
        } else if self.last {
            Err(E::custom(FOUND))
        } else {
            Ok(true)
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Fails on whatever comes: the parser stamps the element's position on the failure.
struct Fail;

impl<'de> Visitor<'de> for Fail {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
apiVersion: v1
kind: ConfigMap
data: {a: b}
---
# a pod
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: one
    image: busybox
  - name: two
    image: busybox
    env: [{name: X, value: y}]
---
";

    #[test]
    fn documents_keep_stream_indices() {
        let docs = documents(TEXT).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].value["kind"], "Pod");
        assert!(docs[2].value.is_null());
    }

    #[test]
    fn fields_are_found_in_block_and_flow_style() {
        let p = FieldPath::keys(&["spec", "containers"]);
        assert_eq!(locate(TEXT, 1, &p), Some((11, 3)));
        assert_eq!(locate(TEXT, 1, &p.index(1)), Some((14, 5)));
        assert_eq!(locate(TEXT, 1, &p.index(1).key("image")), Some((15, 5)));
        let env = p.index(1).key("env").index(0).key("value");
        assert_eq!(locate(TEXT, 1, &env), Some((16, 21)));
        assert_eq!(
            locate(TEXT, 0, &FieldPath::keys(&["data", "a"])),
            Some((3, 8))
        );
        assert_eq!(locate(TEXT, 1, &p.index(2)), None);
        assert_eq!(locate(TEXT, 1, &FieldPath::keys(&["spec", "nope"])), None);
        // The nearest ancestor stands in for a missing field.
        assert_eq!(
            line_of(TEXT, 1, &p.index(0).key("nope")),
            Some(12),
            "{}",
            p.index(0).key("nope")
        );
        assert_eq!(p.index(1).key("env").to_string(), "spec.containers[1].env");
    }

    #[test]
    fn a_syntax_error_has_the_parsers_line() {
        let e = documents("kind: Pod\nspec:\n  containers: [\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e:?}");
        let e = documents("a: 1\n b: 2\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(!e.message.contains(" at line "), "{e:?}");
    }
}
