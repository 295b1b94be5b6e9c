//! Verification of an SNP attestation report: VCEK/VLEK -> ASK -> ARK (an AMD root built into the
//! `sev` crate), the report's ECDSA P-384 signature over its first 0x2A0 bytes, the report's TCB
//! and chip id against the VCEK's X.509 extensions, and the expected values the caller gives.
//! Every check is named and reported, pass or fail; nothing stops at the first failure.

use std::path::{Path, PathBuf};

use p384::ecdsa::signature::Verifier as _;
use sev::certs::snp::{builtin, Certificate, Verifiable};
use thiserror::Error;
use x509_cert::der::{Decode, DecodePem, Encode};

use super::hex;
use super::report::{Report, SigningKey, Tcb, SIG_ALGO_ECDSA_P384_SHA384};

/// AMD's VCEK extension OIDs (VCEK spec, "VCEK certificate extensions").
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

#[derive(Debug, Error)]
pub enum CertError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: not a DER or PEM X.509 certificate: {source}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: x509_cert::der::Error,
    },
    #[error("chain {path}: expected the ASK (or ASVK) and the ARK, found {count} certificate(s)")]
    ChainShape { path: PathBuf, count: usize },
}

/// A VCEK/VLEK certificate file (DER or PEM).
pub fn load_vek(path: &Path) -> Result<x509_cert::Certificate, CertError> {
    let data = std::fs::read(path).map_err(|source| CertError::Read {
        what: "VCEK",
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = if data.starts_with(b"-----BEGIN") {
        x509_cert::Certificate::from_pem(&data)
    } else {
        x509_cert::Certificate::from_der(&data)
    };
    parsed.map_err(|source| CertError::Parse {
        what: "VCEK",
        path: path.to_path_buf(),
        source,
    })
}

/// The AMD CA chain: the signing key (ASK, or ASVK for VLEKs) and the root (ARK).
#[derive(Debug, Clone)]
pub struct CaChain {
    pub ask: x509_cert::Certificate,
    pub ark: x509_cert::Certificate,
}

/// A PEM file with the ASK and the ARK (in either order; the ARK is the self-issued one).
pub fn load_chain(path: &Path) -> Result<CaChain, CertError> {
    let data = std::fs::read(path).map_err(|source| CertError::Read {
        what: "chain",
        path: path.to_path_buf(),
        source,
    })?;
    let certs =
        x509_cert::Certificate::load_pem_chain(&data).map_err(|source| CertError::Parse {
            what: "chain",
            path: path.to_path_buf(),
            source,
        })?;
    if certs.len() != 2 {
        return Err(CertError::ChainShape {
            path: path.to_path_buf(),
            count: certs.len(),
        });
    }
    let self_issued =
        |c: &x509_cert::Certificate| c.tbs_certificate.subject == c.tbs_certificate.issuer;
    let (ark, ask) = if self_issued(&certs[1]) || !self_issued(&certs[0]) {
        (certs[1].clone(), certs[0].clone())
    } else {
        (certs[0].clone(), certs[1].clone())
    };
    Ok(CaChain { ask, ark })
}

/// Values the report must carry.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub measurement: Option<Vec<u8>>,
    pub host_data: Option<Vec<u8>>,
    pub report_data: Option<Vec<u8>>,
    /// Accept a guest whose policy allows debugging (the host can then read its memory).
    pub allow_debug: bool,
}

/// GUEST_POLICY bit 19: the guest may be debugged.
pub const POLICY_DEBUG: u64 = 1 << 19;

/// One named check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Why a check failed; its text is the check's detail (`kata-cc attest verify` prints it).
#[derive(Debug, Error)]
pub enum CheckFailure {
    #[error(
        "policy {policy:#x} allows debugging (bit 19): the host can read and change the guest's \
         memory (--allow-debug to accept)"
    )]
    DebugPolicy { policy: u64 },
    #[error("signature algorithm {0} (only 1, ECDSA P-384 with SHA-384, is defined)")]
    SignatureAlgorithm(u32),
    #[error("the chain's ARK is none of AMD's roots (Milan, Genoa, Turin)")]
    ArkNotAmdRoot,
    #[error("no VCEK given, so no AMD chain could be chosen")]
    NoVcekForChain,
    #[error(
        "no built-in AMD chain (Milan, Genoa, Turin) signed this VCEK; for a VLEK pass --chain \
         with the ASVK and ARK"
    )]
    NoBuiltinChain,
    /// `cert` ("ARK" or "ASK") of the chain from `src` is not signed as it must be.
    #[error("{src} {cert}: {source}")]
    ChainSignature {
        src: String,
        cert: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no {vek} given (--vcek): get the one for chip id {chip_id} at TCB {tcb}")]
    NoVekFor {
        vek: &'static str,
        chip_id: String,
        tcb: Tcb,
    },
    #[error("no {vek} given (--vcek)")]
    NoVek { vek: &'static str },
    #[error("the {vek} is not signed by the {src} ASK: {source}")]
    VekNotSignedByAsk {
        vek: &'static str,
        src: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no AMD chain signed this {vek}")]
    NoChainSignedVek { vek: &'static str },
    #[error("the VCEK's public key is not a P-384 key: {0}")]
    VekKeyNotP384(#[source] p384::ecdsa::Error),
    #[error("malformed signature (R/S out of range): {0}")]
    MalformedSignature(#[source] p384::ecdsa::Error),
    #[error("the signature does not verify with this VCEK's key")]
    SignatureMismatch,
    #[error("VCEK has no {name} extension ({oid})")]
    MissingExtension {
        name: &'static str,
        oid: &'static str,
    },
    #[error("report's reported TCB is {reported} but the {vek} is for {vek_tcb}")]
    TcbMismatch {
        reported: Tcb,
        vek: &'static str,
        vek_tcb: Tcb,
    },
    #[error("the VCEK has no hwID extension")]
    NoHwid,
    #[error("the report's chip id is masked (MASK_CHIP_ID); it cannot be matched to the VCEK")]
    ChipIdMasked,
    #[error("report chip id {chip_id} differs from the VCEK's hwID {hwid}")]
    ChipIdMismatch { chip_id: String, hwid: String },
    /// A report field (`what`) is not the expected value (both in hex).
    #[error("{what} is {got} but {want} was expected")]
    Mismatch {
        what: &'static str,
        got: String,
        want: String,
    },
}

fn check(name: &'static str, r: Result<String, CheckFailure>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone)]
pub struct Verification {
    pub checks: Vec<Check>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

fn der(c: &x509_cert::Certificate) -> Vec<u8> {
    c.to_der().unwrap_or_default()
}

/// `signer` signed `signee` (RSA-PSS SHA-384, as all AMD CA certificates are).
fn signed_by(
    signer: &x509_cert::Certificate,
    signee: &x509_cert::Certificate,
) -> std::io::Result<()> {
    let a = Certificate::from(signer.clone());
    let b = Certificate::from(signee.clone());
    (&a, &b).verify()
}

/// A built-in certificate of the `sev` crate.
type CertFn = fn() -> std::io::Result<Certificate>;

/// The built-in AMD chains, by product name.
fn builtin_chains() -> Vec<(&'static str, CaChain)> {
    let mut out = Vec::new();
    let all: [(&str, CertFn, CertFn); 3] = [
        ("Milan", builtin::milan::ask, builtin::milan::ark),
        ("Genoa", builtin::genoa::ask, builtin::genoa::ark),
        ("Turin", builtin::turin::ask, builtin::turin::ark),
    ];
    for (name, ask, ark) in all {
        if let (Ok(ask), Ok(ark)) = (ask(), ark()) {
            out.push((
                name,
                CaChain {
                    ask: ask.into(),
                    ark: ark.into(),
                },
            ));
        }
    }
    out
}

/// An SPL extension's value: a DER INTEGER (0..=255) inside the extension's OCTET STRING.
fn spl(cert: &x509_cert::Certificate, oid: &str) -> Option<u8> {
    let ext = extension(cert, oid)?;
    match ext {
        [0x02, len, rest @ ..] if *len as usize == rest.len() && !rest.is_empty() => {
            let v = rest.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64);
            u8::try_from(v).ok()
        }
        _ => None,
    }
}

fn extension<'a>(cert: &'a x509_cert::Certificate, oid: &str) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// The chip id the VCEK was issued for (raw bytes, or wrapped in an OCTET STRING).
fn hwid(cert: &x509_cert::Certificate) -> Option<Vec<u8>> {
    let v = extension(cert, OID_HWID)?;
    match v {
        [0x04, len, rest @ ..] if *len as usize == rest.len() => Some(rest.to_vec()),
        _ => Some(v.to_vec()),
    }
}

fn vek_tcb(cert: &x509_cert::Certificate) -> Result<Tcb, CheckFailure> {
    let get = |oid: &'static str, name: &'static str| {
        spl(cert, oid).ok_or(CheckFailure::MissingExtension { name, oid })
    };
    Ok(Tcb {
        fmc: spl(cert, OID_FMC_SPL),
        bootloader: get(OID_BL_SPL, "blSPL")?,
        tee: get(OID_TEE_SPL, "teeSPL")?,
        snp: get(OID_SNP_SPL, "snpSPL")?,
        microcode: get(OID_UCODE_SPL, "ucodeSPL")?,
    })
}

fn report_signature(report: &Report, vek: &x509_cert::Certificate) -> Result<String, CheckFailure> {
    let spk = vek
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let key =
        p384::ecdsa::VerifyingKey::from_sec1_bytes(spk).map_err(CheckFailure::VekKeyNotP384)?;
    let (r, s) = report.signature_rs();
    let sig =
        p384::ecdsa::Signature::from_scalars(r, s).map_err(CheckFailure::MalformedSignature)?;
    key.verify(report.signed_bytes(), &sig)
        .map(|()| "ECDSA P-384/SHA-384 over bytes 0..0x2A0 verifies with the VCEK".to_string())
        .map_err(|_| CheckFailure::SignatureMismatch)
}

fn compare(what: &'static str, got: &[u8], want: &[u8]) -> Result<String, CheckFailure> {
    if got == want {
        Ok(hex(got))
    } else {
        Err(CheckFailure::Mismatch {
            what,
            got: hex(got),
            want: hex(want),
        })
    }
}

/// Runs every check. `vek` None: the signature and TCB checks fail saying so; `chain` None: the
/// AMD chains built into the `sev` crate.
pub fn verify(
    report: &Report,
    vek: Option<&x509_cert::Certificate>,
    chain: Option<&CaChain>,
    expected: &Expected,
) -> Verification {
    let vek_name = if report.signing_key() == SigningKey::Vlek {
        "VLEK"
    } else {
        "VCEK"
    };
    let mut checks = vec![
        guest_policy_check(report, expected.allow_debug),
        check(
            "report-format",
            Ok(format!(
                "version {}, signed by {}",
                report.version(),
                report.signing_key()
            )),
        ),
        signature_algorithm_check(report),
    ];
    let ca = ca_chain(chain, vek, &mut checks);
    if let Some((src, ca)) = &ca {
        checks.extend(chain_signature_checks(src, ca));
    }
    checks.push(vek_signed_check(report, vek, ca.as_ref(), vek_name));
    checks.push(check(
        "report-signature",
        match vek {
            Some(v) => report_signature(report, v),
            None => Err(CheckFailure::NoVek { vek: vek_name }),
        },
    ));
    checks.push(tcb_check(report, vek, vek_name));
    if report.signing_key() != SigningKey::Vlek {
        if let Some(v) = vek {
            checks.push(chip_id_check(report, v));
        }
    }
    checks.extend(expected_value_checks(report, expected));
    Verification { checks }
}

/// The signed POLICY field (offset 0x08): a debuggable guest protects nothing from the host.
fn guest_policy_check(report: &Report, allow_debug: bool) -> Check {
    let policy = u64::from_le_bytes(report.raw[0x08..0x10].try_into().unwrap_or([0; 8]));
    check(
        "guest-policy",
        if policy & POLICY_DEBUG == 0 || allow_debug {
            Ok(format!(
                "policy {policy:#x}{}",
                if policy & POLICY_DEBUG != 0 {
                    ": debugging allowed (accepted by --allow-debug)"
                } else {
                    ", no debugging"
                }
            ))
        } else {
            Err(CheckFailure::DebugPolicy { policy })
        },
    )
}

fn signature_algorithm_check(report: &Report) -> Check {
    check(
        "signature-algorithm",
        if report.sig_algo() == SIG_ALGO_ECDSA_P384_SHA384 {
            Ok("ECDSA P-384 with SHA-384".into())
        } else {
            Err(CheckFailure::SignatureAlgorithm(report.sig_algo()))
        },
    )
}

/// The CA chain to verify against, with where it came from: the caller's (its ARK must be an
/// AMD root, checked here) or the built-in one whose ASK signed the VCEK.
fn ca_chain(
    chain: Option<&CaChain>,
    vek: Option<&x509_cert::Certificate>,
    checks: &mut Vec<Check>,
) -> Option<(String, CaChain)> {
    let builtins = builtin_chains();
    match chain {
        Some(c) => {
            let root = builtins
                .iter()
                .find(|(_, b)| der(&b.ark) == der(&c.ark))
                .map(|(n, _)| *n);
            checks.push(check(
                "ark-is-amd-root",
                root.map(|n| format!("the chain's ARK is AMD's {n} root (built in)"))
                    .ok_or(CheckFailure::ArkNotAmdRoot),
            ));
            Some(("given".into(), c.clone()))
        }
        None => {
            // The ARK is the crate's, so trusted; the product is the one whose ASK signed.
            let found = vek.and_then(|v| {
                builtins
                    .iter()
                    .find(|(_, b)| signed_by(&b.ask, v).is_ok())
                    .map(|(n, b)| (format!("built-in {n}"), b.clone()))
            });
            checks.push(check(
                "ark-is-amd-root",
                match &found {
                    Some((n, _)) => Ok(format!("{n} ARK")),
                    None if vek.is_none() => Err(CheckFailure::NoVcekForChain),
                    None => Err(CheckFailure::NoBuiltinChain),
                },
            ));
            found
        }
    }
}

fn chain_signature_checks(src: &str, ca: &CaChain) -> [Check; 2] {
    [
        check(
            "ark-self-signed",
            signed_by(&ca.ark, &ca.ark)
                .map(|()| format!("{src} ARK signs itself"))
                .map_err(|source| CheckFailure::ChainSignature {
                    src: src.to_string(),
                    cert: "ARK",
                    source,
                }),
        ),
        check(
            "ask-signed-by-ark",
            signed_by(&ca.ark, &ca.ask)
                .map(|()| format!("{src} ASK is signed by the ARK"))
                .map_err(|source| CheckFailure::ChainSignature {
                    src: src.to_string(),
                    cert: "ASK",
                    source,
                }),
        ),
    ]
}

fn vek_signed_check(
    report: &Report,
    vek: Option<&x509_cert::Certificate>,
    ca: Option<&(String, CaChain)>,
    vek_name: &'static str,
) -> Check {
    let result = match (vek, ca) {
        (None, _) => Err(CheckFailure::NoVekFor {
            vek: vek_name,
            chip_id: hex(report.chip_id()),
            tcb: report.reported_tcb(),
        }),
        (Some(v), Some((src, ca))) => signed_by(&ca.ask, v)
            .map(|()| format!("the {vek_name} is signed by the {src} ASK"))
            .map_err(|source| CheckFailure::VekNotSignedByAsk {
                vek: vek_name,
                src: src.clone(),
                source,
            }),
        (Some(_), None) => Err(CheckFailure::NoChainSignedVek { vek: vek_name }),
    };
    check("vcek-signed-by-ask", result)
}

fn tcb_check(
    report: &Report,
    vek: Option<&x509_cert::Certificate>,
    vek_name: &'static str,
) -> Check {
    let Some(v) = vek else {
        return check(
            "tcb-matches-vcek",
            Err(CheckFailure::NoVek { vek: vek_name }),
        );
    };
    let result = vek_tcb(v).and_then(|vt| {
        let rt = report.reported_tcb();
        // FMC exists only on Turin and later; compare it when both have it.
        let fmc_ok = match (rt.fmc, vt.fmc) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if fmc_ok
            && (rt.bootloader, rt.tee, rt.snp, rt.microcode)
                == (vt.bootloader, vt.tee, vt.snp, vt.microcode)
        {
            Ok(format!("reported TCB {rt}"))
        } else {
            Err(CheckFailure::TcbMismatch {
                reported: rt,
                vek: vek_name,
                vek_tcb: vt,
            })
        }
    });
    check("tcb-matches-vcek", result)
}

fn chip_id_check(report: &Report, vek: &x509_cert::Certificate) -> Check {
    let chip = report.chip_id();
    check(
        "chip-id-matches-vcek",
        match hwid(vek) {
            None => Err(CheckFailure::NoHwid),
            // Turin VCEKs carry the 8 significant bytes only.
            Some(h)
                if !h.is_empty()
                    && chip.starts_with(&h)
                    && chip[h.len()..].iter().all(|b| *b == 0) =>
            {
                Ok(format!("chip id {}…", hex(&chip[..8])))
            }
            Some(_) if chip.iter().all(|b| *b == 0) => Err(CheckFailure::ChipIdMasked),
            Some(h) => Err(CheckFailure::ChipIdMismatch {
                chip_id: hex(chip),
                hwid: hex(&h),
            }),
        },
    )
}

/// The values the caller expects (measurement, HOST_DATA, REPORT_DATA), those given only.
fn expected_value_checks(report: &Report, expected: &Expected) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(m) = &expected.measurement {
        checks.push(check(
            "measurement",
            compare("measurement", report.measurement(), m),
        ));
    }
    if let Some(h) = &expected.host_data {
        checks.push(check(
            "host-data",
            compare("host_data", report.host_data(), h),
        ));
    }
    if let Some(d) = &expected.report_data {
        checks.push(check(
            "report-data",
            compare("report_data", report.report_data(), d),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The details `kata-cc attest verify` prints for failed checks.
    #[test]
    fn failure_details_read_as_before() {
        let d = |e: CheckFailure| check("x", Err(e)).detail;
        assert_eq!(
            d(CheckFailure::DebugPolicy { policy: 0xb0000 }),
            "policy 0xb0000 allows debugging (bit 19): the host can read and change the guest's \
             memory (--allow-debug to accept)"
        );
        assert_eq!(
            d(CheckFailure::NoBuiltinChain),
            "no built-in AMD chain (Milan, Genoa, Turin) signed this VCEK; for a VLEK pass \
             --chain with the ASVK and ARK"
        );
        assert_eq!(
            d(CheckFailure::Mismatch {
                what: "host_data",
                got: "00".into(),
                want: "01".into()
            }),
            "host_data is 00 but 01 was expected"
        );
        assert_eq!(
            d(CheckFailure::ChainSignature {
                src: "built-in Milan".into(),
                cert: "ASK",
                source: std::io::Error::other("bad signature"),
            }),
            "built-in Milan ASK: bad signature"
        );
        assert_eq!(
            d(CheckFailure::MissingExtension {
                name: "blSPL",
                oid: OID_BL_SPL
            }),
            "VCEK has no blSPL extension (1.3.6.1.4.1.3704.1.3.1)"
        );
        let ok = check("y", compare("measurement", &[1], &[1]));
        assert!(ok.ok && ok.detail == "01");
    }
}
