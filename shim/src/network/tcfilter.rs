//! Kata's `tcfilter` interworking model for one link: a TAP beside it in the pod's namespace,
//! an `ingress` qdisc on both, and a u32 match-all filter on each whose action (mirred egress
//! redirect) hands every frame that arrives on one to the other (Kata's `setupTCFiltering`).
//! The VM NIC, backed by the TAP, carries the link's MAC, so the pod's network sees the VM's
//! frames as the link's own.

use std::os::fd::OwnedFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::scan::LinkInfo;
use super::tap;
use super::NetworkError;

/// `ETH_P_ALL`: the filters match every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle (`ffff:`), the filters' parent.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// One link connected to the VM.
#[derive(Debug)]
pub struct Nic {
    /// The pod's link (normally the veth `eth0`).
    pub link: LinkInfo,
    pub tap_name: String,
    pub tap_index: u32,
    /// The TAP's queue, passed to QEMU.
    pub tap_fd: OwnedFd,
    /// `/dev/vhost-net`, when the host has it.
    pub vhost_fd: Option<OwnedFd>,
    /// Whether the link's ingress qdisc (ours) is in place and must be removed.
    link_qdisc: bool,
}

fn link_err(interface: &str, step: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let interface = interface.to_string();
    move |source| NetworkError::Netlink {
        interface,
        step,
        source,
    }
}

/// The errno of a netlink error answer (positive), if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Connects `link` (the `n`th the VM gets) to a new TAP. On failure whatever was made is
/// removed again.
pub async fn attach(handle: &Handle, link: &LinkInfo, n: usize) -> Result<Nic, NetworkError> {
    let tap_name = tap::tap_name(n);
    let tap_fd = tap::create_tap(&tap_name).map_err(|source| NetworkError::Tap {
        name: tap_name.clone(),
        source,
    })?;
    // The TAP goes away with its last descriptor: from here on, dropping `nic` on an error
    // removes it even if the explicit removal below fails.
    let mut nic = Nic {
        link: link.clone(),
        tap_index: 0,
        tap_name,
        tap_fd,
        vhost_fd: tap::open_vhost_net(),
        link_qdisc: false,
    };
    match connect(handle, &mut nic).await {
        Ok(()) => Ok(nic),
        Err(e) => {
            if let Err(undo) = detach(handle, &nic).await {
                log::warn!("undoing {} -> {}: {undo}", nic.link.name, nic.tap_name);
            }
            Err(e)
        }
    }
}

async fn connect(handle: &Handle, nic: &mut Nic) -> Result<(), NetworkError> {
    let tap = nic.tap_name.clone();
    let tap_link = handle
        .link()
        .get()
        .match_name(tap.clone())
        .execute()
        .try_next()
        .await
        .map_err(link_err(&tap, "look up"))?
        .ok_or_else(|| NetworkError::TapVanished { name: tap.clone() })?;
    nic.tap_index = tap_link.header.index;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(nic.tap_index)
                .mtu(nic.link.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(link_err(&tap, "set MTU and up"))?;
    add_ingress_qdisc(handle, nic.tap_index, &tap).await?;
    add_ingress_qdisc(handle, nic.link.index, &nic.link.name).await?;
    nic.link_qdisc = true;
    add_redirect(handle, nic.link.index, &nic.link.name, nic.tap_index).await?;
    add_redirect(handle, nic.tap_index, &tap, nic.link.index).await?;
    Ok(())
}

/// `tc qdisc add dev <dev> ingress`. A busy qdisc layer (EBUSY) is retried, as Kata does.
async fn add_ingress_qdisc(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    let mut attempt = 0;
    loop {
        match handle.qdisc().add(index as i32).ingress().execute().await {
            Ok(()) => return Ok(()),
            Err(e) if errno(&e) == Some(libc::EBUSY) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(link_err(name, "add the ingress qdisc")(e)),
        }
    }
}

/// `tc filter add dev <from> parent ffff: protocol all u32 match u8 0 0 action mirred egress
/// redirect dev <to>`.
async fn add_redirect(
    handle: &Handle,
    from: u32,
    from_name: &str,
    to: u32,
) -> Result<(), NetworkError> {
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS_HANDLE)
        // tcm_info's protocol is in network byte order.
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(link_err(from_name, "build the redirect filter"))?
        .execute()
        .await
        .map_err(link_err(from_name, "add the redirect filter"))
}

/// Undoes `attach`: deletes the TAP (its qdisc and filter go with it), deletes the link's
/// ingress qdisc (and its filter) and takes the link down, as Kata's `removeTCFiltering` does.
/// Things already gone (the namespace's links removed by CNI) are not errors. The TAP's
/// descriptors close when the `Nic` drops.
pub async fn detach(handle: &Handle, nic: &Nic) -> Result<(), NetworkError> {
    let gone = |e: &rtnetlink::Error| {
        matches!(
            errno(e),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::EINVAL)
        )
    };
    let mut first_err = None;
    if nic.tap_index != 0 {
        if let Err(e) = handle.link().del(nic.tap_index).execute().await {
            if !gone(&e) {
                first_err.get_or_insert(link_err(&nic.tap_name, "delete")(e));
            }
        }
    }
    if nic.link_qdisc {
        let mut del = handle.qdisc().del(nic.link.index as i32);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
        if let Err(e) = del.execute().await {
            if !gone(&e) {
                first_err.get_or_insert(link_err(&nic.link.name, "delete the ingress qdisc")(e));
            }
        }
        let down = LinkUnspec::new_with_index(nic.link.index).down().build();
        if let Err(e) = handle.link().set(down).execute().await {
            if !gone(&e) {
                first_err.get_or_insert(link_err(&nic.link.name, "set down")(e));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
