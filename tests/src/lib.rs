//! Harness for kata-cc's end-to-end tests: a private containerd per test, `ctr` with timeouts,
//! locally built OCI images, and a leak checker that proves nothing of a test survives it.
//!
//! Every test runs against real parts (containerd, the shim, QEMU, the guest image); the harness
//! never skips: a missing build product is a panic telling which `make` target to run. Those
//! tests are the host tier (feature `e2e`, see Cargo.toml); the lib itself builds anywhere.

/// Several checks on one set-up, all reported.
pub mod checks;
pub mod cmd;
pub mod containerd;
/// The mini-kubelet: CRI clients and kubelet-shaped requests.
pub mod cri;
/// Policy generators (Kata's genpolicy, `kata-cc policy gen`) run for the node's pods.
pub mod genpolicy;
/// Locally built OCI images, and tampering with files.
pub mod image;
/// The kubelet's translation of a Kubernetes manifest into CRI calls.
pub mod kube;
/// The kubelet's part: a node (registry, CRI containerd, kubelet dirs) and its CRI calls.
pub mod kubelet;
pub mod leak;
/// The demo's Kubernetes manifest (Pod, ConfigMaps) and resource quantities.
pub mod manifest;
/// Pod networking: the pod's netns on the host, a container's view, TCP from the test.
pub mod net;
pub mod paths;
/// The kubelet's pod directory: volumes written as its atomic writer does, etc-hosts, logs.
pub mod podfs;
pub mod policy;
pub mod procs;
pub mod pty;
/// The loopback image registry (Debian's docker-registry) and pushes to it.
pub mod registry;
pub mod scenarios;
/// CRI's streaming server (Exec/Attach) over WebSocket `v4.channel.k8s.io`.
pub mod stream;

pub use cmd::{Background, CmdOutput};
pub use containerd::{Containerd, CriSetup, Options};
pub use image::TestImage;

/// The containerd runtime name of kata-cc's shim.
pub const RUNTIME: &str = "io.containerd.kata-cc.v2";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "kata-cc-e2e";
