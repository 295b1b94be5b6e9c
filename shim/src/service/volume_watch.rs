//! Kubelet updates of a copied ConfigMap, Secret, projected or downward-API volume reach the
//! guest. The kubelet's atomic writer puts the new files in a new `..<timestamp>` directory,
//! renames a `..data` symlink to it over the old one, adds top-level symlinks for new keys and
//! removes the old directory. The volume directory is watched (inotify); once its events settle,
//! the new timestamped directory and its files are copied, then `..data`, then the new
//! top-level symlinks, to the same guest path (Kata's order). A watch ends with its container
//! (dropped), its sandbox, or its host directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::volumes::{guest_path, send_entries, walk, EntryKind, FileSink, HostEntry, VolumeError};

/// Quiet time after the last event before the guest copy is brought up to date: the atomic
/// writer's steps follow each other closely.
const SETTLE: Duration = Duration::from_millis(100);
/// The atomic writer's symlink to the current timestamped directory.
const DATA_LINK: &str = "..data";

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch on a volume directory, set before the volume is first copied.
pub struct Armed(AsyncFd<Fd>);

pub fn arm(dir: &Path) -> io::Result<Armed> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR,
    )?;
    // SAFETY: `Fd` owns the descriptor, which stays open for as long as the AsyncFd (its owner)
    // is registered with it.
    let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), Interest::READABLE) }?;
    Ok(Armed(fd))
}

/// What the guest copy holds: `..data`'s target and the top-level names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VolumeState {
    pub data_target: Option<OsString>,
    pub names: BTreeSet<OsString>,
}

impl VolumeState {
    /// The state of a copy made from these entries ([`walk`] of the volume directory).
    pub fn of(entries: &[HostEntry]) -> Self {
        let mut st = VolumeState::default();
        for e in entries {
            let mut parts = e.rel.components();
            let (Some(first), None) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = first.as_os_str().to_os_string();
            if name == DATA_LINK {
                if let EntryKind::Symlink(t) = &e.kind {
                    st.data_target = Some(OsString::from_vec(t.clone()));
                }
            }
            st.names.insert(name);
        }
        st
    }
}

/// A copied volume to keep up to date.
pub struct WatchTarget {
    armed: Armed,
    host_dir: PathBuf,
    guest_root: String,
    state: VolumeState,
}

impl std::fmt::Debug for WatchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchTarget")
            .field("host_dir", &self.host_dir)
            .field("guest_root", &self.guest_root)
            .field("state", &self.state)
            .finish()
    }
}

impl WatchTarget {
    pub fn new(armed: Armed, host_dir: PathBuf, guest_root: String, entries: &[HostEntry]) -> Self {
        WatchTarget {
            armed,
            host_dir,
            guest_root,
            state: VolumeState::of(entries),
        }
    }
}

/// Brings the guest copy up to date with the host directory; returns whether anything was
/// sent. A new `..data` target: its directory (walked), then `..data`; then any new top-level
/// names (the symlinks of new keys), checked every time since the writer adds them after the
/// swap.
pub async fn sync(
    state: &mut VolumeState,
    host_dir: &Path,
    guest_root: &str,
    sink: &dyn FileSink,
) -> Result<bool, VolumeError> {
    let read_err = |path: PathBuf| move |source| VolumeError::Read { path, source };
    let data = host_dir.join(DATA_LINK);
    let target = std::fs::read_link(&data).map_err(read_err(data.clone()))?;
    let mut sent = false;
    if state.data_target.as_deref() != Some(target.as_os_str()) {
        // The writer links a sibling by name; anything else is not its layout.
        let Some(ts_name) = target.file_name().filter(|n| Path::new(n) == target) else {
            log::warn!(
                "{}: {DATA_LINK} -> {} is not a sibling directory: not copied",
                host_dir.display(),
                target.display()
            );
            return Ok(false);
        };
        let ts_host = host_dir.join(ts_name);
        let Some(entries) = walk(&ts_host).map_err(read_err(ts_host.clone()))? else {
            return Ok(false);
        };
        send_entries(sink, &guest_path(guest_root, Path::new(ts_name)), &entries).await?;
        send_entries(sink, guest_root, &[link_entry(&data, DATA_LINK)?]).await?;
        state.data_target = Some(target.into_os_string());
        state.names.insert(DATA_LINK.into());
        sent = true;
    }
    let mut names = std::fs::read_dir(host_dir)
        .and_then(|d| {
            d.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(read_err(host_dir.to_path_buf()))?;
    names.sort();
    for name in names {
        if state.names.contains(&name) || name.as_bytes().starts_with(b"..") {
            continue;
        }
        let host = host_dir.join(&name);
        let Some(entries) = walk_no_follow(&host, &name)? else {
            continue;
        };
        send_entries(sink, guest_root, &entries).await?;
        state.names.insert(name);
        sent = true;
    }
    Ok(sent)
}

/// One top-level name: a symlink as it is, else the file or directory tree, with `rel` from
/// the volume directory.
fn walk_no_follow(host: &Path, name: &OsString) -> Result<Option<Vec<HostEntry>>, VolumeError> {
    let md = std::fs::symlink_metadata(host).map_err(|source| VolumeError::Read {
        path: host.to_path_buf(),
        source,
    })?;
    if md.file_type().is_symlink() {
        return Ok(Some(vec![link_entry(host, name)?]));
    }
    let entries = walk(host).map_err(|source| VolumeError::Read {
        path: host.to_path_buf(),
        source,
    })?;
    Ok(entries.map(|es| {
        es.into_iter()
            .map(|mut e| {
                e.rel = Path::new(name).join(&e.rel);
                e
            })
            .collect()
    }))
}

fn link_entry(host: &Path, rel: impl AsRef<Path>) -> Result<HostEntry, VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let err = |source| VolumeError::Read {
        path: host.to_path_buf(),
        source,
    };
    let md = std::fs::symlink_metadata(host).map_err(err)?;
    let target = std::fs::read_link(host).map_err(err)?;
    Ok(HostEntry {
        host: host.to_path_buf(),
        rel: rel.as_ref().to_path_buf(),
        kind: EntryKind::Symlink(target.as_os_str().as_bytes().to_vec()),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    })
}

/// A running watch; dropping it ends it.
pub struct VolumeWatch(JoinHandle<()>);

impl Drop for VolumeWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts keeping `target` up to date until `ended` resolves, the watch is dropped, or the
/// host directory goes. Checks once at the start (an update may have come during the copy).
pub fn spawn(
    target: WatchTarget,
    sink: Arc<dyn FileSink>,
    ended: impl Future<Output = ()> + Send + 'static,
    label: String,
) -> VolumeWatch {
    let WatchTarget {
        armed,
        host_dir,
        guest_root,
        mut state,
    } = target;
    let gone = AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_IGNORED
        | AddWatchFlags::IN_UNMOUNT;
    VolumeWatch(tokio::spawn(async move {
        tokio::pin!(ended);
        let mut due = Some(Instant::now());
        loop {
            let settle = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut ended => return,
                r = armed.0.readable() => {
                    let mut guard = match r {
                        Ok(g) => g,
                        Err(e) => {
                            log::warn!("{label}: watch on {} failed: {e}", host_dir.display());
                            return;
                        }
                    };
                    match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                        Ok(Ok(events)) => {
                            if events.iter().any(|e| e.mask.intersects(gone)) {
                                log::info!("{label}: {} is gone: watch ended", host_dir.display());
                                return;
                            }
                            due = Some(Instant::now() + SETTLE);
                        }
                        Ok(Err(e)) => {
                            log::warn!("{label}: reading the watch on {}: {e}", host_dir.display());
                            return;
                        }
                        Err(_would_block) => {}
                    }
                }
                _ = settle => {
                    due = None;
                    match sync(&mut state, &host_dir, &guest_root, sink.as_ref()).await {
                        Ok(true) => log::info!(
                            "{label}: {} updated in the guest ({guest_root})",
                            host_dir.display()
                        ),
                        Ok(false) => {}
                        Err(e) => log::warn!("{label}: updating {guest_root}: {e}"),
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::super::volumes::tests::{kubelet_volume, Recorder};
    use super::*;
    use std::os::unix::fs::symlink;

    /// The kubelet's atomic writer updating a volume: a new timestamped dir with the payload,
    /// `..data_tmp` renamed over `..data`, a symlink for a new key, the old dir removed.
    fn atomic_update(root: &Path, old: &str, new: &str, files: &[(&str, &str)]) {
        use std::os::unix::fs::PermissionsExt;
        let d = root.join(new);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (n, c) in files {
            std::fs::write(d.join(n), c).unwrap();
            std::fs::set_permissions(d.join(n), std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        symlink(new, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for (n, _) in files {
            let l = root.join(n);
            if std::fs::symlink_metadata(&l).is_err() {
                symlink(format!("..data/{n}"), &l).unwrap();
            }
        }
        std::fs::remove_dir_all(root.join(old)).unwrap();
    }

    fn summary(
        reqs: &[agent_proto::agent::CopyFileRequest],
        g: &str,
    ) -> Vec<(String, u32, String)> {
        reqs.iter()
            .map(|r| {
                (
                    r.path.strip_prefix(g).unwrap().to_string(),
                    r.file_mode,
                    String::from_utf8(r.data.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn an_update_copies_the_new_dir_then_data_then_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cfg");
        let (t1, t2) = ("..2026_01_01_00_00_00.1", "..2026_01_01_00_01_00.2");
        kubelet_volume(&root, t1, &[("a", "1")]);
        let entries = walk(&root).unwrap().unwrap();
        let mut st = VolumeState::of(&entries);
        assert_eq!(st.data_target.as_deref(), Some(t1.as_ref()));
        let rec = Recorder::default();
        let g = "/run/kata-containers/shared/containers/c1-0000000000000001-cfg";
        // Nothing changed: nothing sent.
        assert!(!sync(&mut st, &root, g, &rec).await.unwrap());
        assert!(rec.take().is_empty());

        atomic_update(&root, t1, t2, &[("a", "2"), ("b", "new")]);
        assert!(sync(&mut st, &root, g, &rec).await.unwrap());
        assert_eq!(
            summary(&rec.take(), g),
            vec![
                (format!("/{t2}"), 0o40755, "".into()),
                (format!("/{t2}/a"), 0o100640, "2".into()),
                (format!("/{t2}/b"), 0o100640, "new".into()),
                ("/..data".into(), 0o120777, t2.into()),
                ("/b".into(), 0o120777, "..data/b".into()),
            ]
        );
        assert!(!sync(&mut st, &root, g, &rec).await.unwrap());
    }

    #[tokio::test]
    async fn the_watch_follows_updates_and_ends_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cfg");
        let (t1, t2) = ("..2026_01_01_00_00_00.1", "..2026_01_01_00_01_00.2");
        kubelet_volume(&root, t1, &[("a", "1")]);
        let armed = arm(&root).unwrap();
        let entries = walk(&root).unwrap().unwrap();
        let rec = Arc::new(Recorder::default());
        let g = "/g/cfg".to_string();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let w = spawn(
            WatchTarget::new(armed, root.clone(), g.clone(), &entries),
            rec.clone(),
            async move {
                let _ = end_rx.await;
            },
            "test".into(),
        );
        atomic_update(&root, t1, t2, &[("a", "2")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let paths: Vec<String> = rec
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.path.clone())
                .collect();
            if paths.contains(&format!("{g}/..data")) {
                assert_eq!(
                    paths,
                    vec![
                        format!("{g}/{t2}"),
                        format!("{g}/{t2}/a"),
                        format!("{g}/..data")
                    ]
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no update copied: {paths:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its owner ends it.
        end_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !w.0.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        // Dropping a watch ends it too; the directory going away as well.
        let armed = arm(&root).unwrap();
        let w2 = spawn(
            WatchTarget::new(armed, root.clone(), g.clone(), &[]),
            rec.clone(),
            std::future::pending(),
            "test".into(),
        );
        let h = w2.0.abort_handle();
        drop(w2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(h.is_finished());
        let armed = arm(&root).unwrap();
        let w3 = spawn(
            WatchTarget::new(armed, root.clone(), g, &[]),
            rec,
            std::future::pending(),
            "test".into(),
        );
        std::fs::remove_dir_all(&root).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !w3.0.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }
}
