//! Where a pod's security policy comes from, and its digest.
//!
//! Two pod annotations can carry a policy (DESIGN.md, names):
//! - `io.katacontainers.config.agent.policy`: base64 of the Rego text (AKS model). Digest:
//!   sha256 of the text.
//! - `io.katacontainers.config.hypervisor.cc_init_data`: base64 of gzip of an init-data TOML
//!   document (CoCo's init-data format: `version = "0.1.0"`, `algorithm = "sha256" | "sha384" |
//!   "sha512"`, a `[data]` table of strings) whose `data."policy.rego"` is the policy. Digest:
//!   the document's digest with its `algorithm`, over the TOML text exactly as decompressed,
//!   zero-padded or truncated to the 32 bytes of SNP HOST_DATA.
//!
//! Without either, the agent keeps the default policy baked into the measured rootfs. Parsing
//! happens before anything is started, so a bad annotation leaves nothing behind.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use serde::Serialize;

pub use kata_cc_policy::initdata::digest::{self, Algorithm, HOST_DATA_LEN};
use kata_cc_policy::initdata::{self, InitData};

pub const POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// The init-data key that holds the policy.
pub use kata_cc_policy::initdata::{INITDATA_POLICY_KEY, INITDATA_VERSION};
/// File in the sandbox state dir recording the pod's policy (read by `kata-cc`).
pub const POLICY_STATE_FILE: &str = "policy.json";

#[derive(Debug, thiserror::Error)]
pub enum PolicySourceError {
    #[error("annotation {annotation}: the value is empty")]
    Empty { annotation: &'static str },
    #[error("annotation {annotation}: not valid base64: {source}")]
    Base64 {
        annotation: &'static str,
        source: base64::DecodeError,
    },
    #[error("annotation {annotation}: not gzip data (the value must be base64 of gzip of the init-data TOML): {source}")]
    Gzip {
        annotation: &'static str,
        source: std::io::Error,
    },
    #[error("annotation {annotation}: the decompressed init-data is larger than {limit} bytes")]
    TooLarge {
        annotation: &'static str,
        limit: u64,
    },
    #[error("annotation {annotation}: {what} is not UTF-8 text")]
    NotUtf8 {
        annotation: &'static str,
        what: &'static str,
    },
    #[error("annotation {annotation}: init-data TOML line {line}, column {column}: {message}")]
    Toml {
        annotation: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("annotation {annotation}: init-data version {version:?} is not supported (expected {INITDATA_VERSION:?})")]
    Version {
        annotation: &'static str,
        version: String,
    },
    #[error("annotation {annotation}: init-data algorithm {algorithm:?} is not supported (sha256, sha384, sha512)")]
    Algorithm {
        annotation: &'static str,
        algorithm: String,
    },
    #[error("annotation {annotation}: init-data has no data.\"{INITDATA_POLICY_KEY}\" (kata-cc takes only the policy from init-data)")]
    NoPolicy { annotation: &'static str },
    #[error("annotations {POLICY_ANNOTATION} and {INITDATA_ANNOTATION} carry different policies: give one of them")]
    Conflict,
}

/// Which annotation the policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `io.katacontainers.config.agent.policy`
    Annotation,
    /// `io.katacontainers.config.hypervisor.cc_init_data`
    InitData,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Annotation => "annotation",
            Source::InitData => "init-data",
        }
    }

    pub fn annotation(self) -> &'static str {
        match self {
            Source::Annotation => POLICY_ANNOTATION,
            Source::InitData => INITDATA_ANNOTATION,
        }
    }
}

/// A pod's policy as the shim sends it, with the digest that binds it to the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    pub source: Source,
    /// The Rego text sent with SetPolicy.
    pub text: String,
    /// Algorithm of `digest`.
    pub algorithm: Algorithm,
    /// Full digest: of the policy text (annotation) or of the init-data TOML.
    pub digest: Vec<u8>,
    /// The init-data document as decompressed (init-data only): a confidential guest needs it
    /// to check the policy against HOST_DATA.
    pub document: Option<String>,
}

impl PodPolicy {
    /// The 32 bytes that go into SNP HOST_DATA.
    pub fn host_data(&self) -> [u8; HOST_DATA_LEN] {
        digest::adjust(&self.digest)
    }

    /// Hex of the full digest.
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }

    /// The record written to the sandbox state dir; `launch_host_data` is the HOST_DATA the VM
    /// was started with (a policy set later cannot change it).
    pub fn state(&self, launch_host_data: Option<[u8; HOST_DATA_LEN]>) -> PolicyState {
        PolicyState {
            source: self.source.name(),
            annotation: Some(self.source.annotation()),
            algorithm: Some(self.algorithm),
            digest: Some(self.digest_hex()),
            policy_sha256: Some(hex(&digest::compute(
                Algorithm::Sha256,
                self.text.as_bytes(),
            ))),
            host_data: launch_host_data.map(|h| hex(&h)),
            snp_launch: false,
        }
    }
}

/// `policy.json` in the sandbox state dir.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyState {
    /// `default` (the policy baked into the rootfs), `annotation` or `init-data`.
    pub source: &'static str,
    pub annotation: Option<&'static str>,
    pub algorithm: Option<Algorithm>,
    /// Hex of the full digest (of the policy text, or of the init-data document).
    pub digest: Option<String>,
    /// Hex sha256 of the policy text the agent enforces.
    pub policy_sha256: Option<String>,
    /// Hex of the 32-byte HOST_DATA this policy binds to (what an SNP report carries).
    pub host_data: Option<String>,
    /// Whether `host_data` was given to an SNP launch (`confidential_guest = true`); false: a
    /// development VM, where nothing binds the policy to the launch.
    pub snp_launch: bool,
}

impl PolicyState {
    /// No policy annotation: the agent enforces the policy baked into the measured rootfs.
    pub fn baked_default() -> PolicyState {
        PolicyState {
            source: "default",
            annotation: None,
            algorithm: None,
            digest: None,
            policy_sha256: None,
            host_data: None,
            snp_launch: false,
        }
    }
}

/// Writes `policy.json` into the sandbox state dir (atomically: a reader never sees half).
pub fn write_state(state_dir: &Path, state: &PolicyState) -> std::io::Result<()> {
    let path = state_dir.join(POLICY_STATE_FILE);
    let tmp = state_dir.join(format!(".{POLICY_STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

use kata_cc_policy::tee::hex;

/// The pod's policy from its annotations; `None` keeps the baked default policy.
/// Both annotations may be given only if they carry the same policy text; the init-data one
/// then wins (its digest covers the whole init-data document).
pub fn from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Option<PodPolicy>, PolicySourceError> {
    let plain = annotations
        .get(POLICY_ANNOTATION)
        .map(|v| from_policy_annotation(v))
        .transpose()?;
    let init = annotations
        .get(INITDATA_ANNOTATION)
        .map(|v| from_initdata_annotation(v))
        .transpose()?;
    match (plain, init) {
        (Some(p), Some(i)) if p.text != i.text => Err(PolicySourceError::Conflict),
        (_, Some(i)) => Ok(Some(i)),
        (p, None) => Ok(p),
    }
}

fn decode_base64(annotation: &'static str, value: &str) -> Result<Vec<u8>, PolicySourceError> {
    // Annotation values may be wrapped by tools that fold long lines.
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(PolicySourceError::Empty { annotation });
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|source| PolicySourceError::Base64 { annotation, source })
}

/// `io.katacontainers.config.agent.policy` = base64(Rego text).
pub fn from_policy_annotation(value: &str) -> Result<PodPolicy, PolicySourceError> {
    let annotation = POLICY_ANNOTATION;
    let bytes = decode_base64(annotation, value)?;
    let text = String::from_utf8(bytes).map_err(|_| PolicySourceError::NotUtf8 {
        annotation,
        what: "the decoded policy",
    })?;
    let digest = digest::compute(Algorithm::Sha256, text.as_bytes());
    Ok(PodPolicy {
        source: Source::Annotation,
        text,
        algorithm: Algorithm::Sha256,
        digest,
        document: None,
    })
}

/// `io.katacontainers.config.hypervisor.cc_init_data` = base64(gzip(init-data TOML)).
pub fn from_initdata_annotation(value: &str) -> Result<PodPolicy, PolicySourceError> {
    let annotation = INITDATA_ANNOTATION;
    let gz = decode_base64(annotation, value)?;
    let mut raw = Vec::new();
    // All gzip members, as Go's reader takes them; bounded, as the agent keeps at most that.
    let limit = kata_cc_policy::initdata::MAX_LEN as u64;
    flate2::read::MultiGzDecoder::new(&gz[..])
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|source| PolicySourceError::Gzip { annotation, source })?;
    if raw.len() as u64 > limit {
        return Err(PolicySourceError::TooLarge { annotation, limit });
    }
    let toml_text = String::from_utf8(raw).map_err(|_| PolicySourceError::NotUtf8 {
        annotation,
        what: "the decompressed init-data",
    })?;
    let parsed = parse_initdata(&toml_text)?;
    let algorithm =
        Algorithm::from_name(&parsed.algorithm).ok_or_else(|| PolicySourceError::Algorithm {
            annotation,
            algorithm: parsed.algorithm.clone(),
        })?;
    if parsed.version != INITDATA_VERSION {
        return Err(PolicySourceError::Version {
            annotation,
            version: parsed.version,
        });
    }
    let mut data = parsed.data;
    for key in data.keys().filter(|k| *k != INITDATA_POLICY_KEY) {
        log::info!("{annotation}: init-data key {key:?} is not used by kata-cc");
    }
    let text = data
        .remove(INITDATA_POLICY_KEY)
        .ok_or(PolicySourceError::NoPolicy { annotation })?;
    // The digest is over the document as the pod owner wrote it, not a re-serialization.
    let digest = digest::compute(algorithm, toml_text.as_bytes());
    Ok(PodPolicy {
        source: Source::InitData,
        text,
        algorithm,
        digest,
        document: Some(toml_text),
    })
}

fn parse_initdata(text: &str) -> Result<InitData, PolicySourceError> {
    initdata::parse(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        PolicySourceError::Toml {
            annotation: INITDATA_ANNOTATION,
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn ann(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    const REGO: &str = "package agent_policy\n\ndefault ExecProcessRequest := false\n";

    fn initdata(alg: &str, policy: &str) -> String {
        format!("algorithm = \"{alg}\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''\n{policy}'''\n")
    }

    #[test]
    fn no_annotation_keeps_the_default() {
        assert_eq!(from_annotations(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn policy_annotation_digest_is_sha256_of_the_text() {
        let p = from_annotations(&ann(&[(POLICY_ANNOTATION, b64(REGO.as_bytes()))]))
            .unwrap()
            .unwrap();
        assert_eq!(p.source, Source::Annotation);
        assert_eq!(p.text, REGO);
        assert_eq!(
            p.digest,
            digest::compute(Algorithm::Sha256, REGO.as_bytes())
        );
        assert_eq!(p.host_data().to_vec(), p.digest);
    }

    #[test]
    fn initdata_policy_and_digest_of_the_document() {
        for alg in ["sha256", "sha384", "sha512"] {
            let doc = initdata(alg, REGO);
            let p = from_annotations(&ann(&[(INITDATA_ANNOTATION, b64(&gz(&doc)))]))
                .unwrap()
                .unwrap();
            let a = Algorithm::from_name(alg).unwrap();
            assert_eq!(p.source, Source::InitData);
            assert_eq!(p.text, REGO);
            assert_eq!(p.algorithm, a);
            assert_eq!(p.digest, digest::compute(a, doc.as_bytes()));
            assert_eq!(p.host_data()[..], p.digest[..32]);
        }
    }

    #[test]
    fn non_base64_is_named() {
        let e = from_annotations(&ann(&[(POLICY_ANNOTATION, "not base64 !!".into())]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("annotation {POLICY_ANNOTATION}: not valid base64")),
            "{e}"
        );
    }

    #[test]
    fn empty_value_is_named() {
        let e = from_annotations(&ann(&[(POLICY_ANNOTATION, String::new())]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("annotation {POLICY_ANNOTATION}: the value is empty")
        );
    }

    #[test]
    fn initdata_not_gzip_is_named() {
        let doc = initdata("sha256", REGO);
        let e = from_annotations(&ann(&[(INITDATA_ANNOTATION, b64(doc.as_bytes()))]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("annotation {INITDATA_ANNOTATION}: not gzip data")),
            "{e}"
        );
    }

    #[test]
    fn initdata_toml_error_has_line_and_column() {
        let doc = "algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data\n";
        let e = from_annotations(&ann(&[(INITDATA_ANNOTATION, b64(&gz(doc)))]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "annotation {INITDATA_ANNOTATION}: init-data TOML line 3, column "
            )),
            "{e}"
        );
    }

    #[test]
    fn initdata_missing_key_is_named() {
        let doc = "version = \"0.1.0\"\n[data]\n";
        let e = from_annotations(&ann(&[(INITDATA_ANNOTATION, b64(&gz(doc)))]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("algorithm"), "{e}");
    }

    #[test]
    fn initdata_bad_algorithm_version_and_no_policy() {
        let bad_alg = initdata("md5", REGO);
        let e = from_initdata_annotation(&b64(&gz(&bad_alg))).unwrap_err();
        assert!(matches!(e, PolicySourceError::Algorithm { .. }), "{e}");
        let bad_ver = initdata("sha256", REGO).replace("0.1.0", "0.2.0");
        let e = from_initdata_annotation(&b64(&gz(&bad_ver))).unwrap_err();
        assert!(matches!(e, PolicySourceError::Version { .. }), "{e}");
        let no_policy = "algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data]\n\"aa.toml\" = ''\n";
        let e = from_initdata_annotation(&b64(&gz(no_policy)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no data.\"policy.rego\""), "{e}");
    }

    #[test]
    fn both_annotations_must_agree() {
        let same = ann(&[
            (POLICY_ANNOTATION, b64(REGO.as_bytes())),
            (INITDATA_ANNOTATION, b64(&gz(&initdata("sha384", REGO)))),
        ]);
        assert_eq!(
            from_annotations(&same).unwrap().unwrap().source,
            Source::InitData
        );
        let differ = ann(&[
            (POLICY_ANNOTATION, b64(b"package agent_policy\n")),
            (INITDATA_ANNOTATION, b64(&gz(&initdata("sha384", REGO)))),
        ]);
        assert!(matches!(
            from_annotations(&differ).unwrap_err(),
            PolicySourceError::Conflict
        ));
    }

    #[test]
    fn state_record() {
        let p = from_policy_annotation(&b64(REGO.as_bytes())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), &p.state(Some(p.host_data()))).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(POLICY_STATE_FILE)).unwrap())
                .unwrap();
        assert_eq!(v["source"], "annotation");
        assert_eq!(v["annotation"], POLICY_ANNOTATION);
        assert_eq!(v["algorithm"], "sha256");
        assert_eq!(v["digest"], v["host_data"]);
        assert_eq!(v["digest"], v["policy_sha256"]);
    }
}
