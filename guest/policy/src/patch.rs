//! JSON patch (RFC 6902) on the policy's data document: the `ops` a policy returns with
//! `{"allowed": true, "ops": [...]}` to record state (e.g. `/pstate/...`) for later requests.

use serde_json::Value;

/// Why a state op could not be applied: each names the op and the path.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("op without a string \"op\": {0}")]
    NoOp(Value),
    #[error("{op}: no string \"path\"")]
    NoPath { op: String },
    #[error("{op} {path}: no {field}")]
    Missing {
        op: String,
        path: String,
        field: &'static str,
    },
    #[error("{op} {path}: no such path")]
    NoSuchPath { op: &'static str, path: String },
    #[error("test {path}: is {is}, expected {expected}")]
    TestFailed {
        path: String,
        is: Value,
        expected: Value,
    },
    #[error("move {from} -> {path}: into its own child")]
    IntoOwnChild { from: String, path: String },
    #[error("unknown op {op:?} at {path}")]
    UnknownOp { op: String, path: String },
    #[error("the whole document cannot be replaced by a state op")]
    WholeDocument,
    #[error("path {0:?} does not start with '/'")]
    NotAbsolute(String),
    #[error("add {path}: parent {parent:?} does not exist")]
    NoParent { path: String, parent: String },
    #[error("{op} {path}: bad array index {token:?}")]
    BadIndex {
        op: &'static str,
        path: String,
        token: String,
    },
    #[error("add {path}: parent is not an object or array")]
    NotContainer { path: String },
}

/// Applies one op; the error names the op and the path.
pub fn apply(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let kind = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::NoOp(op.clone()))?;
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::NoPath { op: kind.into() })?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| missing(kind, path, "\"value\""))
    };
    let from = || {
        op.get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| missing(kind, path, "string \"from\""))
    };
    match kind {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(|_| ()),
        "replace" => {
            let target = doc
                .pointer_mut(path)
                .ok_or_else(|| no_such_path("replace", path))?;
            *target = value()?;
            Ok(())
        }
        "test" => {
            let want = value()?;
            match doc.pointer(path) {
                Some(v) if *v == want => Ok(()),
                Some(v) => Err(PatchError::TestFailed {
                    path: path.into(),
                    is: v.clone(),
                    expected: want,
                }),
                None => Err(no_such_path("test", path)),
            }
        }
        "move" => {
            let from = from()?;
            if path.starts_with(&format!("{from}/")) {
                return Err(PatchError::IntoOwnChild {
                    from: from.into(),
                    path: path.into(),
                });
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        "copy" => {
            let from = from()?;
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| no_such_path("copy", from))?;
            add(doc, path, v)
        }
        other => Err(PatchError::UnknownOp {
            op: other.into(),
            path: path.into(),
        }),
    }
}

/// Splits `/a/b~1c` into its parent pointer and the unescaped last token.
fn split(path: &str) -> Result<(&str, String), PatchError> {
    if path.is_empty() {
        return Err(PatchError::WholeDocument);
    }
    if !path.starts_with('/') {
        return Err(PatchError::NotAbsolute(path.into()));
    }
    let at = path.rfind('/').unwrap_or(0);
    let token = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let (parent, token) = split(path)?;
    let target = doc
        .pointer_mut(parent)
        .ok_or_else(|| PatchError::NoParent {
            path: path.into(),
            parent: parent.into(),
        })?;
    match target {
        Value::Object(map) => {
            map.insert(token, value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if token == "-" {
                items.len()
            } else {
                token
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| bad_index("add", path, &token))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(PatchError::NotContainer { path: path.into() }),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, token) = split(path)?;
    let target = doc
        .pointer_mut(parent)
        .ok_or_else(|| no_such_path("remove", path))?;
    match target {
        Value::Object(map) => map
            .remove(&token)
            .ok_or_else(|| no_such_path("remove", path)),
        Value::Array(items) => {
            let index = token
                .parse::<usize>()
                .ok()
                .filter(|i| *i < items.len())
                .ok_or_else(|| bad_index("remove", path, &token))?;
            Ok(items.remove(index))
        }
        _ => Err(no_such_path("remove", path)),
    }
}

fn missing(op: &str, path: &str, field: &'static str) -> PatchError {
    PatchError::Missing {
        op: op.into(),
        path: path.into(),
        field,
    }
}

fn no_such_path(op: &'static str, path: &str) -> PatchError {
    PatchError::NoSuchPath {
        op,
        path: path.into(),
    }
}

fn bad_index(op: &'static str, path: &str, token: &str) -> PatchError {
    PatchError::BadIndex {
        op,
        path: path.into(),
        token: token.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops() {
        let mut d = json!({});
        apply(&mut d, &json!({"op":"add","path":"/pstate","value":{}})).unwrap();
        apply(
            &mut d,
            &json!({"op":"add","path":"/pstate/a~1b","value":[1]}),
        )
        .unwrap();
        apply(
            &mut d,
            &json!({"op":"add","path":"/pstate/a~1b/-","value":2}),
        )
        .unwrap();
        apply(
            &mut d,
            &json!({"op":"add","path":"/pstate/a~1b/0","value":0}),
        )
        .unwrap();
        assert_eq!(d, json!({"pstate":{"a/b":[0,1,2]}}));
        apply(
            &mut d,
            &json!({"op":"replace","path":"/pstate/a~1b/1","value":9}),
        )
        .unwrap();
        apply(
            &mut d,
            &json!({"op":"test","path":"/pstate/a~1b/1","value":9}),
        )
        .unwrap();
        assert!(apply(
            &mut d,
            &json!({"op":"test","path":"/pstate/a~1b/1","value":8})
        )
        .is_err());
        apply(
            &mut d,
            &json!({"op":"copy","from":"/pstate/a~1b","path":"/pstate/c"}),
        )
        .unwrap();
        apply(
            &mut d,
            &json!({"op":"move","from":"/pstate/c","path":"/pstate/d"}),
        )
        .unwrap();
        apply(&mut d, &json!({"op":"remove","path":"/pstate/a~1b/2"})).unwrap();
        assert_eq!(d, json!({"pstate":{"a/b":[0,9],"d":[0,9,2]}}));
        let e = apply(&mut d, &json!({"op":"add","path":"/nope/x","value":1})).unwrap_err();
        assert!(e.to_string().contains("/nope"), "{e}");
        assert!(apply(&mut d, &json!({"op":"frob","path":"/x"})).is_err());
    }
}
