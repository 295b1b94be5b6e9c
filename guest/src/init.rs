//! PID 1 duties: the guest's pseudo filesystems, cgroup v2 controllers, console logging.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// (source, target, fstype, flags, data)
const MOUNTS: &[(&str, &str, &str, u64, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    ),
    ("shm", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
];
const NOSUID: u64 = libc::MS_NOSUID;
const NOSUID_NODEV: u64 = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NOEXEC: u64 = libc::MS_NOSUID | libc::MS_NOEXEC;
const NOSUID_NODEV_NOEXEC: u64 = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Controllers containers get limits from.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// A mount point is on a different device than its parent (good enough for pseudo filesystems).
fn is_mountpoint(p: &Path) -> bool {
    let (Ok(a), Some(Ok(b))) = (std::fs::metadata(p), p.parent().map(std::fs::metadata)) else {
        return false;
    };
    a.dev() != b.dev()
}

pub fn mount_filesystems() {
    for (src, target, fstype, flags, data) in MOUNTS {
        let t = Path::new(target);
        if !t.exists() {
            if let Err(e) = std::fs::create_dir_all(t) {
                log::warn!("cannot create mount point {target}: {e}");
                continue;
            }
        }
        if is_mountpoint(t) {
            continue;
        }
        let data = if data.is_empty() { None } else { Some(*data) };
        if let Err(e) = mount(
            Some(*src),
            t,
            Some(*fstype),
            MsFlags::from_bits_truncate(*flags),
            data,
        ) {
            log::warn!("mounting {fstype} on {target}: {e}");
        }
    }
    // configfs carries configfs-tsm (SNP reports); the guest kernel has it built in (its
    // mount point exists only in a kernel with configfs).
    let cfg = Path::new("/sys/kernel/config");
    if cfg.is_dir() && !is_mountpoint(cfg) {
        if let Err(e) = mount(
            Some("configfs"),
            cfg,
            Some("configfs"),
            MsFlags::from_bits_truncate(NOSUID_NODEV_NOEXEC),
            None::<&str>,
        ) {
            log::warn!("mounting configfs on {}: {e}", cfg.display());
        }
    }
    // /dev/ptmx must be the devpts instance's multiplexer for ptys made in the guest.
    let ptmx = Path::new("/dev/ptmx");
    if !ptmx.exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", ptmx);
    }
    for (l, t) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(l).exists() {
            let _ = std::os::unix::fs::symlink(t, l);
        }
    }
}

/// Enable the cpu/memory/pids controllers for the containers' cgroups under `<root>/kata-cc`.
pub fn setup_cgroups(root: &Path) {
    let enable = |dir: &Path| {
        let f = dir.join("cgroup.subtree_control");
        if let Err(e) = std::fs::write(&f, CONTROLLERS) {
            log::warn!("enabling {CONTROLLERS} in {}: {e}", f.display());
        }
    };
    enable(root);
    let ours = root.join("kata-cc");
    if let Err(e) = std::fs::create_dir_all(&ours) {
        log::warn!("creating {}: {e}", ours.display());
        return;
    }
    enable(&ours);
}

/// PID 1 has the kernel console as stdio already; make sure of it and keep stdin away from it.
pub fn console() {
    use std::os::fd::AsRawFd;
    if let Ok(c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        // SAFETY: dup2 onto the standard descriptors; `c` stays valid for the call.
        unsafe {
            libc::dup2(c.as_raw_fd(), 1);
            libc::dup2(c.as_raw_fd(), 2);
        }
    }
    if let Ok(n) = std::fs::File::open("/dev/null") {
        // SAFETY: as above.
        unsafe {
            libc::dup2(n.as_raw_fd(), 0);
        }
    }
}

/// Last resort for PID 1: the kernel panics if init exits, so power the VM off instead.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
