//! Conversion of the OCI spec received from the host (Kata's protobuf form) into the runtime-spec
//! JSON runc reads, adapted to the guest: host paths, host namespaces and host-only settings are
//! dropped; what defines the workload (user, env, cwd, args, rlimits, capabilities, limits) is kept.

use std::path::{Component, Path, PathBuf};

use agent_proto::oci;
use serde_json::{json, Map, Value};
use thiserror::Error;

/// Mount types the guest can always provide itself.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];
/// A container annotation asking for SNP attestation reports from inside the container. The
/// request carries it, so the pod's policy decides (generated policies refuse annotations they
/// do not list). The container then gets the guest's configfs (configfs-tsm,
/// `/sys/kernel/config/tsm/report`) and makes reports the standard Linux way.
pub const ATTESTATION_ANNOTATION: &str = "io.katacontainers.kata-cc.attestation";
/// Where configfs is, in the guest and in the container.
pub const CONFIGFS: &str = "/sys/kernel/config";

/// The attestation annotation's value is not a bool.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("annotation {ATTESTATION_ANNOTATION}: {value:?} is not \"true\" or \"false\"")]
pub struct AttestationAnnotationError {
    pub value: String,
}

/// Whether the spec asks for attestation reports; `Err` names a value that is not a bool.
pub fn wants_attestation(spec: &oci::Spec) -> Result<bool, AttestationAnnotationError> {
    match spec
        .Annotations
        .get(ATTESTATION_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(AttestationAnnotationError {
            value: other.to_string(),
        }),
    }
}

/// How a container sits in the guest: the sandbox's namespaces it joins and the guest
/// directories its mounts may come from.
#[derive(Debug, Clone, Default)]
pub struct GuestSetup {
    /// The sandbox's IPC and UTS namespaces (CreateSandbox); fresh ones without.
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pause container's PID namespace (`sandbox_pidns`); a fresh one without.
    pub pid_ns: Option<PathBuf>,
    /// Where CopyFile put the host's files: bind sources below it are the container's volumes.
    pub shared_dir: PathBuf,
    /// The sandbox's shm tmpfs, which a `/dev/shm` bind names.
    pub shm_dir: PathBuf,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("mount {destination}: source {src} was not copied into the guest (CopyFile)")]
    NotCopied { destination: String, src: String },
}

pub fn cgroup_path(cid: &str) -> String {
    format!("/kata-cc/{cid}")
}

/// OCI `process` object.
pub fn process_json(p: &oci::Process) -> Value {
    let user = p.User.as_ref();
    let mut out = Map::new();
    out.insert("terminal".into(), json!(p.Terminal));
    if let Some(b) = p.ConsoleSize.as_ref() {
        if b.Height > 0 && b.Width > 0 {
            out.insert(
                "consoleSize".into(),
                json!({"height": b.Height, "width": b.Width}),
            );
        }
    }
    let mut u = json!({
        "uid": user.map(|u| u.UID).unwrap_or(0),
        "gid": user.map(|u| u.GID).unwrap_or(0),
    });
    if let Some(us) = user {
        if !us.AdditionalGids.is_empty() {
            u["additionalGids"] = json!(us.AdditionalGids);
        }
    }
    out.insert("user".into(), u);
    out.insert("args".into(), json!(p.Args));
    out.insert("env".into(), json!(p.Env));
    out.insert(
        "cwd".into(),
        json!(if p.Cwd.is_empty() {
            "/"
        } else {
            p.Cwd.as_str()
        }),
    );
    if let Some(c) = p.Capabilities.as_ref() {
        out.insert(
            "capabilities".into(),
            json!({
                "bounding": c.Bounding,
                "effective": c.Effective,
                "inheritable": c.Inheritable,
                "permitted": c.Permitted,
                "ambient": c.Ambient,
            }),
        );
    }
    if !p.Rlimits.is_empty() {
        let r: Vec<Value> = p
            .Rlimits
            .iter()
            .map(|r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft}))
            .collect();
        out.insert("rlimits".into(), json!(r));
    }
    out.insert("noNewPrivileges".into(), json!(p.NoNewPrivileges));
    if p.OOMScoreAdj != 0 {
        out.insert("oomScoreAdj".into(), json!(p.OOMScoreAdj));
    }
    Value::Object(out)
}

fn resources_json(r: &oci::LinuxResources) -> Value {
    let mut out = Map::new();
    if !r.Devices.is_empty() {
        let d: Vec<Value> = r
            .Devices
            .iter()
            .map(|d| {
                let mut v = json!({"allow": d.Allow, "access": d.Access});
                if !d.Type.is_empty() {
                    v["type"] = json!(d.Type);
                }
                // The protobuf form has no "unset": -1 means "any" as in runc's config.
                if d.Major >= 0 && !(d.Type.is_empty() || d.Type == "a") {
                    v["major"] = json!(d.Major);
                }
                if d.Minor >= 0 && !(d.Type.is_empty() || d.Type == "a") {
                    v["minor"] = json!(d.Minor);
                }
                v
            })
            .collect();
        out.insert("devices".into(), json!(d));
    }
    if let Some(m) = r.Memory.as_ref() {
        let mut mv = Map::new();
        if m.Limit > 0 {
            mv.insert("limit".into(), json!(m.Limit));
        }
        if m.Reservation > 0 {
            mv.insert("reservation".into(), json!(m.Reservation));
        }
        // Swap, kernel memory and swappiness are left out: the guest has no swap and cgroup v2
        // has no kernel-memory or swappiness knobs (runc refuses them there).
        if !mv.is_empty() {
            out.insert("memory".into(), Value::Object(mv));
        }
    }
    if let Some(c) = r.CPU.as_ref() {
        let mut cv = Map::new();
        if c.Shares > 0 {
            cv.insert("shares".into(), json!(c.Shares));
        }
        if c.Quota > 0 {
            cv.insert("quota".into(), json!(c.Quota));
        }
        if c.Period > 0 {
            cv.insert("period".into(), json!(c.Period));
        }
        // cpus/mems name host CPUs and nodes, which the VM does not have.
        if !cv.is_empty() {
            out.insert("cpu".into(), Value::Object(cv));
        }
    }
    if let Some(p) = r.Pids.as_ref() {
        if p.Limit > 0 {
            out.insert("pids".into(), json!({"limit": p.Limit}));
        }
    }
    Value::Object(out)
}

/// Whether a mount binds a guest path.
fn is_bind(m: &oci::Mount) -> bool {
    m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// The container's config.json; `rootfs` is the absolute guest path of its root filesystem.
pub fn config_json(
    cid: &str,
    spec: &oci::Spec,
    rootfs: &Path,
    g: &GuestSetup,
) -> Result<Value, SpecError> {
    let default_process = oci::Process::default();
    let process = spec.Process.as_ref().unwrap_or(&default_process);
    let mut out = Map::new();
    out.insert(
        "ociVersion".into(),
        json!(if spec.Version.is_empty() {
            "1.0.2"
        } else {
            spec.Version.as_str()
        }),
    );
    out.insert("process".into(), process_json(process));
    out.insert(
        "root".into(),
        json!({
            "path": rootfs.display().to_string(),
            "readonly": spec.Root.as_ref().map(|r| r.Readonly).unwrap_or(false),
        }),
    );
    // In the sandbox's UTS namespace the pod's hostname is set already (and runc refuses a
    // hostname for a namespace it does not create).
    if !spec.Hostname.is_empty() && g.uts_ns.is_none() {
        out.insert("hostname".into(), json!(spec.Hostname));
    }

    let mut mounts = Vec::new();
    let mut has_shm = false;
    for m in &spec.Mounts {
        let source = Path::new(&m.source);
        let plain = source
            .components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
        let copied = is_bind(m)
            && plain
            && g.shared_dir.is_absolute()
            && source != g.shared_dir
            && source.starts_with(&g.shared_dir);
        let shm = is_bind(m) && plain && g.shm_dir.is_absolute() && source == g.shm_dir;
        let standard = GUEST_MOUNT_TYPES.contains(&m.type_.as_str());
        if copied && !source.exists() {
            return Err(SpecError::NotCopied {
                destination: m.destination.clone(),
                src: m.source.clone(),
            });
        }
        if !copied && !standard && !source.exists() {
            log::info!(
                "container {cid}: dropping mount {} (source {} is not in the guest)",
                m.destination,
                m.source
            );
            continue;
        }
        if shm && m.destination != "/dev/shm" {
            log::info!(
                "container {cid}: mount {} binds the sandbox shm {}",
                m.destination,
                m.source
            );
        }
        if m.destination == "/dev/shm" {
            has_shm = true;
        }
        let mut v = json!({"destination": m.destination, "source": m.source, "options": m.options});
        if !m.type_.is_empty() {
            v["type"] = json!(m.type_);
        }
        mounts.push(v);
    }
    if !has_shm {
        mounts.push(json!({
            "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        }));
    }
    if wants_attestation(spec) == Ok(true) {
        // After the spec's own /sys, so it lands on the container's sysfs mount point.
        mounts.push(json!({
            "destination": CONFIGFS, "type": "bind", "source": CONFIGFS,
            "options": ["rbind", "rw", "nosuid", "nodev", "noexec"],
        }));
    }
    out.insert("mounts".into(), json!(mounts));

    let annotations: Map<String, Value> = spec
        .Annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !annotations.is_empty() {
        out.insert("annotations".into(), Value::Object(annotations));
    }

    let default_linux = oci::Linux::default();
    let linux = spec.Linux.as_ref().unwrap_or(&default_linux);
    let mut l = Map::new();
    // Always a fresh mount namespace; IPC and UTS the sandbox's, PID the pause's when shared;
    // no network namespace: containers share the guest's (where the pod's interface is).
    let ns_entry = |t: &str, path: &Option<PathBuf>| match path {
        Some(p) => json!({"type": t, "path": p.display().to_string()}),
        None => json!({"type": t}),
    };
    let mut ns = vec![
        ns_entry("pid", &g.pid_ns),
        json!({"type": "mount"}),
        ns_entry("ipc", &g.ipc_ns),
        ns_entry("uts", &g.uts_ns),
    ];
    if linux.Namespaces.iter().any(|n| n.Type == "cgroup") {
        ns.push(json!({"type": "cgroup"}));
    }
    l.insert("namespaces".into(), json!(ns));
    l.insert("cgroupsPath".into(), json!(cgroup_path(cid)));
    if let Some(r) = linux.Resources.as_ref() {
        l.insert("resources".into(), resources_json(r));
    }
    // Network sysctls would act on the guest's own network namespace, which containers share.
    let sysctl: Map<String, Value> = linux
        .Sysctl
        .iter()
        .filter(|(k, _)| !k.starts_with("net."))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !sysctl.is_empty() {
        l.insert("sysctl".into(), Value::Object(sysctl));
    }
    if !linux.Devices.is_empty() {
        let d: Vec<Value> = linux
            .Devices
            .iter()
            .map(|d| {
                json!({"path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor,
                       "fileMode": d.FileMode, "uid": d.UID, "gid": d.GID})
            })
            .collect();
        l.insert("devices".into(), json!(d));
    }
    if !linux.MaskedPaths.is_empty() {
        l.insert("maskedPaths".into(), json!(linux.MaskedPaths));
    }
    if !linux.ReadonlyPaths.is_empty() {
        l.insert("readonlyPaths".into(), json!(linux.ReadonlyPaths));
    }
    if !linux.RootfsPropagation.is_empty() {
        l.insert("rootfsPropagation".into(), json!(linux.RootfsPropagation));
    }
    out.insert("linux".into(), Value::Object(l));
    Ok(Value::Object(out))
}

#[cfg(test)]
// Protobuf messages read best built field by field here.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn attestation_annotation_adds_configfs_last() {
        let mut spec = oci::Spec::default();
        assert_eq!(wants_attestation(&spec), Ok(false));
        let v = config_json("c1", &spec, Path::new("/r"), &GuestSetup::default()).unwrap();
        assert!(!v["mounts"].to_string().contains(CONFIGFS));
        spec.Annotations
            .insert(ATTESTATION_ANNOTATION.to_string(), "true".to_string());
        let v = config_json("c1", &spec, Path::new("/r"), &GuestSetup::default()).unwrap();
        let last = v["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["destination"], CONFIGFS);
        assert_eq!(last["type"], "bind");
        spec.Annotations
            .insert(ATTESTATION_ANNOTATION.to_string(), "yes".to_string());
        let e = wants_attestation(&spec).unwrap_err().to_string();
        assert!(
            e.contains(ATTESTATION_ANNOTATION) && e.contains("\"yes\""),
            "{e}"
        );
        assert_eq!(
            e,
            "annotation io.katacontainers.kata-cc.attestation: \"yes\" is not \"true\" or \"false\""
        );
    }

    #[test]
    fn host_parts_are_dropped_and_workload_parts_kept() {
        let mut spec = oci::Spec::default();
        let mut p = oci::Process::default();
        p.Args = vec!["sh".into(), "-c".into(), "exit 3".into()];
        p.Env = vec!["A=1".into()];
        p.Cwd = "/w".into();
        let mut u = oci::User::default();
        u.UID = 1000;
        u.GID = 1001;
        u.AdditionalGids = vec![5, 6];
        p.User = Some(u).into();
        p.NoNewPrivileges = true;
        let mut rl = oci::POSIXRlimit::default();
        rl.Type = "RLIMIT_NOFILE".into();
        rl.Hard = 1024;
        rl.Soft = 512;
        p.Rlimits = vec![rl];
        spec.Process = Some(p).into();
        let mut m = oci::Mount::default();
        m.destination = "/etc/hosts".into();
        m.source = "/var/lib/nowhere/hosts".into();
        m.type_ = "bind".into();
        let mut proc_m = oci::Mount::default();
        proc_m.destination = "/proc".into();
        proc_m.source = "proc".into();
        proc_m.type_ = "proc".into();
        spec.Mounts = vec![m, proc_m];
        let mut linux = oci::Linux::default();
        let mut netns = oci::LinuxNamespace::default();
        netns.Type = "network".into();
        netns.Path = "/var/run/netns/host".into();
        linux.Namespaces = vec![netns];
        linux.CgroupsPath = "/k8s/pod/x".into();
        let mut res = oci::LinuxResources::default();
        let mut mem = oci::LinuxMemory::default();
        mem.Limit = 512 << 20;
        mem.Swap = 512 << 20;
        res.Memory = Some(mem).into();
        let mut cpu = oci::LinuxCPU::default();
        cpu.Quota = 150000;
        cpu.Period = 100000;
        cpu.Cpus = "0-63".into();
        res.CPU = Some(cpu).into();
        linux.Resources = Some(res).into();
        spec.Linux = Some(linux).into();

        let v = config_json(
            "c1",
            &spec,
            Path::new("/run/kata-containers/c1/rootfs"),
            &GuestSetup::default(),
        )
        .unwrap();
        assert_eq!(v["root"]["path"], "/run/kata-containers/c1/rootfs");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["additionalGids"], json!([5, 6]));
        assert_eq!(v["process"]["args"][2], "exit 3");
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["rlimits"][0]["soft"], 512);
        assert_eq!(v["linux"]["cgroupsPath"], "/kata-cc/c1");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .map(|n| n["type"].as_str().expect("type"))
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts"]);
        assert_eq!(
            v["linux"]["resources"]["memory"],
            json!({"limit": 512 << 20})
        );
        assert_eq!(
            v["linux"]["resources"]["cpu"],
            json!({"quota": 150000, "period": 100000})
        );
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["destination"].as_str().expect("dest"))
            .collect();
        assert_eq!(dests, ["/proc", "/dev/shm"]);
    }

    fn mount_(dest: &str, typ: &str, source: &str, opts: &[&str]) -> oci::Mount {
        let mut m = oci::Mount::default();
        m.destination = dest.into();
        m.type_ = typ.into();
        m.source = source.into();
        m.options = opts.iter().map(|s| s.to_string()).collect();
        m
    }

    /// The sandbox's namespaces are joined by path, the pod hostname is not set again; without
    /// a sandbox every namespace is fresh and the spec's hostname is set.
    #[test]
    fn namespaces_follow_the_sandbox() {
        let mut spec = oci::Spec::default();
        spec.Hostname = "pod".into();
        let mut linux = oci::Linux::default();
        for t in ["ipc", "uts", "mount"] {
            let mut n = oci::LinuxNamespace::default();
            n.Type = t.into();
            linux.Namespaces.push(n);
        }
        spec.Linux = Some(linux).into();
        let alone = config_json("c1", &spec, Path::new("/r"), &GuestSetup::default()).unwrap();
        assert_eq!(
            alone["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}])
        );
        assert_eq!(alone["hostname"], "pod");
        let g = GuestSetup {
            ipc_ns: Some("/run/kata-containers/sandbox/ns/ipc".into()),
            uts_ns: Some("/run/kata-containers/sandbox/ns/uts".into()),
            pid_ns: Some("/proc/42/ns/pid".into()),
            ..GuestSetup::default()
        };
        let v = config_json("c1", &spec, Path::new("/r"), &g).unwrap();
        assert_eq!(
            v["linux"]["namespaces"],
            json!([
                {"type": "pid", "path": "/proc/42/ns/pid"},
                {"type": "mount"},
                {"type": "ipc", "path": "/run/kata-containers/sandbox/ns/ipc"},
                {"type": "uts", "path": "/run/kata-containers/sandbox/ns/uts"},
            ])
        );
        assert!(v.get("hostname").is_none(), "{v}");
    }

    /// Copied volumes and the sandbox shm are kept with their options (the shm bind replaces
    /// the agent's own /dev/shm); host paths are dropped; a volume that was never copied fails.
    #[test]
    fn copied_volumes_and_shm_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared/containers");
        let shm = t.path().join("sandbox/shm");
        let vol = shared.join("c1-0123456789abcdef-cm");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&shm).unwrap();
        let g = GuestSetup {
            shared_dir: shared.clone(),
            shm_dir: shm.clone(),
            ..GuestSetup::default()
        };
        let vol_s = vol.display().to_string();
        let shm_s = shm.display().to_string();
        let mut spec = oci::Spec::default();
        spec.Mounts = vec![
            mount_("/proc", "proc", "proc", &[]),
            mount_("/dev/shm", "bind", &shm_s, &["rbind"]),
            mount_("/etc/config", "bind", &vol_s, &["rbind", "rprivate", "ro"]),
            mount_(
                "/host",
                "bind",
                "/var/lib/kubelet/pods/x/volumes/y",
                &["rbind"],
            ),
        ];
        let v = config_json("c1", &spec, Path::new("/r"), &g).unwrap();
        assert_eq!(
            v["mounts"],
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
                {"destination": "/dev/shm", "type": "bind", "source": shm_s, "options": ["rbind"]},
                {"destination": "/etc/config", "type": "bind", "source": vol_s,
                 "options": ["rbind", "rprivate", "ro"]},
            ])
        );
        let missing = shared
            .join("c1-0123456789abcdef-hosts")
            .display()
            .to_string();
        spec.Mounts = vec![mount_("/etc/hosts", "bind", &missing, &["rbind", "ro"])];
        let e = config_json("c1", &spec, Path::new("/r"), &g).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("mount /etc/hosts: source {missing} was not copied into the guest (CopyFile)")
        );
        // A source that climbs out of the shared directory is no copied volume.
        let sneaky = format!("{}/../../../etc/nowhere", shared.display());
        spec.Mounts = vec![mount_("/x", "bind", &sneaky, &["rbind"])];
        let v = config_json("c1", &spec, Path::new("/r"), &g).unwrap();
        assert_eq!(v["mounts"][0]["destination"], "/dev/shm");
        assert_eq!(v["mounts"][0]["type"], "tmpfs");
    }
}
