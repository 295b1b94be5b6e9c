//! The guest's trusted execution environment: which TEE the agent runs in, its SEV-SNP
//! attestation report, and the check that binds the pod's policy to the launch (HOST_DATA).
//!
//! A report is obtained through configfs-tsm (`/sys/kernel/config/tsm/report`, provider
//! `sev_guest`; Linux >= 6.7) or, failing that, the `SNP_GET_REPORT` ioctl of `/dev/sev-guest`.
//! Report layout (SEV-SNP ABI, ATTESTATION_REPORT): REPORT_DATA at 0x50 (64 bytes),
//! MEASUREMENT at 0x90 (48), HOST_DATA at 0xC0 (32); the whole report is 0x4A0 bytes.

use std::path::{Path, PathBuf};

use sha2::Digest;

/// Where configfs-tsm report entries are made.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// The SNP guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// The platform device the kernel registers in every SNP guest, before any driver loads.
pub const SEV_GUEST_PLATFORM: &str = "/sys/devices/platform/sev-guest";
/// configfs-tsm's provider name for SEV-SNP.
pub const TSM_PROVIDER_SNP: &str = "sev_guest";

pub const REPORT_LEN: usize = 0x4A0;
pub const REPORT_DATA_OFFSET: usize = 0x50;
pub const REPORT_DATA_LEN: usize = 64;
pub const MEASUREMENT_OFFSET: usize = 0x90;
pub const MEASUREMENT_LEN: usize = 48;
pub const HOST_DATA_OFFSET: usize = 0xC0;
pub const HOST_DATA_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("not running in a TEE: neither {TSM_REPORT_DIR} nor {SEV_GUEST_DEVICE} is present")]
    NoTee,
    #[error("an SEV-SNP guest ({SEV_GUEST_PLATFORM} exists) without {SEV_GUEST_DEVICE}: is the sev-guest module missing?")]
    NoDevice,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: provider is {found:?}, expected {TSM_PROVIDER_SNP:?}")]
    Provider { path: PathBuf, found: String },
    #[error("{SEV_GUEST_DEVICE}: SNP_GET_REPORT failed: {errno} (firmware error {fw_error:#x}, VMM error {vmm_error:#x})")]
    Ioctl {
        errno: nix::errno::Errno,
        fw_error: u32,
        vmm_error: u32,
    },
    #[error("{source_name}: report is {len} bytes, expected at least {REPORT_LEN}")]
    Short { source_name: String, len: usize },
    #[error("{SEV_GUEST_DEVICE}: firmware status {0:#x} in the report response")]
    Status(u32),
    #[error("report data is {0} bytes, at most {REPORT_DATA_LEN}")]
    ReportDataLen(usize),
    #[error(
        "the policy's digest {policy} is not the launch's HOST_DATA {host_data}: \
         the host changed the policy after the launch was measured"
    )]
    HostDataMismatch { policy: String, host_data: String },
}

/// How the agent can reach SNP firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tee {
    /// No TEE: a development VM. The policy is not bound to a measured launch.
    None,
    /// SEV-SNP, reports through configfs-tsm (`dir` is the report directory).
    SnpTsm { dir: PathBuf },
    /// SEV-SNP, reports through the `/dev/sev-guest` ioctl.
    SnpDevice { path: PathBuf },
    /// SEV-SNP (the platform device exists) but no way to get a report: fails closed.
    SnpNoDevice,
}

impl Tee {
    /// Finds the TEE under `root` ("/" in the guest; a temporary tree in tests).
    pub fn detect_at(root: &Path) -> Tee {
        let tsm = root.join(TSM_REPORT_DIR.trim_start_matches('/'));
        let dev = root.join(SEV_GUEST_DEVICE.trim_start_matches('/'));
        // configfs-tsm serves every TEE; only an SNP provider is taken, which is checked on
        // the first report (the provider is known once an entry exists).
        if tsm.is_dir() && dev.exists() {
            return Tee::SnpTsm { dir: tsm };
        }
        if dev.exists() {
            return Tee::SnpDevice { path: dev };
        }
        if root
            .join(SEV_GUEST_PLATFORM.trim_start_matches('/'))
            .exists()
        {
            return Tee::SnpNoDevice;
        }
        Tee::None
    }

    pub fn detect() -> Tee {
        Tee::detect_at(Path::new("/"))
    }

    /// The name GetGuestDetails reports (`tee: <name>` in extra_features).
    pub fn name(&self) -> &'static str {
        match self {
            Tee::None => "none",
            Tee::SnpTsm { .. } | Tee::SnpDevice { .. } | Tee::SnpNoDevice => "sev-snp",
        }
    }

    /// A fresh attestation report carrying `report_data` (zero-padded to 64 bytes).
    pub fn report(&self, report_data: &[u8]) -> Result<Vec<u8>, TeeError> {
        if report_data.len() > REPORT_DATA_LEN {
            return Err(TeeError::ReportDataLen(report_data.len()));
        }
        let mut data = [0u8; REPORT_DATA_LEN];
        data[..report_data.len()].copy_from_slice(report_data);
        match self {
            Tee::None => Err(TeeError::NoTee),
            Tee::SnpNoDevice => Err(TeeError::NoDevice),
            Tee::SnpTsm { dir } => tsm_report(dir, &data),
            Tee::SnpDevice { path } => device_report(path, &data),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TeeError + '_ {
    move |source| TeeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// configfs-tsm: make an entry, write the 64-byte inblob, read the outblob, remove the entry.
fn tsm_report(dir: &Path, data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let entry = dir.join(format!(
        "kata-cc-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&entry).map_err(io(&entry))?;
    let result = (|| {
        let provider_path = entry.join("provider");
        let provider = std::fs::read_to_string(&provider_path).map_err(io(&provider_path))?;
        if provider.trim() != TSM_PROVIDER_SNP {
            return Err(TeeError::Provider {
                path: provider_path,
                found: provider.trim().to_string(),
            });
        }
        let inblob = entry.join("inblob");
        std::fs::write(&inblob, data).map_err(io(&inblob))?;
        let outblob = entry.join("outblob");
        let report = std::fs::read(&outblob).map_err(io(&outblob))?;
        if report.len() < REPORT_LEN {
            return Err(TeeError::Short {
                source_name: outblob.display().to_string(),
                len: report.len(),
            });
        }
        Ok(report[..REPORT_LEN].to_vec())
    })();
    // configfs entries are directories removed with rmdir, whatever their files hold.
    let _ = std::fs::remove_dir(&entry);
    result
}

/// Linux `struct snp_report_req`.
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// Linux `struct snp_report_resp`: the firmware's MSG_REPORT_RSP (status, size, 24 reserved
/// bytes, then the report), padded to 4000 bytes.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}

/// Linux `struct snp_guest_request_ioctl`.
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

nix::ioctl_readwrite!(snp_get_report, b'S', 0x0, SnpGuestRequestIoctl);

fn device_report(path: &Path, data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let req = SnpReportReq {
        user_data: *data,
        vmpl: 0,
        rsvd: [0; 28],
    };
    let mut resp = SnpReportResp { data: [0; 4000] };
    let mut ioc = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: &req as *const SnpReportReq as u64,
        resp_data: &mut resp as *mut SnpReportResp as u64,
        exitinfo2: 0,
    };
    // SAFETY: the request and response buffers outlive the call and have the kernel's layout.
    let r = unsafe { snp_get_report(dev.as_raw_fd(), &mut ioc) };
    if let Err(errno) = r {
        return Err(TeeError::Ioctl {
            errno,
            fw_error: ioc.exitinfo2 as u32,
            vmm_error: (ioc.exitinfo2 >> 32) as u32,
        });
    }
    let status = u32::from_le_bytes([resp.data[0], resp.data[1], resp.data[2], resp.data[3]]);
    if status != 0 {
        return Err(TeeError::Status(status));
    }
    Ok(resp.data[32..32 + REPORT_LEN].to_vec())
}

/// A report's HOST_DATA field.
pub fn host_data(report: &[u8]) -> Result<[u8; HOST_DATA_LEN], TeeError> {
    field(report, HOST_DATA_OFFSET)
}

/// A report's REPORT_DATA field.
pub fn report_data(report: &[u8]) -> Result<[u8; REPORT_DATA_LEN], TeeError> {
    field(report, REPORT_DATA_OFFSET)
}

fn field<const N: usize>(report: &[u8], offset: usize) -> Result<[u8; N], TeeError> {
    if report.len() < REPORT_LEN {
        return Err(TeeError::Short {
            source_name: "report".to_string(),
            len: report.len(),
        });
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&report[offset..offset + N]);
    Ok(out)
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The AKS binding: HOST_DATA must be sha256 of the policy text.
pub fn policy_digest(policy_text: &str) -> [u8; 32] {
    sha2::Sha256::digest(policy_text.as_bytes()).into()
}

/// Refuses a policy that is not the one the launch was measured with: its sha256 (or, when the
/// policy came from init-data, `initdata_digest`: the init-data document's digest adjusted to
/// 32 bytes) must equal HOST_DATA.
pub fn check_policy(
    host_data: &[u8; HOST_DATA_LEN],
    policy_text: &str,
    initdata_digest: Option<&[u8; 32]>,
) -> Result<(), TeeError> {
    let digest = policy_digest(policy_text);
    if &digest == host_data || initdata_digest == Some(host_data) {
        return Ok(());
    }
    Err(TeeError::HostDataMismatch {
        policy: hex(initdata_digest.unwrap_or(&digest)),
        host_data: hex(host_data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Milan report, from the `sev` crate's package (hex text).
    fn real_report() -> Vec<u8> {
        let path = kata_cc_fixtures::sev_file("report_milan.hex");
        let text = std::fs::read_to_string(&path).expect("sev package report");
        let text = text.trim();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex report"))
            .collect()
    }

    #[test]
    fn host_data_is_read_from_a_real_report() {
        let r = real_report();
        assert!(r.len() >= REPORT_LEN, "report has {} bytes", r.len());
        let hd = host_data(&r).unwrap();
        assert_eq!(&hd[..], &r[0xC0..0xE0]);
        assert!(host_data(&r[..100]).is_err());
    }

    /// A policy whose sha256 is the real report's HOST_DATA cannot be written (sha256 is
    /// preimage resistant), so the report's bytes are given the digest of a chosen policy:
    /// exactly what a host that launched with that policy would have made the firmware sign.
    #[test]
    fn policy_is_checked_against_host_data() {
        let policy = "package agent_policy\ndefault CreateContainerRequest := true\n";
        let mut r = real_report();
        r[HOST_DATA_OFFSET..HOST_DATA_OFFSET + 32].copy_from_slice(&policy_digest(policy));
        let hd = host_data(&r).unwrap();
        check_policy(&hd, policy, None).expect("matching policy");
        let other = format!("{policy}default ExecProcessRequest := true\n");
        let e = check_policy(&hd, &other, None).unwrap_err().to_string();
        assert!(e.contains(&hex(&hd)), "{e}");
        assert!(e.contains(&hex(&policy_digest(&other))), "{e}");
        // The unmodified real report's HOST_DATA matches neither.
        let real = host_data(&real_report()).unwrap();
        assert!(check_policy(&real, policy, None).is_err());
    }

    #[test]
    fn initdata_digest_is_accepted_in_place_of_the_text_digest() {
        let policy = "package agent_policy\n";
        let initdata = [7u8; 32];
        check_policy(&initdata, policy, Some(&initdata)).unwrap();
        assert!(check_policy(&[8u8; 32], policy, Some(&initdata)).is_err());
    }

    #[test]
    fn detection_and_configfs_report() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(Tee::detect_at(root.path()), Tee::None);
        let platform = root.path().join("sys/devices/platform/sev-guest");
        std::fs::create_dir_all(&platform).unwrap();
        assert_eq!(Tee::detect_at(root.path()), Tee::SnpNoDevice);
        assert!(matches!(
            Tee::SnpNoDevice.report(b""),
            Err(TeeError::NoDevice)
        ));
        assert!(matches!(Tee::None.report(b"x"), Err(TeeError::NoTee)));
        let dev = root.path().join("dev/sev-guest");
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        std::fs::write(&dev, b"").unwrap();
        assert!(matches!(Tee::detect_at(root.path()), Tee::SnpDevice { .. }));
        let tsm = root.path().join("sys/kernel/config/tsm/report");
        std::fs::create_dir_all(&tsm).unwrap();
        let tee = Tee::detect_at(root.path());
        assert_eq!(tee, Tee::SnpTsm { dir: tsm.clone() });
        assert_eq!(tee.name(), "sev-snp");
        // A plain directory stands in for configfs: the entry has no provider file, which
        // must fail naming it and remove the entry.
        let e = tee.report(b"nonce").unwrap_err().to_string();
        assert!(e.contains("provider"), "{e}");
        assert_eq!(std::fs::read_dir(&tsm).unwrap().count(), 0);
        assert!(matches!(
            tee.report(&[0u8; 65]),
            Err(TeeError::ReportDataLen(65))
        ));
    }
}
