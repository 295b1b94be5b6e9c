//! Annotations CRI puts on every container's OCI spec that the shim reads.

use std::collections::HashMap;

/// CRI's pod id on every container of a pod: one shim (and one VM) per value.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's `sandbox` / `container` marker.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's network namespace, which Kata's runtime puts on the sandbox (pause) container's
/// spec (named after nerdctl, which reads it): generated policies check it on the pause.
pub const ANNOTATION_NETWORK_NAMESPACE: &str = "nerdctl/network-namespace";
/// Its value on the pod's sandbox (pause) container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";

/// The pod's sandbox (pause) container: its id is the sandbox id, its exit is the pod's end.
pub fn is_pod_sandbox(annotations: &HashMap<String, String>) -> bool {
    annotations
        .get(ANNOTATION_CONTAINER_TYPE)
        .is_some_and(|t| t == CONTAINER_TYPE_SANDBOX)
}
