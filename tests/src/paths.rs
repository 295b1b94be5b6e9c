//! Where the build products the tests need live, and the checks that they exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_cc_shim::manifest::Manifest;

/// The repository root (the workspace).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory of the workspace's binaries for the profile these tests were built with: the
/// running test's own (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`). `make
/// e2e` runs `--release` after `make build`, so that is target/x86_64-unknown-linux-gnu/release.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().expect("the test binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A workspace binary (`kata-cc`, `kata-cc-agent`, ...) of the same profile as the running
/// test; panics naming it when it was not built (cargo builds another package's binaries only
/// with that package: `make build` or `cargo build --workspace`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace's binaries first (`make build`, or `cargo build \
         --workspace` with the same profile as the tests)",
        p.display()
    );
    p
}

/// The guest binaries (kata-cc-agent, kata-cc-init), built with the `guest` profile by
/// `make image`: beside the tests' profile dir (KATA_CC_GUEST_BIN_DIR to use another build's).
pub fn guest_bin_dir() -> PathBuf {
    match std::env::var_os("KATA_CC_GUEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => bin_dir()
            .parent()
            .expect("the profile dir has a parent")
            .join("guest"),
    }
}

/// The build products of `make image` (`build/`; KATA_CC_BUILD_DIR to test another checkout's).
pub fn build_dir() -> PathBuf {
    match std::env::var_os("KATA_CC_BUILD_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo().join("build"),
    }
}

pub fn guest_dir() -> PathBuf {
    build_dir().join("guest")
}

/// The runtime config `make image` writes.
pub fn baked_config() -> PathBuf {
    build_dir().join("configuration.toml")
}

/// Where each test's private containerd and scratch files go (always this checkout's build/).
pub fn e2e_dir() -> PathBuf {
    repo().join("build/e2e")
}

/// The kata-cc shim's per-sandbox state dir.
pub fn sandbox_dir(id: &str) -> PathBuf {
    Path::new("/run/kata-cc/sandboxes").join(id)
}

/// Panics (never skips) unless the shim binary, the guest image and its config exist.
pub fn require_built() {
    let shim = bin_dir().join("containerd-shim-kata-cc-v2");
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

/// The baked guest's manifest (build/guest/manifest.json).
pub fn guest_manifest() -> Manifest {
    Manifest::load_dir(&guest_dir()).unwrap_or_else(|e| panic!("{e}: run `make image`"))
}

/// The guest kernel release recorded by the image bake (manifest.json `kernel.version`).
pub fn guest_kernel_release() -> String {
    let v = guest_manifest().kernel.version;
    assert!(
        !v.is_empty(),
        "{}: empty kernel.version",
        guest_dir().display()
    );
    v
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

/// How long a ConfigMap or Secret update may take to reach the guest after the kubelet's
/// `..data` swap (KATA_CC_E2E_UPDATE_TIMEOUT, default 60 s).
pub fn update_timeout() -> Duration {
    env_secs("KATA_CC_E2E_UPDATE_TIMEOUT", 60)
}
