//! Host tier, no VM (root): the pod network's host side in namespaces the test makes itself. A
//! "pod" namespace holds `eth0` (a veth with an address, an MTU and a default route, as CNI
//! leaves it), its peer sits in a second "node" namespace. `PodNetwork` must find `eth0`,
//! put Kata's tcfilter TAP and redirects beside it, carry frames both ways between the peer
//! and the TAP's descriptor (the VM's side), and remove everything again. Frames are raw
//! Ethernet with a local experimental EtherType: no IP traffic leaves the pair.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kata_cc_shim::config::InterworkingModel;
use kata_cc_shim::network::PodNetwork;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::tc::TcAttribute;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// IEEE 802 local experimental EtherType.
const ETHERTYPE: u16 = 0x88b5;
/// The TAP's virtio-net header (`struct virtio_net_hdr`), before every frame.
const VNET_HDR: usize = 10;
const PEER: &str = "kcc-peer";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A network namespace the test made, bind-mounted on a file in a temp dir; unmounted on drop.
struct TestNetns {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestNetns {
    fn new() -> TestNetns {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        File::create(&path).unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        })
        .join()
        .unwrap();
        TestNetns { path, _dir: dir }
    }

    /// Runs `f` with a netlink handle inside the namespace (on a thread of its own).
    fn netlink<T: Send + 'static, Fut>(&self, f: impl FnOnce(Handle) -> Fut + Send + 'static) -> T
    where
        Fut: std::future::Future<Output = T>,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                f(handle).await
            })
        })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(&self.path).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn link_by_name(
    h: &Handle,
    name: &str,
) -> Option<rtnetlink::packet_route::link::LinkMessage> {
    h.link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
}

/// The pod as CNI leaves it: eth0 10.251.0.2/24, MTU 1400, up, default via 10.251.0.1; its
/// peer up in the node namespace.
fn pod_and_node() -> (TestNetns, TestNetns) {
    let pod = TestNetns::new();
    let node = TestNetns::new();
    let node_fd = File::open(&node.path).unwrap();
    pod.netlink(move |h| async move {
        h.link()
            .add(LinkVeth::new("eth0", PEER).build())
            .execute()
            .await
            .unwrap();
        let peer = link_by_name(&h, PEER).await.unwrap().header.index;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(node_fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let eth0 = link_by_name(&h, "eth0").await.unwrap().header.index;
        h.link()
            .set(LinkUnspec::new_with_index(eth0).mtu(1400).up().build())
            .execute()
            .await
            .unwrap();
        h.address()
            .add(eth0, "10.251.0.2".parse().unwrap(), 24)
            .execute()
            .await
            .unwrap();
        h.route()
            .add(
                RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .output_interface(eth0)
                    .gateway("10.251.0.1".parse().unwrap())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
    });
    node.netlink(|h| async move {
        let peer = link_by_name(&h, PEER).await.unwrap().header.index;
        h.link()
            .set(LinkUnspec::new_with_index(peer).up().build())
            .execute()
            .await
            .unwrap();
    });
    (pod, node)
}

/// What the pod namespace holds: tap0_kata (MTU, up), and the tc kinds (qdiscs and filters)
/// on eth0 and the TAP.
#[derive(Debug, PartialEq)]
struct PodState {
    tap: Option<(u32, bool)>,
    eth0_up: bool,
    eth0_tc: Vec<String>,
    tap_tc: Vec<String>,
}

fn pod_state(pod: &TestNetns) -> PodState {
    pod.netlink(|h| async move {
        let kinds = |msgs: Vec<rtnetlink::packet_route::tc::TcMessage>| -> Vec<String> {
            let mut k: Vec<String> = msgs
                .iter()
                .flat_map(|m| m.attributes.iter())
                .filter_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
                .collect();
            k.sort();
            k.dedup();
            k
        };
        let tc = |index: u32| {
            let h = h.clone();
            async move {
                let qdiscs: Vec<_> = h
                    .qdisc()
                    .get()
                    .index(index as i32)
                    .execute()
                    .try_collect()
                    .await
                    .unwrap();
                let qdiscs: Vec<_> = qdiscs
                    .into_iter()
                    .filter(|q| q.header.index == index as i32)
                    .filter(|q| q.attributes.contains(&TcAttribute::Kind("ingress".into())))
                    .collect();
                let filters: Vec<_> = if qdiscs.is_empty() {
                    Vec::new()
                } else {
                    h.traffic_filter(index as i32)
                        .get()
                        .ingress()
                        .execute()
                        .try_collect()
                        .await
                        .unwrap()
                };
                let mut k = kinds(qdiscs);
                k.extend(kinds(filters));
                k
            }
        };
        let eth0 = link_by_name(&h, "eth0").await.unwrap();
        let up = |l: &rtnetlink::packet_route::link::LinkMessage| {
            l.header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up)
        };
        let tap = link_by_name(&h, "tap0_kata").await;
        PodState {
            tap: tap.as_ref().map(|t| {
                let mtu = t
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap();
                (mtu, up(t))
            }),
            eth0_up: up(&eth0),
            eth0_tc: tc(eth0.header.index).await,
            tap_tc: match &tap {
                Some(t) => tc(t.header.index).await,
                None => Vec::new(),
            },
        }
    })
}

/// A packet socket for our EtherType on the peer, in the node namespace.
fn peer_socket(node: &TestNetns) -> OwnedFd {
    node.run(|| {
        let proto = ETHERTYPE.to_be();
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(PEER).unwrap();
        // SAFETY: a NUL-terminated name; the lookup runs in this thread's namespace.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "{PEER}: {}", std::io::Error::last_os_error());
        // SAFETY: a zeroed sockaddr_ll with family, protocol and interface set is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        fd
    })
}

fn frame(src: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Reads frames from `fd` (skipping `skip` header bytes) until one carries our EtherType and
/// `payload`, within a few seconds.
fn receive(fd: i32, skip: usize, payload: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd; read into a buffer we own.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let f = &buf[skip.min(n as usize)..n as usize];
        if f.len() >= 14 + payload.len()
            && f[12..14] == ETHERTYPE.to_be_bytes()
            && &f[14..14 + payload.len()] == payload
        {
            return true;
        }
    }
    false
}

fn write_all(fd: i32, data: &[u8]) {
    // SAFETY: write from a buffer we own.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[tokio::test]
async fn tcfilter_connects_the_veth_to_the_tap_and_is_removed() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let (pod, node) = pod_and_node();
    let net = PodNetwork::setup(InterworkingModel::Tcfilter, Some(&pod.path))
        .await
        .unwrap()
        .expect("eth0 is configured: one NIC");

    // The scan: eth0 with its MAC, MTU and address; the default route only.
    let links = net.links();
    assert_eq!(links.len(), 1);
    let eth0 = &links[0];
    assert_eq!((eth0.name.as_str(), eth0.mtu), ("eth0", 1400));
    let reqs = net.requests();
    let iface = reqs.interfaces[0].interface.clone().unwrap();
    assert_eq!(iface.hwAddr, eth0.mac_string());
    assert_eq!(iface.mtu, 1400);
    let v4: Vec<(String, String)> = iface
        .IPAddresses
        .iter()
        .filter(|a| a.family.value() == 0)
        .map(|a| (a.address.clone(), a.mask.clone()))
        .collect();
    assert_eq!(v4, [("10.251.0.2".to_string(), "24".to_string())]);
    let routes = &reqs.routes.as_ref().unwrap().routes.Routes;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(
        (
            routes[0].dest.as_str(),
            routes[0].gateway.as_str(),
            routes[0].device.as_str()
        ),
        ("", "10.251.0.1", "eth0")
    );
    assert!(reqs.neighbours.is_none());

    // QEMU's NIC: the TAP by descriptor, the veth's MAC.
    let devs = net.qemu_devices();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].mac, eth0.mac_string());
    assert_eq!(
        devs[0].vhost_fd.is_some(),
        Path::new("/dev/vhost-net").exists()
    );

    // Kata's tcfilter setup in the pod's namespace.
    let state = pod_state(&pod);
    assert_eq!(state.tap, Some((1400, true)));
    assert_eq!(state.eth0_tc, ["ingress", "u32"]);
    assert_eq!(state.tap_tc, ["ingress", "u32"]);

    // Frames cross both ways: node -> eth0 -> (redirect) -> TAP queue, and the VM's side
    // (a write on the TAP's descriptor) -> (redirect) -> eth0 -> node.
    let sock = peer_socket(&node);
    let tap_fd = devs[0].tap_fd;
    write_all(sock.as_raw_fd(), &frame(&[2, 0, 0, 0, 0, 1], b"to-the-vm"));
    assert!(
        receive(tap_fd, VNET_HDR, b"to-the-vm"),
        "the node's frame did not reach the TAP"
    );
    let mut out = vec![0u8; VNET_HDR];
    out.extend(frame(&eth0.mac, b"from-the-vm"));
    write_all(tap_fd, &out);
    assert!(
        receive(sock.as_raw_fd(), 0, b"from-the-vm"),
        "the VM's frame did not reach the node"
    );

    net.teardown().await.unwrap();
    let state = pod_state(&pod);
    assert_eq!(
        state,
        PodState {
            tap: None,
            eth0_up: false,
            eth0_tc: Vec::new(),
            tap_tc: Vec::new(),
        }
    );
}

#[tokio::test]
async fn drop_removes_everything_and_none_or_no_netns_make_no_nic() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let (pod, _node) = pod_and_node();
    let net = PodNetwork::setup(InterworkingModel::Tcfilter, Some(&pod.path))
        .await
        .unwrap()
        .unwrap();
    assert!(pod_state(&pod).tap.is_some());
    drop(net);
    let state = pod_state(&pod);
    assert_eq!((state.tap, state.eth0_tc.len()), (None, 0));

    let none = PodNetwork::setup(InterworkingModel::None, Some(&pod.path))
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(PodNetwork::setup(InterworkingModel::Tcfilter, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(pod_state(&pod).tap, None);

    // A namespace with only loopback (ctr's kind): no NIC.
    let empty = TestNetns::new();
    assert!(
        PodNetwork::setup(InterworkingModel::Tcfilter, Some(&empty.path))
            .await
            .unwrap()
            .is_none()
    );

    // A path that is no namespace: named.
    let e = PodNetwork::setup(
        InterworkingModel::Tcfilter,
        Some(Path::new("/nonexistent/ns")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/ns"), "{e}");
}

/// A failure half-way (eth0 already has an ingress qdisc, not ours) leaves nothing of ours and
/// the foreign qdisc in place.
#[tokio::test]
async fn a_failed_setup_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let (pod, _node) = pod_and_node();
    pod.netlink(|h| async move {
        let eth0 = link_by_name(&h, "eth0").await.unwrap().header.index;
        h.qdisc()
            .add(eth0 as i32)
            .ingress()
            .execute()
            .await
            .unwrap();
    });
    let e = PodNetwork::setup(InterworkingModel::Tcfilter, Some(&pod.path))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("interface eth0: add the ingress qdisc"), "{e}");
    let state = pod_state(&pod);
    assert_eq!(state.tap, None);
    assert_eq!(state.eth0_tc, ["ingress"]);
    assert!(state.eth0_up);
}
