//! containerd 1.6 itself reads what `kata-cc install` writes: `containerd --config F config
//! dump` (no root needed) shows the kata-cc handler with its values, for the sample node config
//! (shim/tests/data) and for a config install made from nothing. The file edits themselves are
//! unit-tier tests (shim/src/install.rs, shim/tests/install.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kata_cc_tests::{cmd, paths};

/// The handler table of `containerd config dump`'s output for `config`.
fn dumped_handler(config: &Path) -> toml::Table {
    let mut c = Command::new("containerd");
    c.arg("--config").arg(config).args(["config", "dump"]);
    let out = cmd::run(c, None, Duration::from_secs(60));
    assert!(
        out.success(),
        "containerd (Debian's containerd package, hack/deps.sh) must parse the config: {}",
        out.describe()
    );
    let dump: toml::Table = toml::from_str(&out.stdout_str()).expect("config dump is TOML");
    assert_eq!(dump["version"].as_integer(), Some(2));
    dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
        .get("kata-cc")
        .and_then(|h| h.as_table())
        .unwrap_or_else(|| panic!("no kata-cc runtime in the dump:\n{}", out.stdout_str()))
        .clone()
}

fn install(config: &Path, extra: &[&str]) {
    let mut c = Command::new(paths::workspace_bin("kata-cc"));
    c.arg("install")
        .arg("--containerd-config")
        .arg(config)
        .args(extra);
    cmd::run(c, None, Duration::from_secs(60)).assert_success();
}

fn strings(v: &toml::Value) -> Vec<&str> {
    v.as_array()
        .expect("an array")
        .iter()
        .filter_map(|s| s.as_str())
        .collect()
}

#[test]
fn containerd_reads_the_installed_handler() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("config.toml");
    std::fs::copy(
        paths::repo().join("shim/tests/data/containerd-config.toml"),
        &sample,
    )
    .unwrap();
    install(
        &sample,
        &[
            "--config",
            "/opt/kata-cc/configuration.toml",
            "--shim",
            "/opt/kata-cc/containerd-shim-kata-cc-v2",
        ],
    );
    let h = dumped_handler(&sample);
    assert_eq!(h["runtime_type"].as_str(), Some("io.containerd.kata-cc.v2"));
    assert_eq!(
        h["runtime_path"].as_str(),
        Some("/opt/kata-cc/containerd-shim-kata-cc-v2")
    );
    assert_eq!(h["privileged_without_host_devices"].as_bool(), Some(true));
    assert_eq!(strings(&h["pod_annotations"]), ["io.katacontainers.*"]);
    assert_eq!(
        strings(&h["container_annotations"]),
        [
            "io.katacontainers.*",
            "io.kubernetes.container.terminationMessage*"
        ]
    );
    assert_eq!(
        h["options"]["ConfigPath"].as_str(),
        Some("/opt/kata-cc/configuration.toml")
    );

    let made = dir.path().join("new/config.toml");
    install(&made, &[]);
    let h = dumped_handler(&made);
    assert_eq!(h["runtime_type"].as_str(), Some("io.containerd.kata-cc.v2"));
    assert_eq!(
        h["options"]["ConfigPath"].as_str(),
        Some("/etc/kata-cc/configuration.toml")
    );
}
