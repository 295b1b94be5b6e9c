//! End-to-end over CRI: the test is the kubelet. A private containerd with its CRI plugin on
//! (runtime handler `kata-cc`, a private CNI bridge network) pulls from a loopback registry
//! (Debian's docker-registry) the busybox image and the pause image the harness pushed there,
//! and runs a one-container pod in a kata-cc VM: RunPodSandbox, CreateContainer,
//! StartContainer, the container's CRI log, StopPodSandbox, RemovePodSandbox, and nothing left.

use std::path::Path;
use std::time::{Duration, Instant};

use kata_cc_tests::cri::{self, api, ContainerSpec, PodSpec, HANDLER};
use kata_cc_tests::registry::Registry;
use kata_cc_tests::{paths, procs, Containerd, CriSetup, Options, TestImage};

const MIB: i64 = 1 << 20;
/// The pod's memory limit: the VM gets 2048 MiB + this.
const POD_MEMORY_MIB: i64 = 256;
/// MemTotal is a little below the VM's memory (the kernel's own reservations).
const KERNEL_RESERVE_MIB: u64 = 256;

#[test]
fn one_container_pod_over_cri() {
    let started = Instant::now();
    let reg = Registry::start_for_test();
    let busybox = reg.push(&TestImage::busybox(), "kata-cc-e2e/busybox", "gzip");
    let pause = reg.push(&TestImage::pause(), "kata-cc/pause", "3.6");
    let cd = Containerd::start_with(
        "cri",
        Options {
            images: Vec::new(),
            kata: true,
            cri: Some(CriSetup {
                sandbox_image: pause.reference.clone(),
                plain_http_registry: Some(reg.addr.clone()),
            }),
        },
    );
    let t = paths::ctr_timeout();
    let run_t = paths::run_timeout();
    let cri = cd.cri();
    let mut rt = cri.runtime();
    let mut img = cri.images();

    let v = cri
        .call("Version", t, rt.version(api::VersionRequest::default()))
        .unwrap_or_else(|e| panic!("Version: {e}\n{}", cd.log_tail()));
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("containerd", "v1")
    );

    // The image comes from the registry: CRI's image id is the config digest that was pushed.
    let pulled = cri
        .call(
            "PullImage",
            run_t,
            img.pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: busybox.reference.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .unwrap_or_else(|e| panic!("PullImage {}: {e}\n{}", busybox.reference, cd.log_tail()));
    assert_eq!(pulled.image_ref, busybox.config_digest, "pulled image id");

    let log_dir = cd.dir.join("pods/default_cri-pod_0a0b0c0d");
    std::fs::create_dir_all(&log_dir).unwrap_or_else(|e| panic!("{}: {e}", log_dir.display()));
    let pod = PodSpec {
        name: "cri-pod",
        namespace: "default",
        uid: "0a0b0c0d-1111-2222-3333-444455556666",
        log_directory: &log_dir,
        memory_limit: POD_MEMORY_MIB * MIB,
        cpu_quota: 50000,
        cpu_period: 100000,
    };
    let pod_config = cri::pod_sandbox_config(&pod);
    // CRI pulls the sandbox image (the pause pushed above) itself.
    let sandbox = cri
        .call(
            "RunPodSandbox",
            run_t,
            rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: HANDLER.to_string(),
            }),
        )
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cd.log_tail()))
        .pod_sandbox_id;
    cd.track(&sandbox);
    let booted = started.elapsed();

    let status = cri
        .call(
            "PodSandboxStatus",
            t,
            rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.clone(),
                verbose: false,
            }),
        )
        .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
        .status
        .expect("a sandbox status");
    assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.runtime_handler, HANDLER);
    // CNI ADD ran in the pod's netns (the address is the bridge network's, on the host side).
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(ip.starts_with("10."), "pod IP from the CNI network: {ip:?}");
    let qemu = cd.qemu_of(&sandbox);

    let command = [
        "sh",
        "-c",
        "echo hello-from-kata-cc; uname -r; grep MemTotal /proc/meminfo",
    ];
    let container = ContainerSpec {
        name: "hello",
        image: &busybox.reference,
        command: &command,
        envs: &[("KATA_CC_TEST", "cri")],
        log_path: "hello/0.log",
        memory_limit: POD_MEMORY_MIB * MIB,
        cpu_quota: 50000,
        cpu_period: 100000,
    };
    let cid = cri
        .call(
            "CreateContainer",
            t,
            rt.create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(cri::container_config(&container, &pod)),
                sandbox_config: Some(pod_config),
            }),
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", cd.log_tail()))
        .container_id;
    cd.track(&cid);
    cri.call(
        "StartContainer",
        run_t,
        rt.start_container(api::StartContainerRequest {
            container_id: cid.clone(),
        }),
    )
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", cd.log_tail()));

    // Wait for the exit as the kubelet does: ContainerStatus until EXITED.
    let deadline = Instant::now() + run_t;
    let exited = loop {
        let st = cri
            .call(
                "ContainerStatus",
                t,
                rt.container_status(api::ContainerStatusRequest {
                    container_id: cid.clone(),
                    verbose: false,
                }),
            )
            .unwrap_or_else(|e| panic!("ContainerStatus: {e}\n{}", cd.log_tail()))
            .status
            .expect("a container status");
        if st.state == api::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "container still in state {} after {}s\n{}",
            st.state,
            run_t.as_secs(),
            cd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ran = started.elapsed();
    assert_eq!(
        (exited.exit_code, exited.reason.as_str()),
        (0, "Completed"),
        "container exit: {exited:?}\n{}",
        cd.log_tail()
    );

    // containerd wrote the container's output to <log_directory>/<log_path>.
    let log_file = log_dir.join("hello/0.log");
    let stdout = read_stdout(&log_file);
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
    // then remove it.
    cri.call(
        "StopPodSandbox",
        run_t,
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        }),
    )
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", cd.log_tail()));
    cri.call(
        "RemovePodSandbox",
        run_t,
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        }),
    )
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", cd.log_tail()));
    let left = cri
        .call(
            "ListPodSandbox",
            t,
            rt.list_pod_sandbox(api::ListPodSandboxRequest::default()),
        )
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
        .items;
    assert!(left.is_empty(), "pods left: {left:?}");
    let deadline = Instant::now() + paths::leak_grace();
    while procs::alive(qemu.pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {} still alive after RemovePodSandbox",
            qemu.pid
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let torn_down = started.elapsed();
    drop(rt);
    drop(img);
    drop(cri);
    // Processes, mounts (netns, shm), shim state, CRI state, IP reservations, libcni cache,
    // the bridge.
    cd.finish();
    drop(reg);
    eprintln!(
        "cri pod: sandbox ready {:.1}s, container exited {:.1}s, torn down {:.1}s, all clean {:.1}s",
        booted.as_secs_f64(),
        ran.as_secs_f64(),
        torn_down.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The complete stdout lines of a CRI log file (partial lines joined).
fn read_stdout(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in cri::parse_log(&text) {
        assert_eq!(
            l.stream,
            "stdout",
            "unexpected stderr in {}: {l:?}",
            path.display()
        );
        cur.push_str(&l.text);
        if !l.partial {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}
