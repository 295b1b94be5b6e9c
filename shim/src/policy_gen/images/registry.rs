//! Image facts from a registry over the distribution API v2 (`oci-client`: HTTPS, plain HTTP
//! for the hosts given with `--insecure-registry`, the bearer-token challenge of
//! `WWW-Authenticate`, anonymous unless `~/.docker/config.json` has credentials for the host).
//! Manifests are parsed by the shim's own code; schema 1 manifests are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::accounts::{self, ChunkStream, LayerOpener};
use super::reference::DOCKER_HUB;
use super::{
    Accounts, Counters, FactsCache, FetchStats, Fetched, ImageFacts, ImageFactsError, ImageRef,
    ImageSource, LayerFacts, MetadataFetch,
};
use crate::image::{
    self, Descriptor, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_V1,
    MEDIA_DOCKER_V1_SIGNED, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};

/// Manifest types asked for. Schema 1 is accepted on the wire so that a registry that has
/// only that answers with it and the user gets the clear refusal, not a 404.
const ACCEPT: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_V1_SIGNED,
    MEDIA_DOCKER_V1,
];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Registry credentials from a Docker client config (`auths`: base64 `user:password`).
#[derive(Debug, Clone, Default)]
pub struct DockerCredentials {
    /// By registry host (normalized: no scheme, no path).
    auths: HashMap<String, (String, String)>,
    /// Entries that could not be used, with why (for the CLI's `warning:` lines).
    pub warnings: Vec<String>,
}

impl DockerCredentials {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; none if absent.
    pub fn load_default() -> DockerCredentials {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => PathBuf::from(d).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".docker/config.json"),
                None => return DockerCredentials::default(),
            },
        };
        Self::load(&path)
    }

    /// Reads `path`; a missing file is no credentials, an unreadable one a warning.
    pub fn load(path: &Path) -> DockerCredentials {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerCredentials::default(),
            Err(e) => DockerCredentials {
                warnings: vec![format!("{}: {e}; pulling anonymously", path.display())],
                ..Default::default()
            },
        }
    }

    /// Parses a Docker config's `auths` (`credsStore`/`credHelpers` are not run).
    pub fn parse(text: &str, origin: &str) -> DockerCredentials {
        let mut out = DockerCredentials::default();
        let doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.warnings
                    .push(format!("{origin}: not JSON ({e}); pulling anonymously"));
                return out;
            }
        };
        if doc.get("credsStore").is_some() || doc.get("credHelpers").is_some() {
            out.warnings.push(format!(
                "{origin}: credential helpers (credsStore, credHelpers) are not run; only `auths` entries are used"
            ));
        }
        let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
            return out;
        };
        for (key, entry) in auths {
            let host = normalize_auth_key(key);
            let pair = if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    })
            } else {
                match (
                    entry.get("username").and_then(|u| u.as_str()),
                    entry.get("password").and_then(|p| p.as_str()),
                ) {
                    (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
                    _ => None,
                }
            };
            match pair {
                Some(p) if !p.0.is_empty() => {
                    out.auths.insert(host, p);
                }
                _ => out.warnings.push(format!(
                    "{origin}: auths.{key:?}: no base64 user:password in `auth`; pulling anonymously"
                )),
            }
        }
        out
    }

    /// The user and password for a registry domain of a normalized reference.
    pub fn lookup(&self, domain: &str) -> Option<&(String, String)> {
        if domain == DOCKER_HUB {
            ["index.docker.io", "docker.io", "registry-1.docker.io"]
                .iter()
                .find_map(|h| self.auths.get(*h))
        } else {
            self.auths.get(domain)
        }
    }
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `host:5000` stays.
fn normalize_auth_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k).to_string()
}

/// Image facts from registries.
pub struct RegistrySource {
    client: Client,
    credentials: DockerCredentials,
    counters: Counters,
    cache: FactsCache,
}

impl RegistrySource {
    /// HTTPS, except plain HTTP for `insecure_hosts` (`HOST:PORT` as in the references);
    /// credentials from the user's Docker config.
    pub fn new(insecure_hosts: Vec<String>) -> RegistrySource {
        Self::with_credentials(insecure_hosts, DockerCredentials::load_default())
    }

    pub fn with_credentials(
        insecure_hosts: Vec<String>,
        credentials: DockerCredentials,
    ) -> RegistrySource {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_hosts),
            // Indexes are resolved by the shim's own rule (crate::image::choose_platform).
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        };
        RegistrySource {
            client: Client::new(config),
            credentials,
            counters: Counters::default(),
            cache: FactsCache::default(),
        }
    }

    /// What could not be used from the Docker config (for `warning: ` lines).
    pub fn warnings(&self) -> &[String] {
        &self.credentials.warnings
    }

    /// Bytes fetched so far.
    pub fn stats(&self) -> FetchStats {
        self.counters.snapshot()
    }

    fn auth(&self, parsed: &ImageRef) -> RegistryAuth {
        match self.credentials.lookup(&parsed.domain) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// The client's reference for a normalized one.
fn oci_reference(parsed: &ImageRef) -> Reference {
    match &parsed.digest {
        Some(d) => Reference::with_digest(parsed.domain.clone(), parsed.path.clone(), d.clone()),
        None => Reference::with_tag(
            parsed.domain.clone(),
            parsed.path.clone(),
            parsed.tag_or_latest().to_string(),
        ),
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// One image's fetches.
struct Fetch<'a> {
    source: &'a RegistrySource,
    parsed: &'a ImageRef,
    reference: Reference,
    auth: RegistryAuth,
}

impl Fetch<'_> {
    fn err(&self, what: &str, e: OciDistributionError) -> ImageFactsError {
        if is_not_found(&e) {
            return ImageFactsError::NotFound {
                image: self.parsed.name(),
                place: format!("registry {} ({what}: {e})", self.parsed.domain),
            };
        }
        ImageFactsError::Registry {
            image: self.parsed.name(),
            registry: self.parsed.domain.clone(),
            detail: format!("{what}: {}", error_chain(&e)),
        }
    }
}

/// The error with its sources (reqwest's top line alone hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

#[async_trait]
impl MetadataFetch for Fetch<'_> {
    async fn document(&self, desc: Option<&Descriptor>) -> Result<Fetched, ImageFactsError> {
        let target = match desc {
            Some(d) => self.reference.clone_with_digest(d.digest.clone()),
            None => self.reference.clone(),
        };
        let (bytes, digest) = self
            .source
            .client
            .pull_manifest_raw(&target, &self.auth, ACCEPT)
            .await
            .map_err(|e| self.err("manifest", e))?;
        self.source.counters.metadata(bytes.len());
        Ok(Fetched {
            bytes,
            digest,
            media_type: desc.map(|d| d.media_type.clone()).unwrap_or_default(),
        })
    }

    async fn config(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageFactsError> {
        let d = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            ..Default::default()
        };
        let mut stream = self
            .source
            .client
            .pull_blob_stream(&self.reference, &d)
            .await
            .map_err(|e| self.err(&format!("config {}", desc.digest), e))?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageFactsError::Registry {
                image: self.parsed.name(),
                registry: self.parsed.domain.clone(),
                detail: format!("config {}: {}", desc.digest, error_chain(&e)),
            })?;
            self.source.counters.metadata(chunk.len());
            out.extend_from_slice(&chunk);
            if out.len() > image::MAX_METADATA_BYTES {
                return Err(ImageFactsError::Invalid {
                    image: self.parsed.name(),
                    digest: desc.digest.clone(),
                    detail: format!("config larger than {} bytes", image::MAX_METADATA_BYTES),
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ImageSource for RegistrySource {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError> {
        let parsed = ImageRef::parse(reference)?;
        if let Some(hit) = self.cache.get(&parsed.name(), reference) {
            return Ok(hit);
        }
        let fetch = Fetch {
            source: self,
            parsed: &parsed,
            reference: oci_reference(&parsed),
            auth: self.auth(&parsed),
        };
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
impl LayerOpener for RegistrySource {
    async fn open_layer(
        &self,
        image: &ImageFacts,
        layer: &LayerFacts,
    ) -> Result<ChunkStream, ImageFactsError> {
        let parsed = ImageRef::parse(&image.name)?;
        let reference = oci_reference(&parsed);
        // The manifest pull stored the auth for this registry; a cached ImageFacts from
        // elsewhere may come without it.
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth(&parsed))
            .await;
        let d = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let name = image.name.clone();
        let digest = layer.digest.clone();
        let stream = self
            .client
            .pull_blob_stream(&reference, &d)
            .await
            .map_err(|e| ImageFactsError::Layer {
                image: name.clone(),
                digest: digest.clone(),
                detail: format!("fetch from registry {}: {}", parsed.domain, error_chain(&e)),
            })?;
        Ok(Box::pin(stream.map(move |c| {
            c.map_err(|e| ImageFactsError::Layer {
                image: name.clone(),
                digest: digest.clone(),
                detail: format!("fetch: {}", error_chain(&e)),
            })
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_config_auths() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "http://reg.example:8080/v2/": {{"username": "u", "password": "p"}},
                "broken.example": {{"auth": "!!!"}}
            }}}}"#,
            b64("hubuser:hub:pass"),
            b64("me:secret")
        );
        let c = DockerCredentials::parse(&text, "config.json");
        assert_eq!(
            c.lookup("docker.io"),
            Some(&("hubuser".to_string(), "hub:pass".to_string()))
        );
        assert_eq!(
            c.lookup("127.0.0.1:5000"),
            Some(&("me".to_string(), "secret".to_string()))
        );
        assert_eq!(
            c.lookup("reg.example:8080"),
            Some(&("u".to_string(), "p".to_string()))
        );
        assert_eq!(c.lookup("other.example"), None);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("broken.example"));
    }

    #[test]
    fn docker_config_helpers_and_garbage_warn() {
        let c = DockerCredentials::parse(r#"{"credsStore": "desktop"}"#, "cfg");
        assert!(
            c.warnings[0].contains("credential helpers"),
            "{:?}",
            c.warnings
        );
        let c = DockerCredentials::parse("{", "cfg");
        assert!(c.warnings[0].contains("not JSON"), "{:?}", c.warnings);
        let c = DockerCredentials::load(Path::new("/nonexistent/kata-cc/config.json"));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn references_for_the_client() {
        let r = oci_reference(&ImageRef::parse("busybox").unwrap());
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.resolve_registry(), "index.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = oci_reference(&ImageRef::parse(&format!("127.0.0.1:5000/x/y:1@{d}")).unwrap());
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.digest(), Some(d.as_str()));
    }
}
