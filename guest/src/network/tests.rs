//! The requests end to end against the kernel, in a network namespace of the test's own (a veth
//! pair stands for the VM NIC): needs root; skipped, and said, without it.

use super::*;
use agent_proto::types::{IPAddress, IPFamily};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::LinkVeth;

const MAC: [u8; 6] = [0x02, 0x4b, 0x43, 0x43, 0x00, 0x05];

/// Runs `scenario` on a thread of its own in a new network namespace (gone with the thread).
fn in_private_netns<F>(scenario: F)
where
    F: AsyncFnOnce() + Send + 'static,
{
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (makes a network namespace and links in it)");
        return;
    }
    let t = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("skipped: cannot make a network namespace: {e}");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(scenario());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

fn address(family: IPFamily, addr: &str, mask: &str) -> IPAddress {
    let mut a = IPAddress::new();
    a.family = family.into();
    a.address = addr.into();
    a.mask = mask.into();
    a
}

fn route(family: IPFamily, dest: &str, gateway: &str, device: &str, scope: u32) -> Route {
    let mut r = Route::new();
    r.family = family.into();
    r.dest = dest.into();
    r.gateway = gateway.into();
    r.device = device.into();
    r.scope = scope;
    r
}

fn addresses_of(i: &Interface) -> Vec<String> {
    let mut v: Vec<String> = i
        .IPAddresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.mask))
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    v.sort();
    v
}

fn find<'a>(routes: &'a [Route], dest: &str, family: IPFamily) -> Option<&'a Route> {
    routes
        .iter()
        .find(|r| r.dest == dest && r.family.value() == family as i32)
}

/// The test's own links: a veth pair, `kcc-nic` (the NIC, with MAC) and `eth0` (up), so that
/// UpdateInterface has to swap names.
async fn make_links(net: &Network) {
    let (_lock, r) = net.session().await.expect("netlink");
    r.0.link()
        .add(LinkVeth::new("kcc-nic", "eth0").build())
        .execute()
        .await
        .expect("adding a veth pair");
    let links = r.links().await.expect("links");
    let nic = links.iter().find(|l| l.name == "kcc-nic").expect("kcc-nic");
    let peer = links.iter().find(|l| l.name == "eth0").expect("eth0");
    r.set_link(
        LinkUnspec::new_with_index(nic.index)
            .address(MAC.to_vec())
            .build(),
        "setting the MAC".into(),
    )
    .await
    .expect("MAC");
    r.set_up(peer, true).await.expect("peer up");
}

#[test]
fn requests_configure_a_veth_in_a_private_netns() {
    in_private_netns(async || {
        let net = Network::new();
        make_links(&net).await;

        // UpdateInterface as Kata's runtime sends it (upper-case MAC accepted).
        let mut req = Interface::new();
        req.device = "eth0".into();
        req.name = "eth0".into();
        req.hwAddr = "02:4B:43:43:00:05".into();
        req.mtu = 1400;
        req.IPAddresses = vec![
            address(IPFamily::v4, "10.77.0.5", "24"),
            address(IPFamily::v6, "fd00:77::5", "64"),
        ];
        let got = net.update_interface(&req).await.expect("UpdateInterface");
        assert_eq!(
            (got.name.as_str(), got.hwAddr.as_str()),
            ("eth0", "02:4b:43:43:00:05")
        );
        assert_eq!(got.mtu, 1400);
        assert!(got.raw_flags & libc::IFF_UP as u32 != 0, "{got:?}");
        assert_eq!(addresses_of(&got), ["10.77.0.5/24", "fd00:77::5/64"]);

        // The link that held the name has the NIC's old one, and is up again.
        let list = net.list_interfaces().await.expect("ListInterfaces");
        let old = list.iter().find(|i| i.name == "kcc-nic").expect("kcc-nic");
        assert!(old.raw_flags & libc::IFF_UP as u32 != 0, "{old:?}");
        let eth0 = list.iter().find(|i| i.name == "eth0").expect("eth0");
        assert_eq!(eth0.hwAddr, "02:4b:43:43:00:05");
        assert_eq!(addresses_of(eth0), ["10.77.0.5/24", "fd00:77::5/64"]);

        // The requested addresses replace the others.
        req.IPAddresses = vec![address(IPFamily::v4, "10.77.0.6", "24")];
        let got = net.update_interface(&req).await.expect("UpdateInterface");
        assert_eq!(addresses_of(&got), ["10.77.0.6/24"]);
        req.IPAddresses = vec![
            address(IPFamily::v4, "10.77.0.5", "24"),
            address(IPFamily::v6, "fd00:77::5", "64"),
        ];
        net.update_interface(&req).await.expect("UpdateInterface");

        // UpdateRoutes: the gateway route comes first in the request, the link route it needs
        // second: added the other way round.
        let routes = net
            .update_routes(&[
                route(IPFamily::v4, "", "10.77.0.1", "eth0", 0),
                route(IPFamily::v4, "10.99.0.0/16", "", "eth0", 253),
                route(IPFamily::v4, "10.98.0.0/16", "10.99.0.1", "eth0", 0),
                route(IPFamily::v6, "", "fd00:77::1", "eth0", 0),
            ])
            .await
            .expect("UpdateRoutes");
        let default = find(&routes, "", IPFamily::v4).expect("default route");
        assert_eq!(
            (default.gateway.as_str(), default.device.as_str()),
            ("10.77.0.1", "eth0")
        );
        let link = find(&routes, "10.99.0.0/16", IPFamily::v4).expect("10.99.0.0/16");
        assert_eq!((link.gateway.as_str(), link.scope), ("", 253));
        let via = find(&routes, "10.98.0.0/16", IPFamily::v4).expect("10.98.0.0/16");
        assert_eq!(via.gateway, "10.99.0.1");
        // The kernel's route of the address is there too.
        let subnet = find(&routes, "10.77.0.0/24", IPFamily::v4).expect("10.77.0.0/24");
        assert_eq!(
            (subnet.source.as_str(), subnet.device.as_str()),
            ("10.77.0.5", "eth0")
        );
        let v6 = find(&routes, "", IPFamily::v6).expect("IPv6 default route");
        assert_eq!(v6.gateway, "fd00:77::1");

        // A second UpdateRoutes replaces them: the kernel's own route stays.
        let routes = net
            .update_routes(&[route(IPFamily::v4, "", "10.77.0.2", "eth0", 0)])
            .await
            .expect("UpdateRoutes");
        assert_eq!(
            find(&routes, "", IPFamily::v4).map(|r| r.gateway.as_str()),
            Some("10.77.0.2")
        );
        assert!(
            find(&routes, "10.99.0.0/16", IPFamily::v4).is_none(),
            "{routes:?}"
        );
        assert!(
            find(&routes, "10.98.0.0/16", IPFamily::v4).is_none(),
            "{routes:?}"
        );
        assert!(find(&routes, "", IPFamily::v6).is_none(), "{routes:?}");
        assert!(
            find(&routes, "10.77.0.0/24", IPFamily::v4).is_some(),
            "{routes:?}"
        );
        assert_eq!(net.list_routes().await.expect("ListRoutes"), routes);

        // A route through a link that does not exist: refused by name, nothing changed.
        let e = net
            .update_routes(&[route(IPFamily::v4, "", "10.77.0.3", "nope0", 0)])
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::NoLinkNamed { .. }), "{e}");
        assert!(e.to_string().contains("routes.Routes[0].device"), "{e}");
        assert_eq!(net.list_routes().await.expect("ListRoutes"), routes);

        // AddARPNeighbors: a permanent entry with its MAC.
        let mut n = ARPNeighbor::new();
        n.toIPAddress = Some(address(IPFamily::v4, "10.77.0.9", "")).into();
        n.device = "eth0".into();
        n.lladdr = "02:00:00:00:77:09".into();
        net.add_arp_neighbors(&[n.clone()])
            .await
            .expect("AddARPNeighbors");
        net.add_arp_neighbors(&[n])
            .await
            .expect("AddARPNeighbors again (replaces)");
        let (lock, r) = net.session().await.expect("netlink");
        let neighbours: Vec<_> =
            r.0.neighbours()
                .get()
                .execute()
                .try_collect()
                .await
                .expect("neighbours");
        drop(lock);
        let entry = neighbours
            .iter()
            .find(|m| {
                m.attributes
                    .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        "10.77.0.9".parse().unwrap(),
                    )))
            })
            .expect("the neighbour entry");
        assert_eq!(entry.header.state, NeighbourState::Permanent);
        assert!(entry
            .attributes
            .contains(&NeighbourAttribute::LinkLayerAddress(vec![
                2, 0, 0, 0, 0x77, 9
            ])));

        // No link with the MAC: NOT_FOUND, said as Kata says it (the shim retries on it).
        req.hwAddr = "02:00:00:00:00:99".into();
        let e = net.update_interface(&req).await.unwrap_err();
        assert!(e.to_string().starts_with("Link not found"), "{e}");
        assert!(matches!(AgentError::from(e), AgentError::NotFound(_)));

        // A bad field: refused before anything is touched.
        req.hwAddr = "02:4b:43:43:00:05".into();
        req.IPAddresses[0].mask = "33".into();
        let e = net.update_interface(&req).await.unwrap_err();
        assert!(
            e.to_string().starts_with("interface.IPAddresses[0].mask: "),
            "{e}"
        );
        assert!(matches!(
            AgentError::from(e),
            AgentError::InvalidArgument(_)
        ));
        let list = net.list_interfaces().await.expect("ListInterfaces");
        let eth0 = list.iter().find(|i| i.name == "eth0").expect("eth0");
        assert_eq!(addresses_of(eth0), ["10.77.0.5/24", "fd00:77::5/64"]);
    });
}
