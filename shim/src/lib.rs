//! kata-cc host side: the containerd shim (`containerd-shim-kata-cc-v2`) and the `kata-cc` tool.

// VM side (config, sizing, QEMU, vsock backend, agent connection).
pub mod agent;
// `kata-cc boot-check`: boots the guest through `vm::Vm` and reports its console.
pub mod boot_cli;
pub mod config;
// The pod's network namespace connected to the VM (Kata's tcfilter model).
pub mod network;
pub mod sizing;
pub mod snp;
pub mod timeline;
pub mod vm;

// containerd side (task service, containers, stdio, images).
pub mod image;
// `kata-cc install|uninstall`: the runtime handler in containerd's config.
pub mod install;
// The guest image's manifest.json (hack/bake-image.sh).
pub mod manifest;
pub mod policy_gen;
pub mod policy_source;
pub mod service;
