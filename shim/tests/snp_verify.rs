//! Attestation report verification against real SNP reports and VCEKs (conformance data), and
//! the SNP QEMU command line against the real QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_cc_shim::snp::report::Report;
use kata_cc_shim::snp::verify::{self, load_chain, load_vek, Expected, Verification};

fn conformance(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/snp")
        .join(name);
    assert!(p.exists(), "conformance file {} is missing", p.display());
    p
}

const VIRTEE_REPORT: &str = "virtee-report_milan.hex";
const VIRTEE_VCEK: &str = "virtee-vcek_milan.der";
const VIRTEE_CHAIN: &str = "virtee-cert_chain_milan";
const GO_REPORT: &str = "gosevguest-attestation.bin";
const GO_VCEK: &str = "gosevguest-vcek.testcer";
const GO_CHAIN: &str = "gosevguest-milan.testcer";

fn run(report: &Report, vcek: &str, chain: Option<&str>, exp: &Expected) -> Verification {
    let vek = load_vek(&conformance(vcek)).unwrap();
    let chain = chain.map(|c| load_chain(&conformance(c)).unwrap());
    verify::verify(report, Some(&vek), chain.as_ref(), exp)
}

fn load(name: &str) -> Report {
    Report::load(&conformance(name)).unwrap()
}

#[test]
fn both_real_reports_verify_with_given_and_builtin_chains() {
    for (rep, vcek, chain) in [
        (VIRTEE_REPORT, VIRTEE_VCEK, VIRTEE_CHAIN),
        (GO_REPORT, GO_VCEK, GO_CHAIN),
    ] {
        let r = load(rep);
        // go-sev-guest's report is of a debuggable guest (policy 0xb0000): accepted only when
        // asked for, and refused by default naming the check.
        let debug = rep == GO_REPORT;
        if debug {
            let v = run(&r, vcek, Some(chain), &Expected::default());
            assert_eq!(v.failed(), vec!["guest-policy"], "{:?}", v.checks);
            assert!(v
                .get("guest-policy")
                .unwrap()
                .detail
                .contains("allows debugging"));
        }
        let exp = Expected {
            allow_debug: debug,
            ..Expected::default()
        };
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
}

#[test]
fn expected_values_are_compared() {
    let r = load(GO_REPORT);
    let mut exp = Expected {
        measurement: Some(r.measurement().to_vec()),
        host_data: Some(r.host_data().to_vec()),
        report_data: Some(r.report_data().to_vec()),
        allow_debug: true,
    };
    assert!(run(&r, GO_VCEK, None, &exp).ok());
    exp.measurement.as_mut().unwrap()[47] ^= 1;
    exp.host_data.as_mut().unwrap()[0] ^= 0x80;
    let v = run(&r, GO_VCEK, None, &exp);
    assert_eq!(v.failed(), vec!["measurement", "host-data"]);
    assert!(v
        .get("measurement")
        .unwrap()
        .detail
        .contains("was expected"));
}

#[test]
fn a_set_reserved_bit_is_refused_at_parsing() {
    let r = load(GO_REPORT);
    let mut raw = r.raw.clone();
    raw[0x4c] ^= 1 << 3;
    let e = Report::from_bytes(raw, Path::new("r.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("report r.bin: "), "{e}");
}

fn flipped(report: &Report, offset: usize, bit: u8) -> Report {
    let mut raw = report.raw.clone();
    raw[offset] ^= 1 << bit;
    Report::from_bytes(raw, Path::new("flipped")).unwrap()
}

#[test]
fn one_flipped_bit_fails_the_signature_check() {
    for (rep, vcek) in [(VIRTEE_REPORT, VIRTEE_VCEK), (GO_REPORT, GO_VCEK)] {
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

#[test]
fn wrong_vcek_fails_naming_the_checks() {
    let r = load(VIRTEE_REPORT);
    let v = run(&r, GO_VCEK, None, &Expected::default());
    let failed = v.failed();
    // The other VCEK is a genuine Milan VCEK (chain ok) for another chip and TCB.
    assert!(v.get("vcek-signed-by-ask").unwrap().ok);
    assert_eq!(
        failed,
        vec![
            "report-signature",
            "tcb-matches-vcek",
            "chip-id-matches-vcek"
        ]
    );
}

#[test]
fn version_and_length_are_checked() {
    let r = load(GO_REPORT);
    let mut raw = r.raw.clone();
    raw[0] = 1;
    let e = Report::from_bytes(raw, Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported report version 1"), "{e}");
    let e = Report::from_bytes(vec![0; 100], Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("100 bytes, expected 1184"), "{e}");
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
    let report = conformance(VIRTEE_REPORT);
    let vcek = conformance(VIRTEE_VCEK);
    let chain = conformance(VIRTEE_CHAIN);
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

    // The wrong VCEK.
    let other = conformance(GO_VCEK);
    let (ok, _, err) = kata_cc(&[
        "attest",
        "verify",
        "--report",
        report.to_str().unwrap(),
        "--vcek",
        other.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("failed checks: report-signature, tcb-matches-vcek, chip-id-matches-vcek"),
        "{err}"
    );

    // No SNP guest here.
    let (ok, _, err) = kata_cc(&["attest", "report"]);
    assert!(!ok);
    assert!(err.contains("not running in a TEE"), "{err}");
}

/// Runs QEMU with `args`, bounded; returns its stderr.
fn qemu_stderr(args: &[String]) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (hack/deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // By PID: our own child.
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("QEMU did not exit within 60 s (it should fail at SNP set-up)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

#[test]
fn qemu_accepts_the_snp_arguments_until_it_needs_snp_hardware() {
    use kata_cc_shim::config::QemuConfig;
    use kata_cc_shim::sizing::VmSize;
    use kata_cc_shim::snp::qemu::{snp_qemu_args, SnpLaunch};
    use kata_cc_shim::vm::accel::Accel;
    use kata_cc_shim::vm::qemu::{qemu_args, QemuLaunch, VsockDevice};

    let dir = tempfile::tempdir().unwrap();
    for f in ["k", "i", "r"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    let q = QemuConfig {
        kernel: dir.path().join("k"),
        initrd: dir.path().join("i"),
        image: dir.path().join("r"),
        firmware: conformance("virtee-ovmf_AmdSev_suffix.bin"),
        kernel_params: "console=ttyS0".into(),
        confidential_guest: true,
        ..Default::default()
    };
    let base = qemu_args(&QemuLaunch {
        id: "snp",
        qemu: &q,
        size: VmSize {
            memory_mib: 256,
            vcpus: 1,
        },
        accel: Accel::Tcg,
        // Kernel vsock: a vhost-user chardev would be connected before KVM is set up.
        vsock: VsockDevice::Kernel { guest_cid: 3 },
        state_dir: dir.path(),
        free_page_reporting: true,
    });
    let mut s = SnpLaunch::new(51, 1);
    s.host_data = Some([7u8; 32]);
    let args = snp_qemu_args(&base, &s).unwrap();
    let err = qemu_stderr(&args);
    let lower = err.to_lowercase();
    for bad in [
        "invalid parameter",
        "expects",
        "unknown",
        "not found",
        "property",
    ] {
        assert!(
            !lower.contains(bad),
            "QEMU rejected an argument ({bad}): {err}"
        );
    }
    assert!(
        err.contains("SEV-SNP not supported by KVM")
            || (lower.contains("kvm")
                && (lower.contains("sev") || lower.contains("could not access"))),
        "expected a missing SEV/KVM failure: {err}"
    );
    // Control: the same check does see an argument error.
    let mut broken = args.clone();
    let i = broken
        .iter()
        .position(|a| a.starts_with("sev-snp-guest,"))
        .unwrap();
    broken[i].push_str(",bogus=1");
    let err = qemu_stderr(&broken);
    assert!(err.to_lowercase().contains("invalid parameter"), "{err}");
}
