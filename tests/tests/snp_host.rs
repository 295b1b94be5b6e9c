//! SEV-SNP checks that need the host set up by `make deps` or data beside the checkout (host
//! tier): our launch digests against the `sev-snp-measure` tool (PyPI, hack/deps.sh), the
//! go-sev-guest report (only in ../shared/conformance/snp), and the SNP QEMU command line
//! against the real QEMU. Moved from shim/tests/snp_measure.rs and shim/tests/snp_verify.rs,
//! whose other halves (the sev package's vectors) stay in the unit tier.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_cc_fixtures::{conformance_file, conformance_path, sev_file};
use kata_cc_shim::snp::hex;
use kata_cc_shim::snp::measure::{launch_digest, MeasureInput};
use kata_cc_shim::snp::report::Report;
use kata_cc_shim::snp::verify::{self, load_chain, load_vek, Expected, Verification};
use kata_cc_tests::paths;

/// Runs sev-snp-measure; Ok(hex) or Err(its stderr).
fn tool(m: &MeasureInput) -> Result<String, String> {
    let mut c = Command::new("sev-snp-measure");
    c.args([
        "--mode",
        "snp",
        "--vcpus",
        &m.vcpus.to_string(),
        "--vcpu-type",
        &m.vcpu_type,
    ])
    .args(["--guest-features", &format!("{:#x}", m.guest_features)])
    .arg("--ovmf")
    .arg(&m.firmware);
    if let Some(k) = &m.kernel {
        c.arg("--kernel").arg(k);
    }
    if let Some(i) = &m.initrd {
        c.arg("--initrd").arg(i);
    }
    if let Some(a) = &m.append {
        c.arg(format!("--append={a}"));
    }
    let out = c
        .output()
        .expect("sev-snp-measure is not installed (hack/deps.sh installs it with pip)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn input(
    fw: &str,
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    append: Option<&str>,
    vcpus: u32,
    vcpu_type: &str,
    features: u64,
) -> MeasureInput {
    MeasureInput {
        firmware: sev_file(fw),
        kernel: kernel.map(Path::to_path_buf),
        initrd: initrd.map(Path::to_path_buf),
        append: append.map(String::from),
        vcpus,
        vcpu_type: vcpu_type.into(),
        guest_features: features,
    }
}

const AMDSEV: &str = "ovmf_AmdSev_suffix.bin";
const OVMFX64: &str = "ovmf_OvmfX64_suffix.bin";

#[test]
fn known_answer_from_sev_snp_measure() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let m = input(
        AMDSEV,
        Some(&empty),
        Some(&empty),
        Some(""),
        4,
        "EPYC-v4",
        0x1,
    );
    let want = "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5";
    // Ours is checked against the same answer in the unit tier (shim/tests/snp_measure.rs).
    assert_eq!(hex(&launch_digest(&m).unwrap()), want);
    assert_eq!(tool(&m).unwrap(), want);
}

#[test]
fn combinations_agree_with_sev_snp_measure() {
    let dir = tempfile::tempdir().unwrap();
    // A "kernel" and "initrd" with distinct, non-trivial contents.
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(
        &kernel,
        (0..300_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(
        &initrd,
        (0..123_457u32)
            .map(|i| (i * 13 % 241) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let cmdline = "console=ttyS0 kata_cc.roothash=0123abcd kata_cc.hashoffset=4096 quiet";
    let cases = [
        input(
            AMDSEV,
            Some(&kernel),
            Some(&initrd),
            Some(cmdline),
            1,
            "EPYC-v4",
            0x1,
        ),
        input(
            AMDSEV,
            Some(&kernel),
            Some(&initrd),
            Some(cmdline),
            8,
            "EPYC-Milan",
            0x1,
        ),
        input(AMDSEV, Some(&kernel), None, None, 2, "EPYC-Genoa", 0x1),
        input(
            AMDSEV,
            Some(&kernel),
            Some(&initrd),
            Some("console=hvc0"),
            3,
            "EPYC-Rome",
            0x21,
        ),
        input(AMDSEV, None, None, None, 4, "EPYC-v4", 0x1),
        input(OVMFX64, None, None, None, 16, "EPYC-Milan-v2", 0x1),
    ];
    let mut distinct = std::collections::HashSet::new();
    for m in &cases {
        let ours = hex(&launch_digest(m).unwrap());
        let theirs = tool(m).unwrap_or_else(|e| panic!("sev-snp-measure failed for {m:?}: {e}"));
        assert_eq!(ours, theirs, "digest differs for {m:?}");
        distinct.insert(ours);
    }
    // Each input changes the digest (the test would not notice an ignored input otherwise).
    assert_eq!(distinct.len(), cases.len());
}

#[test]
fn sev_snp_measure_refuses_a_kernel_without_kernel_hashes_too() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"kernel").unwrap();
    let m = input(OVMFX64, Some(&k), None, None, 1, "EPYC-v4", 0x1);
    // Our own refusal is the unit tier's (shim/tests/snp_measure.rs).
    let theirs = tool(&m).unwrap_err();
    assert!(theirs.contains("SNP_KERNEL_HASHES"), "{theirs}");
}

const GO_REPORT: &str = "snp/gosevguest-attestation.bin";
const GO_VCEK: &str = "snp/gosevguest-vcek.testcer";
const GO_CHAIN: &str = "snp/gosevguest-milan.testcer";
const VIRTEE_REPORT: &str = "report_milan.hex";

/// Whether go-sev-guest's files are here (../shared/conformance beside the checkout; no package
/// ships them). Without them a test claims nothing: it says NOT RUN and leaves its marker.
fn go_sev_guest_data(test: &str) -> bool {
    let missing: Vec<String> = [GO_REPORT, GO_VCEK, GO_CHAIN]
        .iter()
        .map(|f| conformance_path(f))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return true;
    }
    kata_cc_tests::genpolicy::not_run(
        test,
        &format!("go-sev-guest test data missing: {}", missing.join(", ")),
    );
    false
}

/// A go-sev-guest file (only in ../shared/conformance) or a sev package vector, by name.
fn fixture(name: &str) -> PathBuf {
    if name.starts_with("snp/") {
        conformance_file(name)
    } else {
        sev_file(name)
    }
}

fn run(report: &Report, vcek: &str, chain: Option<&str>, exp: &Expected) -> Verification {
    let vek = load_vek(&fixture(vcek)).unwrap();
    let chain = chain.map(|c| load_chain(&fixture(c)).unwrap());
    verify::verify(report, Some(&vek), chain.as_ref(), exp)
}

fn load(name: &str) -> Report {
    Report::load(&fixture(name)).unwrap()
}

fn flipped(report: &Report, offset: usize, bit: u8) -> Report {
    let mut raw = report.raw.clone();
    raw[offset] ^= 1 << bit;
    Report::from_bytes(raw, Path::new("flipped")).unwrap()
}

#[test]
fn go_sev_guest_report_verifies_with_given_and_builtin_chains() {
    if !go_sev_guest_data("go_sev_guest_report_verifies_with_given_and_builtin_chains") {
        return;
    }
    // The sev package report's half of this check is the unit tier's (shim/tests/snp_verify.rs).
    for (rep, vcek, chain) in [(GO_REPORT, GO_VCEK, GO_CHAIN)] {
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
    if !go_sev_guest_data("expected_values_are_compared") {
        return;
    }
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
    if !go_sev_guest_data("a_set_reserved_bit_is_refused_at_parsing") {
        return;
    }
    let r = load(GO_REPORT);
    let mut raw = r.raw.clone();
    raw[0x4c] ^= 1 << 3;
    let e = Report::from_bytes(raw, Path::new("r.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("report r.bin: "), "{e}");
}

#[test]
fn one_flipped_bit_fails_the_signature_check_of_the_go_sev_guest_report() {
    if !go_sev_guest_data("one_flipped_bit_fails_the_signature_check_of_the_go_sev_guest_report") {
        return;
    }
    // The sev package report's half is the unit tier's (shim/tests/snp_verify.rs).
    for (rep, vcek) in [(GO_REPORT, GO_VCEK)] {
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
    if !go_sev_guest_data("wrong_vcek_fails_naming_the_checks") {
        return;
    }
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
    if !go_sev_guest_data("version_and_length_are_checked") {
        return;
    }
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
    // Not this package's binary (no CARGO_BIN_EXE): the workspace build's, same profile.
    let out = Command::new(paths::workspace_bin("kata-cc"))
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
fn kata_cc_attest_verify_cli_names_the_checks_a_wrong_vcek_fails() {
    if !go_sev_guest_data("kata_cc_attest_verify_cli_names_the_checks_a_wrong_vcek_fails") {
        return;
    }
    // The rest of the CLI check is the unit tier's (shim/tests/snp_verify.rs).
    let report = fixture(VIRTEE_REPORT);
    // The wrong VCEK.
    let other = fixture(GO_VCEK);
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
        firmware: sev_file("ovmf_AmdSev_suffix.bin"),
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
        agent_debug: false,
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
