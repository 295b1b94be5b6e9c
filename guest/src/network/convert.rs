//! Kata's network messages (types.proto) to and from netlink messages, checked field by field
//! before anything is changed, so that a bad request changes nothing and its error names the
//! field.
//!
//! Conventions (Kata's, with the text forms `ip` uses):
//! - MAC addresses: six hex bytes with `:`; written lower case.
//! - `IPAddress`: `family` 0 = IPv4, 1 = IPv6 (must match the address), `mask` = prefix length.
//! - `Route.dest`: `""` = the default route of `family`, else `addr/len` (a bare address is a
//!   host route); `gateway`: `""` or an address; `source`: `""`, an address (the preferred
//!   source, `ip route ... src`) or `addr/len` (a source prefix, IPv6 only in the kernel);
//!   `scope`: the kernel's RT_SCOPE_* number (0 universe, 253 link, 254 host); `flags`: RTNH_F_*.
//! - `ARPNeighbor.state`: NUD_* bits, 0 = permanent (as Kata); `flags`: NTF_* bits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_proto::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;

/// A request field that cannot be used: `field` is its path in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    fn max_prefix(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The address with the bits past the prefix cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4 or IPv6, as `IPFamily` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: &IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn parse(value: i32, field: &str) -> Result<Family, FieldError> {
        match value {
            0 => Ok(Family::V4),
            1 => Ok(Family::V6),
            v => Err(bad(field, format!("{v} is not an IPFamily (0 v4, 1 v6)"))),
        }
    }

    fn proto(self) -> IPFamily {
        match self {
            Family::V4 => IPFamily::v4,
            Family::V6 => IPFamily::v6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str, field: &str) -> Result<[u8; 6], FieldError> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        let part = parts.next().unwrap_or("");
        if part.is_empty() || part.len() > 2 {
            return Err(bad(field, format!("{text:?} is not a MAC address")));
        }
        *b = u8::from_str_radix(part, 16)
            .map_err(|_| bad(field, format!("{text:?} is not a MAC address")))?;
    }
    if parts.next().is_some() {
        return Err(bad(field, format!("{text:?} is not a MAC address")));
    }
    Ok(mac)
}

/// Lower-case hex bytes joined by `:` (what `ip link` shows).
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr, FieldError> {
    text.parse::<IpAddr>()
        .map_err(|_| bad(field, format!("{text:?} is not an IP address")))
}

fn check_family(addr: &IpAddr, family: Family, field: &str) -> Result<(), FieldError> {
    if Family::of(addr) != family {
        return Err(bad(
            field,
            format!(
                "{addr} is not an {} address (family {family:?})",
                family.name()
            ),
        ));
    }
    Ok(())
}

/// `IPAddress` (family, address, mask) to an address and prefix; `field` names it.
pub fn parse_address(a: &IPAddress, field: &str) -> Result<IpNet, FieldError> {
    let family = Family::parse(a.family.value(), &format!("{field}.family"))?;
    let addr = parse_ip(&a.address, &format!("{field}.address"))?;
    check_family(&addr, family, &format!("{field}.address"))?;
    let max = IpNet::max_prefix(&addr);
    let prefix = match a.mask.parse::<u8>() {
        Ok(p) if p <= max => p,
        _ => {
            return Err(bad(
                format!("{field}.mask"),
                format!(
                    "{:?} is not a prefix length ({} takes 0 to {max})",
                    a.mask,
                    family.name()
                ),
            ))
        }
    };
    Ok(IpNet { addr, prefix })
}

fn address_proto(net: IpNet) -> IPAddress {
    let mut a = IPAddress::new();
    a.family = Family::of(&net.addr).proto().into();
    a.address = net.addr.to_string();
    a.mask = net.prefix.to_string();
    a
}

/// The address of an RTM_NEWADDR message (the local address when there is one: on a
/// point-to-point link IFA_ADDRESS is the peer's).
pub fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    local.or(address).map(|addr| IpNet {
        addr,
        prefix: msg.header.prefix_len,
    })
}

/// An address the kernel makes itself on every IPv6 link (fe80::/10): kept when a request
/// replaces a link's addresses.
pub fn is_ipv6_link_local(net: &IpNet) -> bool {
    matches!(net.addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// A checked interface name (the kernel's dev_valid_name).
pub fn check_link_name(name: &str, field: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!(
                "{name:?} is not an interface name (1 to {} characters, no '/', ':' or spaces)",
                libc::IFNAMSIZ - 1
            ),
        ))
    }
}

/// What UpdateInterface asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub mac: [u8; 6],
    /// None: keep the link's name.
    pub name: Option<String>,
    /// None (`mtu` 0): keep the link's MTU.
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    /// `raw_flags` has IFF_NOARP.
    pub noarp: bool,
}

pub fn parse_interface(i: &Interface, field: &str) -> Result<InterfaceSpec, FieldError> {
    let mac = parse_mac(&i.hwAddr, &format!("{field}.hwAddr"))?;
    let name = if i.name.is_empty() {
        None
    } else {
        check_link_name(&i.name, &format!("{field}.name"))?;
        Some(i.name.clone())
    };
    let mtu = match i.mtu {
        0 => None,
        m => Some(u32::try_from(m).map_err(|_| {
            bad(
                format!("{field}.mtu"),
                format!("{m} is larger than a link MTU can be"),
            )
        })?),
    };
    let addresses = i
        .IPAddresses
        .iter()
        .enumerate()
        .map(|(n, a)| parse_address(a, &format!("{field}.IPAddresses[{n}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InterfaceSpec {
        mac,
        name,
        mtu,
        addresses,
        noarp: i.raw_flags & libc::IFF_NOARP as u32 != 0,
    })
}

/// The parts of an RTM_NEWLINK message the requests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: LinkFlags,
}

impl Link {
    pub fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            flags: msg.header.flags,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        link
    }

    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }

    pub fn is_loopback(&self) -> bool {
        self.flags.contains(LinkFlags::Loopback)
    }

    /// The link as an `Interface`: `device` and `name` are its name, `raw_flags` its IFF_* flags.
    pub fn to_interface(&self, addresses: &[IpNet]) -> Interface {
        let mut i = Interface::new();
        i.device = self.name.clone();
        i.name = self.name.clone();
        i.hwAddr = format_mac(&self.mac);
        i.mtu = u64::from(self.mtu);
        i.raw_flags = self.flags.bits();
        i.IPAddresses = addresses.iter().copied().map(address_proto).collect();
        i
    }
}

/// A route's source: the preferred source address, or (IPv6) a source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Preferred(IpAddr),
    Prefix(IpNet),
}

/// What one `Route` of UpdateRoutes asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub family: Family,
    /// Prefix 0: the default route.
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
    pub source: Option<Source>,
    pub device: String,
    pub scope: u8,
    pub flags: u32,
}

impl RouteSpec {
    /// The kernel's key for the route in the main table (with the default metric).
    pub fn key(&self) -> (Family, IpNet) {
        (self.family, self.dest)
    }

    /// An RTM_NEWROUTE for the main table, protocol boot (as Kata), through link `oif`.
    pub fn to_message(&self, oif: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = self.family.address_family();
        m.header.destination_prefix_length = self.dest.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::from(self.scope);
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::from_bits_retain(self.flags);
        if self.dest.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dest.addr,
                )));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(g) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        match self.source {
            Some(Source::Preferred(a)) => m
                .attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(a))),
            Some(Source::Prefix(net)) => {
                m.header.source_prefix_length = net.prefix;
                m.attributes
                    .push(RouteAttribute::Source(RouteAddress::from(net.addr)));
            }
            None => {}
        }
        m
    }

    /// How errors name the route: `ip route` style.
    pub fn describe(&self) -> String {
        let mut s = if self.dest.prefix == 0 {
            "default".to_string()
        } else {
            self.dest.to_string()
        };
        if let Some(g) = self.gateway {
            s += &format!(" via {g}");
        }
        s += &format!(" dev {}", self.device);
        match self.source {
            Some(Source::Preferred(a)) => s += &format!(" src {a}"),
            Some(Source::Prefix(n)) => s += &format!(" from {n}"),
            None => {}
        }
        s
    }
}

/// `addr/len` or a bare address (the whole address); host bits must be clear.
fn parse_net(text: &str, family: Family, field: &str) -> Result<IpNet, FieldError> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr = parse_ip(addr_text, field)?;
    check_family(&addr, family, field)?;
    let max = IpNet::max_prefix(&addr);
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => {
                return Err(bad(
                    field,
                    format!("{text:?}: {p:?} is not a prefix length (0 to {max})"),
                ))
            }
        },
    };
    Ok(IpNet { addr, prefix })
}

pub fn parse_route(r: &Route, field: &str) -> Result<RouteSpec, FieldError> {
    let family = Family::parse(r.family.value(), &format!("{field}.family"))?;
    let dest = if r.dest.is_empty() {
        IpNet {
            addr: family.unspecified(),
            prefix: 0,
        }
    } else {
        let f = format!("{field}.dest");
        let net = parse_net(&r.dest, family, &f)?;
        if net.network() != net.addr {
            return Err(bad(
                f,
                format!(
                    "{:?} has host bits set (the network is {}/{})",
                    r.dest,
                    net.network(),
                    net.prefix
                ),
            ));
        }
        net
    };
    let gateway = if r.gateway.is_empty() {
        None
    } else {
        let f = format!("{field}.gateway");
        let g = parse_ip(&r.gateway, &f)?;
        check_family(&g, family, &f)?;
        Some(g)
    };
    let source = if r.source.is_empty() {
        None
    } else {
        let f = format!("{field}.source");
        let net = parse_net(&r.source, family, &f)?;
        if r.source.contains('/') && net.prefix > 0 {
            Some(Source::Prefix(net))
        } else {
            Some(Source::Preferred(net.addr))
        }
    };
    if r.device.is_empty() {
        return Err(bad(
            format!("{field}.device"),
            "empty: a route needs the name of its interface",
        ));
    }
    check_link_name(&r.device, &format!("{field}.device"))?;
    let scope = u8::try_from(r.scope).map_err(|_| {
        bad(
            format!("{field}.scope"),
            format!("{} is not a route scope (0 to 255)", r.scope),
        )
    })?;
    Ok(RouteSpec {
        family,
        dest,
        gateway,
        source,
        device: r.device.clone(),
        scope,
        flags: r.flags,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The parts of an RTM_NEWROUTE message the requests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub family: Family,
    pub table: u32,
    pub protocol: RouteProtocol,
    pub kind: RouteType,
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
    pub source: Option<Source>,
    pub oif: Option<u32>,
    pub scope: u8,
    pub flags: u32,
}

impl RouteEntry {
    /// None for families other than IPv4 and IPv6.
    pub fn from_message(msg: &RouteMessage) -> Option<RouteEntry> {
        let family = match msg.header.address_family {
            AddressFamily::Inet => Family::V4,
            AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let mut e = RouteEntry {
            family,
            table: u32::from(msg.header.table),
            protocol: msg.header.protocol,
            kind: msg.header.kind,
            dest: IpNet {
                addr: family.unspecified(),
                prefix: msg.header.destination_prefix_length,
            },
            gateway: None,
            source: None,
            oif: None,
            scope: u8::from(msg.header.scope),
            flags: msg.header.flags.bits(),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => {
                    if let Some(ip) = route_ip(a) {
                        e.dest.addr = ip;
                    }
                }
                RouteAttribute::Gateway(a) => e.gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => {
                    if let Some(ip) = route_ip(a) {
                        e.source = Some(Source::Preferred(ip));
                    }
                }
                RouteAttribute::Source(a) => {
                    if let Some(ip) = route_ip(a) {
                        e.source = Some(Source::Prefix(IpNet {
                            addr: ip,
                            prefix: msg.header.source_prefix_length,
                        }));
                    }
                }
                RouteAttribute::Oif(i) => e.oif = Some(*i),
                RouteAttribute::Table(t) => e.table = *t,
                _ => {}
            }
        }
        Some(e)
    }

    /// A unicast route of the main table: what ListRoutes shows and UpdateRoutes replaces.
    pub fn is_main_unicast(&self) -> bool {
        self.table == u32::from(RouteHeader::RT_TABLE_MAIN) && self.kind == RouteType::Unicast
    }

    pub fn key(&self) -> (Family, IpNet) {
        (self.family, self.dest)
    }

    /// The route as a `Route`; `device` is the name of its output link.
    pub fn to_route(&self, device: &str) -> Route {
        let mut r = Route::new();
        r.family = self.family.proto().into();
        r.dest = if self.dest.prefix == 0 {
            String::new()
        } else {
            self.dest.to_string()
        };
        r.gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        r.source = match self.source {
            Some(Source::Preferred(a)) => a.to_string(),
            Some(Source::Prefix(n)) => n.to_string(),
            None => String::new(),
        };
        r.device = device.to_string();
        r.scope = u32::from(self.scope);
        r.flags = self.flags;
        r
    }
}

/// What one `ARPNeighbor` of AddARPNeighbors asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourSpec {
    pub ip: IpAddr,
    pub device: String,
    pub lladdr: Option<[u8; 6]>,
    pub state: NeighbourState,
    pub flags: NeighbourFlags,
}

pub fn parse_neighbour(n: &ARPNeighbor, field: &str) -> Result<NeighbourSpec, FieldError> {
    let to = n.toIPAddress.as_ref().ok_or_else(|| {
        bad(
            format!("{field}.toIPAddress"),
            "missing: a neighbour needs its IP address",
        )
    })?;
    let ip = parse_ip(&to.address, &format!("{field}.toIPAddress.address"))?;
    let family = Family::parse(to.family.value(), &format!("{field}.toIPAddress.family"))?;
    check_family(&ip, family, &format!("{field}.toIPAddress.address"))?;
    if n.device.is_empty() {
        return Err(bad(
            format!("{field}.device"),
            "empty: a neighbour needs the name of its interface",
        ));
    }
    check_link_name(&n.device, &format!("{field}.device"))?;
    let lladdr = if n.lladdr.is_empty() {
        None
    } else {
        Some(parse_mac(&n.lladdr, &format!("{field}.lladdr"))?)
    };
    let state = match n.state {
        0 => NeighbourState::Permanent,
        s => NeighbourState::from(u16::try_from(s).map_err(|_| {
            bad(
                format!("{field}.state"),
                format!("{s} is not a neighbour state (NUD_* bits)"),
            )
        })?),
    };
    let flags = u8::try_from(n.flags).map_err(|_| {
        bad(
            format!("{field}.flags"),
            format!("{} is not a set of neighbour flags (NTF_* bits)", n.flags),
        )
    })?;
    Ok(NeighbourSpec {
        ip,
        device: n.device.clone(),
        lladdr,
        state,
        flags: NeighbourFlags::from_bits_retain(flags),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    /// A change that makes a valid request invalid.
    type Change<T> = fn(&mut T);

    fn ip_address(family: IPFamily, address: &str, mask: &str) -> IPAddress {
        let mut a = IPAddress::new();
        a.family = family.into();
        a.address = address.into();
        a.mask = mask.into();
        a
    }

    fn route(dest: &str, gateway: &str, device: &str, source: &str, scope: u32) -> Route {
        let mut r = Route::new();
        r.dest = dest.into();
        r.gateway = gateway.into();
        r.device = device.into();
        r.source = source.into();
        r.scope = scope;
        r
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("9A:e4:18:6c:38:fc", "f").unwrap(),
            [0x9a, 0xe4, 0x18, 0x6c, 0x38, 0xfc]
        );
        assert_eq!(parse_mac("2:0:0:0:0:1", "f").unwrap(), [2, 0, 0, 0, 0, 1]);
        for bad_mac in [
            "",
            "9a:e4:18:6c:38",
            "9a:e4:18:6c:38:fc:00",
            "9a:e4:18:6c:38:zz",
            "9ae:4:18:6c:38:fc",
            "9a-e4-18-6c-38-fc",
        ] {
            let e = parse_mac(bad_mac, "interface.hwAddr").unwrap_err();
            assert_eq!(e.field, "interface.hwAddr", "{bad_mac}");
        }
        assert_eq!(
            format_mac(&[0x9a, 0xe4, 0x18, 0x6c, 0x38, 0xfc]),
            "9a:e4:18:6c:38:fc"
        );
        assert_eq!(format_mac(&[]), "");
    }

    /// Kata's UpdateInterfaceRequest as a CNI pod sends it (conformance inputs).
    #[test]
    fn interface_request_from_kata() {
        let mut i = Interface::new();
        i.device = "eth0".into();
        i.name = "eth0".into();
        i.IPAddresses = vec![
            ip_address(IPFamily::v4, "10.244.0.21", "24"),
            ip_address(IPFamily::v6, "fe80::98e4:18ff:fe6c:38fc", "64"),
        ];
        i.mtu = 1500;
        i.hwAddr = "9a:e4:18:6c:38:fc".into();
        let s = parse_interface(&i, "interface").unwrap();
        assert_eq!(s.mac, [0x9a, 0xe4, 0x18, 0x6c, 0x38, 0xfc]);
        assert_eq!(s.name.as_deref(), Some("eth0"));
        assert_eq!(s.mtu, Some(1500));
        assert!(!s.noarp);
        assert_eq!(
            s.addresses,
            vec![
                IpNet {
                    addr: "10.244.0.21".parse().unwrap(),
                    prefix: 24
                },
                IpNet {
                    addr: "fe80::98e4:18ff:fe6c:38fc".parse().unwrap(),
                    prefix: 64
                },
            ]
        );
        assert!(!is_ipv6_link_local(&s.addresses[0]));
        assert!(is_ipv6_link_local(&s.addresses[1]));

        i.name.clear();
        i.mtu = 0;
        i.raw_flags = libc::IFF_NOARP as u32;
        let s = parse_interface(&i, "interface").unwrap();
        assert_eq!((s.name, s.mtu, s.noarp), (None, None, true));
    }

    #[test]
    fn interface_errors_name_the_field() {
        let base = || {
            let mut i = Interface::new();
            i.name = "eth0".into();
            i.hwAddr = "02:00:00:00:00:01".into();
            i.IPAddresses = vec![ip_address(IPFamily::v4, "10.0.0.2", "24")];
            i
        };
        let cases: Vec<(Change<Interface>, &str, &str)> = vec![
            (|i| i.hwAddr.clear(), "interface.hwAddr", "not a MAC"),
            (
                |i| i.name = "a/b".into(),
                "interface.name",
                "not an interface name",
            ),
            (
                |i| i.name = "sixteen-chars-xx".into(),
                "interface.name",
                "1 to 15",
            ),
            (|i| i.mtu = 1 << 40, "interface.mtu", "larger"),
            (
                |i| i.IPAddresses[0].mask = "33".into(),
                "interface.IPAddresses[0].mask",
                "IPv4 takes 0 to 32",
            ),
            (
                |i| i.IPAddresses[0].mask = "255.255.255.0".into(),
                "interface.IPAddresses[0].mask",
                "not a prefix length",
            ),
            (
                |i| i.IPAddresses[0].address = "10.0.0".into(),
                "interface.IPAddresses[0].address",
                "not an IP address",
            ),
            (
                |i| i.IPAddresses[0].family = IPFamily::v6.into(),
                "interface.IPAddresses[0].address",
                "not an IPv6 address",
            ),
            (
                |i| i.IPAddresses[0].family = protobuf::EnumOrUnknown::from_i32(7),
                "interface.IPAddresses[0].family",
                "7 is not an IPFamily",
            ),
        ];
        for (change, field, says) in cases {
            let mut i = base();
            change(&mut i);
            let e = parse_interface(&i, "interface").unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(says), "{e}");
        }
        parse_interface(&base(), "interface").unwrap();
    }

    #[test]
    fn link_messages_read_as_interfaces() {
        let mut msg = LinkMessage::default();
        msg.header = LinkHeader {
            index: 3,
            flags: LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast,
            ..Default::default()
        };
        msg.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Address(vec![0x9a, 0xe4, 0x18, 0x6c, 0x38, 0xfc]),
            LinkAttribute::Mtu(1450),
        ];
        let link = Link::from_message(&msg);
        assert!(link.is_up() && !link.is_loopback());
        let i = link.to_interface(&[IpNet {
            addr: "10.244.0.21".parse().unwrap(),
            prefix: 24,
        }]);
        assert_eq!((i.name.as_str(), i.device.as_str()), ("eth0", "eth0"));
        assert_eq!(i.hwAddr, "9a:e4:18:6c:38:fc");
        assert_eq!(i.mtu, 1450);
        assert_eq!(
            i.raw_flags,
            (libc::IFF_UP | libc::IFF_BROADCAST | libc::IFF_MULTICAST) as u32
        );
        assert_eq!(i.IPAddresses.len(), 1);
        let a = &i.IPAddresses[0];
        assert_eq!(
            (a.family.value(), a.address.as_str(), a.mask.as_str()),
            (0, "10.244.0.21", "24")
        );
    }

    #[test]
    fn address_messages_prefer_the_local_address() {
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = 32;
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.1".parse().unwrap()),
            AddressAttribute::Local("10.0.0.2".parse().unwrap()),
        ];
        assert_eq!(address_of(&msg).unwrap().to_string(), "10.0.0.2/32");
        msg.attributes = vec![AddressAttribute::Address("fd00::5".parse().unwrap())];
        msg.header.prefix_len = 64;
        let a = address_proto(address_of(&msg).unwrap());
        assert_eq!(
            (a.family.value(), a.address.as_str(), a.mask.as_str()),
            (1, "fd00::5", "64")
        );
        msg.attributes.clear();
        assert_eq!(address_of(&msg), None);
    }

    /// Kata's UpdateRoutesRequest of a CNI pod: the default route through the bridge gateway.
    #[test]
    fn default_route_from_kata() {
        let r = route("", "10.244.0.1", "eth0", "", 0);
        let s = parse_route(&r, "routes.Routes[0]").unwrap();
        assert_eq!(s.family, Family::V4);
        assert_eq!(s.dest.to_string(), "0.0.0.0/0");
        assert_eq!(s.gateway, Some("10.244.0.1".parse().unwrap()));
        assert_eq!(s.describe(), "default via 10.244.0.1 dev eth0");
        let m = s.to_message(7);
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.protocol, RouteProtocol::Boot);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(
            m.attributes,
            vec![
                RouteAttribute::Oif(7),
                RouteAttribute::Gateway(RouteAddress::Inet("10.244.0.1".parse().unwrap())),
            ]
        );
        // Read back, it is the same Route.
        let back = RouteEntry::from_message(&m).unwrap();
        assert!(back.is_main_unicast());
        assert_eq!(back.key(), s.key());
        let again = back.to_route("eth0");
        assert_eq!(again.dest, "");
        assert_eq!(again.gateway, "10.244.0.1");
        assert_eq!(again.device, "eth0");
        assert_eq!(again.family.value(), 0);
        assert_eq!(parse_route(&again, "r").unwrap(), s);
    }

    #[test]
    fn link_scope_and_ipv6_routes_round_trip() {
        let r = route("10.244.0.0/24", "", "eth0", "10.244.0.21", 253);
        let s = parse_route(&r, "r").unwrap();
        assert_eq!(
            s.source,
            Some(Source::Preferred("10.244.0.21".parse().unwrap()))
        );
        assert_eq!(s.describe(), "10.244.0.0/24 dev eth0 src 10.244.0.21");
        let m = s.to_message(2);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "10.244.0.0".parse().unwrap()
            ))));
        assert!(m
            .attributes
            .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
                "10.244.0.21".parse().unwrap()
            ))));
        let back = RouteEntry::from_message(&m).unwrap().to_route("eth0");
        assert_eq!(
            (back.dest.as_str(), back.source.as_str(), back.scope),
            ("10.244.0.0/24", "10.244.0.21", 253)
        );

        let mut r = route("", "fd00:77::1", "eth0", "fd00:1::/64", 0);
        r.family = IPFamily::v6.into();
        let s = parse_route(&r, "r").unwrap();
        assert_eq!(s.dest.to_string(), "::/0");
        let back = RouteEntry::from_message(&s.to_message(2)).unwrap();
        assert_eq!(back.family, Family::V6);
        assert_eq!(
            back.source,
            Some(Source::Prefix(
                "fd00:1::/64".parse::<IpNetText>().unwrap().0
            ))
        );
        let back = back.to_route("eth0");
        assert_eq!(
            (
                back.dest.as_str(),
                back.gateway.as_str(),
                back.source.as_str(),
                back.family.value()
            ),
            ("", "fd00:77::1", "fd00:1::/64", 1)
        );

        // A bare destination address is a host route.
        let s = parse_route(&route("10.1.2.3", "", "eth0", "", 253), "r").unwrap();
        assert_eq!(s.dest.to_string(), "10.1.2.3/32");
    }

    /// `addr/len` for the tests.
    struct IpNetText(IpNet);
    impl std::str::FromStr for IpNetText {
        type Err = FieldError;
        fn from_str(s: &str) -> Result<Self, FieldError> {
            let fam = if s.contains(':') {
                Family::V6
            } else {
                Family::V4
            };
            parse_net(s, fam, "t").map(IpNetText)
        }
    }

    #[test]
    fn route_errors_name_the_field() {
        let v6 = |mut r: Route| {
            r.family = IPFamily::v6.into();
            r
        };
        let cases = [
            (route("", "10.0.0.1", "", "", 0), "r.device", "empty"),
            (
                route("", "10.0.0.1", "eth 0", "", 0),
                "r.device",
                "not an interface name",
            ),
            (
                route("10.0.0.0/33", "", "eth0", "", 0),
                "r.dest",
                "not a prefix length",
            ),
            (
                route("10.0.0.5/24", "", "eth0", "", 0),
                "r.dest",
                "host bits set (the network is 10.0.0.0/24)",
            ),
            (
                route("fd00::/64", "", "eth0", "", 0),
                "r.dest",
                "not an IPv4 address",
            ),
            (
                route("", "fd00::1", "eth0", "", 0),
                "r.gateway",
                "not an IPv4 address",
            ),
            (
                route("", "gw", "eth0", "", 0),
                "r.gateway",
                "not an IP address",
            ),
            (
                route("", "", "eth0", "10.0.0.1/40", 0),
                "r.source",
                "not a prefix length",
            ),
            (
                route("", "", "eth0", "", 256),
                "r.scope",
                "not a route scope",
            ),
            (
                v6(route("", "10.0.0.1", "eth0", "", 0)),
                "r.gateway",
                "not an IPv6 address",
            ),
        ];
        for (r, field, says) in cases {
            let e = parse_route(&r, "r").unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(says), "{e}");
        }
        let mut r = route("", "10.0.0.1", "eth0", "", 0);
        r.family = protobuf::EnumOrUnknown::from_i32(2);
        assert_eq!(parse_route(&r, "r").unwrap_err().field, "r.family");
    }

    #[test]
    fn neighbours() {
        let mut n = ARPNeighbor::new();
        n.toIPAddress = Some(ip_address(IPFamily::v4, "10.244.0.9", "")).into();
        n.device = "eth0".into();
        n.lladdr = "02:42:0a:f4:00:09".into();
        let s = parse_neighbour(&n, "n").unwrap();
        assert_eq!(s.ip, "10.244.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(s.lladdr, Some([2, 0x42, 0x0a, 0xf4, 0, 9]));
        assert_eq!(s.state, NeighbourState::Permanent);
        assert_eq!(s.flags, NeighbourFlags::empty());
        n.state = 0x02; // NUD_REACHABLE
        n.flags = 0x08; // NTF_PROXY
        let s = parse_neighbour(&n, "n").unwrap();
        assert_eq!(s.state, NeighbourState::Reachable);
        assert_eq!(s.flags, NeighbourFlags::Proxy);

        let cases: Vec<(Change<ARPNeighbor>, &str)> = vec![
            (
                |n| n.toIPAddress = protobuf::MessageField::none(),
                "n.toIPAddress",
            ),
            (
                |n| n.toIPAddress.as_mut().unwrap().address = "x".into(),
                "n.toIPAddress.address",
            ),
            (
                |n| n.toIPAddress.as_mut().unwrap().family = IPFamily::v6.into(),
                "n.toIPAddress.address",
            ),
            (|n| n.device.clear(), "n.device"),
            (|n| n.lladdr = "02:42".into(), "n.lladdr"),
            (|n| n.state = -1, "n.state"),
            (|n| n.flags = 256, "n.flags"),
        ];
        for (change, field) in cases {
            let mut m = n.clone();
            change(&mut m);
            assert_eq!(parse_neighbour(&m, "n").unwrap_err().field, field);
        }
    }
}
