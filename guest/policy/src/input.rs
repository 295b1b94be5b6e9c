//! Request message <-> policy input JSON, by protobuf reflection, with the keys and shapes Kata's
//! agent gives its policy (its messages serialized with serde):
//! - keys are the Rust field names: the .proto names, with Rust keywords suffixed `_` (`type_`);
//! - a message field that is not set is `null`; scalars are always present (proto3 defaults);
//! - enums are numbers; 64-bit integers are JSON numbers; `bytes` are arrays of numbers;
//! - maps are objects; a oneof is one key (the oneof's name): `null` or `{"<field>": value}`.
//! - `CopyFileRequest` is checked without its `data`; instead, as Kata's agent has given it over
//!   time: `symlink_src` (AKS-era agents) carries the link target (the data as text) when the
//!   request creates a symbolic link, else ""; `file_type` ("Regular", "Directory", "Symlink"
//!   or "Unknown", from `file_mode & S_IFMT`) and `symlink_target` (the target, else null) are
//!   upstream's (Kata >= 3.29). Each rule generation reads its own keys.
//! - `Storage.shared` (field 8, newer than AKS-era policies) is always present here; the engine
//!   leaves it out for a policy that never names it (see `PolicyEngine::evaluate`).
//!
//! [`from_json`] is the inverse, used to replay request logs and to test that every logged request
//! survives JSON -> message -> JSON unchanged.

use protobuf::reflect::{
    FieldDescriptor, MessageDescriptor, ReflectFieldRef, ReflectValueBox, ReflectValueRef,
    RuntimeFieldType, RuntimeType,
};
use protobuf::MessageDyn;
use serde_json::{Map, Number, Value};

/// The type bits of a CopyFileRequest's `file_mode`.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Upstream's `file_type` of a CopyFileRequest for its `file_mode`.
pub fn file_type(file_mode: u32) -> &'static str {
    match file_mode & S_IFMT {
        S_IFREG => "Regular",
        S_IFDIR => "Directory",
        S_IFLNK => "Symlink",
        _ => "Unknown",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0} is not a message of the agent protocol")]
    UnknownMessage(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

/// Rust keywords that rust-protobuf escapes with a trailing `_` in field names.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
    "mut", "pub", "ref", "return", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "do", "final", "macro", "override", "priv",
    "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn json_key(proto_name: &str) -> String {
    if RUST_KEYWORDS.contains(&proto_name) {
        format!("{proto_name}_")
    } else {
        proto_name.to_string()
    }
}

/// The descriptor of an agent-protocol message by its name (`CreateContainerRequest`).
pub fn descriptor(name: &str) -> Option<MessageDescriptor> {
    agent_proto::agent::file_descriptor().message_by_package_relative_name(name)
}

/// The policy input for a request message.
pub fn to_json(m: &dyn MessageDyn) -> Value {
    let d = m.descriptor_dyn();
    if d.name() == "CopyFileRequest" {
        // Its `data` (up to 1 MiB per chunk of a layer) never reaches the policy: converting it
        // to a JSON array of numbers first cost a JSON value per byte (32 MiB of them per chunk).
        let mut v = fields_to_json(m, Some("data"));
        copy_file_to_policy(m, &mut v);
        return v;
    }
    message_to_json(m)
}

fn copy_file_to_policy(m: &dyn MessageDyn, v: &mut Value) {
    let d = m.descriptor_dyn();
    let mode = d
        .field_by_name("file_mode")
        .and_then(|f| f.get_singular_field_or_default(m).to_u32())
        .unwrap_or(0);
    if let Value::Object(obj) = v {
        let link = (mode & S_IFMT == S_IFLNK).then(|| {
            d.field_by_name("data")
                .and_then(|f| {
                    f.get_singular_field_or_default(m)
                        .to_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
                .unwrap_or_default()
        });
        obj.insert(
            "symlink_src".into(),
            Value::String(link.clone().unwrap_or_default()),
        );
        obj.insert("file_type".into(), Value::from(file_type(mode)));
        obj.insert(
            "symlink_target".into(),
            link.map(Value::String).unwrap_or(Value::Null),
        );
    }
}

fn message_to_json(m: &dyn MessageDyn) -> Value {
    fields_to_json(m, None)
}

/// The message as JSON, without the field named `skip`.
fn fields_to_json(m: &dyn MessageDyn, skip: Option<&str>) -> Value {
    let d = m.descriptor_dyn();
    let mut obj = Map::new();
    for f in d.fields() {
        if skip == Some(f.name()) {
            continue;
        }
        if let Some(oneof) = f.containing_oneof() {
            // One key per oneof, written when its first member comes up.
            let name = json_key(oneof.name());
            if obj.contains_key(&name) {
                continue;
            }
            let set = oneof.fields().find(|f| f.has_field(m));
            let value = match set {
                Some(f) => {
                    let mut inner = Map::new();
                    let v = f
                        .get_singular(m)
                        .map(|v| value_to_json(&v))
                        .unwrap_or(Value::Null);
                    inner.insert(json_key(f.name()), v);
                    Value::Object(inner)
                }
                None => Value::Null,
            };
            obj.insert(name, value);
            continue;
        }
        let value = match f.get_reflect(m) {
            ReflectFieldRef::Optional(_) => singular_to_json(&f, m),
            ReflectFieldRef::Repeated(r) => {
                Value::Array(r.into_iter().map(|v| value_to_json(&v)).collect())
            }
            ReflectFieldRef::Map(map) => {
                let mut o = Map::new();
                for (k, v) in &map {
                    let key = match k {
                        ReflectValueRef::String(s) => s.to_string(),
                        other => scalar_key(&other),
                    };
                    o.insert(key, value_to_json(&v));
                }
                Value::Object(o)
            }
        };
        obj.insert(json_key(f.name()), value);
    }
    Value::Object(obj)
}

fn singular_to_json(f: &FieldDescriptor, m: &dyn MessageDyn) -> Value {
    let is_message = matches!(
        f.runtime_field_type(),
        RuntimeFieldType::Singular(RuntimeType::Message(_))
    );
    if is_message || f.containing_oneof_including_synthetic().is_some() {
        // Unset message fields (and proto3 `optional` scalars) are `null`.
        match f.get_singular(m) {
            Some(v) => value_to_json(&v),
            None => Value::Null,
        }
    } else {
        value_to_json(&f.get_singular_field_or_default(m))
    }
}

fn scalar_key(v: &ReflectValueRef) -> String {
    match value_to_json(v) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn value_to_json(v: &ReflectValueRef) -> Value {
    match v {
        ReflectValueRef::U32(x) => Value::from(*x),
        ReflectValueRef::U64(x) => Value::from(*x),
        ReflectValueRef::I32(x) => Value::from(*x),
        ReflectValueRef::I64(x) => Value::from(*x),
        ReflectValueRef::F32(x) => Number::from_f64(f64::from(*x))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ReflectValueRef::F64(x) => Number::from_f64(*x)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ReflectValueRef::Bool(b) => Value::Bool(*b),
        ReflectValueRef::String(s) => Value::String(s.to_string()),
        ReflectValueRef::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        ReflectValueRef::Enum(_, n) => Value::from(*n),
        ReflectValueRef::Message(m) => message_to_json(&**m),
    }
}

/// Builds the request message `name` from its policy input JSON (the inverse of [`to_json`]).
/// Unknown keys are an error naming the key.
pub fn from_json(name: &str, v: &Value) -> Result<Box<dyn MessageDyn>, InputError> {
    let d = descriptor(name).ok_or_else(|| InputError::UnknownMessage(name.to_string()))?;
    let mut m = d.new_instance();
    let mut v = v.clone();
    if name == "CopyFileRequest" {
        if let Value::Object(obj) = &mut v {
            // symlink_src or symlink_target stand for the data of a symlink request, file_type
            // for bits of file_mode (see `to_json`).
            obj.remove("file_type");
            let target = obj.remove("symlink_target");
            let link = match (obj.remove("symlink_src"), target) {
                (Some(Value::String(l)), _) if !l.is_empty() => Some(l),
                (_, Some(Value::String(l))) => Some(l),
                _ => None,
            };
            if let Some(link) = link {
                let bytes = link.bytes().map(Value::from).collect();
                obj.insert("data".into(), Value::Array(bytes));
            }
        }
    }
    fill_message(&mut *m, &v, name)?;
    Ok(m)
}

fn field_err(path: &str, message: impl Into<String>) -> InputError {
    InputError::Field {
        path: path.to_string(),
        message: message.into(),
    }
}

fn fill_message(m: &mut dyn MessageDyn, v: &Value, path: &str) -> Result<(), InputError> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(()),
        other => return Err(field_err(path, format!("expected an object, got {other}"))),
    };
    let d = m.descriptor_dyn();
    for (key, value) in obj {
        let fpath = format!("{path}.{key}");
        // A oneof key: `{"<field>": value}` or null.
        if let Some(oneof) = d.oneofs().find(|o| json_key(o.name()) == *key) {
            if oneof.is_synthetic() {
                // proto3 `optional`: its key is the field itself, handled below.
            } else {
                match value {
                    Value::Null => continue,
                    Value::Object(inner) => {
                        for (k, iv) in inner {
                            let f = oneof
                                .fields()
                                .find(|f| json_key(f.name()) == *k)
                                .ok_or_else(|| field_err(&fpath, format!("no oneof member {k}")))?;
                            set_singular(m, &f, iv, &format!("{fpath}.{k}"))?;
                        }
                        continue;
                    }
                    other => return Err(field_err(&fpath, format!("bad oneof value {other}"))),
                }
            }
        }
        let f = d
            .fields()
            .find(|f| json_key(f.name()) == *key && f.containing_oneof().is_none())
            .ok_or_else(|| field_err(&fpath, format!("no field {key} in {}", d.name())))?;
        match f.runtime_field_type() {
            RuntimeFieldType::Singular(_) => {
                if value.is_null() {
                    continue;
                }
                set_singular(m, &f, value, &fpath)?;
            }
            RuntimeFieldType::Repeated(t) => {
                let items = match value {
                    Value::Array(a) => a,
                    Value::Null => continue,
                    other => {
                        return Err(field_err(&fpath, format!("expected an array, got {other}")))
                    }
                };
                for (i, item) in items.iter().enumerate() {
                    let b = value_box(&t, item, &format!("{fpath}[{i}]"))?;
                    f.mut_repeated(m).push(b);
                }
            }
            RuntimeFieldType::Map(kt, vt) => {
                let entries = match value {
                    Value::Object(o) => o,
                    Value::Null => continue,
                    other => {
                        return Err(field_err(
                            &fpath,
                            format!("expected an object, got {other}"),
                        ))
                    }
                };
                for (k, item) in entries {
                    let kpath = format!("{fpath}.{k}");
                    let kb = match &kt {
                        RuntimeType::String => ReflectValueBox::String(k.clone()),
                        other => {
                            let parsed: Value = serde_json::from_str(k)
                                .map_err(|e| field_err(&kpath, format!("map key: {e}")))?;
                            value_box(other, &parsed, &kpath)?
                        }
                    };
                    let vb = value_box(&vt, item, &kpath)?;
                    f.mut_map(m).insert(kb, vb);
                }
            }
        }
    }
    Ok(())
}

fn set_singular(
    m: &mut dyn MessageDyn,
    f: &FieldDescriptor,
    v: &Value,
    path: &str,
) -> Result<(), InputError> {
    if let RuntimeFieldType::Singular(RuntimeType::Message(_)) = f.runtime_field_type() {
        if v.is_null() {
            return Ok(());
        }
        // mut_message creates the field (so `{}` round-trips as a set, empty message).
        return fill_message(f.mut_message(m), v, path);
    }
    let t = match f.runtime_field_type() {
        RuntimeFieldType::Singular(t) => t,
        _ => return Err(field_err(path, "not a singular field")),
    };
    let b = value_box(&t, v, path)?;
    f.set_singular_field(m, b);
    Ok(())
}

fn value_box(t: &RuntimeType, v: &Value, path: &str) -> Result<ReflectValueBox, InputError> {
    let bad = || field_err(path, format!("{v} is not a {t}"));
    Ok(match t {
        RuntimeType::I32 => ReflectValueBox::I32(
            v.as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(bad)?,
        ),
        RuntimeType::I64 => ReflectValueBox::I64(v.as_i64().ok_or_else(bad)?),
        RuntimeType::U32 => ReflectValueBox::U32(
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(bad)?,
        ),
        RuntimeType::U64 => ReflectValueBox::U64(v.as_u64().ok_or_else(bad)?),
        RuntimeType::F32 => ReflectValueBox::F32(v.as_f64().ok_or_else(bad)? as f32),
        RuntimeType::F64 => ReflectValueBox::F64(v.as_f64().ok_or_else(bad)?),
        RuntimeType::Bool => ReflectValueBox::Bool(v.as_bool().ok_or_else(bad)?),
        RuntimeType::String => ReflectValueBox::String(v.as_str().ok_or_else(bad)?.to_string()),
        RuntimeType::VecU8 => {
            let a = v.as_array().ok_or_else(bad)?;
            let bytes = a
                .iter()
                .map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(bad)?;
            ReflectValueBox::Bytes(bytes)
        }
        RuntimeType::Enum(e) => {
            let n = v
                .as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(bad)?;
            ReflectValueBox::Enum(e.clone(), n)
        }
        RuntimeType::Message(md) => {
            let mut msg = md.new_instance();
            fill_message(&mut *msg, v, path)?;
            ReflectValueBox::Message(msg)
        }
    })
}
