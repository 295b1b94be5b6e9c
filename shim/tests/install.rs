//! `kata-cc install|uninstall` as a user runs them: the real binary on a sample containerd
//! config in a temporary directory (any user; that containerd itself takes the result is a
//! host-tier test, tests/tests/install.rs).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kata_cc_shim::install::{backup_path, RUNTIME_CLASS};

const SAMPLE: &str = include_str!("data/containerd-config.toml");

fn kata_cc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(args)
        .output()
        .expect("run kata-cc")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn install_twice_then_uninstall_gives_back_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let c = config.to_str().unwrap();
    fs::write(&config, SAMPLE).unwrap();
    let kata_config = dir.path().join("kata-cc.toml");
    let kc = kata_config.to_str().unwrap();

    let first = kata_cc(&["install", "--containerd-config", c, "--config", kc]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(
        text(&first.stdout),
        RUNTIME_CLASS,
        "stdout is the manifest only"
    );
    let stderr = text(&first.stderr);
    assert!(
        stderr.contains(&format!(
            "{c}: added [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-cc]"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist yet"), "{stderr}");
    let once = fs::read_to_string(&config).unwrap();
    assert!(once.contains(&format!("ConfigPath = \"{kc}\"")), "{once}");
    assert_eq!(fs::read_to_string(backup_path(&config)).unwrap(), SAMPLE);

    let second = kata_cc(&["install", "--containerd-config", c, "--config", kc]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stderr).contains("nothing to change"));
    assert_eq!(fs::read_to_string(&config).unwrap(), once);
    assert_eq!(fs::read_to_string(backup_path(&config)).unwrap(), SAMPLE);

    let un = kata_cc(&["uninstall", "--containerd-config", c]);
    assert!(un.status.success(), "{}", text(&un.stderr));
    assert_eq!(fs::read_to_string(&config).unwrap(), SAMPLE);
    assert_eq!(files(dir.path()), ["config.toml"]);
}

#[test]
fn from_config_is_copied_only_where_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("containerd/config.toml");
    let from = dir.path().join("built.toml");
    fs::write(&from, "[hypervisor.qemu]\n").unwrap();
    let target = dir.path().join("etc/kata-cc/configuration.toml");
    let args = [
        "install",
        "--containerd-config",
        config.to_str().unwrap(),
        "--config",
        target.to_str().unwrap(),
        "--from-config",
        from.to_str().unwrap(),
    ];
    let out = kata_cc(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&target).unwrap(), "[hypervisor.qemu]\n");
    fs::write(&target, "mine").unwrap();
    assert!(kata_cc(&args).status.success());
    assert_eq!(fs::read_to_string(&target).unwrap(), "mine");
}

#[test]
fn refusals_name_the_file_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let c = config.to_str().unwrap();
    fs::write(&config, "version = 1\n").unwrap();
    let out = kata_cc(&["install", "--containerd-config", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).starts_with(&format!("kata-cc install: {c}: key `version` is 1:")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), "version = 1\n");
    assert_eq!(files(dir.path()), ["config.toml"]);

    let usage = kata_cc(&["install", "--bogus"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("unknown argument '--bogus'"));
    let usage = kata_cc(&["uninstall", "--containerd-config"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn print_runtimeclass_prints_only_the_manifest() {
    let out = kata_cc(&["install", "--print-runtimeclass"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), RUNTIME_CLASS);
    assert!(out.stderr.is_empty());
}
