//! The guest's network requests (UpdateInterface, UpdateRoutes, AddARPNeighbors, ListInterfaces,
//! ListRoutes) over rtnetlink, with Kata's semantics:
//! - UpdateInterface finds the link by `hwAddr` (the shim gives the VM NIC the pod veth's MAC),
//!   renames it to `name` (swapping names with a link that holds it), sets the MTU and the
//!   NOARP flag, makes the requested addresses its addresses (the kernel's own IPv6 link-local
//!   ones stay), and brings it up.
//! - UpdateRoutes makes the requested routes the main table's unicast routes: others are
//!   deleted except the kernel's own (protocol kernel) and loopback's; routes without a gateway
//!   are added first, since a gateway must be reachable when its route is added.
//! - AddARPNeighbors adds (or replaces) static neighbour entries.
//!
//! `Interface.devicePath` (Kata waits for that PCI device) is not used: the NIC is on the VM's
//! command line, so its driver (loaded by the init) has made the link before the agent starts.
//! Replies read the kernel's state back: UpdateInterface the link as ListInterfaces shows it,
//! UpdateRoutes the routes as ListRoutes shows them (the text forms of [`convert`]).
//!
//! One netlink connection, opened on first use; requests are served one at a time.

pub mod convert;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use agent_proto::types::{ARPNeighbor, Interface, Route};
use futures::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::{IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::error::AgentError;
use convert::{FieldError, IpNet, Link, RouteEntry};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No link has the MAC (yet: the NIC's driver may still be probing; the shim retries).
    #[error("Link not found: no interface has hwAddr {mac}")]
    NoLinkWithMac { mac: String },
    #[error("Link not found: no interface named {name:?} ({field})")]
    NoLinkNamed { name: String, field: String },
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{what}: {reason}")]
    Netlink { what: String, reason: String },
}

impl From<NetError> for AgentError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NoLinkWithMac { .. } | NetError::NoLinkNamed { .. } => {
                AgentError::NotFound(e.to_string())
            }
            NetError::Invalid(_) => AgentError::InvalidArgument(e.to_string()),
            NetError::Netlink { .. } => AgentError::Internal(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, NetError>;

/// The kernel's answer in the words `ip` would use ("File exists (os error 17)").
fn reason(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            std::io::Error::from_raw_os_error(-m.raw_code()).to_string()
        }
        e => e.to_string(),
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        reason: reason(&e),
        what,
    }
}

/// Whether the guest's IPv6 stack is on: as Kata, IPv6 addresses and routes are skipped when it
/// is off rather than failing the pod.
fn ipv6_enabled() -> bool {
    ["all", "default"].iter().any(|c| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"))
            .is_ok_and(|s| s.trim() == "0")
    })
}

/// The rtnetlink connection: its task ends with it.
struct Connection {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The guest's network configuration (the netns of the thread that first uses it: the agent's).
#[derive(Default)]
pub struct Network {
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl Network {
    pub fn new() -> Network {
        Network::default()
    }

    /// The connection (opened first if needed; one whose task has ended is replaced) and the
    /// lock that keeps other requests out while the caller works.
    async fn session(&self) -> Result<(tokio::sync::MutexGuard<'_, Option<Connection>>, Rtnl)> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.task.is_finished()) {
            *conn = None;
        }
        let handle = match conn.as_ref() {
            Some(c) => c.handle.clone(),
            None => {
                let (c, handle, _) =
                    rtnetlink::new_connection().map_err(|e| NetError::Netlink {
                        what: "opening a netlink socket".into(),
                        reason: e.to_string(),
                    })?;
                *conn = Some(Connection {
                    handle: handle.clone(),
                    task: tokio::spawn(c),
                });
                handle
            }
        };
        Ok((conn, Rtnl(handle)))
    }

    pub async fn update_interface(&self, req: &Interface) -> Result<Interface> {
        let spec = convert::parse_interface(req, "interface")?;
        let (_lock, r) = self.session().await?;
        r.update_interface(&spec).await
    }

    pub async fn update_routes(&self, req: &[Route]) -> Result<Vec<Route>> {
        let specs = req
            .iter()
            .enumerate()
            .map(|(n, r)| convert::parse_route(r, &format!("routes.Routes[{n}]")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (_lock, r) = self.session().await?;
        r.update_routes(&specs).await?;
        r.list_routes().await
    }

    pub async fn add_arp_neighbors(&self, req: &[ARPNeighbor]) -> Result<()> {
        let specs = req
            .iter()
            .enumerate()
            .map(|(n, a)| convert::parse_neighbour(a, &format!("neighbors.ARPNeighbors[{n}]")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (_lock, r) = self.session().await?;
        r.add_neighbours(&specs).await
    }

    pub async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let (_lock, r) = self.session().await?;
        r.list_interfaces().await
    }

    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let (_lock, r) = self.session().await?;
        r.list_routes().await
    }
}

/// The operations, on one connection.
struct Rtnl(rtnetlink::Handle);

impl Rtnl {
    async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .0
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing links"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    async fn link(&self, index: u32) -> Result<Link> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.index == index)
            .ok_or_else(|| NetError::Netlink {
                what: format!("link {index}"),
                reason: "gone while being configured".into(),
            })
    }

    async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let mut req = self.0.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| convert::address_of(m).map(|a| (m.header.index, a)))
            .collect())
    }

    async fn set_link(&self, msg: LinkMessage, what: String) -> Result<()> {
        self.0.link().set(msg).execute().await.map_err(failed(what))
    }

    async fn set_up(&self, link: &Link, up: bool) -> Result<()> {
        let b = LinkUnspec::new_with_index(link.index);
        let (msg, what) = if up {
            (b.up().build(), "bringing up")
        } else {
            (b.down().build(), "bringing down")
        };
        self.set_link(msg, format!("{what} {}", link.name)).await
    }

    async fn rename(&self, link: &Link, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .name(name.to_string())
            .build();
        self.set_link(msg, format!("renaming {} to {name}", link.name))
            .await
    }

    async fn update_interface(&self, spec: &convert::InterfaceSpec) -> Result<Interface> {
        let links = self.links().await?;
        let link = links
            .iter()
            .find(|l| l.mac == spec.mac)
            .cloned()
            .ok_or_else(|| NetError::NoLinkWithMac {
                mac: convert::format_mac(&spec.mac),
            })?;
        let name = spec.name.clone().unwrap_or_else(|| link.name.clone());
        let what = format!(
            "interface {name} (hwAddr {})",
            convert::format_mac(&spec.mac)
        );
        // The kernel renames only links that are down; a link holding the name gets ours
        // (through a temporary name), as Kata swaps them.
        let holder = if name != link.name {
            links.iter().find(|l| l.name == name).cloned()
        } else {
            None
        };
        if name != link.name && link.is_up() {
            self.set_up(&link, false).await?;
        }
        if let Some(h) = &holder {
            if h.is_up() {
                self.set_up(h, false).await?;
            }
            self.rename(h, &format!("kcctmp{}", h.index)).await?;
        }
        let mut b = LinkUnspec::new_with_index(link.index)
            .name(name.clone())
            .arp(!spec.noarp);
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        let mtu = spec.mtu.map(|m| format!(" MTU {m}")).unwrap_or_default();
        self.set_link(
            b.build(),
            format!("{what}: setting name {name}{mtu} on link {}", link.name),
        )
        .await?;
        if let Some(h) = &holder {
            let tmp = Link {
                name: format!("kcctmp{}", h.index),
                ..h.clone()
            };
            self.rename(&tmp, &link.name).await?;
            if h.is_up() {
                self.set_up(&tmp, true).await?;
            }
        }
        self.set_addresses(link.index, &spec.addresses, &what)
            .await?;
        let named = Link {
            name: name.clone(),
            ..link.clone()
        };
        self.set_up(&named, true).await?;
        let now = self.link(link.index).await?;
        let addrs: Vec<IpNet> = self
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        Ok(now.to_interface(&addrs))
    }

    /// Makes `want` the link's addresses: others are deleted (but for the kernel's IPv6
    /// link-local ones), the wanted ones added or refreshed.
    async fn set_addresses(&self, index: u32, want: &[IpNet], what: &str) -> Result<()> {
        let v6 = ipv6_enabled();
        let want: Vec<IpNet> = want
            .iter()
            .copied()
            .filter(|a| {
                let keep = a.addr.is_ipv4() || v6;
                if !keep {
                    log::warn!("{what}: IPv6 is disabled in the guest: {a} not added");
                }
                keep
            })
            .collect();
        let msgs: Vec<_> = self
            .0
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(failed(format!("{what}: listing its addresses")))?;
        for m in msgs {
            let Some(a) = convert::address_of(&m) else {
                continue;
            };
            if want.contains(&a) || convert::is_ipv6_link_local(&a) {
                continue;
            }
            self.0
                .address()
                .del(m)
                .execute()
                .await
                .map_err(failed(format!("{what}: deleting address {a}")))?;
        }
        for a in &want {
            self.0
                .address()
                .add(index, a.addr, a.prefix)
                .replace()
                .execute()
                .await
                .map_err(failed(format!("{what}: adding address {a}")))?;
        }
        Ok(())
    }

    async fn route_messages(&self) -> Result<Vec<RouteMessage>> {
        let mut all = Vec::new();
        // One dump at a time: the kernel answers a second dump on the socket with EBUSY.
        for (v, builder) in [
            (
                IpVersion::V4,
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            ),
            (
                IpVersion::V6,
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            ),
        ] {
            let mut msgs: Vec<RouteMessage> = self
                .0
                .route()
                .get(builder)
                .execute()
                .try_collect()
                .await
                .map_err(failed(format!("listing {v:?} routes")))?;
            all.append(&mut msgs);
        }
        Ok(all)
    }

    async fn list_routes(&self) -> Result<Vec<Route>> {
        let names: HashMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        Ok(self
            .route_messages()
            .await?
            .iter()
            .filter_map(RouteEntry::from_message)
            .filter(RouteEntry::is_main_unicast)
            .map(|e| {
                let dev = e
                    .oif
                    .and_then(|i| names.get(&i))
                    .map(String::as_str)
                    .unwrap_or("");
                e.to_route(dev)
            })
            .collect())
    }

    async fn update_routes(&self, specs: &[convert::RouteSpec]) -> Result<()> {
        let links = self.links().await?;
        let index_of = |name: &str, field: String| {
            links
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.index)
                .ok_or_else(|| NetError::NoLinkNamed {
                    name: name.to_string(),
                    field,
                })
        };
        let v6 = ipv6_enabled();
        let mut todo = Vec::new();
        for (n, s) in specs.iter().enumerate() {
            let oif = index_of(&s.device, format!("routes.Routes[{n}].device"))?;
            if s.family == convert::Family::V6 && !v6 {
                log::warn!(
                    "IPv6 is disabled in the guest: route {} not added",
                    s.describe()
                );
                continue;
            }
            todo.push((n, s, oif));
        }
        let wanted: HashSet<_> = todo.iter().map(|(_, s, _)| s.key()).collect();
        let loopbacks: HashSet<u32> = links
            .iter()
            .filter(|l| l.is_loopback())
            .map(|l| l.index)
            .collect();
        for m in self.route_messages().await? {
            let Some(e) = RouteEntry::from_message(&m) else {
                continue;
            };
            let ours = e.is_main_unicast()
                && e.protocol != RouteProtocol::Kernel
                && e.oif.is_some_and(|i| !loopbacks.contains(&i));
            if !ours || wanted.contains(&e.key()) {
                continue;
            }
            let dev = e.oif.unwrap_or(0);
            self.0
                .route()
                .del(m)
                .execute()
                .await
                .map_err(failed(format!(
                    "deleting route {} (link {dev}) before adding the requested ones",
                    e.dest
                )))?;
        }
        // Routes to the links first: a gateway must be reachable when its route is added.
        todo.sort_by_key(|(_, s, _)| s.gateway.is_some());
        for (n, s, oif) in todo {
            self.0
                .route()
                .add(s.to_message(oif))
                .replace()
                .execute()
                .await
                .map_err(failed(format!(
                    "routes.Routes[{n}]: adding route {}",
                    s.describe()
                )))?;
        }
        Ok(())
    }

    async fn add_neighbours(&self, specs: &[convert::NeighbourSpec]) -> Result<()> {
        let links = self.links().await?;
        for (n, s) in specs.iter().enumerate() {
            let field = format!("neighbors.ARPNeighbors[{n}]");
            let index = links
                .iter()
                .find(|l| l.name == s.device)
                .map(|l| l.index)
                .ok_or_else(|| NetError::NoLinkNamed {
                    name: s.device.clone(),
                    field: format!("{field}.device"),
                })?;
            let mut req = self
                .0
                .neighbours()
                .add(index, s.ip)
                .state(s.state)
                .flags(s.flags)
                .replace();
            if let Some(ll) = &s.lladdr {
                req = req.link_layer_address(ll);
            }
            let lladdr = s
                .lladdr
                .map(|l| format!(" lladdr {}", convert::format_mac(&l)))
                .unwrap_or_default();
            req.execute().await.map_err(failed(format!(
                "{field}: adding neighbour {}{lladdr} dev {}",
                s.ip, s.device
            )))?;
        }
        Ok(())
    }

    async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let links = self.links().await?;
        let mut by_link: HashMap<u32, Vec<IpNet>> = HashMap::new();
        for (i, a) in self.addresses(None).await? {
            by_link.entry(i).or_default().push(a);
        }
        Ok(links
            .iter()
            .map(|l| l.to_interface(by_link.get(&l.index).map_or(&[][..], Vec::as_slice)))
            .collect())
    }
}
