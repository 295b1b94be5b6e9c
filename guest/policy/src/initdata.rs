//! Init-data (the upstream Confidential Containers model of giving a pod its policy): a TOML
//! document `version = "0.1.0"`, `algorithm = "sha256" | "sha384" | "sha512"`, and a `[data]`
//! table of strings whose `"policy.rego"` is the agent policy. Its digest (with its own
//! algorithm, over the text exactly as written), fitted to 32 bytes, is SNP HOST_DATA. Shared by
//! the shim (which reads the pod annotation) and the agent (which checks the launch binding).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The init-data key that holds the policy.
pub const INITDATA_POLICY_KEY: &str = "policy.rego";
/// The only init-data format version there is.
pub const INITDATA_VERSION: &str = "0.1.0";
/// Where the shim copies the init-data document in the guest (CopyFile), so that the agent can
/// check its digest against HOST_DATA when the policy came from init-data.
pub const GUEST_PATH: &str = "/run/kata-cc/initdata.toml";
/// Largest init-data document the agent keeps.
pub const MAX_LEN: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct InitData {
    pub version: String,
    pub algorithm: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

pub fn parse(text: &str) -> Result<InitData, toml::de::Error> {
    toml::from_str(text)
}

#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    #[error("init-data is not UTF-8 text")]
    NotUtf8,
    #[error("init-data TOML: {0}")]
    Toml(String),
    #[error("init-data algorithm {0:?} is not supported (sha256, sha384, sha512)")]
    Algorithm(String),
    #[error("init-data version {0:?} is not supported (expected {INITDATA_VERSION:?})")]
    Version(String),
    #[error("init-data has no data.\"{INITDATA_POLICY_KEY}\"")]
    NoPolicy,
}

/// The policy an init-data document carries and the HOST_DATA that binds it.
pub fn bound_policy(raw: &[u8]) -> Result<(String, [u8; digest::HOST_DATA_LEN]), InitDataError> {
    let text = std::str::from_utf8(raw).map_err(|_| InitDataError::NotUtf8)?;
    let doc = parse(text).map_err(|e| InitDataError::Toml(e.message().trim().to_string()))?;
    let alg = digest::Algorithm::from_name(&doc.algorithm)
        .ok_or_else(|| InitDataError::Algorithm(doc.algorithm.clone()))?;
    if doc.version != INITDATA_VERSION {
        return Err(InitDataError::Version(doc.version));
    }
    let policy = doc
        .data
        .get(INITDATA_POLICY_KEY)
        .cloned()
        .ok_or(InitDataError::NoPolicy)?;
    Ok((policy, digest::adjust(&digest::compute(alg, raw))))
}

/// Digests of policies and init-data, and their adjustment to the 32 bytes of SNP HOST_DATA.
pub mod digest {
    use serde::Serialize;
    use sha2::{Digest, Sha256, Sha384, Sha512};

    /// Size of SEV-SNP HOST_DATA.
    pub const HOST_DATA_LEN: usize = 32;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Algorithm {
        Sha256,
        Sha384,
        Sha512,
    }

    impl Algorithm {
        /// The init-data `algorithm` names.
        pub fn from_name(name: &str) -> Option<Algorithm> {
            match name {
                "sha256" => Some(Algorithm::Sha256),
                "sha384" => Some(Algorithm::Sha384),
                "sha512" => Some(Algorithm::Sha512),
                _ => None,
            }
        }
    }

    pub fn compute(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        match alg {
            Algorithm::Sha256 => Sha256::digest(data).to_vec(),
            Algorithm::Sha384 => Sha384::digest(data).to_vec(),
            Algorithm::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// A digest fitted to HOST_DATA: the first 32 bytes of a longer one, a shorter one
    /// followed by zeros (the rule Kata applies for SNP).
    pub fn adjust(digest: &[u8]) -> [u8; HOST_DATA_LEN] {
        let mut out = [0u8; HOST_DATA_LEN];
        let n = digest.len().min(HOST_DATA_LEN);
        out[..n].copy_from_slice(&digest[..n]);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn hex(b: &[u8]) -> String {
            b.iter().map(|x| format!("{x:02x}")).collect()
        }

        // The init-data document the vectors below are computed over.
        const DOC: &str = "algorithm = \"sha384\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n";

        // Expected values come from coreutils, not from the code under test:
        //   printf '%s\n' 'algorithm = "sha384"' 'version = "0.1.0"' '' '[data]' \
        //     '"policy.rego" = '"'''" 'package agent_policy' "'''" | sha256sum  (sha384sum, sha512sum)
        const DOC_SHA256: &str = "1f4d1a45185d637a241dd722f10498a38c0fe947991bf422bb680ea00b3e6c11";
        const DOC_SHA384: &str =
            "61e2d7747874769967a9e2b64be861bd7b523514520f50d09b7ec7e86d2a20d717e7af849c4f2ccc7789b35a1c6ded4e";
        const DOC_SHA512: &str = "812142844bbe9b56b363d52b47b59c2bc154a407fe3ebd9c1dd370113fbe7010493606722029fc1b998430ea77928694cb29aa04e96253e8a940ac752e2522ca";

        #[test]
        fn full_digests_match_coreutils() {
            assert_eq!(hex(&compute(Algorithm::Sha256, DOC.as_bytes())), DOC_SHA256);
            assert_eq!(hex(&compute(Algorithm::Sha384, DOC.as_bytes())), DOC_SHA384);
            assert_eq!(hex(&compute(Algorithm::Sha512, DOC.as_bytes())), DOC_SHA512);
        }

        #[test]
        fn sha256_is_host_data_unchanged() {
            let d = compute(Algorithm::Sha256, DOC.as_bytes());
            assert_eq!(hex(&adjust(&d)), DOC_SHA256);
        }

        #[test]
        fn sha384_and_sha512_are_truncated_to_32_bytes() {
            let d = compute(Algorithm::Sha384, DOC.as_bytes());
            assert_eq!(hex(&adjust(&d)), DOC_SHA384[..64]);
            let d = compute(Algorithm::Sha512, DOC.as_bytes());
            assert_eq!(hex(&adjust(&d)), DOC_SHA512[..64]);
        }

        #[test]
        fn short_digest_is_zero_padded() {
            let a = adjust(&[0xab; 20]);
            assert_eq!(&a[..20], &[0xab; 20]);
            assert_eq!(&a[20..], &[0u8; 12]);
        }

        #[test]
        fn algorithm_names() {
            assert_eq!(Algorithm::from_name("sha384"), Some(Algorithm::Sha384));
            assert_eq!(Algorithm::from_name("SHA256"), None);
            assert_eq!(Algorithm::from_name("md5"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_policy_of_a_document() {
        let doc = "version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"policy.rego\" = \"package agent_policy\\n\"\n";
        let (policy, hd) = bound_policy(doc.as_bytes()).unwrap();
        assert_eq!(policy, "package agent_policy\n");
        let full = digest::compute(digest::Algorithm::Sha512, doc.as_bytes());
        assert_eq!(&hd[..], &full[..32]);
        assert!(matches!(
            bound_policy(b"version = \"0.1.0\"\nalgorithm = \"md5\"\n"),
            Err(InitDataError::Algorithm(_))
        ));
        assert!(matches!(
            bound_policy(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n"),
            Err(InitDataError::NoPolicy)
        ));
        assert!(matches!(bound_policy(b"= x"), Err(InitDataError::Toml(_))));
    }
}
