//! Image facts from containerd's metadata and content store (the node's images, as the shim
//! later reads them: `crate::image::ImageStore`). Nothing is pulled: an image missing from the
//! namespace is an error naming it.

use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::tonic::Code;

use super::accounts::{self, ChunkStream, LayerOpener};
use super::{
    Accounts, Counters, FactsCache, FetchStats, Fetched, ImageFacts, ImageFactsError, ImageRef,
    ImageSource, LayerFacts, MetadataFetch,
};
use crate::image::{Descriptor, ImageError, ImageStore};

/// CRI's namespace: where the kubelet's images are.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";

pub struct ContainerdSource {
    store: ImageStore,
    socket: String,
    namespace: String,
    counters: Counters,
    cache: FactsCache,
}

impl ContainerdSource {
    /// Connects to containerd's GRPC socket (`unix://` prefix optional).
    pub async fn connect(socket: &str, namespace: &str) -> Result<Self, ImageFactsError> {
        let store =
            ImageStore::connect(socket, namespace)
                .await
                .map_err(|e| ImageFactsError::Connect {
                    socket: socket.to_string(),
                    detail: match e {
                        ImageError::Connect { source, .. } => {
                            let mut s = source.to_string();
                            let mut cur = std::error::Error::source(&source);
                            while let Some(c) = cur {
                                s.push_str(&format!(": {c}"));
                                cur = c.source();
                            }
                            s
                        }
                        other => other.to_string(),
                    },
                })?;
        Ok(ContainerdSource {
            store,
            socket: socket.to_string(),
            namespace: namespace.to_string(),
            counters: Counters::default(),
            cache: FactsCache::default(),
        })
    }

    /// Bytes read from the content store so far.
    pub fn stats(&self) -> FetchStats {
        self.counters.snapshot()
    }

    fn store_err(&self, image: &str, e: ImageError) -> ImageFactsError {
        match e {
            ImageError::Image { status, .. } if status.code() == Code::NotFound => {
                ImageFactsError::NotFound {
                    image: image.to_string(),
                    place: format!(
                        "containerd namespace {} at {} (kata-cc policy gen does not pull; pull it on the node first, e.g. `crictl pull {image}`)",
                        self.namespace, self.socket
                    ),
                }
            }
            ImageError::Read { digest, status } => ImageFactsError::Containerd {
                image: image.to_string(),
                namespace: self.namespace.clone(),
                detail: format!(
                    "read content {digest}: {} (the blob is not in the content store?)",
                    status.message()
                ),
            },
            ImageError::Image { status, .. } => ImageFactsError::Containerd {
                image: image.to_string(),
                namespace: self.namespace.clone(),
                detail: format!("get image: {}", status.message()),
            },
            other => ImageFactsError::Image(other),
        }
    }
}

struct Fetch<'a> {
    source: &'a ContainerdSource,
    name: String,
}

#[async_trait]
impl MetadataFetch for Fetch<'_> {
    async fn document(&self, desc: Option<&Descriptor>) -> Result<Fetched, ImageFactsError> {
        let target = match desc {
            Some(d) => d.clone(),
            None => self
                .source
                .store
                .target(&self.name)
                .await
                .map_err(|e| self.source.store_err(&self.name, e))?,
        };
        let bytes = self
            .source
            .store
            .read_small(&target.digest)
            .await
            .map_err(|e| self.source.store_err(&self.name, e))?;
        self.source.counters.metadata(bytes.len());
        Ok(Fetched {
            bytes,
            digest: target.digest,
            media_type: target.media_type,
        })
    }

    async fn config(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageFactsError> {
        let bytes = self
            .source
            .store
            .read_small(&desc.digest)
            .await
            .map_err(|e| self.source.store_err(&self.name, e))?;
        self.source.counters.metadata(bytes.len());
        Ok(bytes)
    }
}

#[async_trait]
impl ImageSource for ContainerdSource {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError> {
        let parsed = ImageRef::parse(reference)?;
        let name = parsed.name();
        if let Some(hit) = self.cache.get(&name, reference) {
            return Ok(hit);
        }
        let fetch = Fetch { source: self, name };
        let facts = super::resolve(reference, &parsed, &fetch).await?;
        self.cache.put(&facts);
        Ok(facts)
    }

    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError> {
        if let Some(hit) = self.cache.get_accounts(&image.manifest_digest) {
            return Ok(hit);
        }
        let out = accounts::read_accounts(self, image, &self.counters).await?;
        self.cache.put_accounts(&image.manifest_digest, &out);
        Ok(out)
    }
}

#[async_trait]
impl LayerOpener for ContainerdSource {
    async fn open_layer(
        &self,
        image: &ImageFacts,
        layer: &LayerFacts,
    ) -> Result<ChunkStream, ImageFactsError> {
        let reader = self
            .store
            .open(&layer.digest)
            .await
            .map_err(|e| self.store_err(&image.name, e))?;
        let name = image.name.clone();
        let digest = layer.digest.clone();
        let namespace = self.namespace.clone();
        let stream = futures::stream::unfold(Some(reader), move |state| {
            let (name, digest, namespace) = (name.clone(), digest.clone(), namespace.clone());
            async move {
                let mut reader = state?;
                match reader.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some(reader))),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(ImageFactsError::Layer {
                            image: name,
                            digest,
                            detail: format!("read from containerd (namespace {namespace}): {e}"),
                        }),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
