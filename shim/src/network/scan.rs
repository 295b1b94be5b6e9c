//! What the pod's network namespace holds: its links with their addresses, routes and
//! neighbours (Kata's `networkInfoFromLink`), read with rtnetlink, and which links the VM gets
//! (Kata's `scanEndpointsInNs`).

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{self as nl_link, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetworkError;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A route of the main table whose output device is the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// None: the default route (no destination attribute).
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// The preferred source (`ip route ... src`).
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub ipv6: bool,
    /// `rtm_flags`.
    pub flags: u32,
    /// `rtm_protocol`; kernel-made routes (`RTPROT_KERNEL`) are the guest's own business.
    pub protocol: u8,
}

/// A neighbour (ARP/NDP) entry on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourInfo {
    pub ip: IpAddr,
    pub lladdr: Option<Vec<u8>>,
    /// `ndm_state` (NUD_*).
    pub state: u16,
    /// `ndm_flags`.
    pub flags: u8,
}

/// One link of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (veth, macvlan, ...); None for a plain device.
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// `ifi_flags` (IFF_*).
    pub flags: u32,
    pub addrs: Vec<IpNet>,
    pub routes: Vec<RouteInfo>,
    pub neighbours: Vec<NeighbourInfo>,
}

/// `RTPROT_KERNEL`.
pub const RTPROT_KERNEL: u8 = 2;
/// `NUD_REACHABLE`, `NUD_PERMANENT`.
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_PERMANENT: u16 = 0x80;

/// Link kinds connected the way Kata connects a veth (its veth, macvlan and ipvlan endpoints
/// and the kind-less "device" all use the interworking model's TAP).
const TAP_CONNECTED_KINDS: &[&str] = &["veth", "macvlan", "ipvlan"];

impl LinkInfo {
    pub fn is_loopback(&self) -> bool {
        self.flags & LinkFlags::Loopback.bits() != 0
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }
}

pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The links the VM gets, in the namespace's order: not loopback, with at least one address
/// (others are unconfigured or base tunnel devices such as `sit0`). A link of a kind Kata
/// does not connect with a TAP is refused, naming it.
pub fn vm_links(links: Vec<LinkInfo>, netns: &str) -> Result<Vec<LinkInfo>, NetworkError> {
    let mut out = Vec::new();
    for l in links {
        if l.addrs.is_empty() || l.is_loopback() {
            continue;
        }
        match l.kind.as_deref() {
            None => {}
            Some(k) if TAP_CONNECTED_KINDS.contains(&k) => {}
            Some(k) => {
                return Err(NetworkError::UnsupportedLink {
                    netns: netns.to_string(),
                    name: l.name.clone(),
                    kind: k.to_string(),
                })
            }
        }
        if l.mac.len() != 6 {
            return Err(NetworkError::UnsupportedLink {
                netns: netns.to_string(),
                name: l.name.clone(),
                kind: format!(
                    "{} without an Ethernet address",
                    l.kind.as_deref().unwrap_or("device")
                ),
            });
        }
        out.push(l);
    }
    Ok(out)
}

/// Reads every link of the namespace the handle's socket belongs to, with its addresses, routes
/// and neighbours.
pub async fn scan(handle: &Handle, netns: &str) -> Result<Vec<LinkInfo>, NetworkError> {
    let dump_err = |what: &'static str| {
        let netns = netns.to_string();
        move |source| NetworkError::Dump {
            netns: netns.clone(),
            what,
            source,
        }
    };
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(dump_err("links"))?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(dump_err("addresses"))?;
    let mut routes: Vec<RouteMessage> = Vec::new();
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut r: Vec<RouteMessage> = handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(dump_err("routes"))?;
        routes.append(&mut r);
    }
    let neighbours: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(dump_err("neighbours"))?;
    Ok(links
        .iter()
        .map(|l| link_info(l, &addrs, &routes, &neighbours))
        .collect())
}

fn link_info(
    l: &LinkMessage,
    addrs: &[AddressMessage],
    routes: &[RouteMessage],
    neighbours: &[NeighbourMessage],
) -> LinkInfo {
    let index = l.header.index;
    let mut info = LinkInfo {
        index,
        name: String::new(),
        kind: None,
        mac: Vec::new(),
        mtu: 0,
        flags: l.header.flags.bits(),
        addrs: addrs
            .iter()
            .filter(|a| a.header.index == index)
            .filter_map(address)
            .collect(),
        routes: routes.iter().filter_map(|r| route(r, index)).collect(),
        neighbours: neighbours
            .iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(neighbour)
            .collect(),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(m) => info.mac = m.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let nl_link::LinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// The interface's own address: `IFA_LOCAL` where the kernel gives one (IPv4; `IFA_ADDRESS`
/// is the peer's on a point-to-point link), else `IFA_ADDRESS`.
fn address(a: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut addr = None;
    for at in &a.attributes {
        match at {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            _ => {}
        }
    }
    local.or(addr).map(|addr| IpNet {
        addr,
        prefix: a.header.prefix_len,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table, not cached (`RTM_F_CLONED`) route whose output device is `index`: what Kata's
/// `RouteList(link)` returns.
fn route(r: &RouteMessage, index: u32) -> Option<RouteInfo> {
    let h = &r.header;
    let ipv6 = match h.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if h.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut oif = None;
    let mut info = RouteInfo {
        dest: None,
        gateway: None,
        source: None,
        scope: h.scope.into(),
        ipv6,
        flags: h.flags.bits(),
        protocol: u8::from(h.protocol),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => {
                info.dest = route_ip(d).map(|addr| IpNet {
                    addr,
                    prefix: h.destination_prefix_length,
                })
            }
            RouteAttribute::Gateway(g) => info.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => info.source = route_ip(s),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN) && oif == Some(index)).then_some(info)
}

fn neighbour(n: &NeighbourMessage) -> Option<NeighbourInfo> {
    let mut ip = None;
    let mut lladdr = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
            _ => {}
        }
    }
    Some(NeighbourInfo {
        ip: ip?,
        lladdr,
        state: u16::from(n.header.state),
        flags: n.header.flags.bits(),
    })
}

/// Whether the route is one the guest gets (Kata's `validGuestRoute`: not made by the kernel
/// from an address, which the guest's kernel makes itself).
pub fn guest_route(r: &RouteInfo) -> bool {
    r.protocol != RTPROT_KERNEL
}

/// Whether the neighbour entry is one the guest gets (Kata's `validGuestNeighbor`): it has a
/// link-layer address and is static, or it is a default gateway's reachable entry.
pub fn guest_neighbour(n: &NeighbourInfo, routes: &[RouteInfo]) -> bool {
    if n.lladdr.is_none() {
        return false;
    }
    if n.state == NUD_PERMANENT {
        return true;
    }
    let is_gateway = routes
        .iter()
        .any(|r| r.gateway == Some(n.ip) && r.dest.is_none_or(|d| d.prefix == 0));
    is_gateway && n.state == NUD_REACHABLE
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn veth(name: &str, index: u32) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mac: vec![0x46, 0x7c, 0x91, 0x8d, 0xd4, 0x20],
            mtu: 1500,
            flags: 0x1043,
            addrs: vec![
                IpNet {
                    addr: "10.244.0.17".parse().unwrap(),
                    prefix: 24,
                },
                IpNet {
                    addr: "fe80::447c:91ff:fe8d:d420".parse().unwrap(),
                    prefix: 64,
                },
            ],
            routes: vec![
                RouteInfo {
                    dest: None,
                    gateway: Some("10.244.0.1".parse().unwrap()),
                    source: None,
                    scope: 0,
                    ipv6: false,
                    flags: 0,
                    protocol: 3,
                },
                RouteInfo {
                    dest: Some(IpNet {
                        addr: "10.244.0.0".parse().unwrap(),
                        prefix: 24,
                    }),
                    gateway: None,
                    source: Some("10.244.0.17".parse().unwrap()),
                    scope: 253,
                    ipv6: false,
                    flags: 0,
                    protocol: RTPROT_KERNEL,
                },
                RouteInfo {
                    dest: Some(IpNet {
                        addr: "fe80::".parse().unwrap(),
                        prefix: 64,
                    }),
                    gateway: None,
                    source: None,
                    scope: 0,
                    ipv6: true,
                    flags: 0,
                    protocol: RTPROT_KERNEL,
                },
            ],
            neighbours: Vec::new(),
        }
    }

    fn lo() -> LinkInfo {
        LinkInfo {
            index: 1,
            name: "lo".into(),
            kind: None,
            mac: vec![0; 6],
            mtu: 65536,
            flags: 0x49,
            addrs: vec![IpNet {
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 8,
            }],
            routes: Vec::new(),
            neighbours: Vec::new(),
        }
    }

    #[test]
    fn loopback_and_unconfigured_links_are_skipped() {
        let mut sit = veth("sit0", 2);
        sit.kind = Some("sit".into());
        sit.addrs.clear();
        let links = vm_links(vec![lo(), sit, veth("eth0", 3)], "/ns").unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].name, "eth0");
        assert_eq!(links[0].mac_string(), "46:7c:91:8d:d4:20");
    }

    #[test]
    fn an_unsupported_kind_is_named() {
        let mut vx = veth("vx0", 4);
        vx.kind = Some("vxlan".into());
        let e = vm_links(vec![vx], "/run/netns/p").unwrap_err().to_string();
        assert!(
            e.contains("vx0") && e.contains("vxlan") && e.contains("/run/netns/p"),
            "{e}"
        );
        let mut plain = veth("eth1", 5);
        plain.kind = None;
        assert_eq!(vm_links(vec![plain], "/ns").unwrap().len(), 1);
    }

    #[test]
    fn kata_neighbour_rule() {
        let l = veth("eth0", 3);
        let n = |ip: &str, state: u16, ll: bool| NeighbourInfo {
            ip: ip.parse().unwrap(),
            lladdr: ll.then(|| vec![1, 2, 3, 4, 5, 6]),
            state,
            flags: 0,
        };
        assert!(guest_neighbour(
            &n("10.244.0.9", NUD_PERMANENT, true),
            &l.routes
        ));
        assert!(!guest_neighbour(
            &n("10.244.0.9", NUD_PERMANENT, false),
            &l.routes
        ));
        // Only the default gateway's entry, and only while reachable.
        assert!(guest_neighbour(
            &n("10.244.0.1", NUD_REACHABLE, true),
            &l.routes
        ));
        assert!(!guest_neighbour(&n("10.244.0.1", 0x04, true), &l.routes));
        assert!(!guest_neighbour(
            &n("10.244.0.9", NUD_REACHABLE, true),
            &l.routes
        ));
        assert!(guest_route(&l.routes[0]) && !guest_route(&l.routes[1]));
    }
}
