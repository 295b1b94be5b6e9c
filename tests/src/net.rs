//! Pod networking as the tests see it: the pod's network namespace on the host (its links,
//! routes, qdiscs and tc filters, read with iproute2 through `nsenter`), what a container sees
//! of its own network (busybox `ip addr`, `/proc/net/route`), TCP from the test process, and
//! the checks the network tests run on kata-cc pods and, in the harness's own tests, on runc
//! pods of the same node (a check that fails on runc is wrong, not kata-cc).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checks::Checks;
use crate::cri::{ContainerSpec, PodSpec};
use crate::kubelet::{poll, Node, Pod};
use crate::{cmd, paths};

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// The hardware address, lowercase `aa:bb:...`; empty when it has none.
    pub mac: String,
    pub mtu: u32,
    /// IFF_UP is set.
    pub up: bool,
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// The link kind (`veth`, `tun`, `bridge`, ...) when iproute2 reports one.
    pub kind: Option<String>,
}

/// One IPv4 route, as `/proc/net/route` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub iface: String,
    pub dest: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub flags: u32,
}

/// `RTF_GATEWAY` of a route's flags.
pub const RTF_GATEWAY: u32 = 0x2;

impl Route4 {
    pub fn is_default(&self) -> bool {
        self.dest.is_unspecified() && self.mask.is_unspecified()
    }
}

/// Parses `/proc/net/route` (addresses are the in-memory network-order words, printed as hex
/// of a native, here little-endian, u32).
pub fn parse_proc_route(text: &str) -> Result<Vec<Route4>, String> {
    let addr = |h: &str| {
        u32::from_str_radix(h, 16)
            .map(|v| Ipv4Addr::from(v.to_le_bytes()))
            .map_err(|e| format!("bad address {h:?} in /proc/net/route: {e}"))
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(format!("short /proc/net/route line: {line:?}"));
        }
        out.push(Route4 {
            iface: f[0].to_string(),
            dest: addr(f[1])?,
            gateway: addr(f[2])?,
            flags: u32::from_str_radix(f[3], 16)
                .map_err(|e| format!("bad flags in /proc/net/route line {line:?}: {e}"))?,
            mask: addr(f[7])?,
        });
    }
    Ok(out)
}

/// Parses the plain output of `ip addr` (iproute2's or busybox's): one block per link.
pub fn parse_ip_addr(text: &str) -> Result<Vec<Link>, String> {
    let mut links: Vec<Link> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        let starts_link = !line.starts_with(char::is_whitespace)
            && words
                .first()
                .and_then(|w| w.strip_suffix(':'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if starts_link {
            let name = words
                .get(1)
                .map(|w| w.trim_end_matches(':'))
                .and_then(|w| w.split('@').next())
                .ok_or_else(|| format!("no link name in {line:?}"))?;
            let flags = words
                .get(2)
                .map(|w| w.trim_start_matches('<').trim_end_matches('>'))
                .unwrap_or("");
            let mtu = words
                .iter()
                .position(|w| *w == "mtu")
                .and_then(|i| words.get(i + 1))
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| format!("no mtu in {line:?}"))?;
            links.push(Link {
                name: name.to_string(),
                mac: String::new(),
                mtu,
                up: flags.split(',').any(|f| f == "UP"),
                ipv4: Vec::new(),
                kind: None,
            });
            continue;
        }
        let Some(link) = links.last_mut() else {
            continue;
        };
        match words.first() {
            Some(w) if w.starts_with("link/") => {
                link.mac = words.get(1).unwrap_or(&"").to_ascii_lowercase();
            }
            Some(&"inet") => {
                let a = words
                    .get(1)
                    .ok_or_else(|| format!("no address: {line:?}"))?;
                link.ipv4.push(parse_cidr(a)?);
            }
            _ => {}
        }
    }
    Ok(links)
}

/// `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    Ok((
        a.parse()
            .map_err(|_| format!("not an IPv4 address: {s:?}"))?,
        l.parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("bad prefix length: {s:?}"))?,
    ))
}

/// Parses `ip -j -d addr show` (iproute2's JSON).
pub fn parse_ip_json(text: &str) -> Result<Vec<Link>, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("ip -j output is not JSON ({e}): {text}"))?;
    let arr = v
        .as_array()
        .ok_or_else(|| format!("ip -j output is not an array: {text}"))?;
    let mut out = Vec::new();
    for l in arr {
        let name = l["ifname"]
            .as_str()
            .ok_or_else(|| format!("a link without ifname: {l}"))?;
        let mut ipv4 = Vec::new();
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["family"] != "inet" {
                continue;
            }
            let ip = a["local"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{name}: bad address {a}"))?;
            let len = a["prefixlen"]
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| format!("{name}: bad prefixlen {a}"))?;
            ipv4.push((ip, len));
        }
        out.push(Link {
            name: name.to_string(),
            mac: l["address"].as_str().unwrap_or("").to_ascii_lowercase(),
            mtu: l["mtu"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| format!("{name}: no mtu"))?,
            up: l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP")),
            ipv4,
            kind: l["linkinfo"]["info_kind"].as_str().map(str::to_string),
        });
    }
    Ok(out)
}

/// A command run inside the network namespace at `netns` (`nsenter --net=`); its stdout.
pub fn in_netns(netns: &Path, argv: &[&str]) -> String {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(argv);
    let out = cmd::run(c, None, paths::ctr_timeout());
    out.assert_success();
    out.stdout_str()
}

/// The links of a network namespace.
pub fn netns_links(netns: &Path) -> Vec<Link> {
    let text = in_netns(netns, &["ip", "-j", "-d", "addr", "show"]);
    parse_ip_json(&text).unwrap_or_else(|e| panic!("{}: {e}", netns.display()))
}

/// One link of a network namespace, by name.
pub fn netns_link(netns: &Path, name: &str) -> Link {
    let links = netns_links(netns);
    links
        .iter()
        .find(|l| l.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in netns {}: {links:?}", netns.display()))
}

/// The IPv4 routes of a network namespace (its `/proc/net/route`).
pub fn netns_routes(netns: &Path) -> Vec<Route4> {
    let text = in_netns(netns, &["cat", "/proc/net/route"]);
    parse_proc_route(&text).unwrap_or_else(|e| panic!("{}: {e}", netns.display()))
}

/// The qdiscs of a network namespace as (device, kind).
pub fn netns_qdiscs(netns: &Path) -> Vec<(String, String)> {
    let text = in_netns(netns, &["tc", "-j", "qdisc", "show"]);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tc -j qdisc show is not JSON ({e}): {text}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            (
                q["dev"].as_str().unwrap_or("").to_string(),
                q["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `tc filter show dev <dev> ingress` in a network namespace (text: tc's JSON output for u32
/// filters and their actions differs between iproute2 versions).
pub fn netns_ingress_filters(netns: &Path, dev: &str) -> String {
    in_netns(netns, &["tc", "filter", "show", "dev", dev, "ingress"])
}

/// Connects to `addr`, sends `send`, half-closes, and reads until the peer closes, each step
/// bounded by `timeout`.
pub fn tcp_exchange(addr: SocketAddr, send: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(send)?;
    s.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Polls `addr` until a TCP exchange gives `want` (a server in a container may not listen yet
/// when its container has started), for up to KATA_CC_E2E_CTR_TIMEOUT.
pub fn poll_answer(addr: SocketAddr, want: &str) {
    poll(
        &format!("{want:?} from {addr} over TCP"),
        paths::ctr_timeout(),
        || match tcp_exchange(addr, b"", Duration::from_secs(5)) {
            Ok(b) if b == want.as_bytes() => Ok(()),
            Ok(b) => Err(format!("answered {:?}", String::from_utf8_lossy(&b))),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// A TCP port nobody on the host listens on now (for a hostPort mapping).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// A listener of the test on a host address that greets the first connection and records
/// where it came from.
pub struct Greeter {
    pub addr: SocketAddr,
    thread: JoinHandle<Result<SocketAddr, String>>,
}

impl Greeter {
    /// Listens on `ip` (an ephemeral port) for `timeout`.
    pub fn start(ip: Ipv4Addr, greeting: &str, timeout: Duration) -> Greeter {
        let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let addr = l.local_addr().expect("local address");
        l.set_nonblocking(true).expect("non-blocking listener");
        let greeting = format!("{greeting}\n");
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            loop {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        s.write_all(greeting.as_bytes())
                            .map_err(|e| format!("greeting {peer}: {e}"))?;
                        return Ok(peer);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(format!(
                                "no connection to {addr} within {}s",
                                timeout.as_secs()
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(format!("accept on {addr}: {e}")),
                }
            }
        });
        Greeter { addr, thread }
    }

    /// Where the greeted connection came from.
    pub fn peer(self) -> Result<SocketAddr, String> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the listener thread panicked".to_string()))
    }
}

/// A container command: busybox `nc` serving `greeting` (and a newline) to every connection
/// on `port` (`-ll`: keep listening; `-e`: the rest of the arguments run per connection).
pub fn greeter_command(port: u16, greeting: &str) -> Vec<String> {
    [
        "busybox",
        "nc",
        "-ll",
        "-p",
        &port.to_string(),
        "-e",
        "echo",
        greeting,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The pod's IP as CRI reports it (PodSandboxStatus.network.ip): an address of the node's
/// subnet other than the gateway.
pub fn pod_ip(node: &Node, pod: &Pod) -> Ipv4Addr {
    let net = node.network();
    let ip: Ipv4Addr = pod
        .ip
        .parse()
        .unwrap_or_else(|_| panic!("pod {}: CRI reports IP {:?}", pod.spec.name, pod.ip));
    assert!(
        net.contains(ip) && ip != net.gateway,
        "pod {} IP {ip} is not a pod address of {}/{} (gateway {})",
        pod.spec.name,
        net.subnet.0,
        net.subnet.1,
        net.gateway
    );
    ip
}

/// ExecSync `busybox nc -w 10 <addr>` in a container: what the server sent.
pub fn nc_from_container(node: &Node, cid: &str, addr: SocketAddr) -> String {
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let o = node.exec(cid, &["busybox", "nc", "-w", "10", &ip, &port]);
    assert_eq!(
        o.exit_code, 0,
        "`nc {ip} {port}` in {cid}: exit {}\nstdout: {}\nstderr: {}",
        o.exit_code, o.stdout, o.stderr
    );
    o.stdout
}

/// A container connects to a listener of the test on the bridge's address (a host address),
/// and the connection arrives from the pod's own IP (nothing masquerades it).
pub fn reaches_gateway(node: &Node, cid: &str, from: Ipv4Addr) {
    let net = node.network();
    let g = Greeter::start(net.gateway, "hello-from-the-host", paths::ctr_timeout());
    let addr = g.addr;
    let got = nc_from_container(node, cid, addr);
    let peer = g.peer().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, "hello-from-the-host\n", "from {addr}");
    assert_eq!(peer.ip(), IpAddr::V4(from), "the connection's source");
}

/// Busybox's `ip addr show dev eth0` in a container, parsed.
pub fn container_eth0(node: &Node, cid: &str) -> Link {
    let text = node.sh(cid, "busybox ip addr show dev eth0");
    let links = parse_ip_addr(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    match links.as_slice() {
        [one] if one.name == "eth0" => one.clone(),
        _ => panic!("`ip addr show dev eth0` in {cid}: {text}"),
    }
}

/// The container's eth0 is the pod's: the MAC, MTU and pod IP (with CNI's prefix) of the veth
/// end CNI put in the pod's netns, and up. Returns the netns's eth0.
pub fn eth0_is_the_pods(node: &Node, pod: &Pod, cid: &str) -> Link {
    let ip = pod_ip(node, pod);
    let netns = node.netns_path(pod);
    let veth = netns_link(&netns, "eth0");
    assert_eq!(
        veth.kind.as_deref(),
        Some("veth"),
        "eth0 in the netns: {veth:?}"
    );
    assert!(
        veth.ipv4.iter().any(|(a, _)| *a == ip),
        "the netns's eth0 has no {ip}: {veth:?}"
    );
    let inner = container_eth0(node, cid);
    assert_eq!(
        inner.mac, veth.mac,
        "eth0's MAC in the container vs the veth's"
    );
    assert_eq!(
        inner.mtu, veth.mtu,
        "eth0's MTU in the container vs the veth's"
    );
    assert!(inner.up, "eth0 is down in the container: {inner:?}");
    for a in &veth.ipv4 {
        assert!(
            inner.ipv4.contains(a),
            "eth0 in the container lacks {}/{}: {inner:?}",
            a.0,
            a.1
        );
    }
    veth
}

/// The container's routes are CNI's: a default route through the bridge's address on eth0,
/// and every IPv4 route of the pod's netns on eth0 (destination, mask, gateway).
pub fn routes_are_cnis(node: &Node, pod: &Pod, cid: &str) {
    let gw = node.network().gateway;
    let text = node.sh(cid, "cat /proc/net/route");
    let inner = parse_proc_route(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let default: Vec<&Route4> = inner.iter().filter(|r| r.is_default()).collect();
    assert!(
        matches!(default.as_slice(), [r] if r.iface == "eth0" && r.gateway == gw && r.flags & RTF_GATEWAY != 0),
        "default route in the container: want via {gw} on eth0; routes: {inner:?}"
    );
    let netns = node.netns_path(pod);
    let outer = netns_routes(&netns);
    for r in outer.iter().filter(|r| r.iface == "eth0") {
        assert!(
            inner.iter().any(|i| i.iface == "eth0"
                && i.dest == r.dest
                && i.mask == r.mask
                && i.gateway == r.gateway),
            "route {r:?} of the pod's netns is missing in the container: {inner:?}"
        );
    }
}

/// A hostPort mapping (CNI portmap's DNAT) reaches the pod's server from the host: through a
/// host address (the bridge's) and through 127.0.0.1.
pub fn host_port_reaches(node: &Node, host_port: u16, want: &str) {
    let gw = node.network().gateway;
    poll_answer(SocketAddr::from((gw, host_port)), want);
    poll_answer(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)), want);
}

/// `/etc/resolv.conf` in the container is the one CRI wrote for the pod (its DNS config).
pub fn resolv_conf_is_cris(node: &Node, pod: &Pod, cid: &str) {
    let host = node.cri_sandbox_file(pod, "resolv.conf");
    let want = std::fs::read_to_string(&host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    assert!(
        want.contains("nameserver 10.96.0.10"),
        "{}: {want}",
        host.display()
    );
    let got = node.sh(cid, "cat /etc/resolv.conf");
    assert_eq!(got, want.trim_end(), "resolv.conf in {cid}");
}

/// The server pod's port and what it answers.
pub const SERVER_PORT: u16 = 8080;
pub const GREETING: &str = "hi-from-the-server-pod";

/// Two pods on the node's bridge: a server (busybox nc greeting on [`SERVER_PORT`], mapped to
/// a host port through CNI portmap) and a client (an idle container to exec in).
pub struct NetPods {
    pub server: Pod,
    pub server_cid: String,
    pub client: Pod,
    pub client_cid: String,
    /// The server's hostPort.
    pub host_port: u16,
}

impl NetPods {
    /// Runs both pods with `handler`; `uids` are their pod uids.
    pub fn start(node: &Node, handler: &str, uids: [&str; 2]) -> NetPods {
        let host_port = free_port();
        let mut spec = PodSpec::new("net-server", uids[0], &node.log_root);
        spec.ports
            .push((i32::from(SERVER_PORT), i32::from(host_port)));
        let server = node.run_pod_with(&spec, handler);
        let argv = greeter_command(SERVER_PORT, GREETING);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = ContainerSpec::new("server", &node.busybox.reference, &argv);
        c.mounts = server.kubelet_mounts("server");
        let server_cid = node.run_container(&server, &c);

        let spec = PodSpec::new("net-client", uids[1], &node.log_root);
        let client = node.run_pod_with(&spec, handler);
        let mut c = ContainerSpec::new("client", &node.busybox.reference, &["sleep", "1000000"]);
        c.mounts = client.kubelet_mounts("client");
        let client_cid = node.run_container(&client, &c);
        NetPods {
            server,
            server_cid,
            client,
            client_cid,
            host_port,
        }
    }

    /// The checks that hold for any runtime: pod IPs, host -> pod, pod -> pod, pod -> gateway,
    /// eth0 and routes as CNI set them, hostPort, resolv.conf.
    pub fn check(&self, node: &Node, checks: &mut Checks) {
        checks.run("CRI reports two pod IPs of the node's subnet", || {
            let (a, b) = (pod_ip(node, &self.server), pod_ip(node, &self.client));
            assert_ne!(a, b, "both pods have {a}");
        });
        checks.run("the server answers from the host at the pod IP", || {
            let ip = pod_ip(node, &self.server);
            poll_answer(
                SocketAddr::from((ip, SERVER_PORT)),
                &format!("{GREETING}\n"),
            );
        });
        checks.run("a second pod reaches the first by IP", || {
            let ip = pod_ip(node, &self.server);
            // The server listens once its container runs; the host check may not have run.
            poll_answer(
                SocketAddr::from((ip, SERVER_PORT)),
                &format!("{GREETING}\n"),
            );
            let got =
                nc_from_container(node, &self.client_cid, SocketAddr::from((ip, SERVER_PORT)));
            assert_eq!(got, format!("{GREETING}\n"));
        });
        checks.run("a container reaches the bridge gateway", || {
            reaches_gateway(node, &self.client_cid, pod_ip(node, &self.client))
        });
        checks.run("eth0: the veth's MAC and MTU, the pod IP, up", || {
            eth0_is_the_pods(node, &self.server, &self.server_cid);
            eth0_is_the_pods(node, &self.client, &self.client_cid);
        });
        checks.run("the default route and the routes are CNI's", || {
            routes_are_cnis(node, &self.server, &self.server_cid);
            routes_are_cnis(node, &self.client, &self.client_cid);
        });
        checks.run("a hostPort mapping reaches the pod from the host", || {
            host_port_reaches(node, self.host_port, &format!("{GREETING}\n"))
        });
        checks.run("resolv.conf is the one CRI wrote for the pod", || {
            resolv_conf_is_cris(node, &self.client, &self.client_cid)
        });
    }

    /// Stops and removes both pods as the kubelet does (each pod's QEMU gone, when given).
    pub fn teardown(&self, node: &Node, qemus: [Option<i32>; 2]) {
        node.teardown(&self.client, qemus[1]);
        node.teardown(&self.server, qemus[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_route() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t01C8C90A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t00C8C90A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_proc_route(text).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].is_default());
        assert_eq!(r[0].gateway, Ipv4Addr::new(10, 201, 200, 1));
        assert_eq!(r[0].flags & RTF_GATEWAY, RTF_GATEWAY);
        assert_eq!(r[1].dest, Ipv4Addr::new(10, 201, 200, 0));
        assert_eq!(r[1].mask, Ipv4Addr::new(255, 255, 255, 0));
        assert!(!r[1].is_default());
        assert!(parse_proc_route("h\neth0 zz 0 0 0 0 0 0\n").is_err());
    }

    #[test]
    fn parses_busybox_ip_addr() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\n\
                    \x20   link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
                    \x20   inet 127.0.0.1/8 scope host lo\n\
                    \x20      valid_lft forever preferred_lft forever\n\
                    2: eth0@if9: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue\n\
                    \x20   link/ether 6E:2c:11:aa:00:01 brd ff:ff:ff:ff:ff:ff\n\
                    \x20   inet 10.201.200.2/24 brd 10.201.200.255 scope global eth0\n\
                    \x20      valid_lft forever preferred_lft forever\n\
                    \x20   inet6 fe80::6c2c:11ff:feaa:1/64 scope link\n\
                    3: eth1: <BROADCAST,MULTICAST> mtu 9000 qdisc noop qlen 1000\n\
                    \x20   link/ether 52:54:00:00:00:02 brd ff:ff:ff:ff:ff:ff\n";
        let l = parse_ip_addr(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].name, "eth0");
        assert_eq!(l[1].mac, "6e:2c:11:aa:00:01");
        assert_eq!((l[1].mtu, l[1].up), (1500, true));
        assert_eq!(l[1].ipv4, vec![(Ipv4Addr::new(10, 201, 200, 2), 24)]);
        assert_eq!(
            (l[2].name.as_str(), l[2].mtu, l[2].up),
            ("eth1", 9000, false)
        );
        assert!(l[2].ipv4.is_empty());
    }

    #[test]
    fn parses_ip_json() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,
            "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":2,"ifname":"eth0","link_index":9,"flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
            "mtu":1500,"address":"6e:2c:11:aa:00:01","linkinfo":{"info_kind":"veth"},
            "addr_info":[{"family":"inet","local":"10.201.200.2","prefixlen":24},
                         {"family":"inet6","local":"fe80::1","prefixlen":64}]},
            {"ifindex":3,"ifname":"tap0_kata","flags":["BROADCAST","MULTICAST"],"mtu":1500,
            "address":"aa:bb:cc:dd:ee:ff","linkinfo":{"info_kind":"tun"},"addr_info":[]}]"#;
        let l = parse_ip_json(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].kind.as_deref(), Some("veth"));
        assert_eq!(l[1].ipv4, vec![(Ipv4Addr::new(10, 201, 200, 2), 24)]);
        assert!(l[1].up && !l[2].up);
        assert_eq!(l[2].kind.as_deref(), Some("tun"));
        assert!(parse_ip_json("{}").is_err());
    }

    #[test]
    fn tcp_exchange_and_greeter() {
        let g = Greeter::start(Ipv4Addr::LOCALHOST, "hi", Duration::from_secs(10));
        let got = tcp_exchange(g.addr, b"", Duration::from_secs(10)).unwrap();
        assert_eq!(got, b"hi\n");
        assert_eq!(g.peer().unwrap().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let idle = Greeter::start(Ipv4Addr::LOCALHOST, "hi", Duration::from_millis(100));
        assert!(idle.peer().unwrap_err().contains("no connection"));
    }

    #[test]
    fn greeter_command_is_busybox_nc() {
        assert_eq!(
            greeter_command(8080, "hi"),
            ["busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "hi"]
        );
    }
}
