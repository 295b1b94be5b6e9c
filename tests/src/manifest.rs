//! The part of a Kubernetes manifest (`kubectl apply -f` YAML: a Pod and the ConfigMaps it
//! mounts) that the demo's kubelet acts on, and Kubernetes resource quantities. Fields the
//! demo does not act on are refused rather than ignored when they would change the pod
//! (another volume type), so the demo never shows a pod other than the one written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The RuntimeClass kata-cc installs, and the CRI runtime handler it names.
pub const RUNTIME_CLASS: &str = "kata-cc-isolation";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {source}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        source: serde_norway::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    /// A ConfigMap's data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// A Pod's spec.
    pub spec: Option<PodSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub runtime_class_name: Option<String>,
    #[serde(default)]
    pub share_process_namespace: bool,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
    /// Ignored by kata-cc's sizing (as by the product), but accepted.
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
}

/// A resource quantity: YAML gives `256Mi`, `500m`, `1` or `1.5`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Text(String),
    Number(f64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub config_map: Option<ConfigMapSource>,
    pub empty_dir: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    pub name: String,
    pub default_mode: Option<u32>,
}

/// A manifest file: its Pod and the ConfigMaps by name.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub pod: Object,
    pub config_maps: BTreeMap<String, Object>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let invalid = |why: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let mut pod = None;
        let mut config_maps = BTreeMap::new();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let o = Object::deserialize(doc).map_err(|source| ManifestError::Yaml {
                path: path.to_path_buf(),
                doc: i + 1,
                source,
            })?;
            match (o.api_version.as_str(), o.kind.as_str()) {
                ("v1", "Pod") if pod.is_none() => pod = Some(o),
                ("v1", "Pod") => return Err(invalid("more than one Pod".into())),
                ("v1", "ConfigMap") => {
                    config_maps.insert(o.metadata.name.clone(), o);
                }
                (v, k) => return Err(invalid(format!("{v} {k}: only v1 Pod and ConfigMap"))),
            }
        }
        let pod = pod.ok_or_else(|| invalid("no Pod".into()))?;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| invalid(format!("Pod {}: no spec", pod.metadata.name)))?;
        if spec.containers.is_empty() {
            return Err(invalid(format!("Pod {}: no containers", pod.metadata.name)));
        }
        for v in &spec.volumes {
            match (&v.config_map, &v.empty_dir) {
                (Some(cm), None) if !config_maps.contains_key(&cm.name) => {
                    return Err(invalid(format!(
                        "volume {}: ConfigMap {} is not in the file",
                        v.name, cm.name
                    )))
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(format!(
                        "volume {}: only configMap and emptyDir volumes",
                        v.name
                    )))
                }
            }
        }
        for c in &spec.containers {
            for m in &c.volume_mounts {
                if !spec.volumes.iter().any(|v| v.name == m.name) {
                    return Err(invalid(format!(
                        "container {}: no volume {}",
                        c.name, m.name
                    )));
                }
            }
            for (k, q) in &c.resources.limits {
                let ok = match k.as_str() {
                    "memory" => memory_bytes(q).is_some(),
                    "cpu" => millicpus(q).is_some(),
                    _ => true,
                };
                if !ok {
                    return Err(invalid(format!(
                        "container {}: limits.{k}: not a quantity: {q:?}",
                        c.name
                    )));
                }
            }
        }
        Ok(Manifest { pod, config_maps })
    }

    pub fn spec(&self) -> &PodSpec {
        self.pod.spec.as_ref().expect("checked by parse")
    }
}

impl Container {
    /// The memory limit in bytes (0 = none).
    pub fn memory_limit(&self) -> i64 {
        self.resources
            .limits
            .get("memory")
            .and_then(memory_bytes)
            .unwrap_or(0)
    }

    /// The CPU limit in millicores (0 = none).
    pub fn cpu_millis(&self) -> i64 {
        self.resources
            .limits
            .get("cpu")
            .and_then(millicpus)
            .unwrap_or(0)
    }

    /// The process: command (the image's entrypoint replaced) followed by args.
    pub fn argv(&self) -> Vec<String> {
        self.command.iter().chain(&self.args).cloned().collect()
    }
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

    const POD: &str = "
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {greeting: hi}
---
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations: {a: b}
spec:
  runtimeClassName: kata-cc-isolation
  containers:
  - name: c
    image: localhost/x:1
    command: [sh, -c]
    args: [echo hi]
    resources: {limits: {memory: 64Mi, cpu: 1}}
    volumeMounts: [{name: v, mountPath: /etc/v}]
  volumes:
  - name: v
    configMap: {name: cm}
";

    #[test]
    fn parses_a_pod_and_its_config_map() {
        let m = Manifest::parse(Path::new("t.yaml"), POD).unwrap();
        let c = &m.spec().containers[0];
        assert_eq!(c.argv(), ["sh", "-c", "echo hi"]);
        assert_eq!((c.memory_limit(), c.cpu_millis()), (64 << 20, 1000));
        assert_eq!(m.config_maps["cm"].data["greeting"], "hi");
        assert_eq!(m.pod.metadata.annotations["a"], "b");
        assert_eq!(m.spec().runtime_class_name.as_deref(), Some(RUNTIME_CLASS));
    }

    #[test]
    fn refuses_what_it_would_not_run() {
        let missing_cm = POD.replace("name: cm}\ndata", "name: other}\ndata");
        let e = Manifest::parse(Path::new("t.yaml"), &missing_cm).unwrap_err();
        assert!(
            e.to_string().contains("ConfigMap cm is not in the file"),
            "{e}"
        );
        let host_path = POD.replace("configMap: {name: cm}", "hostPath: {path: /etc}");
        let e = Manifest::parse(Path::new("t.yaml"), &host_path).unwrap_err();
        assert!(e.to_string().contains("only configMap and emptyDir"), "{e}");
    }

    /// The demo's manifest parses, names kata-cc's RuntimeClass, and its policy annotation is
    /// the base64 of examples/demo-policy.rego (kept in step by this test).
    #[test]
    fn the_demo_manifest() {
        let dir = crate::paths::repo().join("examples");
        let m = Manifest::load(&dir.join("demo-pod.yaml")).unwrap();
        assert_eq!(m.spec().runtime_class_name.as_deref(), Some(RUNTIME_CLASS));
        assert!(m.spec().containers.len() >= 2);
        assert!(m.spec().containers.iter().all(|c| c.memory_limit() > 0));
        let rego = std::fs::read_to_string(dir.join("demo-policy.rego")).unwrap();
        assert_eq!(
            m.pod.metadata.annotations[crate::policy::POLICY_ANNOTATION],
            crate::policy::base64(rego.as_bytes()),
            "examples/demo-pod.yaml's policy annotation is not examples/demo-policy.rego: \
             run `base64 -w0 examples/demo-policy.rego` and paste it"
        );
    }
}
