//! kata-cc-init: `/init` of the kata-cc initrd (PID 1 until it hands over to the agent).
//!
//! Opens the rootfs disk as a dm-verity device with the root hash from the kernel command line, copies it all once into guest memory (so that any
//! corrupted block stops the boot here, and the disk is not read again), mounts the copy
//! read-only and switch_root's into /sbin/kata-cc-agent. Any failure
//! prints one line to the console and powers the VM off at once: the host reads the console
//! log, so the VM must never hang. One static binary instead of a shell with a helper process
//! per step: every process start is expensive under emulation.
//!
//! Kernel command line parameters (written by hack/bake-image.sh):
//!   kata_cc.roothash=<hex>     dm-verity root hash (sha256) of the rootfs image
//!   kata_cc.salt=<hex>|-       dm-verity salt
//!   kata_cc.hashoffset=<bytes> where the hash tree starts in the image (= size of the erofs
//!                              data); a veritysetup superblock sits there, the tree follows
//!   kata_cc.verify=full|lazy   full (default): copy the whole device once at boot; lazy: mount
//!                              the device itself (each block checked when read)
//!   kata_cc.disk=<dev>         rootfs block device (default /dev/vda)
//!   kata_cc.debug=1            print each step with the uptime
//!
//! The kernel has every driver the boot needs built in (hack/kernel.sh): the init loads no
//! modules.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

const NEWROOT: &str = "/newroot";
const DM_NAME: &str = "kata-cc-root";
const BLOCK: u64 = 4096;
const AGENT: &str = "/sbin/kata-cc-agent";
/// A ramfs for the verified rootfs image: erofs mounts a file only if its file system reads
/// pages itself (ramfs does, the initramfs' tmpfs does not). Detached once erofs holds the file.
const COPY_DIR: &str = "/rootfs-copy";
const ROOTFS_COPY: &str = "/rootfs-copy/rootfs.erofs";
/// The shim looks for exactly this phrase in the console log.
const NOT_VERIFIED: &str = "kata-cc: rootfs did not verify";

fn off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached if the reboot syscall failed: PID 1 exiting panics the kernel, and
    // panic=1 + QEMU's -no-reboot end the VM.
    std::process::exit(1);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn not_verified(why: &str) -> ! {
    say(&format!("{NOT_VERIFIED}: {why}"));
    off()
}

fn fatal(why: &str) -> ! {
    say(&format!("kata-cc: init failed: {why}"));
    off()
}

/// A kernel command line that must not boot (said as a verification failure).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum ParamError {
    #[error("kata_cc.roothash missing or not lower-case hex: '{0}'")]
    RoothashNotHex(String),
    /// The root hash's length in hex digits.
    #[error("kata_cc.roothash must be 64 hex digits (sha256), got {0}")]
    RoothashLength(usize),
    #[error("kata_cc.salt missing or not hex: '{0}'")]
    Salt(String),
    #[error("kata_cc.hashoffset missing or not a number: '{0}'")]
    HashoffsetNotNumber(String),
    #[error("kata_cc.hashoffset {0} is not a positive multiple of {BLOCK}")]
    HashoffsetAlignment(u64),
}

struct Params {
    roothash: String,
    salt: String,
    hashoffset: u64,
    verify_full: bool,
    disk: String,
    debug: bool,
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The parameters, checked before anything touches the disk: a command line without a root
/// hash must not be able to boot an unverified rootfs. Err: why not (a verification failure).
fn params(cmdline: &str) -> Result<Params, ParamError> {
    let mut p = Params {
        roothash: String::new(),
        salt: String::new(),
        hashoffset: 0,
        verify_full: true,
        disk: "/dev/vda".into(),
        debug: false,
    };
    let mut hashoffset = String::new();
    for arg in cmdline.split_whitespace() {
        let Some((k, v)) = arg.split_once('=') else {
            continue;
        };
        match k {
            "kata_cc.roothash" => p.roothash = v.into(),
            "kata_cc.salt" => p.salt = v.into(),
            "kata_cc.hashoffset" => hashoffset = v.into(),
            "kata_cc.verify" => p.verify_full = v != "lazy",
            "kata_cc.disk" => p.disk = v.into(),
            "kata_cc.debug" => p.debug = v == "1",
            _ => {}
        }
    }
    if !is_lower_hex(&p.roothash) {
        return Err(ParamError::RoothashNotHex(p.roothash));
    }
    if p.roothash.len() != 64 {
        return Err(ParamError::RoothashLength(p.roothash.len()));
    }
    if p.salt != "-" && !is_lower_hex(&p.salt) {
        return Err(ParamError::Salt(p.salt));
    }
    p.hashoffset = match hashoffset.parse::<u64>() {
        Ok(n) if hashoffset.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(ParamError::HashoffsetNotNumber(hashoffset)),
    };
    if p.hashoffset == 0 || !p.hashoffset.is_multiple_of(BLOCK) {
        return Err(ParamError::HashoffsetAlignment(p.hashoffset));
    }
    Ok(p)
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
        fatal(&format!("mount {fstype} on {target}: {e}"));
    }
}

// Device-mapper ioctls (linux/dm-ioctl.h): struct dm_ioctl is 312 bytes, the ioctl numbers are
// _IOWR(0xfd, cmd, struct dm_ioctl).
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const fn dm_iowr(cmd: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | cmd
}
const DM_DEV_CREATE: u64 = dm_iowr(3);
const DM_DEV_SUSPEND: u64 = dm_iowr(6);
const DM_TABLE_LOAD: u64 = dm_iowr(9);
const DM_READONLY_FLAG: u32 = 1;

/// The device number in a dm_ioctl's `dev` (the kernel's huge_encode_dev): minor low 8 bits,
/// major bits 8..20, minor high bits from bit 20.
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// A dm_ioctl header for device `name` followed by `payload`; `data_size` covers both.
fn dm_buffer(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; DM_IOCTL_SIZE];
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(&mut b, 0, 4); // version 4.0.0: any kernel with the verity target speaks it
    put(&mut b, 12, (DM_IOCTL_SIZE + payload.len()) as u32); // data_size
    put(&mut b, 16, DM_IOCTL_SIZE as u32); // data_start
    put(&mut b, 20, target_count);
    put(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    b.extend_from_slice(payload);
    b
}

fn dm_call(control: &File, req: u64, buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `buf` starts with a dm_ioctl whose data_size is the buffer's length.
    let r = unsafe { libc::ioctl(control.as_raw_fd(), req as _, buf.as_mut_ptr()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates, loads and resumes the read-only verity device; returns its device number.
fn dm_verity(table_len: u64, params: &str) -> std::io::Result<libc::dev_t> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    let mut create = dm_buffer(DM_NAME, 0, 0, &[]);
    dm_call(&control, DM_DEV_CREATE, &mut create)?;
    let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap_or_default());
    // One target: sector_start, length, status, next, target_type[16], then the parameters.
    let mut spec = Vec::with_capacity(DM_TARGET_SPEC_SIZE + params.len() + 8);
    spec.extend_from_slice(&0u64.to_ne_bytes());
    spec.extend_from_slice(&table_len.to_ne_bytes());
    spec.extend_from_slice(&0i32.to_ne_bytes());
    let next = (DM_TARGET_SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    spec.extend_from_slice(&(next as u32).to_ne_bytes());
    let mut ttype = [0u8; 16];
    ttype[..6].copy_from_slice(b"verity");
    spec.extend_from_slice(&ttype);
    spec.extend_from_slice(params.as_bytes());
    spec.resize(next, 0);
    let mut load = dm_buffer(DM_NAME, DM_READONLY_FLAG, 1, &spec);
    dm_call(&control, DM_TABLE_LOAD, &mut load)?;
    // DM_DEV_SUSPEND without the suspend flag resumes: the loaded table goes live.
    let mut resume = dm_buffer(DM_NAME, 0, 0, &[]);
    dm_call(&control, DM_DEV_SUSPEND, &mut resume)?;
    let (major, minor) = decode_dev(dev);
    Ok(libc::makedev(major, minor))
}

/// Why the rootfs copy failed: reading the device (dm-verity refuses a block that does not match
/// its hash tree) or writing the copy (guest memory).
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies all of `dev` (read with direct I/O: dm-verity checks every block) into `copy` and
/// returns the bytes copied. The guest then runs from the copy, in its own memory: the agent's
/// pages are neither read through the disk nor hashed a second time (0.06-0.08 s less from the
/// init's start to the agent's ready line under emulation, for 7.4 MB of guest memory), and the
/// host cannot hand the guest other bytes later for a block already checked.
fn copy_verified(dev: &str, copy: &str) -> Result<u64, CopyError> {
    const BUF: usize = 1 << 20;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(CopyError::Read)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(copy)
        .map_err(CopyError::Write)?;
    let layout = std::alloc::Layout::from_size_align(BUF, 4096)
        .map_err(|e| CopyError::Write(std::io::Error::other(e.to_string())))?;
    // SAFETY: non-zero size; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc(layout) };
    if ptr.is_null() {
        return Err(CopyError::Write(std::io::Error::other("out of memory")));
    }
    // SAFETY: `ptr` is a live allocation of BUF bytes, used only here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, BUF) };
    let mut total = 0u64;
    let r = loop {
        match std::io::Read::read(&mut f, buf) {
            Ok(0) => break Ok(total),
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    break Err(CopyError::Write(e));
                }
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(CopyError::Read(e)),
        }
    };
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(ptr, layout) };
    r
}

/// Deletes the initramfs' own files (not other file systems mounted below it), as switch_root
/// does: their memory goes back to the guest.
fn delete_contents(dir: &Path, root_dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != root_dev {
            continue;
        }
        if md.is_dir() {
            delete_contents(&p, root_dev);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn main() {
    // Everything here assumes the initrd of a VM; a failure powers the machine off.
    if std::process::id() != 1 {
        eprintln!("kata-cc-init: runs only as PID 1 of the kata-cc guest (the initrd's /init)");
        std::process::exit(2);
    }
    let t0 = Instant::now();
    mount_kernel_filesystems();
    console_as_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let p = params(&cmdline).unwrap_or_else(|why| not_verified(&why.to_string()));
    let debug = p.debug;
    let step = move |what: &str| {
        if debug {
            say(&format!(
                "kata-cc: init: [{}] {what}",
                kata_cc_guest::uptime_text()
            ));
        }
    };

    wait_for_disk(&p.disk, &step);
    let dev = open_verity(&p, &step);
    let source = if p.verify_full {
        step(&format!("copying all of {dev} to {ROOTFS_COPY}"));
        let _ = std::fs::create_dir_all(COPY_DIR);
        mnt(
            "ramfs",
            COPY_DIR,
            "ramfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        );
        match copy_verified(&dev, ROOTFS_COPY) {
            Ok(_) => {}
            Err(CopyError::Read(e)) => not_verified(&format!(
                "reading {dev} failed (a block does not match the hash tree): {e}"
            )),
            Err(CopyError::Write(e)) => fatal(&format!("copying {dev} to {ROOTFS_COPY}: {e}")),
        }
        ROOTFS_COPY
    } else {
        dev.as_str()
    };
    mount_rootfs(source, &step);
    if p.verify_full {
        // erofs holds the file open; nothing else needs to see it.
        if let Err(e) = nix::mount::umount2(COPY_DIR, nix::mount::MntFlags::MNT_DETACH) {
            fatal(&format!("detaching {COPY_DIR}: {e}"));
        }
    }
    prepare_new_root();
    step(&format!(
        "switch_root after {} ms",
        t0.elapsed().as_millis()
    ));
    say(&format!(
        "kata-cc: rootfs verified (root hash {}), starting {AGENT}",
        p.roothash
    ));
    switch_root_and_exec_agent(&step);
}

/// /proc, /sys and /dev of the initramfs (moved into the new root later).
fn mount_kernel_filesystems() {
    let _ = std::fs::create_dir_all("/proc");
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid_nodev_noexec, None);
    mnt("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None);
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
}

/// The console for our output and, after exec, the agent's.
fn console_as_stdio() {
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(c.as_raw_fd(), fd) };
        }
    }
}

/// virtio_blk probes asynchronously; devtmpfs creates the node.
fn wait_for_disk(disk: &str, step: &dyn Fn(&str)) {
    step(&format!("waiting for {disk}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device()) {
        if Instant::now() >= deadline {
            fatal(&format!("rootfs disk {disk} did not appear within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The rootfs disk opened as a dm-verity device with the command line's root hash; returns its
/// device node.
fn open_verity(p: &Params, step: &dyn Fn(&str)) -> String {
    let data_blocks = p.hashoffset / BLOCK;
    // veritysetup format wrote its superblock at the hash offset; the tree starts one block later.
    let hash_start = data_blocks + 1;
    let params_str = format!(
        "1 {d} {d} {BLOCK} {BLOCK} {data_blocks} {hash_start} sha256 {} {}",
        p.roothash,
        p.salt,
        d = p.disk
    );
    let sectors = data_blocks * (BLOCK / 512);
    step(&format!(
        "dm-verity {DM_NAME}: 0 {sectors} verity {params_str}"
    ));
    let devt = dm_verity(sectors, &params_str)
        .unwrap_or_else(|e| not_verified(&format!("cannot open {} as dm-verity: {e}", p.disk)));
    let dev = format!("/dev/mapper/{DM_NAME}");
    let _ = std::fs::create_dir_all("/dev/mapper");
    let cdev = CString::new(dev.clone()).unwrap_or_default();
    // SAFETY: mknod of a block device node at a path we own.
    if unsafe { libc::mknod(cdev.as_ptr(), libc::S_IFBLK | 0o600, devt) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            not_verified(&format!("device node {dev}: {e}"));
        }
    }
    dev
}

/// The verified erofs at NEWROOT, which must carry the agent.
fn mount_rootfs(dev: &str, step: &dyn Fn(&str)) {
    let _ = std::fs::create_dir_all(NEWROOT);
    step("mount erofs");
    if let Err(e) = mount(
        Some(dev),
        NEWROOT,
        Some("erofs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        not_verified(&format!("mount of {dev} failed: {e}"));
    }
    let agent = format!("{NEWROOT}{AGENT}");
    if !std::fs::metadata(&agent).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0) {
        not_verified(&format!("{AGENT} missing or not executable in the rootfs"));
    }
}

/// The rootfs is read-only: writable tmpfs for /run and /tmp, the kernel file systems mounted
/// here moved over, plus the ones runc expects.
fn prepare_new_root() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(
        "tmpfs",
        &format!("{NEWROOT}/run"),
        "tmpfs",
        nosuid_nodev,
        Some("mode=0755"),
    );
    mnt(
        "tmpfs",
        &format!("{NEWROOT}/tmp"),
        "tmpfs",
        nosuid_nodev,
        Some("mode=1777"),
    );
    for fs in ["dev", "proc", "sys"] {
        if let Err(e) = mount(
            Some(format!("/{fs}").as_str()),
            format!("{NEWROOT}/{fs}").as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            fatal(&format!("mount --move /{fs}: {e}"));
        }
    }
    for d in ["dev/pts", "dev/shm"] {
        let _ = std::fs::create_dir_all(format!("{NEWROOT}/{d}"));
    }
    mnt(
        "devpts",
        &format!("{NEWROOT}/dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    mnt(
        "shm",
        &format!("{NEWROOT}/dev/shm"),
        "tmpfs",
        nosuid_nodev,
        Some("mode=1777"),
    );
    mnt(
        "cgroup2",
        &format!("{NEWROOT}/sys/fs/cgroup"),
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );
}

/// switch_root: frees the initramfs, makes the new root "/", and execs the agent. If the exec
/// fails, PID 1 exits, the kernel panics and panic=1 ends the VM.
fn switch_root_and_exec_agent(step: &dyn Fn(&str)) -> ! {
    let root_dev = std::fs::symlink_metadata("/").map(|m| m.dev()).unwrap_or(0);
    delete_contents(Path::new("/"), root_dev);
    if let Err(e) = std::env::set_current_dir(NEWROOT) {
        fatal(&format!("chdir {NEWROOT}: {e}"));
    }
    if let Err(e) = mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
        fatal(&format!("moving {NEWROOT} to /: {e}"));
    }
    if let Err(e) = nix::unistd::chroot(".") {
        fatal(&format!("chroot: {e}"));
    }
    let _ = std::env::set_current_dir("/");
    // The kernel starts init with hardly any environment; the agent and runc expect a PATH.
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    step("exec the agent");
    let prog = CString::new(AGENT).unwrap_or_default();
    let e = nix::unistd::execv(&prog, &[prog.as_c_str()]);
    fatal(&format!("exec {AGENT}: {e:?}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0fc1b7b82f8a5a9e59fc075dfe74f3cdacf8c0628c787ed7392a06d05a9f4fe8";

    #[test]
    fn command_line_parameters() {
        let p = params(&format!(
            "console=ttyS0 kata_cc.roothash={HASH} kata_cc.salt=ab12 kata_cc.hashoffset=8192"
        ))
        .unwrap();
        assert_eq!(p.roothash, HASH);
        assert_eq!((p.salt.as_str(), p.hashoffset), ("ab12", 8192));
        assert!(p.verify_full && !p.debug);
        assert_eq!(p.disk, "/dev/vda");
        let p = params(&format!(
            "kata_cc.roothash={HASH} kata_cc.salt=- kata_cc.hashoffset=4096 kata_cc.verify=lazy \
             kata_cc.disk=/dev/vdb kata_cc.debug=1"
        ))
        .unwrap();
        assert!(!p.verify_full && p.debug);
        assert_eq!((p.salt.as_str(), p.disk.as_str()), ("-", "/dev/vdb"));
    }

    /// The console line the host reads after "kata-cc: rootfs did not verify: ".
    #[test]
    fn parameter_errors_read_as_before() {
        let e = params("kata_cc.roothash=AB kata_cc.salt=- kata_cc.hashoffset=4096").err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("kata_cc.roothash missing or not lower-case hex: 'AB'")
        );
        assert_eq!(
            ParamError::HashoffsetAlignment(4097).to_string(),
            "kata_cc.hashoffset 4097 is not a positive multiple of 4096"
        );
        assert_eq!(
            ParamError::RoothashLength(63).to_string(),
            "kata_cc.roothash must be 64 hex digits (sha256), got 63"
        );
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let cases = [
            (
                "kata_cc.salt=- kata_cc.hashoffset=4096".to_string(),
                "kata_cc.roothash missing",
            ),
            (
                format!(
                    "kata_cc.roothash={} kata_cc.salt=- kata_cc.hashoffset=4096",
                    &HASH[1..]
                ),
                "must be 64 hex digits",
            ),
            (
                format!(
                    "kata_cc.roothash={} kata_cc.salt=- kata_cc.hashoffset=4096",
                    HASH.to_uppercase()
                ),
                "not lower-case hex",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.hashoffset=4096"),
                "kata_cc.salt missing",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.salt=xyz kata_cc.hashoffset=4096"),
                "kata_cc.salt",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.salt=-"),
                "kata_cc.hashoffset missing",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.salt=- kata_cc.hashoffset=-4096"),
                "not a number",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.salt=- kata_cc.hashoffset=4097"),
                "positive multiple",
            ),
            (
                format!("kata_cc.roothash={HASH} kata_cc.salt=- kata_cc.hashoffset=0"),
                "positive multiple",
            ),
        ];
        for (cmdline, want) in cases {
            let e = params(&cmdline)
                .err()
                .unwrap_or_else(|| panic!("accepted: {cmdline}"))
                .to_string();
            assert!(e.contains(want), "{cmdline}: {e}");
        }
    }

    /// The layout of linux/dm-ioctl.h's struct dm_ioctl (version, data_size, data_start,
    /// target_count, flags, name at offset 48) and the ioctl numbers dmsetup uses.
    #[test]
    fn dm_ioctl_layout() {
        let b = dm_buffer("kata-cc-root", DM_READONLY_FLAG, 1, &[9u8; 48]);
        let u32_at = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(b.len(), 312 + 48);
        assert_eq!((u32_at(0), u32_at(4), u32_at(8)), (4, 0, 0));
        assert_eq!((u32_at(12), u32_at(16), u32_at(20)), (360, 312, 1));
        assert_eq!(u32_at(28), 1);
        assert_eq!(&b[48..60], b"kata-cc-root");
        assert_eq!(b[60], 0);
        assert_eq!(b[312], 9);
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
        // 254:0 (dm-0) and a minor above 255: 254:300.
        assert_eq!(decode_dev(254 << 8), (254, 0));
        assert_eq!(
            decode_dev((300 & 0xff) | (254 << 8) | ((300 & !0xff) << 12)),
            (254, 300)
        );
    }
}
