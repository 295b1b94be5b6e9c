//! An in-memory image source for the generator's tests (the real ones read registries and
//! containerd: `images`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::images::{Accounts, ImageConfig, ImageFacts, ImageFactsError, ImageSource, LayerFacts};

/// Images by reference, with their accounts; counts the accounts reads.
#[derive(Default)]
pub struct MemorySource {
    pub images: BTreeMap<String, (ImageFacts, Accounts)>,
    pub accounts_read: Mutex<Vec<String>>,
}

/// A digest made of one repeated hex digit pattern (distinct per seed).
pub fn digest(seed: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(seed.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl MemorySource {
    /// Adds an image with `layers` layers whose digests derive from `seed`.
    pub fn add(
        &mut self,
        reference: &str,
        name: &str,
        seed: &str,
        layers: usize,
        config: ImageConfig,
        accounts: Accounts,
    ) {
        let facts = ImageFacts {
            reference: reference.to_string(),
            name: name.to_string(),
            manifest_digest: digest(&format!("{seed}/manifest")),
            index_digest: None,
            config_digest: digest(&format!("{seed}/config")),
            config,
            layers: (0..layers)
                .map(|i| LayerFacts {
                    digest: digest(&format!("{seed}/blob{i}")),
                    diff_id: digest(&format!("{seed}/diff{i}")),
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    size: 1000 + i as u64,
                })
                .collect(),
        };
        self.images.insert(reference.to_string(), (facts, accounts));
    }

    /// The pause image (registry.k8s.io/pause:3.6 as its config says).
    pub fn with_pause(mut self, reference: &str) -> Self {
        self.add(
            reference,
            reference,
            "pause",
            1,
            ImageConfig {
                user: "65535:65535".into(),
                env: vec![super::model::DEFAULT_PATH.into()],
                entrypoint: vec!["/pause".into()],
                cmd: vec![],
                working_dir: "/".into(),
            },
            Accounts::default(),
        );
        self
    }

    /// A busybox-like image: sh, root, root in group wheel (10).
    pub fn with_busybox(mut self, reference: &str, name: &str, seed: &str) -> Self {
        self.add(
            reference,
            name,
            seed,
            1,
            ImageConfig {
                user: String::new(),
                env: vec![super::model::DEFAULT_PATH.into()],
                entrypoint: vec![],
                cmd: vec!["sh".into()],
                working_dir: String::new(),
            },
            Accounts {
                passwd: Some(
                    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
                        .into(),
                ),
                group: Some("root:x:0:\nwheel:x:10:root\nnogroup:x:65534:\n".into()),
            },
        );
        self
    }
}

#[async_trait]
impl ImageSource for MemorySource {
    async fn image(&self, reference: &str) -> Result<ImageFacts, ImageFactsError> {
        self.images
            .get(reference)
            .map(|(f, _)| f.clone())
            .ok_or_else(|| ImageFactsError::NotFound {
                image: reference.to_string(),
                place: "the test's images".into(),
            })
    }

    async fn accounts(&self, image: &ImageFacts) -> Result<Accounts, ImageFactsError> {
        self.accounts_read
            .lock()
            .unwrap()
            .push(image.reference.clone());
        Ok(self
            .images
            .get(&image.reference)
            .map(|(_, a)| a.clone())
            .unwrap_or_default())
    }
}
