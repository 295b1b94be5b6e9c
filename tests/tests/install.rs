//! containerd 1.6 itself reads what `kata-cc install` writes: `containerd --config F config
//! dump` (no root needed) shows the kata-cc handler with its values, for the sample node config
//! (shim/tests/data) and for a config install made from nothing. The file edits themselves are
//! unit-tier tests (shim/src/install.rs, shim/tests/install.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kata_cc_tests::{cmd, paths};

/// `containerd config dump` for `config`: the whole configuration containerd runs with.
fn dump(config: &Path) -> toml::Table {
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
    dump
}

/// The CRI runtimes table of a dump.
fn runtimes(dump: &mut toml::Table) -> &mut toml::Table {
    dump.get_mut("plugins")
        .and_then(|p| p.get_mut("io.containerd.grpc.v1.cri"))
        .and_then(|c| c.get_mut("containerd"))
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(|r| r.as_table_mut())
        .expect("a CRI runtimes table in the dump")
}

/// The handler table of `containerd config dump`'s output for `config`.
fn dumped_handler(config: &Path) -> toml::Table {
    let mut d = dump(config);
    runtimes(&mut d)
        .get("kata-cc")
        .and_then(|h| h.as_table())
        .unwrap_or_else(|| panic!("no kata-cc runtime in the dump of {}", config.display()))
        .clone()
}

fn uninstall(config: &Path) {
    let mut c = Command::new(paths::workspace_bin("kata-cc"));
    c.arg("uninstall").arg("--containerd-config").arg(config);
    cmd::run(c, None, Duration::from_secs(60)).assert_success();
}

/// Install twice on a sample node config: the same file both times, and to containerd the
/// same configuration as before plus the kata-cc handler (nothing else changed); uninstall
/// gives back the file byte for byte and leaves no backup behind.
#[test]
fn install_twice_adds_only_the_handler_and_uninstall_restores() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("config.toml");
    let original = std::fs::read(paths::repo().join("shim/tests/data/containerd-config.toml"))
        .expect("the sample config");
    std::fs::write(&sample, &original).unwrap();
    let before = dump(&sample);
    assert!(
        !runtimes(&mut before.clone()).contains_key("kata-cc"),
        "the sample already has a kata-cc handler"
    );

    install(&sample, &[]);
    let once = std::fs::read(&sample).unwrap();
    install(&sample, &[]);
    assert_eq!(
        std::fs::read(&sample).unwrap(),
        once,
        "a second install changed the file"
    );
    let mut after = dump(&sample);
    let added = runtimes(&mut after).remove("kata-cc");
    assert!(added.is_some(), "no kata-cc handler after install");
    assert_eq!(
        after, before,
        "install changed more of containerd's configuration than the kata-cc handler"
    );

    uninstall(&sample);
    assert_eq!(
        std::fs::read(&sample).unwrap(),
        original,
        "uninstall did not restore the file"
    );
    assert_eq!(dump(&sample), before);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["config.toml"], "files left beside the config");
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
