//! Kata agent protocol: messages and async ttrpc client/server code generated at build time from
//! `protos/` (wire-compatible with Kata's `grpc.AgentService` and `grpc.Health`).

// Generated code: lints are relaxed for these modules only.
macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused_imports,
            unused_mut,
            unused_attributes,
            trivial_casts,
            unsafe_code,
            unknown_lints,
            unused_qualifications,
            unused_results,
            dead_code,
            missing_docs,
            rustdoc::all
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(agent, "agent.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");
generated!(oci, "oci.rs");
generated!(types, "types.rs");
generated!(health, "health.rs");
generated!(health_ttrpc, "health_ttrpc.rs");
generated!(csi, "csi.rs");

/// `google.protobuf.Empty`, named the way the generated ttrpc code refers to it.
pub mod empty {
    pub use protobuf::well_known_types::empty::*;
}

/// What the shim and the agent must agree on besides the protocol messages: one definition for
/// both sides.
pub mod contract {
    /// The vsock port the agent listens on (Kata's).
    pub const AGENT_VSOCK_PORT: u32 = 1024;
    /// What the agent prints on the console (whatever the log level) once it listens; the shim
    /// waits for it before its first vsock connection attempt.
    pub const READY_LINE: &str = "kata-cc-agent: ready: listening on";
    /// `Storage.driver` of an image layer the shim copied into the guest (CopyFile) for the agent
    /// to verify and unpack.
    pub const LAYER_DRIVER: &str = "kata-cc.layer";
    /// Where the shim copies image layers in the guest, one file per layer digest.
    pub const GUEST_LAYER_DIR: &str = "/run/kata-cc/layers";
    /// Where the agent keeps each container's bundle (`<dir>/<container id>/rootfs` is its root).
    pub const GUEST_CONTAINERS_DIR: &str = "/run/kata-cc/containers";

    /// The guest path of a container's root filesystem, as the shim names it in `Root.Path`.
    pub fn guest_rootfs(container_id: &str) -> String {
        format!("{GUEST_CONTAINERS_DIR}/{container_id}/rootfs")
    }

    /// Milestones of a pod's life that the shim logs as `timeline <id> <phase> <unix ms>` and
    /// `make bench` reads back to split a pod's start and stop into phases.
    pub mod timeline {
        /// The word that starts every timeline log line.
        pub const MARKER: &str = "timeline";
        pub const QEMU_SPAWN: &str = "qemu_spawn";
        pub const AGENT_READY: &str = "agent_ready";
        /// Not a wall-clock time: the guest's uptime (ms) when the agent started listening.
        pub const GUEST_UPTIME_AT_AGENT_MS: &str = "guest_uptime_at_agent_ms";
        pub const SANDBOX_CREATED: &str = "sandbox_created";
        pub const LAYERS_SENT: &str = "layers_sent";
        pub const CONTAINER_CREATED: &str = "container_created";
        pub const STARTED: &str = "started";
        pub const EXIT: &str = "exit";
        pub const VM_STOPPED: &str = "vm_stopped";
    }
}
