//! Harness for kata-cc's end-to-end tests: a private containerd per test, `ctr` with timeouts,
//! locally built OCI images, and a leak checker that proves nothing of a test survives it.
//!
//! Every test runs against real parts (containerd, the shim, QEMU, the guest image); the harness
//! never skips: a missing build product is a panic telling which `make` target to run. Those
//! tests are the host tier (feature `e2e`, see Cargo.toml); the lib itself builds anywhere.

pub mod cmd;
pub mod containerd;
/// The mini-kubelet: CRI clients and kubelet-shaped requests.
pub mod cri;
/// Locally built OCI images, and tampering with files.
pub mod image;
pub mod leak;
pub mod paths;
pub mod policy;
pub mod procs;
pub mod pty;
/// The loopback image registry (Debian's docker-registry) and pushes to it.
pub mod registry;
pub mod scenarios;

pub use cmd::{Background, CmdOutput};
pub use containerd::{Containerd, CriSetup, Options};
pub use image::TestImage;

/// The containerd runtime name of kata-cc's shim.
pub const RUNTIME: &str = "io.containerd.kata-cc.v2";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "kata-cc-e2e";
