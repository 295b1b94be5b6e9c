//! A pod's life through CRI beyond the happy path, the test playing the kubelet: a container
//! killed by the OOM killer in the guest (reason `OOMKilled`, the pod and its other container
//! unharmed), and a VM killed from outside (SIGKILL to QEMU: the pod becomes NotReady, its
//! containers exit, and the kubelet's Stop/RemovePodSandbox leave nothing).

use std::time::{Duration, Instant};

use kata_cc_tests::checks::Checks;
use kata_cc_tests::cri::{api, ContainerSpec, PodSpec};
use kata_cc_tests::kubelet::{poll, Node};
use kata_cc_tests::{paths, procs};

const MIB: i64 = 1 << 20;

#[test]
fn oom_kill_gives_reason_oomkilled() {
    let node = Node::start("cri-oom");
    // dd reads 200 MiB from /dev/zero into one buffer: every page of it is touched, far
    // beyond the 64 MiB limit.
    let mut hog = ContainerSpec::new(
        "hog",
        &node.busybox.reference,
        &[
            "sh",
            "-c",
            "echo allocating; exec dd if=/dev/zero of=/dev/null bs=200M count=1",
        ],
    )
    .limits(64 * MIB, 500);
    let mut bystander =
        ContainerSpec::new("bystander", &node.busybox.reference, &["sleep", "1000000"])
            .limits(64 * MIB, 500);
    let spec = PodSpec::new(
        "oom-pod",
        "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        &node.log_root,
    )
    .with_limits_of(&[&hog, &bystander]);
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    bystander.mounts = pod.kubelet_mounts("bystander");
    hog.mounts = pod.kubelet_mounts("hog");
    let bystander_id = node.run_container(&pod, &bystander);
    let hog_id = node.run_container(&pod, &hog);

    let mut checks = Checks::new();
    checks.run("the hog ends OOMKilled", || {
        let st = node.wait_exited(&hog_id, paths::run_timeout());
        assert_eq!(
            (st.reason.as_str(), st.exit_code),
            ("OOMKilled", 128 + 9),
            "hog's status: {st:?}\n{}",
            node.cd.log_tail()
        );
    });
    checks.run("the pod and its other container live on", || {
        let st = node.sandbox_status(&pod.id);
        assert_eq!(
            st.state,
            api::PodSandboxState::SandboxReady as i32,
            "{st:?}"
        );
        let b = node.container_status(&bystander_id);
        assert_eq!(
            b.state,
            api::ContainerState::ContainerRunning as i32,
            "{b:?}"
        );
        assert_eq!(node.sh(&bystander_id, "echo alive"), "alive");
        assert!(procs::alive(qemu.pid), "QEMU died with the OOM kill");
    });
    checks.run("ContainerStats reports the bystander's memory", || {
        let s = node.container_stats(&bystander_id);
        let m = s.memory.as_ref().expect("memory stats");
        let ws = m.working_set_bytes.as_ref().map(|v| v.value).unwrap_or(0);
        let usage = m.usage_bytes.as_ref().map(|v| v.value).unwrap_or(0);
        assert!(ws > 0 && usage >= ws, "memory stats: {m:?}");
    });
    node.teardown(&pod, Some(qemu.pid));
    node.finish_with(checks);
}

#[test]
fn qemu_killed_from_outside_makes_the_pod_notready() {
    let node = Node::start("cri-vm-kill");
    let mut app = ContainerSpec::new("app", &node.busybox.reference, &["sleep", "1000000"])
        .limits(64 * MIB, 250);
    let spec = PodSpec::new(
        "kill-pod",
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        &node.log_root,
    )
    .with_limits_of(&[&app]);
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    app.mounts = pod.kubelet_mounts("app");
    let cid = node.run_container(&pod, &app);
    assert_eq!(node.sh(&cid, "echo up"), "up");

    let killed = Instant::now();
    procs::kill_pid(qemu.pid);
    let t = paths::ctr_timeout();
    poll("the pod NotReady after QEMU's death", t, || {
        let st = node.sandbox_status(&pod.id);
        if st.state == api::PodSandboxState::SandboxNotready as i32 {
            Ok(())
        } else {
            Err(format!("state {}", st.state))
        }
    });
    let notready = killed.elapsed();
    let st = node.wait_exited(&cid, t);
    assert_ne!(
        st.exit_code, 0,
        "the container's exit with its VM gone: {st:?}"
    );
    let deadline = Instant::now() + paths::leak_grace();
    while procs::alive(qemu.pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {} survived SIGKILL",
            qemu.pid
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kubelet then stops and removes the pod: both succeed, nothing is left.
    node.teardown(&pod, None);
    node.finish();
    eprintln!(
        "vm kill: pod NotReady {:.1}s after SIGKILL to QEMU",
        notready.as_secs_f64()
    );
}
