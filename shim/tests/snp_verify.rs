//! Attestation report verification against the real SNP report, VCEK and chain the `sev`
//! package ships. The go-sev-guest report (only in ../shared/conformance) and the SNP QEMU
//! command line against the real QEMU are host-tier tests: tests/tests/snp_host.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use kata_cc_shim::snp::report::Report;
use kata_cc_shim::snp::verify::{self, load_chain, load_vek, Expected, Verification};

use kata_cc_fixtures as fixtures;

/// A file of the sev package's tests/certs_data/.
fn vector(name: &str) -> PathBuf {
    fixtures::sev_file(name)
}

const VIRTEE_REPORT: &str = "report_milan.hex";
const VIRTEE_VCEK: &str = "vcek_milan.der";
const VIRTEE_CHAIN: &str = "cert_chain_milan";

fn run(report: &Report, vcek: &str, chain: Option<&str>, exp: &Expected) -> Verification {
    let vek = load_vek(&vector(vcek)).unwrap();
    let chain = chain.map(|c| load_chain(&vector(c)).unwrap());
    verify::verify(report, Some(&vek), chain.as_ref(), exp)
}

fn load(name: &str) -> Report {
    Report::load(&vector(name)).unwrap()
}

#[test]
fn real_report_verifies_with_given_and_builtin_chains() {
    // The go-sev-guest report's half of this check: snp_host.rs (host tier).
    let (rep, vcek, chain) = (VIRTEE_REPORT, VIRTEE_VCEK, VIRTEE_CHAIN);
    let r = load(rep);
    let exp = Expected::default();
    for c in [Some(chain), None] {
        let v = run(&r, vcek, c, &exp);
        assert!(v.ok(), "{rep} with chain {c:?}: {:?}", v.checks);
        for name in [
            "guest-policy",
            "ark-is-amd-root",
            "ark-self-signed",
            "ask-signed-by-ark",
            "vcek-signed-by-ask",
            "report-signature",
            "tcb-matches-vcek",
            "chip-id-matches-vcek",
        ] {
            assert!(v.get(name).is_some_and(|c| c.ok), "{rep}: {name} missing");
        }
    }
}

fn flipped(report: &Report, offset: usize, bit: u8) -> Report {
    let mut raw = report.raw.clone();
    raw[offset] ^= 1 << bit;
    Report::from_bytes(raw, Path::new("flipped")).unwrap()
}

#[test]
fn one_flipped_bit_fails_the_signature_check() {
    // The go-sev-guest report's half: snp_host.rs (host tier).
    for (rep, vcek) in [(VIRTEE_REPORT, VIRTEE_VCEK)] {
        let r = load(rep);
        // measurement (0x90), report data (0x50), policy bit 19 (debug), the signature's R and S.
        for (off, bit) in [
            (0x90, 0),
            (0x0a, 3),
            (0x50, 7),
            (0x2a0 + 5, 2),
            (0x2a0 + 72 + 40, 6),
        ] {
            // Debug accepted: this test is about the signature (one flip sets bit 19).
            let exp = Expected {
                allow_debug: true,
                ..Expected::default()
            };
            let v = run(&flipped(&r, off, bit), vcek, None, &exp);
            assert_eq!(
                v.failed(),
                vec!["report-signature"],
                "{rep} bit {bit} at {off:#x}: {:?}",
                v.checks
            );
        }
    }
}

fn kata_cc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn kata_cc_attest_verify_cli() {
    let report = vector(VIRTEE_REPORT);
    let vcek = vector(VIRTEE_VCEK);
    let chain = vector(VIRTEE_CHAIN);
    let r = load(VIRTEE_REPORT);
    let m = kata_cc_shim::snp::hex(r.measurement());
    let (ok, out, err) = kata_cc(&[
        "attest",
        "verify",
        "--report",
        report.to_str().unwrap(),
        "--vcek",
        vcek.to_str().unwrap(),
        "--chain",
        chain.to_str().unwrap(),
        "--measurement",
        &m,
        "--host-data",
        &"00".repeat(32),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("report-signature       ok"), "{out}");
    assert!(out.contains("measurement            ok"), "{out}");
    assert!(out.contains("report verified"), "{out}");

    // One flipped bit in the signed area, as a binary report file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &flipped(&r, 0x90, 0).raw).unwrap();
    let (ok, out, err) = kata_cc(&[
        "attest",
        "verify",
        "--report",
        bad.to_str().unwrap(),
        "--vcek",
        vcek.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("report-signature       FAILED"), "{out}");
    assert!(err.contains("failed checks: report-signature"), "{err}");

    // The wrong VCEK (go-sev-guest's): snp_host.rs (host tier).

    // No SNP guest here.
    let (ok, _, err) = kata_cc(&["attest", "report"]);
    assert!(!ok);
    assert!(err.contains("not running in a TEE"), "{err}");
}
