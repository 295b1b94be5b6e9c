//! Choice of QEMU accelerator: KVM only when it can really run guest code on this host.
//!
//! Opening `/dev/kvm` is not enough: some hosts expose a paravirtual nested KVM that creates VMs
//! but cannot run an ordinary guest. The probe creates a VM with one page at the reset vector
//! holding `hlt`, runs a vCPU and expects a `KVM_EXIT_HLT`, then boots the guest kernel itself
//! under KVM (see [`probe`]).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

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
                            Ok(Err(why)) => (Err(why), "cached yes, but the test VM failed now"),
                            Err(e) => (Err(e.to_string()), "probe task failed"),
                        },
                        Some(Err(why)) => (Err(why), "cached verdict"),
                        None => {
                            let v = probe(qemu, kernel).await;
                            // Only verdicts that would come out the same again: not a timeout
                            // or a QEMU that could not start on a loaded host.
                            if let (Some(k), Ok(()) | Err(ProbeError { definite: true, .. })) =
                                (&key, &v)
                            {
                                write_cache(cache, k, &v.clone().map_err(|e| e.why));
                            }
                            (v.map_err(|e| e.why), "probed")
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
    match tokio::task::spawn_blocking(probe_kvm).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return Err(ProbeError {
                why,
                definite: true,
            })
        }
        Err(e) => return Err(ProbeError::transient(format!("probe task failed: {e}"))),
    }
    probe_guest_kernel(qemu, kernel).await
}

/// Why KVM is not used; `definite` when probing again would say the same (worth remembering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub why: String,
    pub definite: bool,
}

impl ProbeError {
    fn transient(why: String) -> Self {
        ProbeError {
            why,
            definite: false,
        }
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
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
        .map_err(|e| ProbeError::transient(format!("cannot run {}: {e}", qemu.display())))?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ProbeError::transient("QEMU probe: no pipes".into()));
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
            return Err(ProbeError {
                why: format!("the guest kernel stops under KVM: {}", first_error(&text)),
                definite: true,
            });
        }
        let status = child
            .wait()
            .await
            .map_err(|e| ProbeError::transient(format!("QEMU KVM probe: {e}")))?;
        Ok((text, status))
    };
    let (stderr_seen, status) = tokio::select! {
        r = run => r?,
        _ = tokio::time::sleep(KERNEL_PROBE_TIMEOUT) => {
            return Err(ProbeError::transient(format!(
                "the guest kernel did not reach its end under KVM within {}s",
                KERNEL_PROBE_TIMEOUT.as_secs()
            )));
        }
    };
    let console = console.await.unwrap_or_default();
    let console = String::from_utf8_lossy(&console);
    if !status.success() {
        return Err(ProbeError::transient(format!(
            "QEMU with -accel kvm -cpu host: {status} {}",
            first_error(&stderr_seen)
        )));
    }
    if !console.contains("Kernel panic") && !console.contains("Unable to mount root") {
        return Err(ProbeError::transient(format!(
            "QEMU ended without the guest kernel's panic line on the console (kernel {} under \
             KVM; console: {:?})",
            kernel.display(),
            console.lines().last().unwrap_or("")
        )));
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
fn read_cache(path: &Path, key: &str) -> Option<Result<(), String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "kvm" => Some(Ok(())),
        v => v.strip_prefix("tcg ").map(|why| Err(why.to_string())),
    }
}

fn write_cache(path: &Path, key: &str, verdict: &Result<(), String>) {
    let line = match verdict {
        Ok(()) => "kvm".to_string(),
        Err(why) => format!("tcg {}", why.replace('\n', " ")),
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
pub fn probe_kvm() -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_kvm_inner());
        })
        .map_err(|e| format!("cannot start probe thread: {e}"))?;
    rx.recv_timeout(Duration::from_secs(3))
        .unwrap_or_else(|_| Err("test guest did not halt within 3 s".into()))
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

fn probe_kvm_inner() -> Result<(), String> {
    let kvm: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("open /dev/kvm: {e}"))?
        .into();
    let v = ioctl(&kvm, KVM_GET_API_VERSION, 0).map_err(|e| format!("KVM_GET_API_VERSION: {e}"))?;
    if v != 12 {
        return Err(format!("unexpected KVM API version {v}"));
    }
    let vm = ioctl(&kvm, KVM_CREATE_VM, 0).map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
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
        return Err("mmap guest page failed".into());
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
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let vcpu = ioctl(&vm, KVM_CREATE_VCPU, 0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        // SAFETY: new fd owned by nobody else.
        let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu) };
        let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
            .map_err(|e| format!("KVM_GET_VCPU_MMAP_SIZE: {e}"))? as usize;
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
            return Err("mmap kvm_run failed".into());
        }
        let r = ioctl(&vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"));
        // SAFETY: kvm_run.exit_reason is a u32 at offset 8 of the mapping.
        let exit_reason = unsafe { *((run as *const u8).add(8) as *const u32) };
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(run, run_size) };
        r?;
        if exit_reason != KVM_EXIT_HLT {
            return Err(format!(
                "test guest exited with reason {exit_reason}, not HLT"
            ));
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
        assert!(e.why.contains("/nonexistent/qemu"), "{e}");
        // Not a verdict about KVM: never remembered.
        assert!(!e.definite);
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
        assert!(e.why.contains("stops under KVM"), "{e}");
        assert!(e.why.contains("KVM internal error"), "{e}");
        assert!(e.definite);
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
            e.why.contains("without the guest kernel's panic line"),
            "{e}"
        );
        assert!(!e.definite);
        let q = dir.path().join("qemu2");
        script(
            &q,
            "echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'\nexit 0",
        );
        assert_eq!(probe_guest_kernel(&q, Path::new("/k")).await, Ok(()));
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
    fn cache_round_trip_and_key_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/accel-probe");
        write_cache(&p, "k1", &Err("no\nway".into()));
        assert_eq!(read_cache(&p, "k1"), Some(Err("no way".into())));
        assert_eq!(read_cache(&p, "k2"), None);
        write_cache(&p, "k1", &Ok(()));
        assert_eq!(read_cache(&p, "k1"), Some(Ok(())));
    }

    #[test]
    fn probe_gives_an_answer_with_a_reason() {
        // Either result is valid on some host; the probe must not hang or panic and must explain.
        match probe_kvm() {
            Ok(()) => eprintln!("KVM ran the test guest"),
            Err(why) => {
                eprintln!("KVM unusable: {why}");
                assert!(!why.is_empty())
            }
        }
    }
}
