//! AMD SEV-SNP, host side: the expected launch measurement, attestation report parsing and
//! verification, the QEMU arguments of an SNP guest, and what this host can do.

pub mod host;
pub mod measure;
pub mod qemu;
pub mod report;
pub mod verify;

/// Lowercase hex of bytes (the guest library's, so host and agent print digests alike).
pub use kata_cc_policy::tee::hex;

/// Decodes hex text (whitespace ignored, optional `0x`); `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let t: String = text.split_whitespace().collect();
    let t = t.strip_prefix("0x").unwrap_or(&t);
    if !t.len().is_multiple_of(2) || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        assert_eq!(super::hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(super::unhex("00AB\n10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(super::unhex("0x0a"), Some(vec![10]));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}

// kata-cc-tests' fixture helper, for tests_support; the shim cannot depend on that crate (it
// depends on the shim), so the same file is included.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::PathBuf;

    use kata_cc_fixtures as fixtures;

    /// An SNP test vector by its conformance name: `virtee-<file>` comes from the `sev` package
    /// (tests/certs_data/, tests/measurement/), anything else from ../shared/conformance/snp/
    /// (only what no package ships); a missing file panics naming it.
    pub fn conformance(name: &str) -> PathBuf {
        match name.strip_prefix("virtee-") {
            Some(file) => fixtures::sev_file(file),
            None => fixtures::conformance_file(&format!("snp/{name}")),
        }
    }
}
