//! The requests the shim builds for a CRI pod, compared field by field with the requests a real
//! Kata pod made (Kata's policy corpus in the `regorus` package, case `pod-lifecycle`: the
//! same pod, a pause and a busybox container with a service-account token). The inputs are
//! config.json files as containerd 1.6's CRI writes them, with host files laid out as the
//! kubelet and CRI lay them out in a temp dir.
//!
//! Known, intended differences: `Root.Path` is the contract's `/run/kata-containers/<id>/rootfs`
//! (upstream genpolicy's `$(root_path)`; the AKS-era corpus used the shared-containers dir),
//! the storages (kata-cc's one image storage instead of tardev layers), the random 16 hex
//! digits in copied files' names, and the shm size (statfs of the temp dir here, CRI's 64 MiB
//! tmpfs there).

use std::path::PathBuf;

use agent_proto::agent::CopyFileRequest;
use agent_proto::contract;
use agent_proto::oci;
use protobuf::MessageField;
use serde_json::{json, Value};

use super::sandbox::SandboxSetup;
use super::shape::{shape_container, shape_exec, ShapeInput};
use super::spec::{exec_process_to_agent, BundleSpec};
use super::volumes::tests::{kubelet_volume, Recorder};
use super::volumes::{prepare, MountContext};

pub(super) const SANDBOX_ID: &str =
    "a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098";
pub(super) const APP_ID: &str = "45bd74c304beec46aa5a433009e3ab6703d7995c37154ebe6a0d859924ebdf67";
const POD_UID: &str = "078af1e8-328a-4f89-adfb-bae4455fbf50";
const TS: &str = "..2024_05_08_18_12_07.1887069138";

/// The requests of one Kata pod, in order: (endpoint, request).
pub(super) fn kata_requests() -> Vec<(String, Value)> {
    let path =
        kata_cc_fixtures::package_file("regorus", "tests/kata/data/pod-lifecycle/inputs.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim().trim_end_matches(',');
            let rest = l.strip_prefix("[\"ep\":\"").unwrap();
            let (ep, json) = rest.split_once("\",").unwrap();
            let json = json.strip_suffix(']').unwrap();
            (ep.to_string(), serde_json::from_str(json).unwrap())
        })
        .collect()
}

pub(super) fn nth<'a>(reqs: &'a [(String, Value)], ep: &str, n: usize) -> &'a Value {
    &reqs.iter().filter(|(e, _)| e == ep).nth(n).unwrap().1
}

/// The host side of the pod: CRI's sandbox dir and the kubelet's pod dir.
pub(super) struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    pub(super) fn new() -> Host {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let sb = root.join(format!("cri/sandboxes/{SANDBOX_ID}"));
        std::fs::create_dir_all(sb.join("shm")).unwrap();
        std::fs::write(
            sb.join("resolv.conf"),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.0.0.10\noptions ndots:5\n",
        )
        .unwrap();
        std::fs::write(sb.join("hostname"), "pod-lifecycle\n").unwrap();
        let pod = root.join(format!("kubelet/pods/{POD_UID}"));
        std::fs::create_dir_all(pod.join("containers/busybox")).unwrap();
        std::fs::write(
            pod.join("etc-hosts"),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             10.244.0.17\tpod-lifecycle\n",
        )
        .unwrap();
        let tlog = pod.join("containers/busybox/3d5a1b2c");
        std::fs::write(&tlog, "").unwrap();
        std::fs::set_permissions(&tlog, std::fs::Permissions::from_mode(0o666)).unwrap();
        for p in [
            sb.join("resolv.conf"),
            sb.join("hostname"),
            pod.join("etc-hosts"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let ca = "c".repeat(1761);
        let token = "t".repeat(1501);
        kubelet_volume(
            &pod.join("volumes/kubernetes.io~projected/kube-api-access-4n2bq"),
            TS,
            &[("ca.crt", &ca), ("namespace", "default"), ("token", &token)],
        );
        Host { _dir: dir, root }
    }

    pub(super) fn fill(&self, template: &str, caps: &Value) -> String {
        template
            .replace("@ROOT@", self.root.to_str().unwrap())
            .replace("@CAPS@", &caps.to_string())
    }
}

pub(super) const PAUSE_CONFIG: &str = r#"{
  "ociVersion": "1.1.0-rc.1",
  "process": {
    "user": {"uid": 65535, "gid": 65535, "additionalGids": [65535]},
    "args": ["/pause"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "cwd": "/",
    "capabilities": {"bounding": @CAPS@, "effective": @CAPS@, "permitted": @CAPS@},
    "noNewPrivileges": true,
    "oomScoreAdj": -998
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "pod-lifecycle",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/dev/shm", "type": "bind", "source": "@ROOT@/cri/sandboxes/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098/shm", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "@ROOT@/cri/sandboxes/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098/resolv.conf", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
  ],
  "annotations": {
    "io.kubernetes.cri.sandbox-namespace": "default",
    "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_pod-lifecycle_078af1e8-328a-4f89-adfb-bae4455fbf50",
    "io.kubernetes.cri.sandbox-cpu-quota": "0",
    "io.kubernetes.cri.sandbox-cpu-period": "100000",
    "io.kubernetes.cri.sandbox-uid": "078af1e8-328a-4f89-adfb-bae4455fbf50",
    "io.kubernetes.cri.sandbox-cpu-shares": "2",
    "io.kubernetes.cri.sandbox-id": "a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098",
    "io.kubernetes.cri.sandbox-name": "pod-lifecycle",
    "io.kubernetes.cri.sandbox-memory": "0",
    "io.kubernetes.cri.container-type": "sandbox"
  },
  "linux": {
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}],
      "cpu": {"shares": 2}
    },
    "cgroupsPath": "/kubepods/besteffort/pod078af1e8-328a-4f89-adfb-bae4455fbf50/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098",
    "namespaces": [
      {"type": "pid"},
      {"type": "ipc"},
      {"type": "uts"},
      {"type": "mount"},
      {"type": "network", "path": "/var/run/netns/cni-b894e817-0cf4-867e-21d1-af214f3a1a59"}
    ],
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}"#;

pub(super) const APP_CONFIG: &str = r#"{
  "ociVersion": "1.1.0-rc.1",
  "process": {
    "user": {"uid": 0, "gid": 0, "additionalGids": [0, 10]},
    "args": ["/bin/sh", "-c", "while true; do echo pod-lifecycle; sleep 10; done"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod-lifecycle", "POD_NAME=pod-lifecycle", "POD_IP=10.244.0.17", "SERVICE_ACCOUNT=default", "ISTIO_META_CLUSTER_ID=Kubernetes", "POD_NAMESPACE=default", "PROXY_CONFIG={}\n", "ISTIO_META_POD_PORTS=[\n]", "ISTIO_META_APP_CONTAINERS=serviceaclient", "ISTIO_META_NODE_NAME=aks-nodepool1-38464071-vmss000000", "KUBERNETES_SERVICE_HOST=10.0.0.1", "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443", "KUBERNETES_PORT=tcp://10.0.0.1:443", "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO=tcp", "KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1"],
    "cwd": "/",
    "capabilities": {"bounding": @CAPS@, "effective": @CAPS@, "permitted": @CAPS@},
    "apparmorProfile": "",
    "oomScoreAdj": 1000
  },
  "root": {"path": "rootfs"},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "rw"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "@ROOT@/kubelet/pods/078af1e8-328a-4f89-adfb-bae4455fbf50/etc-hosts", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/termination-log", "type": "bind", "source": "@ROOT@/kubelet/pods/078af1e8-328a-4f89-adfb-bae4455fbf50/containers/busybox/3d5a1b2c", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/etc/hostname", "type": "bind", "source": "@ROOT@/cri/sandboxes/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098/hostname", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "@ROOT@/cri/sandboxes/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098/resolv.conf", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/shm", "type": "bind", "source": "@ROOT@/cri/sandboxes/a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098/shm", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind", "source": "@ROOT@/kubelet/pods/078af1e8-328a-4f89-adfb-bae4455fbf50/volumes/kubernetes.io~projected/kube-api-access-4n2bq", "options": ["rbind", "rprivate", "ro"]}
  ],
  "annotations": {
    "io.kubernetes.cri.container-name": "busybox",
    "io.kubernetes.cri.sandbox-namespace": "default",
    "io.kubernetes.cri.sandbox-id": "a3e5b029b23f8e3a63e5c231cf63688477a77f5036f249f722823eef73771098",
    "io.kubernetes.cri.image-name": "mcr.microsoft.com/aks/e2e/library-busybox:master.220314.1-linux-amd64",
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-name": "pod-lifecycle",
    "io.kubernetes.cri.sandbox-uid": "078af1e8-328a-4f89-adfb-bae4455fbf50"
  },
  "linux": {
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
      "memory": {"limit": 0},
      "cpu": {"shares": 2, "period": 100000, "cpus": "0-1"},
      "pids": {"limit": 4096}
    },
    "cgroupsPath": "/kubepods/besteffort/pod078af1e8-328a-4f89-adfb-bae4455fbf50/45bd74c304beec46aa5a433009e3ab6703d7995c37154ebe6a0d859924ebdf67",
    "namespaces": [
      {"type": "pid"},
      {"type": "ipc", "path": "/proc/4242/ns/ipc"},
      {"type": "uts", "path": "/proc/4242/ns/uts"},
      {"type": "mount"},
      {"type": "network", "path": "/proc/4242/ns/net"},
      {"type": "cgroup"}
    ],
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
  },
  "hooks": {"createRuntime": [{"path": "/usr/bin/nvidia-ctk"}]}
}"#;

/// An agent spec as Kata's policy input shows it (the fields generated policies read).
fn policy_json(s: &oci::Spec) -> Value {
    let caps = |c: &MessageField<oci::LinuxCapabilities>| match c.as_ref() {
        None => Value::Null,
        Some(c) => json!({
            "Bounding": c.Bounding, "Effective": c.Effective, "Inheritable": c.Inheritable,
            "Permitted": c.Permitted, "Ambient": c.Ambient,
        }),
    };
    let process = |p: &oci::Process| {
        json!({
            "Terminal": p.Terminal,
            "ConsoleSize": Value::Null,
            "User": {"UID": p.User.UID, "GID": p.User.GID, "AdditionalGids": p.User.AdditionalGids, "Username": p.User.Username},
            "Args": p.Args, "Env": p.Env, "Cwd": p.Cwd,
            "Capabilities": caps(&p.Capabilities),
            "Rlimits": p.Rlimits.iter().map(|r| json!({"Type": r.Type, "Hard": r.Hard, "Soft": r.Soft})).collect::<Vec<_>>(),
            "NoNewPrivileges": p.NoNewPrivileges,
            "ApparmorProfile": p.ApparmorProfile,
            "OOMScoreAdj": p.OOMScoreAdj,
            "SelinuxLabel": p.SelinuxLabel,
        })
    };
    let l = s.Linux.as_ref().unwrap();
    let r = l.Resources.as_ref().unwrap();
    let memory = r.Memory.as_ref().map_or(Value::Null, |m| {
        json!({"Limit": m.Limit, "Reservation": m.Reservation, "Swap": m.Swap, "Kernel": m.Kernel,
               "KernelTCP": m.KernelTCP, "Swappiness": m.Swappiness, "DisableOOMKiller": m.DisableOOMKiller})
    });
    let cpu = r.CPU.as_ref().map_or(Value::Null, |c| {
        json!({"Shares": c.Shares, "Quota": c.Quota, "Period": c.Period, "RealtimeRuntime": c.RealtimeRuntime,
               "RealtimePeriod": c.RealtimePeriod, "Cpus": c.Cpus, "Mems": c.Mems})
    });
    let opt = |present: bool| {
        if present {
            json!("present")
        } else {
            Value::Null
        }
    };
    json!({
        "Version": s.Version,
        "Process": process(s.Process.as_ref().unwrap()),
        "Root": {"Path": s.Root.Path, "Readonly": s.Root.Readonly},
        "Hostname": s.Hostname,
        "Mounts": s.Mounts.iter().map(|m| json!({"destination": m.destination, "source": m.source, "type_": m.type_, "options": m.options})).collect::<Vec<_>>(),
        "Hooks": opt(s.Hooks.is_some()),
        "Annotations": s.Annotations,
        "Linux": {
            "UIDMappings": [], "GIDMappings": [],
            "Sysctl": l.Sysctl,
            "Resources": {
                "Devices": r.Devices.iter().map(|d| json!({"Allow": d.Allow})).collect::<Vec<_>>(),
                "Memory": memory, "CPU": cpu,
                "Pids": opt(r.Pids.is_some()), "BlockIO": opt(r.BlockIO.is_some()),
                "HugepageLimits": [], "Network": opt(r.Network.is_some()),
            },
            "CgroupsPath": l.CgroupsPath,
            "Namespaces": l.Namespaces.iter().map(|n| json!({"Type": n.Type, "Path": n.Path})).collect::<Vec<_>>(),
            "Devices": l.Devices.iter().map(|d| json!({"Path": d.Path})).collect::<Vec<_>>(),
            "Seccomp": opt(l.Seccomp.is_some()),
            "RootfsPropagation": l.RootfsPropagation,
            "MaskedPaths": l.MaskedPaths,
            "ReadonlyPaths": l.ReadonlyPaths,
            "MountLabel": l.MountLabel,
        },
    })
}

/// The random part of a copied file's name, made comparable.
fn unrandom(s: &str) -> String {
    let mut out = s.to_string();
    let prefix = format!("{}/", contract::SHARED_CONTAINERS_DIR);
    if let Some(rest) = s.strip_prefix(&prefix) {
        let parts: Vec<&str> = rest.splitn(3, '-').collect();
        if parts.len() == 3
            && parts[1].len() == 16
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        {
            out = format!("{prefix}{}-<hex>-{}", parts[0], parts[2]);
        }
    }
    out
}

fn unrandom_mounts(v: &mut Value) {
    for m in v["Mounts"].as_array_mut().unwrap() {
        let s = unrandom(m["source"].as_str().unwrap());
        m["source"] = json!(s);
    }
}

/// The Kata request's spec with the intended differences applied.
fn expected_oci(kata: &Value, id: &str) -> Value {
    let mut want = kata["OCI"].clone();
    want["Root"]["Path"] = json!(contract::guest_rootfs(id));
    for k in ["Solaris", "Windows"] {
        want.as_object_mut().unwrap().remove(k);
    }
    want["Linux"].as_object_mut().unwrap().remove("IntelRdt");
    // Device cgroup entries are compared by count (all gone).
    unrandom_mounts(&mut want);
    want
}

fn copy_summary(r: &CopyFileRequest) -> Value {
    let link = if r.file_mode & 0o170000 == 0o120000 {
        String::from_utf8(r.data.clone()).unwrap()
    } else {
        String::new()
    };
    json!({
        "path": unrandom(&r.path), "file_size": r.file_size, "file_mode": r.file_mode,
        "dir_mode": r.dir_mode, "offset": r.offset, "symlink_src": link,
    })
}

fn kata_copy_summary(v: &Value) -> Value {
    json!({
        "path": unrandom(v["path"].as_str().unwrap()), "file_size": v["file_size"],
        "file_mode": v["file_mode"], "dir_mode": v["dir_mode"], "offset": v["offset"],
        "symlink_src": v["symlink_src"],
    })
}

/// What Create does to a bundle's spec before CreateContainer, with a recorder for CopyFile.
pub(super) async fn shape_for_guest(
    config: &str,
    id: &str,
    rec: &Recorder,
    empty_dirs: &tokio::sync::Mutex<std::collections::HashMap<String, String>>,
) -> (oci::Spec, bool) {
    let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}");
    let mut spec = BundleSpec::parse(config.as_bytes(), "config.json")
        .unwrap()
        .to_agent()
        .unwrap();
    let pidns = shape_container(
        &mut spec,
        &ShapeInput {
            container_id: id,
            bundle: &bundle,
            pass_seccomp: false,
        },
    );
    let ctx = MountContext {
        container_id: id,
        sandbox_id: SANDBOX_ID,
        empty_dirs,
        sink: rec,
    };
    prepare(&mut spec, &ctx, super::volumes::random_hex)
        .await
        .unwrap();
    (spec, pidns)
}

#[tokio::test]
async fn pause_and_app_requests_match_katas() {
    let kata = kata_requests();
    let host = Host::new();
    let rec = Recorder::default();
    let empty_dirs = Default::default();

    // CreateSandbox, from the pause's spec.
    let pause_cc = nth(&kata, "CreateContainerRequest", 0);
    let pause_caps = &pause_cc["OCI"]["Process"]["Capabilities"]["Bounding"];
    let pause_config = host.fill(PAUSE_CONFIG, pause_caps);
    let pause_spec = BundleSpec::parse(pause_config.as_bytes(), "config.json")
        .unwrap()
        .to_agent()
        .unwrap();
    let setup = SandboxSetup::from_spec(&pause_spec).unwrap();
    // The pod's netns, read before shaping drops it from what the guest gets.
    assert_eq!(
        setup.netns,
        Some(PathBuf::from(
            "/var/run/netns/cni-b894e817-0cf4-867e-21d1-af214f3a1a59"
        ))
    );
    let csb = setup.request(SANDBOX_ID);
    let kata_csb = nth(&kata, "CreateSandboxRequest", 0);
    assert_eq!(json!(csb.hostname), kata_csb["hostname"]);
    assert_eq!(json!(csb.dns), kata_csb["dns"]);
    assert_eq!(json!(csb.sandbox_pidns), kata_csb["sandbox_pidns"]);
    assert_eq!(json!(csb.sandbox_id), kata_csb["sandbox_id"]);
    assert!(csb.guest_hook_path.is_empty() && csb.kernel_modules.is_empty());
    let (st, kst) = (&csb.storages[0], &kata_csb["storages"][0]);
    assert_eq!(csb.storages.len(), 1);
    assert_eq!(json!(st.driver), kst["driver"]);
    assert_eq!(json!(st.driver_options), kst["driver_options"]);
    assert_eq!(json!(st.source), kst["source"]);
    assert_eq!(json!(st.fstype), kst["fstype"]);
    assert_eq!(json!(st.mount_point), kst["mount_point"]);
    assert!(st.fs_group.is_none() && kst["fs_group"].is_null());
    let shm = nix::sys::statfs::statfs(&host.root.join(format!("cri/sandboxes/{SANDBOX_ID}/shm")))
        .unwrap();
    let size = shm.block_size() as u64 * shm.blocks();
    assert_eq!(st.options, contract::shm_options(size));
    assert_eq!(
        json!(st.options[..4]),
        json!(kst["options"].as_array().unwrap()[..4])
    );

    // The pause: its resolv.conf copy, then CreateContainer.
    let (pause, pidns) = shape_for_guest(&pause_config, SANDBOX_ID, &rec, &empty_dirs).await;
    assert_eq!(json!(pidns), pause_cc["sandbox_pidns"]);
    let copies: Vec<Value> = rec.take().iter().map(copy_summary).collect();
    let kata_copies: Vec<Value> = kata
        .iter()
        .skip_while(|(e, _)| e != "CreateSandboxRequest")
        .take_while(|(e, v)| e != "CreateContainerRequest" || v["container_id"] != SANDBOX_ID)
        .filter(|(e, _)| e == "CopyFileRequest")
        .map(|(_, v)| kata_copy_summary(v))
        .collect();
    assert_eq!(copies, kata_copies);
    let mut got = policy_json(&pause);
    unrandom_mounts(&mut got);
    let want = expected_oci(pause_cc, SANDBOX_ID);
    for key in want.as_object().unwrap().keys() {
        assert_eq!(got[key], want[key], "pause OCI.{key}");
    }

    // The app container: its copies (hosts, termination log, hostname, resolv.conf, the
    // service-account tree), then CreateContainer.
    let app_cc = nth(&kata, "CreateContainerRequest", 1);
    let app_caps = &app_cc["OCI"]["Process"]["Capabilities"]["Bounding"];
    let app_config = host.fill(APP_CONFIG, app_caps);
    let (app, pidns) = shape_for_guest(&app_config, APP_ID, &rec, &empty_dirs).await;
    assert_eq!(json!(pidns), app_cc["sandbox_pidns"]);
    let copies: Vec<Value> = rec.take().iter().map(copy_summary).collect();
    let kata_copies: Vec<Value> = kata
        .iter()
        .skip_while(|(e, v)| e != "CreateContainerRequest" || v["container_id"] != SANDBOX_ID)
        .take_while(|(e, v)| e != "CreateContainerRequest" || v["container_id"] != APP_ID)
        .filter(|(e, _)| e == "CopyFileRequest")
        .map(|(_, v)| kata_copy_summary(v))
        .collect();
    assert_eq!(kata_copies.len(), 13);
    assert_eq!(copies, kata_copies);
    let mut got = policy_json(&app);
    unrandom_mounts(&mut got);
    let want = expected_oci(app_cc, APP_ID);
    for key in want.as_object().unwrap().keys() {
        assert_eq!(got[key], want[key], "app OCI.{key}");
    }

    // An exec (a postStart hook): containerd's process spec is the container's with new args.
    let exec = nth(&kata, "ExecProcessRequest", 0);
    let mut pspec: Value = serde_json::from_str(&app_config).unwrap();
    let mut process = pspec["process"].take();
    process["args"] = json!(["echo", "hello from postStart hook"]);
    let mut p = exec_process_to_agent(process.to_string().as_bytes(), "exec").unwrap();
    assert!(p.Capabilities.is_some());
    shape_exec(&mut p);
    let got = policy_json(&oci::Spec {
        Process: MessageField::some(p),
        Linux: MessageField::some(oci::Linux {
            Resources: MessageField::some(Default::default()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let want = &exec["process"];
    for key in [
        "Terminal",
        "User",
        "Args",
        "Env",
        "Cwd",
        "Capabilities",
        "Rlimits",
        "NoNewPrivileges",
    ] {
        assert_eq!(got["Process"][key], want[key], "exec process.{key}");
    }
    // Kept as containerd gives it (Kata's exec drops it to 0; no policy rule reads it).
    assert_eq!(got["Process"]["OOMScoreAdj"], json!(1000));
}

/// containerd's `pod_annotations` put the pod's policy (or init-data) annotation on every
/// container's spec; Kata's runtime drops both before CreateContainer, and so does the shim.
/// The pause names the pod's network namespace as Kata's runtime does.
#[test]
fn the_policy_annotations_stay_out_of_the_specs() {
    for (config, id, sandbox) in [
        (PAUSE_CONFIG, SANDBOX_ID, true),
        (APP_CONFIG, APP_ID, false),
    ] {
        let mut v: Value =
            serde_json::from_str(&config.replace("@ROOT@", "/x").replace("@CAPS@", "[]")).unwrap();
        v["annotations"]["io.katacontainers.config.agent.policy"] = json!("cGFja2FnZQ==");
        v["annotations"]["io.katacontainers.config.hypervisor.cc_init_data"] = json!("H4sI");
        let mut spec = BundleSpec::parse(v.to_string().as_bytes(), "config.json")
            .unwrap()
            .to_agent()
            .unwrap();
        let input = ShapeInput {
            container_id: id,
            bundle: "/b",
            pass_seccomp: false,
        };
        shape_container(&mut spec, &input);
        let keys: Vec<&String> = spec.Annotations.keys().collect();
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("io.katacontainers.config.")),
            "{keys:?}"
        );
        assert_eq!(
            spec.Annotations
                .get("nerdctl/network-namespace")
                .map(|s| s.as_str()),
            sandbox.then_some("/var/run/netns/cni-b894e817-0cf4-867e-21d1-af214f3a1a59"),
        );
    }
}

/// `shareProcessNamespace: true`: CRI gives the pause's pid namespace by path.
#[test]
fn a_pid_namespace_path_becomes_sandbox_pidns() {
    let config = APP_CONFIG
        .replace("@ROOT@", "/x")
        .replace("@CAPS@", "[]")
        .replace(
            r#"{"type": "pid"}"#,
            r#"{"type": "pid", "path": "/proc/4242/ns/pid"}"#,
        );
    let mut spec = BundleSpec::parse(config.as_bytes(), "config.json")
        .unwrap()
        .to_agent()
        .unwrap();
    let input = ShapeInput {
        container_id: APP_ID,
        bundle: "/b",
        pass_seccomp: true,
    };
    assert!(shape_container(&mut spec, &input));
    let l = spec.Linux.as_ref().unwrap();
    let ns: Vec<(&str, &str)> = l
        .Namespaces
        .iter()
        .map(|n| (n.Type.as_str(), n.Path.as_str()))
        .collect();
    assert_eq!(ns, [("ipc", ""), ("uts", ""), ("mount", "")]);
    // disable_guest_seccomp = false passes the profile on.
    assert!(l.Seccomp.is_some());
    let r = l.Resources.as_ref().unwrap();
    assert!(r.Devices.is_empty() && r.Pids.is_none());
    assert_eq!(r.CPU.Cpus, "");
    assert_eq!(
        spec.Annotations[contract::CONTAINER_TYPE_ANNOTATION],
        contract::POD_CONTAINER
    );
    assert_eq!(spec.Annotations[contract::BUNDLE_PATH_ANNOTATION], "/b");
    // A ctr container (no CRI annotations) is a pod container too, its root read-write.
    let mut ctr = BundleSpec::parse(
        br#"{"process":{"args":["sh"]},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"}]}}"#,
        "c.json",
    )
    .unwrap()
    .to_agent()
    .unwrap();
    assert!(!shape_container(&mut ctr, &input));
    assert_eq!(ctr.Root.Path, contract::guest_rootfs(APP_ID));
    assert!(!ctr.Root.Readonly);
    assert_eq!(
        ctr.Annotations[contract::CONTAINER_TYPE_ANNOTATION],
        contract::POD_CONTAINER
    );
}
