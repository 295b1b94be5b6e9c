//! A container's cgroup: UpdateContainer's resources and the OOM-kill counter. The guest runs
//! cgroup v2; cgroup v1 is understood too because host tests run the agent on the host's
//! hierarchy, where the launcher puts containers (runc's cgroupfs layout).
//!
//! Updates write the cgroup files directly: each value is checked first, and a value the kernel
//! refuses is reported with the request field, the value and the file.

use std::path::{Path, PathBuf};

use agent_proto::oci;

use crate::error::AgentError;

/// cgroup2's filesystem magic (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: i64 = 0x6367_7270;
/// The CPU shares range of cgroup v1, as runc clamps it.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The hierarchy mounted at `root`.
pub fn version(root: &Path) -> Version {
    match nix::sys::statfs::statfs(root) {
        Ok(s) if s.filesystem_type().0 == CGROUP2_MAGIC => Version::V2,
        Ok(_) => Version::V1,
        // Nothing mounted or unreadable: the guest's layout.
        Err(_) => Version::V2,
    }
}

/// cgroup v2's `cpu.weight` for v1 CPU shares (the conversion runc and the kubelet use).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((s - 2) * 9999) / 262_142
}

/// One write of an update: which request field, its value, the file and what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub field: &'static str,
    pub value: i64,
    pub file: PathBuf,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    root: PathBuf,
    /// The cgroup below the root (runc's `cgroupsPath`), without a leading '/'.
    rel: String,
    version: Version,
}

impl Cgroup {
    pub fn new(root: &Path, cgroups_path: &str, version: Version) -> Cgroup {
        Cgroup {
            root: root.to_path_buf(),
            rel: cgroups_path.trim_start_matches('/').to_string(),
            version,
        }
    }

    /// A v2 file, or a v1 controller's file.
    fn file(&self, v2: &str, v1: (&str, &str)) -> PathBuf {
        match self.version {
            Version::V2 => self.root.join(&self.rel).join(v2),
            Version::V1 => self.root.join(v1.0).join(&self.rel).join(v1.1),
        }
    }

    /// The kernel's count of processes OOM-killed in this cgroup (v2 `memory.events`, v1
    /// `memory.oom_control`); `None` when it cannot be read.
    pub fn oom_kills(&self) -> Option<u64> {
        let f = self.file("memory.events", ("memory", "memory.oom_control"));
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "oom_kill")
                .then(|| it.next()?.parse().ok())
                .flatten()
        })
    }

    /// The writes that apply `r`, checked (`mem_total`: the guest's memory, an upper bound for
    /// a memory limit). Fields left at zero are left alone, as runc does.
    pub fn plan(
        &self,
        r: &oci::LinuxResources,
        mem_total: Option<u64>,
    ) -> Result<Vec<Write>, AgentError> {
        let v2 = self.version == Version::V2;
        let mut w = Vec::new();
        let mut add = |field, value, v2f: &str, v1f: (&str, &str), content: String| {
            w.push(Write {
                field,
                value,
                file: self.file(v2f, v1f),
                content,
            })
        };
        if let Some(m) = r.Memory.as_ref() {
            if m.Limit != 0 {
                if let Some(total) = mem_total {
                    if m.Limit > 0 && m.Limit as u64 > total {
                        return Err(AgentError::FailedPrecondition(format!(
                            "resources.Memory.Limit {} is more than the guest's memory \
                             (MemTotal {total} bytes): the VM's size is fixed when the pod starts",
                            m.Limit
                        )));
                    }
                }
                let content = match (m.Limit > 0, v2) {
                    (true, _) => m.Limit.to_string(),
                    (false, true) => "max".into(),
                    (false, false) => "-1".into(),
                };
                add(
                    "resources.Memory.Limit",
                    m.Limit,
                    "memory.max",
                    ("memory", "memory.limit_in_bytes"),
                    content,
                );
            }
            if m.Reservation != 0 {
                let content = match (m.Reservation > 0, v2) {
                    (true, _) => m.Reservation.to_string(),
                    (false, true) => "max".into(),
                    (false, false) => "-1".into(),
                };
                add(
                    "resources.Memory.Reservation",
                    m.Reservation,
                    "memory.low",
                    ("memory", "memory.soft_limit_in_bytes"),
                    content,
                );
            }
            if m.Swap > 0 && m.Swap != m.Limit {
                // The guest has no swap; a limit on it means nothing (the kubelet sends swap
                // = memory limit, i.e. no swap).
                log::info!(
                    "UpdateContainer: resources.Memory.Swap {} ignored: no swap",
                    m.Swap
                );
            }
        }
        if let Some(c) = r.CPU.as_ref() {
            if c.Shares != 0 {
                let (content, v2f) = if v2 {
                    (shares_to_weight(c.Shares).to_string(), "cpu.weight")
                } else {
                    (c.Shares.clamp(MIN_SHARES, MAX_SHARES).to_string(), "")
                };
                add(
                    "resources.CPU.Shares",
                    c.Shares as i64,
                    v2f,
                    ("cpu", "cpu.shares"),
                    content,
                );
            }
            if v2 {
                if c.Quota != 0 || c.Period != 0 {
                    let mut content = if c.Quota > 0 {
                        c.Quota.to_string()
                    } else {
                        "max".to_string()
                    };
                    if c.Period != 0 {
                        content.push_str(&format!(" {}", c.Period));
                    }
                    let (field, value) = if c.Quota != 0 {
                        ("resources.CPU.Quota", c.Quota)
                    } else {
                        ("resources.CPU.Period", c.Period as i64)
                    };
                    add(field, value, "cpu.max", ("", ""), content);
                }
            } else {
                if c.Period != 0 {
                    add(
                        "resources.CPU.Period",
                        c.Period as i64,
                        "",
                        ("cpu", "cpu.cfs_period_us"),
                        c.Period.to_string(),
                    );
                }
                if c.Quota != 0 {
                    let content = if c.Quota > 0 {
                        c.Quota.to_string()
                    } else {
                        "-1".into()
                    };
                    add(
                        "resources.CPU.Quota",
                        c.Quota,
                        "",
                        ("cpu", "cpu.cfs_quota_us"),
                        content,
                    );
                }
            }
            if !c.Cpus.is_empty() || !c.Mems.is_empty() {
                // They name host CPUs and NUMA nodes, which the VM does not have.
                log::info!(
                    "UpdateContainer: resources.CPU.Cpus {:?} / Mems {:?} ignored",
                    c.Cpus,
                    c.Mems
                );
            }
        }
        if let Some(p) = r.Pids.as_ref() {
            if p.Limit != 0 {
                let content = if p.Limit > 0 {
                    p.Limit.to_string()
                } else {
                    "max".into()
                };
                add(
                    "resources.Pids.Limit",
                    p.Limit,
                    "pids.max",
                    ("pids", "pids.max"),
                    content,
                );
            }
        }
        Ok(w)
    }

    /// Applies the planned writes in order; the first the kernel refuses stops it, named.
    pub fn apply(&self, writes: &[Write]) -> Result<(), AgentError> {
        for w in writes {
            if let Err(e) = std::fs::write(&w.file, &w.content) {
                let msg = format!(
                    "{} {}: writing {:?} to {}: {e}",
                    w.field,
                    w.value,
                    w.content,
                    w.file.display()
                );
                return Err(match e.raw_os_error() {
                    Some(libc::EINVAL) | Some(libc::ERANGE) => AgentError::InvalidArgument(msg),
                    Some(libc::EBUSY) => AgentError::FailedPrecondition(format!(
                        "{msg} (the container uses more than that)"
                    )),
                    Some(libc::ENOENT) => AgentError::FailedPrecondition(format!(
                        "{msg} (the controller is not enabled for the container's cgroup)"
                    )),
                    _ => AgentError::Internal(msg),
                });
            }
        }
        Ok(())
    }
}

/// The guest's memory in bytes (`MemTotal`).
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
// Protobuf messages read best built field by field here.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn resources(
        limit: i64,
        shares: u64,
        quota: i64,
        period: u64,
        pids: i64,
    ) -> oci::LinuxResources {
        let mut r = oci::LinuxResources::default();
        let mut m = oci::LinuxMemory::default();
        m.Limit = limit;
        r.Memory = Some(m).into();
        let mut c = oci::LinuxCPU::default();
        c.Shares = shares;
        c.Quota = quota;
        c.Period = period;
        r.CPU = Some(c).into();
        let mut p = oci::LinuxPids::default();
        p.Limit = pids;
        r.Pids = Some(p).into();
        r
    }

    #[test]
    fn weight_conversion() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn v2_plan_and_apply() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(t.path(), "/kata-cc/c1", Version::V2);
        let dir = t.path().join("kata-cc/c1");
        std::fs::create_dir_all(&dir).unwrap();
        let w = cg
            .plan(
                &resources(256 << 20, 512, 50_000, 100_000, 64),
                Some(1 << 30),
            )
            .unwrap();
        let got: Vec<(&str, String)> = w
            .iter()
            .map(|w| {
                (
                    w.file.file_name().unwrap().to_str().unwrap(),
                    w.content.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("memory.max", "268435456".to_string()),
                ("cpu.weight", "20".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "64".to_string()),
            ]
        );
        cg.apply(&w).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        // Unlimited values, and fields left alone.
        let w = cg.plan(&resources(-1, 0, -1, 0, -1), None).unwrap();
        let got: Vec<String> = w.iter().map(|w| w.content.clone()).collect();
        assert_eq!(got, ["max", "max", "max"]);
        assert!(cg
            .plan(&oci::LinuxResources::default(), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn v1_files() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(t.path(), "/kata-cc/c1", Version::V1);
        let w = cg
            .plan(&resources(1 << 20, 1024, 20_000, 100_000, 10), None)
            .unwrap();
        let got: Vec<String> = w
            .iter()
            .map(|w| {
                format!(
                    "{}={}",
                    w.file.strip_prefix(t.path()).unwrap().display(),
                    w.content
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "memory/kata-cc/c1/memory.limit_in_bytes=1048576",
                "cpu/kata-cc/c1/cpu.shares=1024",
                "cpu/kata-cc/c1/cpu.cfs_period_us=100000",
                "cpu/kata-cc/c1/cpu.cfs_quota_us=20000",
                "pids/kata-cc/c1/pids.max=10",
            ]
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(t.path(), "kata-cc/c1", Version::V2);
        let e = cg
            .plan(&resources(2 << 30, 0, 0, 0, 0), Some(1 << 30))
            .unwrap_err();
        assert!(matches!(e, AgentError::FailedPrecondition(_)));
        let m = e.to_string();
        assert!(
            m.contains("resources.Memory.Limit 2147483648") && m.contains("MemTotal 1073741824"),
            "{m}"
        );
        // The cgroup does not exist: the write fails naming field, value and file.
        let w = cg.plan(&resources(0, 0, 0, 0, 5), None).unwrap();
        let m = cg.apply(&w).unwrap_err().to_string();
        assert!(
            m.contains("resources.Pids.Limit 5") && m.contains("kata-cc/c1/pids.max"),
            "{m}"
        );
    }

    #[test]
    fn oom_counter() {
        let t = tempfile::tempdir().unwrap();
        let v2 = Cgroup::new(t.path(), "a", Version::V2);
        assert_eq!(v2.oom_kills(), None);
        std::fs::create_dir_all(t.path().join("a")).unwrap();
        std::fs::write(
            t.path().join("a/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(v2.oom_kills(), Some(2));
        let v1 = Cgroup::new(t.path(), "a", Version::V1);
        std::fs::create_dir_all(t.path().join("memory/a")).unwrap();
        std::fs::write(
            t.path().join("memory/a/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n",
        )
        .unwrap();
        assert_eq!(v1.oom_kills(), Some(7));
    }
}
