//! The guest image's manifest (`manifest.json` beside `rootfs.img`, written by
//! hack/bake-image.sh): the one type every Rust reader uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the manifest in a baked (or installed) guest directory.
pub const FILE_NAME: &str = "manifest.json";
/// The `format` this type reads; bake-image.sh bumps it when the layout changes.
pub const FORMAT: u32 = 2;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("guest manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest manifest {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("guest manifest {path}: format {found}, this kata-cc reads format {FORMAT} (re-bake the image)")]
    Format { path: PathBuf, found: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kernel: Kernel,
    /// sha256 and size of `vmlinuz`, `initrd.img`, `rootfs.img`.
    pub files: BTreeMap<String, FileDigest>,
    pub rootfs: Rootfs,
    /// The kernel command line (also in `cmdline`), carrying the root hash.
    pub cmdline: String,
    pub default_policy: DefaultPolicy,
    pub inputs: Inputs,
    pub snp_measurement: SnpMeasurement,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The guest kernel release (`uname -r` in the guest).
    pub version: String,
    /// The Debian source it was built from (hack/kernel.sh), e.g. `linux-source-6.12`.
    pub source_package: String,
    pub source_version: String,
    /// The Debian config it started from (package and flavour, e.g. `cloud-amd64`).
    pub config_package: String,
    pub config_flavour: String,
    /// sha256 of hack/guest/kernel.config, the changes made to that config.
    pub config_changes_sha256: String,
    /// sha256 of the final .config the kernel was built with.
    pub config_sha256: String,
    /// `gcc --version`'s first line.
    pub compiler: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    pub filesystem: String,
    pub verity: String,
    /// dm-verity root hash, hex.
    pub root_hash: String,
    pub salt: String,
    /// Byte offset of the verity superblock (the hash tree starts one block later).
    pub hash_offset: u64,
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPolicy {
    pub name: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub agent_sha256: String,
    /// Empty when the rootfs has no busybox (a real agent; only a script stand-in brings it).
    pub busybox_sha256: String,
    pub init_sha256: String,
    pub source_date_epoch: u64,
}

/// Expected SNP launch digests; `computed: false` with the `reason` when the bake had no AMD
/// SEV firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpMeasurement {
    pub computed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_features: Option<String>,
    /// vCPU count (as a string key, as in the JSON) -> launch digest hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_vcpus: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads `path` (a manifest.json).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// The manifest of the guest directory `dir` (`dir/manifest.json`).
    pub fn load_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        Self::load(&dir.join(FILE_NAME))
    }

    /// Parses manifest bytes; `path` only names the source in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, ManifestError> {
        // The format first, so that a future layout is reported as such, not as a missing key.
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if probe.format != FORMAT {
            return Err(ManifestError::Format {
                path: path.to_path_buf(),
                found: probe.format,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// sha256 hex the manifest records for `file` (`vmlinuz`, `initrd.img`, `rootfs.img`).
    pub fn sha256_of(&self, file: &str) -> Option<&str> {
        self.files.get(file).map(|f| f.sha256.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape hack/bake-image.sh writes (jq --sort-keys), without SNP firmware.
    const SAMPLE: &str = r#"{
      "cmdline": "console=ttyS0 quiet kata_cc.roothash=ab12 kata_cc.salt=00 kata_cc.hashoffset=8192",
      "default_policy": {"name": "allow-all", "path": "/etc/kata-cc/policy.rego", "sha256": "cd"},
      "files": {
        "initrd.img": {"sha256": "i1", "size": 10},
        "rootfs.img": {"sha256": "r1", "size": 12288},
        "vmlinuz": {"sha256": "v1", "size": 20}
      },
      "format": 2,
      "inputs": {"agent_sha256": "a", "busybox_sha256": "b", "init_sha256": "c",
                 "source_date_epoch": 0},
      "kernel": {"compiler": "gcc 12", "config_changes_sha256": "f", "config_flavour": "cloud-amd64",
                 "config_package": "linux-config-6.12", "config_sha256": "g",
                 "source_package": "linux-source-6.12", "source_version": "6.12.118-1",
                 "version": "6.12.118-kata-cc"},
      "rootfs": {"data_blocks": 2, "filesystem": "erofs", "hash_offset": 8192,
                 "root_hash": "ab12", "salt": "00", "verity": "dm-verity v1"},
      "snp_measurement": {"computed": false, "reason": "no AMD SEV firmware given"}
    }"#;

    #[test]
    fn parses_what_the_bake_writes() {
        let m = Manifest::parse(SAMPLE.as_bytes(), Path::new("m.json")).unwrap();
        assert_eq!(m.kernel.version, "6.12.118-kata-cc");
        assert_eq!(m.kernel.source_version, "6.12.118-1");
        assert_eq!(m.rootfs.hash_offset, 8192);
        assert_eq!(m.sha256_of("rootfs.img"), Some("r1"));
        assert_eq!(m.sha256_of("nope"), None);
        assert!(!m.snp_measurement.computed);
        assert_eq!(m.default_policy.name, "allow-all");
        // Round trip: what this type writes, it reads back unchanged.
        let again = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&again, Path::new("m2")).unwrap(), m);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        // A format-1 manifest (the Debian kernel package with its modules in the initrd).
        let e = Manifest::parse(b"{\"format\": 1}", Path::new("/g/manifest.json")).unwrap_err();
        assert!(matches!(e, ManifestError::Format { found: 1, .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("guest manifest /g/manifest.json: format 1"));
        let broken = SAMPLE.replace("\"hash_offset\": 8192,", "");
        let e = Manifest::parse(broken.as_bytes(), Path::new("x.json")).unwrap_err();
        assert!(e.to_string().contains("hash_offset"), "{e}");
        let e = Manifest::load(Path::new("/nonexistent/manifest.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/manifest.json"), "{e}");
    }
}
