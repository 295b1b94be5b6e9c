//! Image facts for `kata-cc policy gen`: what a generated policy pins about a container image
//! (its manifest, config digest, layers with their diff_ids, the config's runtime defaults) and,
//! only when a container runs as a named user, the image's /etc/passwd and /etc/group.
//!
//! Two sources: a registry (distribution API v2, [`RegistrySource`]) and containerd's content
//! store ([`ContainerdSource`]). Both read index -> manifest -> config with the shim's own
//! parsing (`crate::image`), so a generated policy pins exactly what the shim later sends; a
//! layer is read only by [`ImageSource::accounts`].

mod accounts;
pub mod containerd;
pub mod reference;
pub mod registry;

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{self, Descriptor, Document, ImageError};

pub use containerd::ContainerdSource;
pub use reference::ImageRef;
pub use registry::{DockerCredentials, RegistrySource};

/// One layer, as the manifest lists it, with the config's diff_id for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFacts {
    /// The blob's digest (compressed, as stored), `sha256:<hex>`.
    pub digest: String,
    /// The uncompressed tar's digest from the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

/// The image config's runtime defaults (OCI image-spec `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// The reference as written in the manifest.
    pub reference: String,
    /// Normalized as containerd names it: `docker.io/library/busybox:latest`,
    /// `127.0.0.1:5000/x/y:tag`, `repo@sha256:...` when pinned.
    pub name: String,
    /// The linux/amd64 image manifest whose config and layers these are.
    pub manifest_digest: String,
    /// The image index the reference resolved to, when it named one (multi-platform images);
    /// `manifest_digest` is then its linux/amd64 entry.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfig,
    /// Lowest first.
    pub layers: Vec<LayerFacts>,
}

/// /etc/passwd and /etc/group as the image's layers leave them (`None`: not in the image).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// What a source has fetched so far (tests assert that facts alone fetch no layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FetchStats {
    /// Bytes of indexes, manifests and configs.
    pub metadata_bytes: u64,
    /// Compressed layer bytes read (accounts only).
    pub layer_bytes: u64,
    /// Layers opened (accounts only).
    pub layers_opened: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageFactsError {
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("image {image}: not found in {place}")]
    NotFound { image: String, place: String },
    #[error("image {image}: registry {registry}: {detail}")]
    Registry {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("containerd at {socket}: {detail}")]
    Connect { socket: String, detail: String },
    #[error("image {image}: containerd (namespace {namespace}): {detail}")]
    Containerd {
        image: String,
        namespace: String,
        detail: String,
    },
    /// The shim's own image errors (they name the image and the digest).
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("image {image}: {digest}: {detail}")]
    Invalid {
        image: String,
        digest: String,
        detail: String,
    },
    #[error("image {image}: layer {digest}: {detail}")]
    Layer {
        image: String,
        digest: String,
        detail: String,
    },
}

#[async_trait]
pub trait ImageSource: Send + Sync {
    /// Manifest, config and layer facts of `reference` (no layer is read).
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError>;
    /// /etc/passwd and /etc/group as the image's layers leave them (reads layers top down,
    /// stopping as soon as both are known).
    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError>;
}

/// Byte counters of a source.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    metadata: AtomicU64,
    layers: AtomicU64,
    layers_opened: AtomicU64,
}

impl Counters {
    pub(crate) fn metadata(&self, n: usize) {
        self.metadata.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn layer(&self, n: usize) {
        self.layers.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn layer_opened(&self) {
        self.layers_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> FetchStats {
        FetchStats {
            metadata_bytes: self.metadata.load(Ordering::Relaxed),
            layer_bytes: self.layers.load(Ordering::Relaxed),
            layers_opened: self.layers_opened.load(Ordering::Relaxed),
        }
    }
}

/// A manifest or index as fetched.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    /// From the descriptor or the store's record; empty when the transport does not say (the
    /// document's own `mediaType` or shape decides then).
    pub media_type: String,
}

/// How a source reads metadata blobs.
#[async_trait]
pub(crate) trait MetadataFetch: Send + Sync {
    /// The document the reference names (`None`), or the one `desc` points at.
    async fn document(&self, desc: Option<&Descriptor>) -> Result<Fetched, ImageFactsError>;
    /// The config blob `desc` points at.
    async fn config(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageFactsError>;
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn check_blob(image: &str, want: &str, bytes: &[u8], what: &str) -> Result<(), ImageFactsError> {
    let got = sha256_digest(bytes);
    if got != want {
        return Err(ImageFactsError::Invalid {
            image: image.to_string(),
            digest: want.to_string(),
            detail: format!("{what} content has digest {got}"),
        });
    }
    Ok(())
}

/// Index -> linux/amd64 manifest -> config, through `fetch`, every blob checked against the
/// digest that named it.
pub(crate) async fn resolve(
    reference: &str,
    parsed: &ImageRef,
    fetch: &dyn MetadataFetch,
) -> Result<ImageFacts, ImageFactsError> {
    let name = parsed.name();
    let mut doc = fetch.document(None).await?;
    if let Some(pinned) = &parsed.digest {
        check_blob(&name, pinned, &doc.bytes, "manifest")?;
    }
    let mut index_digest = None;
    // An index may nest another index; bound the walk.
    for _ in 0..4 {
        match image::parse_document(&name, &doc.digest, &doc.media_type, &doc.bytes)? {
            Document::Index(manifests) => {
                let chosen = image::choose_platform(&name, &doc.digest, &manifests)?.clone();
                index_digest.get_or_insert_with(|| doc.digest.clone());
                doc = fetch.document(Some(&chosen)).await?;
                check_blob(&name, &chosen.digest, &doc.bytes, "manifest")?;
            }
            Document::Manifest { config, layers } => {
                let config_bytes = fetch.config(&config).await?;
                check_blob(&name, &config.digest, &config_bytes, "config")?;
                let (defaults, diff_ids) =
                    image::parse_config(&name, &config.digest, &config_bytes)?;
                let paired =
                    image::pair_layers(&name, &doc.digest, &layers, &config.digest, &diff_ids)?;
                let mut out = Vec::with_capacity(paired.len());
                for l in paired {
                    let size = u64::try_from(l.size).map_err(|_| ImageFactsError::Invalid {
                        image: name.clone(),
                        digest: l.digest.clone(),
                        detail: format!("negative layer size {}", l.size),
                    })?;
                    out.push(LayerFacts {
                        digest: l.digest,
                        diff_id: l.diff_id,
                        media_type: l.media_type,
                        size,
                    });
                }
                return Ok(ImageFacts {
                    reference: reference.to_string(),
                    name,
                    manifest_digest: doc.digest,
                    index_digest,
                    config_digest: config.digest,
                    config: ImageConfig {
                        user: defaults.user,
                        env: defaults.env,
                        entrypoint: defaults.entrypoint,
                        cmd: defaults.cmd,
                        working_dir: defaults.working_dir,
                    },
                    layers: out,
                });
            }
        }
    }
    Err(ImageFactsError::Invalid {
        image: name,
        digest: doc.digest,
        detail: "image indexes nested too deeply".to_string(),
    })
}

/// Facts already read, by normalized name (a pod's containers often share an image).
#[derive(Debug, Default)]
pub(crate) struct FactsCache {
    facts: std::sync::Mutex<std::collections::HashMap<String, ImageFacts>>,
    accounts: std::sync::Mutex<std::collections::HashMap<String, Accounts>>,
}

impl FactsCache {
    pub(crate) fn get(&self, name: &str, reference: &str) -> Option<ImageFacts> {
        let map = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(|f| ImageFacts {
            reference: reference.to_string(),
            ..f.clone()
        })
    }

    pub(crate) fn put(&self, facts: &ImageFacts) {
        let mut map = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(facts.name.clone(), facts.clone());
    }

    /// Accounts by manifest digest (the same layers give the same files).
    pub(crate) fn get_accounts(&self, manifest_digest: &str) -> Option<Accounts> {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(manifest_digest).cloned()
    }

    pub(crate) fn put_accounts(&self, manifest_digest: &str, accounts: &Accounts) {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(manifest_digest.to_string(), accounts.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
    use std::collections::HashMap;

    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// Blobs by digest; the reference names `top`.
    struct Mem {
        blobs: HashMap<String, Vec<u8>>,
        top: String,
        top_type: String,
    }

    #[async_trait]
    impl MetadataFetch for Mem {
        async fn document(&self, desc: Option<&Descriptor>) -> Result<Fetched, ImageFactsError> {
            let (digest, media_type) = match desc {
                Some(d) => (d.digest.clone(), d.media_type.clone()),
                None => (self.top.clone(), self.top_type.clone()),
            };
            let bytes =
                self.blobs
                    .get(&digest)
                    .cloned()
                    .ok_or_else(|| ImageFactsError::NotFound {
                        image: digest.clone(),
                        place: "memory".into(),
                    })?;
            Ok(Fetched {
                bytes,
                digest,
                media_type,
            })
        }
        async fn config(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageFactsError> {
            Ok(self.blobs.get(&desc.digest).cloned().unwrap_or_default())
        }
    }

    fn add(blobs: &mut HashMap<String, Vec<u8>>, bytes: Vec<u8>) -> String {
        let d = sha256_digest(&bytes);
        blobs.insert(d.clone(), bytes);
        d
    }

    /// An index (amd64 + arm64) over a two-layer manifest; returns (store, index, manifest,
    /// config digests).
    fn image() -> (HashMap<String, Vec<u8>>, String, String, String) {
        let mut blobs = HashMap::new();
        let l1 = format!("sha256:{}", "1".repeat(64));
        let l2 = format!("sha256:{}", "2".repeat(64));
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"User": "app", "Env": ["PATH=/bin", "A=1"], "Entrypoint": "/init",
                       "Cmd": null, "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": [d1, d2]}
        });
        let config_d = add(&mut blobs, serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": 1},
            "layers": [{"mediaType": GZ, "digest": l1, "size": 10}, {"mediaType": GZ, "digest": l2, "size": 20}]
        });
        let manifest_d = add(&mut blobs, serde_json::to_vec(&manifest).unwrap());
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": format!("sha256:{}", "f".repeat(64)), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_d, "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}}]
        });
        let index_d = add(&mut blobs, serde_json::to_vec(&index).unwrap());
        (blobs, index_d, manifest_d, config_d)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn index_to_manifest_to_config() {
        let (blobs, index_d, manifest_d, config_d) = image();
        let src = Mem {
            blobs,
            top: index_d.clone(),
            top_type: String::new(),
        };
        let r = ImageRef::parse("127.0.0.1:5000/x/app:1").unwrap();
        let facts = block_on(resolve("127.0.0.1:5000/x/app:1", &r, &src)).unwrap();
        assert_eq!(facts.name, "127.0.0.1:5000/x/app:1");
        assert_eq!(facts.index_digest.as_deref(), Some(index_d.as_str()));
        assert_eq!(facts.manifest_digest, manifest_d);
        assert_eq!(facts.config_digest, config_d);
        assert_eq!(facts.config.user, "app");
        assert_eq!(facts.config.env, vec!["PATH=/bin", "A=1"]);
        assert_eq!(facts.config.entrypoint, vec!["/init"]);
        assert!(facts.config.cmd.is_empty());
        assert_eq!(facts.config.working_dir, "/srv");
        assert_eq!(facts.layers.len(), 2);
        assert_eq!(
            facts.layers[0].diff_id,
            format!("sha256:{}", "a".repeat(64))
        );
        assert_eq!(facts.layers[1].size, 20);
    }

    #[test]
    fn pinned_digest_must_match_the_content() {
        let (blobs, index_d, _, _) = image();
        let other = format!("sha256:{}", "c".repeat(64));
        let src = Mem {
            blobs,
            top: index_d,
            top_type: String::new(),
        };
        let reference = format!("127.0.0.1:5000/x/app@{other}");
        let r = ImageRef::parse(&reference).unwrap();
        let err = block_on(resolve(&reference, &r, &src))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&other), "{err}");
        assert!(err.contains("manifest content has digest"), "{err}");
    }

    #[test]
    fn tampered_config_is_refused_naming_it() {
        let (mut blobs, _, manifest_d, config_d) = image();
        blobs.insert(config_d.clone(), b"{\"rootfs\":{}}".to_vec());
        let src = Mem {
            blobs,
            top: manifest_d,
            top_type: MEDIA_OCI_MANIFEST.into(),
        };
        let r = ImageRef::parse("a/b:1").unwrap();
        let err = block_on(resolve("a/b:1", &r, &src))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&config_d), "{err}");
        assert!(err.contains("docker.io/a/b:1"), "{err}");
    }

    #[test]
    fn schema1_is_refused() {
        let mut blobs = HashMap::new();
        let d = add(
            &mut blobs,
            br#"{"schemaVersion":1,"name":"old","tag":"1","fsLayers":[],"history":[]}"#.to_vec(),
        );
        let src = Mem {
            blobs,
            top: d,
            top_type: String::new(),
        };
        let r = ImageRef::parse("old:1").unwrap();
        let err = block_on(resolve("old:1", &r, &src))
            .unwrap_err()
            .to_string();
        assert!(err.contains(image::SCHEMA1_MESSAGE), "{err}");
        assert!(err.contains("docker.io/library/old:1"), "{err}");
    }
}
