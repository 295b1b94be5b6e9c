//! Where the build products the tests need live, and the checks that they exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository root (the workspace).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn release_dir() -> PathBuf {
    repo().join("target/x86_64-unknown-linux-gnu/release")
}

/// The guest binaries (kata-cc-agent, kata-cc-init), built with the `guest` profile by
/// `make image`.
pub fn guest_bin_dir() -> PathBuf {
    repo().join("target/x86_64-unknown-linux-gnu/guest")
}

pub fn guest_dir() -> PathBuf {
    repo().join("build/guest")
}

/// The runtime config `make image` writes.
pub fn baked_config() -> PathBuf {
    repo().join("build/configuration.toml")
}

/// Where each test's private containerd and scratch files go.
pub fn e2e_dir() -> PathBuf {
    repo().join("build/e2e")
}

/// The kata-cc shim's per-sandbox state dir.
pub fn sandbox_dir(id: &str) -> PathBuf {
    Path::new("/run/kata-cc/sandboxes").join(id)
}

/// Panics (never skips) unless the shim binary, the guest image and its config exist.
pub fn require_built() {
    let shim = release_dir().join("containerd-shim-kata-cc-v2");
    assert!(
        shim.is_file(),
        "{} is missing: run `make build` (or `make test`)",
        shim.display()
    );
    for f in ["vmlinuz", "initrd.img", "rootfs.img", "manifest.json"] {
        let p = guest_dir().join(f);
        assert!(
            p.is_file(),
            "{} is missing: run `make image` (or `make test`)",
            p.display()
        );
    }
    assert!(
        baked_config().is_file(),
        "{} is missing: run `make image` (or `make test`)",
        baked_config().display()
    );
}

/// The guest kernel release recorded by the image bake (manifest.json `kernel.version`).
pub fn guest_kernel_release() -> String {
    let p = guest_dir().join("manifest.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make image`", p.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
    match v.pointer("/kernel/version").and_then(|v| v.as_str()) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => panic!("{}: no string at kernel.version", p.display()),
    }
}

/// The host's kernel release (uname(2)).
pub fn host_kernel_release() -> String {
    nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Seconds from the environment variable `name`, else `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    let secs = match std::env::var(name) {
        Ok(v) => v
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds")),
        Err(_) => default,
    };
    Duration::from_secs(secs)
}

/// How long one `ctr run` may take: a VM boot under TCG is slow (KATA_CC_E2E_TIMEOUT, default 300 s).
pub fn run_timeout() -> Duration {
    env_secs("KATA_CC_E2E_TIMEOUT", 300)
}

/// How long a quick `ctr` call may take (KATA_CC_E2E_CTR_TIMEOUT, default 60 s).
pub fn ctr_timeout() -> Duration {
    env_secs("KATA_CC_E2E_CTR_TIMEOUT", 60)
}

/// How long processes, mounts and state dirs may take to go away after a test's last command
/// (KATA_CC_E2E_GRACE, default 20 s).
pub fn leak_grace() -> Duration {
    env_secs("KATA_CC_E2E_GRACE", 20)
}
