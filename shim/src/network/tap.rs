//! The TAP device QEMU's virtio-net backend reads and writes, and the vhost-net descriptor that
//! lets the kernel do it instead.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The TAP of the `index`th link, Kata's name.
pub fn tap_name(index: usize) -> String {
    format!("tap{index}_kata")
}

/// Creates the TAP `name` in the calling thread's network namespace and returns its queue
/// descriptor (close-on-exec; the QEMU spawn clears that for its child only). The flags are
/// Kata's: a TAP (Ethernet frames), no packet-information prefix, with the virtio-net header
/// QEMU exchanges with the guest. Not persistent: the device goes away with the last
/// descriptor, so a shim that dies (and its QEMU with it) leaves no TAP behind.
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TAP name {name:?} must have 1 to {} bytes",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = above_stdio(OwnedFd::from(tun))?;
    // SAFETY: a zeroed ifreq is valid; the name fits (checked) and stays NUL-terminated.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A descriptor of `/dev/vhost-net` when the host has a usable one (QEMU then moves the NIC's
/// data path into the kernel), else None.
pub fn open_vhost_net() -> Option<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/vhost-net")
        .ok()?;
    above_stdio(OwnedFd::from(f)).ok()
}

/// QEMU's child gets its stdio on 0-2: a descriptor passed by number must not be one of them.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(tap_name(0), "tap0_kata");
        assert_eq!(tap_name(12), "tap12_kata");
        let e = create_tap("a-name-that-is-too-long").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
