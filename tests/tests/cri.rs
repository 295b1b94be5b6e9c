//! End-to-end over CRI: the test is the kubelet. A private containerd with its CRI plugin on
//! (runtime handler `kata-cc`, a private CNI bridge network) pulls from a loopback registry
//! (Debian's docker-registry) the busybox image and the pause image the harness pushed there,
//! and runs a one-container pod in a kata-cc VM: RunPodSandbox, CreateContainer,
//! StartContainer, the container's CRI log, StopPodSandbox, RemovePodSandbox, and nothing left.
//! (tests/cri_pod.rs has the multi-container pods, volumes, exec, OOM, ...)

use std::time::Instant;

use kata_cc_tests::cri::{api, ContainerSpec, PodSpec, HANDLER};
use kata_cc_tests::kubelet::{self, Node};
use kata_cc_tests::paths;

const MIB: i64 = 1 << 20;
/// The pod's memory limit: the VM gets 2048 MiB + this.
const POD_MEMORY_MIB: i64 = 256;
/// MemTotal is a little below the VM's memory (the kernel's own reservations).
const KERNEL_RESERVE_MIB: u64 = 256;

#[test]
fn one_container_pod_over_cri() {
    let started = Instant::now();
    // The registry, the images pushed, containerd with CRI, and busybox pulled by CRI (its
    // image id checked against the pushed config digest).
    let node = Node::start("cri");
    let t = paths::ctr_timeout();
    let mut rt = node.cri.runtime();
    let v = node
        .cri
        .call("Version", t, rt.version(api::VersionRequest::default()))
        .unwrap_or_else(|e| panic!("Version: {e}\n{}", node.cd.log_tail()));
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("containerd", "v1")
    );

    let command = [
        "sh",
        "-c",
        "echo hello-from-kata-cc; uname -r; grep MemTotal /proc/meminfo",
    ];
    let mut container = ContainerSpec::new("hello", &node.busybox.reference, &command)
        .limits(POD_MEMORY_MIB * MIB, 500);
    container.envs.push(("KATA_CC_TEST".into(), "cri".into()));
    let spec = PodSpec::new(
        "cri-pod",
        "0a0b0c0d-1111-2222-3333-444455556666",
        &node.log_root,
    )
    .with_limits_of(&[&container]);
    // CRI pulls the sandbox image (the pause pushed by the node) itself.
    let pod = node.run_pod(&spec);
    let booted = started.elapsed();
    let status = node.sandbox_status(&pod.id);
    assert_eq!(status.runtime_handler, HANDLER);
    // CNI ADD ran in the pod's netns (the address is the bridge network's, on the host side).
    assert!(
        pod.ip.starts_with("10."),
        "pod IP from the CNI network: {:?}",
        pod.ip
    );
    let qemu = node.qemu_of(&pod);

    let cid = node.run_container(&pod, &container);
    // Wait for the exit as the kubelet does: ContainerStatus until EXITED.
    let exited = node.wait_exited(&cid, paths::run_timeout());
    let ran = started.elapsed();
    assert_eq!(
        (exited.exit_code, exited.reason.as_str()),
        (0, "Completed"),
        "container exit: {exited:?}\n{}",
        node.cd.log_tail()
    );

    // containerd wrote the container's output to <log_directory>/<log_path>.
    let log_file = pod.log_file(&container);
    let all = kubelet::log_lines(&log_file);
    assert!(
        kubelet::stream_lines(&all, "stderr").is_empty(),
        "unexpected stderr in {}: {all:?}",
        log_file.display()
    );
    let stdout = kubelet::stream_lines(&all, "stdout");
    let lines: Vec<&str> = stdout.iter().map(String::as_str).collect();
    let guest = paths::guest_kernel_release();
    let host = paths::host_kernel_release();
    assert_ne!(guest, host, "guest and host kernel releases are the same");
    assert_eq!(
        lines.first().copied(),
        Some("hello-from-kata-cc"),
        "log {}: {lines:?}",
        log_file.display()
    );
    assert_eq!(
        lines.get(1).copied(),
        Some(guest.as_str()),
        "uname -r in the pod (host: {host}); log: {lines:?}"
    );
    let mem_kb: u64 = lines
        .get(2)
        .and_then(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal line in {lines:?}"));
    let want = 2048 + POD_MEMORY_MIB as u64;
    let mem = mem_kb / 1024;
    assert!(
        mem <= want && mem >= want - KERNEL_RESERVE_MIB,
        "guest MemTotal {mem} MiB: expected a {want} MiB VM (2048 + the pod's {POD_MEMORY_MIB} MiB)"
    );

    // The kubelet's teardown: stop the pod (its containers, the pause, CNI DEL, the netns),
    // then remove it; QEMU gone.
    node.teardown(&pod, Some(qemu.pid));
    let torn_down = started.elapsed();
    drop(rt);
    // Processes, mounts (netns, shm), shim state, CRI state, IP reservations, libcni cache,
    // the bridge.
    node.finish();
    eprintln!(
        "cri pod: sandbox ready {:.1}s, container exited {:.1}s, torn down {:.1}s, all clean {:.1}s",
        booted.as_secs_f64(),
        ran.as_secs_f64(),
        torn_down.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
