//! Kubernetes resource quantities (`256Mi`, `500m`) and the RuntimeClass kata-cc installs.
//! Manifests themselves are read by the kubelet's translation, `kube.rs`.

use serde::Deserialize;

/// The RuntimeClass kata-cc installs, and the CRI runtime handler it names.
pub const RUNTIME_CLASS: &str = "kata-cc-isolation";

/// A resource quantity: YAML gives `256Mi`, `500m`, `1` or `1.5`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Text(String),
    Number(f64),
}

/// Bytes of a memory quantity: plain, decimal (k, M, G, T) or binary (Ki, Mi, Gi, Ti) suffix.
pub fn memory_bytes(q: &Quantity) -> Option<i64> {
    let text = match q {
        Quantity::Number(n) if *n >= 0.0 => return Some(*n as i64),
        Quantity::Number(_) => return None,
        Quantity::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, suffix) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult).round() as i64)
}

/// Millicores of a CPU quantity: `500m`, `1`, `1.5`.
pub fn millicpus(q: &Quantity) -> Option<i64> {
    match q {
        Quantity::Number(n) if *n >= 0.0 => Some((n * 1000.0).round() as i64),
        Quantity::Number(_) => None,
        Quantity::Text(t) => {
            let t = t.trim();
            match t.strip_suffix('m') {
                Some(m) => m.parse().ok(),
                None => t.parse::<f64>().ok().map(|c| (c * 1000.0).round() as i64),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::Text(s.to_string())
    }

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes(&q("256Mi")), Some(256 << 20));
        assert_eq!(memory_bytes(&q("1Gi")), Some(1 << 30));
        assert_eq!(memory_bytes(&q("128M")), Some(128_000_000));
        assert_eq!(memory_bytes(&Quantity::Number(1024.0)), Some(1024));
        assert_eq!(memory_bytes(&q("12Zi")), None);
        assert_eq!(millicpus(&q("500m")), Some(500));
        assert_eq!(millicpus(&q("1.5")), Some(1500));
        assert_eq!(millicpus(&Quantity::Number(2.0)), Some(2000));
        assert_eq!(millicpus(&q("lots")), None);
    }

    /// The demo's manifest goes through the kubelet's translation, names kata-cc's
    /// RuntimeClass, and its policy annotation is the base64 of examples/demo-policy.rego
    /// (kept in step by this test).
    #[test]
    fn the_demo_manifest() {
        let dir = crate::paths::repo().join("examples");
        let objs = crate::kube::Objects::load(&dir.join("demo-pod.yaml"), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let t = &objs.workload.template;
        assert_eq!(t.spec.runtime_class_name.as_deref(), Some(RUNTIME_CLASS));
        assert!(t.spec.containers.len() >= 2);
        let rego = std::fs::read_to_string(dir.join("demo-policy.rego")).unwrap();
        assert_eq!(
            objs.workload.metadata.annotations[crate::policy::POLICY_ANNOTATION],
            crate::policy::base64(rego.as_bytes()),
            "examples/demo-pod.yaml's policy annotation is not examples/demo-policy.rego: \
             run `base64 -w0 examples/demo-policy.rego` and paste it"
        );
    }
}
