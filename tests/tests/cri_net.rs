//! Pod networking through CRI into the VM. containerd creates each pod's netns and runs CNI in
//! it before the shim is called (the harness's network: a bridge of its own that is the pods'
//! gateway, host-local addresses of a subnet of its own, portmap; hack/containerd.sh); the shim
//! connects the netns's veth to the VM's NIC the way Kata's `tcfilter` model does (a TAP in the
//! netns, ingress qdiscs and mirred redirects both ways) and sends UpdateInterface and
//! UpdateRoutes, so the guest's eth0 has the pod IP, the veth's MAC and CNI's routes.
//!
//! - `pod_network_through_the_vm`: a server pod and a client pod: the server answers from the
//!   host at the pod IP CRI reports, the client reaches it by IP, a container reaches the
//!   bridge's address (a listener of the test on the host) with its pod IP as source, eth0 in
//!   the guest has the veth's MAC and MTU and the pod IP, the guest's routes are the netns's
//!   (default via the bridge), a hostPort reaches the server, resolv.conf is CRI's; on the host,
//!   the netns holds one TAP with ingress qdiscs and mirred redirects between it and eth0, and
//!   the guest has no other NIC. The same checks pass on runc pods (tests/harness.rs).
//! - `policy_denying_update_interface_stops_the_pod`: a pod policy that denies
//!   UpdateInterfaceRequest fails RunPodSandbox with the policy's message and leaves nothing.
//! - `model_none_leaves_the_vm_without_a_nic`: `internetworking_model = "none"`: the pod runs,
//!   its VM has only `lo`.
//!
//! Every test ends with the leak check: no process, mount, netns, IP reservation, veth on the
//! bridge, portmap rule or TAP left (tests/src/leak.rs).

use std::time::{Duration, Instant};

use kata_cc_tests::checks::Checks;
use kata_cc_tests::containerd::toml_set_or_add;
use kata_cc_tests::cri::{ContainerSpec, PodSpec, HANDLER};
use kata_cc_tests::kubelet::{Node, Pod};
use kata_cc_tests::leak::is_kata_tap;
use kata_cc_tests::net::{self, NetPods};
use kata_cc_tests::paths;
use kata_cc_tests::policy::{self, POLICY_ANNOTATION};

/// The kata-cc-only checks of one pod on the host: its netns holds eth0 (the veth) and exactly
/// one TAP (`tap<N>_kata`, a tun device with eth0's MTU), each with an ingress qdisc whose
/// filter redirects (mirred) to the other; the guest has one NIC besides `lo`.
fn tcfilter(node: &Node, pod: &Pod, cid: &str) {
    let netns = node.netns_path(pod);
    let links = net::netns_links(&netns);
    let eth0 = links
        .iter()
        .find(|l| l.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in {}: {links:?}", netns.display()));
    let taps: Vec<&net::Link> = links.iter().filter(|l| is_kata_tap(&l.name)).collect();
    let [tap] = taps.as_slice() else {
        panic!("want one tap<N>_kata in the pod's netns: {links:?}");
    };
    assert_eq!(tap.kind.as_deref(), Some("tun"), "{tap:?}");
    assert_eq!(tap.mtu, eth0.mtu, "the TAP's MTU vs eth0's");
    assert!(tap.up, "the TAP is down: {tap:?}");
    let qdiscs = net::netns_qdiscs(&netns);
    for dev in [&eth0.name, &tap.name] {
        assert!(
            qdiscs.iter().any(|(d, k)| d == dev && k == "ingress"),
            "no ingress qdisc on {dev}: {qdiscs:?}"
        );
    }
    for (from, to) in [(&eth0.name, &tap.name), (&tap.name, &eth0.name)] {
        let f = net::netns_ingress_filters(&netns, from);
        assert!(
            f.contains("mirred") && f.contains(&format!("Redirect to device {to}")),
            "ingress of {from} does not redirect to {to}:\n{f}"
        );
    }
    let nics = node.sh(cid, "ls /sys/class/net");
    let mut nics: Vec<&str> = nics.split_whitespace().collect();
    nics.sort();
    assert_eq!(nics, ["eth0", "lo"], "network interfaces in the guest");
}

#[test]
fn pod_network_through_the_vm() {
    let node = Node::start("cri-net");
    let pods = NetPods::start(
        &node,
        HANDLER,
        [
            "6a1f0b20-0000-4000-8000-00000000b001",
            "6a1f0b20-0000-4000-8000-00000000b002",
        ],
    );
    let qemus = [
        node.qemu_of(&pods.server).pid,
        node.qemu_of(&pods.client).pid,
    ];
    let mut checks = Checks::new();
    pods.check(&node, &mut checks);
    checks.run("tcfilter: a TAP in the netns mirrored with eth0", || {
        tcfilter(&node, &pods.server, &pods.server_cid);
        tcfilter(&node, &pods.client, &pods.client_cid);
    });
    pods.teardown(&node, [Some(qemus[0]), Some(qemus[1])]);
    node.finish_with(checks);
}

/// What the agent answers when the policy refuses a request (the policy engine's message).
const DENIED: &str = "UpdateInterfaceRequest is blocked by policy";

#[test]
fn policy_denying_update_interface_stops_the_pod() {
    let node = Node::start("cri-net-policy");
    let rego = policy::allow_all_except(&["UpdateInterfaceRequest"]);
    let mut spec = PodSpec::new(
        "net-denied",
        "6a1f0b20-0000-4000-8000-00000000b003",
        &node.log_root,
    );
    spec.annotations.push((
        POLICY_ANNOTATION.to_string(),
        policy::base64(rego.as_bytes()),
    ));
    let started = Instant::now();
    let result = node.try_run_pod(&spec);
    let took = started.elapsed();
    let e = match result {
        Ok(id) => panic!(
            "RunPodSandbox succeeded ({id}) under a policy that denies UpdateInterfaceRequest\n{}",
            node.cd.log_tail()
        ),
        Err(e) => e,
    };
    assert!(
        e.message().contains(DENIED),
        "RunPodSandbox's error does not carry the policy's message: {e}\n{}",
        node.cd.log_tail()
    );
    assert!(
        took < paths::run_timeout(),
        "the refusal took {:.0}s",
        took.as_secs_f64()
    );
    // CRI cleaned up its half-made sandbox (CNI DEL, netns) and the shim its VM.
    let left = node.list_pods();
    assert!(left.is_empty(), "pods listed after the refusal: {left:?}");
    let deadline = Instant::now() + paths::leak_grace();
    while !node.qemus().is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU still running {}s after the refusal: {:?}",
            paths::leak_grace().as_secs(),
            node.qemus()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.finish();
}

#[test]
fn model_none_leaves_the_vm_without_a_nic() {
    let node = Node::start("cri-net-none");
    node.cd
        .edit_config(|t| toml_set_or_add(&t, "runtime", "internetworking_model", "\"none\""));
    let spec = PodSpec::new(
        "net-none",
        "6a1f0b20-0000-4000-8000-00000000b004",
        &node.log_root,
    );
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    let mut c = ContainerSpec::new("app", &node.busybox.reference, &["sleep", "1000000"]);
    c.mounts = pod.kubelet_mounts("app");
    let cid = node.run_container(&pod, &c);
    let mut checks = Checks::new();
    checks.run("CNI still gave the netns its address", || {
        net::pod_ip(&node, &pod);
    });
    checks.run("the guest has only lo", || {
        assert_eq!(node.sh(&cid, "ls /sys/class/net"), "lo");
    });
    checks.run("no TAP in the pod's netns", || {
        let links = net::netns_links(&node.netns_path(&pod));
        assert!(
            !links.iter().any(|l| is_kata_tap(&l.name)),
            "a TAP with internetworking_model = none: {links:?}"
        );
    });
    node.teardown(&pod, Some(qemu.pid));
    node.finish_with(checks);
}
