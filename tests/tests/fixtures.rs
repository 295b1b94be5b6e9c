//! The fixture helper itself (unit tier: needs only the packages cargo unpacked).

use kata_cc_tests::fixtures::{conformance_file, package_dir, sev_file};

#[test]
fn sev_package_ships_the_snp_vectors() {
    let dir = package_dir("sev").expect("sev package");
    assert!(dir.join("Cargo.toml").is_file(), "{}", dir.display());
    for f in [
        "report_milan.hex",
        "vcek_milan.der",
        "cert_chain_milan",
        "ovmf_AmdSev_suffix.bin",
        "ovmf_OvmfX64_suffix.bin",
    ] {
        assert!(sev_file(f).starts_with(&dir), "{f}");
    }
}

#[test]
fn regorus_package_ships_the_kata_corpus() {
    let data = package_dir("regorus")
        .expect("regorus package")
        .join("tests/kata/data");
    let cases = std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", data.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().join("policy.rego").is_file())
        .count();
    assert!(cases >= 12, "{} has {cases} cases", data.display());
}

fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    match std::panic::catch_unwind(f) {
        Ok(()) => panic!("did not panic"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

#[test]
fn unknown_package_and_missing_files_are_named() {
    let e = package_dir("no-such-package-kata-cc").unwrap_err();
    assert!(e.to_string().contains("\"no-such-package-kata-cc\""), "{e}");
    let msg = panic_message(|| {
        sev_file("no-such-vector.bin");
    });
    assert!(msg.contains("no-such-vector.bin"), "{msg}");
    let msg = panic_message(|| {
        conformance_file("snp/no-such-report.bin");
    });
    assert!(msg.contains("snp/no-such-report.bin"), "{msg}");
}
