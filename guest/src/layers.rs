//! The layers of a container's image storage: verify an image layer blob against its OCI diff_id and
//! unpack it into a container rootfs in guest memory, honouring OCI whiteouts.
//!
//! A layer is read twice: first to check its digests (nothing is written before the layer is
//! known to be the one the host announced), then to unpack it.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};

use agent_proto::contract::LayerRef;
use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Symlinks followed at most while resolving one path inside the rootfs.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: diff_id mismatch: expected {expected} got {got}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        got: String,
    },
    #[error("layer {digest}: blob digest mismatch: expected {digest} got {got}")]
    DigestMismatch { digest: String, got: String },
    #[error("layer {digest}: unsupported media type {media_type:?}")]
    MediaType { digest: String, media_type: String },
    #[error("layer {digest}: {option}")]
    Option { digest: String, option: String },
    #[error("layer {digest}: reading {path}: {source}")]
    Read {
        digest: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {digest}: entry {entry:?} escapes the container rootfs")]
    Escape { digest: String, entry: String },
    #[error("layer {digest}: unpacking entry {entry:?} into {rootfs}: {source}")]
    Unpack {
        digest: String,
        entry: String,
        rootfs: PathBuf,
        source: io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer as described by a `Storage` entry of CreateContainerRequest.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: PathBuf,
    pub media_type: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:<hex>` of the blob as stored (may be empty: then it is not checked).
    pub digest: String,
}

impl Layer {
    /// A layer of an image storage ([`LayerRef`]) whose blob was copied to `blob`; both
    /// digests must be `sha256:<64 hex digits>`.
    pub fn from_ref(blob: PathBuf, r: &LayerRef) -> Result<Layer, LayerError> {
        for (k, v) in [("diff_id", &r.diff_id), ("digest", &r.digest)] {
            let ok = v
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(LayerError::Option {
                    digest: r.digest.clone(),
                    option: format!("{k} {v} is not sha256:<64 hex digits>"),
                });
            }
        }
        Ok(Layer {
            blob,
            media_type: r.media_type.clone(),
            diff_id: r.diff_id.clone(),
            digest: r.digest.clone(),
        })
    }

    fn name(&self) -> String {
        if self.digest.is_empty() {
            self.blob.display().to_string()
        } else {
            self.digest.clone()
        }
    }

    fn compression(&self) -> Result<Compression, LayerError> {
        let m = self.media_type.as_str();
        if m.ends_with("+gzip") || m.ends_with(".gzip") || m.ends_with("tar.gz") {
            Ok(Compression::Gzip)
        } else if m.ends_with("+zstd") || m.ends_with(".zstd") {
            Ok(Compression::Zstd)
        } else if m.ends_with(".tar") || m == "tar" || m.is_empty() {
            Ok(Compression::None)
        } else {
            Err(LayerError::MediaType {
                digest: self.name(),
                media_type: m.to_string(),
            })
        }
    }

    fn read_err(&self, e: io::Error) -> LayerError {
        LayerError::Read {
            digest: self.name(),
            path: self.blob.clone(),
            source: e,
        }
    }

    /// The uncompressed tar stream of `blob` from its start, hashing the compressed bytes on the
    /// way. Both passes read the one open file: CopyFile replaces a file by renaming a new one
    /// over it, so a blob rewritten between the check and the unpack cannot reach the rootfs.
    fn open(&self, blob: &File) -> Result<(Box<dyn Read>, HashHandle), LayerError> {
        let mut f = blob.try_clone().map_err(|e| self.read_err(e))?;
        f.rewind().map_err(|e| self.read_err(e))?;
        let (hashing, handle) = HashingReader::new(f);
        let src = BufReader::with_capacity(256 * 1024, hashing);
        let r: Box<dyn Read> = match self.compression()? {
            Compression::None => Box::new(src),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
            Compression::Zstd => Box::new(ZstdFrames::new(src)),
        };
        Ok((r, handle))
    }

    /// Check both digests; returns the whiteouts of the layer (relative paths) and, when it is
    /// at most [`IN_MEMORY_TAR`] bytes, the verified tar itself (the unpack then decompresses
    /// nothing a second time).
    fn verify(
        &self,
        blob: &File,
        keep: usize,
    ) -> Result<(Vec<PathBuf>, Option<Vec<u8>>), LayerError> {
        let (r, blob_hash) = self.open(blob)?;
        let (r, tar_hash) = HashingReader::new(r);
        let mut r = Tee {
            inner: r,
            copy: Some(Vec::new()),
            cap: keep,
        };
        let mut whiteouts = Vec::new();
        {
            let mut ar = tar::Archive::new(&mut r);
            let entries = ar.entries().map_err(|e| self.read_err(e))?;
            for entry in entries {
                let entry = entry.map_err(|e| self.read_err(e))?;
                let path = entry.path().map_err(|e| self.read_err(e))?;
                let rel = relative(&path).ok_or_else(|| LayerError::Escape {
                    digest: self.name(),
                    entry: path.display().to_string(),
                })?;
                if rel
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
                {
                    whiteouts.push(rel);
                }
            }
        }
        // Trailing bytes after the end-of-archive blocks are part of the diff_id too.
        io::copy(&mut r, &mut io::sink()).map_err(|e| self.read_err(e))?;
        let tar = r.copy.take();
        drop(r);
        let got = format!("sha256:{}", tar_hash.hex());
        if got != self.diff_id {
            return Err(LayerError::DiffIdMismatch {
                digest: self.name(),
                expected: self.diff_id.clone(),
                got,
            });
        }
        if !self.digest.is_empty() {
            let got = format!("sha256:{}", blob_hash.hex());
            if got != self.digest {
                return Err(LayerError::DigestMismatch {
                    digest: self.digest.clone(),
                    got,
                });
            }
        }
        Ok((whiteouts, tar))
    }

    /// Verify the layer, then apply it on top of `rootfs`.
    pub fn apply(&self, rootfs: &Path) -> Result<(), LayerError> {
        self.apply_keeping(rootfs, IN_MEMORY_TAR)
    }

    /// [`Self::apply`], keeping the verified tar in memory if it is at most `keep` bytes.
    fn apply_keeping(&self, rootfs: &Path, keep: usize) -> Result<(), LayerError> {
        let blob = File::open(&self.blob).map_err(|e| self.read_err(e))?;
        let (whiteouts, tar) = self.verify(&blob, keep)?;
        let unpack_err = |entry: &Path, e: io::Error| LayerError::Unpack {
            digest: self.name(),
            entry: entry.display().to_string(),
            rootfs: rootfs.to_path_buf(),
            source: e,
        };
        // Whiteouts hide lower layers only: apply them all before this layer's own entries.
        for wh in &whiteouts {
            let name = wh
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let parent = wh.parent().unwrap_or(Path::new(""));
            let dir = secure_join(rootfs, parent).map_err(|e| unpack_err(wh, e))?;
            if name == OPAQUE {
                match fs::read_dir(&dir) {
                    Ok(rd) => {
                        for child in rd {
                            let child = child.map_err(|e| unpack_err(wh, e))?;
                            remove_any(&child.path()).map_err(|e| unpack_err(wh, e))?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(unpack_err(wh, e)),
                }
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(LayerError::Escape {
                        digest: self.name(),
                        entry: wh.display().to_string(),
                    });
                }
                remove_any(&dir.join(hidden)).map_err(|e| unpack_err(wh, e))?;
            }
        }

        let r: Box<dyn Read> = match tar {
            Some(t) => Box::new(io::Cursor::new(t)),
            None => self.open(&blob)?.0,
        };
        let mut ar = tar::Archive::new(r);
        ar.set_preserve_permissions(true);
        // The agent runs as root and keeps the image's owners; an unprivileged caller (the unit
        // tests) cannot chown and unpacks as itself.
        ar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
        ar.set_preserve_mtime(true);
        ar.set_overwrite(true);
        ar.set_unpack_xattrs(false);
        for entry in ar.entries().map_err(|e| self.read_err(e))? {
            let mut entry = entry.map_err(|e| self.read_err(e))?;
            let path = entry.path().map_err(|e| self.read_err(e))?.into_owned();
            let rel = relative(&path).ok_or_else(|| LayerError::Escape {
                digest: self.name(),
                entry: path.display().to_string(),
            })?;
            let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
                continue; // the archive root itself
            };
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
            {
                continue;
            }
            let parent = rel.parent().unwrap_or(Path::new(""));
            let dir = secure_join(rootfs, parent).map_err(|e| unpack_err(&rel, e))?;
            fs::create_dir_all(&dir).map_err(|e| unpack_err(&rel, e))?;
            let target = dir.join(&name);
            let kind = entry.header().entry_type();
            // Replace what a lower layer left at this path, without following a symlink there.
            if let Ok(md) = fs::symlink_metadata(&target) {
                let keep_dir = md.is_dir() && kind.is_dir();
                if !keep_dir {
                    remove_any(&target).map_err(|e| unpack_err(&rel, e))?;
                }
            }
            match kind {
                tar::EntryType::Link => {
                    let link = entry
                        .link_name()
                        .map_err(|e| self.read_err(e))?
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    let lrel = relative(&link).ok_or_else(|| LayerError::Escape {
                        digest: self.name(),
                        entry: format!("{} (hard link to {})", rel.display(), link.display()),
                    })?;
                    let lparent = lrel.parent().unwrap_or(Path::new(""));
                    let src = secure_join(rootfs, lparent)
                        .map_err(|e| unpack_err(&rel, e))?
                        .join(lrel.file_name().unwrap_or_default());
                    fs::hard_link(&src, &target).map_err(|e| unpack_err(&rel, e))?;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    // Device nodes come from the runtime's /dev, not from image layers.
                    if kind == tar::EntryType::Fifo {
                        entry.unpack(&target).map_err(|e| unpack_err(&rel, e))?;
                    }
                }
                _ => {
                    entry.unpack(&target).map_err(|e| unpack_err(&rel, e))?;
                }
            }
        }
        Ok(())
    }
}

/// A tar entry path as a plain relative path; None if it climbs out (`..`).
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// `root/rel` with every symlink on the way resolved as if `root` were `/` (so nothing resolves
/// outside `root`). The result is a real path below `root` (components that do not exist yet are
/// appended as they are).
pub fn secure_join(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(cur.iter());
        cand.push(&c);
        match fs::symlink_metadata(&cand) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many symlinks below {}", cand.display()),
                    ));
                }
                let target = fs::read_link(&cand)?;
                if target.is_absolute() {
                    cur.clear();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => cur.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(cur.iter());
    Ok(out)
}

/// Remove a file, symlink or directory tree; absent is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A reader that hashes everything read through it; the digest is read from the handle.
struct HashingReader<R> {
    inner: R,
    hash: std::rc::Rc<std::cell::RefCell<Sha256>>,
}

struct HashHandle(std::rc::Rc<std::cell::RefCell<Sha256>>);

impl HashHandle {
    fn hex(&self) -> String {
        let h = self.0.borrow().clone().finalize();
        h.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> (Self, HashHandle) {
        let hash = std::rc::Rc::new(std::cell::RefCell::new(Sha256::new()));
        (
            HashingReader {
                inner,
                hash: hash.clone(),
            },
            HashHandle(hash),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Layers whose tar is at most this many bytes are decompressed once (kept in memory between
/// the check and the unpack); larger ones are decompressed again from the same open blob.
const IN_MEMORY_TAR: usize = 64 << 20;

/// A reader that keeps a copy of what is read through it, until the copy would pass `cap`
/// bytes (then it keeps none).
struct Tee<R> {
    inner: R,
    copy: Option<Vec<u8>>,
    cap: usize,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = self.copy.as_mut() {
            if c.len() + n > self.cap {
                self.copy = None;
            } else {
                c.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// A zstd stream of one or more frames (encoders may split a layer into several).
struct ZstdFrames<R: BufRead> {
    src: Option<R>,
    cur: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(src: R) -> Self {
        ZstdFrames {
            src: Some(src),
            cur: None,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(dec) = self.cur.as_mut() {
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                let dec = self.cur.take().expect("decoder present");
                self.src = Some(dec.into_inner());
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let dec = ruzstd::decoding::StreamingDecoder::new(src)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            self.cur = Some(dec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hdr() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = hdr();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).expect("append");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).expect("append");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn sha(data: &[u8]) -> String {
        let h = Sha256::digest(data);
        format!(
            "sha256:{}",
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    fn layer(dir: &Path, name: &str, tar: &[u8], gzip: bool) -> Layer {
        let blob = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gz");
            e.finish().expect("gz")
        } else {
            tar.to_vec()
        };
        let p = dir.join(name);
        fs::write(&p, &blob).expect("write blob");
        Layer {
            blob: p,
            media_type: if gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip".into()
            } else {
                "application/vnd.oci.image.layer.v1.tar".into()
            },
            diff_id: sha(tar),
            digest: sha(&blob),
        }
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let l1 = tar_of(&[
            ("etc/", None),
            ("etc/a", Some(b"a1")),
            ("etc/b", Some(b"b1")),
            ("opq/", None),
            ("opq/old", Some(b"x")),
            ("gone/", None),
            ("gone/f", Some(b"f")),
        ]);
        let l2 = tar_of(&[
            ("etc/a", Some(b"a2")),
            ("etc/.wh.b", Some(b"")),
            (".wh.gone", Some(b"")),
            ("opq/new", Some(b"n")),
            ("opq/.wh..wh..opq", Some(b"")),
        ]);
        layer(t.path(), "l1", &l1, true).apply(&root).expect("l1");
        layer(t.path(), "l2", &l2, false).apply(&root).expect("l2");
        assert_eq!(fs::read(root.join("etc/a")).expect("a"), b"a2");
        assert!(!root.join("etc/b").exists());
        assert!(!root.join("gone").exists());
        assert!(!root.join("opq/old").exists());
        assert_eq!(fs::read(root.join("opq/new")).expect("new"), b"n");
        assert!(!root.join("etc/.wh.b").exists());
    }

    #[test]
    fn a_tar_larger_than_the_memory_cap_is_read_again_from_the_blob() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let l1 = tar_of(&[("d/", None), ("d/x", Some(b"x1")), ("d/y", Some(b"y1"))]);
        let l2 = tar_of(&[("d/.wh.y", Some(b"")), ("d/z", Some(b"z2"))]);
        layer(t.path(), "l1", &l1, true)
            .apply_keeping(&root, 0)
            .expect("l1");
        layer(t.path(), "l2", &l2, true)
            .apply_keeping(&root, 16)
            .expect("l2");
        assert_eq!(fs::read(root.join("d/x")).expect("x"), b"x1");
        assert!(!root.join("d/y").exists());
        assert_eq!(fs::read(root.join("d/z")).expect("z"), b"z2");
    }

    #[test]
    fn a_blob_replaced_after_it_was_opened_is_not_what_gets_unpacked() {
        // CopyFile replaces a blob by renaming a new file over it: the open file is unchanged.
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let good = tar_of(&[("f", Some(b"verified"))]);
        let l = layer(t.path(), "blob", &good, true);
        let blob = File::open(&l.blob).expect("open");
        let evil = layer(t.path(), "evil", &tar_of(&[("f", Some(b"swapped!"))]), true);
        fs::rename(&evil.blob, &l.blob).expect("rename over");
        let (_, kept) = l.verify(&blob, 0).expect("the open file verifies");
        assert!(kept.is_none());
        let (r, _) = l.open(&blob).expect("reopen");
        let mut ar = tar::Archive::new(r);
        let mut e = ar
            .entries()
            .expect("entries")
            .next()
            .expect("one")
            .expect("entry");
        let mut body = String::new();
        e.read_to_string(&mut body).expect("read");
        assert_eq!(body, "verified");
    }

    #[test]
    fn zstd_layers_unpack() {
        // A zstd frame with raw (uncompressed) blocks, built by hand: ruzstd only decodes here.
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let tar = tar_of(&[("hello", Some(b"zstd!"))]);
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
        frame.push(0xa0); // FCS 4 bytes, single segment
        frame.extend_from_slice(&(tar.len() as u32).to_le_bytes());
        for (i, chunk) in tar.chunks(1000).enumerate() {
            let last = (i + 1) * 1000 >= tar.len();
            let hdr = ((chunk.len() as u32) << 3) | u32::from(last);
            frame.extend_from_slice(&hdr.to_le_bytes()[..3]);
            frame.extend_from_slice(chunk);
        }
        let p = t.path().join("z");
        fs::write(&p, &frame).expect("blob");
        Layer {
            blob: p,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            diff_id: sha(&tar),
            digest: sha(&frame),
        }
        .apply(&root)
        .expect("zstd layer");
        assert_eq!(fs::read(root.join("hello")).expect("hello"), b"zstd!");
    }

    #[test]
    fn diff_id_mismatch_names_the_layer_and_writes_nothing() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let mut l = layer(t.path(), "l", &tar_of(&[("f", Some(b"1"))]), true);
        let wrong = sha(b"other");
        l.diff_id = wrong.clone();
        let err = l.apply(&root).expect_err("mismatch").to_string();
        assert!(
            err.starts_with(&format!(
                "layer {}: diff_id mismatch: expected {wrong} got sha256:",
                l.digest
            )),
            "{err}"
        );
        assert!(!root.join("f").exists());
    }

    #[test]
    fn escaping_entries_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        // tar::Builder refuses `..`, so write the name into the header by hand.
        let mut h = hdr();
        h.as_gnu_mut().expect("gnu").name[..12].copy_from_slice(b"../escape.tx");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let err = layer(t.path(), "l", &tar, false)
            .apply(&root)
            .expect_err("escape")
            .to_string();
        assert!(err.contains("escapes the container rootfs"), "{err}");
        assert!(!t.path().join("escape.tx").exists());

        // A symlink to an absolute path resolves inside the rootfs, not on the guest.
        let outside = t.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link", &outside).expect("symlink");
        let mut h = hdr();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "link/owned", &b"x"[..])
            .expect("file");
        let tar = b.into_inner().expect("tar");
        layer(t.path(), "l2", &tar, false)
            .apply(&root)
            .expect("apply");
        assert!(!outside.join("owned").exists());
        let inside = secure_join(&root, Path::new("link/owned")).expect("join");
        assert!(inside.starts_with(&root));
        assert!(inside.exists());
    }

    #[test]
    fn layer_refs_are_validated() {
        let r = |digest: &str, diff_id: &str| LayerRef {
            digest: digest.into(),
            diff_id: diff_id.into(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        };
        let good = format!("sha256:{}", "a".repeat(64));
        let l = Layer::from_ref("/b".into(), &r(&good, &good)).unwrap();
        assert_eq!(l.blob, Path::new("/b"));
        let e = Layer::from_ref("/b".into(), &r(&good, "md5:1"))
            .expect_err("bad diff_id")
            .to_string();
        assert!(e.contains("diff_id md5:1"), "{e}");
        let e = Layer::from_ref("/b".into(), &r("sha256:00", &good))
            .expect_err("short digest")
            .to_string();
        assert!(e.contains("digest sha256:00"), "{e}");
    }
}
