//! JSON patch (RFC 6902) on the policy's data document: the `ops` a policy returns with
//! `{"allowed": true, "ops": [...]}` to record state (e.g. `/pstate/...`) for later requests.

use serde_json::Value;

/// Applies one op; the error names the op and the path.
pub fn apply(doc: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("op without a string \"op\": {op}"))?;
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{kind}: no string \"path\""))?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{kind} {path}: no \"value\""))
    };
    let from = || {
        op.get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{kind} {path}: no string \"from\""))
    };
    match kind {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(|_| ()),
        "replace" => {
            let target = doc
                .pointer_mut(path)
                .ok_or_else(|| format!("replace {path}: no such path"))?;
            *target = value()?;
            Ok(())
        }
        "test" => {
            let want = value()?;
            match doc.pointer(path) {
                Some(v) if *v == want => Ok(()),
                Some(v) => Err(format!("test {path}: is {v}, expected {want}")),
                None => Err(format!("test {path}: no such path")),
            }
        }
        "move" => {
            let from = from()?;
            if path.starts_with(&format!("{from}/")) {
                return Err(format!("move {from} -> {path}: into its own child"));
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        "copy" => {
            let from = from()?;
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("copy {from}: no such path"))?;
            add(doc, path, v)
        }
        other => Err(format!("unknown op {other:?} at {path}")),
    }
}

/// Splits `/a/b~1c` into its parent pointer and the unescaped last token.
fn split(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the whole document cannot be replaced by a state op".into());
    }
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    let at = path.rfind('/').unwrap_or(0);
    let token = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, token) = split(path)?;
    let target = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("add {path}: parent {parent:?} does not exist"))?;
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
                    .ok_or_else(|| format!("add {path}: bad array index {token:?}"))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("add {path}: parent is not an object or array")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split(path)?;
    let target = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("remove {path}: no such path"))?;
    match target {
        Value::Object(map) => map
            .remove(&token)
            .ok_or_else(|| format!("remove {path}: no such path")),
        Value::Array(items) => {
            let index = token
                .parse::<usize>()
                .ok()
                .filter(|i| *i < items.len())
                .ok_or_else(|| format!("remove {path}: bad array index {token:?}"))?;
            Ok(items.remove(index))
        }
        _ => Err(format!("remove {path}: no such path")),
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
        assert!(e.contains("/nope"), "{e}");
        assert!(apply(&mut d, &json!({"op":"frob","path":"/x"})).is_err());
    }
}
