//! The test images: OCI archives built locally by hack/oci-image.sh (busybox-static, one layer).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::{cmd, paths};

/// One locally built image archive.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The reference containerd gives it on import.
    pub name: String,
    pub archive: PathBuf,
    /// The digest of its one layer blob, `sha256:<hex>`.
    pub layer_digest: String,
}

impl TestImage {
    /// The gzip image every ordinary test runs.
    pub fn busybox() -> TestImage {
        build("localhost/kata-cc-e2e/busybox:gzip", "gzip")
    }

    /// The same files with a zstd-compressed layer.
    pub fn busybox_zstd() -> TestImage {
        build("localhost/kata-cc-e2e/busybox:zstd", "zstd")
    }

    /// The same files with an uncompressed layer (so a flipped byte is a plain digest mismatch).
    pub fn busybox_uncompressed() -> TestImage {
        build("localhost/kata-cc-e2e/busybox:uncompressed", "none")
    }

    /// The gzip busybox image plus host files (`(source, absolute destination)`), e.g. a static
    /// benchmark helper; `tag` names the image and its archive.
    pub fn busybox_with(tag: &str, files: &[(PathBuf, &str)]) -> TestImage {
        let adds: Vec<String> = files
            .iter()
            .map(|(src, dest)| format!("{}={dest}", src.display()))
            .collect();
        build_with(
            &format!("localhost/kata-cc-e2e/busybox:{tag}"),
            "gzip",
            &format!("busybox-{tag}.tar"),
            &adds,
            None,
            false,
        )
    }

    /// The pod sandbox image of the CRI tests, shaped as Kubernetes' pause image: one layer
    /// holding only `kata-cc-pause` (this workspace's static pause, of the tests' own profile,
    /// stripped) as `/pause`, the image's Entrypoint; no shell, no /etc.
    pub fn pause() -> TestImage {
        let pause = paths::workspace_bin("kata-cc-pause");
        build_with(
            "localhost/kata-cc-e2e/pause:latest",
            "gzip",
            "pause.tar",
            &[format!("{}=/pause", pause.display())],
            Some("/pause"),
            true,
        )
    }

    /// The layer's hex digest (without `sha256:`).
    pub fn layer_hex(&self) -> &str {
        self.layer_digest
            .strip_prefix("sha256:")
            .expect("layer digest is sha256")
    }
}

/// Builds an archive once per test process (the script is reproducible, so reuse is safe).
fn build(name: &str, compression: &str) -> TestImage {
    build_with(
        name,
        compression,
        &format!("busybox-{compression}.tar"),
        &[],
        None,
        false,
    )
}

fn build_with(
    name: &str,
    compression: &str,
    file: &str,
    adds: &[String],
    entrypoint: Option<&str>,
    bare: bool,
) -> TestImage {
    static BUILT: OnceLock<Mutex<HashMap<String, TestImage>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(img) = map.get(name) {
        return img.clone();
    }
    let dir = paths::e2e_dir().join("images");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let archive = dir.join(file);
    let mut c = Command::new("bash");
    c.arg(paths::repo().join("hack/oci-image.sh"))
        .arg("--compression")
        .arg(compression);
    for a in adds {
        c.arg("--add").arg(a);
    }
    if let Some(e) = entrypoint {
        c.arg("--entrypoint").arg(e);
    }
    if bare {
        c.arg("--bare");
    }
    c.arg(&archive).arg(name);
    let out = cmd::run(c, None, paths::ctr_timeout());
    out.assert_success();
    // The script reports "... layer sha256:<hex>, <compression>)".
    let text = out.stdout_str();
    let layer_digest = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sha256:").map(|h| h.trim_end_matches(',')))
        .map(|h| format!("sha256:{h}"))
        .unwrap_or_else(|| panic!("no layer digest in oci-image.sh output: {text}"));
    let img = TestImage {
        name: name.to_string(),
        archive,
        layer_digest,
    };
    map.insert(name.to_string(), img.clone());
    img
}

/// Flips (inverts) one byte of a file in place: a tampered image, blob or layer.
pub fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("{} byte {offset}: {e}", path.display()));
    b[0] = !b[0];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write");
    f.sync_all().expect("sync");
}
