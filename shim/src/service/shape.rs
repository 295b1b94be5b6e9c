//! The spec in the shape Kata's runtime gives it before it goes to the agent
//! (`constrainGRPCSpec`, `handlePidNamespace`, the guest root path and the `pkg.oci`
//! annotations; exec processes without capabilities), so that generated policies, written for
//! Kata's requests, apply unchanged. Mounts are `volumes`' concern.

use agent_proto::contract;
use agent_proto::oci;
use protobuf::MessageField;

use super::annotations::{is_pod_sandbox, ANNOTATION_NETWORK_NAMESPACE};
use crate::policy_source::{INITDATA_ANNOTATION, POLICY_ANNOTATION};

/// What shaping needs besides the spec.
pub struct ShapeInput<'a> {
    pub container_id: &'a str,
    /// The bundle directory containerd gave (CreateTaskRequest.bundle).
    pub bundle: &'a str,
    /// `[runtime] disable_guest_seccomp = false`: the seccomp profile goes to the guest.
    pub pass_seccomp: bool,
}

/// Shapes a container's spec; returns `sandbox_pidns` (the spec joined a pid namespace by
/// path: CRI gives one only for `shareProcessNamespace`, and the guest joins the pause's).
pub fn shape_container(spec: &mut oci::Spec, input: &ShapeInput) -> bool {
    spec.Hooks = MessageField::none();
    let readonly = spec.Root.as_ref().is_some_and(|r| r.Readonly);
    spec.Root = MessageField::some(oci::Root {
        Path: contract::guest_rootfs(input.container_id),
        Readonly: readonly,
        ..Default::default()
    });
    let sandbox = is_pod_sandbox(&spec.Annotations);
    let container_type = if sandbox {
        contract::POD_SANDBOX
    } else {
        contract::POD_CONTAINER
    };
    // Kata's runtime names the pod's network namespace on the sandbox (the namespace itself
    // stays on the host and is dropped below).
    let netns = spec
        .Linux
        .as_ref()
        .and_then(|l| l.Namespaces.iter().find(|n| n.Type == "network"))
        .map(|n| n.Path.clone())
        .filter(|p| !p.is_empty());
    if let (true, Some(path)) = (sandbox, netns) {
        spec.Annotations
            .insert(ANNOTATION_NETWORK_NAMESPACE.to_string(), path);
    }
    // The policy travels by SetPolicy, never inside a container's spec (Kata's runtime drops
    // both annotations from every spec it sends): generated policies refuse annotations they
    // do not list, and the policy cannot list itself.
    for a in [POLICY_ANNOTATION, INITDATA_ANNOTATION] {
        spec.Annotations.remove(a);
    }
    spec.Annotations.insert(
        contract::BUNDLE_PATH_ANNOTATION.to_string(),
        input.bundle.to_string(),
    );
    spec.Annotations.insert(
        contract::CONTAINER_TYPE_ANNOTATION.to_string(),
        container_type.to_string(),
    );

    let selinux_label = spec
        .Process
        .as_mut()
        .map(|p| std::mem::take(&mut p.SelinuxLabel))
        .unwrap_or_default();
    let Some(linux) = spec.Linux.as_mut() else {
        return false;
    };
    if !input.pass_seccomp {
        linux.Seccomp = MessageField::none();
    }
    // The guest has no SELinux (Kata's default `disable_guest_selinux`): a label goes, and the
    // mount label with it.
    if !selinux_label.is_empty() {
        linux.MountLabel.clear();
    }
    if let Some(r) = linux.Resources.as_mut() {
        shape_resources(r);
    }
    shape_namespaces(linux)
}

/// The resources the guest's cgroups can apply: the device cgroup, pids, block I/O and
/// network limits go (Kata's), and the cpuset's host CPU and node numbers.
pub fn shape_resources(r: &mut oci::LinuxResources) {
    r.Devices.clear();
    r.Pids = MessageField::none();
    r.BlockIO = MessageField::none();
    r.Network = MessageField::none();
    if let Some(cpu) = r.CPU.as_mut() {
        cpu.Cpus.clear();
        cpu.Mems.clear();
    }
}

/// Network, cgroup and time namespaces go (the guest's own are used), the pid namespace goes
/// too (replaced by `sandbox_pidns`, returned), the rest keep their type with no path.
fn shape_namespaces(linux: &mut oci::Linux) -> bool {
    let mut sandbox_pidns = false;
    linux.Namespaces.retain_mut(|ns| match ns.Type.as_str() {
        "network" | "cgroup" | "time" => false,
        "pid" => {
            sandbox_pidns = !ns.Path.is_empty();
            false
        }
        _ => {
            ns.Path.clear();
            true
        }
    });
    sandbox_pidns
}

/// An exec's process: no capabilities (Kata builds exec processes without them; generated
/// policies refuse an exec that has some).
pub fn shape_exec(p: &mut oci::Process) {
    p.Capabilities = MessageField::none();
}
