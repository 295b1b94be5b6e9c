//! Choice of QEMU accelerator: KVM only when it can really run guest code on this host.
//!
//! Opening `/dev/kvm` is not enough: some hosts expose a paravirtual nested KVM that creates VMs
//! but cannot run an ordinary guest. The probe creates a VM with one page at the reset vector
//! holding `hlt`, runs a vCPU and expects a `KVM_EXIT_HLT`, then boots the guest kernel itself
//! under KVM (see [`probe`]).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::Duration;

use thiserror::Error;

use crate::config::AccelChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_qemu(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Where `auto` keeps the probe's verdict for later shims of this host boot (one shim runs per
/// pod: probing for each would add the probe to every pod start).
pub const PROBE_CACHE: &str = "/run/kata-cc/accel-probe";
/// Bound on the guest kernel probe (a working KVM takes well under a second).
const KERNEL_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Resolves the configured choice; `auto` uses KVM only when the guest kernel boots under it
/// (see [`probe`]), remembering the verdict in [`PROBE_CACHE`] and logging it.
pub async fn choose(choice: AccelChoice, qemu: &Path, kernel: &Path) -> Accel {
    match choice {
        AccelChoice::Kvm => {
            log::info!("accelerator: kvm (forced by hypervisor.qemu.accel)");
            Accel::Kvm
        }
        AccelChoice::Tcg => {
            log::info!("accelerator: tcg (forced by hypervisor.qemu.accel)");
            Accel::Tcg
        }
        AccelChoice::Auto => {
            static PROBED: tokio::sync::OnceCell<Accel> = tokio::sync::OnceCell::const_new();
            *PROBED
                .get_or_init(|| async {
                    let cache = Path::new(PROBE_CACHE);
                    // One shim probes at a time (a node restarting runs many at once); the
                    // others then find its verdict.
                    let _lock = lock_cache(cache).await;
                    let key = cache_key(qemu, kernel);
                    let cached = key.as_ref().and_then(|k| read_cache(cache, k));
                    let (verdict, how) = match cached {
                        // A cached yes is re-checked cheaply: KVM can go away.
                        Some(Ok(())) => match tokio::task::spawn_blocking(probe_kvm).await {
                            Ok(Ok(())) => (Ok(()), "cached verdict, test VM ran"),
                            Ok(Err(why)) => {
                                (Err(why.into()), "cached yes, but the test VM failed now")
                            }
                            Err(e) => (Err(ProbeError::Task(e)), "cached yes, re-check"),
                        },
                        Some(Err(why)) => (Err(why), "cached verdict"),
                        None => {
                            let v = probe(qemu, kernel).await;
                            // Only verdicts that would come out the same again: not a timeout
                            // or a QEMU that could not start on a loaded host.
                            if let Some(k) = &key {
                                if v.as_ref().err().is_none_or(ProbeError::definite) {
                                    write_cache(cache, k, &v);
                                }
                            }
                            (v, "probed")
                        }
                    };
                    match verdict {
                        Ok(()) => {
                            log::info!(
                                "accelerator: kvm (the guest kernel boots under KVM; {how})"
                            );
                            Accel::Kvm
                        }
                        Err(why) => {
                            log::warn!(
                                "accelerator: tcg (software emulation; KVM unusable: {why}; {how})"
                            );
                            Accel::Tcg
                        }
                    }
                })
                .await
        }
    }
}

/// Whether KVM can run this guest: a test VM must halt in KVM, then QEMU with `-accel kvm -cpu
/// host` must boot `kernel` to its end. Some nested KVMs pass the first test, and even let QEMU
/// set up the vCPU, but stop at the kernel's first instructions they cannot emulate (seen:
/// "KVM internal error ... emulation failure" in the kernel's decompressor; QEMU then pauses
/// forever instead of exiting).
pub async fn probe(qemu: &Path, kernel: &Path) -> Result<(), ProbeError> {
    tokio::task::spawn_blocking(probe_kvm)
        .await
        .map_err(ProbeError::Task)??;
    probe_guest_kernel(qemu, kernel).await
}

/// Why KVM is not used. Its text is what a later shim reads back from [`PROBE_CACHE`].
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The test VM of [`probe_kvm`] did not halt in KVM.
    #[error(transparent)]
    TestVm(#[from] KvmTestError),
    #[error("probe task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot run {qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU probe: no pipes")]
    NoPipes,
    /// QEMU showed a KVM internal error (`first_error`, its line) and stays paused.
    #[error("the guest kernel stops under KVM: {first_error}")]
    KernelStops { first_error: String },
    #[error("QEMU KVM probe: {0}")]
    Wait(#[source] std::io::Error),
    #[error(
        "the guest kernel did not reach its end under KVM within {}s",
        KERNEL_PROBE_TIMEOUT.as_secs()
    )]
    KernelTimeout,
    #[error("QEMU with -accel kvm -cpu host: {status} {first_error}")]
    QemuFailed {
        status: ExitStatus,
        first_error: String,
    },
    #[error(
        "QEMU ended without the guest kernel's panic line on the console (kernel {kernel} under \
         KVM; console: {last_line:?})"
    )]
    NoPanicLine { kernel: PathBuf, last_line: String },
    /// A verdict an earlier shim recorded in [`PROBE_CACHE`]: its reason as written there.
    #[error("{0}")]
    Cached(String),
}

impl ProbeError {
    /// Probing again would say the same (worth remembering): not a timeout or a QEMU that
    /// could not start on a loaded host.
    pub fn definite(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self {
            ProbeError::TestVm(_) | ProbeError::KernelStops { .. } | ProbeError::Cached(_) => true,
            // QEMU aborting is an assertion in its KVM set-up (seen on a nested host: "failed to
            // set MSR 0x10a", then `kvm_buf_set_msrs` asserts), the same on every try; a QEMU
            // short of resources exits with an error instead.
            ProbeError::QemuFailed { status, .. } => status.signal() == Some(libc::SIGABRT),
            _ => false,
        }
    }
}

/// Why the test VM of [`probe_kvm`] did not halt in KVM.
#[derive(Debug, Error)]
pub enum KvmTestError {
    #[error("cannot start probe thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("test guest did not halt within 3 s")]
    Timeout,
    #[error("open /dev/kvm: {0}")]
    Open(#[source] std::io::Error),
    #[error("{ioctl}: {source}")]
    Ioctl {
        ioctl: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected KVM API version {0}")]
    ApiVersion(libc::c_int),
    /// `what`: "guest page" or "kvm_run".
    #[error("mmap {what} failed")]
    Mmap { what: &'static str },
    #[error("test guest exited with reason {0}, not HLT")]
    ExitReason(u32),
}

/// An exclusive lock next to the cache file, held until dropped; `None` if it cannot be had
/// (the probe then runs unlocked).
async fn lock_cache(cache: &Path) -> Option<std::fs::File> {
    let path = cache.with_extension("lock");
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock on an open descriptor; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f)
    })
    .await;
    match r {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            log::warn!("accelerator probe: cannot lock {}: {e}", cache.display());
            None
        }
        Err(_) => None,
    }
}

/// Boots `kernel` under KVM without an initrd or root device: it panics ("VFS: Unable to mount
/// root fs"), `panic=-1` reboots at once and `-no-reboot` ends QEMU. Success needs the panic line
/// on the serial console, so the kernel really ran.
async fn probe_guest_kernel(qemu: &Path, kernel: &Path) -> Result<(), ProbeError> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-serial",
            "stdio",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            qemu: qemu.to_path_buf(),
            source,
        })?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ProbeError::NoPipes);
    };
    let console = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v).await;
        v
    });
    // QEMU's stderr, until it ends or shows a KVM internal error (QEMU does not exit then).
    let watch_err = async {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match err.read(&mut buf).await {
                Ok(0) | Err(_) => return (text, false),
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
            let t = String::from_utf8_lossy(&text);
            if t.contains("KVM internal error") || t.contains("emulation failure") {
                return (text, true);
            }
        }
    };
    let first_error = |text: &[u8]| {
        let t = String::from_utf8_lossy(text);
        t.lines()
            .find(|l| l.to_lowercase().contains("error") || l.contains("failure"))
            .unwrap_or_else(|| t.lines().next().unwrap_or(""))
            .trim()
            .to_string()
    };
    // stderr ends when QEMU exits; an internal error comes first and QEMU then stays.
    let run = async {
        let (text, internal) = watch_err.await;
        if internal {
            return Err(ProbeError::KernelStops {
                first_error: first_error(&text),
            });
        }
        let status = child.wait().await.map_err(ProbeError::Wait)?;
        Ok((text, status))
    };
    let (stderr_seen, status) = tokio::select! {
        r = run => r?,
        _ = tokio::time::sleep(KERNEL_PROBE_TIMEOUT) => return Err(ProbeError::KernelTimeout),
    };
    let console = console.await.unwrap_or_default();
    let console = String::from_utf8_lossy(&console);
    if !status.success() {
        return Err(ProbeError::QemuFailed {
            status,
            first_error: first_error(&stderr_seen),
        });
    }
    if !console.contains("Kernel panic") && !console.contains("Unable to mount root") {
        return Err(ProbeError::NoPanicLine {
            kernel: kernel.to_path_buf(),
            last_line: console.lines().last().unwrap_or("").to_string(),
        });
    }
    Ok(())
}

/// What the verdict depends on: QEMU, the kernel (path, size, mtime) and this host boot.
fn cache_key(qemu: &Path, kernel: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| format!("{}:{}:{}", p.display(), m.len(), m.mtime()))
    };
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{} {} {}", id(qemu)?, id(kernel)?, boot.trim()))
}

/// The cached verdict for `key`: line 1 the key, line 2 `kvm` or `tcg <why>`.
fn read_cache(path: &Path, key: &str) -> Option<Result<(), ProbeError>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "kvm" => Some(Ok(())),
        v => v
            .strip_prefix("tcg ")
            .map(|why| Err(ProbeError::Cached(why.to_string()))),
    }
}

fn write_cache(path: &Path, key: &str, verdict: &Result<(), ProbeError>) {
    let line = match verdict {
        Ok(()) => "kvm".to_string(),
        Err(why) => format!("tcg {}", why.to_string().replace('\n', " ")),
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let r = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, format!("{key}\n{line}\n")))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        log::warn!(
            "cannot record the accelerator probe in {}: {e}",
            path.display()
        );
    }
}

const KVMIO: u64 = 0xAE;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (KVMIO << 8) | nr
}
const KVM_GET_API_VERSION: u64 = io(0x00);
const KVM_CREATE_VM: u64 = io(0x01);
const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
const KVM_CREATE_VCPU: u64 = io(0x41);
const KVM_RUN: u64 = io(0x80);
const KVM_SET_USER_MEMORY_REGION: u64 = iow(0x46, 32);
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// Runs the probe on its own thread so that a KVM_RUN that never returns cannot block us.
pub fn probe_kvm() -> Result<(), KvmTestError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_kvm_inner());
        })
        .map_err(KvmTestError::Thread)?;
    rx.recv_timeout(Duration::from_secs(3))
        .unwrap_or(Err(KvmTestError::Timeout))
}

fn ioctl(fd: &OwnedFd, req: u64, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the callers pass request numbers whose argument is either an integer or a pointer
    // to a live, correctly sized struct.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl`'s error, naming the request.
fn named(ioctl: &'static str) -> impl FnOnce(std::io::Error) -> KvmTestError {
    move |source| KvmTestError::Ioctl { ioctl, source }
}

fn probe_kvm_inner() -> Result<(), KvmTestError> {
    let kvm: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(KvmTestError::Open)?
        .into();
    let v = ioctl(&kvm, KVM_GET_API_VERSION, 0).map_err(named("KVM_GET_API_VERSION"))?;
    if v != 12 {
        return Err(KvmTestError::ApiVersion(v));
    }
    let vm = ioctl(&kvm, KVM_CREATE_VM, 0).map_err(named("KVM_CREATE_VM"))?;
    // SAFETY: KVM_CREATE_VM returned a new fd that nothing else owns.
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };

    // One page at the top of the 32-bit space: the reset vector 0xfffffff0 lies in it.
    const PAGE: usize = 4096;
    // SAFETY: anonymous private mapping, checked for failure, unmapped below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(KvmTestError::Mmap { what: "guest page" });
    }
    let result = (|| {
        // SAFETY: `mem` is a PAGE-sized writable mapping; 0xff0 < PAGE.
        unsafe { *(mem as *mut u8).add(0xff0) = 0xf4 }; // hlt
        let region = KvmUserspaceMemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0xffff_f000,
            memory_size: PAGE as u64,
            userspace_addr: mem as u64,
        };
        ioctl(
            &vm,
            KVM_SET_USER_MEMORY_REGION,
            &region as *const _ as libc::c_ulong,
        )
        .map_err(named("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = ioctl(&vm, KVM_CREATE_VCPU, 0).map_err(named("KVM_CREATE_VCPU"))?;
        // SAFETY: new fd owned by nobody else.
        let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu) };
        let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
            .map_err(named("KVM_GET_VCPU_MMAP_SIZE"))? as usize;
        // SAFETY: shared mapping of the vcpu's kvm_run area, checked and unmapped below.
        let run = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                run_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if run == libc::MAP_FAILED {
            return Err(KvmTestError::Mmap { what: "kvm_run" });
        }
        let r = ioctl(&vcpu, KVM_RUN, 0).map_err(named("KVM_RUN"));
        // SAFETY: kvm_run.exit_reason is a u32 at offset 8 of the mapping.
        let exit_reason = unsafe { *((run as *const u8).add(8) as *const u32) };
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(run, run_size) };
        r?;
        if exit_reason != KVM_EXIT_HLT {
            return Err(KvmTestError::ExitReason(exit_reason));
        }
        Ok(())
    })();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(mem, PAGE) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::test_util::script;

    #[tokio::test]
    async fn forced_choices_are_honoured() {
        let q = Path::new("/nonexistent/qemu");
        let k = Path::new("/nonexistent/vmlinuz");
        assert_eq!(choose(AccelChoice::Tcg, q, k).await, Accel::Tcg);
        assert_eq!(choose(AccelChoice::Kvm, q, k).await, Accel::Kvm);
    }

    #[tokio::test]
    async fn kernel_probe_reports_missing_binary() {
        let e = probe_guest_kernel(Path::new("/nonexistent/qemu"), Path::new("/k"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/qemu"), "{e}");
        // Not a verdict about KVM: never remembered.
        assert!(!e.definite());
    }

    /// A "QEMU" that behaves like one on a nested KVM that cannot run the kernel: prints the
    /// internal error and stays alive. The probe must say so at once, not wait for its bound.
    #[tokio::test]
    async fn a_kvm_internal_error_fails_the_probe_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("qemu");
        script(
            &q,
            "echo 'KVM internal error. Suberror: 1' >&2\necho 'emulation failure' >&2\nexec sleep 100",
        );
        let t = std::time::Instant::now();
        let e = probe_guest_kernel(&q, Path::new("/k")).await.unwrap_err();
        assert!(e.to_string().contains("stops under KVM"), "{e}");
        assert!(e.to_string().contains("KVM internal error"), "{e}");
        assert!(e.definite());
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A QEMU that exits 0 without the kernel having run is not proof.
    #[tokio::test]
    async fn a_clean_exit_without_the_panic_line_fails_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("qemu");
        script(&q, "echo SeaBIOS\nexit 0");
        let e = probe_guest_kernel(&q, Path::new("/k")).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("without the guest kernel's panic line"),
            "{e}"
        );
        assert!(!e.definite());
        let q = dir.path().join("qemu2");
        script(
            &q,
            "echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'\nexit 0",
        );
        let r = probe_guest_kernel(&q, Path::new("/k")).await;
        assert!(r.is_ok(), "{r:?}");
    }

    /// Probes of concurrent shims take turns: the lock is exclusive until dropped.
    #[tokio::test]
    async fn the_cache_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe");
        let held = lock_cache(&cache).await.expect("lock");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(cache.with_extension("lock"))
            .unwrap();
        // SAFETY: flock on an open descriptor.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, -1, "a second lock was granted while the first is held");
        drop(held);
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
    }

    #[test]
    fn an_aborting_qemu_is_a_definite_verdict_and_a_failing_one_is_not() {
        use std::os::unix::process::ExitStatusExt;
        let failed = |raw| ProbeError::QemuFailed {
            status: ExitStatus::from_raw(raw),
            first_error: "qemu-system-x86_64: error: failed to set MSR 0x10a".into(),
        };
        assert!(failed(libc::SIGABRT).definite());
        assert!(!failed(1 << 8).definite(), "exit status 1");
        assert!(!failed(libc::SIGKILL).definite());
        assert!(!ProbeError::KernelTimeout.definite());
    }

    #[test]
    fn cache_round_trip_and_key_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/accel-probe");
        // The reason of a cached tcg verdict, None for kvm.
        let why = |r: Result<(), ProbeError>| r.err().map(|e| e.to_string());
        write_cache(&p, "k1", &Err(ProbeError::Cached("no\nway".into())));
        assert_eq!(read_cache(&p, "k1").map(why), Some(Some("no way".into())));
        assert!(read_cache(&p, "k2").is_none());
        write_cache(&p, "k1", &Ok(()));
        assert_eq!(read_cache(&p, "k1").map(why), Some(None));
    }

    /// The cache file's second line as earlier shims wrote it, for the definite verdicts.
    #[test]
    fn cached_reasons_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("accel-probe");
        let cases = [
            (
                ProbeError::KernelStops {
                    first_error: "KVM internal error. Suberror: 1".into(),
                },
                "tcg the guest kernel stops under KVM: KVM internal error. Suberror: 1",
            ),
            (
                KvmTestError::Ioctl {
                    ioctl: "KVM_RUN",
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                }
                .into(),
                "tcg KVM_RUN: Invalid argument (os error 22)",
            ),
            (
                KvmTestError::ExitReason(8).into(),
                "tcg test guest exited with reason 8, not HLT",
            ),
            (
                KvmTestError::Timeout.into(),
                "tcg test guest did not halt within 3 s",
            ),
        ];
        for (e, line) in cases {
            assert!(e.definite(), "{e}");
            write_cache(&p, "k", &Err(e));
            assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("k\n{line}\n"));
        }
        assert!(!ProbeError::KernelTimeout.definite());
        assert_eq!(
            ProbeError::KernelTimeout.to_string(),
            "the guest kernel did not reach its end under KVM within 15s"
        );
    }

    #[test]
    fn probe_gives_an_answer_with_a_reason() {
        // Either result is valid on some host; the probe must not hang or panic and must explain.
        match probe_kvm() {
            Ok(()) => eprintln!("KVM ran the test guest"),
            Err(why) => {
                eprintln!("KVM unusable: {why}");
                assert!(!why.to_string().is_empty())
            }
        }
    }
}
