//! What this host can do for an SEV-SNP guest: `/dev/sev`, usable KVM with SNP enabled, the CPU's
//! memory-encryption leaf, and an AMD SEV firmware with a kernel-hashes table. Used by
//! `kata-cc check` and, before any QEMU is started, by the VM layer: a pod that asks for SNP on a
//! host without it fails naming what is missing, never silently runs unencrypted.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::measure::{self, MeasureError};
use super::qemu::{host_cbit, CpuidError};

/// One capability and whether this host has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Error)]
#[error("SEV-SNP requested (hypervisor.qemu.confidential_guest = true in {config}) but {} missing: {}",
    if .missing.len() == 1 { "this is" } else { "these are" },
    .missing.iter().map(|c| format!("{} ({})", c.name, c.detail)).collect::<Vec<_>>().join("; "))]
pub struct SnpUnavailable {
    pub config: String,
    pub missing: Vec<Capability>,
}

/// Where the host's devices and module parameters are (a test points these elsewhere).
#[derive(Debug, Clone)]
pub struct HostPaths<'a> {
    pub dev_sev: &'a Path,
    pub dev_kvm: &'a Path,
    pub kvm_amd_sev_snp: &'a Path,
}

impl Default for HostPaths<'static> {
    fn default() -> Self {
        HostPaths {
            dev_sev: Path::new("/dev/sev"),
            dev_kvm: Path::new("/dev/kvm"),
            kvm_amd_sev_snp: Path::new("/sys/module/kvm_amd/parameters/sev_snp"),
        }
    }
}

/// Why this host lacks a capability; its text is the capability's detail (`kata-cc check`).
#[derive(Debug, Error)]
pub enum Missing {
    #[error("{0} does not exist (no SEV firmware/ccp driver on this host)")]
    NoDevSev(PathBuf),
    /// A device or module parameter that cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: KVM_GET_API_VERSION answered {answer} ({os_error})")]
    KvmApiVersion {
        path: PathBuf,
        answer: i32,
        os_error: std::io::Error,
    },
    #[error("{path} is {value}")]
    SevSnpDisabled { path: PathBuf, value: String },
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    #[error("CPUID 0x8000001F EAX bit 4 (SEV-SNP) is clear")]
    CpuWithoutSnp,
    #[error("hypervisor.qemu.firmware is not set (an AMD SEV OVMF build is needed)")]
    NoFirmware,
    #[error(transparent)]
    Firmware(#[from] MeasureError),
    #[error("{0} has no SEV metadata (not an SEV-capable OVMF)")]
    NoSevMetadata(PathBuf),
    #[error("{0} has no SNP kernel-hashes section (not an AmdSev OVMF build; kernel-hashes=on needs one)")]
    NoKernelHashes(PathBuf),
}

fn cap(name: &'static str, r: Result<String, Missing>) -> Capability {
    match r {
        Ok(detail) => Capability {
            name,
            ok: true,
            detail,
        },
        Err(e) => Capability {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// `/dev/kvm` opens read-write and answers KVM_GET_API_VERSION with 12.
pub fn kvm_usable(dev: &Path) -> Result<String, Missing> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|source| Missing::Io {
            path: dev.to_path_buf(),
            source,
        })?;
    // KVM_GET_API_VERSION = _IO(0xAE, 0x00).
    // SAFETY: an argument-less ioctl on a file descriptor we own.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), 0xAE00 as _, 0) };
    if v == 12 {
        Ok(format!("{} (API 12)", dev.display()))
    } else {
        Err(Missing::KvmApiVersion {
            path: dev.to_path_buf(),
            answer: v,
            os_error: std::io::Error::last_os_error(),
        })
    }
}

/// Every SNP capability, in a fixed order.
pub fn snp_capabilities(paths: &HostPaths<'_>, firmware: &Path) -> Vec<Capability> {
    let mut out = Vec::new();
    out.push(cap(
        "/dev/sev",
        if paths.dev_sev.exists() {
            Ok(format!("{} present", paths.dev_sev.display()))
        } else {
            Err(Missing::NoDevSev(paths.dev_sev.to_path_buf()))
        },
    ));
    out.push(cap("KVM", kvm_usable(paths.dev_kvm)));
    out.push(cap(
        "kvm_amd sev_snp",
        match std::fs::read_to_string(paths.kvm_amd_sev_snp) {
            Ok(s) if matches!(s.trim(), "Y" | "1") => Ok("enabled".into()),
            Ok(s) => Err(Missing::SevSnpDisabled {
                path: paths.kvm_amd_sev_snp.to_path_buf(),
                value: s.trim().to_string(),
            }),
            Err(source) => Err(Missing::Io {
                path: paths.kvm_amd_sev_snp.to_path_buf(),
                source,
            }),
        },
    ));
    out.push(cap(
        "CPU SEV-SNP",
        match host_cbit() {
            Ok((true, c, r)) => Ok(format!("cbitpos={c} reduced-phys-bits={r}")),
            Ok((false, _, _)) => Err(Missing::CpuWithoutSnp),
            Err(e) => Err(e.into()),
        },
    ));
    out.push(cap("SEV firmware", firmware_capability(firmware)));
    out
}

/// The firmware is an AMD SEV build that can measure a kernel (kernel-hashes table).
pub fn firmware_capability(firmware: &Path) -> Result<String, Missing> {
    if firmware.as_os_str().is_empty() {
        return Err(Missing::NoFirmware);
    }
    let info = measure::inspect_firmware(firmware)?;
    if !info.sev_metadata {
        return Err(Missing::NoSevMetadata(firmware.to_path_buf()));
    }
    if !info.kernel_hashes || !info.hash_table {
        return Err(Missing::NoKernelHashes(firmware.to_path_buf()));
    }
    Ok(format!("{} (AmdSev, kernel hashes)", firmware.display()))
}

/// The host can launch an SNP guest: Ok((cbitpos, reduced-phys-bits)), else the missing parts.
pub fn require_snp(
    paths: &HostPaths<'_>,
    firmware: &Path,
    config: &Path,
) -> Result<(u32, u32), SnpUnavailable> {
    let caps = snp_capabilities(paths, firmware);
    let missing: Vec<Capability> = caps.into_iter().filter(|c| !c.ok).collect();
    if !missing.is_empty() {
        return Err(SnpUnavailable {
            config: config.display().to_string(),
            missing,
        });
    }
    let (_, c, r) = host_cbit().map_err(|e| SnpUnavailable {
        config: config.display().to_string(),
        missing: vec![cap("CPU SEV-SNP", Err(e.into()))],
    })?;
    Ok((c, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = HostPaths {
            dev_sev: &dir.path().join("sev"),
            dev_kvm: &dir.path().join("kvm"),
            kvm_amd_sev_snp: &dir.path().join("sev_snp"),
        };
        let err = require_snp(
            &p,
            Path::new(""),
            Path::new("/etc/kata-cc/configuration.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("SEV-SNP requested (hypervisor.qemu.confidential_guest = true in /etc/kata-cc/configuration.toml) but these are missing: /dev/sev ("), "{err}");
        assert!(err.contains("KVM ("), "{err}");
        assert!(
            err.contains("SEV firmware (hypervisor.qemu.firmware is not set"),
            "{err}"
        );
    }

    #[test]
    fn firmware_without_kernel_hashes_is_refused() {
        let fw = crate::snp::tests_support::conformance("virtee-ovmf_OvmfX64_suffix.bin");
        let e = firmware_capability(&fw).unwrap_err().to_string();
        assert!(e.contains("no SNP kernel-hashes section"), "{e}");
        let fw = crate::snp::tests_support::conformance("virtee-ovmf_AmdSev_suffix.bin");
        assert!(firmware_capability(&fw).is_ok());
        let e = firmware_capability(Path::new("/nonexistent/OVMF.fd"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/OVMF.fd"), "{e}");
    }

    /// The details `kata-cc check` prints in its SNP rows.
    #[test]
    fn missing_details_read_as_before() {
        let d = |e: Missing| cap("x", Err(e)).detail;
        assert_eq!(
            d(Missing::NoDevSev("/dev/sev".into())),
            "/dev/sev does not exist (no SEV firmware/ccp driver on this host)"
        );
        assert_eq!(
            d(Missing::SevSnpDisabled {
                path: "/sys/module/kvm_amd/parameters/sev_snp".into(),
                value: "N".into()
            }),
            "/sys/module/kvm_amd/parameters/sev_snp is N"
        );
        assert_eq!(
            d(Missing::Io {
                path: "/dev/kvm".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT)
            }),
            "/dev/kvm: No such file or directory (os error 2)"
        );
        assert_eq!(
            d(Missing::NoKernelHashes("/fw/OVMF.fd".into())),
            "/fw/OVMF.fd has no SNP kernel-hashes section (not an AmdSev OVMF build; \
             kernel-hashes=on needs one)"
        );
        assert_eq!(
            d(Missing::CpuWithoutSnp),
            "CPUID 0x8000001F EAX bit 4 (SEV-SNP) is clear"
        );
    }
}
