//! The harness checks itself with containerd's own runc runtime (no VM): a clean run passes the
//! leak check, and a container deliberately left running makes the leak check fail and is then
//! removed by PID. Without this, a leak checker that sees nothing would look like a pass.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kata_cc_tests::checks::Checks;
use kata_cc_tests::containerd::Containerd;
use kata_cc_tests::cri::{PodSpec, RUNC_HANDLER};
use kata_cc_tests::kubelet::Node;
use kata_cc_tests::net::{self, NetPods};
use kata_cc_tests::{leak, procs, Options, TestImage};

fn runc_options() -> Options {
    Options {
        images: vec![TestImage::busybox()],
        kata: false,
        ..Options::default()
    }
}

#[test]
fn harness_runs_runc_container_cleanly() {
    let cd = Containerd::start_with("harness-clean", runc_options());
    let id = cd.id("runc");
    let img = TestImage::busybox();
    let out = cd.ctr(&[
        "run",
        "--rm",
        &img.name,
        &id,
        "sh",
        "-c",
        "echo hi; id -u; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(out.stdout_str(), "hi\n0\n");
    cd.finish();
}

#[test]
fn harness_detects_and_removes_a_leak() {
    let cd = Containerd::start_with("harness-leak", runc_options());
    let id = cd.id("leaked");
    let img = TestImage::busybox();
    cd.ctr(&["run", "-d", "--null-io", &img.name, &id, "sleep", "600"])
        .assert_success();
    let sock = cd.socket.display().to_string();
    let shim: Vec<i32> = procs::all()
        .into_iter()
        .filter(|p| p.argv0.contains("containerd-shim") && p.cmdline.contains(&sock))
        .map(|p| p.pid)
        .collect();
    assert_eq!(shim.len(), 1, "expected one runc shim for {sock}");
    let all = procs::all();
    let family = procs::with_descendants(&all, &shim.iter().copied().collect());
    assert!(family.len() >= 2, "the shim has no container process");

    let dir = cd.dir.clone();
    let result = catch_unwind(AssertUnwindSafe(|| cd.finish()));
    // The failed-test path keeps the dir for its log; this failure was the point.
    let _ = std::fs::remove_dir_all(&dir);
    let msg = match result {
        Ok(()) => panic!("the leak check passed with a running container"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    assert!(msg.contains("leak check failed"), "unexpected panic: {msg}");
    assert!(
        msg.contains(&format!("task left in containerd: {id}")),
        "the running task is not reported: {msg}"
    );
    assert!(
        msg.contains("process left"),
        "the shim is not reported: {msg}"
    );
    // Drop (during the unwind) cleaned up by PID.
    for pid in family {
        assert!(!procs::alive(pid), "pid {pid} survived the cleanup");
    }
}

// The shared scenarios on runc: if one of these fails, the check is wrong, not kata-cc.

#[test]
fn harness_scenarios_on_runc_exit_code_and_stdin() {
    let cd = Containerd::start_with("harness-basic", runc_options());
    kata_cc_tests::scenarios::exit_code(&cd);
    kata_cc_tests::scenarios::stdin_reaches_cat(&cd);
    cd.finish();
}

#[test]
fn harness_scenarios_on_runc_exec() {
    let cd = Containerd::start_with("harness-exec", runc_options());
    kata_cc_tests::scenarios::exec_with_and_without_tty(
        &cd,
        &kata_cc_tests::paths::host_kernel_release(),
    );
    cd.finish();
}

#[test]
fn harness_scenarios_on_runc_streams_and_signals() {
    let cd = Containerd::start_with("harness-streams", runc_options());
    kata_cc_tests::scenarios::ten_mib_of_stdout(&cd);
    kata_cc_tests::scenarios::ten_mib_of_stdout_in_large_writes(&cd);
    kata_cc_tests::scenarios::signals_arrive(&cd);
    cd.finish();
}

// The CRI network on runc pods (handler `runc` of the same CRI containerd): the checks the
// kata-cc network tests run (tests/cri_net.rs) hold for runc, and the leak checker sees what a
// pod leaves of its network.

#[test]
fn harness_cri_network_on_runc() {
    let node = Node::start_runc_only("harness-net");
    let pods = NetPods::start(
        &node,
        RUNC_HANDLER,
        [
            "5f0e7a10-0000-4000-8000-00000000a001",
            "5f0e7a10-0000-4000-8000-00000000a002",
        ],
    );
    let mut checks = Checks::new();
    pods.check(&node, &mut checks);
    pods.teardown(&node, [None, None]);
    node.finish_with(checks);
}

#[test]
fn harness_detects_a_pods_network_left_behind() {
    let node = Node::start_runc_only("harness-net-leak");
    let host_port = net::free_port();
    let mut spec = PodSpec::new(
        "net-leak",
        "5f0e7a10-0000-4000-8000-00000000a003",
        &node.log_root,
    );
    spec.ports.push((8080, i32::from(host_port)));
    let pod = node.run_pod_with(&spec, RUNC_HANDLER);
    let network = node.network().clone();
    let chain = leak::portmap_chain(&network.network, &pod.id);
    let nat = network.nat_leaks(std::slice::from_ref(&pod.id));
    // The chain name the harness computes is the one portmap made (the leak check relies on it).
    assert!(
        nat.iter().any(|l| l.contains(&format!("-N {chain}"))),
        "no portmap chain {chain} for the running pod: {nat:?}"
    );
    let dir = node.cd.dir.clone();
    // The pod is left running: the leak check must fail and name its network's leftovers.
    let result = catch_unwind(AssertUnwindSafe(|| node.finish()));
    let _ = std::fs::remove_dir_all(&dir);
    let msg = match result {
        Ok(()) => panic!("the leak check passed with a pod left running"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    for want in [
        "leak check failed",
        "IP address still reserved",
        &format!("interface still on bridge {}", network.bridge),
        &format!("nat rule left: -N {chain}"),
        "CRI state left: netns/",
    ] {
        assert!(msg.contains(want), "the leak report lacks {want:?}: {msg}");
    }
    // hack/containerd.sh stop (the failed test's cleanup) removed the pod's portmap rules and
    // the bridge although CNI DEL never ran.
    kata_cc_tests::kubelet::remove_pod_cgroups(&spec.uid);
    let after = network.nat_leaks(std::slice::from_ref(&pod.id));
    assert!(after.is_empty(), "nat rules left after stop: {after:?}");
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&network.bridge)
            .exists(),
        "bridge {} left after stop",
        network.bridge
    );
}
