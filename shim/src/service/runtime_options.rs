//! The runtime options containerd hands a shim (`runtimeoptions.v1.Options`, from `ctr run
//! --runtime-config-path` or CRI's runtime `options.ConfigPath`): only `config_path` is ours.
//! Decoded by hand: two fields of one message do not warrant generated code.

/// Reads a protobuf varint.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `config_path` (field 2) of containerd's `runtimeoptions.v1.Options`, which `ctr run
/// --runtime-config-path` and CRI's runtime `ConfigPath` produce. Other option types are not
/// ours and are ignored.
pub fn runtime_options_config_path(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.contains("runtimeoptions") {
        return None;
    }
    let mut pos = 0;
    let mut found = None;
    while pos < value.len() {
        let key = varint(value, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(value, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(value, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= value.len())?;
                if field == 2 {
                    found = Some(String::from_utf8_lossy(&value[pos..end]).into_owned());
                }
                pos = end;
            }
            _ => return None,
        }
    }
    found.filter(|p| !p.is_empty())
}

/// The runtime options containerd writes to `start`'s stdin (a serialized `Any`).
pub fn config_path_from_any_bytes(data: &[u8]) -> Option<String> {
    use containerd_shim::protos::protobuf::Message;
    let any = containerd_shim::protos::protobuf::well_known_types::any::Any::parse_from_bytes(data)
        .ok()?;
    runtime_options_config_path(&any.type_url, &any.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_options(path: &str) -> Vec<u8> {
        // runtimeoptions.v1.Options { type_url = 1 ("x"), config_path = 2 }
        let mut v = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        v.extend_from_slice(path.as_bytes());
        v
    }

    #[test]
    fn config_path_from_runtime_options() {
        let v = encode_options("/etc/kata-cc/other.toml");
        assert_eq!(
            runtime_options_config_path("runtimeoptions.v1.Options", &v).as_deref(),
            Some("/etc/kata-cc/other.toml")
        );
        // runc's options are not ours.
        assert_eq!(
            runtime_options_config_path("containerd.runc.v1.Options", &v),
            None
        );
        // Truncated input does not panic.
        assert_eq!(
            runtime_options_config_path("runtimeoptions.v1.Options", &v[..6]),
            None
        );
        use containerd_shim::protos::protobuf::Message;
        let any = containerd_shim::protos::protobuf::well_known_types::any::Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: v,
            ..Default::default()
        };
        assert_eq!(
            config_path_from_any_bytes(&any.write_to_bytes().unwrap()).as_deref(),
            Some("/etc/kata-cc/other.toml")
        );
        assert_eq!(config_path_from_any_bytes(b""), None);
    }
}
