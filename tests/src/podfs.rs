//! A kubelet's pod directory under a test's own root, laid out and written the way the kubelet
//! does it (`<root>/pods/<uid>/...`), so CRI mounts in a test look exactly like a node's:
//!
//! - API-data volumes (`kubernetes.io~configmap`, `~secret`, `~projected`, `~downward-api`)
//!   written as the kubelet's atomic writer writes them: a `..<timestamp>.<random>` dir (mode
//!   0755) holding the files with their modes, `..data -> ..<timestamp>.<random>`, and one
//!   user-visible symlink per top-level key (`key -> ..data/key`); [`ApiVolume::write`] again is
//!   the kubelet's update: a new timestamp dir, a `..data_tmp` symlink renamed over `..data`,
//!   the keys no longer in the payload removed, the old dir removed;
//! - `kubernetes.io~empty-dir/<name>` (mode 0777), `etc-hosts` (the kubelet-managed hosts file),
//!   `containers/<container>/<random>` (the termination-log file, mode 0666).
//!
//! Failures panic naming the path (this is test set-up, never outside input).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The kubelet's volume plugin dir names.
pub const CONFIGMAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const PROJECTED: &str = "kubernetes.io~projected";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";

/// The atomic writer's link to the current payload dir, and the temporary link renamed over it.
pub const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// One pod's directory: `<root>/pods/<uid>`.
pub struct PodDir {
    pub uid: String,
    pub dir: PathBuf,
}

impl PodDir {
    /// Creates `<root>/pods/<uid>` with the kubelet's `volumes`, `plugins` and `containers`.
    pub fn create(root: &Path, uid: &str) -> PodDir {
        let dir = root.join("pods").join(uid);
        for sub in ["volumes", "plugins", "containers"] {
            mkdir(&dir.join(sub), 0o750);
        }
        PodDir {
            uid: uid.to_string(),
            dir,
        }
    }

    /// `volumes/<plugin>/<name>` (not created).
    pub fn volume_dir(&self, plugin: &str, name: &str) -> PathBuf {
        self.dir.join("volumes").join(plugin).join(name)
    }

    /// A ConfigMap volume: files 0644 unless `default_mode` says otherwise (`defaultMode`).
    pub fn config_map(&self, name: &str, files: &[(&str, &[u8])], default_mode: u32) -> ApiVolume {
        self.api_volume(CONFIGMAP, name, files, default_mode)
    }

    /// A Secret volume (the kubelet mounts a tmpfs there; a plain dir is the same to CRI).
    pub fn secret(&self, name: &str, files: &[(&str, &[u8])], default_mode: u32) -> ApiVolume {
        self.api_volume(SECRET, name, files, default_mode)
    }

    /// The projected service-account volume (`kube-api-access-<random>`): token, ca.crt and
    /// namespace, mode 0644 (`defaultMode: 420`), as the kubelet's token projection writes it.
    pub fn service_account(&self, name: &str, token: &str, ca: &str, namespace: &str) -> ApiVolume {
        self.api_volume(
            PROJECTED,
            name,
            &[
                ("ca.crt", ca.as_bytes()),
                ("namespace", namespace.as_bytes()),
                ("token", token.as_bytes()),
            ],
            0o644,
        )
    }

    /// An atomic-writer volume of `plugin` whose files have their own modes (`items[].mode`).
    pub fn api_volume_modes(
        &self,
        plugin: &str,
        name: &str,
        files: &[(&str, &[u8], u32)],
        default_mode: u32,
    ) -> ApiVolume {
        let dir = self.volume_dir(plugin, name);
        mkdir(&dir, 0o750);
        let mut v = ApiVolume { dir, default_mode };
        v.write_modes(files);
        v
    }

    /// Any atomic-writer volume of `plugin`.
    pub fn api_volume(
        &self,
        plugin: &str,
        name: &str,
        files: &[(&str, &[u8])],
        default_mode: u32,
    ) -> ApiVolume {
        let dir = self.volume_dir(plugin, name);
        // The kubelet's SetUpAt: the volume dir is made 0750 before the writer fills it.
        mkdir(&dir, 0o750);
        let mut v = ApiVolume { dir, default_mode };
        v.write(files);
        v
    }

    /// An emptyDir on the node's disk (mode 0777, as the kubelet sets it).
    pub fn empty_dir(&self, name: &str) -> PathBuf {
        let dir = self.volume_dir(EMPTY_DIR, name);
        mkdir(&dir, 0o777);
        dir
    }

    /// The kubelet-managed `etc-hosts` (mounted at /etc/hosts), mode 0644.
    pub fn etc_hosts(&self, hostname: &str, pod_ip: &str) -> PathBuf {
        let p = self.dir.join("etc-hosts");
        let mut text = String::from(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        if !pod_ip.is_empty() {
            text.push_str(&format!("{pod_ip}\t{hostname}\n"));
        }
        write_file(&p, text.as_bytes(), 0o644);
        p
    }

    /// The termination-log file of a container: `containers/<name>/<8 hex>`, empty, mode 0666
    /// (mounted at the container's terminationMessagePath).
    pub fn termination_log(&self, container: &str) -> PathBuf {
        let dir = self.dir.join("containers").join(container);
        mkdir(&dir, 0o750);
        let p = dir.join(format!("{:08x}", random_u32()));
        write_file(&p, b"", 0o666);
        p
    }
}

/// An API-data volume written by the atomic writer.
pub struct ApiVolume {
    /// `volumes/<plugin>/<name>`: what the container mounts.
    pub dir: PathBuf,
    pub default_mode: u32,
}

impl ApiVolume {
    /// The atomic writer's `Write` with every file at the volume's default mode.
    pub fn write(&mut self, files: &[(&str, &[u8])]) {
        let files: Vec<(&str, &[u8], u32)> = files
            .iter()
            .map(|(k, d)| (*k, *d, self.default_mode))
            .collect();
        self.write_modes(&files);
    }

    /// The atomic writer's `Write`: `(relative path, content, mode)` (a path may have dirs:
    /// `a/b` is visible as the symlink `a -> ..data/a`).
    pub fn write_modes(&mut self, files: &[(&str, &[u8], u32)]) {
        let old = self.current();
        // 1. The new payload in a fresh timestamp dir.
        let ts = self.dir.join(timestamp_name());
        mkdir(&ts, 0o755);
        for (path, data, mode) in files {
            assert!(
                !path.starts_with('/') && !path.split('/').any(|c| c == ".." || c.is_empty()),
                "atomic writer: bad payload path {path:?}"
            );
            let p = ts.join(path);
            if let Some(parent) = p.parent() {
                if parent != ts {
                    mkdir(parent, 0o755);
                }
            }
            write_file(&p, data, *mode);
        }
        // 2. The swap: a temporary link to it, renamed over ..data (atomic for readers).
        let tmp = self.dir.join(DATA_TMP_LINK);
        let _ = std::fs::remove_file(&tmp);
        let ts_name = ts.file_name().expect("a timestamp dir name");
        symlink(ts_name, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
        let data = self.dir.join(DATA_LINK);
        std::fs::rename(&tmp, &data)
            .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), data.display()));
        // 3. User-visible links for new keys; keys gone from the payload removed.
        let tops: Vec<&str> = files
            .iter()
            .map(|(p, _, _)| p.split('/').next().unwrap_or(p))
            .collect();
        for top in &tops {
            let link = self.dir.join(top);
            if link.symlink_metadata().is_err() {
                symlink(Path::new(DATA_LINK).join(top), &link)
                    .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
            }
        }
        for name in self.visible() {
            if !tops.contains(&name.as_str()) {
                let p = self.dir.join(&name);
                std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
            }
        }
        // 4. The old payload dir goes.
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("rm {}: {e}", old.display()));
        }
    }

    /// The payload dir `..data` points to now.
    pub fn current(&self) -> Option<PathBuf> {
        std::fs::read_link(self.dir.join(DATA_LINK))
            .ok()
            .map(|t| self.dir.join(t))
    }

    /// The user-visible names (everything not starting with `..`), sorted.
    pub fn visible(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        v.sort();
        v
    }
}

/// `..2006_01_02_15_04_05.<random>` (Go's MkdirTemp with the kubelet's time prefix), UTC.
fn timestamp_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let (y, mo, d) = civil_from_days((now / 86400) as i64);
    let s = now % 86400;
    format!(
        "..{y:04}_{mo:02}_{d:02}_{:02}_{:02}_{:02}.{}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        random_u32()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A number that differs between calls (names only; no cryptographic use).
fn random_u32() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    (nanos ^ std::process::id().rotate_left(16)).wrapping_add(seq.wrapping_mul(0x9e37_79b9))
}

/// `mkdir -p` and then the exact mode (whatever the umask).
fn mkdir(p: &Path, mode: u32) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    chmod(p, mode);
}

fn write_file(p: &Path, data: &[u8], mode: u32) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    chmod(p, mode);
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

/// The permission bits of a path (following symlinks), as `stat -c %a` prints them.
pub fn mode_of(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    format!("{:o}", m.mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn atomic_writer_layout_and_swap() {
        let root = tempfile::tempdir().unwrap();
        let pod = PodDir::create(root.path(), "0a0b0c0d-1111-2222-3333-444455556666");
        let mut v = pod.secret("creds", &[("user", b"alice"), ("sub/pass", b"pw")], 0o400);
        assert!(v.dir.ends_with(
            "pods/0a0b0c0d-1111-2222-3333-444455556666/volumes/kubernetes.io~secret/creds"
        ));
        let first = v.current().expect("..data");
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("..") && name.len() > 22, "{name}");
        assert_eq!(mode_of(&first), "755");
        assert_eq!(v.visible(), ["sub", "user"]);
        assert_eq!(
            std::fs::read_link(v.dir.join("user")).unwrap(),
            Path::new("..data/user")
        );
        assert_eq!(std::fs::read(v.dir.join("sub/pass")).unwrap(), b"pw");
        assert_eq!(mode_of(&v.dir.join("user")), "400");

        v.write(&[("user", b"bob"), ("extra", b"x")]);
        let second = v.current().expect("..data");
        assert_ne!(first, second);
        assert!(!first.exists(), "old payload dir removed");
        assert_eq!(v.visible(), ["extra", "user"]);
        assert_eq!(std::fs::read(v.dir.join("user")).unwrap(), b"bob");
        assert!(!v.dir.join(DATA_TMP_LINK).exists());
        let names: Vec<String> = std::fs::read_dir(&v.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn other_files() {
        let root = tempfile::tempdir().unwrap();
        let pod = PodDir::create(root.path(), "u1");
        let e = pod.empty_dir("cache");
        assert_eq!(std::fs::metadata(&e).unwrap().mode() & 0o777, 0o777);
        let h = pod.etc_hosts("web", "10.1.2.3");
        let text = std::fs::read_to_string(&h).unwrap();
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n"));
        assert!(text.ends_with("10.1.2.3\tweb\n"));
        let t = pod.termination_log("app");
        assert_eq!(mode_of(&t), "666");
        assert_eq!(t.parent().unwrap(), pod.dir.join("containers/app"));
    }
}
