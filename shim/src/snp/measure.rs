//! The expected SEV-SNP launch digest (MEASUREMENT of the attestation report) of an OVMF firmware
//! booting a kernel + initrd + command line on N vCPUs, computed with the `sev` crate. The
//! firmware's OVMF footer table is checked here first so that malformed files give a clear error
//! naming the file instead of reaching the crate's parser.

use std::path::{Path, PathBuf};

use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use thiserror::Error;

/// Default guest features (SNPActive only): what QEMU sets for an SNP guest without extra
/// features, and sev-snp-measure's default.
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;
/// The vCPU model our SNP command line uses (and the measurement must assume).
pub const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";

#[derive(Debug, Error)]
pub enum MeasureError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firmware {path} is not an SEV firmware: {source}")]
    NotSevFirmware {
        path: PathBuf,
        #[source]
        source: FirmwareError,
    },
    #[error("firmware {path}: kernel specified but the OVMF metadata does not include an SNP_KERNEL_HASHES section (not an AmdSev build; it cannot measure a kernel, initrd and command line)")]
    NoKernelHashes { path: PathBuf },
    #[error("--initrd/--append need --kernel (the firmware measures them only with a kernel)")]
    InitrdWithoutKernel,
    #[error("unknown vCPU type {0:?} (one of EPYC, EPYC-v1..v4, EPYC-IBPB, EPYC-Rome[-v1..v3], EPYC-Milan[-v1,-v2], EPYC-Genoa[-v1], EPYC-Turin[-v1,-v2])")]
    VcpuType(String),
    #[error("vCPU count must be at least 1")]
    NoVcpus,
    /// The `sev` crate panicked on the firmware (its parser indexes into outside data).
    #[error("measuring {path}: malformed OVMF metadata")]
    SevPanic { path: PathBuf },
    #[error("measuring {path}: {source}")]
    Sev {
        path: PathBuf,
        #[source]
        source: sev::error::MeasurementError,
    },
}

/// Why a file is not an SEV firmware (its OVMF footer table and SEV metadata).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FirmwareError {
    #[error("{0} bytes is too small for an OVMF image")]
    TooSmall(usize),
    #[error("no OVMF footer table (GUID 96b582de-...) 32 bytes before its end")]
    NoFooterTable,
    #[error("OVMF footer table size {0} is out of range")]
    FooterTableSize(usize),
    #[error("SEV metadata entry is too short")]
    MetadataEntryTooShort,
    #[error("SEV metadata offset {0} is out of range")]
    MetadataOffset(usize),
    #[error("SEV metadata header has no ASEV signature")]
    NoAsevSignature,
    #[error("SEV metadata header is truncated")]
    MetadataHeaderTruncated,
    #[error("SEV metadata of {size} bytes with {count} sections does not fit the file")]
    MetadataSize { size: usize, count: usize },
    #[error("its OVMF footer table has no SEV metadata / SEV-ES reset block")]
    NoSevMetadata,
}

/// What the firmware's OVMF footer table says about SEV support.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirmwareInfo {
    /// SEV metadata (SNP launch sections) present.
    pub sev_metadata: bool,
    /// An SNP_KERNEL_HASHES metadata section (AmdSev builds): needed for `kernel-hashes=on`.
    pub kernel_hashes: bool,
    /// The SEV hash table GUID entry (where QEMU puts the kernel/initrd/cmdline hashes).
    pub hash_table: bool,
    /// The SEV-ES reset block (AP start address): needed for any SEV-ES/SNP launch.
    pub es_reset_block: bool,
}

const FOOTER_GUID: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
const SEV_HASH_TABLE_RV_GUID: &str = "7255371f-3a3b-4b04-927b-1da6efa8d454";
const SEV_ES_RESET_BLOCK_GUID: &str = "00f771de-1a7e-4fcb-890e-68c77e2fb44e";
const SEV_METADATA_GUID: &str = "dc886566-984a-4798-a75e-5585a7bf67cc";
/// OVMF SEV metadata section type of the kernel hashes page.
const SECTION_SNP_KERNEL_HASHES: u32 = 0x10;
/// Each footer table entry ends with a u16 size and a 16-byte GUID.
const ENTRY_HEADER: usize = 18;

/// A GUID in its on-disk (mixed-endian) byte order.
fn guid_le(s: &str) -> [u8; 16] {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..16].copy_from_slice(&b[8..16]);
    out
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    d.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses the OVMF footer table at the end of `data` (32 bytes before the end: the reset vector
/// follows it) and the SEV metadata it points to. Err = why this is not an SEV firmware.
pub fn inspect_firmware_bytes(data: &[u8]) -> Result<FirmwareInfo, FirmwareError> {
    if data.len() < 32 + ENTRY_HEADER {
        return Err(FirmwareError::TooSmall(data.len()));
    }
    let footer_end = data.len() - 32;
    let footer = &data[footer_end - ENTRY_HEADER..footer_end];
    if footer[2..18] != guid_le(FOOTER_GUID) {
        return Err(FirmwareError::NoFooterTable);
    }
    let table_size = u16::from_le_bytes([footer[0], footer[1]]) as usize;
    if table_size < ENTRY_HEADER || table_size > footer_end {
        return Err(FirmwareError::FooterTableSize(table_size));
    }
    let table = &data[footer_end - table_size..footer_end - ENTRY_HEADER];
    let mut entries: Vec<([u8; 16], &[u8])> = Vec::new();
    let mut off = table.len();
    while off >= ENTRY_HEADER {
        let hdr = &table[off - ENTRY_HEADER..off];
        let size = u16::from_le_bytes([hdr[0], hdr[1]]) as usize;
        if size < ENTRY_HEADER || size > off {
            break;
        }
        let mut g = [0u8; 16];
        g.copy_from_slice(&hdr[2..18]);
        entries.push((g, &table[off - size..off - ENTRY_HEADER]));
        off -= size;
    }
    let find = |g: &str| {
        let g = guid_le(g);
        entries.iter().find(|(k, _)| *k == g).map(|(_, v)| *v)
    };
    let mut info = FirmwareInfo {
        hash_table: find(SEV_HASH_TABLE_RV_GUID).is_some(),
        es_reset_block: find(SEV_ES_RESET_BLOCK_GUID).is_some(),
        ..Default::default()
    };
    let Some(meta) = find(SEV_METADATA_GUID) else {
        return Ok(info);
    };
    let back = u32_at(meta, 0).ok_or(FirmwareError::MetadataEntryTooShort)? as usize;
    if back == 0 || back > data.len() {
        return Err(FirmwareError::MetadataOffset(back));
    }
    let start = data.len() - back;
    // Header: "ASEV", size, version, number of items; then items of (gpa, size, type).
    if data.get(start..start + 4) != Some(b"ASEV".as_slice()) {
        return Err(FirmwareError::NoAsevSignature);
    }
    let size = u32_at(data, start + 4).ok_or(FirmwareError::MetadataHeaderTruncated)? as usize;
    let count = u32_at(data, start + 12).ok_or(FirmwareError::MetadataHeaderTruncated)? as usize;
    if size < 16 + 12 * count || start + size > data.len() {
        return Err(FirmwareError::MetadataSize { size, count });
    }
    info.sev_metadata = true;
    for i in 0..count {
        if u32_at(data, start + 16 + 12 * i + 8) == Some(SECTION_SNP_KERNEL_HASHES) {
            info.kernel_hashes = true;
        }
    }
    Ok(info)
}

/// [`inspect_firmware_bytes`] of a file.
pub fn inspect_firmware(path: &Path) -> Result<FirmwareInfo, MeasureError> {
    let data = std::fs::read(path).map_err(|source| MeasureError::Read {
        what: "firmware",
        path: path.to_path_buf(),
        source,
    })?;
    inspect_firmware_bytes(&data).map_err(|source| MeasureError::NotSevFirmware {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything the launch digest depends on.
#[derive(Debug, Clone)]
pub struct MeasureInput {
    pub firmware: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The kernel command line exactly as QEMU's `-append` gets it.
    pub append: Option<String>,
    pub vcpus: u32,
    /// QEMU `-cpu` model name, e.g. `EPYC-v4`.
    pub vcpu_type: String,
    pub guest_features: u64,
}

pub fn parse_vcpu_type(name: &str) -> Result<CpuType, MeasureError> {
    CpuType::try_from(name).map_err(|_| MeasureError::VcpuType(name.to_string()))
}

/// The 48-byte SNP launch digest.
pub fn launch_digest(m: &MeasureInput) -> Result<[u8; 48], MeasureError> {
    if m.vcpus == 0 {
        return Err(MeasureError::NoVcpus);
    }
    let vcpu_type = parse_vcpu_type(&m.vcpu_type)?;
    let info = inspect_firmware(&m.firmware)?;
    if !info.sev_metadata || !info.es_reset_block {
        return Err(MeasureError::NotSevFirmware {
            path: m.firmware.clone(),
            source: FirmwareError::NoSevMetadata,
        });
    }
    if m.kernel.is_none() && (m.initrd.is_some() || m.append.is_some()) {
        return Err(MeasureError::InitrdWithoutKernel);
    }
    if let Some(k) = &m.kernel {
        if !info.kernel_hashes || !info.hash_table {
            return Err(MeasureError::NoKernelHashes {
                path: m.firmware.clone(),
            });
        }
        // Read errors named here rather than as the crate's generic file error.
        for (what, p) in [("kernel", Some(k)), ("initrd", m.initrd.as_ref())] {
            if let Some(p) = p {
                std::fs::metadata(p).map_err(|source| MeasureError::Read {
                    what,
                    path: p.clone(),
                    source,
                })?;
            }
        }
    }
    let args = SnpMeasurementArgs {
        vcpus: m.vcpus,
        vcpu_type,
        ovmf_file: m.firmware.clone(),
        guest_features: GuestFeatures(m.guest_features),
        kernel_file: m.kernel.clone(),
        initrd_file: m.initrd.clone(),
        append: m.append.as_deref(),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::QEMU),
    };
    // The firmware layout was checked above; the crate still indexes into outside data, so a
    // panic there becomes an error naming the file.
    let ld = std::panic::catch_unwind(|| snp_calc_launch_digest(args))
        .map_err(|_| MeasureError::SevPanic {
            path: m.firmware.clone(),
        })?
        .map_err(|e| match e {
            sev::error::MeasurementError::MissingSection(_) => MeasureError::NoKernelHashes {
                path: m.firmware.clone(),
            },
            source => MeasureError::Sev {
                path: m.firmware.clone(),
                source,
            },
        })?;
    let v: Vec<u8> = ld
        .try_into()
        .map_err(|source: sev::error::MeasurementError| MeasureError::Sev {
            path: m.firmware.clone(),
            source,
        })?;
    let mut out = [0u8; 48];
    out.copy_from_slice(&v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_byte_order() {
        // The footer GUID as it appears in OVMF images.
        assert_eq!(
            guid_le(FOOTER_GUID),
            [
                0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
                0x08, 0x2d
            ]
        );
    }

    #[test]
    fn garbage_is_not_firmware() {
        assert!(inspect_firmware_bytes(&[0u8; 10]).is_err());
        assert!(inspect_firmware_bytes(&[0u8; 4096]).is_err());
        assert_eq!(
            inspect_firmware_bytes(&[0u8; 10]).unwrap_err().to_string(),
            "10 bytes is too small for an OVMF image"
        );
        let e = MeasureError::NotSevFirmware {
            path: "/fw/OVMF.fd".into(),
            source: FirmwareError::NoFooterTable,
        };
        assert_eq!(
            e.to_string(),
            "firmware /fw/OVMF.fd is not an SEV firmware: no OVMF footer table (GUID \
             96b582de-...) 32 bytes before its end"
        );
    }
}
