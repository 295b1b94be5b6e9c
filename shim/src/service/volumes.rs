//! Host bind mounts without a shared filesystem (Kata's `shared_fs = "none"`, what CoCo uses):
//! each one is copied into the guest with CopyFile under Kata's shared-containers directory and
//! the mount's source rewritten to the copy. This covers the kubelet's volume directories
//! (ConfigMap, Secret, projected, downward API, emptyDir, hostPath), its etc-hosts, CRI's
//! hostname/resolv.conf/hosts files and the termination log. CRI's `/dev/shm` bind becomes the
//! sandbox's guest tmpfs. Writes in the guest stay there: the copies live in guest memory and go
//! with the VM, so nothing is removed per container.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_proto::agent::CopyFileRequest;
use agent_proto::agent_ttrpc::AgentServiceClient;
use agent_proto::contract;
use agent_proto::oci;
use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::sandbox::COPY_CHUNK;
use super::volume_watch::{self, WatchTarget};
use crate::agent::{context, status_of};

/// `CopyFileRequest.dir_mode`: Kata's (Go's `os.ModeDir | 0750`), for the parent directories
/// the agent creates.
pub const DIR_MODE: u32 = 0x8000_0000 | 0o750;
/// Host paths that name the host's kernel interfaces: a bind of one stays as it is (the guest
/// binds its own), as Kata does.
const SYSTEM_PREFIXES: &[&str] = &["/proc", "/sys"];
/// Mount types that are kernel filesystems, meaningful inside the guest. Any other non-bind
/// mount refers to the host and is left out.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm",
];
/// The kubelet's disk emptyDir directories: `.../volumes/kubernetes.io~empty-dir/<name>`.
const EMPTY_DIR_KIND: &str = "kubernetes.io~empty-dir";
/// The kubelet's atomically written volume kinds (a `..data` symlink to a timestamped dir).
const WATCHED_KINDS: &[&str] = &[
    "kubernetes.io~configmap",
    "kubernetes.io~secret",
    "kubernetes.io~projected",
    "kubernetes.io~downward-api",
];

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("mount {destination}: host source {path}: {source}")]
    Host {
        destination: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: changed while it was copied ({got} of {want} bytes read)")]
    Changed { path: PathBuf, got: u64, want: u64 },
    #[error("agent CopyFile {path}: {}", status_of(.source).1)]
    Copy { path: String, source: ttrpc::Error },
}

impl VolumeError {
    /// The agent's status code for a refused copy (a policy denial stays one).
    pub fn code(&self) -> ttrpc::Code {
        match self {
            VolumeError::Copy { source, .. } => status_of(source).0,
            VolumeError::Host { .. } | VolumeError::Read { .. } | VolumeError::Changed { .. } => {
                ttrpc::Code::FAILED_PRECONDITION
            }
        }
    }
}

/// Where CopyFile requests go: the agent, or a recorder in tests.
#[async_trait]
pub trait FileSink: Send + Sync {
    async fn copy_file(&self, req: CopyFileRequest) -> Result<(), ttrpc::Error>;
}

/// The agent as a [`FileSink`], each request bounded by the RPC timeout.
pub struct AgentSink {
    pub agent: AgentServiceClient,
    pub timeout: Duration,
}

#[async_trait]
impl FileSink for AgentSink {
    async fn copy_file(&self, req: CopyFileRequest) -> Result<(), ttrpc::Error> {
        self.agent
            .copy_file(context(self.timeout), &req)
            .await
            .map(|_| ())
    }
}

/// What becomes of one mount of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A kernel filesystem, or a bind of a system path or host device: passed as it is.
    Keep,
    /// Not usable in the guest: left out (the reason is logged).
    Drop(&'static str),
    /// CRI's `/dev/shm` bind: the sandbox's shm tmpfs.
    SandboxShm,
    /// Copied into the guest for this container.
    Copy,
    /// A disk emptyDir: copied once per sandbox, bound by every container of the pod.
    CopyOnce,
}

fn is_bind(m: &oci::Mount) -> bool {
    m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

fn is_system_path(source: &str) -> bool {
    let p = Path::new(source);
    SYSTEM_PREFIXES.iter().any(|s| p.starts_with(s))
}

/// Kata's rule: `/dev` and anything under it that is not a regular file is the host's device
/// world (a path that cannot be read counts as one too).
fn is_host_device(source: &str) -> bool {
    let p = Path::new(source);
    if p == Path::new("/dev") {
        return true;
    }
    if !p.starts_with("/dev") {
        return false;
    }
    !std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// `.../<kind>/<name>`: the kubelet volume kind of a mount source, if it is one.
fn volume_kind(source: &Path) -> Option<&str> {
    source.parent()?.file_name()?.to_str()
}

/// The kubelet's atomically written volume directory:
/// `.../pods/<uid>/volumes/kubernetes.io~(configmap|secret|projected|downward-api)/<name>`.
pub fn is_watched_volume(source: &Path) -> bool {
    let kind_ok = volume_kind(source).is_some_and(|k| WATCHED_KINDS.contains(&k));
    let volumes = source.parent().and_then(Path::parent);
    let pods = volumes.and_then(Path::parent).and_then(Path::parent);
    kind_ok
        && volumes.and_then(Path::file_name) == Some("volumes".as_ref())
        && pods.and_then(Path::file_name) == Some("pods".as_ref())
}

pub fn plan(m: &oci::Mount) -> Plan {
    if !is_bind(m) {
        if m.destination == "/dev/shm" || GUEST_MOUNT_TYPES.contains(&m.type_.as_str()) {
            return Plan::Keep;
        }
        return Plan::Drop("not a kernel filesystem the guest has, nor a bind mount");
    }
    if m.destination == "/dev/shm" {
        return Plan::SandboxShm;
    }
    if is_system_path(&m.source) || is_host_device(&m.source) {
        return Plan::Keep;
    }
    if volume_kind(Path::new(&m.source)) == Some(EMPTY_DIR_KIND) {
        return Plan::CopyOnce;
    }
    Plan::Copy
}

/// One file system object under a mount's source, as CopyFile sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    /// The link's target, as the link holds it.
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub host: PathBuf,
    /// Relative to the walked root (empty for the root itself).
    pub rel: PathBuf,
    pub kind: EntryKind,
    /// The host's `st_mode`, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

fn entry(host: &Path, rel: PathBuf, md: &std::fs::Metadata, kind: EntryKind) -> HostEntry {
    HostEntry {
        host: host.to_path_buf(),
        rel,
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// The objects under `root` in the order they are sent: a directory before its contents,
/// names in byte order (Kata's walk), symlinks after everything else (their targets exist by
/// then). Sockets, fifos and devices are left out (logged). The root itself is followed if it
/// is a symlink; `Ok(None)` when it is none of file, directory or symlink-to-one.
pub fn walk(root: &Path) -> io::Result<Option<Vec<HostEntry>>> {
    let md = std::fs::metadata(root)?;
    let mut out = Vec::new();
    let mut links = Vec::new();
    if md.is_file() {
        out.push(entry(root, PathBuf::new(), &md, EntryKind::File));
    } else if md.is_dir() {
        out.push(entry(root, PathBuf::new(), &md, EntryKind::Dir));
        walk_dir(root, Path::new(""), &mut out, &mut links)?;
    } else {
        return Ok(None);
    }
    out.append(&mut links);
    Ok(Some(out))
}

fn walk_dir(
    dir: &Path,
    rel: &Path,
    out: &mut Vec<HostEntry>,
    links: &mut Vec<HostEntry>,
) -> io::Result<()> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<OsString>>>()?;
    names.sort();
    for name in names {
        let host = dir.join(&name);
        let rel = rel.join(&name);
        let md = std::fs::symlink_metadata(&host)?;
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&host)?;
            let kind = EntryKind::Symlink(target.as_os_str().as_bytes().to_vec());
            links.push(entry(&host, rel, &md, kind));
        } else if ft.is_dir() {
            out.push(entry(&host, rel.clone(), &md, EntryKind::Dir));
            walk_dir(&host, &rel, out, links)?;
        } else if ft.is_file() {
            out.push(entry(&host, rel, &md, EntryKind::File));
        } else {
            log::info!(
                "{}: not a file, directory or symlink: not copied to the guest",
                host.display()
            );
        }
    }
    Ok(())
}

/// The guest path of an entry under the copy's root.
pub fn guest_path(guest_root: &str, rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        guest_root.to_string()
    } else {
        format!("{guest_root}/{}", rel.display())
    }
}

fn request(path: &str, e: &HostEntry) -> CopyFileRequest {
    CopyFileRequest {
        path: path.to_string(),
        file_mode: e.mode,
        dir_mode: DIR_MODE,
        uid: e.uid as i32,
        gid: e.gid as i32,
        ..Default::default()
    }
}

/// Sends entries (from [`walk`]) to the guest under `guest_root`; returns the bytes of file
/// data sent.
pub async fn send_entries(
    sink: &dyn FileSink,
    guest_root: &str,
    entries: &[HostEntry],
) -> Result<u64, VolumeError> {
    let mut bytes = 0;
    for e in entries {
        let path = guest_path(guest_root, &e.rel);
        let copy_err = |source| VolumeError::Copy {
            path: path.clone(),
            source,
        };
        match &e.kind {
            EntryKind::Dir => sink.copy_file(request(&path, e)).await.map_err(copy_err)?,
            EntryKind::Symlink(target) => {
                let req = CopyFileRequest {
                    data: target.clone(),
                    ..request(&path, e)
                };
                sink.copy_file(req).await.map_err(copy_err)?;
            }
            EntryKind::File => bytes += send_file(sink, &path, e).await?,
        }
    }
    Ok(bytes)
}

/// A regular file in chunks of at most [`COPY_CHUNK`], its size taken when it is opened.
async fn send_file(sink: &dyn FileSink, path: &str, e: &HostEntry) -> Result<u64, VolumeError> {
    let host_err = |source| VolumeError::Read {
        path: e.host.clone(),
        source,
    };
    let mut f = tokio::fs::File::open(&e.host).await.map_err(host_err)?;
    let size = f.metadata().await.map_err(host_err)?.len();
    let mut offset = 0u64;
    loop {
        let want = (size - offset).min(COPY_CHUNK as u64) as usize;
        let mut data = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = f.read(&mut data[got..]).await.map_err(host_err)?;
            if n == 0 {
                return Err(VolumeError::Changed {
                    path: e.host.clone(),
                    got: offset + got as u64,
                    want: size,
                });
            }
            got += n;
        }
        let req = CopyFileRequest {
            file_size: size as i64,
            offset: offset as i64,
            data,
            ..request(path, e)
        };
        sink.copy_file(req)
            .await
            .map_err(|source| VolumeError::Copy {
                path: path.to_string(),
                source,
            })?;
        offset += want as u64;
        if offset >= size {
            return Ok(size);
        }
    }
}

/// 16 random lowercase hex digits (Kata's 8 random bytes) for a copy's name.
pub fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // Uniqueness is what matters here, not secrecy.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = ((t as u64) ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mount".to_string())
}

/// Everything one container's mounts need from its pod.
pub struct MountContext<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    /// The pod's emptyDir copies: host source -> guest path.
    pub empty_dirs: &'a Mutex<HashMap<String, String>>,
    pub sink: &'a dyn FileSink,
}

/// Rewrites the spec's mounts for the guest, copying what must be copied; returns the copied
/// kubelet volumes to watch for updates.
pub async fn prepare(
    spec: &mut oci::Spec,
    ctx: &MountContext<'_>,
    mut rand_hex: impl FnMut() -> String,
) -> Result<Vec<WatchTarget>, VolumeError> {
    let mut watches = Vec::new();
    let mut kept = Vec::with_capacity(spec.Mounts.len());
    // containerd 1.6 leaves its default /dev/shm tmpfs in the pause's spec beneath CRI's bind
    // of the sandbox shm (1.7 takes it out): the later mount hides the earlier one, so only
    // the last /dev/shm goes to the guest, as a pause's spec from containerd 1.7 has it.
    // (Generated policies match each mount of the request with one of their own.)
    let last_shm = spec
        .Mounts
        .iter()
        .rposition(|m| m.destination == "/dev/shm");
    let mut index = 0;
    spec.Mounts.retain(|m| {
        let keep = m.destination != "/dev/shm" || Some(index) == last_shm;
        index += 1;
        keep
    });
    for mut m in std::mem::take(&mut spec.Mounts) {
        match plan(&m) {
            Plan::Keep => {}
            Plan::Drop(why) => {
                log::warn!(
                    "container {}: mount {} (type {:?}, source {}) left out: {why}",
                    ctx.container_id,
                    m.destination,
                    m.type_,
                    m.source
                );
                continue;
            }
            Plan::SandboxShm => {
                m.source = contract::SANDBOX_SHM_DIR.to_string();
                m.type_ = "bind".to_string();
                m.options = vec!["rbind".to_string()];
            }
            Plan::Copy => {
                let name = format!(
                    "{}-{}-{}",
                    ctx.container_id,
                    rand_hex(),
                    base_name(&m.destination)
                );
                let guest = format!("{}/{name}", contract::SHARED_CONTAINERS_DIR);
                let Some(target) = copy_mount(&m, &guest, ctx).await? else {
                    continue;
                };
                watches.extend(target);
                m.source = guest;
                m.type_ = "bind".to_string();
            }
            Plan::CopyOnce => {
                let mut copies = ctx.empty_dirs.lock().await;
                let guest = match copies.get(&m.source) {
                    Some(g) => g.clone(),
                    None => {
                        let name =
                            format!("{}-{}-{}", ctx.sandbox_id, rand_hex(), base_name(&m.source));
                        let guest = format!("{}/{name}", contract::SHARED_CONTAINERS_DIR);
                        if copy_mount(&m, &guest, ctx).await?.is_none() {
                            continue;
                        }
                        copies.insert(m.source.clone(), guest.clone());
                        guest
                    }
                };
                m.source = guest;
                m.type_ = "bind".to_string();
            }
        }
        kept.push(m);
    }
    spec.Mounts = kept;
    Ok(watches)
}

/// Copies one mount's source to `guest`. `None`: the source cannot be copied (a socket, ...),
/// so the mount is left out; `Some(watch)`: copied, with its update watch if it has one.
async fn copy_mount(
    m: &oci::Mount,
    guest: &str,
    ctx: &MountContext<'_>,
) -> Result<Option<Option<WatchTarget>>, VolumeError> {
    let host = PathBuf::from(&m.source);
    let host_err = |source| VolumeError::Host {
        destination: m.destination.clone(),
        path: host.clone(),
        source,
    };
    // Watching starts before the walk so that no update between the two is missed.
    let armed = if is_watched_volume(&host) {
        match volume_watch::arm(&host) {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!(
                    "container {}: {}: cannot watch for kubelet updates ({e}); copied once",
                    ctx.container_id,
                    host.display()
                );
                None
            }
        }
    } else {
        None
    };
    let Some(entries) = walk(&host).map_err(host_err)? else {
        log::warn!(
            "container {}: mount {}: {} is not a file or directory: left out",
            ctx.container_id,
            m.destination,
            host.display()
        );
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let bytes = send_entries(ctx.sink, guest, &entries).await?;
    log::info!(
        "container {}: {} copied to {guest} ({} entries, {bytes} bytes, {:?})",
        ctx.container_id,
        host.display(),
        entries.len(),
        started.elapsed()
    );
    Ok(Some(armed.map(|a| {
        WatchTarget::new(a, host.clone(), guest.to_string(), &entries)
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Records every CopyFile request.
    #[derive(Default)]
    pub struct Recorder(pub std::sync::Mutex<Vec<CopyFileRequest>>);

    #[async_trait]
    impl FileSink for Recorder {
        async fn copy_file(&self, req: CopyFileRequest) -> Result<(), ttrpc::Error> {
            self.0.lock().unwrap().push(req);
            Ok(())
        }
    }

    impl Recorder {
        pub fn take(&self) -> Vec<CopyFileRequest> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn mount(dest: &str, source: &str, kind: &str, options: &[&str]) -> oci::Mount {
        oci::Mount {
            destination: dest.into(),
            source: source.into(),
            type_: kind.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The kubelet's atomic-writer layout of a projected service-account volume.
    pub fn kubelet_volume(root: &Path, ts: &str, files: &[(&str, &str)]) {
        std::fs::create_dir_all(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let tsdir = root.join(ts);
        std::fs::create_dir(&tsdir).unwrap();
        std::fs::set_permissions(&tsdir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, content) in files {
            let p = tsdir.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        symlink(ts, root.join("..data")).unwrap();
        for (name, _) in files {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(&mount("/proc", "proc", "proc", &[])), Plan::Keep);
        assert_eq!(
            plan(&mount("/dev/shm", "shm", "tmpfs", &["nosuid"])),
            Plan::Keep
        );
        assert_eq!(
            plan(&mount(
                "/dev/shm",
                "/run/c/sandboxes/x/shm",
                "bind",
                &["rbind", "ro"]
            )),
            Plan::SandboxShm
        );
        assert_eq!(
            plan(&mount(
                "/sys/fs/cgroup",
                "/sys/fs/cgroup",
                "bind",
                &["rbind"]
            )),
            Plan::Keep
        );
        assert_eq!(
            plan(&mount("/dev/kvm", "/dev/kvm", "bind", &[])),
            Plan::Keep
        );
        assert_eq!(plan(&mount("/dev", "/dev", "none", &["rbind"])), Plan::Keep);
        assert!(matches!(
            plan(&mount("/x", "/var/lib/x", "overlay", &[])),
            Plan::Drop(_)
        ));
        assert_eq!(
            plan(&mount(
                "/etc/hosts",
                "/var/lib/kubelet/pods/u/etc-hosts",
                "bind",
                &["rbind"]
            )),
            Plan::Copy
        );
        assert_eq!(
            plan(&mount(
                "/cache",
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache",
                "bind",
                &["rbind"]
            )),
            Plan::CopyOnce
        );
        let uid = "078af1e8-328a-4f89-adfb-bae4455fbf50";
        assert!(is_watched_volume(Path::new(&format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~configmap/cfg"
        ))));
        assert!(is_watched_volume(Path::new(&format!(
            "/k/pods/{uid}/volumes/kubernetes.io~projected/kube-api-access-x"
        ))));
        assert!(!is_watched_volume(Path::new(&format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/cache"
        ))));
        assert!(!is_watched_volume(Path::new(&format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~configmap/cfg/key"
        ))));
    }

    /// Walk order, modes and request shapes for a projected volume, as in Kata's conformance
    /// requests (pod-lifecycle: the serviceaccount tree).
    #[tokio::test]
    async fn projected_volume_is_sent_in_katas_order_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("serviceaccount");
        let ts = "..2024_05_08_18_12_07.1887069138";
        kubelet_volume(
            &root,
            ts,
            &[("ca.crt", "CA"), ("namespace", "default"), ("token", "tok")],
        );
        let entries = walk(&root).unwrap().unwrap();
        let rels: Vec<String> = entries
            .iter()
            .map(|e| e.rel.display().to_string())
            .collect();
        assert_eq!(
            rels,
            [
                "",
                ts,
                &format!("{ts}/ca.crt"),
                &format!("{ts}/namespace"),
                &format!("{ts}/token"),
                "..data",
                "ca.crt",
                "namespace",
                "token"
            ]
        );
        let rec = Recorder::default();
        let g = "/run/kata-containers/shared/containers/c1-0123456789abcdef-serviceaccount";
        let bytes = send_entries(&rec, g, &entries).await.unwrap();
        assert_eq!(bytes, 2 + 7 + 3);
        let reqs = rec.take();
        let shape: Vec<(String, u32, i64, String)> = reqs
            .iter()
            .map(|r| {
                assert_eq!(r.dir_mode, 2147484136);
                assert_eq!(r.offset, 0);
                (
                    r.path.strip_prefix(g).unwrap().to_string(),
                    r.file_mode,
                    r.file_size,
                    String::from_utf8(r.data.clone()).unwrap(),
                )
            })
            .collect();
        let uid = nix::unistd::getuid().as_raw() as i32;
        assert!(reqs.iter().all(|r| r.uid == uid));
        assert_eq!(
            shape,
            vec![
                ("".into(), 17407, 0, "".into()),
                (format!("/{ts}"), 16877, 0, "".into()),
                (format!("/{ts}/ca.crt"), 33188, 2, "CA".into()),
                (format!("/{ts}/namespace"), 33188, 7, "default".into()),
                (format!("/{ts}/token"), 33188, 3, "tok".into()),
                ("/..data".into(), 41471, 0, ts.into()),
                ("/ca.crt".into(), 41471, 0, "..data/ca.crt".into()),
                ("/namespace".into(), 41471, 0, "..data/namespace".into()),
                ("/token".into(), 41471, 0, "..data/token".into()),
            ]
        );
    }

    #[tokio::test]
    async fn big_and_empty_files_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        std::fs::create_dir(&d).unwrap();
        let big: Vec<u8> = (0..COPY_CHUNK * 2 + 5).map(|i| i as u8).collect();
        std::fs::write(d.join("big"), &big).unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        nix::unistd::mkfifo(
            &d.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let entries = walk(&d).unwrap().unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let rec = Recorder::default();
        send_entries(&rec, "/g", &entries).await.unwrap();
        let reqs = rec.take();
        let parts: Vec<(&str, i64, i64, usize)> = reqs
            .iter()
            .map(|r| (r.path.as_str(), r.file_size, r.offset, r.data.len()))
            .collect();
        let n = big.len() as i64;
        let c = COPY_CHUNK as i64;
        assert_eq!(
            parts,
            vec![
                ("/g", 0, 0, 0),
                ("/g/big", n, 0, COPY_CHUNK),
                ("/g/big", n, c, COPY_CHUNK),
                ("/g/big", n, 2 * c, 5),
                ("/g/empty", 0, 0, 0),
            ]
        );
        let joined: Vec<u8> = reqs[1..4].iter().flat_map(|r| r.data.clone()).collect();
        assert_eq!(joined, big);
        // A socket as the mount's source: nothing to copy.
        assert_eq!(walk(&d.join("sock")).unwrap(), None);
        // A missing source is an error naming it.
        assert!(walk(&d.join("absent")).is_err());
    }

    #[tokio::test]
    async fn mounts_are_rewritten_and_empty_dirs_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pods/078af1e8-328a-4f89-adfb-bae4455fbf50");
        let hosts = pod.join("etc-hosts");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let cache = pod.join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("f"), "x").unwrap();
        let sock = dir.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let spec = |extra: Vec<oci::Mount>| oci::Spec {
            Mounts: [
                vec![
                    mount("/proc", "proc", "proc", &["nosuid"]),
                    // containerd 1.6's pause: its default shm tmpfs, hidden by CRI's bind.
                    mount("/dev/shm", "shm", "tmpfs", &["nosuid", "mode=1777"]),
                    mount(
                        "/dev/shm",
                        "/run/c/sandboxes/p/shm",
                        "bind",
                        &["rbind", "ro"],
                    ),
                    mount(
                        "/etc/hosts",
                        hosts.to_str().unwrap(),
                        "bind",
                        &["rbind", "rprivate", "ro"],
                    ),
                    mount(
                        "/cache",
                        cache.to_str().unwrap(),
                        "bind",
                        &["rbind", "rprivate", "rw"],
                    ),
                    mount(
                        "/run/agent.sock",
                        sock.to_str().unwrap(),
                        "bind",
                        &["rbind"],
                    ),
                ],
                extra,
            ]
            .concat(),
            ..Default::default()
        };
        let empty_dirs = Mutex::new(HashMap::new());
        let rec = Recorder::default();
        let mut n = 0;
        let mut hex = || {
            n += 1;
            format!("{n:016x}")
        };
        let ctx = MountContext {
            container_id: "c1",
            sandbox_id: "pod1",
            empty_dirs: &empty_dirs,
            sink: &rec,
        };
        let mut s1 = spec(vec![]);
        let w = prepare(&mut s1, &ctx, &mut hex).await.unwrap();
        assert!(w.is_empty());
        let shared = contract::SHARED_CONTAINERS_DIR;
        let got: Vec<(&str, &str, &str, Vec<String>)> = s1
            .Mounts
            .iter()
            .map(|m| {
                (
                    m.destination.as_str(),
                    m.source.as_str(),
                    m.type_.as_str(),
                    m.options.clone(),
                )
            })
            .collect();
        let hosts_g = format!("{shared}/c1-0000000000000001-hosts");
        let cache_g = format!("{shared}/pod1-0000000000000002-cache");
        assert_eq!(
            got,
            vec![
                ("/proc", "proc", "proc", vec!["nosuid".to_string()]),
                (
                    "/dev/shm",
                    contract::SANDBOX_SHM_DIR,
                    "bind",
                    vec!["rbind".to_string()]
                ),
                (
                    "/etc/hosts",
                    hosts_g.as_str(),
                    "bind",
                    vec!["rbind".into(), "rprivate".into(), "ro".into()]
                ),
                (
                    "/cache",
                    cache_g.as_str(),
                    "bind",
                    vec!["rbind".into(), "rprivate".into(), "rw".into()]
                ),
            ]
        );
        let paths: Vec<String> = rec.take().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            vec![hosts_g.clone(), cache_g.clone(), format!("{cache_g}/f")]
        );

        // A second container of the pod binds the same emptyDir copy: nothing copied again
        // (the socket's mount took a name, 3, before it was found uncopyable).
        let ctx2 = MountContext {
            container_id: "c2",
            ..ctx
        };
        let mut s2 = spec(vec![]);
        prepare(&mut s2, &ctx2, &mut hex).await.unwrap();
        assert_eq!(s2.Mounts[3].source, cache_g);
        let paths: Vec<String> = rec.take().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, vec![format!("{shared}/c2-0000000000000004-hosts")]);

        // A missing host source fails naming the mount and the path.
        let mut s3 = spec(vec![mount("/gone", "/nonexistent/x", "bind", &["rbind"])]);
        let e = prepare(&mut s3, &ctx2, &mut hex)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount /gone: host source /nonexistent/x"), "{e}");
    }

    #[test]
    fn random_names() {
        let a = random_hex();
        assert_eq!(a.len(), 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, random_hex());
    }
}
