//! Annotations CRI puts on every container's OCI spec that the shim reads.

/// CRI's pod id on every container of a pod: one shim (and one VM) per value.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's `sandbox` / `container` marker.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
