//! `policy_data` in genpolicy's schema (`containers[]` with `OCI`, `storages`,
//! `sandbox_pidns`, `exec_commands`; `common`, `sandbox`, `request_defaults`,
//! `cluster_config`), so that readers of genpolicy's policies can read kata-cc's. What
//! genpolicy's schema has no place for is under `kata_cc` keys: a container's name, its image
//! (names and digests), the regexes of values known only on the node, whether its additional
//! groups are exact, and whether it has stdin.

use std::collections::BTreeSet;

use agent_proto::contract::{self, LayerRef};
use serde_json::{json, Map, Value};

use super::model::{Caps, ContainerModel, Kind, PodModel, Source};
use super::text::Text;
use super::Options;

/// Every capability a 6.x kernel knows: what a privileged container gets (genpolicy's
/// `privileged_caps`).
pub const PRIVILEGED_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The sysctls containerd sets on the sandbox with `enable_unprivileged_ports` and
/// `enable_unprivileged_icmp` (the default from containerd 2.0).
const UNPRIVILEGED_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
];

/// The kubelet's service-link variables (a service's host, port, ...) and a TTY exec's TERM.
const ALLOW_ENV_REGEX: &[&str] = &[
    "^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)=(tcp|udp|sctp)://$(ipv4_a):$(ip_p)$",
    "^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PROTO=(tcp|udp|sctp)$",
    "^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PORT=$(ip_p)$",
    "^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_ADDR=$(ipv4_a)$",
    "^$(svc_name_downward_env)_SERVICE_HOST=$(ipv4_a)$",
    "^$(svc_name_downward_env)_SERVICE_PORT=$(ip_p)$",
    "^$(svc_name_downward_env)_SERVICE_PORT_$(dns_label)=$(ip_p)$",
    "^$(svc_name_downward_env)_PORT=(tcp|udp|sctp)://$(ipv4_a):$(ip_p)$",
    "^TERM=xterm$",
];

const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

fn strings(v: &[String]) -> Value {
    json!(v)
}

fn texts(v: &[Text]) -> (Value, Map<String, Value>) {
    let shown: Vec<String> = v.iter().map(Text::shown).collect();
    let mut regex = Map::new();
    for (i, t) in v.iter().enumerate() {
        if t.literal().is_none() {
            regex.insert(i.to_string(), json!(t.regex()));
        }
    }
    (json!(shown), regex)
}

fn mount_source(s: &Source) -> String {
    match s {
        Source::Copy(name) => format!("$(sfprefix){}$", regex::escape(name)),
        Source::PodCopy(name) => {
            format!(
                "^$(cpath)/$(sandbox-id)-[0-9a-f]{{16}}-{}$",
                regex::escape(name)
            )
        }
        Source::Literal(p) => p.clone(),
    }
}

fn caps(c: &Caps) -> Value {
    match c {
        Caps::Default => json!(["$(default_caps)"]),
        Caps::Privileged => json!(["$(privileged_caps)"]),
        Caps::List(l) => json!(l),
    }
}

/// The names CRI may give a container's image (`io.kubernetes.cri.image-name`, the image
/// storage's `source`): as written, normalized, by repository digest, the image id.
fn image_names(c: &ContainerModel) -> Vec<String> {
    let f = &c.image;
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.insert(f.name.clone());
    names.insert(f.reference.clone());
    let repo = match f.name.split_once('@') {
        Some((r, _)) => r.to_string(),
        None => {
            let slash = f.name.rfind('/').map_or(0, |i| i + 1);
            match f.name[slash..].rfind(':') {
                Some(i) => f.name[..slash + i].to_string(),
                None => f.name.clone(),
            }
        }
    };
    if !f.manifest_digest.is_empty() {
        names.insert(format!("{repo}@{}", f.manifest_digest));
    }
    if !f.config_digest.is_empty() {
        names.insert(f.config_digest.clone());
    }
    names.into_iter().collect()
}

fn container(pod: &PodModel, c: &ContainerModel, sysctls: &Value) -> Value {
    let pause = c.kind == Kind::Pause;
    let mut annotations = Map::new();
    let bundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)";
    annotations.insert(contract::BUNDLE_PATH_ANNOTATION.into(), json!(bundle));
    annotations.insert(
        contract::CONTAINER_TYPE_ANNOTATION.into(),
        json!(if pause {
            contract::POD_SANDBOX
        } else {
            contract::POD_CONTAINER
        }),
    );
    let cri = |k: &str| format!("io.kubernetes.cri.{k}");
    annotations.insert(
        cri("container-type"),
        json!(if pause { "sandbox" } else { "container" }),
    );
    annotations.insert(cri("sandbox-id"), json!("^[0-9a-f]{64}$"));
    annotations.insert(cri("sandbox-name"), json!(pod.source.name_regex));
    annotations.insert(
        cri("sandbox-namespace"),
        json!(pod.namespace.clone().unwrap_or_default()),
    );
    if pause {
        annotations.insert(
            cri("sandbox-log-directory"),
            json!(format!(
                "^/var/log/pods/$(sandbox-namespace)_$(sandbox-name)_{UUID}$"
            )),
        );
        annotations.insert(
            "nerdctl/network-namespace".into(),
            json!(format!("^/var/run/netns/cni-{UUID}$")),
        );
    } else {
        annotations.insert(cri("container-name"), json!(c.name));
        annotations.insert(cri("image-name"), json!(c.image.name));
        annotations.insert(
            "io.kubernetes.container.terminationMessagePath".into(),
            json!(c.termination_message_path),
        );
        annotations.insert(
            "io.kubernetes.container.terminationMessagePolicy".into(),
            json!(c.termination_message_policy),
        );
    }
    for (k, v) in &pod.kata_annotations {
        if k != crate::policy_source::POLICY_ANNOTATION
            && k != crate::policy_source::INITDATA_ANNOTATION
        {
            annotations.insert(k.clone(), json!(v));
        }
    }
    let (args, args_regex) = texts(&c.args);
    let (env, env_regex_by_index) = texts(&c.env);
    let mut env_regex = Map::new();
    for (i, r) in env_regex_by_index {
        let i: usize = i.parse().unwrap_or(0);
        env_regex.insert(c.env[i].shown(), r);
    }
    let mounts: Vec<Value> = c
        .mounts
        .iter()
        .map(|m| {
            json!({
                "destination": m.destination,
                "source": mount_source(&m.source),
                "type_": m.type_,
                "options": m.options,
            })
        })
        .collect();
    let layers: Vec<String> = c
        .image
        .layers
        .iter()
        .map(|l| {
            LayerRef {
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                media_type: l.media_type.clone(),
            }
            .option()
        })
        .collect();
    let caps = caps(&c.caps);
    json!({
        "OCI": {
            "Process": {
                "Terminal": c.terminal,
                "User": {
                    "UID": c.user.uid,
                    "GID": c.user.gid,
                    "AdditionalGids": c.user.additional_gids,
                    "Username": "",
                },
                "Args": args,
                "Env": env,
                "Cwd": c.cwd,
                "Capabilities": {
                    "Ambient": [],
                    "Bounding": caps,
                    "Effective": caps,
                    "Inheritable": [],
                    "Permitted": caps,
                },
                "NoNewPrivileges": c.no_new_privileges,
            },
            "Root": {"Path": "$(root_path)", "Readonly": c.readonly_root},
            "Mounts": mounts,
            "Annotations": annotations,
            "Linux": {
                "Namespaces": [
                    {"Type": "ipc", "Path": ""},
                    {"Type": "uts", "Path": ""},
                    {"Type": "mount", "Path": ""},
                ],
                "MaskedPaths": strings(&c.masked_paths),
                "ReadonlyPaths": strings(&c.readonly_paths),
                "Devices": [],
                "Sysctl": sysctls,
            },
        },
        "storages": [{
            "driver": contract::IMAGE_DRIVER,
            "driver_options": layers,
            "source": c.image.name,
            "fstype": contract::IMAGE_FSTYPE,
            "options": [],
            "mount_point": "$(root_path)",
            "fs_group": null,
            "shared": false,
        }],
        "devices": [],
        "sandbox_pidns": c.sandbox_pidns,
        "exec_commands": c.exec_commands,
        "kata_cc": {
            "name": if pause { "pause".to_string() } else { c.name.clone() },
            "image": {
                "reference": c.image.reference,
                "name": c.image.name,
                "manifest_digest": c.image.manifest_digest,
                "config_digest": c.image.config_digest,
            },
            "image_names": image_names(c),
            "args_regex": args_regex,
            "env_regex": env_regex,
            "env_optional": c.optional_env,
            "additional_gids": if pause {
                "within"
            } else if c.user.exact {
                "exact"
            } else {
                "include"
            },
            "stdin": c.stdin,
        },
    })
}

/// The guest paths the pod's CopyFile requests may create (roots; the rules allow what is
/// under a root too).
fn copy_roots(pod: &PodModel) -> Vec<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.insert("layer".to_string());
    for c in &pod.containers {
        for m in &c.mounts {
            if let Source::Copy(n) | Source::PodCopy(n) = &m.source {
                names.insert(n.clone());
            }
        }
    }
    names
        .iter()
        .map(|n| {
            format!(
                "^$(cpath)/[0-9a-f]{{64}}-[0-9a-f]{{16}}-{}",
                regex::escape(n)
            )
        })
        .collect()
}

/// The pod's `policy_data`.
pub fn policy_data(pod: &PodModel, opts: &Options) -> Value {
    let mut sysctls = Map::new();
    for (k, v) in UNPRIVILEGED_SYSCTLS {
        sysctls.insert(k.to_string(), json!(v));
    }
    for (k, v) in &pod.sysctls {
        sysctls.insert(k.clone(), json!(v));
    }
    let sysctls = Value::Object(sysctls);
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| container(pod, c, &sysctls))
        .collect();
    let pause_image = pod
        .containers
        .iter()
        .find(|c| c.kind == Kind::Pause)
        .map(|c| c.image.reference.clone())
        .unwrap_or_else(|| opts.pause_image.clone());
    let mut env_regex: Vec<&str> = ALLOW_ENV_REGEX.to_vec();
    if pod.is_job {
        // An indexed Job's pods get their index.
        env_regex.push("^JOB_COMPLETION_INDEX=[0-9]+$");
    }
    json!({
        "containers": containers,
        "common": {
            "cpath": contract::SHARED_CONTAINERS_DIR,
            "root_path": format!("{}/$(bundle-id)/rootfs", contract::GUEST_CONTAINERS_DIR),
            "sfprefix": "^$(cpath)/$(bundle-id)-[0-9a-f]{16}-",
            "ip_p": "[0-9]{1,5}",
            "ipv4_a": "(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])",
            "svc_name_downward_env": "[A-Z](?:[A-Z0-9_]{0,61}[A-Z0-9])?",
            "dns_label": "[a-zA-Z0-9_\\.\\-]+",
            "default_caps": super::model::DEFAULT_CAPS,
            "privileged_caps": PRIVILEGED_CAPS,
            "image_layer_verification": "kata-cc-diff-ids",
        },
        "sandbox": {
            "storages": [{
                "driver": contract::EPHEMERAL_DRIVER,
                "driver_options": [],
                "source": "shm",
                "fstype": "tmpfs",
                "options": contract::shm_options(contract::DEFAULT_SHM_SIZE),
                "mount_point": contract::SANDBOX_SHM_DIR,
                "fs_group": null,
                "shared": false,
            }],
            "hostname": pod.hostname_regex,
        },
        "request_defaults": {
            "CreateContainerRequest": {"allow_env_regex": env_regex},
            "CopyFileRequest": copy_roots(pod),
            "ExecProcessRequest": {
                "allowed_commands": opts.allow_exec_commands,
                "regex": if opts.allow_exec { vec!["(?s)^.*$"] } else { Vec::new() },
            },
            "UpdateInterfaceRequest": {
                "allow_raw_flags": 128,
                "forbidden_names": ["lo"],
                "forbidden_hw_addrs": ["00:00:00:00:00:00"],
            },
            "UpdateRoutesRequest": {
                "forbidden_device_names": ["lo"],
                "forbidden_source_regex": [
                    "^(?:0{0,4}:){0,7}0{0,3}1$",
                    "^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$",
                ],
            },
            "AddARPNeighborsRequest": {
                "forbidden_device_names": ["lo"],
                "forbidden_cidrs_regex": ["^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$"],
                "allowed_states": [2, 128],
            },
            "CloseStdinRequest": opts.allow_exec,
            "WriteStreamRequest": opts.allow_exec,
            "ReadStreamRequest": opts.allow_logs,
            "GetDiagnosticDataRequest": false,
            "UpdateEphemeralMountsRequest": false,
        },
        "cluster_config": {
            "pause_container_image": pause_image,
            "guest_pull": false,
        },
    })
}
