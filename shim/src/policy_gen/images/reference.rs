//! Image references normalized the way containerd's CRI does it for the kubelet's image
//! strings: the distribution reference grammar, `docker.io` when the first component is not a
//! host, `library/` for a one-component Docker Hub name, `:latest` when there is neither tag nor
//! digest, and a tag dropped when a digest is given (the digest alone names the image).

use super::ImageFactsError;

/// Docker Hub's canonical domain in normalized names.
pub const DOCKER_HUB: &str = "docker.io";
/// The Hub's legacy domain, folded into [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Longest repository name (domain and path) the grammar allows.
const NAME_MAX: usize = 255;
/// Longest tag the grammar allows.
const TAG_MAX: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (with port), `docker.io` for Docker Hub.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    /// The tag as written (`None` when the reference has none).
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a manifest.
    pub digest: Option<String>,
}

fn bad(reference: &str, reason: impl Into<String>) -> ImageFactsError {
    ImageFactsError::Reference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

impl ImageRef {
    /// Parses and normalizes `reference` (as written in a pod spec).
    pub fn parse(reference: &str) -> Result<ImageRef, ImageFactsError> {
        if reference.is_empty() {
            return Err(bad(reference, "empty image reference"));
        }
        if reference.trim() != reference {
            return Err(bad(reference, "leading or trailing white space"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, d)) => (rest, Some(parse_digest(reference, d)?)),
            None => (reference, None),
        };
        // A tag is the part after the last ':' unless that ':' belongs to the domain's port
        // (then a '/' follows it).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(reference, t)?;
        }
        if name.is_empty() {
            return Err(bad(reference, "no repository name"));
        }
        let (mut domain, mut path) = split_domain(name);
        if domain == DOCKER_HUB_LEGACY {
            domain = DOCKER_HUB.to_string();
        }
        check_domain(reference, &domain)?;
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad(reference, "repository name must be lowercase"));
        }
        for component in path.split('/') {
            check_component(reference, component)?;
        }
        if domain == DOCKER_HUB && !path.contains('/') {
            if is_hex64(&path) && tag.is_none() && digest.is_none() {
                // What `docker` refuses too: it reads as an image id, not a name.
                return Err(bad(
                    reference,
                    "a 64-character hexadecimal string is an image id, not a reference",
                ));
            }
            path = format!("library/{path}");
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(bad(
                reference,
                format!("repository name longer than {NAME_MAX} characters"),
            ));
        }
        Ok(ImageRef {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag the registry is asked for when there is no digest.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The normalized name containerd records: `repo@digest` when pinned (the tag dropped),
    /// else `repo:tag` (`latest` by default).
    pub fn name(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.repository()),
            None => format!("{}:{}", self.repository(), self.tag_or_latest()),
        }
    }

    /// Whether the image can change under the same reference in the way users are warned
    /// about: no digest and the tag `latest` or none.
    pub fn is_latest_or_untagged(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }
}

/// The Docker rule: the first component is a domain when it has a '.' or ':', is `localhost`,
/// or has an upper-case letter; otherwise the name is on Docker Hub.
fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    }
}

fn parse_digest(reference: &str, d: &str) -> Result<String, ImageFactsError> {
    let (algorithm, hex) = d
        .split_once(':')
        .ok_or_else(|| bad(reference, format!("digest {d:?} is not ALGORITHM:HEX")))?;
    if algorithm != "sha256" {
        return Err(bad(
            reference,
            format!("digest algorithm {algorithm:?}: only sha256 is supported"),
        ));
    }
    if !is_hex64(hex) {
        return Err(bad(
            reference,
            format!("digest {d:?}: a sha256 digest is 64 lower-case hexadecimal characters"),
        ));
    }
    Ok(d.to_string())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_tag(reference: &str, tag: &str) -> Result<(), ImageFactsError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && word(tag.as_bytes()[0])
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            reference,
            format!(
                "tag {tag:?}: a tag is 1-{TAG_MAX} letters, digits, '_', '.', '-' (not starting with '.' or '-')"
            ),
        ))
    }
}

/// `host[:port]`, the host dot-separated labels or a bracketed IPv6 address.
fn check_domain(reference: &str, domain: &str) -> Result<(), ImageFactsError> {
    let fail = || {
        bad(
            reference,
            format!("registry host {domain:?} is not a valid host[:port]"),
        )
    };
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(fail)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(fail());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(fail)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail());
        }
    }
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(label_ok) {
            return Err(fail());
        }
    }
    Ok(())
}

/// A path component: lower-case alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn check_component(reference: &str, c: &str) -> Result<(), ImageFactsError> {
    let fail = || {
        bad(
            reference,
            format!(
                "repository path component {c:?}: lower-case letters and digits, separated by '.', '_', '__' or '-'"
            ),
        )
    };
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(fail());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or '-'+, followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(fail()),
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return Err(fail());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "4a3b0ff37ea1ec2d9b4a2c0d9c4e6c8b1e3a5f7d9b1c3e5a7f9d1b3c5e7a9f1d";

    fn name(r: &str) -> String {
        ImageRef::parse(r)
            .unwrap_or_else(|e| panic!("{r}: {e}"))
            .name()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(name("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(name("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(name("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            name("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            name("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn other_registries_keep_their_path() {
        assert_eq!(name("127.0.0.1:5000/x/y:tag"), "127.0.0.1:5000/x/y:tag");
        assert_eq!(name("127.0.0.1:5000/y"), "127.0.0.1:5000/y:latest");
        assert_eq!(
            name("localhost/kata-cc-e2e/busybox:gzip"),
            "localhost/kata-cc-e2e/busybox:gzip"
        );
        assert_eq!(
            name("registry.k8s.io/pause:3.6"),
            "registry.k8s.io/pause:3.6"
        );
        assert_eq!(name("[::1]:5000/a/b"), "[::1]:5000/a/b:latest");
        // Not a domain: no dot, colon or localhost, lower case.
        assert_eq!(name("myhost/app"), "docker.io/myhost/app:latest");
        let r = ImageRef::parse("mcr.microsoft.com/oss/kubernetes/pause:3.6").unwrap();
        assert_eq!(r.domain, "mcr.microsoft.com");
        assert_eq!(r.path, "oss/kubernetes/pause");
        assert_eq!(r.tag.as_deref(), Some("3.6"));
    }

    #[test]
    fn digest_pins_and_drops_the_tag() {
        let d = format!("sha256:{HEX}");
        assert_eq!(
            name(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a/b:1.0@{d}")).unwrap();
        assert_eq!(r.name(), format!("127.0.0.1:5000/a/b@{d}"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert!(!r.is_latest_or_untagged());
        assert!(!ImageRef::parse(&format!("busybox:latest@{d}"))
            .unwrap()
            .is_latest_or_untagged());
    }

    #[test]
    fn latest_and_untagged_are_flagged() {
        assert!(ImageRef::parse("busybox").unwrap().is_latest_or_untagged());
        assert!(ImageRef::parse("busybox:latest")
            .unwrap()
            .is_latest_or_untagged());
        assert!(!ImageRef::parse("busybox:1.36")
            .unwrap()
            .is_latest_or_untagged());
    }

    #[test]
    fn bad_references_name_the_reason() {
        for (r, want) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("docker.io/Library/busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:abc", "64"),
            ("busybox@md5:0123", "only sha256"),
            ("busybox@nodigest", "ALGORITHM:HEX"),
            ("a//b", "path component"),
            ("a/b-/c", "path component"),
            ("a/b__c_", "path component"),
            ("a/b...c", "path component"),
            ("host.example:port/x", "host[:port]"),
            (" busybox", "white space"),
            (HEX, "image id"),
        ] {
            let err = ImageRef::parse(r).expect_err(r).to_string();
            assert!(err.contains(want), "{r:?}: {err}");
            assert!(err.contains(&format!("{r:?}")), "{r:?}: {err}");
        }
    }

    #[test]
    fn separators_allowed_in_components() {
        for r in ["a/b.c", "a/b_c", "a/b__c", "a/b---c", "a/b-c.d_e"] {
            ImageRef::parse(r).unwrap_or_else(|e| panic!("{r}: {e}"));
        }
        let long_tag = "t".repeat(TAG_MAX);
        ImageRef::parse(&format!("a:{long_tag}")).unwrap();
        assert!(ImageRef::parse(&format!("a:{long_tag}x")).is_err());
    }
}
