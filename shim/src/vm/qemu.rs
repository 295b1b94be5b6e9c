//! The QEMU command line, built by a pure function so it can be checked exactly.

use std::path::{Path, PathBuf};

use super::accel::Accel;
use crate::config::QemuConfig;
use crate::sizing::VmSize;

/// File names inside the sandbox state dir.
pub const CONSOLE_LOG: &str = "console.log";
pub const QMP_SOCK: &str = "qmp.sock";
pub const VHOST_USER_SOCK: &str = "vhost.sock";
pub const HYBRID_VSOCK_SOCK: &str = "vsock.sock";
pub const QEMU_LOG: &str = "qemu.log";
pub const BACKEND_LOG: &str = "vsock-backend.log";

/// How the guest's virtio-vsock device is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// `/dev/vhost-vsock` (kernel vhost); the host talks AF_VSOCK to `guest_cid`.
    Kernel { guest_cid: u32 },
    /// vhost-user backend (vhost-device-vsock) listening on `socket`.
    VhostUser { socket: PathBuf },
}

/// A VM NIC backed by a TAP the shim opened (`network::PodNetwork`), passed by descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The `-netdev` id.
    pub id: String,
    /// The TAP's queue descriptor; QEMU inherits it under the same number.
    pub tap_fd: i32,
    /// `/dev/vhost-net`, inherited the same way, when the host has one.
    pub vhost_fd: Option<i32>,
    /// The guest NIC's MAC: the pod link's, so the pod's network sees the VM's frames as its
    /// own.
    pub mac: String,
}

/// The `-netdev`/`-device` pairs of the VM NICs. `romfile=` (empty): no network boot ROM,
/// which a directly booted kernel never uses; the firmware has less to load and run, and the
/// host needs no ROM files. A confidential guest needs nothing more: QEMU turns
/// `iommu_platform` on for every virtio device of a machine with confidential-guest-support.
pub fn nic_args(nics: &[NetDevice]) -> Vec<String> {
    let mut a = Vec::new();
    for n in nics {
        let vhost = match n.vhost_fd {
            Some(v) => format!("vhost=on,vhostfd={v}"),
            None => "vhost=off".to_string(),
        };
        a.push("-netdev".to_string());
        a.push(format!("tap,id={},fd={},{vhost}", esc(&n.id), n.tap_fd));
        a.push("-device".to_string());
        a.push(format!(
            "virtio-net-pci,netdev={},mac={},romfile=",
            esc(&n.id),
            esc(&n.mac)
        ));
    }
    a
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct QemuLaunch<'a> {
    pub id: &'a str,
    pub qemu: &'a QemuConfig,
    pub size: VmSize,
    pub accel: Accel,
    pub vsock: VsockDevice,
    pub state_dir: &'a Path,
    /// Free page reporting (virtio-balloon): the guest hands pages it frees back to the host.
    /// Not for SEV-SNP guests, whose memory the host cannot reclaim that way.
    pub free_page_reporting: bool,
    /// `[agent.kata] enable_debug`: the agent logs at debug level and prints every request's
    /// policy input on the console ([`AGENT_DEBUG_PARAM`] on the kernel command line).
    pub agent_debug: bool,
}

/// The kernel parameter that turns the agent's debug log on: the kernel passes `NAME=value`
/// parameters without a dot to init as environment, and init passes it to the agent. It is part
/// of the command line, so of an SNP launch's measurement: a debug guest measures differently.
pub const AGENT_DEBUG_PARAM: &str = "KATA_CC_AGENT_LOG=debug";

/// The guest kernel's command line: the configured one, plus the agent's debug switch.
pub fn kernel_cmdline(q: &QemuConfig, agent_debug: bool) -> String {
    if agent_debug {
        format!("{} {AGENT_DEBUG_PARAM}", q.kernel_params)
    } else {
        q.kernel_params.clone()
    }
}

/// QEMU option values are comma separated; a literal comma is written as two.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn p(path: &Path) -> String {
    esc(&path.to_string_lossy())
}

/// The arguments after the QEMU binary. No `-daemonize`: QEMU stays our child.
pub fn qemu_args(l: &QemuLaunch<'_>) -> Vec<String> {
    let q = l.qemu;
    let mem = l.size.memory_mib;
    let machine = q.machine_type.as_deref().unwrap_or("q35");
    let mut a: Vec<String> = Vec::new();
    let mut push = |x: &[&str]| a.extend(x.iter().map(|s| s.to_string()));

    push(&["-name", &format!("kata-cc-{}", esc(l.id))]);
    match l.accel {
        Accel::Kvm => push(&[
            "-machine",
            &format!("{machine},accel=kvm,memory-backend=mem"),
        ]),
        // `-machine accel=` cannot carry the accelerator's own options.
        Accel::Tcg => {
            push(&["-machine", &format!("{machine},memory-backend=mem")]);
            match q.tcg_tb_size {
                0 => push(&["-accel", "tcg"]),
                n => push(&["-accel", &format!("tcg,tb-size={n}")]),
            }
        }
    }
    push(&[
        "-cpu",
        match l.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        },
    ]);
    push(&["-smp", &l.size.vcpus.to_string()]);
    push(&["-m", &format!("{mem}M")]);
    // memfd + share=on: the vhost-user backend maps guest memory.
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
    ]);
    if !q.firmware.as_os_str().is_empty() {
        push(&["-bios", &p(&q.firmware)]);
    }
    push(&["-kernel", &p(&q.kernel)]);
    push(&["-initrd", &p(&q.initrd)]);
    push(&["-append", &kernel_cmdline(q, l.agent_debug)]);
    push(&[
        "-drive",
        &format!(
            "file={},if=none,id=rootfs,format=raw,readonly=on",
            p(&q.image)
        ),
    ]);
    push(&["-device", "virtio-blk-pci,drive=rootfs"]);
    match &l.vsock {
        VsockDevice::Kernel { guest_cid } => {
            push(&["-device", &format!("vhost-vsock-pci,guest-cid={guest_cid}")]);
        }
        VsockDevice::VhostUser { socket } => {
            push(&["-chardev", &format!("socket,id=vsock,path={}", p(socket))]);
            push(&["-device", "vhost-user-vsock-pci,chardev=vsock"]);
        }
    }
    if l.free_page_reporting {
        push(&["-device", "virtio-balloon-pci,free-page-reporting=on"]);
    }
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", p(&l.state_dir.join(QMP_SOCK))),
    ]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", p(&l.state_dir.join(CONSOLE_LOG))),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_cfg() -> QemuConfig {
        QemuConfig {
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.img".into(),
            image: "/g/rootfs.img".into(),
            kernel_params: "console=ttyS0 kata_cc.roothash=ab".into(),
            ..Default::default()
        }
    }

    #[test]
    fn golden_tcg_vhost_user() {
        let mut q = qemu_cfg();
        q.tcg_tb_size = 32;
        let args = qemu_args(&QemuLaunch {
            id: "pod1",
            qemu: &q,
            size: VmSize {
                memory_mib: 2560,
                vcpus: 3,
            },
            accel: Accel::Tcg,
            vsock: VsockDevice::VhostUser {
                socket: "/run/kata-cc/sandboxes/pod1/vhost.sock".into(),
            },
            state_dir: Path::new("/run/kata-cc/sandboxes/pod1"),
            free_page_reporting: true,
            agent_debug: false,
        });
        let expected = "-name kata-cc-pod1 \
            -machine q35,memory-backend=mem -accel tcg,tb-size=32 -cpu max -smp 3 -m 2560M \
            -object memory-backend-memfd,id=mem,size=2560M,share=on \
            -kernel /g/vmlinuz -initrd /g/initrd.img -append console=ttyS0§kata_cc.roothash=ab \
            -drive file=/g/rootfs.img,if=none,id=rootfs,format=raw,readonly=on \
            -device virtio-blk-pci,drive=rootfs \
            -chardev socket,id=vsock,path=/run/kata-cc/sandboxes/pod1/vhost.sock \
            -device vhost-user-vsock-pci,chardev=vsock \
            -device virtio-balloon-pci,free-page-reporting=on \
            -qmp unix:/run/kata-cc/sandboxes/pod1/qmp.sock,server=on,wait=off \
            -chardev file,id=console,path=/run/kata-cc/sandboxes/pod1/console.log \
            -serial chardev:console -nographic -nodefaults -no-user-config -no-reboot";
        let expected: Vec<String> = expected
            .split_whitespace()
            .map(|s| s.replace('§', " "))
            .collect();
        assert_eq!(args, expected);
    }

    #[test]
    fn nics_by_descriptor() {
        assert!(nic_args(&[]).is_empty());
        let nics = [
            NetDevice {
                id: "net0".into(),
                tap_fd: 17,
                vhost_fd: None,
                mac: "46:7c:91:8d:d4:20".into(),
            },
            NetDevice {
                id: "net1".into(),
                tap_fd: 18,
                vhost_fd: Some(19),
                mac: "aa:bb:cc:dd:ee:ff".into(),
            },
        ];
        assert_eq!(
            nic_args(&nics).join(" "),
            "-netdev tap,id=net0,fd=17,vhost=off \
             -device virtio-net-pci,netdev=net0,mac=46:7c:91:8d:d4:20,romfile= \
             -netdev tap,id=net1,fd=18,vhost=on,vhostfd=19 \
             -device virtio-net-pci,netdev=net1,mac=aa:bb:cc:dd:ee:ff,romfile="
        );
    }

    #[test]
    fn golden_kvm_vhost_kernel_with_firmware() {
        let mut q = qemu_cfg();
        q.firmware = "/fw/OVMF,x.fd".into();
        let args = qemu_args(&QemuLaunch {
            id: "p",
            qemu: &q,
            size: VmSize {
                memory_mib: 2048,
                vcpus: 1,
            },
            accel: Accel::Kvm,
            vsock: VsockDevice::Kernel { guest_cid: 42 },
            state_dir: Path::new("/s"),
            free_page_reporting: false,
            agent_debug: true,
        });
        let joined = args.join(" ");
        assert!(
            args.contains(&format!(
                "console=ttyS0 kata_cc.roothash=ab {AGENT_DEBUG_PARAM}"
            )),
            "{joined}"
        );
        assert!(!joined.contains("balloon"));
        assert!(!joined.contains("-accel"));
        assert!(
            joined.contains("-machine q35,accel=kvm,memory-backend=mem -cpu host -smp 1 -m 2048M")
        );
        assert!(joined.contains("-bios /fw/OVMF,,x.fd -kernel"));
        assert!(joined.contains("-device vhost-vsock-pci,guest-cid=42 -qmp"));
        assert!(!joined.contains("vhost-user"));
        assert!(!joined.contains("-daemonize"));
    }
}
