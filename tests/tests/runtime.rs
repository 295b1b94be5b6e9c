//! End-to-end: containers in a kata-cc VM through a real containerd and `ctr` (issue 2,
//! "Done when"). Each test runs its own private containerd and ends with the leak check.

use std::time::{Duration, Instant};

use kata_cc_tests::containerd::Containerd;
use kata_cc_tests::{paths, procs, scenarios, Options, TestImage};

/// MemTotal (MiB) and nproc as printed by `grep MemTotal /proc/meminfo; nproc`.
fn mem_and_cpus(stdout: &str) -> (u64, u64) {
    let mut mem = None;
    let mut cpus = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("MemTotal:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad MemTotal line {line:?}"));
            mem = Some(kb / 1024);
        } else if let Ok(n) = line.trim().parse::<u64>() {
            cpus = Some(n);
        }
    }
    match (mem, cpus) {
        (Some(m), Some(c)) => (m, c),
        _ => panic!("expected a MemTotal line and an nproc line, got:\n{stdout}"),
    }
}

/// The guest kernel holds back memory for itself (kernel image, page structs, ...): MemTotal
/// of a VM with `mib` MiB is a little below `mib`. 256 MiB of slack keeps 2048 and 2560 apart.
const KERNEL_RESERVE_MIB: u64 = 256;

fn assert_vm_size(stdout: &str, want_mib: u64, want_cpus: u64) {
    let (mem, cpus) = mem_and_cpus(stdout);
    assert!(
        mem <= want_mib && mem >= want_mib - KERNEL_RESERVE_MIB,
        "guest MemTotal is {mem} MiB: expected a {want_mib} MiB VM (MemTotal in [{}, {want_mib}])",
        want_mib - KERNEL_RESERVE_MIB
    );
    assert_eq!(cpus, want_cpus, "guest nproc");
}

const SIZE_CMD: &[&str] = &["sh", "-c", "grep MemTotal /proc/meminfo; nproc"];

#[test]
fn uname_prints_guest_kernel_release() {
    let cd = Containerd::start("uname");
    let guest = paths::guest_kernel_release();
    let host = paths::host_kernel_release();
    assert_ne!(
        guest, host,
        "the guest kernel release equals the host's: this test could not tell them apart"
    );
    let id = cd.id("uname");
    let out = cd.run(&id, &[], &TestImage::busybox(), &["uname", "-r"]);
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(
        out.stdout_str().trim(),
        guest,
        "uname -r in the container (host is {host})"
    );
    cd.finish();
}

#[test]
fn exit_code_reaches_ctr() {
    let cd = Containerd::start("exitcode");
    scenarios::exit_code(&cd);
    cd.finish();
}

#[test]
fn vm_sized_from_limits() {
    let cd = Containerd::start("sizing-limits");
    let id = cd.id("limits");
    // 512 MiB and 1.5 CPUs (quota 150000 / period 100000): 2048 + 512 MiB, ceil(1 + 1.5) vCPUs.
    let out = cd.run(
        &id,
        &["--memory-limit", "536870912", "--cpus", "1.5"],
        &TestImage::busybox(),
        SIZE_CMD,
    );
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_vm_size(&out.stdout_str(), 2560, 3);
    cd.finish();
}

#[test]
fn vm_default_size_without_limits() {
    let cd = Containerd::start("sizing-default");
    let id = cd.id("nolimits");
    let out = cd.run(&id, &[], &TestImage::busybox(), SIZE_CMD);
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_vm_size(&out.stdout_str(), 2048, 1);
    cd.finish();
}

/// Free page reporting: the VM has a virtio-balloon and kata-cc-init bound its driver, so the
/// memory the guest frees goes back to the host.
#[test]
fn guest_binds_the_free_page_reporting_balloon() {
    let cd = Containerd::start("balloon");
    let id = cd.id("balloon");
    let out = cd.run(
        &id,
        &[],
        &TestImage::busybox(),
        &["sh", "-c", "ls /sys/bus/virtio/drivers/virtio_balloon/"],
    );
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert!(
        out.stdout_str()
            .split_whitespace()
            .any(|w| w.starts_with("virtio")),
        "no device bound to virtio_balloon in the guest: {}",
        out.describe()
    );
    cd.finish();
}

#[test]
fn exec_with_and_without_tty() {
    let cd = Containerd::start("exec");
    scenarios::exec_with_and_without_tty(&cd, &paths::guest_kernel_release());
    cd.finish();
}

#[test]
fn stdin_reaches_the_container() {
    let cd = Containerd::start("stdin");
    scenarios::stdin_reaches_cat(&cd);
    cd.finish();
}

#[test]
fn ten_mib_of_stdout_complete_and_in_order() {
    let cd = Containerd::start("stdout10m");
    scenarios::ten_mib_of_stdout(&cd);
    cd.finish();
}

#[test]
fn ten_mib_of_stdout_in_large_writes() {
    let cd = Containerd::start("stdout10m-large");
    scenarios::ten_mib_of_stdout_in_large_writes(&cd);
    cd.finish();
}

#[test]
fn signals_from_task_kill_arrive() {
    let cd = Containerd::start("signals");
    scenarios::signals_arrive(&cd);
    cd.finish();
}

#[test]
fn killing_qemu_ends_the_task_and_cleans_up() {
    let cd = Containerd::start("killqemu");
    let id = cd.id("victim");
    let events = cd.spawn_ctr(&["events"]);
    let out = cd.ctr_with(
        &[
            "run",
            "-d",
            "--null-io",
            "--runtime",
            kata_cc_tests::RUNTIME,
            &TestImage::busybox().name,
            &id,
            "sleep",
            "3600",
        ],
        None,
        paths::run_timeout(),
    );
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    let qemu = cd.qemu_of(&id);
    procs::kill_pid(qemu.pid);

    // The task must be reported stopped (the shim saw the VM die)...
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ls = cd.ctr(&["tasks", "ls"]);
        let stopped = ls
            .stdout_str()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str()) && l.contains("STOPPED"));
        if stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not STOPPED 120s after QEMU (pid {}) was killed: {}\n{}",
            qemu.pid,
            ls.describe(),
            cd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // ...with a published, non-zero exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit_status = loop {
        let text = events.stdout_now();
        let status = text
            .lines()
            .filter(|l| {
                l.contains("/tasks/exit") && l.contains(&format!("\"container_id\":\"{id}\""))
            })
            .find_map(|l| {
                let json = &l[l.find('{')?..];
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                // exit_status is left out of the JSON when it is 0.
                Some(v.get("exit_status").and_then(|s| s.as_u64()).unwrap_or(0))
            });
        if let Some(s) = status {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no /tasks/exit event for {id}; events:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(exit_status, 0, "the task of a killed VM must exit non-zero");

    let del = cd.ctr(&["tasks", "delete", &id]);
    assert!(del.success(), "{}\n{}", del.describe(), cd.log_tail());
    cd.ctr(&["containers", "delete", &id]).assert_success();
    drop(events);
    assert!(!procs::alive(qemu.pid), "QEMU {} still alive", qemu.pid);
    cd.finish();
}

#[test]
fn zstd_layer_image_runs() {
    let img = TestImage::busybox_zstd();
    let cd = Containerd::start_with(
        "zstd",
        Options {
            images: vec![img.clone()],
            ..Options::default()
        },
    );
    let id = cd.id("zstd");
    let out = cd.run(&id, &[], &img, &["cat", "/etc/motd"]);
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "kata-cc test image\n");
    cd.finish();
}
