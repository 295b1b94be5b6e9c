//! The storages the agent accepts (`Storage` messages), checked before anything is done:
//! - CreateSandbox: Kata's ephemeral tmpfs storages below the sandbox directory (the shm);
//! - CreateContainer: exactly one image storage in Kata's guest-pull shape whose
//!   `driver_options` name the layers ([`contract::LayerRef`]) the shim copied.

use std::path::{Path, PathBuf};

use agent_proto::agent::Storage;
use agent_proto::contract::{self, LayerRef};
use nix::mount::MsFlags;

use crate::paths::strictly_below;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error("storage driver {driver:?} (source {src:?}) is not supported here: {expected}")]
    Driver {
        driver: String,
        src: String,
        expected: &'static str,
    },
    #[error("storage {driver}: fstype {fstype:?}, expected {expected:?}")]
    Fstype {
        driver: String,
        fstype: String,
        expected: &'static str,
    },
    #[error("storage {driver}: mount_point {mount_point:?} is not below {dir}")]
    MountPoint {
        driver: String,
        mount_point: String,
        dir: String,
    },
    #[error("storage {driver}: option {option:?} is not supported")]
    Option { driver: String, option: String },
    #[error("storage {driver}: driver_options {option}")]
    DriverOption { driver: String, option: String },
    #[error("{0}")]
    Shape(String),
}

/// A tmpfs to mount (an ephemeral storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub source: String,
    pub mount_point: PathBuf,
    pub flags: MsFlags,
    /// The filesystem options (`mode=`, `size=`, ...), comma separated.
    pub data: String,
}

/// Mount flags by option name.
const FLAGS: &[(&str, MsFlags)] = &[
    ("noexec", MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("ro", MsFlags::MS_RDONLY),
    ("rw", MsFlags::empty()),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
];
/// tmpfs's own options (`key=value`).
const TMPFS_KEYS: &[&str] = &["mode", "size", "nr_inodes", "nr_blocks", "uid", "gid"];

/// An ephemeral storage of CreateSandbox: a tmpfs below `sandbox_dir` (not in its `ns`
/// subdirectory, where the namespaces are bound).
pub fn sandbox_storage(
    sandbox_dir: &Path,
    ns_dir: &Path,
    s: &Storage,
) -> Result<Tmpfs, StorageError> {
    if s.driver != contract::EPHEMERAL_DRIVER {
        return Err(StorageError::Driver {
            driver: s.driver.clone(),
            src: s.source.clone(),
            expected: "CreateSandbox takes ephemeral (tmpfs) storages only",
        });
    }
    if s.fstype != "tmpfs" {
        return Err(StorageError::Fstype {
            driver: s.driver.clone(),
            fstype: s.fstype.clone(),
            expected: "tmpfs",
        });
    }
    let mp = Path::new(&s.mount_point);
    if !strictly_below(mp, sandbox_dir) || mp.starts_with(ns_dir) {
        return Err(StorageError::MountPoint {
            driver: s.driver.clone(),
            mount_point: s.mount_point.clone(),
            dir: format!("{}/ (outside {})", sandbox_dir.display(), ns_dir.display()),
        });
    }
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &s.options {
        if let Some((_, f)) = FLAGS.iter().find(|(n, _)| n == o) {
            flags |= *f;
            continue;
        }
        let key_ok = o
            .split_once('=')
            .is_some_and(|(k, v)| TMPFS_KEYS.contains(&k) && !v.is_empty() && !v.contains(','));
        if !key_ok {
            return Err(StorageError::Option {
                driver: s.driver.clone(),
                option: o.clone(),
            });
        }
        data.push(o.as_str());
    }
    if !s.driver_options.is_empty() {
        return Err(StorageError::DriverOption {
            driver: s.driver.clone(),
            option: format!("{:?}: none expected", s.driver_options),
        });
    }
    Ok(Tmpfs {
        source: if s.source.is_empty() {
            "tmpfs".into()
        } else {
            s.source.clone()
        },
        mount_point: mp.to_path_buf(),
        flags,
        data: data.join(","),
    })
}

/// The layers of a container's image storage, lowest first. `rootfs` is where it must be
/// mounted (the container's root, Kata's `root_path`).
pub fn image_layers(rootfs: &Path, storages: &[Storage]) -> Result<Vec<LayerRef>, StorageError> {
    let s = match storages {
        [s] => s,
        [] => {
            return Err(StorageError::Shape(format!(
                "no storage: one {} storage (the image) is expected",
                contract::IMAGE_DRIVER
            )))
        }
        more => {
            return Err(StorageError::Shape(format!(
                "{} storages ({}): exactly one {} storage (the image) is expected",
                more.len(),
                more.iter()
                    .map(|s| format!("{:?}", s.driver))
                    .collect::<Vec<_>>()
                    .join(", "),
                contract::IMAGE_DRIVER
            )))
        }
    };
    if s.driver != contract::IMAGE_DRIVER {
        return Err(StorageError::Driver {
            driver: s.driver.clone(),
            src: s.source.clone(),
            expected: "CreateContainer takes one image_guest_pull storage",
        });
    }
    if s.fstype != contract::IMAGE_FSTYPE {
        return Err(StorageError::Fstype {
            driver: s.driver.clone(),
            fstype: s.fstype.clone(),
            expected: contract::IMAGE_FSTYPE,
        });
    }
    if let Some(o) = s.options.first() {
        return Err(StorageError::Option {
            driver: s.driver.clone(),
            option: o.clone(),
        });
    }
    if Path::new(&s.mount_point) != rootfs {
        return Err(StorageError::Shape(format!(
            "image storage mount_point {:?} must be {} (the container's root)",
            s.mount_point,
            rootfs.display()
        )));
    }
    let mut layers = Vec::new();
    for o in &s.driver_options {
        match LayerRef::parse(o) {
            Some(Ok(l)) => layers.push(l),
            Some(Err(why)) => {
                return Err(StorageError::DriverOption {
                    driver: s.driver.clone(),
                    option: why,
                })
            }
            None => {
                return Err(StorageError::DriverOption {
                    driver: s.driver.clone(),
                    option: format!("{o:?} is not a {} entry", contract::LAYER_OPTION),
                })
            }
        }
    }
    if layers.is_empty() {
        return Err(StorageError::DriverOption {
            driver: s.driver.clone(),
            option: format!("name no layer ({}=...)", contract::LAYER_OPTION),
        });
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shm() -> Storage {
        let mut s = Storage::new();
        s.driver = contract::EPHEMERAL_DRIVER.into();
        s.source = "shm".into();
        s.fstype = "tmpfs".into();
        s.options = contract::shm_options(contract::DEFAULT_SHM_SIZE);
        s.mount_point = contract::SANDBOX_SHM_DIR.into();
        s
    }

    const SB: &str = "/run/kata-containers/sandbox";
    const NS: &str = "/run/kata-containers/sandbox/ns";

    #[test]
    fn kata_shm_storage_is_a_tmpfs() {
        let t = sandbox_storage(Path::new(SB), Path::new(NS), &shm()).unwrap();
        assert_eq!(t.source, "shm");
        assert_eq!(t.mount_point, Path::new(contract::SANDBOX_SHM_DIR));
        assert_eq!(
            t.flags,
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(t.data, "mode=1777,size=67108864");
    }

    #[test]
    fn other_sandbox_storages_are_refused_by_name() {
        let check = |f: &dyn Fn(&mut Storage), want: &str| {
            let mut s = shm();
            f(&mut s);
            let e = sandbox_storage(Path::new(SB), Path::new(NS), &s)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} (want {want})");
        };
        check(&|s| s.driver = "virtio-fs".into(), "\"virtio-fs\"");
        check(&|s| s.fstype = "ext4".into(), "\"ext4\"");
        check(&|s| s.mount_point = "/etc".into(), "\"/etc\"");
        check(&|s| s.mount_point = SB.into(), SB);
        check(&|s| s.mount_point = format!("{SB}/../x"), "/../x");
        check(&|s| s.mount_point = format!("{NS}/ipc"), "ns/ipc");
        check(&|s| s.options.push("exec,dev".into()), "\"exec,dev\"");
        check(&|s| s.options.push("size=1,mode=0".into()), "size=1,mode=0");
    }

    fn image(cid: &str) -> Storage {
        let mut s = Storage::new();
        s.driver = contract::IMAGE_DRIVER.into();
        s.fstype = contract::IMAGE_FSTYPE.into();
        s.source = "docker.io/library/busybox:latest".into();
        s.mount_point = contract::guest_rootfs(cid);
        s.driver_options = ["sha256:aa", "sha256:bb"]
            .iter()
            .map(|d| {
                LayerRef {
                    digest: d.to_string(),
                    diff_id: format!("{d}-diff"),
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                }
                .option()
            })
            .collect();
        s
    }

    #[test]
    fn image_storage_gives_its_layers_in_order() {
        let rootfs = PathBuf::from(contract::guest_rootfs("c1"));
        let l = image_layers(&rootfs, &[image("c1")]).unwrap();
        assert_eq!(
            l.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>(),
            ["sha256:aa", "sha256:bb"]
        );
        assert_eq!(l[1].diff_id, "sha256:bb-diff");
    }

    #[test]
    fn image_storage_shape_is_enforced() {
        let rootfs = PathBuf::from(contract::guest_rootfs("c1"));
        let err = |ss: &[Storage]| image_layers(&rootfs, ss).unwrap_err().to_string();
        assert!(err(&[]).contains("no storage"));
        assert!(err(&[image("c1"), image("c1")]).contains("2 storages"));
        let mut s = image("c1");
        s.driver = "kata-cc.layer".into();
        assert!(err(&[s]).contains("\"kata-cc.layer\""));
        let mut s = image("c1");
        s.mount_point = contract::guest_rootfs("c2");
        let e = err(&[s]);
        assert!(e.contains("/c2/rootfs") && e.contains("/c1/rootfs"), "{e}");
        let mut s = image("c1");
        s.options = vec!["ro".into()];
        assert!(err(&[s]).contains("\"ro\""));
        let mut s = image("c1");
        s.fstype = "fuse3.kata-overlay".into();
        assert!(err(&[s]).contains("fuse3.kata-overlay"));
        let mut s = image("c1");
        s.driver_options.push("image_guest_pull={}".into());
        assert!(err(&[s]).contains("image_guest_pull={}"));
        let mut s = image("c1");
        s.driver_options = vec!["kata-cc.layer=a,b".into()];
        assert!(err(&[s]).contains("kata-cc.layer=a,b"));
        let mut s = image("c1");
        s.driver_options.clear();
        assert!(err(&[s]).contains("no layer"));
    }
}
