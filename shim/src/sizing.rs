//! UVM sizing. A confidential guest cannot hotplug, so the VM is sized once at sandbox
//! creation: memory = base + sum of memory limits (MiB, rounded up); vCPUs = ceil(1 + sum of
//! CPU limits as quota/period). Requests (shares, reservations) are ignored, and logged as such.
//! The base is `default_memory` for confidential pods; pod sandboxing (not confidential) uses
//! 256 MiB, and 256 + 1792 MiB when the pod has no memory limit.

use std::collections::HashMap;

use oci_spec::runtime::LinuxResources;
use thiserror::Error;

pub use crate::config::SandboxSizing;

/// Pod memory limit total in bytes (CRI).
pub const ANNOTATION_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// Pod CPU quota total in microseconds per period (CRI).
pub const ANNOTATION_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// Pod CPU period in microseconds (CRI).
pub const ANNOTATION_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Pod CPU shares (a request: ignored).
pub const ANNOTATION_SANDBOX_CPU_SHARES: &str = "io.kubernetes.cri.sandbox-cpu-shares";

/// The kernel's default CFS period, used when a quota comes without a period.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
const MIB: u64 = 1024 * 1024;
/// Pod sandboxing's base: the VM's own memory.
pub const POD_SANDBOXING_BASE_MIB: u64 = 256;
/// Pod sandboxing without a memory limit: what the workload gets (a 2 GiB VM in all).
pub const POD_SANDBOXING_IMPLICIT_LIMIT_MIB: u64 = 1792;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u64,
    pub vcpus: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizingError {
    #[error("annotation {name}={value:?}: {reason}")]
    BadAnnotation {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("linux.resources.{field}: {reason}")]
    BadResource {
        field: &'static str,
        reason: &'static str,
    },
    #[error("VM size overflows: {0}")]
    Overflow(&'static str),
}

/// Sizes the UVM by the configured rule (`default_memory` is the confidential base).
pub fn size_with(
    sizing: SandboxSizing,
    default_memory_mib: u64,
    annotations: &HashMap<String, String>,
    linux_resources: Option<&LinuxResources>,
) -> Result<VmSize, SizingError> {
    match sizing {
        SandboxSizing::Confidential => size_for(default_memory_mib, annotations, linux_resources),
        SandboxSizing::PodSandboxing => {
            let s = size_for(POD_SANDBOXING_BASE_MIB, annotations, linux_resources)?;
            if s.memory_mib > POD_SANDBOXING_BASE_MIB {
                return Ok(s);
            }
            log::info!(
                "sizing: pod sandboxing without a memory limit: {POD_SANDBOXING_IMPLICIT_LIMIT_MIB} MiB added"
            );
            Ok(VmSize {
                memory_mib: POD_SANDBOXING_BASE_MIB + POD_SANDBOXING_IMPLICIT_LIMIT_MIB,
                ..s
            })
        }
    }
}

/// Sizes the UVM. The CRI sandbox annotations (pod totals) take precedence per dimension;
/// without them the single container's `linux.resources` limits are used.
pub fn size_for(
    base_memory_mib: u64,
    annotations: &HashMap<String, String>,
    linux_resources: Option<&LinuxResources>,
) -> Result<VmSize, SizingError> {
    if annotations.contains_key(ANNOTATION_SANDBOX_CPU_SHARES) {
        log::info!("sizing: {ANNOTATION_SANDBOX_CPU_SHARES} is a CPU request: ignored");
    }
    let (res_limit, res_quota, res_period) = resource_limits(linux_resources)?;

    let memory_limit_bytes = match annotation_u64(annotations, ANNOTATION_SANDBOX_MEMORY)? {
        Some(v) => v,
        None => res_limit,
    };

    let ann_quota = annotation_i64(annotations, ANNOTATION_SANDBOX_CPU_QUOTA)?;
    let ann_period = annotation_u64(annotations, ANNOTATION_SANDBOX_CPU_PERIOD)?;
    let (quota, period) = if ann_quota.is_some() || ann_period.is_some() {
        let period = ann_period.unwrap_or(DEFAULT_CPU_PERIOD_US);
        let quota = ann_quota.unwrap_or(0);
        if quota > 0 && period == 0 {
            return Err(SizingError::BadAnnotation {
                name: ANNOTATION_SANDBOX_CPU_PERIOD,
                value: "0".into(),
                reason: "must be positive when a CPU quota is set",
            });
        }
        (quota, period)
    } else {
        (res_quota, res_period)
    };

    let limit_mib = memory_limit_bytes.div_ceil(MIB);
    let memory_mib = base_memory_mib
        .checked_add(limit_mib)
        .ok_or(SizingError::Overflow("memory"))?;

    // ceil(1 + q/p) == 1 + ceil(q/p) because 1 is an integer; negative quota means "no limit".
    let extra_cpus = if quota > 0 {
        (quota as u64).div_ceil(period)
    } else {
        0
    };
    let vcpus = u32::try_from(extra_cpus)
        .ok()
        .and_then(|c| c.checked_add(1))
        .ok_or(SizingError::Overflow("vcpus"))?;

    log::info!(
        "sizing: memory {memory_mib} MiB (base {base_memory_mib} + limit {limit_mib}), {vcpus} vCPUs (quota {quota} / period {period})"
    );
    Ok(VmSize { memory_mib, vcpus })
}

/// (memory limit bytes, cpu quota, cpu period) from a container's resources; requests logged.
fn resource_limits(res: Option<&LinuxResources>) -> Result<(u64, i64, u64), SizingError> {
    let Some(res) = res else {
        return Ok((0, 0, DEFAULT_CPU_PERIOD_US));
    };
    let mut limit = 0;
    if let Some(mem) = res.memory() {
        if let Some(l) = mem.limit() {
            // -1 (or 0) means unlimited.
            if l > 0 {
                limit = l as u64;
            }
        }
        if mem.reservation().is_some_and(|r| r > 0) {
            log::info!("sizing: linux.resources.memory.reservation is a request: ignored");
        }
    }
    let (mut quota, mut period) = (0, DEFAULT_CPU_PERIOD_US);
    if let Some(cpu) = res.cpu() {
        if cpu.shares().is_some_and(|s| s > 0) {
            log::info!("sizing: linux.resources.cpu.shares is a request: ignored");
        }
        if let Some(q) = cpu.quota() {
            quota = q;
        }
        if let Some(p) = cpu.period() {
            period = p;
        }
        if quota > 0 && period == 0 {
            return Err(SizingError::BadResource {
                field: "cpu.period",
                reason: "must be positive when cpu.quota is set",
            });
        }
    }
    Ok((limit, quota, period))
}

fn annotation_u64(
    ann: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<u64>, SizingError> {
    let Some(v) = ann.get(name) else {
        return Ok(None);
    };
    v.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| SizingError::BadAnnotation {
            name,
            value: v.clone(),
            reason: "not a non-negative integer",
        })
}

fn annotation_i64(
    ann: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<i64>, SizingError> {
    let Some(v) = ann.get(name) else {
        return Ok(None);
    };
    v.trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| SizingError::BadAnnotation {
            name,
            value: v.clone(),
            reason: "not an integer",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resources(limit: Option<i64>, quota: Option<i64>, period: Option<u64>) -> LinuxResources {
        let mut mem = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            mem = mem.limit(l);
        }
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(q) = quota {
            cpu = cpu.quota(q);
        }
        if let Some(p) = period {
            cpu = cpu.period(p);
        }
        LinuxResourcesBuilder::default()
            .memory(mem.build().unwrap())
            .cpu(cpu.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn no_limits_gives_base() {
        let s = size_for(2048, &HashMap::new(), None).unwrap();
        assert_eq!(
            s,
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
        let r = resources(None, None, None);
        assert_eq!(size_for(2048, &HashMap::new(), Some(&r)).unwrap(), s);
        // -1 is "unlimited" in OCI/CRI.
        let r = resources(Some(-1), Some(-1), Some(100_000));
        assert_eq!(size_for(2048, &HashMap::new(), Some(&r)).unwrap(), s);
    }

    #[test]
    fn container_limits_512mib_1_5_cpus() {
        let r = resources(Some(512 * 1024 * 1024), Some(150_000), Some(100_000));
        let s = size_for(2048, &HashMap::new(), Some(&r)).unwrap();
        assert_eq!(
            s,
            VmSize {
                memory_mib: 2560,
                vcpus: 3
            }
        );
    }

    #[test]
    fn annotations_512mib_1_5_cpus() {
        let a = ann(&[
            (ANNOTATION_SANDBOX_MEMORY, "536870912"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "150000"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        assert_eq!(
            size_for(2048, &a, None).unwrap(),
            VmSize {
                memory_mib: 2560,
                vcpus: 3
            }
        );
    }

    #[test]
    fn annotations_take_precedence_over_resources() {
        let a = ann(&[
            (ANNOTATION_SANDBOX_MEMORY, "1073741824"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "200000"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        let r = resources(Some(512 * 1024 * 1024), Some(150_000), Some(100_000));
        assert_eq!(
            size_for(2048, &a, Some(&r)).unwrap(),
            VmSize {
                memory_mib: 3072,
                vcpus: 3
            }
        );
        // CRI writes 0 for "no limit".
        let a = ann(&[
            (ANNOTATION_SANDBOX_MEMORY, "0"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "0"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        assert_eq!(
            size_for(2048, &a, Some(&r)).unwrap(),
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
    }

    #[test]
    fn rounding_up() {
        // 1 byte over a MiB rounds up; an exact integer CPU count gives 1 + n.
        let r = resources(Some(1024 * 1024 + 1), Some(200_000), Some(100_000));
        assert_eq!(
            size_for(2048, &HashMap::new(), Some(&r)).unwrap(),
            VmSize {
                memory_mib: 2050,
                vcpus: 3
            }
        );
        // quota without period uses the kernel default period.
        let r = resources(None, Some(50_000), None);
        assert_eq!(size_for(256, &HashMap::new(), Some(&r)).unwrap().vcpus, 2);
    }

    #[test]
    fn requests_are_ignored() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .reservation(1 << 30)
                    .build()
                    .unwrap(),
            )
            .cpu(LinuxCpuBuilder::default().shares(2048u64).build().unwrap())
            .build()
            .unwrap();
        let a = ann(&[(ANNOTATION_SANDBOX_CPU_SHARES, "2048")]);
        assert_eq!(
            size_for(2048, &a, Some(&r)).unwrap(),
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
    }

    #[test]
    fn sizing_switch_confidential_and_pod_sandboxing() {
        let limits = ann(&[
            (ANNOTATION_SANDBOX_MEMORY, "536870912"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "150000"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        let none = ann(&[
            (ANNOTATION_SANDBOX_MEMORY, "0"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "0"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ]);
        let conf = |a: &HashMap<String, String>| {
            size_with(SandboxSizing::Confidential, 2048, a, None).unwrap()
        };
        let pod = |a: &HashMap<String, String>| {
            size_with(SandboxSizing::PodSandboxing, 2048, a, None).unwrap()
        };
        // Confidential: 2048 + limits, 2048 alone without.
        assert_eq!(
            conf(&limits),
            VmSize {
                memory_mib: 2560,
                vcpus: 3
            }
        );
        assert_eq!(
            conf(&none),
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
        // Pod sandboxing: 256 + limits; no limit: 256 + 1792 (default_memory not used).
        assert_eq!(
            pod(&limits),
            VmSize {
                memory_mib: 768,
                vcpus: 3
            }
        );
        assert_eq!(
            pod(&none),
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
        let r = resources(Some(100 * 1024 * 1024), None, None);
        assert_eq!(
            size_with(
                SandboxSizing::PodSandboxing,
                4096,
                &HashMap::new(),
                Some(&r)
            )
            .unwrap(),
            VmSize {
                memory_mib: 356,
                vcpus: 1
            }
        );
        assert_eq!(
            size_with(SandboxSizing::PodSandboxing, 4096, &HashMap::new(), None).unwrap(),
            VmSize {
                memory_mib: 2048,
                vcpus: 1
            }
        );
    }

    #[test]
    fn malformed_annotation_is_named() {
        let a = ann(&[(ANNOTATION_SANDBOX_MEMORY, "512Mi")]);
        let e = size_for(2048, &a, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation io.kubernetes.cri.sandbox-memory=\"512Mi\": not a non-negative integer"
        );
        let a = ann(&[(ANNOTATION_SANDBOX_CPU_QUOTA, "1.5")]);
        assert!(size_for(2048, &a, None)
            .unwrap_err()
            .to_string()
            .contains(ANNOTATION_SANDBOX_CPU_QUOTA));
        let a = ann(&[
            (ANNOTATION_SANDBOX_CPU_QUOTA, "100"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "0"),
        ]);
        assert!(size_for(2048, &a, None)
            .unwrap_err()
            .to_string()
            .contains(ANNOTATION_SANDBOX_CPU_PERIOD));
    }
}
