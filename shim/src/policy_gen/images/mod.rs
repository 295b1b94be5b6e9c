//! Image facts for `kata-cc policy gen`: the interface the generator codes against.
//!
//! PLACEHOLDER of the "gen" branch: the "images" branch owns this module (registry and
//! containerd sources, reading /etc/passwd and /etc/group from layers). On merge, take the
//! images branch's file; this one holds only the agreed interface so that the generator
//! builds and its tests run with an in-memory source.

use async_trait::async_trait;

/// One layer of an image, lowest first in [`ImageFacts::layers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFacts {
    /// The compressed blob's digest (`sha256:<hex>`).
    pub digest: String,
    /// The uncompressed tar's digest (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

/// The parts of the image config a container's process is made from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The reference as written in the manifest.
    pub reference: String,
    /// Normalized: `docker.io/library/busybox:latest`, `127.0.0.1:5000/x/y:tag`.
    pub name: String,
    pub manifest_digest: String,
    /// The image index the reference resolved to, if it named one.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<LayerFacts>,
}

/// `/etc/passwd` and `/etc/group` as the image's layers leave them (file texts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accounts {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// The images branch's variants that the generator's tests use.
#[derive(Debug, thiserror::Error)]
pub enum ImageFactsError {
    #[error("image {image}: not found in {place}")]
    NotFound { image: String, place: String },
    #[error("image {image}: registry {registry}: {detail}")]
    Registry {
        image: String,
        registry: String,
        detail: String,
    },
}

#[async_trait]
pub trait ImageSource: Send + Sync {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError>;
    /// /etc/passwd and /etc/group as the image's layers leave them (reads layers top down).
    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError>;
}

/// Images from a registry (distribution API v2). Placeholder: the images branch implements it.
pub struct RegistrySource {
    _insecure_hosts: Vec<String>,
}

impl RegistrySource {
    pub fn new(insecure_hosts: Vec<String>) -> Self {
        RegistrySource {
            _insecure_hosts: insecure_hosts,
        }
    }

    /// What the source found unusable in the Docker credentials (for the CLI to print).
    pub fn warnings(&self) -> &[String] {
        &[]
    }
}

#[async_trait]
impl ImageSource for RegistrySource {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError> {
        Err(ImageFactsError::Registry {
            image: reference.to_string(),
            registry: String::new(),
            detail: "no registry source in this build (placeholder)".into(),
        })
    }
    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError> {
        Err(ImageFactsError::Registry {
            image: image.reference.clone(),
            registry: String::new(),
            detail: "no registry source in this build (placeholder)".into(),
        })
    }
}

/// Images from containerd's content store. Placeholder: the images branch implements it.
pub struct ContainerdSource {
    _socket: String,
    _namespace: String,
}

impl ContainerdSource {
    pub async fn connect(socket: &str, namespace: &str) -> Result<Self, ImageFactsError> {
        Ok(ContainerdSource {
            _socket: socket.to_string(),
            _namespace: namespace.to_string(),
        })
    }
}

#[async_trait]
impl ImageSource for ContainerdSource {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError> {
        Err(ImageFactsError::NotFound {
            image: reference.to_string(),
            place: "no containerd source in this build (placeholder)".into(),
        })
    }
    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError> {
        Err(ImageFactsError::NotFound {
            image: image.reference.clone(),
            place: "no containerd source in this build (placeholder)".into(),
        })
    }
}
