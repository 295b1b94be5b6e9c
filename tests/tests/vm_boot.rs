//! Boots the baked guest (build/guest, config build/configuration.toml) with real QEMU and the
//! real agent through `Vm`, and checks that nothing outlives the VM. These tests fail (never
//! skip) when the image is missing: `make test` bakes it first with `make image`. A tampered
//! rootfs is tests/image.rs's (one check for the whole tier).
//! (Moved from shim/tests/vm_boot.rs: host tier.)

use std::path::Path;
use std::time::{Duration, Instant};

use kata_cc_shim::agent::context;
use kata_cc_shim::config::Config;
use kata_cc_shim::sizing::VmSize;
use kata_cc_shim::vm::{Vm, VmSpec};
use kata_cc_tests::paths;

/// One VM at a time: two TCG guests on two cores would only slow each other into timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The baked config, with sandbox state under a short temp dir (unix socket paths are short).
fn load_config(state_root: &Path) -> Config {
    let guest = paths::guest_dir();
    for f in ["vmlinuz", "initrd.img", "rootfs.img"] {
        assert!(
            guest.join(f).is_file(),
            "build/guest missing: run make image ({} not found)",
            guest.join(f).display()
        );
    }
    let cfg_path = paths::baked_config();
    assert!(
        cfg_path.is_file(),
        "build/guest missing: run make image ({} not found)",
        cfg_path.display()
    );
    let mut cfg = Config::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.hypervisor.qemu.path.exists(),
        "QEMU {} is not installed: run make deps",
        cfg.hypervisor.qemu.path.display()
    );
    cfg.runtime.state_root = state_root.to_path_buf();
    cfg
}

fn spec(cfg: &Config, id: &str) -> VmSpec {
    VmSpec {
        id: id.into(),
        size: VmSize {
            memory_mib: cfg.hypervisor.qemu.default_memory,
            vcpus: 1,
        },
        state_dir: cfg.runtime.state_root.join(id),
        host_data: None,
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_answers_and_leaves_nothing() {
    let _one = SERIAL.lock().await;
    let tmp = tempfile::Builder::new()
        .prefix("kcvm")
        .tempdir_in("/tmp")
        .unwrap();
    let cfg = load_config(tmp.path());
    let t0 = Instant::now();
    let mut vm = Vm::start(&cfg, spec(&cfg, "boot1"))
        .await
        .unwrap_or_else(|e| panic!("VM start failed: {e}"));
    eprintln!(
        "boot: agent answered after {:.2} s ({:?}, start() returned after {:.2} s)",
        vm.boot_time().as_secs_f64(),
        vm.accel(),
        t0.elapsed().as_secs_f64()
    );
    let qemu_pid = vm.qemu_pid().expect("QEMU pid");
    let backend_pid = vm.backend_pid();
    let state_dir = vm.state_dir().to_path_buf();
    assert!(alive(qemu_pid));
    assert!(vm.console_log().is_file());

    let agent = vm.agent().await.unwrap_or_else(|e| panic!("{e}"));
    let health = agent
        .health
        .check(
            context(Duration::from_secs(10)),
            &agent_proto::health::CheckRequest::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("Health.Check: {e}"));
    assert_eq!(
        health.status,
        agent_proto::health::health_check_response::ServingStatus::SERVING.into()
    );
    let details = agent
        .agent
        .get_guest_details(
            context(Duration::from_secs(10)),
            &agent_proto::agent::GuestDetailsRequest::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("GetGuestDetails: {e}"));
    eprintln!("guest details: {details:?}");
    // A second connection works too (the shim opens several).
    let agent2 = vm.agent().await.unwrap_or_else(|e| panic!("{e}"));
    agent2
        .health
        .check(
            context(Duration::from_secs(10)),
            &agent_proto::health::CheckRequest::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("Health.Check on 2nd connection: {e}"));

    let exited = vm.wait_exited();
    let t1 = Instant::now();
    vm.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    eprintln!("stop took {:.2} s", t1.elapsed().as_secs_f64());
    tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .expect("wait_exited resolves after stop");
    vm.stop().await.expect("stop is idempotent");
    assert!(!alive(qemu_pid), "QEMU pid {qemu_pid} still exists");
    if let Some(b) = backend_pid {
        assert!(!alive(b), "vsock backend pid {b} still exists");
    }
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    drop(vm);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_from_outside_is_seen_and_drop_cleans_up() {
    let _one = SERIAL.lock().await;
    let tmp = tempfile::Builder::new()
        .prefix("kcvm")
        .tempdir_in("/tmp")
        .unwrap();
    let cfg = load_config(tmp.path());
    // The 512 MiB / 1.5 CPU pod size reaches the real QEMU process.
    let mut sized = spec(&cfg, "kill1");
    sized.size = VmSize {
        memory_mib: 2560,
        vcpus: 3,
    };
    let vm = Vm::start(&cfg, sized)
        .await
        .unwrap_or_else(|e| panic!("VM start failed: {e}"));
    let qemu_pid = vm.qemu_pid().expect("QEMU pid");
    let cmdline = std::fs::read(format!("/proc/{qemu_pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let joined = args.join(" ");
    assert!(joined.contains("-smp 3 -m 2560M"), "{joined}");
    assert!(joined.contains("memory-backend-memfd,id=mem,size=2560M,share=on"));
    let backend_pid = vm.backend_pid();
    let state_dir = vm.state_dir().to_path_buf();
    let w1 = vm.wait_exited();
    let w2 = vm.wait_exited();
    // SAFETY: signalling the QEMU this test started, by its PID.
    unsafe { libc::kill(qemu_pid, libc::SIGKILL) };
    let e1 = tokio::time::timeout(Duration::from_secs(10), w1)
        .await
        .expect("wait_exited resolves when QEMU is killed");
    let e2 = tokio::time::timeout(Duration::from_secs(1), w2)
        .await
        .expect("every wait_exited resolves");
    assert_eq!(e1.signal, Some(libc::SIGKILL));
    assert_eq!(e1, e2);
    assert_eq!(vm.exited(), Some(e1));
    let t = Instant::now();
    match vm.agent().await {
        Ok(_) => panic!("agent() connected to a dead VM"),
        Err(e) => assert!(e.to_string().contains("is not running"), "{e}"),
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(vm);
    assert!(!alive(qemu_pid));
    if let Some(b) = backend_pid {
        assert!(!alive(b), "vsock backend pid {b} still exists after drop");
    }
    assert!(!state_dir.exists());
}

#[tokio::test]
async fn missing_image_is_named() {
    let tmp = tempfile::Builder::new()
        .prefix("kcvm")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cfg = load_config(tmp.path());
    cfg.hypervisor.qemu.image = "/nonexistent/rootfs.img".into();
    let err = match Vm::start(&cfg, spec(&cfg, "noimg")).await {
        Ok(_) => panic!("started without an image"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(
            "image path /nonexistent/rootfs.img does not exist (hypervisor.qemu.image in "
        ),
        "{err}"
    );
    assert!(!tmp.path().join("noimg").exists());
}
