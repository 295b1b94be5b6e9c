//! The leak checker: what of a test may still exist on the host after it (processes, mounts,
//! files in the shim's state dirs; with CRI, what of its pods' network is left), found through
//! /proc, the file system and iptables.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{paths, procs};

/// What belongs to one test: its private containerd dir and the container/sandbox ids it used.
pub struct Scope<'a> {
    pub dir: &'a Path,
    pub containerd_pid: Option<i32>,
    pub namespace: &'a str,
    pub ids: &'a [String],
}

impl Scope<'_> {
    /// Strings that appear in the command line of every process started for this test:
    /// the containerd dir (shims get `-address <dir>/containerd.sock`) and each sandbox dir
    /// (QEMU and the vsock backend get paths under it).
    fn markers(&self) -> Vec<String> {
        let mut m = vec![format!("{}/", self.dir.display())];
        for id in self.ids {
            m.push(format!("{}/", paths::sandbox_dir(id).display()));
        }
        m
    }

    /// Processes of this test other than its containerd: matched by marker or descended from
    /// containerd or from a matched process.
    pub fn processes(&self) -> Vec<procs::Proc> {
        let all = procs::all();
        let me = std::process::id() as i32;
        let markers = self.markers();
        let mut roots: BTreeSet<i32> = all
            .iter()
            .filter(|p| p.pid != me && Some(p.pid) != self.containerd_pid)
            .filter(|p| markers.iter().any(|m| p.cmdline.contains(m.as_str())))
            .map(|p| p.pid)
            .collect();
        if let Some(c) = self.containerd_pid {
            roots.insert(c);
        }
        let set = procs::with_descendants(&all, &roots);
        all.into_iter()
            .filter(|p| set.contains(&p.pid) && Some(p.pid) != self.containerd_pid)
            .filter(|p| procs::alive(p.pid))
            .collect()
    }

    /// Mount points under the test's dir or a sandbox dir of its ids, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let markers = self.markers();
        let mut v: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|mp| markers.iter().any(|m| mp.starts_with(m.as_str())))
            .map(PathBuf::from)
            .collect();
        v.sort();
        v.reverse();
        v
    }

    /// State the shim must remove: its sandbox dirs and containerd's bundle dirs for our ids.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for id in self.ids {
            let s = paths::sandbox_dir(id);
            if s.exists() {
                v.push(s);
            }
            let b = self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(self.namespace)
                .join(id);
            if b.exists() {
                v.push(b);
            }
        }
        v
    }

    /// Everything left, one line each; empty when clean.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.processes() {
            out.push(format!("process left: {p}"));
        }
        for m in self.mounts() {
            out.push(format!("mount left: {}", m.display()));
        }
        for f in self.files() {
            out.push(format!("state left: {}{}", f.display(), list_dir(&f)));
        }
        out
    }
}

fn list_dir(p: &Path) -> String {
    match std::fs::read_dir(p) {
        Ok(rd) => {
            let names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            format!(" (contains: {})", names.join(", "))
        }
        Err(_) => String::new(),
    }
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The CRI network of a private containerd (hack/containerd.sh's `cri.env`), and what CRI, CNI
/// and kata-cc may leave of a pod on it: netns files and CRI's per-sandbox dirs, IP address
/// reservations, libcni's result cache files, veths on the bridge, portmap's nat rules, TAPs,
/// and after containerd stopped the bridge itself and the subnet claim.
#[derive(Debug, Clone)]
pub struct CriNetwork {
    /// The bridge (`kcc-<8 hex>`), the pods' gateway.
    pub bridge: String,
    /// The CNI network name (`kata-cc-<8 hex>`): host-local's dir, portmap's rule comments.
    pub network: String,
    /// The subnet's network address and prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// The bridge's address: the pods' default gateway.
    pub gateway: Ipv4Addr,
}

/// libcni's result cache (fixed in go-cni 1.1.6).
pub const CNI_CACHE: &str = "/var/lib/cni/results";
/// hack/containerd.sh's host-wide state (subnet claims), KATA_CC_CNI_STATE there.
pub const CNI_SHARED_STATE: &str = "/run/kata-cc-cni";

impl CriNetwork {
    /// Reads `<dir>/cri.env`.
    pub fn read(dir: &Path) -> CriNetwork {
        let p = dir.join("cri.env");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Self::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn parse(text: &str) -> Result<CriNetwork, String> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("no {k}"))
        };
        let subnet = get("CNI_SUBNET")?;
        let (addr, len) = subnet
            .split_once('/')
            .ok_or_else(|| format!("CNI_SUBNET {subnet:?} is not ADDR/LEN"))?;
        let bad = |what: &str| format!("{what} of CNI_SUBNET {subnet:?}");
        let gateway = get("CNI_GATEWAY")?;
        Ok(CriNetwork {
            bridge: get("CNI_BRIDGE")?,
            network: get("CNI_NETWORK")?,
            subnet: (
                addr.parse().map_err(|_| bad("address"))?,
                len.parse()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| bad("length"))?,
            ),
            gateway: gateway
                .parse()
                .map_err(|_| format!("CNI_GATEWAY {gateway:?} is not an IPv4 address"))?,
        })
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (net, len) = self.subnet;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(net) & mask
    }

    /// While containerd runs, after the test removed its pods (`ids`: the test's ids).
    pub fn leaks(&self, dir: &Path, ids: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (base, subs) in [
            ("state", &["netns", "sandboxes", "containers"][..]),
            ("root", &["sandboxes", "containers"][..]),
        ] {
            let cri_dir = dir.join(base).join("io.containerd.grpc.v1.cri");
            for sub in subs {
                for name in dir_names(&cri_dir.join(sub)) {
                    out.push(format!("CRI {base} left: {sub}/{name}"));
                }
            }
        }
        // host-local keeps one file per reserved address (and its own bookkeeping files).
        for name in dir_names(&dir.join("cni/ipam").join(&self.network)) {
            if name != "lock" && !name.starts_with("last_reserved_ip") {
                out.push(format!("IP address still reserved: {name}"));
            }
        }
        // The host end of a pod's veth stays on the bridge until CNI DEL or the netns goes.
        let brif = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        for name in dir_names(&brif) {
            out.push(format!("interface still on bridge {}: {name}", self.bridge));
        }
        out.extend(self.cache_leaks(ids));
        out.extend(self.nat_leaks(ids));
        out.extend(host_taps());
        out
    }

    /// After hack/containerd.sh stop.
    pub fn leaks_after_stop(&self, dir: &Path, ids: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            out.push(format!("bridge left: {}", self.bridge));
        }
        out.extend(self.cache_leaks(ids));
        out.extend(self.nat_leaks(ids));
        out.extend(host_taps());
        let subnets = Path::new(CNI_SHARED_STATE).join("subnets");
        for claim in dir_names(&subnets) {
            let owner =
                std::fs::read_to_string(subnets.join(&claim).join("owner")).unwrap_or_default();
            if Path::new(owner.trim()) == dir {
                out.push(format!("subnet claim left: {}/{claim}", subnets.display()));
            }
        }
        out
    }

    /// libcni's result cache files of this network and of the loopback network of the pods.
    fn cache_leaks(&self, ids: &[String]) -> Vec<String> {
        let ours = |name: &str| {
            name.starts_with(&format!("{}-", self.network))
                || ids
                    .iter()
                    .any(|id| name.starts_with(&format!("cni-loopback-{id}-")))
        };
        dir_names(Path::new(CNI_CACHE))
            .into_iter()
            .filter(|n| ours(n))
            .map(|n| format!("libcni cache file left: {CNI_CACHE}/{n}"))
            .collect()
    }

    /// portmap's nat rules of this network's pods: the jump from CNI-HOSTPORT-DNAT (its comment
    /// names the network) and the pod's own `CNI-DN-` chain.
    pub fn nat_leaks(&self, ids: &[String]) -> Vec<String> {
        let out = match Command::new("iptables")
            .args(["-w", "-t", "nat", "-S"])
            .output()
        {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                return vec![format!(
                    "cannot list the nat table (iptables -t nat -S): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )]
            }
            Err(e) => return vec![format!("cannot run iptables: {e}")],
        };
        let chains: Vec<String> = ids
            .iter()
            .map(|id| portmap_chain(&self.network, id))
            .collect();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&self.network) || chains.iter().any(|c| l.contains(c)))
            .map(|l| format!("nat rule left: {l}"))
            .collect()
    }
}

/// portmap's per-pod chain: `CNI-DN-` and the SHA-512 of network name + container id, in hex,
/// cut to iptables' 28 characters (CNI's `utils.MustFormatChainNameWithPrefix`).
pub fn portmap_chain(network: &str, container_id: &str) -> String {
    use sha2::{Digest, Sha512};
    let hash = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("CNI-DN-{hex}");
    name.truncate(28);
    name
}

/// kata-cc's TAPs (`tap<N>_kata`) belong in a pod's netns; one in the host's netns is a leak.
fn host_taps() -> Vec<String> {
    dir_names(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|n| is_kata_tap(n))
        .map(|n| format!("TAP in the host's netns: {n}"))
        .collect()
}

/// `tap<digits>_kata`, Kata's TAP names.
pub fn is_kata_tap(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|r| r.strip_suffix("_kata"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn dir_names(p: &Path) -> Vec<String> {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cri_env() {
        let n = CriNetwork::parse(
            "CNI_BRIDGE=kcc-0a1b2c3d\nCNI_NETWORK=kata-cc-0a1b2c3d\nCNI_SUBNET=10.201.7.0/24\nCNI_GATEWAY=10.201.7.1\n",
        )
        .unwrap();
        assert_eq!(n.bridge, "kcc-0a1b2c3d");
        assert_eq!(n.subnet, (Ipv4Addr::new(10, 201, 7, 0), 24));
        assert_eq!(n.gateway, Ipv4Addr::new(10, 201, 7, 1));
        assert!(n.contains(Ipv4Addr::new(10, 201, 7, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 201, 8, 2)));
        let e =
            CriNetwork::parse("CNI_BRIDGE=b\nCNI_NETWORK=n\nCNI_SUBNET=10.0.0.0\n").unwrap_err();
        assert!(e.contains("CNI_SUBNET"), "{e}");
    }

    /// The chain name CNI's plugins give: the one the portmap plugin of Debian's
    /// containernetworking-plugins 1.1.1 made for this network and sandbox id.
    #[test]
    fn portmap_chain_names() {
        let c = portmap_chain(
            "kata-cc-231f59ed",
            "0d569850ceaabc484ff205ad8c28d6f1c1ec016c1c774e6f1779b8d03d75bcd9",
        );
        assert_eq!(c, "CNI-DN-36f05e8005050e8bdd38f");
        assert_ne!(c, portmap_chain("kata-cc-231f59ed", "0d5698"));
    }

    #[test]
    fn kata_tap_names() {
        assert!(is_kata_tap("tap0_kata"));
        assert!(is_kata_tap("tap12_kata"));
        for n in ["tap_kata", "tapx_kata", "tap0", "eth0", "tap0_kata0"] {
            assert!(!is_kata_tap(n), "{n}");
        }
    }
}
