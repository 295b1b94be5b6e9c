//! The pod's network, host side. Under CRI, containerd creates the pod's network namespace and
//! CNI configures it (a veth `eth0` with the pod's addresses and routes) before the shim is
//! called; the pause spec names the namespace. The shim connects each configured link to a
//! VM NIC with Kata's `tcfilter` model and later tells the agent the link's addresses, routes
//! and neighbours, so the guest's `eth0` becomes the pod's.
//!
//! QEMU itself stays in the shim's namespace: it gets the TAPs by file descriptor, which is all
//! it needs (Kata's Go runtime starts QEMU inside the namespace; its fds would suffice too).

pub mod netns;
pub mod requests;
pub mod scan;
pub mod tap;
pub mod tcfilter;

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::InterworkingModel;
use crate::vm::qemu::NetDevice;
use netns::NetNs;
use requests::NetworkRequests;
use scan::LinkInfo;
use tcfilter::Nic;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("network namespace {path}: cannot {step} it: {source}")]
    Netns {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: its worker thread ended without an answer")]
    Thread { path: PathBuf },
    #[error("netlink connection: {0}")]
    Connect(#[source] std::io::Error),
    #[error("network namespace {netns}: listing {what}: {source}")]
    Dump {
        netns: String,
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {netns}: interface {name} is a {kind}, which kata-cc cannot connect to the VM (veth, macvlan, ipvlan or a plain device can be)")]
    UnsupportedLink {
        netns: String,
        name: String,
        kind: String,
    },
    #[error("cannot create TAP {name}: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TAP {name} vanished right after it was created")]
    TapVanished { name: String },
    #[error("interface {interface}: {step}: {source}")]
    Netlink {
        interface: String,
        step: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Runs `f` with an rtnetlink handle whose socket belongs to the calling thread's network
/// namespace, on a runtime of its own (the caller is a namespace thread, not the shim's
/// runtime).
fn with_netlink<T, F, Fut>(f: F) -> Result<T, NetworkError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(NetworkError::Connect)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
        let conn = tokio::spawn(conn);
        let r = f(handle).await;
        conn.abort();
        r
    })
}

/// The pod's links connected to the VM. One owner: `teardown` (or Drop) removes the TAPs,
/// qdiscs and filters it made, in the pod's namespace.
#[derive(Debug)]
pub struct PodNetwork {
    netns: NetNs,
    nics: Vec<Nic>,
}

impl PodNetwork {
    /// Connects the pod's configured links to TAPs for the VM. None when there is nothing to
    /// connect: no namespace path (ctr's containers, host networking), the model is `none`, or
    /// the namespace has no configured link besides loopback.
    pub async fn setup(
        model: InterworkingModel,
        netns_path: Option<&Path>,
    ) -> Result<Option<PodNetwork>, NetworkError> {
        let Some(path) = netns_path else {
            return Ok(None);
        };
        if model == InterworkingModel::None {
            log::info!(
                "network namespace {}: internetworking_model = \"none\": the VM gets no NIC",
                path.display()
            );
            return Ok(None);
        }
        let netns = NetNs::open(path)?;
        let owner_ns = NetNs::open(path)?;
        let label = path.display().to_string();
        // The owner is made on the namespace thread: if this future is dropped meanwhile,
        // the unwanted result drops there and cleans up after itself.
        let net = netns
            .run(move || {
                let nics = with_netlink(|h| async move {
                    let links = scan::vm_links(scan::scan(&h, &label).await?, &label)?;
                    let mut nics: Vec<Nic> = Vec::new();
                    for (n, link) in links.iter().enumerate() {
                        match tcfilter::attach(&h, link, n).await {
                            Ok(nic) => nics.push(nic),
                            Err(e) => {
                                for nic in &nics {
                                    if let Err(undo) = tcfilter::detach(&h, nic).await {
                                        log::warn!("{label}: undoing {}: {undo}", nic.tap_name);
                                    }
                                }
                                return Err(e);
                            }
                        }
                    }
                    Ok(nics)
                })?;
                Ok(PodNetwork {
                    netns: owner_ns,
                    nics,
                })
            })
            .await?;
        for nic in &net.nics {
            log::info!(
                "network namespace {}: {} ({}, {}, MTU {}) <-> {} (vhost-net: {})",
                path.display(),
                nic.link.name,
                nic.link.mac_string(),
                nic.link
                    .addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                nic.link.mtu,
                nic.tap_name,
                if nic.vhost_fd.is_some() { "on" } else { "off" }
            );
        }
        if net.nics.is_empty() {
            log::info!(
                "network namespace {}: no configured link: the VM gets no NIC",
                path.display()
            );
            return Ok(None);
        }
        Ok(Some(net))
    }

    /// The VM NICs, for QEMU's command line. The descriptors stay valid while `self` lives.
    pub fn qemu_devices(&self) -> Vec<NetDevice> {
        self.nics
            .iter()
            .enumerate()
            .map(|(n, nic)| NetDevice {
                id: format!("net{n}"),
                tap_fd: nic.tap_fd.as_raw_fd(),
                vhost_fd: nic.vhost_fd.as_ref().map(|f| f.as_raw_fd()),
                mac: nic.link.mac_string(),
            })
            .collect()
    }

    pub fn links(&self) -> Vec<LinkInfo> {
        self.nics.iter().map(|n| n.link.clone()).collect()
    }

    /// The agent requests that give the guest the links' configuration.
    pub fn requests(&self) -> NetworkRequests {
        requests::build(&self.links())
    }

    pub fn netns(&self) -> &Path {
        self.netns.path()
    }

    /// Removes the TAPs, the links' qdiscs and filters; closes the TAPs' descriptors.
    pub async fn teardown(mut self) -> Result<(), NetworkError> {
        let nics = std::mem::take(&mut self.nics);
        let path = self.netns.path().to_path_buf();
        self.netns
            .run(move || with_netlink(|h| async move { detach_all(&h, &path, nics).await }))
            .await
    }
}

async fn detach_all(
    h: &rtnetlink::Handle,
    netns: &Path,
    nics: Vec<Nic>,
) -> Result<(), NetworkError> {
    let mut first_err = None;
    for nic in nics {
        match tcfilter::detach(h, &nic).await {
            Ok(()) => log::info!(
                "network namespace {}: {} and the redirects of {} removed",
                netns.display(),
                nic.tap_name,
                nic.link.name
            ),
            Err(e) => {
                log::error!("network namespace {}: {e}", netns.display());
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if self.nics.is_empty() {
            return;
        }
        let nics = std::mem::take(&mut self.nics);
        let path = self.netns.path().to_path_buf();
        if let Err(e) = self.netns.run_blocking(move || {
            with_netlink(|h| async move { detach_all(&h, &path, nics).await })
        }) {
            log::error!("removing the pod network: {e}");
        }
    }
}
