//! The agent requests that configure the guest's network from the links the VM got, in the
//! shapes of Kata's `generateVCNetworkStructures`: one UpdateInterface per link, then one
//! UpdateRoutes with every link's routes (if there are any), then one AddARPNeighbors (if
//! there are any).

use std::net::IpAddr;

use agent_proto::agent::{
    ARPNeighbors, AddARPNeighborsRequest, Routes, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use agent_proto::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use protobuf::MessageField;

use super::scan::{guest_neighbour, guest_route, mac_string, LinkInfo};

/// What the shim sends, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequests {
    pub interfaces: Vec<UpdateInterfaceRequest>,
    pub routes: Option<UpdateRoutesRequest>,
    pub neighbours: Option<AddARPNeighborsRequest>,
}

fn family(ip: &IpAddr) -> IPFamily {
    match ip {
        IpAddr::V4(_) => IPFamily::v4,
        IpAddr::V6(_) => IPFamily::v6,
    }
}

/// The guest interface for a link: found by MAC in the guest (no PCI path), named as in the
/// pod's namespace, with every non-loopback address (IPv6 link-local ones included, as Kata
/// sends them) and the link's MTU; only `IFF_NOARP` of the flags.
pub fn interface(l: &LinkInfo) -> Interface {
    Interface {
        device: l.name.clone(),
        name: l.name.clone(),
        IPAddresses: l
            .addrs
            .iter()
            .filter(|a| !a.addr.is_loopback())
            .map(|a| IPAddress {
                family: family(&a.addr).into(),
                address: a.addr.to_string(),
                mask: a.prefix.to_string(),
                ..Default::default()
            })
            .collect(),
        mtu: u64::from(l.mtu),
        hwAddr: l.mac_string(),
        devicePath: String::new(),
        type_: String::new(),
        raw_flags: l.flags & libc::IFF_NOARP as u32,
        ..Default::default()
    }
}

/// The link's routes the guest gets: a default route's `dest` is empty, others are
/// `address/prefix`.
pub fn routes(l: &LinkInfo) -> Vec<Route> {
    l.routes
        .iter()
        .filter(|r| guest_route(r))
        .map(|r| Route {
            dest: r.dest.map(|d| d.to_string()).unwrap_or_default(),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: l.name.clone(),
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            scope: u32::from(r.scope),
            family: if r.ipv6 { IPFamily::v6 } else { IPFamily::v4 }.into(),
            flags: r.flags,
            ..Default::default()
        })
        .collect()
}

/// The link's neighbour entries the guest gets (static ones, a reachable default gateway).
pub fn neighbours(l: &LinkInfo) -> Vec<ARPNeighbor> {
    l.neighbours
        .iter()
        .filter(|n| guest_neighbour(n, &l.routes))
        .map(|n| ARPNeighbor {
            toIPAddress: MessageField::some(IPAddress {
                family: family(&n.ip).into(),
                address: n.ip.to_string(),
                mask: String::new(),
                ..Default::default()
            }),
            device: l.name.clone(),
            lladdr: n.lladdr.as_deref().map(mac_string).unwrap_or_default(),
            state: i32::from(n.state),
            flags: i32::from(n.flags),
            ..Default::default()
        })
        .collect()
}

pub fn build(links: &[LinkInfo]) -> NetworkRequests {
    let interfaces = links
        .iter()
        .map(|l| UpdateInterfaceRequest {
            interface: MessageField::some(interface(l)),
            ..Default::default()
        })
        .collect();
    let all_routes: Vec<Route> = links.iter().flat_map(routes).collect();
    let all_neighbours: Vec<ARPNeighbor> = links.iter().flat_map(neighbours).collect();
    NetworkRequests {
        interfaces,
        routes: (!all_routes.is_empty()).then(|| UpdateRoutesRequest {
            routes: MessageField::some(Routes {
                Routes: all_routes,
                ..Default::default()
            }),
            ..Default::default()
        }),
        neighbours: (!all_neighbours.is_empty()).then(|| AddARPNeighborsRequest {
            neighbors: MessageField::some(ARPNeighbors {
                ARPNeighbors: all_neighbours,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::scan::tests::veth;
    use crate::network::scan::{NeighbourInfo, NUD_PERMANENT};
    use serde_json::{json, Value};

    /// Kata's requests for the same pod (regorus' copy of Kata's policy test corpus).
    fn kata_request(ep: &str) -> Value {
        let path =
            kata_cc_fixtures::package_file("regorus", "tests/kata/data/pod-lifecycle/inputs.txt");
        let text = std::fs::read_to_string(path).unwrap();
        let prefix = format!("[\"ep\":\"{ep}\",");
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .unwrap();
        serde_json::from_str(line.trim_end_matches(',').strip_suffix(']').unwrap()).unwrap()
    }

    #[test]
    fn requests_match_katas() {
        let reqs = build(&[veth("eth0", 3)]);
        assert_eq!(reqs.interfaces.len(), 1);
        let got = kata_cc_policy::input::to_json(&reqs.interfaces[0]);
        let mut want = kata_request("UpdateInterfaceRequest");
        // Kata renamed Interface.pciPath (field 6) to devicePath after that corpus was made.
        let i = want["interface"].as_object_mut().unwrap();
        let pci = i.remove("pciPath").unwrap();
        i.insert("devicePath".into(), pci);
        assert_eq!(got, want);

        let got = kata_cc_policy::input::to_json(reqs.routes.as_ref().unwrap());
        let mut want = kata_request("UpdateRoutesRequest");
        // Route.flags (field 7) is newer than the corpus; Kata sends rtm_flags, 0 here.
        want["routes"]["Routes"][0]["flags"] = json!(0);
        assert_eq!(got, want);
        // Kata's pod had no static neighbours: no AddARPNeighbors.
        assert!(reqs.neighbours.is_none());
    }

    #[test]
    fn other_routes_and_neighbours() {
        let mut l = veth("eth0", 3);
        l.flags |= libc::IFF_NOARP as u32;
        l.routes[0].dest = Some(crate::network::scan::IpNet {
            addr: "192.168.5.0".parse().unwrap(),
            prefix: 24,
        });
        l.routes[0].source = Some("10.244.0.17".parse().unwrap());
        l.routes.push(crate::network::scan::RouteInfo {
            dest: None,
            gateway: Some("fd00::1".parse().unwrap()),
            source: None,
            scope: 0,
            ipv6: true,
            flags: 4,
            protocol: 4,
        });
        l.neighbours.push(NeighbourInfo {
            ip: "10.244.0.9".parse().unwrap(),
            lladdr: Some(vec![0xaa, 0xbb, 0xcc, 0, 1, 2]),
            state: NUD_PERMANENT,
            flags: 0,
        });
        let reqs = build(&[l]);
        assert_eq!(
            reqs.interfaces[0].interface.raw_flags,
            libc::IFF_NOARP as u32
        );
        let r = kata_cc_policy::input::to_json(reqs.routes.as_ref().unwrap());
        assert_eq!(
            r["routes"]["Routes"],
            json!([
                {"dest": "192.168.5.0/24", "gateway": "10.244.0.1", "device": "eth0",
                 "source": "10.244.0.17", "scope": 0, "family": 0, "flags": 0},
                {"dest": "", "gateway": "fd00::1", "device": "eth0", "source": "", "scope": 0,
                 "family": 1, "flags": 4},
            ])
        );
        let n = kata_cc_policy::input::to_json(reqs.neighbours.as_ref().unwrap());
        assert_eq!(
            n,
            json!({"neighbors": {"ARPNeighbors": [{
                "toIPAddress": {"family": 0, "address": "10.244.0.9", "mask": ""},
                "device": "eth0", "lladdr": "aa:bb:cc:00:01:02", "state": 128, "flags": 0
            }]}})
        );
    }

    #[test]
    fn no_links_no_requests() {
        let reqs = build(&[]);
        assert!(reqs.interfaces.is_empty() && reqs.routes.is_none() && reqs.neighbours.is_none());
    }
}
