//! The expected SNP launch digest against the known answer for the `sev` package's OVMF
//! suffixes. The comparisons with the `sev-snp-measure` tool (PyPI, installed by hack/deps.sh)
//! are host-tier tests: tests/tests/snp_host.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use kata_cc_shim::snp::hex;
use kata_cc_shim::snp::measure::{launch_digest, MeasureError, MeasureInput};

use kata_cc_fixtures as fixtures;

/// An OVMF suffix from the sev package (tests/measurement/).
fn firmware(name: &str) -> PathBuf {
    fixtures::sev_file(name)
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
        firmware: firmware(fw),
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
fn known_answer_from_conformance_readme() {
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
    assert_eq!(hex(&launch_digest(&m).unwrap()), want);
    // sev-snp-measure's answer for the same input: snp_host.rs (host tier).
}

#[test]
fn firmware_without_kernel_hashes_refuses_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"kernel").unwrap();
    let m = input(OVMFX64, Some(&k), None, None, 1, "EPYC-v4", 0x1);
    let err = launch_digest(&m).unwrap_err();
    assert!(matches!(err, MeasureError::NoKernelHashes { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("SNP_KERNEL_HASHES") && msg.contains(OVMFX64),
        "{msg}"
    );
    // sev-snp-measure refuses it too: snp_host.rs (host tier).
}

#[test]
fn kata_cc_measure_cli() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let cmdfile = dir.path().join("cmdline");
    std::fs::write(&cmdfile, "console=ttyS0 quiet\n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kata-cc"))
            .arg("measure")
            .arg("--firmware")
            .arg(firmware(AMDSEV))
            .args(extra)
            .output()
            .unwrap()
    };
    let e = empty.to_str().unwrap();
    let out = run(&[
        "--kernel",
        e,
        "--initrd",
        e,
        "--append",
        "",
        "--vcpus",
        "4",
        "--vcpu-type",
        "EPYC-v4",
        "--guest-features",
        "0x1",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"
    );
    // --cmdline-file: the line without its newline, as QEMU's -append gets it.
    let a = run(&[
        "--kernel",
        e,
        "--cmdline-file",
        cmdfile.to_str().unwrap(),
        "--vcpus",
        "2",
    ]);
    let b = run(&[
        "--kernel",
        e,
        "--append",
        "console=ttyS0 quiet",
        "--vcpus",
        "2",
    ]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
    let bad = run(&["--vcpus", "1", "--vcpu-type", "Pentium"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown vCPU type \"Pentium\""));
}
