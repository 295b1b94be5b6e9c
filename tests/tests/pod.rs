//! End-to-end: the containers of one pod (same `io.kubernetes.cri.sandbox-id`) share one shim and
//! one VM; the VM lives until the pod's last container is deleted.

use std::time::{Duration, Instant};

use kata_cc_tests::containerd::Containerd;
use kata_cc_tests::{paths, procs, TestImage};

fn run_detached(cd: &Containerd, id: &str, pod: &str, container_type: &str) {
    let img = TestImage::busybox();
    let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
    let ctype = format!("io.kubernetes.cri.container-type={container_type}");
    let out = cd.ctr_with(
        &[
            "run",
            "-d",
            "--null-io",
            "--runtime",
            kata_cc_tests::RUNTIME,
            "--annotation",
            &sandbox,
            "--annotation",
            &ctype,
            &img.name,
            id,
            "sleep",
            "3600",
        ],
        None,
        paths::run_timeout(),
    );
    assert!(
        out.success(),
        "run {id}: {}\n{}",
        out.describe(),
        cd.log_tail()
    );
}

fn delete(cd: &Containerd, id: &str) {
    let out = cd.ctr(&["tasks", "delete", "--force", id]);
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    cd.ctr(&["containers", "delete", id]).assert_success();
}

#[test]
fn containers_of_one_pod_share_one_vm() {
    let cd = Containerd::start("pod");
    let first = cd.id("sandbox");
    let second = cd.id("app");
    // The pod's sandbox id is also the first container's: its VM state dir is named after it.
    run_detached(&cd, &first, &first, "sandbox");
    run_detached(&cd, &second, &first, "container");

    let shims = cd.shims();
    assert_eq!(shims.len(), 1, "one shim per pod, found {shims:?}");
    let qemu = cd.qemu_of(&first);

    // The second container runs in that VM.
    let ex = cd.ctr(&["tasks", "exec", "--exec-id", "k1", &second, "uname", "-r"]);
    assert!(ex.success(), "{}\n{}", ex.describe(), cd.log_tail());
    assert_eq!(ex.stdout_str().trim(), paths::guest_kernel_release());

    // Deleting a container that is not the last keeps the VM.
    delete(&cd, &second);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        procs::alive(qemu.pid),
        "QEMU {} ended while the pod still had a container",
        qemu.pid
    );
    let ex = cd.ctr(&["tasks", "exec", "--exec-id", "k2", &first, "true"]);
    assert!(ex.success(), "{}\n{}", ex.describe(), cd.log_tail());

    // The last delete ends the VM.
    delete(&cd, &first);
    let deadline = Instant::now() + paths::leak_grace();
    while procs::alive(qemu.pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {} still alive after the pod's last container was deleted",
            qemu.pid
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cd.finish();
}
