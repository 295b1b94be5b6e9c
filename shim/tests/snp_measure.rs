//! The expected SNP launch digest against the conformance known answer and against what the
//! `sev-snp-measure` tool (PyPI, installed by hack/deps.sh) computes for the same inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use kata_cc_shim::snp::hex;
use kata_cc_shim::snp::measure::{launch_digest, MeasureError, MeasureInput};

fn conformance(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/snp")
        .join(name);
    assert!(p.exists(), "conformance file {} is missing", p.display());
    p
}

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
        firmware: conformance(fw),
        kernel: kernel.map(Path::to_path_buf),
        initrd: initrd.map(Path::to_path_buf),
        append: append.map(String::from),
        vcpus,
        vcpu_type: vcpu_type.into(),
        guest_features: features,
    }
}

const AMDSEV: &str = "virtee-ovmf_AmdSev_suffix.bin";
const OVMFX64: &str = "virtee-ovmf_OvmfX64_suffix.bin";

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
fn firmware_without_kernel_hashes_refuses_a_kernel_like_sev_snp_measure() {
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
    let theirs = tool(&m).unwrap_err();
    assert!(theirs.contains("SNP_KERNEL_HASHES"), "{theirs}");
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
            .arg(conformance(AMDSEV))
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
