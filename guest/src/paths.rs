//! The guest's directories, in Kata's layout (`contract`): container bundles, the CopyFile area,
//! the sandbox's storages and namespaces. Host tests move each with an environment variable.

use std::path::{Component, Path, PathBuf};

use agent_proto::contract;

#[derive(Debug, Clone)]
pub struct Paths {
    /// Container bundles: `<containers>/<cid>/rootfs` is a container's root
    /// (`KATA_CC_CONTAINERS_DIR`, else [`contract::GUEST_CONTAINERS_DIR`]).
    pub containers: PathBuf,
    /// The only place CopyFile writes (`KATA_CC_SHARED_DIR`, else
    /// [`contract::SHARED_CONTAINERS_DIR`]).
    pub shared: PathBuf,
    /// The sandbox's storages (shm) and namespace files (`KATA_CC_SANDBOX_DIR`, else the parent
    /// of [`contract::SANDBOX_SHM_DIR`]).
    pub sandbox: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let var = |name: &str, default: &str| {
            PathBuf::from(std::env::var(name).unwrap_or_else(|_| default.to_string()))
        };
        let default_sandbox = Path::new(contract::SANDBOX_SHM_DIR)
            .parent()
            .unwrap_or(Path::new(contract::KATA_RUN_DIR))
            .display()
            .to_string();
        Paths {
            containers: var("KATA_CC_CONTAINERS_DIR", contract::GUEST_CONTAINERS_DIR),
            shared: var("KATA_CC_SHARED_DIR", contract::SHARED_CONTAINERS_DIR),
            sandbox: var("KATA_CC_SANDBOX_DIR", &default_sandbox),
        }
    }

    pub fn bundle(&self, cid: &str) -> PathBuf {
        self.containers.join(cid)
    }

    /// A container's root filesystem (Kata's `root_path`; [`contract::guest_rootfs`] in the
    /// guest).
    pub fn rootfs(&self, cid: &str) -> PathBuf {
        self.bundle(cid).join("rootfs")
    }

    /// The sandbox's `/dev/shm` ([`contract::SANDBOX_SHM_DIR`] in the guest).
    pub fn shm(&self) -> PathBuf {
        let name = Path::new(contract::SANDBOX_SHM_DIR)
            .file_name()
            .unwrap_or(std::ffi::OsStr::new("shm"));
        self.sandbox.join(name)
    }

    /// Where the sandbox's IPC and UTS namespaces are bound.
    pub fn ns_dir(&self) -> PathBuf {
        self.sandbox.join("ns")
    }

    /// Where the shim copied a layer blob for a container ([`contract::LayerRef::blob_path`],
    /// moved into [`Paths::shared`]).
    pub fn blob(&self, layer: &contract::LayerRef, cid: &str) -> PathBuf {
        let p = layer.blob_path(cid);
        let name = Path::new(&p)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(p));
        self.shared.join(name)
    }
}

/// Whether `p` is strictly below `dir`, compared component by component, with no `.` or `..`
/// in `p` (which would make a textual prefix meaningless).
pub fn strictly_below(p: &Path, dir: &Path) -> bool {
    p.is_absolute()
        && p != dir
        && p.starts_with(dir)
        && p.components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract_paths() {
        let p = Paths {
            containers: contract::GUEST_CONTAINERS_DIR.into(),
            shared: contract::SHARED_CONTAINERS_DIR.into(),
            sandbox: "/run/kata-containers/sandbox".into(),
        };
        assert_eq!(
            p.rootfs("c1").display().to_string(),
            contract::guest_rootfs("c1")
        );
        assert_eq!(p.shm(), Path::new(contract::SANDBOX_SHM_DIR));
        let l = contract::LayerRef {
            digest: "sha256:0123456789abcdef0123".into(),
            diff_id: "sha256:ff".into(),
            media_type: "m".into(),
        };
        assert_eq!(p.blob(&l, "c1").display().to_string(), l.blob_path("c1"));
    }

    #[test]
    fn below_is_by_component() {
        let d = Path::new("/run/kata-containers/shared/containers");
        assert!(strictly_below(
            Path::new("/run/kata-containers/shared/containers/a"),
            d
        ));
        assert!(!strictly_below(d, d));
        assert!(!strictly_below(
            Path::new("/run/kata-containers/shared/containersX/a"),
            d
        ));
        assert!(!strictly_below(
            Path::new("/run/kata-containers/shared/containers/../../etc"),
            d
        ));
        assert!(!strictly_below(Path::new("shared/containers/a"), d));
    }
}
