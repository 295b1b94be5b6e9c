//! What the kubelet and containerd's CRI (1.6) make of a pod, as kata-cc's shim then sends it
//! (docs/kubernetes.md): each container's args, env, user, working dir, capabilities, mounts,
//! and the pause container's. Two steps: [`plan`] reads and checks the pod spec (every field
//! is understood or refused, before any image is fetched); [`build`] adds the image facts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::images::{Accounts, ImageFacts};
use super::text::{expand, Dyn, Text};
use super::user::{self, UserSpec};
use super::workload::{File, Inputs, PodSource};
use super::yaml::FieldPath;
use super::{Diagnostics, GenError, Options};

/// containerd's default PATH (its default spec), replaced by the image's when it has one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The pod's service-account token, as the ServiceAccount admission plugin mounts it.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where CRI puts the sandbox's shm for every container (kata-cc: the guest tmpfs).
pub const SANDBOX_SHM: &str = agent_proto::contract::SANDBOX_SHM_DIR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pause,
    Init,
    App,
}

/// A volume of the pod, as its mounts' sources are made in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Volume {
    /// Copied per container (ConfigMap, Secret, projected, downward API, PVC, hostPath).
    Copy,
    /// A disk emptyDir: copied once per pod.
    EmptyDir,
    /// A hostPath under /proc, /sys or /dev: bound as it is.
    HostSystemPath(String),
}

/// Where a mount's source is in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A copy for this container: `<cid>-<16 hex>-<name>`.
    Copy(String),
    /// A pod-wide copy (emptyDir): `<sandbox id>-<16 hex>-<volume name>`.
    PodCopy(String),
    /// As written (kernel filesystems, system paths, the sandbox shm).
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub type_: String,
    pub source: Source,
    pub options: Vec<String>,
}

/// A container of the pod as read from the manifest.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub kind: Kind,
    pub name: String,
    pub image: String,
    /// Where its image is named (for messages).
    pub image_field: FieldPath,
    /// `command` and `args` after the kubelet's `$(VAR)` expansion (`None`: not given).
    pub command: Option<Vec<Text>>,
    pub args: Option<Vec<Text>>,
    pub working_dir: Option<String>,
    /// The kubelet's env (`NAME`, value), and the names that may be missing (optional
    /// sources not given).
    pub env: Vec<(String, Text)>,
    pub optional_env: BTreeSet<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub privileged: bool,
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub readonly_root: bool,
    /// The kubelet's and CRI's bind mounts (the default kernel mounts are added by `build`).
    pub mounts: Vec<Mount>,
    pub exec_commands: Vec<Vec<String>>,
    pub stdin: bool,
    pub tty: bool,
    pub termination_message_path: String,
    pub termination_message_policy: String,
}

/// A pod of the manifest as read from it.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub source: PodSource,
    pub namespace: Option<String>,
    /// Anchored regex of the pod's hostname (CreateSandboxRequest.hostname).
    pub hostname_regex: String,
    /// The hostname as containers' HOSTNAME shows it.
    pub hostname: Text,
    pub share_process_namespace: bool,
    pub sysctls: BTreeMap<String, String>,
    /// The pod's supplementalGroups and fsGroup.
    pub supplemental_groups: Vec<u32>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    /// The pod's annotations that CRI passes to every container (`io.katacontainers.*`).
    pub kata_annotations: BTreeMap<String, String>,
    /// The pause first, then the init containers, then the containers.
    pub containers: Vec<ContainerPlan>,
    pub is_job: bool,
}

impl PodPlan {
    /// The CRI user string of a container (`None` if it is refused: `build` reports it).
    pub fn user_string(&self, c: &ContainerPlan, image_user: &str) -> Option<String> {
        user::user_string(c.run_as_user, c.run_as_group, image_user).ok()
    }
}

/// A container as the agent will be asked to create it.
#[derive(Debug, Clone)]
pub struct ContainerModel {
    pub kind: Kind,
    pub name: String,
    pub image: ImageFacts,
    pub args: Vec<Text>,
    /// `NAME=value` entries; `optional_env` names may be missing.
    pub env: Vec<Text>,
    pub optional_env: BTreeSet<String>,
    pub cwd: String,
    pub user: UserSpec,
    pub terminal: bool,
    pub no_new_privileges: bool,
    pub privileged: bool,
    /// Explicit capability set (`None`: containerd's default set).
    pub caps: Caps,
    pub readonly_root: bool,
    pub mounts: Vec<Mount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sandbox_pidns: bool,
    pub exec_commands: Vec<Vec<String>>,
    pub stdin: bool,
    pub termination_message_path: String,
    pub termination_message_policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caps {
    /// containerd's default set (genpolicy's `$(default_caps)`).
    Default,
    /// Every capability the node's kernel knows (`$(privileged_caps)`).
    Privileged,
    List(BTreeSet<String>),
}

/// A pod ready to be written as policy data.
#[derive(Debug, Clone)]
pub struct PodModel {
    pub source: PodSource,
    pub namespace: Option<String>,
    pub hostname_regex: String,
    pub sysctls: BTreeMap<String, String>,
    pub kata_annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerModel>,
    pub is_job: bool,
}

/// containerd's default capabilities (oci `defaultUnixCaps`).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// containerd's masked and read-only paths of an unprivileged container.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Checks the keys of a mapping: each is in `known` or refused (`FILE:LINE: field: not
/// supported`).
struct Ctx<'a> {
    file: &'a File,
    src: &'a PodSource,
    diag: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn line(&self, rel: &FieldPath) -> usize {
        self.file.line(self.src.doc, &self.src.field(rel))
    }

    fn unsupported(&mut self, rel: &FieldPath, why: &str) -> Result<(), GenError> {
        let e = GenError::Unsupported {
            file: self.file.path.clone(),
            line: self.line(rel),
            field: self.src.field(rel).to_string(),
            why: why.to_string(),
        };
        self.diag.unsupported(e)
    }

    fn invalid(&self, rel: &FieldPath, problem: impl Into<String>) -> GenError {
        GenError::Field {
            file: self.file.path.clone(),
            line: self.line(rel),
            field: self.src.field(rel).to_string(),
            problem: problem.into(),
        }
    }

    fn warn(&mut self, rel: &FieldPath, w: &str) {
        let line = self.line(rel);
        let field = self.src.field(rel);
        self.diag
            .warn(format!("{}:{line}: {field}: {w}", self.file.path));
    }

    fn keys(&mut self, v: &Value, at: &FieldPath, known: &[&str]) -> Result<(), GenError> {
        let Some(m) = v.as_object() else {
            return Err(self.invalid(at, "not a mapping"));
        };
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                self.unsupported(&at.key(k), "")?;
            }
        }
        Ok(())
    }

    fn string(&self, v: &Value, at: &FieldPath) -> Result<Option<String>, GenError> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.invalid(at, "not a string")),
        }
    }

    fn strings(&self, v: &Value, at: &FieldPath) -> Result<Option<Vec<String>>, GenError> {
        match v {
            Value::Null => Ok(None),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.invalid(&at.index(i), "not a string"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(self.invalid(at, "not a list of strings")),
        }
    }

    fn bool(&self, v: &Value, at: &FieldPath) -> Result<Option<bool>, GenError> {
        match v {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            _ => Err(self.invalid(at, "not true or false")),
        }
    }

    fn int(&self, v: &Value, at: &FieldPath) -> Result<Option<i64>, GenError> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.invalid(at, "not an integer")),
            _ => Err(self.invalid(at, "not an integer")),
        }
    }

    fn group(&self, v: &Value, at: &FieldPath) -> Result<Option<u32>, GenError> {
        self.int(v, at)?
            .map(|n| u32::try_from(n).map_err(|_| self.invalid(at, "not a valid id")))
            .transpose()
    }
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

/// Pod spec fields that change nothing the agent is asked (scheduling, DNS and host file
/// contents, grace periods, ...).
const POD_SPEC_NO_EFFECT: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "hostAliases",
    "imagePullSecrets",
    "nodeSelector",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
];

/// Reads and checks a pod of the manifest.
pub fn plan(
    file: &File,
    src: &PodSource,
    inputs: &Inputs,
    opts: &Options,
    diag: &mut Diagnostics,
) -> Result<PodPlan, GenError> {
    let mut cx = Ctx { file, src, diag };
    let pod = &src.pod;
    let spec_at = FieldPath::keys(&["spec"]);
    let spec = get(pod, "spec");
    if !spec.is_object() {
        return Err(cx.invalid(&spec_at, "missing or not a mapping"));
    }
    let mut known: Vec<&str> = POD_SPEC_NO_EFFECT.to_vec();
    known.extend([
        "automountServiceAccountToken",
        "containers",
        "hostIPC",
        "hostNetwork",
        "hostPID",
        "hostUsers",
        "hostname",
        "initContainers",
        "nodeName",
        "os",
        "securityContext",
        "serviceAccount",
        "serviceAccountName",
        "setHostnameAsFQDN",
        "shareProcessNamespace",
        "volumes",
    ]);
    cx.keys(spec, &spec_at, &known)?;
    for (key, bad, why) in [
        ("hostNetwork", true, ": the pod's network is the VM's"),
        ("hostPID", true, ": the pod's processes are in the VM"),
        ("hostIPC", true, ": the pod's IPC is in the VM"),
        ("setHostnameAsFQDN", true, ""),
        ("hostUsers", false, ": no user namespaces in the guest"),
    ] {
        let at = spec_at.key(key);
        if cx.bool(get(spec, key), &at)? == Some(bad) {
            cx.unsupported(&at, why)?;
        }
    }
    if let Some(os) = spec.get("os") {
        let at = spec_at.key("os");
        cx.keys(os, &at, &["name"])?;
        if cx.string(get(os, "name"), &at.key("name"))?.as_deref() != Some("linux") {
            cx.unsupported(&at.key("name"), ": only linux")?;
        }
    }

    // Pod security context.
    let psc_at = spec_at.key("securityContext");
    let psc = get(spec, "securityContext");
    let mut sysctls = BTreeMap::new();
    let mut supplemental = Vec::new();
    let (mut run_as_user, mut run_as_group, mut run_as_non_root) = (None, None, false);
    if !psc.is_null() {
        cx.keys(
            psc,
            &psc_at,
            &[
                "appArmorProfile",
                "fsGroup",
                "fsGroupChangePolicy",
                "runAsGroup",
                "runAsNonRoot",
                "runAsUser",
                "seLinuxChangePolicy",
                "seLinuxOptions",
                "seccompProfile",
                "supplementalGroups",
                "supplementalGroupsPolicy",
                "sysctls",
                "windowsOptions",
            ],
        )?;
        run_as_user = cx.int(get(psc, "runAsUser"), &psc_at.key("runAsUser"))?;
        run_as_group = cx.int(get(psc, "runAsGroup"), &psc_at.key("runAsGroup"))?;
        run_as_non_root = cx
            .bool(get(psc, "runAsNonRoot"), &psc_at.key("runAsNonRoot"))?
            .unwrap_or(false);
        if let Some(a) = psc.get("supplementalGroups").and_then(Value::as_array) {
            for (i, g) in a.iter().enumerate() {
                if let Some(g) = cx.group(g, &psc_at.key("supplementalGroups").index(i))? {
                    supplemental.push(g);
                }
            }
        }
        if let Some(g) = cx.group(get(psc, "fsGroup"), &psc_at.key("fsGroup"))? {
            supplemental.push(g);
        }
        let policy = cx.string(
            get(psc, "supplementalGroupsPolicy"),
            &psc_at.key("supplementalGroupsPolicy"),
        )?;
        if policy.as_deref().is_some_and(|p| p != "Merge") {
            cx.unsupported(&psc_at.key("supplementalGroupsPolicy"), ": only Merge")?;
        }
        if let Some(a) = psc.get("sysctls").and_then(Value::as_array) {
            for (i, s) in a.iter().enumerate() {
                let at = psc_at.key("sysctls").index(i);
                cx.keys(s, &at, &["name", "value"])?;
                let name = cx
                    .string(get(s, "name"), &at.key("name"))?
                    .unwrap_or_default();
                let value = cx
                    .string(get(s, "value"), &at.key("value"))?
                    .unwrap_or_default();
                sysctls.insert(name, value);
            }
        }
    }

    // Name, namespace, hostname.
    let namespace = src.namespace.clone();
    let hostname = cx.string(get(spec, "hostname"), &spec_at.key("hostname"))?;
    let hostname_regex = match (&hostname, &src.fixed_name) {
        (Some(h), _) => format!("^{}$", regex::escape(&kubelet_hostname(h))),
        (None, Some(n)) => format!("^{}$", regex::escape(&kubelet_hostname(n))),
        (None, None) => src.name_regex.clone(),
    };
    let hostname_text = match (&hostname, &src.fixed_name) {
        (Some(h), _) => Text::lit(kubelet_hostname(h)),
        (None, Some(n)) => Text::lit(kubelet_hostname(n)),
        (None, None) => Text::dynamic(Dyn::HostName),
    };
    let pod_name = match &src.fixed_name {
        Some(n) => Text::lit(n.clone()),
        None => Text::dynamic(Dyn::SandboxName),
    };
    let pod_namespace = match &namespace {
        Some(n) => Text::lit(n.clone()),
        None => Text::dynamic(Dyn::SandboxNamespace),
    };
    let node_name = cx
        .string(get(spec, "nodeName"), &spec_at.key("nodeName"))?
        .map(Text::lit)
        .unwrap_or_else(|| Text::dynamic(Dyn::NodeName));
    let service_account = cx
        .string(
            get(spec, "serviceAccountName"),
            &spec_at.key("serviceAccountName"),
        )?
        .or(cx.string(get(spec, "serviceAccount"), &spec_at.key("serviceAccount"))?)
        .unwrap_or_else(|| "default".to_string());
    let automount = cx
        .bool(
            get(spec, "automountServiceAccountToken"),
            &spec_at.key("automountServiceAccountToken"),
        )?
        .unwrap_or(true);
    let share_process_namespace = cx
        .bool(
            get(spec, "shareProcessNamespace"),
            &spec_at.key("shareProcessNamespace"),
        )?
        .unwrap_or(false);

    let meta = get(pod, "metadata");
    let labels: BTreeMap<String, String> = string_map(get(meta, "labels"));
    let annotations: BTreeMap<String, String> = string_map(get(meta, "annotations"));
    let kata_annotations = annotations
        .iter()
        .filter(|(k, _)| k.starts_with("io.katacontainers."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let volumes = plan_volumes(&mut cx, spec, &spec_at)?;
    let pod_values = PodValues {
        name: pod_name,
        namespace: pod_namespace,
        node_name,
        service_account,
        labels,
        annotations,
        kind: src.kind.clone(),
    };

    let mut containers = vec![ContainerPlan {
        kind: Kind::Pause,
        name: String::new(),
        image: opts.pause_image.clone(),
        image_field: FieldPath::default(),
        command: None,
        args: None,
        working_dir: None,
        env: Vec::new(),
        optional_env: BTreeSet::new(),
        run_as_user,
        run_as_group,
        privileged: false,
        caps_add: Vec::new(),
        caps_drop: Vec::new(),
        no_new_privileges: true,
        readonly_root: true,
        mounts: vec![
            Mount {
                destination: "/dev/shm".into(),
                type_: "bind".into(),
                source: Source::Literal(SANDBOX_SHM.into()),
                options: vec!["rbind".into()],
            },
            Mount {
                destination: "/etc/resolv.conf".into(),
                type_: "bind".into(),
                source: Source::Copy("resolv.conf".into()),
                // containerd 1.6's; 2.x adds restricting flags, which the rules accept.
                options: ["rbind", "ro"].map(String::from).to_vec(),
            },
        ],
        exec_commands: Vec::new(),
        stdin: false,
        tty: false,
        termination_message_path: String::new(),
        termination_message_policy: String::new(),
    }];
    let mut names = BTreeSet::new();
    for (list, kind) in [("initContainers", Kind::Init), ("containers", Kind::App)] {
        let at = spec_at.key(list);
        let items = match get(spec, list) {
            Value::Null => continue,
            Value::Array(a) => a,
            _ => return Err(cx.invalid(&at, "not a list")),
        };
        for (i, c) in items.iter().enumerate() {
            let c = plan_container(
                &mut cx,
                c,
                &at.index(i),
                kind,
                &PodContext {
                    values: &pod_values,
                    volumes: &volumes,
                    inputs,
                    all: spec,
                    run_as_user,
                    run_as_group,
                    automount,
                },
            )?;
            if !names.insert(c.name.clone()) {
                return Err(cx.invalid(
                    &at.index(i).key("name"),
                    format!("container name {:?} is used twice", c.name),
                ));
            }
            containers.push(c);
        }
    }
    if containers.len() == 1 {
        return Err(cx.invalid(&spec_at.key("containers"), "no containers"));
    }
    Ok(PodPlan {
        source: src.clone(),
        namespace,
        hostname_regex,
        hostname: hostname_text,
        share_process_namespace,
        sysctls,
        supplemental_groups: supplemental,
        run_as_user,
        run_as_group,
        run_as_non_root,
        kata_annotations,
        containers,
        is_job: matches!(src.kind.as_str(), "Job" | "CronJob"),
    })
}

/// The kubelet's hostname of a pod: at most 63 characters, no trailing '-' or '.'.
fn kubelet_hostname(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    name[..63].trim_end_matches(['-', '.']).to_string()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn plan_volumes(
    cx: &mut Ctx,
    spec: &Value,
    spec_at: &FieldPath,
) -> Result<BTreeMap<String, Volume>, GenError> {
    let mut out = BTreeMap::new();
    let at = spec_at.key("volumes");
    let items = match get(spec, "volumes") {
        Value::Null => return Ok(out),
        Value::Array(a) => a,
        _ => return Err(cx.invalid(&at, "not a list")),
    };
    for (i, v) in items.iter().enumerate() {
        let vat = at.index(i);
        let Some(name) = cx.string(get(v, "name"), &vat.key("name"))? else {
            return Err(cx.invalid(&vat.key("name"), "missing"));
        };
        let Some(m) = v.as_object() else {
            return Err(cx.invalid(&vat, "not a mapping"));
        };
        let mut kind = None;
        for (k, body) in m {
            let volume = match k.as_str() {
                "name" => continue,
                "configMap" | "secret" | "projected" | "downwardAPI" => Volume::Copy,
                "emptyDir" => Volume::EmptyDir,
                "hostPath" => {
                    let path = cx
                        .string(get(body, "path"), &vat.key(k).key("path"))?
                        .unwrap_or_default();
                    let p = std::path::Path::new(&path);
                    if ["/proc", "/sys", "/dev"].iter().any(|s| p.starts_with(s)) {
                        Volume::HostSystemPath(path)
                    } else {
                        Volume::Copy
                    }
                }
                "persistentVolumeClaim" | "ephemeral" => {
                    cx.warn(
                        &vat.key(k),
                        "copied into the guest when a container starts: writes stay in the VM",
                    );
                    Volume::Copy
                }
                _ => {
                    cx.unsupported(&vat.key(k), " (volume types: configMap, secret, projected, downwardAPI, emptyDir, hostPath, persistentVolumeClaim, ephemeral)")?;
                    continue;
                }
            };
            kind = Some(volume);
        }
        if let Some(k) = kind {
            out.insert(name, k);
        }
    }
    Ok(out)
}

/// What a container's env and mounts read from its pod.
struct PodContext<'a> {
    values: &'a PodValues,
    volumes: &'a BTreeMap<String, Volume>,
    inputs: &'a Inputs,
    /// The pod spec (other containers' resources for `resourceFieldRef.containerName`).
    all: &'a Value,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    automount: bool,
}

/// The downward API's values of the pod.
struct PodValues {
    name: Text,
    namespace: Text,
    node_name: Text,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    kind: String,
}

const CONTAINER_NO_EFFECT: &[&str] = &[
    "imagePullPolicy",
    "ports",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "stdinOnce",
    "terminationMessagePolicy",
];

fn plan_container(
    cx: &mut Ctx,
    c: &Value,
    at: &FieldPath,
    kind: Kind,
    pod: &PodContext,
) -> Result<ContainerPlan, GenError> {
    let mut known = CONTAINER_NO_EFFECT.to_vec();
    known.extend([
        "args",
        "command",
        "env",
        "envFrom",
        "image",
        "lifecycle",
        "livenessProbe",
        "name",
        "readinessProbe",
        "securityContext",
        "startupProbe",
        "stdin",
        "terminationMessagePath",
        "tty",
        "volumeMounts",
        "workingDir",
    ]);
    cx.keys(c, at, &known)?;
    let Some(name) = cx.string(get(c, "name"), &at.key("name"))? else {
        return Err(cx.invalid(&at.key("name"), "missing"));
    };
    let image_field = at.key("image");
    let Some(image) = cx.string(get(c, "image"), &image_field)? else {
        return Err(cx.invalid(&image_field, "missing"));
    };
    warn_latest(cx, &image_field, &name, &image);

    // Security context (the container's own, else the pod's user).
    let sc_at = at.key("securityContext");
    let sc = get(c, "securityContext");
    let (mut run_as_user, mut run_as_group) = (pod.run_as_user, pod.run_as_group);
    let (mut privileged, mut readonly_root, mut no_new_privileges) = (false, false, false);
    let (mut caps_add, mut caps_drop) = (Vec::new(), Vec::new());
    if !sc.is_null() {
        cx.keys(
            sc,
            &sc_at,
            &[
                "allowPrivilegeEscalation",
                "appArmorProfile",
                "capabilities",
                "privileged",
                "procMount",
                "readOnlyRootFilesystem",
                "runAsGroup",
                "runAsNonRoot",
                "runAsUser",
                "seLinuxOptions",
                "seccompProfile",
                "windowsOptions",
            ],
        )?;
        if let Some(u) = cx.int(get(sc, "runAsUser"), &sc_at.key("runAsUser"))? {
            run_as_user = Some(u);
        }
        if let Some(g) = cx.int(get(sc, "runAsGroup"), &sc_at.key("runAsGroup"))? {
            run_as_group = Some(g);
        }
        privileged = cx
            .bool(get(sc, "privileged"), &sc_at.key("privileged"))?
            .unwrap_or(false);
        if privileged {
            cx.warn(
                &sc_at.key("privileged"),
                "a privileged container gets every capability and a writable /sys (host \
                 devices only without the runtime's privileged_without_host_devices, which \
                 kata-cc install sets; the policy refuses devices)",
            );
        }
        readonly_root = cx
            .bool(
                get(sc, "readOnlyRootFilesystem"),
                &sc_at.key("readOnlyRootFilesystem"),
            )?
            .unwrap_or(false);
        // The kubelet's `AddNoNewPrivileges`: only an explicit false.
        no_new_privileges = cx.bool(
            get(sc, "allowPrivilegeEscalation"),
            &sc_at.key("allowPrivilegeEscalation"),
        )? == Some(false);
        let pm = cx.string(get(sc, "procMount"), &sc_at.key("procMount"))?;
        if pm.as_deref().is_some_and(|p| p != "Default") {
            cx.unsupported(&sc_at.key("procMount"), ": only Default")?;
        }
        let caps = get(sc, "capabilities");
        if !caps.is_null() {
            let cat = sc_at.key("capabilities");
            cx.keys(caps, &cat, &["add", "drop"])?;
            caps_add = cx
                .strings(get(caps, "add"), &cat.key("add"))?
                .unwrap_or_default();
            caps_drop = cx
                .strings(get(caps, "drop"), &cat.key("drop"))?
                .unwrap_or_default();
        }
    }
    let stdin = cx.bool(get(c, "stdin"), &at.key("stdin"))?.unwrap_or(false);
    let tty = cx.bool(get(c, "tty"), &at.key("tty"))?.unwrap_or(false);
    let termination_message_path = cx
        .string(
            get(c, "terminationMessagePath"),
            &at.key("terminationMessagePath"),
        )?
        .unwrap_or_else(|| "/dev/termination-log".to_string());
    let termination_message_policy = cx
        .string(
            get(c, "terminationMessagePolicy"),
            &at.key("terminationMessagePolicy"),
        )?
        .unwrap_or_else(|| "File".to_string());
    let working_dir = cx.string(get(c, "workingDir"), &at.key("workingDir"))?;

    // Env as the kubelet makes it, then command and args expanded with it.
    let (env, optional_env) = plan_env(cx, c, at, pod)?;
    let lookup = |n: &str| lookup_env(&env, n);
    let expand_all = |v: Option<Vec<String>>| {
        v.map(|v| v.iter().map(|s| expand(s, &lookup)).collect::<Vec<Text>>())
    };
    let command = expand_all(cx.strings(get(c, "command"), &at.key("command"))?);
    let args = expand_all(cx.strings(get(c, "args"), &at.key("args"))?);

    let exec_commands = plan_exec_commands(cx, c, at)?;
    let mounts = plan_mounts(cx, c, at, pod, readonly_root, &termination_message_path)?;
    Ok(ContainerPlan {
        kind,
        name,
        image,
        image_field,
        command,
        args,
        working_dir,
        env,
        optional_env,
        run_as_user,
        run_as_group,
        privileged,
        caps_add,
        caps_drop,
        no_new_privileges,
        readonly_root,
        mounts,
        exec_commands,
        stdin,
        tty,
        termination_message_path,
        termination_message_policy,
    })
}

fn warn_latest(cx: &mut Ctx, at: &FieldPath, name: &str, image: &str) {
    if image.contains('@') {
        return;
    }
    // The tag is after the last ':' that follows the last '/' (a registry port is not one).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) => cx.warn(
            at,
            &format!("container {name:?}: image {image} has the tag latest: the policy pins its layers as they are now, another push under the tag will be refused"),
        ),
        None => cx.warn(
            at,
            &format!("container {name:?}: image {image} has no tag (latest): the policy pins its layers as they are now, another push under the tag will be refused"),
        ),
        _ => {}
    }
}

/// A service's env variables as the kubelet names them (`<SVC>_SERVICE_HOST`, ...): their
/// values are the cluster's.
fn is_service_var(name: &str) -> bool {
    static SUFFIXES: &[&str] = &["_SERVICE_HOST", "_SERVICE_PORT", "_PORT"];
    SUFFIXES.iter().any(|s| name.ends_with(s))
        || name.contains("_SERVICE_PORT_")
        || (name.contains("_PORT_")
            && (name.ends_with("_TCP")
                || name.ends_with("_UDP")
                || name.ends_with("_SCTP")
                || name.ends_with("_PROTO")
                || name.ends_with("_ADDR")
                || name.ends_with("_PORT")))
}

/// The kubelet's env of a container: (name, value), in order.
type Env = Vec<(String, Text)>;

/// apimachinery's `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_name(name: &str) -> bool {
    let ok = |c: char| c == '-' || c == '.' || c == '_' || c.is_ascii_alphabetic();
    let mut chars = name.chars();
    chars.next().is_some_and(ok) && chars.all(|c| ok(c) || c.is_ascii_digit())
}

fn lookup_env(env: &[(String, Text)], name: &str) -> Option<Text> {
    match env.iter().rev().find(|(n, _)| n == name) {
        Some((_, v)) => Some(v.clone()),
        None if is_service_var(name) => Some(Text::dynamic(Dyn::Any)),
        None => None,
    }
}

fn set_env(env: &mut Vec<(String, Text)>, name: String, value: Text) {
    if let Some(e) = env.iter_mut().find(|(n, _)| *n == name) {
        e.1 = value;
    } else {
        env.push((name, value));
    }
}

/// The kubelet's `makeEnvironmentVariables`: `envFrom` sources in order, then `env` (each
/// `value` expanded with what came before), service links left to the policy's regexes.
fn plan_env(
    cx: &mut Ctx,
    c: &Value,
    at: &FieldPath,
    pod: &PodContext,
) -> Result<(Env, BTreeSet<String>), GenError> {
    let mut env: Vec<(String, Text)> = Vec::new();
    let mut optional = BTreeSet::new();
    if let Some(items) = c.get("envFrom") {
        let fat = at.key("envFrom");
        let Some(items) = items.as_array() else {
            return Err(cx.invalid(&fat, "not a list"));
        };
        for (i, e) in items.iter().enumerate() {
            let eat = fat.index(i);
            cx.keys(e, &eat, &["configMapRef", "prefix", "secretRef"])?;
            let prefix = cx
                .string(get(e, "prefix"), &eat.key("prefix"))?
                .unwrap_or_default();
            for (key, what) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                let r = get(e, key);
                if r.is_null() {
                    continue;
                }
                let rat = eat.key(key);
                cx.keys(r, &rat, &["name", "optional"])?;
                let name = cx
                    .string(get(r, "name"), &rat.key("name"))?
                    .unwrap_or_default();
                let is_optional = cx
                    .bool(get(r, "optional"), &rat.key("optional"))?
                    .unwrap_or(false);
                let source = if what == "ConfigMap" {
                    pod.inputs.config_maps.get(&name)
                } else {
                    pod.inputs.secrets.get(&name)
                };
                match source {
                    Some(kv) => {
                        for (k, v) in &kv.values {
                            let name = format!("{prefix}{k}");
                            // The kubelet skips keys that are not env names (with an event).
                            if is_env_name(&name) {
                                set_env(&mut env, name, Text::lit(v.clone()));
                            } else {
                                cx.warn(&rat, &format!("{what} {name:?}: key {k:?} is not an env variable name: the kubelet leaves it out"));
                            }
                        }
                    }
                    None if is_optional => cx.warn(
                        &rat,
                        &format!("{what} {name:?} is not in the manifest or a -c file: its variables are refused if it exists"),
                    ),
                    None => {
                        return Err(cx.invalid(
                            &rat.key("name"),
                            format!("{what} {name:?} is not in the manifest or a -c file"),
                        ))
                    }
                }
            }
        }
    }
    if let Some(items) = c.get("env") {
        let eat = at.key("env");
        let Some(items) = items.as_array() else {
            return Err(cx.invalid(&eat, "not a list"));
        };
        for (i, e) in items.iter().enumerate() {
            let vat = eat.index(i);
            cx.keys(e, &vat, &["name", "value", "valueFrom"])?;
            let Some(name) = cx.string(get(e, "name"), &vat.key("name"))? else {
                return Err(cx.invalid(&vat.key("name"), "missing"));
            };
            let value = if let Some(v) = cx.string(get(e, "value"), &vat.key("value"))? {
                let lookup = |n: &str| lookup_env(&env, n);
                Some(expand(&v, &lookup))
            } else if !get(e, "valueFrom").is_null() {
                value_from(
                    cx,
                    get(e, "valueFrom"),
                    &vat.key("valueFrom"),
                    c,
                    pod,
                    &name,
                )?
            } else {
                Some(Text::lit(""))
            };
            match value {
                Some(v) => set_env(&mut env, name, v),
                None => {
                    optional.insert(name.clone());
                    set_env(&mut env, name, Text::dynamic(Dyn::Any));
                }
            }
        }
    }
    Ok((env, optional))
}

/// A `valueFrom`: `None` for an optional key whose source is not given (the variable may be
/// missing, and has any value if present).
fn value_from(
    cx: &mut Ctx,
    v: &Value,
    at: &FieldPath,
    c: &Value,
    pod: &PodContext,
    var: &str,
) -> Result<Option<Text>, GenError> {
    cx.keys(
        v,
        at,
        &[
            "configMapKeyRef",
            "fieldRef",
            "resourceFieldRef",
            "secretKeyRef",
        ],
    )?;
    if let Some(f) = v.get("fieldRef") {
        let fat = at.key("fieldRef");
        cx.keys(f, &fat, &["apiVersion", "fieldPath"])?;
        let path = cx
            .string(get(f, "fieldPath"), &fat.key("fieldPath"))?
            .unwrap_or_default();
        let pv = pod.values;
        let t = match path.as_str() {
            "metadata.name" => pv.name.clone(),
            "metadata.namespace" => pv.namespace.clone(),
            "metadata.uid" => Text::dynamic(Dyn::PodUid),
            "spec.nodeName" => pv.node_name.clone(),
            "spec.serviceAccountName" => Text::lit(pv.service_account.clone()),
            "status.podIP" => Text::dynamic(Dyn::PodIp),
            "status.podIPs" => Text::dynamic(Dyn::PodIps),
            "status.hostIP" => Text::dynamic(Dyn::HostIp),
            "status.hostIPs" => Text::dynamic(Dyn::HostIps),
            p => {
                if let Some(key) = subscript(p, "metadata.labels") {
                    match pv.labels.get(&key) {
                        Some(v) => Text::lit(v.clone()),
                        // Labels its controller adds (pod-template-hash, ...).
                        None if pv.kind != "Pod" => Text::dynamic(Dyn::Any),
                        None => Text::lit(""),
                    }
                } else if let Some(key) = subscript(p, "metadata.annotations") {
                    match pv.annotations.get(&key) {
                        Some(v) => Text::lit(v.clone()),
                        None if pv.kind != "Pod" => Text::dynamic(Dyn::Any),
                        None => Text::lit(""),
                    }
                } else {
                    cx.unsupported(&fat.key("fieldPath"), &format!(" ({p})"))?;
                    Text::dynamic(Dyn::Any)
                }
            }
        };
        return Ok(Some(t));
    }
    if let Some(r) = v.get("resourceFieldRef") {
        let rat = at.key("resourceFieldRef");
        cx.keys(r, &rat, &["containerName", "divisor", "resource"])?;
        let resource = cx
            .string(get(r, "resource"), &rat.key("resource"))?
            .unwrap_or_default();
        let divisor = match get(r, "divisor") {
            Value::Null => "1".to_string(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(cx.invalid(&rat.key("divisor"), "not a quantity")),
        };
        let container = match cx.string(get(r, "containerName"), &rat.key("containerName"))? {
            Some(n) => find_container(pod.all, &n).unwrap_or(&Value::Null),
            None => c,
        };
        return Ok(Some(
            resource_value(container, &resource, &divisor)
                .unwrap_or_else(|| Text::dynamic(Dyn::Resource)),
        ));
    }
    for (key, what) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")] {
        let Some(r) = v.get(key) else { continue };
        let rat = at.key(key);
        cx.keys(r, &rat, &["key", "name", "optional"])?;
        let name = cx
            .string(get(r, "name"), &rat.key("name"))?
            .unwrap_or_default();
        let k = cx
            .string(get(r, "key"), &rat.key("key"))?
            .unwrap_or_default();
        let is_optional = cx
            .bool(get(r, "optional"), &rat.key("optional"))?
            .unwrap_or(false);
        let source = if what == "ConfigMap" {
            pod.inputs.config_maps.get(&name)
        } else {
            pod.inputs.secrets.get(&name)
        };
        return match source.and_then(|kv| kv.values.get(&k)) {
            Some(v) => Ok(Some(Text::lit(v.clone()))),
            None if is_optional => {
                cx.warn(
                    &rat,
                    &format!("env {var}: {what} {name:?} key {k:?} is not given: the variable may have any value"),
                );
                Ok(None)
            }
            None => Err(cx.invalid(
                &rat,
                format!("{what} {name:?} with key {k:?} is not in the manifest or a -c file"),
            )),
        };
    }
    Err(cx.invalid(at, "empty"))
}

/// `metadata.labels['key']` -> `key`.
fn subscript(path: &str, field: &str) -> Option<String> {
    let rest = path
        .strip_prefix(field)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let rest = rest.trim_matches(|c| c == '\'' || c == '"');
    Some(rest.to_string())
}

fn find_container<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.get(l).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// A Kubernetes quantity in units of 10^-9 (`500m`, `2Gi`, `1.5`, `1e3`).
fn quantity(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let mut nano: i128 = int.parse::<i128>().ok()?.checked_mul(1_000_000_000)?;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let f: i128 = digits.parse().ok()?;
        nano += f * 10i128.pow(9 - digits.len() as u32);
    }
    let mul: i128 = match suffix {
        "" => 1,
        "m" => return Some(nano / 1000),
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        e if e.starts_with('e') || e.starts_with('E') => {
            10i128.checked_pow(e[1..].parse().ok()?)?
        }
        _ => return None,
    };
    nano.checked_mul(mul)
}

/// The kubelet's value of a `resourceFieldRef` when the manifest fixes it: ceil(value /
/// divisor); a request defaults to the limit. `None`: the node decides.
fn resource_value(container: &Value, resource: &str, divisor: &str) -> Option<Text> {
    let (kind, name) = resource.split_once('.')?;
    let res = container.get("resources")?;
    let q = |k: &str| {
        res.get(k)?.get(name).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let value = match kind {
        "limits" => q("limits")?,
        "requests" => q("requests").or_else(|| q("limits"))?,
        _ => return None,
    };
    let (v, d) = (quantity(&value)?, quantity(divisor)?);
    if d <= 0 {
        return None;
    }
    let r = (v + d - 1) / d;
    Some(Text::lit(r.to_string()))
}

fn plan_exec_commands(
    cx: &mut Ctx,
    c: &Value,
    at: &FieldPath,
) -> Result<Vec<Vec<String>>, GenError> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut add = |v: Vec<String>| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = get(c, probe);
        if p.is_null() {
            continue;
        }
        let pat = at.key(probe);
        cx.keys(
            p,
            &pat,
            &[
                "exec",
                "failureThreshold",
                "grpc",
                "httpGet",
                "initialDelaySeconds",
                "periodSeconds",
                "successThreshold",
                "tcpSocket",
                "terminationGracePeriodSeconds",
                "timeoutSeconds",
            ],
        )?;
        if let Some(e) = p.get("exec") {
            cx.keys(e, &pat.key("exec"), &["command"])?;
            if let Some(cmd) = cx.strings(get(e, "command"), &pat.key("exec").key("command"))? {
                add(cmd);
            }
        }
    }
    let l = get(c, "lifecycle");
    if !l.is_null() {
        let lat = at.key("lifecycle");
        cx.keys(l, &lat, &["postStart", "preStop", "stopSignal"])?;
        for hook in ["postStart", "preStop"] {
            let h = get(l, hook);
            if h.is_null() {
                continue;
            }
            let hat = lat.key(hook);
            cx.keys(h, &hat, &["exec", "httpGet", "sleep", "tcpSocket"])?;
            if let Some(e) = h.get("exec") {
                cx.keys(e, &hat.key("exec"), &["command"])?;
                if let Some(cmd) = cx.strings(get(e, "command"), &hat.key("exec").key("command"))? {
                    add(cmd);
                }
            }
        }
    }
    Ok(out)
}

/// The guest name of a copied mount: the destination's last component (the shim's).
fn copy_name(destination: &str) -> String {
    std::path::Path::new(destination)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mount".to_string())
}

fn bind(destination: &str, source: Source, options: &[&str]) -> Mount {
    Mount {
        destination: destination.to_string(),
        type_: "bind".to_string(),
        source,
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

/// The kubelet's mounts (volumeMounts, the service-account token, /etc/hosts, the
/// termination log) and CRI's (/etc/hostname, /etc/resolv.conf, /dev/shm).
fn plan_mounts(
    cx: &mut Ctx,
    c: &Value,
    at: &FieldPath,
    pod: &PodContext,
    readonly_root: bool,
    termination_path: &str,
) -> Result<Vec<Mount>, GenError> {
    let mut out: Vec<Mount> = Vec::new();
    let vm_at = at.key("volumeMounts");
    let items = match get(c, "volumeMounts") {
        Value::Null => &Vec::new(),
        Value::Array(a) => a,
        _ => return Err(cx.invalid(&vm_at, "not a list")),
    };
    for (i, m) in items.iter().enumerate() {
        let mat = vm_at.index(i);
        cx.keys(
            m,
            &mat,
            &[
                "mountPath",
                "mountPropagation",
                "name",
                "readOnly",
                "recursiveReadOnly",
                "subPath",
                "subPathExpr",
            ],
        )?;
        let name = cx
            .string(get(m, "name"), &mat.key("name"))?
            .unwrap_or_default();
        let Some(dest) = cx.string(get(m, "mountPath"), &mat.key("mountPath"))? else {
            return Err(cx.invalid(&mat.key("mountPath"), "missing"));
        };
        let prop = cx.string(get(m, "mountPropagation"), &mat.key("mountPropagation"))?;
        if prop.as_deref().is_some_and(|p| p != "None") {
            cx.unsupported(
                &mat.key("mountPropagation"),
                ": copies in the guest share nothing with the host",
            )?;
        }
        let rro = cx.string(get(m, "recursiveReadOnly"), &mat.key("recursiveReadOnly"))?;
        if rro.as_deref().is_some_and(|p| p != "Disabled") {
            cx.unsupported(&mat.key("recursiveReadOnly"), ": only Disabled")?;
        }
        let mut ro = cx
            .bool(get(m, "readOnly"), &mat.key("readOnly"))?
            .unwrap_or(false);
        let Some(volume) = pod.volumes.get(&name) else {
            return Err(cx.invalid(
                &mat.key("name"),
                format!("no volume {name:?} in spec.volumes"),
            ));
        };
        let kind = pod
            .all
            .get("volumes")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(&name))
            });
        // The kubelet mounts these read-only whatever the mount says.
        if kind.is_some_and(|v| {
            ["configMap", "secret", "projected", "downwardAPI"]
                .iter()
                .any(|k| v.get(k).is_some())
        }) {
            ro = true;
        }
        let access = if ro { "ro" } else { "rw" };
        let source = match volume {
            Volume::Copy => Source::Copy(copy_name(&dest)),
            Volume::EmptyDir => Source::PodCopy(name.clone()),
            Volume::HostSystemPath(p) => Source::Literal(p.clone()),
        };
        out.push(bind(&dest, source, &["rbind", "rprivate", access]));
    }
    let has = |out: &[Mount], d: &str| out.iter().any(|m| m.destination == d);
    if pod.automount && !has(&out, SERVICE_ACCOUNT_DIR) {
        out.push(bind(
            SERVICE_ACCOUNT_DIR,
            Source::Copy("serviceaccount".into()),
            &["rbind", "rprivate", "ro"],
        ));
    }
    if !has(&out, "/etc/hosts") {
        out.push(bind(
            "/etc/hosts",
            Source::Copy("hosts".into()),
            &["rbind", "rprivate", "rw"],
        ));
    }
    if !termination_path.is_empty() && !has(&out, termination_path) {
        out.push(bind(
            termination_path,
            Source::Copy(copy_name(termination_path)),
            &["rbind", "rprivate", "rw"],
        ));
    }
    let access = if readonly_root { "ro" } else { "rw" };
    for (dest, name) in [
        ("/etc/hostname", "hostname"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        if !has(&out, dest) {
            out.push(bind(
                dest,
                Source::Copy(name.into()),
                &["rbind", "rprivate", access],
            ));
        }
    }
    if !has(&out, "/dev/shm") {
        out.push(bind(
            "/dev/shm",
            Source::Literal(SANDBOX_SHM.into()),
            &["rbind"],
        ));
    }
    Ok(out)
}

/// The kernel filesystems containerd gives every container (the pause has no cgroup mount).
fn kernel_mounts(pause: bool, privileged: bool) -> Vec<Mount> {
    let rw = if privileged { "rw" } else { "ro" };
    let m = |d: &str, t: &str, o: &[&str]| Mount {
        destination: d.into(),
        type_: t.into(),
        source: Source::Literal(t.into()),
        options: o.iter().map(|s| s.to_string()).collect(),
    };
    let mut v = vec![
        m("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        m("/sys", "sysfs", &["nosuid", "noexec", "nodev", rw]),
    ];
    if !pause {
        v.push(m(
            "/sys/fs/cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", rw],
        ));
    }
    v
}

/// containerd's env merge (`WithEnv`): a variable given again replaces the earlier one in
/// place.
fn merge_env(env: &mut Vec<Text>, name: &str, value: Text) {
    let mut t = Text::lit(format!("{name}="));
    t.push_text(&value);
    let prefix = format!("{name}=");
    if let Some(e) = env.iter_mut().find(|e| {
        e.0.first()
            .is_some_and(|p| matches!(p, super::text::Part::Lit(l) if l.starts_with(&prefix)))
    }) {
        *e = t;
    } else {
        env.push(t);
    }
}

fn split_var(s: &str) -> (&str, &str) {
    s.split_once('=').unwrap_or((s, ""))
}

/// containerd's capability set: the default, `ALL` added or dropped first, then the others
/// (CRI names lack the `CAP_` prefix).
fn caps(add: &[String], drop: &[String]) -> Caps {
    let norm = |c: &String| {
        let u = c.to_uppercase();
        if u.starts_with("CAP_") {
            u
        } else {
            format!("CAP_{u}")
        }
    };
    if add.is_empty() && drop.is_empty() {
        return Caps::Default;
    }
    let all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    if all(add) && drop.is_empty() {
        return Caps::Privileged;
    }
    let mut set: BTreeSet<String> = if all(add) {
        super::data::PRIVILEGED_CAPS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if all(drop) {
        set.clear();
    }
    for c in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        set.insert(norm(c));
    }
    for c in drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        set.remove(&norm(c));
    }
    Caps::List(set)
}

/// A pod with its image facts: each container's process as containerd makes it.
pub fn build(
    file: &File,
    plan: &PodPlan,
    facts: &BTreeMap<String, ImageFacts>,
    accounts: &BTreeMap<String, Accounts>,
    diag: &mut Diagnostics,
) -> Result<PodModel, GenError> {
    let src = &plan.source;
    let mut containers = Vec::new();
    for c in &plan.containers {
        let image = facts[&c.image].clone();
        let cfg = &image.config;
        let field = if c.kind == Kind::Pause {
            FieldPath::default()
        } else {
            c.image_field.clone()
        };
        let err = |problem: String| GenError::Field {
            file: file.path.clone(),
            line: file.line(src.doc, &src.field(&field)),
            field: if c.kind == Kind::Pause {
                format!("pause image {}", c.image)
            } else {
                src.field(&field).to_string()
            },
            problem,
        };
        // Args (containerd's `WithProcessArgs` of CRI).
        let args: Vec<Text> = if c.kind == Kind::Pause {
            cfg.entrypoint
                .iter()
                .chain(&cfg.cmd)
                .map(Text::lit)
                .collect()
        } else {
            let mut command = c.command.clone().unwrap_or_default();
            let mut args = c.args.clone().unwrap_or_default();
            if command.is_empty() {
                if args.is_empty() {
                    args = cfg.cmd.iter().map(Text::lit).collect();
                }
                // CRI's repeated field: an empty `command` is no command (nil), so the
                // image's entrypoint applies.
                if !(cfg.entrypoint.len() == 1 && cfg.entrypoint[0].is_empty()) {
                    command = cfg.entrypoint.iter().map(Text::lit).collect();
                }
            }
            command.extend(args);
            command
        };
        if args.is_empty() {
            return Err(err(format!(
                "image {}: no command: neither the container nor the image names one",
                image.name
            )));
        }
        // Env (containerd: default PATH, HOSTNAME, TERM for a TTY, the image's, the kubelet's).
        let mut env = vec![Text::lit(DEFAULT_PATH)];
        if c.kind != Kind::Pause {
            merge_env(&mut env, "HOSTNAME", plan.hostname.clone());
            if c.tty {
                merge_env(&mut env, "TERM", Text::lit("xterm"));
            }
        }
        for e in &cfg.env {
            let (n, v) = split_var(e);
            merge_env(&mut env, n, Text::lit(v));
        }
        for (n, v) in &c.env {
            merge_env(&mut env, n, v.clone());
        }
        let cwd = match (&c.working_dir, cfg.working_dir.as_str()) {
            (Some(w), _) if !w.is_empty() => w.clone(),
            (_, w) if !w.is_empty() => w.to_string(),
            _ => "/".to_string(),
        };
        let user_string =
            user::user_string(c.run_as_user, c.run_as_group, &cfg.user).map_err(&err)?;
        let user = user::resolve(
            &user_string,
            accounts.get(&c.image),
            &plan.supplemental_groups,
        )
        .map_err(|e| err(format!("image {}: {e}", image.name)))?;
        if plan.run_as_non_root && user.uid == 0 && c.kind != Kind::Pause {
            diag.warn(format!(
                "{}: container {:?} runs as root but runAsNonRoot is set: the kubelet will not start it",
                src.label(),
                c.name
            ));
        }
        let mut mounts = kernel_mounts(c.kind == Kind::Pause, c.privileged);
        mounts.extend(c.mounts.iter().cloned());
        let (masked, readonly) = if c.privileged {
            (Vec::new(), Vec::new())
        } else {
            (
                MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
            )
        };
        containers.push(ContainerModel {
            kind: c.kind,
            name: c.name.clone(),
            image,
            args,
            env,
            optional_env: c.optional_env.clone(),
            cwd,
            user,
            terminal: c.tty,
            no_new_privileges: c.no_new_privileges,
            privileged: c.privileged,
            caps: if c.privileged {
                Caps::Privileged
            } else {
                caps(&c.caps_add, &c.caps_drop)
            },
            readonly_root: c.readonly_root,
            mounts,
            masked_paths: masked,
            readonly_paths: readonly,
            sandbox_pidns: c.kind != Kind::Pause && plan.share_process_namespace,
            exec_commands: c.exec_commands.clone(),
            stdin: c.stdin,
            termination_message_path: c.termination_message_path.clone(),
            termination_message_policy: c.termination_message_policy.clone(),
        });
    }
    Ok(PodModel {
        source: src.clone(),
        namespace: plan.namespace.clone(),
        hostname_regex: plan.hostname_regex.clone(),
        sysctls: plan.sysctls.clone(),
        kata_annotations: plan.kata_annotations.clone(),
        containers,
        is_job: plan.is_job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(500_000_000));
        assert_eq!(quantity("2"), Some(2_000_000_000));
        assert_eq!(quantity("1Gi"), Some(1_000_000_000 << 30));
        assert_eq!(quantity("1.5"), Some(1_500_000_000));
        assert_eq!(quantity("1e3"), Some(1_000_000_000_000));
        assert_eq!(quantity("x"), None);
        let c = serde_json::json!({"resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}});
        assert_eq!(
            resource_value(&c, "limits.cpu", "1")
                .unwrap()
                .literal()
                .unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&c, "limits.cpu", "1m")
                .unwrap()
                .literal()
                .unwrap(),
            "500"
        );
        assert_eq!(
            resource_value(&c, "requests.memory", "1Mi")
                .unwrap()
                .literal()
                .unwrap(),
            "128"
        );
        assert!(resource_value(&c, "limits.ephemeral-storage", "1").is_none());
    }

    #[test]
    fn capabilities_as_containerd_sets_them() {
        assert_eq!(caps(&[], &[]), Caps::Default);
        assert_eq!(caps(&["ALL".into()], &[]), Caps::Privileged);
        let Caps::List(s) = caps(&["NET_ADMIN".into()], &["ALL".into()]) else {
            panic!()
        };
        assert_eq!(s, BTreeSet::from(["CAP_NET_ADMIN".to_string()]));
        let Caps::List(s) = caps(&[], &["CHOWN".into(), "net_raw".into()]) else {
            panic!()
        };
        assert_eq!(s.len(), DEFAULT_CAPS.len() - 2);
        assert!(!s.contains("CAP_NET_RAW"));
    }

    #[test]
    fn env_merge_replaces_in_place() {
        let mut env = vec![Text::lit(DEFAULT_PATH)];
        merge_env(&mut env, "HOSTNAME", Text::lit("h"));
        merge_env(&mut env, "PATH", Text::lit("/bin"));
        merge_env(&mut env, "X", Text::dynamic(Dyn::PodIp));
        let shown: Vec<String> = env.iter().map(Text::shown).collect();
        assert_eq!(shown, ["PATH=/bin", "HOSTNAME=h", "X=$(pod-ip)"]);
        assert!(is_service_var("KUBERNETES_SERVICE_HOST"));
        assert!(is_service_var("MY_SVC_PORT_80_TCP_ADDR"));
        assert!(!is_service_var("POD_NAME"));
        assert!(is_env_name("a.b-c_D9") && !is_env_name("9x") && !is_env_name("a b"));
    }
}
