//! SEV-SNP attestation reports (ABI spec "ATTESTATION_REPORT", versions 2, 3 and 5): read from a
//! file (binary, or hex text as some tools write them) and parsed with the `sev` crate. The raw
//! bytes are kept: the signature covers bytes 0..0x2A0 exactly as the firmware wrote them.

use std::path::{Path, PathBuf};

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use thiserror::Error;

/// Size of an attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part: everything before the signature.
pub const SIGNED_LEN: usize = 0x2A0;
/// Offset of the signature (R then S, each 72 bytes little-endian, zero-extended).
pub const SIGNATURE_OFFSET: usize = 0x2A0;
/// ECDSA P-384 with SHA-384, the only algorithm the spec defines.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot read report {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("report {path}: {len} bytes, expected {REPORT_LEN} (binary) or {} hex digits", 2 * REPORT_LEN)]
    Length { path: PathBuf, len: usize },
    #[error("report {path}: unsupported report version {version} (supported: 2, 3, 5)")]
    Version { path: PathBuf, version: u32 },
    #[error("report {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
}

/// Which key signed the report (KEY_INFO.SIGNING_KEY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
    None,
    Reserved(u32),
}

impl std::fmt::Display for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::Vcek => write!(f, "VCEK"),
            SigningKey::Vlek => write!(f, "VLEK"),
            SigningKey::None => write!(f, "none"),
            SigningKey::Reserved(v) => write!(f, "reserved ({v})"),
        }
    }
}

/// A parsed report plus its exact bytes.
#[derive(Debug, Clone)]
pub struct Report {
    pub raw: Vec<u8>,
    pub parsed: AttestationReport,
}

impl Report {
    /// Parses the 1184 report bytes.
    pub fn from_bytes(raw: Vec<u8>, origin: &Path) -> Result<Report, ReportError> {
        if raw.len() != REPORT_LEN {
            return Err(ReportError::Length {
                path: origin.to_path_buf(),
                len: raw.len(),
            });
        }
        let version = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if !matches!(version, 2 | 3 | 5) {
            return Err(ReportError::Version {
                path: origin.to_path_buf(),
                version,
            });
        }
        let parsed = AttestationReport::from_bytes(&raw).map_err(|e| ReportError::Parse {
            path: origin.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(Report { raw, parsed })
    }

    /// Reads a report file: 1184 binary bytes, or the same as hex text.
    pub fn load(path: &Path) -> Result<Report, ReportError> {
        let data = std::fs::read(path).map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw = if data.len() == REPORT_LEN {
            data
        } else {
            match std::str::from_utf8(&data).ok().and_then(super::unhex) {
                Some(b) => b,
                None => {
                    return Err(ReportError::Length {
                        path: path.to_path_buf(),
                        len: data.len(),
                    })
                }
            }
        };
        Report::from_bytes(raw, path)
    }

    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// R and S as big-endian 48-byte scalars (the report stores them little-endian in 72 bytes).
    pub fn signature_rs(&self) -> ([u8; 48], [u8; 48]) {
        let be = |off: usize| {
            let mut out = [0u8; 48];
            for (i, b) in self.raw[off..off + 48].iter().rev().enumerate() {
                out[i] = *b;
            }
            out
        };
        (be(SIGNATURE_OFFSET), be(SIGNATURE_OFFSET + 72))
    }

    pub fn sig_algo(&self) -> u32 {
        self.parsed.sig_algo
    }

    pub fn signing_key(&self) -> SigningKey {
        let key_info = u32::from_le_bytes([
            self.raw[0x48],
            self.raw[0x49],
            self.raw[0x4a],
            self.raw[0x4b],
        ]);
        match (key_info >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            v => SigningKey::Reserved(v),
        }
    }

    pub fn measurement(&self) -> &[u8; 48] {
        &self.parsed.measurement
    }

    pub fn host_data(&self) -> &[u8; 32] {
        &self.parsed.host_data
    }

    pub fn report_data(&self) -> &[u8; 64] {
        &self.parsed.report_data
    }

    pub fn chip_id(&self) -> &[u8; 64] {
        &self.parsed.chip_id
    }

    /// The TCB the signing VCEK was derived from.
    pub fn reported_tcb(&self) -> Tcb {
        let t = self.parsed.reported_tcb;
        Tcb {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        }
    }
}

/// TCB version components (SPL = security patch level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcb {
    /// Turin and later only.
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}
