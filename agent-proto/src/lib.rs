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
    /// Kata's run directory in the guest: container bundles (`<dir>/<container id>/rootfs` is a
    /// container's root, Kata's `root_path`), the copied host files and the sandbox storages.
    pub const KATA_RUN_DIR: &str = "/run/kata-containers";
    /// Where host files (volumes, hosts, resolv.conf, ...) and image layer blobs are copied with
    /// CopyFile: `<dir>/<container id>-<16 hex>-<name>` (Kata's `cpath`; genpolicy's CopyFile
    /// rule allows exactly this prefix). The agent refuses CopyFile anywhere else.
    pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers";
    /// The sandbox's `/dev/shm`: a guest tmpfs (CreateSandbox's ephemeral storage) that every
    /// container's `/dev/shm` binds.
    pub const SANDBOX_SHM_DIR: &str = "/run/kata-containers/sandbox/shm";
    /// Where the agent keeps each container's bundle (`<dir>/<container id>/rootfs` is its root).
    pub const GUEST_CONTAINERS_DIR: &str = KATA_RUN_DIR;

    /// The guest path of a container's root filesystem, as the shim names it in `Root.Path` and
    /// the image storage's `mount_point` (genpolicy's `$(root_path)`).
    pub fn guest_rootfs(container_id: &str) -> String {
        format!("{GUEST_CONTAINERS_DIR}/{container_id}/rootfs")
    }

    /// Container ids the guest refuses: they would name Kata's own directories in
    /// [`KATA_RUN_DIR`].
    pub const RESERVED_IDS: &[&str] = &["shared", "sandbox", "watchable"];

    /// `Storage.driver` of a container's image: one storage per container, in the shape of Kata's
    /// guest-pull storage (`fstype` "overlay", no `options`, `mount_point` = [`guest_rootfs`],
    /// `source` = the image name), which generated policies accept. kata-cc's difference: the
    /// layers do not come from a registry but were copied with CopyFile; each is one
    /// `driver_options` entry (see [`LayerRef`]), lowest first, so a policy can pin them.
    pub const IMAGE_DRIVER: &str = "image_guest_pull";
    /// `Storage.fstype` of the image storage.
    pub const IMAGE_FSTYPE: &str = "overlay";
    /// The key of a layer's `driver_options` entry: `kata-cc.layer=<digest>,<diff_id>,<media type>`.
    pub const LAYER_OPTION: &str = "kata-cc.layer";

    /// One image layer as the image storage names it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LayerRef {
        /// The compressed blob's digest (`sha256:<hex>`): what was copied.
        pub digest: String,
        /// The uncompressed tar's digest (the image config's `rootfs.diff_ids`): what is verified.
        pub diff_id: String,
        pub media_type: String,
    }

    impl LayerRef {
        /// The `driver_options` entry.
        pub fn option(&self) -> String {
            format!(
                "{LAYER_OPTION}={},{},{}",
                self.digest, self.diff_id, self.media_type
            )
        }

        /// Parses a `driver_options` entry; `None` if it is not a layer entry, `Err` (the
        /// reason) if it is one but malformed.
        pub fn parse(option: &str) -> Option<Result<LayerRef, String>> {
            let v = option.strip_prefix(LAYER_OPTION)?.strip_prefix('=')?;
            let mut parts = v.splitn(3, ',');
            let (Some(digest), Some(diff_id), Some(media_type)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Some(Err(format!(
                    "{option:?}: expected {LAYER_OPTION}=<digest>,<diff_id>,<media type>"
                )));
            };
            if digest.is_empty() || diff_id.is_empty() || media_type.is_empty() {
                return Some(Err(format!("{option:?}: an empty part")));
            }
            Some(Ok(LayerRef {
                digest: digest.to_string(),
                diff_id: diff_id.to_string(),
                media_type: media_type.to_string(),
            }))
        }

        /// Where the shim copies this layer's blob for a container (consumed by CreateContainer).
        pub fn blob_path(&self, container_id: &str) -> String {
            let hex = self.digest.rsplit(':').next().unwrap_or(&self.digest);
            let short: String = hex.chars().take(16).collect();
            format!("{SHARED_CONTAINERS_DIR}/{container_id}-{short:0<16}-layer")
        }
    }

    /// Kata's annotations on every container's spec (genpolicy's rules require them).
    pub const BUNDLE_PATH_ANNOTATION: &str = "io.katacontainers.pkg.oci.bundle_path";
    pub const CONTAINER_TYPE_ANNOTATION: &str = "io.katacontainers.pkg.oci.container_type";
    /// Its values: the sandbox (pause) container and an app container.
    pub const POD_SANDBOX: &str = "pod_sandbox";
    pub const POD_CONTAINER: &str = "pod_container";

    /// The shm storage of CreateSandbox (Kata's: driver `ephemeral`, source `shm`, tmpfs).
    pub const EPHEMERAL_DRIVER: &str = "ephemeral";
    /// Size of the sandbox's shm tmpfs when the host gives none (CRI's default, 64 MiB).
    pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

    /// The options of the shm storage, as Kata sends them.
    pub fn shm_options(size: u64) -> Vec<String> {
        ["noexec", "nosuid", "nodev", "mode=1777"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(format!("size={size}")))
            .collect()
    }

    /// Milestones of a pod's life that the shim logs as `timeline <id> <phase> <unix ms>` and
    /// `make bench` reads back to split a pod's start and stop into phases.
    pub mod timeline {
        /// The word that starts every timeline log line.
        pub const MARKER: &str = "timeline";
        /// containerd's Create of a container (the pod's first one starts the VM) reached the
        /// shim: what containerd spent before it (CNI, snapshots, the shim's start) ends here.
        pub const TASK_CREATE: &str = "task_create";
        pub const QEMU_SPAWN: &str = "qemu_spawn";
        pub const AGENT_READY: &str = "agent_ready";
        /// Not a wall-clock time: the guest's uptime (ms) when the agent started listening.
        pub const GUEST_UPTIME_AT_AGENT_MS: &str = "guest_uptime_at_agent_ms";
        /// The guest has the pod's network (the agent took its interfaces and routes).
        pub const NETWORK_CONFIGURED: &str = "network_configured";
        pub const SANDBOX_CREATED: &str = "sandbox_created";
        pub const LAYERS_SENT: &str = "layers_sent";
        pub const CONTAINER_CREATED: &str = "container_created";
        pub const STARTED: &str = "started";
        pub const EXIT: &str = "exit";
        pub const VM_STOPPED: &str = "vm_stopped";
    }
}

#[cfg(test)]
mod tests {
    use super::contract::*;

    #[test]
    fn layer_option_round_trips_and_names_its_blob() {
        let l = LayerRef {
            digest: "sha256:0123456789abcdef0123".into(),
            diff_id: "sha256:ffff".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        };
        let o = l.option();
        assert_eq!(
            o,
            "kata-cc.layer=sha256:0123456789abcdef0123,sha256:ffff,application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(LayerRef::parse(&o), Some(Ok(l.clone())));
        assert_eq!(LayerRef::parse("image_guest_pull={}"), None);
        assert!(matches!(LayerRef::parse("kata-cc.layer=a,b"), Some(Err(_))));
        assert_eq!(
            l.blob_path("c1"),
            "/run/kata-containers/shared/containers/c1-0123456789abcdef-layer"
        );
        assert_eq!(guest_rootfs("c1"), "/run/kata-containers/c1/rootfs");
        assert_eq!(
            shm_options(DEFAULT_SHM_SIZE),
            ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"]
        );
    }
}
