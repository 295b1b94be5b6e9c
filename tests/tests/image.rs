//! The guest image checks (were hack/test-image.sh, which booted through a second QEMU command
//! line in bash): the bake is reproducible and its manifest true, and every boot goes through
//! the shim's own VM builder (`kata_cc_shim::boot_cli` over `vm::Vm::start`). The tampered-rootfs
//! check of the whole tier is here, once: a flipped data byte, a flipped hash-tree byte, a wrong
//! and a missing root hash on the command line are all refused by the guest, and the shim names
//! the reason (to `Vm::start`'s caller and, through containerd, to `ctr`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kata_cc_shim::boot_cli::{self, BootReport, Tamper, Verdict, VERIFY_FAIL};
use kata_cc_shim::config::Config;
use kata_cc_shim::manifest::Manifest;
use kata_cc_tests::containerd::{toml_quoted as quoted, toml_set, Containerd};
use kata_cc_tests::image::flip_byte;
use kata_cc_tests::{cmd, paths, TestImage};
use sha2::{Digest, Sha256};

/// One VM (or bake) at a time: two TCG guests on two cores only slow each other into timeouts.
static ONE: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stand-in agent: prints a marker as PID 1 on the verified rootfs and powers off, so the
/// image checks do not depend on the agent.
fn test_agent() -> PathBuf {
    paths::repo().join("hack/guest/test-agent")
}

/// hack/bake-image.sh without a runtime config; the init of `make image`.
fn bake(args: &[&Path]) -> cmd::CmdOutput {
    let mut c = Command::new("bash");
    c.arg(paths::repo().join("hack/bake-image.sh"))
        .arg("--no-config")
        .arg("--init")
        .arg(paths::guest_bin_dir().join("kata-cc-init"))
        .args(args);
    cmd::run(c, None, paths::run_timeout())
}

fn bake_ok(args: &[&Path]) -> String {
    let out = bake(args);
    out.assert_success();
    out.stderr_str()
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

fn veritysetup_verify(image: &Path, m: &Manifest) -> bool {
    Command::new("veritysetup")
        .arg("verify")
        .arg(format!("--hash-offset={}", m.rootfs.hash_offset))
        .arg(image)
        .arg(image)
        .arg(&m.rootfs.root_hash)
        .output()
        .expect("veritysetup (hack/deps.sh installs cryptsetup-bin)")
        .status
        .success()
}

/// The baked runtime config (QEMU, vsock backend, sizes), VM state under a short dir.
fn baked_config(state_root: &Path) -> Config {
    paths::require_built();
    let mut cfg = Config::load(&paths::baked_config()).unwrap_or_else(|e| panic!("{e}"));
    cfg.runtime.state_root = state_root.to_path_buf();
    cfg
}

fn boot(cfg: &Config, id: &str) -> BootReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(boot_cli::boot(cfg, id));
    eprintln!("---- boot {id} ----\n{}", r.describe());
    r
}

/// A short scratch dir for VM state (unix socket paths are short).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kcimg")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

#[test]
fn bake_is_reproducible_and_its_manifest_true_and_it_boots() {
    let _one = one_at_a_time();
    std::fs::create_dir_all(paths::e2e_dir()).expect("build/e2e");
    let t = tempfile::Builder::new()
        .prefix("test-image.")
        .tempdir_in(paths::e2e_dir())
        .expect("tempdir");
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    let agent = test_agent();

    // ---- reproducibility ----
    let force = Path::new("--force");
    let agent_flag = Path::new("--agent");
    let out_flag = Path::new("--out");
    bake_ok(&[force, agent_flag, &agent, out_flag, &a]);
    bake_ok(&[force, agent_flag, &agent, out_flag, &b]);
    let ma = Manifest::load_dir(&a).unwrap_or_else(|e| panic!("{e}"));
    let mb = Manifest::load_dir(&b).unwrap_or_else(|e| panic!("{e}"));
    let ha = ma.rootfs.root_hash.clone();
    assert!(
        ha.len() == 64 && ha == mb.rootfs.root_hash,
        "root hashes differ or are malformed: {ha:?} vs {:?}",
        mb.rootfs.root_hash
    );
    for f in [
        "vmlinuz",
        "initrd.img",
        "rootfs.img",
        "cmdline",
        "manifest.json",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two bakes of the same inputs"
        );
    }
    let t0 = Instant::now();
    let log = bake_ok(&[agent_flag, &agent, out_flag, &a]);
    assert!(
        log.contains("up to date") && t0.elapsed() < Duration::from_secs(10),
        "re-bake with unchanged inputs was not skipped ({:?}): {log}",
        t0.elapsed()
    );
    // A different agent must give a different root hash (the hash covers the rootfs content).
    let other = t.path().join("other-agent");
    let mut text = std::fs::read(&agent).expect("test-agent");
    text.extend_from_slice(b"# changed\n");
    std::fs::write(&other, text).expect("other agent");
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    bake_ok(&[agent_flag, &other, out_flag, &c]);
    let mc = Manifest::load_dir(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        mc.rootfs.root_hash, ha,
        "a changed agent gave the same root hash"
    );

    // ---- the manifest ----
    for f in ["vmlinuz", "initrd.img", "rootfs.img"] {
        assert_eq!(
            ma.sha256_of(f),
            Some(sha256_hex(&a.join(f)).as_str()),
            "manifest sha256 of {f} does not match the file"
        );
    }
    let cmdline = std::fs::read_to_string(a.join("cmdline")).expect("cmdline");
    let cmdline = cmdline.trim_end_matches('\n');
    assert_eq!(ma.cmdline, cmdline);
    assert!(
        cmdline.contains(&format!("kata_cc.roothash={ha} "))
            && cmdline.contains(&format!("kata_cc.hashoffset={}", ma.rootfs.hash_offset)),
        "the command line lacks the root hash or hash offset: {cmdline}"
    );
    assert_eq!(ma.inputs.agent_sha256, sha256_hex(&agent));
    // A script stand-in needs a shell, so busybox comes with it (and only with it).
    assert!(
        !ma.inputs.busybox_sha256.is_empty(),
        "stand-in bake without busybox"
    );
    assert!(erofs_has(&a.join("rootfs.img"), "/bin/sh"));
    assert!(!ma.snp_measurement.computed);
    assert!(!ma.kernel.version.is_empty(), "no kernel version");
    // Host-side cross-check of the hash tree.
    assert!(
        veritysetup_verify(&a.join("rootfs.img"), &ma),
        "veritysetup verify rejects the baked image"
    );

    // ---- the good image boots: verified rootfs, PID 1 handed over ----
    let s = scratch();
    let mut cfg = baked_config(s.path());
    boot_cli::use_guest_dir(&mut cfg, &a).unwrap_or_else(|e| panic!("{e}"));
    let r = boot(&cfg, "good");
    assert_eq!(
        r.verdict(),
        Verdict::PayloadStarted,
        "the good image did not start the test agent:\n{}\n---- console ----\n{}",
        r.describe(),
        r.console
    );
    assert_eq!(r.verified_root_hash(), Some(ha.as_str()));
    assert!(r.refusal().is_none());
    // The baked kernel booted, with every driver built in: the guest loaded no module.
    let started = r.payload_started().unwrap_or_default();
    assert!(
        started.contains(&format!(" kernel={} ", ma.kernel.version)),
        "the guest did not run the baked kernel {}: {started}",
        ma.kernel.version
    );
    assert!(
        started.contains(" modules=0 "),
        "the guest loaded kernel modules (the kernel should have its drivers built in): {started}"
    );
    assert!(!r.state_dir.exists(), "{} left", r.state_dir.display());
}

/// Whether `path` exists in the erofs `image` (dump.erofs prints the inode, or fails to read it).
fn erofs_has(image: &Path, path: &str) -> bool {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .expect("dump.erofs (hack/deps.sh installs erofs-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && text.contains(&format!("File : {path}"))
}

/// The image `make image` baked (real agent): the agent and its policy, and no shell or other
/// program that the agent's policy would not govern.
#[test]
fn the_real_image_holds_the_agent_and_no_shell() {
    paths::require_built();
    let m = Manifest::load_dir(&paths::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
    let img = paths::guest_dir().join("rootfs.img");
    assert!(
        erofs_has(&img, "/sbin/kata-cc-agent"),
        "no agent in {}",
        img.display()
    );
    assert!(erofs_has(&img, "/etc/kata-cc/policy.rego"));
    for p in ["/bin/sh", "/bin/busybox"] {
        assert!(!erofs_has(&img, p), "{p} in {}", img.display());
    }
    assert_eq!(m.inputs.busybox_sha256, "", "manifest records a busybox");
}

/// The tier's one tampered-rootfs check, on the baked image (real init, real agent).
#[test]
fn tampered_rootfs_is_refused_and_the_shim_names_the_reason() {
    let _one = one_at_a_time();
    let s = scratch();
    let base = baked_config(&s.path().join("s"));
    let m = paths::guest_manifest();
    for tamper in Tamper::ALL {
        let mut cfg = base.clone();
        let what = boot_cli::apply_tamper(&mut cfg, tamper, s.path())
            .unwrap_or_else(|e| panic!("{tamper:?}: {e}"));
        if tamper == Tamper::DataByte {
            assert!(
                !veritysetup_verify(&cfg.hypervisor.qemu.image, &m),
                "veritysetup verify accepts an image with a flipped data byte"
            );
        }
        let r = boot(&cfg, &format!("tamper-{}", tamper.name()));
        // Refused: the init's line, QEMU exited by itself, neither agent nor payload started.
        assert_eq!(
            r.verdict(),
            Verdict::Refused,
            "{what}: not refused:\n{}\n---- console ----\n{}",
            r.describe(),
            r.console
        );
        assert!(
            !r.console.contains(boot_cli::AGENT_READY),
            "{what}: the agent started"
        );
        // The shim names the reason: Vm::start's error carries the init's line.
        let err = r.start.as_ref().expect_err("refused").to_string();
        assert!(err.contains(VERIFY_FAIL), "{what}: {err}");
        assert!(!r.state_dir.exists(), "{} left", r.state_dir.display());
        if tamper == Tamper::DataByte || tamper == Tamper::HashTreeByte {
            std::fs::remove_file(&cfg.hypervisor.qemu.image).expect("remove tampered copy");
        }
    }

    // Through containerd: the shim's error reaches ctr naming the reason.
    let cd = Containerd::start("rootfs-tamper");
    let copy = cd.dir.join("rootfs-flipped.img");
    std::fs::copy(paths::guest_dir().join("rootfs.img"), &copy).expect("copy rootfs.img");
    // Block 0 holds the erofs superblock (at 1024): mounting reads it, dm-verity rejects it.
    flip_byte(&copy, 1024 + 16);
    cd.edit_config(|t| toml_set(&t, "hypervisor.qemu", "image", &quoted(&copy)));
    let id = cd.id("tampered");
    let out = cd.run(&id, &[], &TestImage::busybox(), &["uname", "-r"]);
    assert!(
        !out.success(),
        "a tampered rootfs booted: {}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains("rootfs did not verify"),
        "the error does not say the rootfs did not verify: {}\n{}",
        out.describe(),
        cd.log_tail()
    );
    cd.finish();
}
