//! Choice of QEMU accelerator: KVM only when it can really run guest code on this host.
//!
//! Opening `/dev/kvm` is not enough: some hosts expose a paravirtual nested KVM that creates VMs
//! but cannot run an ordinary guest. The probe creates a VM with one page at the reset vector
//! holding `hlt`, runs a vCPU and expects a `KVM_EXIT_HLT`.

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

/// Resolves the configured choice; `auto` probes KVM once per process and logs the result.
pub async fn choose(choice: AccelChoice, qemu: &Path) -> Accel {
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
                    let probe = match tokio::task::spawn_blocking(probe_kvm).await {
                        Ok(r) => r,
                        Err(e) => Err(format!("probe task failed: {e}")),
                    };
                    let probe = match probe {
                        Ok(()) => probe_qemu_kvm(qemu).await,
                        Err(e) => Err(e),
                    };
                    match probe {
                        Ok(()) => {
                            log::info!(
                                "accelerator: kvm (a test VM ran and QEMU set up a KVM vCPU)"
                            );
                            Accel::Kvm
                        }
                        Err(why) => {
                            log::warn!(
                                "accelerator: tcg (software emulation; KVM unusable: {why})"
                            );
                            Accel::Tcg
                        }
                    }
                })
                .await
        }
    }
}

/// Some nested KVMs run a trivial guest but make QEMU abort while it sets up a `-cpu host` vCPU
/// (e.g. "failed to set MSR 0x10a"). QEMU does that set-up before it serves QMP, so a paused QEMU
/// that then quits cleanly through QMP proves it (about 50 ms).
async fn probe_qemu_kvm(qemu: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-qmp",
            "stdio",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
            .await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "QEMU KVM probe did not finish within 10 s".to_string())?
        .map_err(|e| format!("QEMU KVM probe: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| l.contains("error")).unwrap_or("");
        Err(format!(
            "QEMU with -accel kvm -cpu host: {} {}",
            out.status,
            first.trim()
        ))
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

    #[tokio::test]
    async fn forced_choices_are_honoured() {
        let q = Path::new("/nonexistent/qemu");
        assert_eq!(choose(AccelChoice::Tcg, q).await, Accel::Tcg);
        assert_eq!(choose(AccelChoice::Kvm, q).await, Accel::Kvm);
    }

    #[tokio::test]
    async fn auto_choice_is_explained() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if qemu.exists() {
            eprintln!("QEMU KVM probe: {:?}", probe_qemu_kvm(qemu).await);
            eprintln!("auto picks {:?}", choose(AccelChoice::Auto, qemu).await);
        }
    }

    #[tokio::test]
    async fn qemu_probe_reports_missing_binary() {
        let e = probe_qemu_kvm(Path::new("/nonexistent/qemu"))
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent/qemu"), "{e}");
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
