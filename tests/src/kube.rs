//! The kubelet's translation of a Kubernetes manifest into CRI calls, for the harness's
//! [`Node`]: a workload (Pod, Deployment, ReplicaSet, ReplicationController, StatefulSet,
//! DaemonSet, Job, CronJob) and the ConfigMaps and Secrets given beside it become the pod the
//! controller would make (its name as the controller generates it), the volumes the kubelet
//! lays out before the sandbox (ConfigMap, Secret, emptyDir, hostPath, and the projected
//! service-account token the API server's admission adds), then the PodSandboxConfig and the
//! ContainerConfigs the kubelet builds (`generatePodSandboxConfig`, `generateContainerConfig`:
//! command and args apart, env with `$(VAR)` expansion, `valueFrom`, the `kubernetes`
//! service's variables, mounts in the kubelet's order, the effective security context, the
//! log directory `/var/log/pods/<ns>_<name>_<uid>`), and the exec handlers the kubelet runs
//! with ExecSync (liveness, readiness and startup probes, postStart and preStop hooks).
//!
//! A field the kubelet would act on and this translation does not know is an error naming it
//! (the structs deny unknown fields), so a test never runs a pod other than the one written.
//! Fields that only the scheduler or a controller reads are accepted and ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::cri::{self, api, ContainerSecurity, ContainerSpec, PodSecurity, PodSpec};
use crate::kubelet::{ExecOutput, Node, Pod};
use crate::manifest::{memory_bytes, millicpus, Quantity};
use crate::podfs::PodDir;

/// The kubelet's pod log root (`--pod-logs-dir`'s default).
pub const POD_LOGS_ROOT: &str = "/var/log/pods";
/// Where the service-account admission mounts the projected token volume.
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The characters of generated name suffixes (`k8s.io/apimachinery/pkg/util/rand`).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The service-account token the harness writes (a test token, not a real JWT).
const TEST_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.a2F0YS1jYw";
const TEST_CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIGkata-cc-test\n-----END CERTIFICATE-----\n";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
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
    #[error("{path}: document {doc} ({kind}): {field}: {why}")]
    Field {
        path: PathBuf,
        doc: usize,
        kind: String,
        field: String,
        why: String,
    },
    #[error("{what}: {why}")]
    Pod { what: String, why: String },
}

fn pod_err(what: impl Into<String>, why: impl Into<String>) -> KubeError {
    KubeError::Pod {
        what: what.into(),
        why: why.into(),
    }
}

// ---- The manifest's objects (the fields the kubelet acts on) ---------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub generate_name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpecYaml,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpecYaml {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    pub restart_policy: Option<String>,
    pub runtime_class_name: Option<String>,
    #[serde(default)]
    pub share_process_namespace: bool,
    pub automount_service_account_token: Option<bool>,
    pub service_account_name: Option<String>,
    pub security_context: Option<PodSecurityContext>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub enable_service_links: Option<bool>,
    pub dns_policy: Option<String>,
    pub active_deadline_seconds: Option<i64>,
    // Read by the scheduler or the image puller's credentials only: accepted, not acted on.
    pub node_selector: Option<Value>,
    pub tolerations: Option<Value>,
    pub affinity: Option<Value>,
    pub priority_class_name: Option<String>,
    pub scheduler_name: Option<String>,
    pub image_pull_secrets: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    #[serde(default)]
    pub supplemental_groups: Vec<i64>,
    pub fs_group: Option<i64>,
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub lifecycle: Option<Lifecycle>,
    pub security_context: Option<SecurityContext>,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<ResourceFieldRef>,
    pub config_map_key_ref: Option<KeyRef>,
    pub secret_key_ref: Option<KeyRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRef {
    pub field_path: String,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceFieldRef {
    pub resource: String,
    pub container_name: Option<String>,
    pub divisor: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    pub container_port: i32,
    pub host_port: Option<i32>,
    pub protocol: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub exec: Option<ExecAction>,
    // Network probes: the kubelet runs them itself, not through the runtime.
    pub http_get: Option<Value>,
    pub tcp_socket: Option<Value>,
    pub grpc: Option<Value>,
    pub initial_delay_seconds: Option<i64>,
    pub period_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub success_threshold: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    pub post_start: Option<Handler>,
    pub pre_stop: Option<Handler>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handler {
    pub exec: Option<ExecAction>,
    pub http_get: Option<Value>,
    pub tcp_socket: Option<Value>,
    pub sleep: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub privileged: Option<bool>,
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub config_map: Option<ConfigMapVolume>,
    pub secret: Option<SecretVolume>,
    pub empty_dir: Option<EmptyDirVolume>,
    pub host_path: Option<HostPathVolume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolume {
    pub name: String,
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    #[serde(default, deserialize_with = "file_mode")]
    pub default_mode: Option<u32>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolume {
    pub secret_name: String,
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    #[serde(default, deserialize_with = "file_mode")]
    pub default_mode: Option<u32>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, deserialize_with = "file_mode")]
    pub mode: Option<u32>,
}

/// A file mode as Kubernetes reads YAML (1.1): a number (decimal in JSON: 256 is 0400), or a
/// YAML 1.1 octal literal such as `0400`, which a YAML 1.2 parser leaves as a string.
fn file_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|m| *m <= 0o777)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("mode {n}: not 0..=0777"))),
        Some(Value::String(s)) => {
            let digits = s
                .strip_prefix("0o")
                .or_else(|| s.strip_prefix('0'))
                .unwrap_or(&s);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| s.starts_with('0') && *m <= 0o777)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("mode {s:?}: not an octal mode")))
        }
        Some(other) => Err(D::Error::custom(format!("mode {other}: not a number"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolume {
    pub medium: Option<String>,
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathVolume {
    pub path: String,
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

/// A ConfigMap's or Secret's payload, decoded.
#[derive(Debug, Clone)]
pub struct ApiData {
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The pod-bearing object of a manifest.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: String,
    pub metadata: ObjectMeta,
    pub template: PodTemplate,
}

/// A manifest's workload and the ConfigMaps and Secrets given with it.
#[derive(Debug, Clone)]
pub struct Objects {
    pub workload: Workload,
    pub config_maps: BTreeMap<String, ApiData>,
    pub secrets: BTreeMap<String, ApiData>,
}

/// The kinds whose objects carry a pod template at `spec.template`.
const TEMPLATE_KINDS: [&str; 6] = [
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "StatefulSet",
    "DaemonSet",
    "Job",
];

impl Objects {
    /// Reads the manifest (its one workload, and any ConfigMaps and Secrets in it) and the
    /// ConfigMap and Secret files given beside it (genpolicy's `-c`).
    pub fn load(manifest: &Path, config_files: &[PathBuf]) -> Result<Objects, KubeError> {
        let mut workload = None;
        let mut config_maps = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for (i, path) in std::iter::once(manifest)
            .chain(config_files.iter().map(|p| p.as_path()))
            .enumerate()
        {
            let text = std::fs::read_to_string(path).map_err(|source| KubeError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            for (doc, o) in parse_docs(path, &text)?.into_iter().enumerate() {
                let doc = doc + 1;
                let kind = o["kind"].as_str().unwrap_or_default().to_string();
                let field = |field: &str, why: String| KubeError::Field {
                    path: path.to_path_buf(),
                    doc,
                    kind: kind.clone(),
                    field: field.to_string(),
                    why,
                };
                match kind.as_str() {
                    "ConfigMap" => {
                        let d = api_data(&o, false).map_err(|(f, w)| field(f, w))?;
                        config_maps.insert(d.name.clone(), d);
                    }
                    "Secret" => {
                        let d = api_data(&o, true).map_err(|(f, w)| field(f, w))?;
                        secrets.insert(d.name.clone(), d);
                    }
                    _ if i > 0 => {
                        return Err(field(
                            "kind",
                            "only ConfigMaps and Secrets go beside the manifest".into(),
                        ))
                    }
                    k => {
                        if workload.is_some() {
                            return Err(field(
                                "kind",
                                "a second workload: one pod per manifest".into(),
                            ));
                        }
                        let metadata: ObjectMeta = serde_json::from_value(o["metadata"].clone())
                            .map_err(|e| field("metadata", e.to_string()))?;
                        let (at, template) = match k {
                            "Pod" => ("", o.clone()),
                            "CronJob" => (
                                "spec.jobTemplate.spec.template",
                                o["spec"]["jobTemplate"]["spec"]["template"].clone(),
                            ),
                            _ if TEMPLATE_KINDS.contains(&k) => {
                                ("spec.template", o["spec"]["template"].clone())
                            }
                            _ => {
                                return Err(field(
                                    "kind",
                                    format!(
                                    "{k:?} is not a workload the kubelet runs (Pod, {}, CronJob)",
                                    TEMPLATE_KINDS.join(", ")
                                ),
                                ))
                            }
                        };
                        let template = if k == "Pod" {
                            PodTemplate {
                                metadata: metadata.clone(),
                                spec: serde_json::from_value(o["spec"].clone())
                                    .map_err(|e| field("spec", e.to_string()))?,
                            }
                        } else {
                            serde_json::from_value(template)
                                .map_err(|e| field(at, e.to_string()))?
                        };
                        workload = Some(Workload {
                            kind: k.to_string(),
                            metadata,
                            template,
                        });
                    }
                }
            }
        }
        let workload = workload.ok_or_else(|| {
            pod_err(
                manifest.display().to_string(),
                "no workload (Pod, Deployment, Job, ...)",
            )
        })?;
        Ok(Objects {
            workload,
            config_maps,
            secrets,
        })
    }
}

fn parse_docs(path: &Path, text: &str) -> Result<Vec<Value>, KubeError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|source| KubeError::Yaml {
            path: path.to_path_buf(),
            doc: i + 1,
            source,
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// A ConfigMap (`data`, `binaryData`) or Secret (`data` in base64, `stringData`).
fn api_data(o: &Value, secret: bool) -> Result<ApiData, (&'static str, String)> {
    use base64::Engine as _;
    let name = o["metadata"]["name"]
        .as_str()
        .ok_or(("metadata.name", "missing".to_string()))?
        .to_string();
    let mut data = BTreeMap::new();
    let strings = |key: &'static str| -> Result<Vec<(String, String)>, (&'static str, String)> {
        match &o[key] {
            Value::Null => Ok(Vec::new()),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err((key, format!("{k}: not a string: {other}"))),
                })
                .collect(),
            other => Err((key, format!("not a map: {other}"))),
        }
    };
    let b64 = |key: &'static str, k: &str, v: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|e| (key, format!("{k}: not base64: {e}")))
    };
    if secret {
        for (k, v) in strings("data")? {
            data.insert(k.clone(), b64("data", &k, &v)?);
        }
        for (k, v) in strings("stringData")? {
            data.insert(k, v.into_bytes());
        }
    } else {
        for (k, v) in strings("data")? {
            data.insert(k, v.into_bytes());
        }
        for (k, v) in strings("binaryData")? {
            data.insert(k.clone(), b64("binaryData", &k, &v)?);
        }
    }
    Ok(ApiData { name, data })
}

impl Workload {
    pub fn namespace(&self) -> String {
        self.template
            .metadata
            .namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_string())
    }

    /// The name the controller gives the pod: a Pod's own; `<deployment>-<template hash>-<5>`,
    /// `<replicaset|daemonset|job>-<5>`, `<statefulset>-0`, `<cronjob>-<minutes>-<5>`.
    pub fn pod_name(&self) -> String {
        let base = if self.metadata.name.is_empty() {
            format!("{}{}", self.metadata.generate_name, random_suffix())
        } else {
            self.metadata.name.clone()
        };
        match self.kind.as_str() {
            "Pod" => base,
            "Deployment" => format!("{base}-{}-{}", self.template_hash(), random_suffix()),
            "StatefulSet" => format!("{base}-0"),
            "CronJob" => {
                let minutes = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() / 60)
                    .unwrap_or(0);
                format!("{base}-{minutes}-{}", random_suffix())
            }
            _ => format!("{base}-{}", random_suffix()),
        }
    }

    /// The Deployment controller's `pod-template-hash`: FNV-32a of the template, its decimal
    /// digits mapped onto the name alphabet (`rand.SafeEncodeString`).
    pub fn template_hash(&self) -> String {
        let text = format!("{:?}", self.template);
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h.to_string()
            .bytes()
            .map(|b| NAME_ALPHABET[usize::from(b) % NAME_ALPHABET.len()] as char)
            .collect()
    }
}

/// Five characters of the generated-name alphabet.
fn random_suffix() -> String {
    random_bytes::<5>()
        .iter()
        .map(|b| NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()] as char)
        .collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
    {
        panic!("/dev/urandom: {e}");
    }
    b
}

/// A random (version 4) UUID, as the API server gives pods.
pub fn random_uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---- The pod on a node --------------------------------------------------------------------

/// When the kubelet runs an exec handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    Liveness,
    Readiness,
    Startup,
    PostStart,
    PreStop,
}

/// An exec probe or lifecycle hook: ExecSync of `command` with `timeout_secs` (probes: their
/// `timeoutSeconds`, default 1; hooks: 0, no CRI timeout).
#[derive(Debug, Clone)]
pub struct ExecHandler {
    pub kind: HandlerKind,
    pub command: Vec<String>,
    pub timeout_secs: i64,
}

/// A container of the pod as the kubelet sees it before creating it.
#[derive(Debug, Clone)]
pub struct KubeContainer {
    pub yaml: Container,
    pub handlers: Vec<ExecHandler>,
}

impl KubeContainer {
    pub fn handlers_of(&self, kind: HandlerKind) -> impl Iterator<Item = &ExecHandler> {
        self.handlers.iter().filter(move |h| h.kind == kind)
    }
}

/// What a volume is on the host, once laid out.
#[derive(Debug, Clone)]
struct HostVolume {
    path: PathBuf,
    /// API-data volumes (ConfigMap, Secret, projected) are mounted read-only whatever the pod
    /// says (their plugins' `ReadOnly` attribute).
    force_ro: bool,
}

/// The pod's log directory under [`POD_LOGS_ROOT`], removed when dropped (the kubelet removes
/// a deleted pod's logs).
#[derive(Debug)]
pub struct LogDir(pub PathBuf);

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A manifest's pod made ready for a node: named, its volumes on the host, its sandbox
/// config built.
pub struct KubePod {
    pub workload: Workload,
    pub sandbox: PodSpec,
    pub containers: Vec<KubeContainer>,
    pub dir: PodDir,
    pub log_dir: LogDir,
    config_maps: BTreeMap<String, ApiData>,
    secrets: BTreeMap<String, ApiData>,
    volumes: BTreeMap<String, HostVolume>,
    /// The service-account volume's name (`kube-api-access-<5>`), when it is mounted.
    service_account_volume: Option<String>,
    service_account_name: String,
}

impl KubePod {
    /// Names the pod, lays out its volumes in the node's kubelet dir (the kubelet mounts them
    /// before it creates the sandbox) and builds its sandbox config.
    pub fn prepare(node: &Node, objs: &Objects) -> Result<KubePod, KubeError> {
        let workload = objs.workload.clone();
        let spec = &workload.template.spec;
        let name = workload.pod_name();
        let namespace = workload.namespace();
        let uid = random_uuid();
        let what = format!(
            "{} {} (pod {namespace}/{name})",
            workload.kind, workload.metadata.name
        );
        if spec.containers.is_empty() {
            return Err(pod_err(what, "no containers"));
        }
        let dir = node.pod_dir(&uid);

        // The service-account admission: a projected token volume, mounted in every container
        // that does not mount something else there, unless the pod opts out.
        let service_account_name = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let mut containers: Vec<Container> = spec.containers.clone();
        let mut volumes: BTreeMap<String, HostVolume> = BTreeMap::new();
        let service_account_volume = if spec.automount_service_account_token != Some(false) {
            let vname = format!("kube-api-access-{}", random_suffix());
            let v = dir.service_account(&vname, TEST_TOKEN, TEST_CA, &namespace);
            volumes.insert(
                vname.clone(),
                HostVolume {
                    path: v.dir,
                    force_ro: true,
                },
            );
            for c in &mut containers {
                if !c
                    .volume_mounts
                    .iter()
                    .any(|m| m.mount_path == SERVICE_ACCOUNT_PATH)
                {
                    c.volume_mounts.push(VolumeMount {
                        name: vname.clone(),
                        mount_path: SERVICE_ACCOUNT_PATH.to_string(),
                        read_only: true,
                    });
                }
            }
            Some(vname)
        } else {
            None
        };

        for v in &spec.volumes {
            let vwhat = format!("{what}: volume {}", v.name);
            let set = [
                v.config_map.is_some(),
                v.secret.is_some(),
                v.empty_dir.is_some(),
                v.host_path.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(pod_err(
                    vwhat,
                    "exactly one of configMap, secret, emptyDir, hostPath",
                ));
            }
            // ConfigMap and Secret volumes: the kubelet's atomic-writer layout, read-only.
            let api_volume = |kind: &str,
                              files: Vec<(String, Vec<u8>, Option<u32>)>,
                              default_mode: Option<u32>| {
                let default_mode = default_mode.unwrap_or(0o644);
                let files: Vec<(&str, &[u8], u32)> = files
                    .iter()
                    .map(|(p, d, m)| (p.as_str(), d.as_slice(), m.unwrap_or(default_mode)))
                    .collect();
                HostVolume {
                    path: dir
                        .api_volume_modes(kind, &v.name, &files, default_mode)
                        .dir,
                    force_ro: true,
                }
            };
            let host = if let Some(cm) = &v.config_map {
                let files = api_files(&objs.config_maps, &cm.name, &cm.items, cm.optional)
                    .map_err(|why| pod_err(&vwhat, why))?;
                api_volume(crate::podfs::CONFIGMAP, files, cm.default_mode)
            } else if let Some(s) = &v.secret {
                let files = api_files(&objs.secrets, &s.secret_name, &s.items, s.optional)
                    .map_err(|why| pod_err(&vwhat, why))?;
                api_volume(crate::podfs::SECRET, files, s.default_mode)
            } else if let Some(e) = &v.empty_dir {
                if e.medium.as_deref().is_some_and(|m| !m.is_empty()) {
                    return Err(pod_err(
                        vwhat,
                        "emptyDir.medium: only the node's disk (no medium)",
                    ));
                }
                HostVolume {
                    path: dir.empty_dir(&v.name),
                    force_ro: false,
                }
            } else if let Some(h) = &v.host_path {
                let p = PathBuf::from(&h.path);
                match h.type_.as_deref().unwrap_or("") {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                        .map_err(|e| pod_err(&vwhat, format!("hostPath {}: {e}", p.display())))?,
                    "" | "Directory" | "File" => {
                        if !p.exists() {
                            return Err(pod_err(
                                vwhat,
                                format!("hostPath {} does not exist", p.display()),
                            ));
                        }
                    }
                    t => return Err(pod_err(vwhat, format!("hostPath.type {t}: not supported"))),
                }
                HostVolume {
                    path: p,
                    force_ro: false,
                }
            } else {
                unreachable!("one source checked above");
            };
            volumes.insert(v.name.clone(), host);
        }

        let mut kube_containers = Vec::new();
        for c in containers {
            let cwhat = format!("{what}: container {}", c.name);
            for m in &c.volume_mounts {
                if !volumes.contains_key(&m.name) {
                    return Err(pod_err(
                        &cwhat,
                        format!("volumeMounts: no volume {}", m.name),
                    ));
                }
            }
            for (k, q) in &c.resources.limits {
                let ok = match k.as_str() {
                    "memory" => memory_bytes(q).is_some(),
                    "cpu" => millicpus(q).is_some(),
                    _ => true,
                };
                if !ok {
                    return Err(pod_err(
                        &cwhat,
                        format!("limits.{k}: not a quantity: {q:?}"),
                    ));
                }
            }
            let handlers = exec_handlers(&c).map_err(|why| pod_err(&cwhat, why))?;
            kube_containers.push(KubeContainer { yaml: c, handlers });
        }

        let log_dir = LogDir(Path::new(POD_LOGS_ROOT).join(format!("{namespace}_{name}_{uid}")));
        std::fs::create_dir_all(&log_dir.0)
            .map_err(|e| pod_err(&what, format!("{}: {e}", log_dir.0.display())))?;
        let mut sandbox = PodSpec::new_in(&name, &uid, log_dir.0.clone());
        sandbox.namespace = namespace;
        if let Some(h) = &spec.hostname {
            sandbox.hostname = h.chars().take(63).collect();
        }
        sandbox.share_process_namespace = spec.share_process_namespace;
        sandbox.labels = workload
            .template
            .metadata
            .labels
            .clone()
            .into_iter()
            .collect();
        if workload.kind == "Deployment" {
            sandbox
                .labels
                .push(("pod-template-hash".to_string(), workload.template_hash()));
        }
        sandbox.annotations = workload
            .template
            .metadata
            .annotations
            .clone()
            .into_iter()
            .collect();
        let psc = spec.security_context.clone().unwrap_or_default();
        let mut groups = psc.supplemental_groups.clone();
        groups.extend(psc.fs_group);
        sandbox.security = PodSecurity {
            run_as_user: psc.run_as_user,
            run_as_group: psc.run_as_group,
            supplemental_groups: groups,
            sysctls: psc
                .sysctls
                .iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect(),
            privileged: kube_containers.iter().any(|c| {
                c.yaml
                    .security_context
                    .as_ref()
                    .and_then(|s| s.privileged)
                    .unwrap_or(false)
            }),
        };
        sandbox.ports = kube_containers
            .iter()
            .flat_map(|c| c.yaml.ports.iter())
            .map(|p| (p.container_port, p.host_port.unwrap_or(0)))
            .collect();
        let limits: Vec<ContainerSpec> = kube_containers
            .iter()
            .map(|c| {
                ContainerSpec::new(&c.yaml.name, "", &[]).limits(
                    limit(&c.yaml, "memory")
                        .and_then(|q| memory_bytes(&q))
                        .unwrap_or(0),
                    limit(&c.yaml, "cpu")
                        .and_then(|q| millicpus(&q))
                        .unwrap_or(0),
                )
            })
            .collect();
        let refs: Vec<&ContainerSpec> = limits.iter().collect();
        let sandbox = sandbox.with_limits_of(&refs);

        Ok(KubePod {
            workload,
            sandbox,
            containers: kube_containers,
            dir,
            log_dir,
            config_maps: objs.config_maps.clone(),
            secrets: objs.secrets.clone(),
            volumes,
            service_account_volume,
            service_account_name,
        })
    }

    /// The projected service-account volume's name, when the pod mounts one.
    pub fn service_account_volume(&self) -> Option<&str> {
        self.service_account_volume.as_deref()
    }

    /// The ContainerConfig of container `i` once the sandbox runs (the pod IP and etc-hosts
    /// exist): the image as pulled (PullImage per `imagePullPolicy`), env, mounts, security
    /// context. The image's user comes from ImageStatus, as the kubelet reads it.
    pub fn container_spec(
        &self,
        node: &Node,
        pod: &Pod,
        i: usize,
    ) -> Result<ContainerSpec, KubeError> {
        let c = &self.containers[i].yaml;
        let what = format!("pod {}: container {}", self.sandbox.name, c.name);
        let image_id = match c.image_pull_policy.as_deref() {
            Some("Always") => node.pull(&c.image),
            Some("Never") => node.image_status(&c.image).map(|s| s.id).ok_or_else(|| {
                pod_err(
                    &what,
                    format!("image {} is not present (imagePullPolicy Never)", c.image),
                )
            })?,
            _ => match node.image_status(&c.image) {
                Some(s) => s.id,
                None => node.pull(&c.image),
            },
        };
        let status = node.image_status(&image_id).ok_or_else(|| {
            pod_err(
                &what,
                format!("no ImageStatus for {image_id} after the pull"),
            )
        })?;
        let mut spec = ContainerSpec::new(&c.name, &image_id, &[]).limits(
            limit(c, "memory")
                .and_then(|q| memory_bytes(&q))
                .unwrap_or(0),
            limit(c, "cpu").and_then(|q| millicpus(&q)).unwrap_or(0),
        );
        spec.user_image = c.image.clone();
        spec.working_dir = c.working_dir.clone().unwrap_or_default();
        spec.stdin = c.stdin;
        spec.tty = c.tty;
        if let Some(p) = &c.termination_message_path {
            spec.termination_message_path = p.clone();
        }
        if let Some(p) = &c.termination_message_policy {
            spec.termination_message_policy = p.clone();
        }
        let env = self.env(node, pod, c).map_err(|why| pod_err(&what, why))?;
        let lookup = |name: &str| -> Option<String> {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    cri::KUBERNETES_SERVICE_ENV
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.to_string())
                })
        };
        spec.command = c
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, &lookup))
            .collect();
        spec.args = c
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, &lookup))
            .collect();
        spec.envs = env;
        spec.security = self
            .security(c, &status)
            .map_err(|why| pod_err(&what, why))?;
        // The kubelet's mounts: the volume mounts in the container's order, /etc/hosts, then
        // the termination-message file.
        for m in &c.volume_mounts {
            let v = &self.volumes[&m.name];
            spec.mounts.push(cri::mount(
                &m.mount_path,
                &v.path,
                m.read_only || v.force_ro,
            ));
        }
        spec.mounts
            .push(cri::mount("/etc/hosts", &pod.etc_hosts, false));
        spec.mounts.push(cri::mount(
            &spec.termination_message_path.clone(),
            &pod.dir.termination_log(&c.name),
            false,
        ));
        Ok(spec)
    }

    /// `makeEnvironmentVariables`: the container's env in order, each value `$(VAR)`-expanded
    /// against the variables before it and the service variables, or taken from its source.
    fn env(&self, node: &Node, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        for e in &c.env {
            let value = match (&e.value, &e.value_from) {
                (_, Some(from)) => match self.value_from(node, pod, c, from)? {
                    Some(v) => v,
                    // An optional key that is not there: no variable.
                    None => continue,
                },
                (Some(v), None) => {
                    let lookup = |name: &str| -> Option<String> {
                        env.iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .or_else(|| {
                                cri::KUBERNETES_SERVICE_ENV
                                    .iter()
                                    .find(|(k, _)| *k == name)
                                    .map(|(_, v)| v.to_string())
                            })
                    };
                    expand(v, &lookup)
                }
                (None, None) => String::new(),
            };
            match env.iter_mut().find(|(k, _)| *k == e.name) {
                Some(slot) => slot.1 = value,
                None => env.push((e.name.clone(), value)),
            }
        }
        Ok(env)
    }

    fn value_from(
        &self,
        node: &Node,
        pod: &Pod,
        c: &Container,
        from: &EnvVarSource,
    ) -> Result<Option<String>, String> {
        if let Some(r) = &from.config_map_key_ref {
            return key_ref(&self.config_maps, "ConfigMap", r);
        }
        if let Some(r) = &from.secret_key_ref {
            return key_ref(&self.secrets, "Secret", r);
        }
        if let Some(f) = &from.field_ref {
            let meta = &self.workload.template.metadata;
            let quoted = |prefix: &str| {
                f.field_path
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(|k| k.to_string())
            };
            let v = match f.field_path.as_str() {
                "metadata.name" => self.sandbox.name.clone(),
                "metadata.namespace" => self.sandbox.namespace.clone(),
                "metadata.uid" => self.sandbox.uid.clone(),
                "spec.nodeName" => node_name(),
                "spec.serviceAccountName" => self.service_account_name.clone(),
                "status.podIP" | "status.podIPs" => pod.ip.clone(),
                "status.hostIP" | "status.hostIPs" => node.network().gateway.to_string(),
                p => {
                    if let Some(k) = quoted("metadata.labels['") {
                        self.sandbox
                            .labels
                            .iter()
                            .find(|(l, _)| *l == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    } else if let Some(k) = quoted("metadata.annotations['") {
                        meta.annotations.get(&k).cloned().unwrap_or_default()
                    } else {
                        return Err(format!("env fieldRef {p}: not supported"));
                    }
                }
            };
            return Ok(Some(v));
        }
        if let Some(r) = &from.resource_field_ref {
            let target = match &r.container_name {
                Some(n) if !n.is_empty() => self
                    .containers
                    .iter()
                    .find(|k| k.yaml.name == *n)
                    .map(|k| &k.yaml)
                    .ok_or_else(|| format!("resourceFieldRef: no container {n}"))?,
                _ => c,
            };
            let (kind, res) = r.resource.split_once('.').ok_or_else(|| {
                format!(
                    "resourceFieldRef {}: not <limits|requests>.<resource>",
                    r.resource
                )
            })?;
            let q = match kind {
                "limits" => target.resources.limits.get(res),
                "requests" => target.resources.requests.get(res),
                _ => None,
            }
            .ok_or_else(|| format!("resourceFieldRef {}: not set in the pod (the node's allocatable is not modelled)", r.resource))?;
            let v = match res {
                "memory" => {
                    let div = r
                        .divisor
                        .as_ref()
                        .and_then(memory_bytes)
                        .unwrap_or(1)
                        .max(1);
                    let b = memory_bytes(q).ok_or("not a memory quantity")?;
                    (b + div - 1) / div
                }
                "cpu" => {
                    let div = r
                        .divisor
                        .as_ref()
                        .and_then(millicpus)
                        .unwrap_or(1000)
                        .max(1);
                    let m = millicpus(q).ok_or("not a CPU quantity")?;
                    (m + div - 1) / div
                }
                other => return Err(format!("resourceFieldRef {kind}.{other}: not supported")),
            };
            return Ok(Some(v.to_string()));
        }
        Err("valueFrom: no source".to_string())
    }

    fn security(&self, c: &Container, image: &ImageUser) -> Result<ContainerSecurity, String> {
        effective_security(
            self.workload.template.spec.security_context.as_ref(),
            c.security_context.as_ref(),
            image,
        )
    }

    /// Runs the pod as the kubelet starts it: RunPodSandbox, then each container created
    /// (its image pulled as its policy says), started and its postStart hook run. Panics
    /// (with containerd's log) on any failure.
    pub fn run(self, node: &Node) -> RunningPod {
        let pod = node.run_pod(&self.sandbox);
        let mut ids = Vec::new();
        for i in 0..self.containers.len() {
            let spec = self
                .container_spec(node, &pod, i)
                .unwrap_or_else(|e| panic!("{e}"));
            let cid = node.run_container(&pod, &spec);
            for h in self.containers[i].handlers_of(HandlerKind::PostStart) {
                let o = node
                    .probe(&cid, &strs(&h.command), h.timeout_secs)
                    .unwrap_or_else(|e| panic!("postStart of {}: {e}", spec.name));
                assert_eq!(o.exit_code, 0, "postStart of {}: {o:?}", spec.name);
            }
            ids.push((spec, cid));
        }
        RunningPod {
            kube: self,
            pod,
            containers: ids,
        }
    }
}

/// A kube pod whose sandbox and containers run.
pub struct RunningPod {
    pub kube: KubePod,
    pub pod: Pod,
    /// Each container's CRI config and id, in the pod's order.
    pub containers: Vec<(ContainerSpec, String)>,
}

impl RunningPod {
    /// The container id of `name`.
    pub fn id(&self, name: &str) -> &str {
        self.containers
            .iter()
            .find(|(c, _)| c.name == name)
            .map(|(_, id)| id.as_str())
            .unwrap_or_else(|| panic!("pod {}: no container {name}", self.pod.spec.name))
    }

    /// Runs every exec probe once, as the kubelet's prober does (ExecSync with the probe's
    /// timeout): (container, handler, answer).
    pub fn probe_all(
        &self,
        node: &Node,
    ) -> Vec<(String, ExecHandler, Result<ExecOutput, tonic::Status>)> {
        let mut out = Vec::new();
        for (k, (spec, cid)) in self.kube.containers.iter().zip(&self.containers) {
            for h in k.handlers.iter().filter(|h| {
                matches!(
                    h.kind,
                    HandlerKind::Liveness | HandlerKind::Readiness | HandlerKind::Startup
                )
            }) {
                let r = node.probe(cid, &strs(&h.command), h.timeout_secs);
                out.push((spec.name.clone(), h.clone(), r));
            }
        }
        out
    }

    /// The kubelet's pod termination: each container's preStop hook (ExecSync), StopContainer
    /// with the grace period, then StopPodSandbox and RemovePodSandbox (the node's teardown,
    /// QEMU gone), and the pod's log directory removed. Returns the preStop hooks' answers.
    pub fn teardown(self, node: &Node) -> Vec<(String, Result<ExecOutput, tonic::Status>)> {
        let qemu = node.qemu_of(&self.pod);
        let grace = self
            .kube
            .workload
            .template
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30);
        let mut hooks = Vec::new();
        for (k, (spec, cid)) in self.kube.containers.iter().zip(&self.containers) {
            if node.container_status(cid).state == api::ContainerState::ContainerRunning as i32 {
                for h in k.handlers_of(HandlerKind::PreStop) {
                    hooks.push((
                        spec.name.clone(),
                        node.probe(cid, &strs(&h.command), h.timeout_secs),
                    ));
                }
            }
            node.stop_container(cid, grace)
                .unwrap_or_else(|e| panic!("StopContainer {}: {e}", spec.name));
        }
        node.teardown(&self.pod, Some(qemu.pid));
        let log_dir = self.kube.log_dir.0.clone();
        drop(self.kube);
        assert!(
            !log_dir.exists(),
            "{} left after the pod",
            log_dir.display()
        );
        hooks
    }
}

/// `determineEffectiveSecurityContext`: the container's context over the pod's, the image's
/// user (ImageStatus) when none is given (root when the image names none), `runAsNonRoot`
/// checked as the kubelet checks it, `fsGroup` among the supplemental groups, the kubelet's
/// masked paths unless privileged.
pub fn effective_security(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    image: &ImageUser,
) -> Result<ContainerSecurity, String> {
    let psc = pod.cloned().unwrap_or_default();
    let csc = container.cloned().unwrap_or_default();
    let privileged = csc.privileged.unwrap_or(false);
    let mut s = ContainerSecurity {
        run_as_user: csc.run_as_user.or(psc.run_as_user),
        run_as_group: csc.run_as_group.or(psc.run_as_group),
        readonly_rootfs: csc.read_only_root_filesystem.unwrap_or(false),
        privileged,
        no_new_privs: !privileged && csc.allow_privilege_escalation == Some(false),
        ..Default::default()
    };
    if s.run_as_user.is_none() {
        match (&image.uid, &image.username) {
            (Some(uid), _) => s.run_as_user = Some(*uid),
            (None, name) if !name.is_empty() => s.run_as_username = name.clone(),
            _ => s.run_as_user = Some(0),
        }
    }
    if csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false) {
        match s.run_as_user {
            Some(0) => return Err("runAsNonRoot and the image will run as root".into()),
            None => {
                return Err(format!(
                    "runAsNonRoot and the image's user {:?} is not numeric",
                    image.username
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(caps) = &csc.capabilities {
        s.add_capabilities = caps.add.clone();
        s.drop_capabilities = caps.drop.clone();
    }
    s.supplemental_groups = psc.supplemental_groups.clone();
    s.supplemental_groups.extend(psc.fs_group);
    if privileged {
        s.masked_paths.clear();
        s.readonly_paths.clear();
    }
    Ok(s)
}

/// The image's user as CRI's ImageStatus reports it.
#[derive(Debug, Clone)]
pub struct ImageUser {
    pub id: String,
    pub uid: Option<i64>,
    pub username: String,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

fn limit(c: &Container, name: &str) -> Option<Quantity> {
    c.resources.limits.get(name).cloned()
}

/// The node's name as the kubelet registers it (the host name, lower case).
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_lowercase())
        .unwrap_or_else(|_| "kata-cc-node".to_string())
}

/// The files of a ConfigMap or Secret volume: every key, or the `items` chosen (path, mode).
#[allow(clippy::type_complexity)]
fn api_files(
    objects: &BTreeMap<String, ApiData>,
    name: &str,
    items: &[KeyToPath],
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, Option<u32>)>, String> {
    let Some(obj) = objects.get(name) else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("{name} is not among the ConfigMaps/Secrets given"))
        };
    };
    if items.is_empty() {
        return Ok(obj
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect());
    }
    items
        .iter()
        .map(|i| {
            obj.data
                .get(&i.key)
                .map(|v| (i.path.clone(), v.clone(), i.mode))
                .ok_or_else(|| format!("{name} has no key {}", i.key))
        })
        .collect()
}

fn key_ref(
    objects: &BTreeMap<String, ApiData>,
    kind: &str,
    r: &KeyRef,
) -> Result<Option<String>, String> {
    match objects.get(&r.name).and_then(|o| o.data.get(&r.key)) {
        Some(v) => String::from_utf8(v.clone())
            .map(Some)
            .map_err(|_| format!("{kind} {} key {}: not UTF-8", r.name, r.key)),
        None if r.optional => Ok(None),
        None => Err(format!(
            "{kind} {} has no key {} (or is not given)",
            r.name, r.key
        )),
    }
}

/// The exec probes and hooks of a container, as the kubelet runs them; a network probe or
/// hook is the kubelet's own business and is not listed.
fn exec_handlers(c: &Container) -> Result<Vec<ExecHandler>, String> {
    let mut out = Vec::new();
    for (kind, p) in [
        (HandlerKind::Liveness, &c.liveness_probe),
        (HandlerKind::Readiness, &c.readiness_probe),
        (HandlerKind::Startup, &c.startup_probe),
    ] {
        if let Some(p) = p {
            if let Some(e) = &p.exec {
                if e.command.is_empty() {
                    return Err(format!("{kind:?} probe: empty exec command"));
                }
                out.push(ExecHandler {
                    kind,
                    command: e.command.clone(),
                    timeout_secs: p.timeout_seconds.unwrap_or(1),
                });
            }
        }
    }
    if let Some(l) = &c.lifecycle {
        for (kind, h) in [
            (HandlerKind::PostStart, &l.post_start),
            (HandlerKind::PreStop, &l.pre_stop),
        ] {
            if let Some(e) = h.as_ref().and_then(|h| h.exec.as_ref()) {
                out.push(ExecHandler {
                    kind,
                    command: e.command.clone(),
                    timeout_secs: 0,
                });
            }
        }
    }
    Ok(out)
}

/// The kubelet's `$(VAR)` expansion (`third_party/forked/golang/expansion`): a known variable
/// is replaced, an unknown reference stays as written, `$$` is a literal `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_as_the_kubelet() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$", &lookup), "x-$(B)-$(A)-$-$");
        assert_eq!(expand("plain", &lookup), "plain");
        assert_eq!(expand("$(A", &lookup), "$(A");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {a: b}
    spec:
      containers:
      - name: app
        image: r/busybox:1
        command: [sh, -c]
        args: ['echo $(GREETING)']
        env:
        - {name: GREETING, value: hi}
        - name: FROM_CM
          valueFrom: {configMapKeyRef: {name: cm, key: k}}
        livenessProbe: {exec: {command: [cat, /tmp/ok]}, timeoutSeconds: 3}
        lifecycle: {preStop: {exec: {command: [sleep, '1']}}}
        volumeMounts: [{name: s, mountPath: /s}]
      volumes:
      - name: s
        secret: {secretName: sec, defaultMode: 0400}
";

    #[test]
    fn loads_a_deployment_with_its_config() {
        let d = tempfile::tempdir().unwrap();
        let m = write(d.path(), "d.yaml", DEPLOYMENT);
        let cm = write(
            d.path(),
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {k: v}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: sec}\ndata: {p: cHc=}\nstringData: {q: x}\n",
        );
        let o = Objects::load(&m, &[cm]).unwrap();
        assert_eq!(o.workload.kind, "Deployment");
        assert_eq!(o.workload.template.metadata.annotations["a"], "b");
        assert_eq!(o.config_maps["cm"].data["k"], b"v");
        assert_eq!(o.secrets["sec"].data["p"], b"pw");
        assert_eq!(o.secrets["sec"].data["q"], b"x");
        let vol = &o.workload.template.spec.volumes[0];
        assert_eq!(vol.secret.as_ref().unwrap().default_mode, Some(0o400));
        let c = &o.workload.template.spec.containers[0];
        let h = exec_handlers(c).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].kind, h[0].timeout_secs), (HandlerKind::Liveness, 3));
        assert_eq!((h[1].kind, h[1].timeout_secs), (HandlerKind::PreStop, 0));
        // genpolicy's regex for a Deployment's pods: <name>-<suffix>-<suffix>.
        let name = o.workload.pod_name();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0], "web");
        assert_eq!(parts[2].len(), 5);
        for p in &parts[1..] {
            assert!(p.bytes().all(|b| NAME_ALPHABET.contains(&b)), "{name}");
        }
        assert_eq!(o.workload.template_hash(), o.workload.template_hash());
    }

    #[test]
    fn names_of_other_kinds() {
        let d = tempfile::tempdir().unwrap();
        let job = write(
            d.path(),
            "j.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: i}]\n",
        );
        let o = Objects::load(&job, &[]).unwrap();
        let n = o.workload.pod_name();
        assert!(n.starts_with("once-") && n.len() == 10, "{n}");
        assert_eq!(
            o.workload.template.spec.restart_policy.as_deref(),
            Some("Never")
        );
        let pod = write(
            d.path(),
            "p.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, namespace: ns1}\nspec:\n  containers: [{name: c, image: i}]\n",
        );
        let o = Objects::load(&pod, &[]).unwrap();
        assert_eq!(
            (o.workload.pod_name(), o.workload.namespace()),
            ("solo".into(), "ns1".into())
        );
    }

    #[test]
    fn refuses_what_it_does_not_translate() {
        let d = tempfile::tempdir().unwrap();
        let m = write(
            d.path(),
            "d.yaml",
            &DEPLOYMENT.replace(
                "        livenessProbe",
                "        envFrom: []\n        livenessProbe",
            ),
        );
        let e = Objects::load(&m, &[]).unwrap_err().to_string();
        assert!(e.contains("spec.template") && e.contains("envFrom"), "{e}");
        let svc = write(
            d.path(),
            "s.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        );
        let e = Objects::load(&svc, &[]).unwrap_err().to_string();
        assert!(e.contains("\"Service\" is not a workload"), "{e}");
        let bad = write(d.path(), "b.yaml", "kind: [");
        assert!(matches!(
            Objects::load(&bad, &[]),
            Err(KubeError::Yaml { .. })
        ));
    }

    #[test]
    fn effective_security_as_the_kubelet() {
        let root = ImageUser {
            id: "sha256:x".into(),
            uid: Some(0),
            username: String::new(),
        };
        let s = effective_security(None, None, &root).unwrap();
        assert_eq!(s.run_as_user, Some(0));
        assert!(!s.no_new_privs && !s.readonly_rootfs && !s.privileged);
        assert_eq!(s.masked_paths.len(), cri::DEFAULT_MASKED_PATHS.len());
        let pod = PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000],
            fs_group: Some(2000),
            ..Default::default()
        };
        let c = SecurityContext {
            run_as_user: Some(1001),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: vec!["NET_ADMIN".into()],
                drop: vec!["ALL".into()],
            }),
            ..Default::default()
        };
        let s = effective_security(Some(&pod), Some(&c), &root).unwrap();
        assert_eq!((s.run_as_user, s.run_as_group), (Some(1001), Some(3000)));
        assert_eq!(s.supplemental_groups, [4000, 2000]);
        assert!(s.readonly_rootfs && s.no_new_privs);
        assert_eq!(
            (s.add_capabilities.len(), s.drop_capabilities.len()),
            (1, 1)
        );
        // An image user by name goes by name; runAsNonRoot refuses root and names.
        let named = ImageUser {
            id: "sha256:y".into(),
            uid: None,
            username: "app".into(),
        };
        let s = effective_security(None, None, &named).unwrap();
        assert_eq!((s.run_as_user, s.run_as_username.as_str()), (None, "app"));
        let non_root = SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        assert!(effective_security(None, Some(&non_root), &root).is_err());
        assert!(effective_security(None, Some(&non_root), &named).is_err());
        // Privileged: no masked paths, and no no_new_privs.
        let p = SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        };
        let s = effective_security(None, Some(&p), &root).unwrap();
        assert!(s.privileged && !s.no_new_privs && s.masked_paths.is_empty());
    }

    #[test]
    fn api_files_with_items() {
        let mut m = BTreeMap::new();
        m.insert(
            "cm".to_string(),
            ApiData {
                name: "cm".into(),
                data: BTreeMap::from([
                    ("a".to_string(), b"1".to_vec()),
                    ("b".to_string(), b"2".to_vec()),
                ]),
            },
        );
        let all = api_files(&m, "cm", &[], false).unwrap();
        assert_eq!(all.len(), 2);
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o600),
        }];
        assert_eq!(
            api_files(&m, "cm", &items, false).unwrap(),
            vec![("sub/b.txt".to_string(), b"2".to_vec(), Some(0o600))]
        );
        assert!(api_files(&m, "none", &[], false).is_err());
        assert!(api_files(&m, "none", &[], true).unwrap().is_empty());
    }
}
