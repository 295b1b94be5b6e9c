//! The container's image, read from containerd's metadata and content store.
//!
//! In the confidential design the host's snapshotter output is never handed to the guest: the
//! shim asks containerd which image the container was created from, walks index -> manifest ->
//! config, and streams each compressed layer blob (as stored) to the guest, which verifies it
//! against the config's `rootfs.diff_ids` before unpacking.

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::tonic::{transport::Channel, Request, Streaming};
use serde::Deserialize;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const MEDIA_DOCKER_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The exact words users search for when they hit this.
pub const SCHEMA1_MESSAGE: &str = "version 1 container images are not supported";

/// Largest blob we accept for a manifest, index or config (they are small JSON documents; a
/// huge one is a malformed or hostile image).
pub const MAX_METADATA_BYTES: usize = 16 << 20;

/// Platform the guest runs.
const WANT_OS: &str = "linux";
const WANT_ARCH: &str = "amd64";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("connect to containerd at {address}: {source}")]
    Connect {
        address: String,
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd: get container {id}: {status}")]
    Container {
        id: String,
        status: Box<containerd_client::tonic::Status>,
    },
    #[error("container {0} has no image in containerd (created without one?)")]
    NoImage(String),
    #[error("containerd: get image {name}: {status}")]
    Image {
        name: String,
        status: Box<containerd_client::tonic::Status>,
    },
    #[error("containerd: read content {digest}: {status}")]
    Read {
        digest: String,
        status: Box<containerd_client::tonic::Status>,
    },
    #[error("image {image}: {digest}: {SCHEMA1_MESSAGE}")]
    Schema1 { image: String, digest: String },
    #[error("image {image}: {digest}: {reason}")]
    Invalid {
        image: String,
        digest: String,
        reason: String,
    },
}

/// One layer to send to the guest, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed), `sha256:<hex>`.
    pub digest: String,
    /// Digest of the uncompressed tar from the image config, `sha256:<hex>`.
    pub diff_id: String,
    pub media_type: String,
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayers {
    pub image: String,
    pub manifest_digest: String,
    pub layers: Vec<Layer>,
}

// ---------------------------------------------------------------------------------------------
// JSON documents (only the fields we use; unknown fields are ignored).

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
    /// The runtime defaults (`config` in the OCI image config; null or absent in some images).
    #[serde(default)]
    config: Option<RuntimeDefaults>,
}

/// The image config's runtime defaults a pod's container inherits (OCI image-spec `config`:
/// `User`, `Env`, `Entrypoint`, `Cmd`, `WorkingDir`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeDefaults {
    #[serde(rename = "User", default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "string_or_list")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "string_or_list")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_default")]
    pub working_dir: String,
}

/// `null` reads as the type's default (Docker writes `"Env": null`).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's command fields accept one string as well as a list (old images carry `"Cmd": "sh"`).
fn string_or_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What a manifest-ish blob turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Document {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Whether a layer media type is one we can send (the guest decompresses by media type).
pub fn is_layer_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

fn invalid(image: &str, digest: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        image: image.to_string(),
        digest: digest.to_string(),
        reason: reason.into(),
    }
}

/// Parse an index or manifest blob. `media_type` is the one from the descriptor that pointed
/// here (may be empty); the document's own `mediaType`/shape decide when it is missing.
pub fn parse_document(
    image: &str,
    digest: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<Document, ImageError> {
    if media_type == MEDIA_DOCKER_V1 || media_type == MEDIA_DOCKER_V1_SIGNED {
        return Err(ImageError::Schema1 {
            image: image.to_string(),
            digest: digest.to_string(),
        });
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| invalid(image, digest, format!("not a JSON manifest: {e}")))?;
    let own_type = probe.media_type.clone().unwrap_or_default();
    if probe.schema_version == Some(1)
        || probe.fs_layers.is_some()
        || own_type == MEDIA_DOCKER_V1
        || own_type == MEDIA_DOCKER_V1_SIGNED
    {
        return Err(ImageError::Schema1 {
            image: image.to_string(),
            digest: digest.to_string(),
        });
    }
    let kind = if !media_type.is_empty() {
        media_type.to_string()
    } else {
        own_type
    };
    let is_index = match kind.as_str() {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => true,
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => false,
        "" => {
            if probe.manifests.is_some() {
                true
            } else if probe.layers.is_some() {
                false
            } else {
                return Err(invalid(
                    image,
                    digest,
                    "neither an image index nor a manifest (no mediaType, manifests or layers)",
                ));
            }
        }
        other => {
            return Err(invalid(
                image,
                digest,
                format!("unsupported manifest media type {other}"),
            ))
        }
    };
    if is_index {
        let index: Index = serde_json::from_slice(bytes)
            .map_err(|e| invalid(image, digest, format!("bad image index: {e}")))?;
        Ok(Document::Index(index.manifests))
    } else {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(image, digest, format!("bad image manifest: {e}")))?;
        Ok(Document::Manifest {
            config: manifest.config,
            layers: manifest.layers,
        })
    }
}

/// Pick the linux/amd64 manifest of an index (attestation manifests etc. are skipped since
/// they carry `unknown` platforms).
pub fn choose_platform<'a>(
    image: &str,
    index_digest: &str,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, ImageError> {
    let matching = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == WANT_OS && p.architecture == WANT_ARCH)
    };
    // Prefer an entry without a variant (amd64 has no meaningful variant except v2/v3 levels,
    // which every x86-64 guest we boot can run at v1).
    manifests
        .iter()
        .filter(matching)
        .min_by_key(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.variant.as_ref())
                .map_or(0, |v| if v == "v1" { 0 } else { 1 })
        })
        .ok_or_else(|| {
            let have: Vec<String> = manifests
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => "unspecified".to_string(),
                })
                .collect();
            invalid(
                image,
                index_digest,
                format!(
                    "image index has no {WANT_OS}/{WANT_ARCH} manifest (has: {})",
                    have.join(", ")
                ),
            )
        })
}

/// The config's `rootfs.diff_ids`.
pub fn parse_diff_ids(image: &str, digest: &str, bytes: &[u8]) -> Result<Vec<String>, ImageError> {
    Ok(parse_config(image, digest, bytes)?.1)
}

/// The config's runtime defaults and `rootfs.diff_ids`.
pub fn parse_config(
    image: &str,
    digest: &str,
    bytes: &[u8],
) -> Result<(RuntimeDefaults, Vec<String>), ImageError> {
    let config: ImageConfig = serde_json::from_slice(bytes)
        .map_err(|e| invalid(image, digest, format!("bad image config: {e}")))?;
    if !config.rootfs.kind.is_empty() && config.rootfs.kind != "layers" {
        return Err(invalid(
            image,
            digest,
            format!(
                "image config rootfs.type {:?} is not \"layers\"",
                config.rootfs.kind
            ),
        ));
    }
    Ok((config.config.unwrap_or_default(), config.rootfs.diff_ids))
}

fn check_digest(image: &str, digest: &str) -> Result<(), ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid(image, digest, "only sha256 digests are supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(image, digest, "malformed sha256 digest"));
    }
    Ok(())
}

/// Pair a manifest's layers with the config's diff_ids, lowest layer first.
pub fn pair_layers(
    image: &str,
    manifest_digest: &str,
    layers: &[Descriptor],
    config_digest: &str,
    diff_ids: &[String],
) -> Result<Vec<Layer>, ImageError> {
    if layers.len() != diff_ids.len() {
        return Err(invalid(
            image,
            manifest_digest,
            format!(
                "manifest has {} layers but config {} has {} diff_ids",
                layers.len(),
                config_digest,
                diff_ids.len()
            ),
        ));
    }
    if layers.is_empty() {
        return Err(invalid(image, manifest_digest, "image has no layers"));
    }
    let mut out = Vec::with_capacity(layers.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        check_digest(image, &layer.digest)?;
        check_digest(image, diff_id)?;
        if !is_layer_media_type(&layer.media_type) {
            return Err(invalid(
                image,
                &layer.digest,
                format!("unsupported layer media type {:?}", layer.media_type),
            ));
        }
        out.push(Layer {
            digest: layer.digest.clone(),
            diff_id: diff_id.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// containerd access.

/// A connection to containerd for one namespace.
#[derive(Clone)]
pub struct ImageStore {
    channel: Channel,
    namespace: String,
}

fn with_ns<T>(namespace: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = namespace.parse() {
        req.metadata_mut().insert("containerd-namespace", v);
    }
    req
}

impl ImageStore {
    /// `address` is containerd's GRPC socket (the shim's `-address` flag), with or without
    /// a `unix://` prefix.
    pub async fn connect(address: &str, namespace: &str) -> Result<Self, ImageError> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let channel =
            containerd_client::connect(path)
                .await
                .map_err(|source| ImageError::Connect {
                    address: address.to_string(),
                    source,
                })?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
        })
    }

    /// Image name of a container record.
    pub async fn container_image(&self, container_id: &str) -> Result<String, ImageError> {
        let mut client = ContainersClient::new(self.channel.clone());
        let resp = client
            .get(with_ns(
                &self.namespace,
                GetContainerRequest {
                    id: container_id.to_string(),
                },
            ))
            .await
            .map_err(|status| ImageError::Container {
                id: container_id.to_string(),
                status: Box::new(status),
            })?
            .into_inner();
        let image = resp.container.map(|c| c.image).unwrap_or_default();
        if image.is_empty() {
            return Err(ImageError::NoImage(container_id.to_string()));
        }
        Ok(image)
    }

    /// The descriptor an image name points at (an index or a manifest).
    pub async fn target(&self, image: &str) -> Result<Descriptor, ImageError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let resp = client
            .get(with_ns(
                &self.namespace,
                GetImageRequest {
                    name: image.to_string(),
                },
            ))
            .await
            .map_err(|status| ImageError::Image {
                name: image.to_string(),
                status: Box::new(status),
            })?
            .into_inner();
        let target = resp
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| invalid(image, "(none)", "image record has no target descriptor"))?;
        Ok(Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            platform: None,
        })
    }

    /// Resolve an image name to its layers, lowest first.
    pub async fn layers(&self, image: &str) -> Result<ImageLayers, ImageError> {
        let target = self.target(image).await?;
        let mut digest = target.digest.clone();
        let mut media_type = target.media_type.clone();
        // An index may nest another index; bound the walk.
        for _ in 0..4 {
            let bytes = self.read_small(&digest).await?;
            match parse_document(image, &digest, &media_type, &bytes)? {
                Document::Index(manifests) => {
                    let chosen = choose_platform(image, &digest, &manifests)?;
                    digest = chosen.digest.clone();
                    media_type = chosen.media_type.clone();
                }
                Document::Manifest { config, layers } => {
                    let config_bytes = self.read_small(&config.digest).await?;
                    let diff_ids = parse_diff_ids(image, &config.digest, &config_bytes)?;
                    let layers = pair_layers(image, &digest, &layers, &config.digest, &diff_ids)?;
                    return Ok(ImageLayers {
                        image: image.to_string(),
                        manifest_digest: digest,
                        layers,
                    });
                }
            }
        }
        Err(invalid(image, &digest, "image indexes nested too deeply"))
    }

    /// Open a blob for streaming.
    pub async fn open(&self, digest: &str) -> Result<BlobReader, ImageError> {
        let mut client = ContentClient::new(self.channel.clone());
        let stream = client
            .read(with_ns(
                &self.namespace,
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
            ))
            .await
            .map_err(|status| ImageError::Read {
                digest: digest.to_string(),
                status: Box::new(status),
            })?
            .into_inner();
        Ok(BlobReader {
            digest: digest.to_string(),
            stream,
        })
    }

    /// A whole metadata blob (manifest, index, config), at most [`MAX_METADATA_BYTES`].
    pub async fn read_small(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let mut reader = self.open(digest).await?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await? {
            out.extend_from_slice(&chunk);
            if out.len() > MAX_METADATA_BYTES {
                return Err(invalid(
                    "",
                    digest,
                    format!("metadata blob larger than {MAX_METADATA_BYTES} bytes"),
                ));
            }
        }
        Ok(out)
    }
}

/// A streaming read of one blob from containerd's content store.
pub struct BlobReader {
    digest: String,
    stream: Streaming<containerd_client::services::v1::ReadContentResponse>,
}

impl BlobReader {
    /// Next piece of the blob, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        loop {
            match self.stream.message().await {
                Ok(Some(resp)) if resp.data.is_empty() => continue,
                Ok(Some(resp)) => return Ok(Some(resp.data)),
                Ok(None) => return Ok(None),
                Err(status) => {
                    return Err(ImageError::Read {
                        digest: self.digest.clone(),
                        status: Box::new(status),
                    })
                }
            }
        }
    }
}

/// Hex part of a `sha256:<hex>` digest (used for guest file names).
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    const D4: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

    fn manifest_json(layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},
            "layers":[{{"mediaType":"{layer_type}","digest":"{D2}","size":100}},
                      {{"mediaType":"{layer_type}","digest":"{D3}","size":200}}]}}"#
        )
    }

    #[test]
    fn oci_manifest() {
        let doc = parse_document(
            "img",
            D4,
            MEDIA_OCI_MANIFEST,
            manifest_json("application/vnd.oci.image.layer.v1.tar+gzip").as_bytes(),
        )
        .unwrap();
        let Document::Manifest { config, layers } = doc else {
            panic!("expected manifest")
        };
        assert_eq!(config.digest, D1);
        assert_eq!(layers.len(), 2);
        let paired = pair_layers("img", D4, &layers, D1, &[D3.into(), D4.into()]).unwrap();
        assert_eq!(paired[0].digest, D2);
        assert_eq!(paired[0].diff_id, D3);
        assert_eq!(paired[1].digest, D3);
        assert_eq!(paired[1].diff_id, D4);
        assert_eq!(paired[1].size, 200);
    }

    #[test]
    fn docker_v2_manifest_without_descriptor_type() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":1}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D2}","size":5}}]}}"#
        );
        let doc = parse_document("img", D4, "", json.as_bytes()).unwrap();
        assert!(matches!(doc, Document::Manifest { .. }));
    }

    #[test]
    fn zstd_and_uncompressed_layers_accepted() {
        for t in [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ] {
            let Document::Manifest { layers, .. } =
                parse_document("img", D4, "", manifest_json(t).as_bytes()).unwrap()
            else {
                panic!("expected manifest")
            };
            pair_layers("img", D4, &layers, D1, &[D3.into(), D4.into()]).unwrap();
        }
    }

    #[test]
    fn unknown_layer_type_names_layer() {
        let Document::Manifest { layers, .. } = parse_document(
            "img",
            D4,
            "",
            manifest_json("application/x-squashfs").as_bytes(),
        )
        .unwrap() else {
            panic!("expected manifest")
        };
        let err = pair_layers("img", D4, &layers, D1, &[D3.into(), D4.into()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(D2), "{msg}");
        assert!(msg.contains("application/x-squashfs"), "{msg}");
    }

    #[test]
    fn diff_id_count_mismatch() {
        let Document::Manifest { layers, .. } = parse_document(
            "img",
            D4,
            "",
            manifest_json("application/vnd.oci.image.layer.v1.tar+gzip").as_bytes(),
        )
        .unwrap() else {
            panic!("expected manifest")
        };
        let err = pair_layers("img", D4, &layers, D1, &[D3.into()]).unwrap_err();
        assert!(err.to_string().contains("2 layers"), "{err}");
        assert!(err.to_string().contains(D4), "{err}");
    }

    #[test]
    fn index_picks_linux_amd64() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_INDEX}","manifests":[
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D3}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let Document::Index(m) =
            parse_document("img", D4, MEDIA_OCI_INDEX, json.as_bytes()).unwrap()
        else {
            panic!("expected index")
        };
        assert_eq!(choose_platform("img", D4, &m).unwrap().digest, D2);
    }

    #[test]
    fn docker_list_without_amd64_is_an_error_naming_index() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_LIST}","manifests":[
              {{"mediaType":"{MEDIA_DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"s390x","os":"linux"}}}}]}}"#
        );
        let Document::Index(m) = parse_document("img", D4, "", json.as_bytes()).unwrap() else {
            panic!("expected index")
        };
        let err = choose_platform("img", D4, &m).unwrap_err().to_string();
        assert!(err.contains(D4), "{err}");
        assert!(err.contains("linux/s390x"), "{err}");
    }

    #[test]
    fn schema1_refused_by_media_type() {
        for t in [MEDIA_DOCKER_V1, MEDIA_DOCKER_V1_SIGNED] {
            let err = parse_document("docker.io/library/old:1", D1, t, b"{}").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(SCHEMA1_MESSAGE), "{msg}");
            assert!(msg.contains(D1), "{msg}");
        }
    }

    #[test]
    fn schema1_refused_by_content() {
        let json = r#"{"schemaVersion":1,"name":"library/old","tag":"1","architecture":"amd64",
            "fsLayers":[{"blobSum":"sha256:aa"}],"history":[]}"#;
        let err = parse_document("old", D2, "", json.as_bytes()).unwrap_err();
        assert!(matches!(err, ImageError::Schema1 { .. }));
        assert!(err.to_string().contains(SCHEMA1_MESSAGE));
    }

    #[test]
    fn config_diff_ids() {
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},
            "rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}"]}}}}"#
        );
        assert_eq!(
            parse_diff_ids("img", D3, json.as_bytes()).unwrap(),
            vec![D1.to_string(), D2.to_string()]
        );
        let err = parse_diff_ids("img", D3, b"{\"rootfs\":5}").unwrap_err();
        assert!(err.to_string().contains(D3));
    }

    #[test]
    fn garbage_names_digest() {
        let err = parse_document("img", D3, "", b"not json").unwrap_err();
        assert!(err.to_string().contains(D3));
        let err = parse_document("img", D3, "", b"{\"foo\":1}").unwrap_err();
        assert!(err.to_string().contains(D3));
    }

    #[test]
    fn bad_digest_rejected() {
        let layers = vec![Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: "sha512:abc".into(),
            size: 1,
            platform: None,
        }];
        let err = pair_layers("img", D4, &layers, D1, &[D2.into()]).unwrap_err();
        assert!(err.to_string().contains("sha512:abc"));
    }
}
