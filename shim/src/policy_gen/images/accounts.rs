//! /etc/passwd and /etc/group of an image, for a container whose USER is a name: layers read
//! top down as streams (gzip, zstd or plain tar, by media type), each stopped as soon as both
//! files are decided, lower layers not opened once they are. Whiteouts count: `.wh.passwd` or an
//! opaque `etc/` (`.wh..wh..opq`) in a layer hides what lower layers have.
//!
//! Memory stays bounded: the compressed stream goes through a small channel to a blocking
//! thread that decompresses and walks the tar; only the two files are kept, each capped.

use std::io::{self, BufRead, BufReader, Read};
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{Accounts, Counters, ImageFacts, ImageFactsError, LayerFacts};

/// The files, as paths inside a layer.
const PASSWD: &str = "etc/passwd";
const GROUP: &str = "etc/group";
/// Largest /etc/passwd or /etc/group accepted (real ones are a few KiB).
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;
/// Compressed chunks in flight between the fetch and the tar walk.
const CHANNEL_CHUNKS: usize = 8;
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, ImageFactsError>> + Send>>;

/// How a source opens a layer blob as a stream of compressed bytes.
#[async_trait]
pub(crate) trait LayerOpener: Send + Sync {
    async fn open_layer(
        &self,
        image: &ImageFacts,
        layer: &LayerFacts,
    ) -> Result<ChunkStream, ImageFactsError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(image: &ImageFacts, layer: &LayerFacts) -> Result<Compression, ImageFactsError> {
    let m = layer.media_type.as_str();
    if !crate::image::is_layer_media_type(m) {
        return Err(layer_err(
            image,
            layer,
            format!("unsupported layer media type {m:?}"),
        ));
    }
    Ok(if m.ends_with("gzip") {
        Compression::Gzip
    } else if m.ends_with("zstd") {
        Compression::Zstd
    } else {
        Compression::None
    })
}

fn layer_err(image: &ImageFacts, layer: &LayerFacts, detail: impl Into<String>) -> ImageFactsError {
    ImageFactsError::Layer {
        image: image.name.clone(),
        digest: layer.digest.clone(),
        detail: detail.into(),
    }
}

/// What one layer says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Nothing: look further down.
    Nothing,
    /// The file's content.
    File(String),
    /// Deleted or shadowed here: lower layers do not count, the image has no such file.
    Hidden,
}

/// The state of one file across layers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decided {
    Open,
    Found(String),
    Absent,
}

/// Reads the accounts files of `image` through `opener`, counting into `counters`.
pub(crate) async fn read_accounts(
    opener: &dyn LayerOpener,
    image: &ImageFacts,
    counters: &Counters,
) -> Result<Accounts, ImageFactsError> {
    let mut state = [(PASSWD, Decided::Open), (GROUP, Decided::Open)];
    for layer in image.layers.iter().rev() {
        let want: Vec<&'static str> = state
            .iter()
            .filter(|(_, d)| *d == Decided::Open)
            .map(|(p, _)| *p)
            .collect();
        if want.is_empty() {
            break;
        }
        let kind = compression(image, layer)?;
        let mut stream = opener.open_layer(image, layer).await?;
        counters.layer_opened();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let scan_want = want.clone();
        let scan = tokio::task::spawn_blocking(move || {
            scan_layer(ChannelReader::new(rx), kind, &scan_want)
        });
        let mut fetch_error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    counters.layer(c.len());
                    // The scan has ended (decided everything, or failed): stop fetching.
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    fetch_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        drop(stream);
        let seen = scan
            .await
            .map_err(|e| layer_err(image, layer, format!("layer reader task: {e}")))?;
        if let Some(e) = fetch_error {
            return Err(e);
        }
        let seen = seen.map_err(|e| layer_err(image, layer, e))?;
        for (path, s) in want.iter().zip(seen) {
            let slot = state
                .iter_mut()
                .find(|(p, _)| p == path)
                .map(|(_, d)| d)
                .expect("wanted paths come from the state");
            match s {
                Seen::Nothing => {}
                Seen::File(text) => *slot = Decided::Found(text),
                Seen::Hidden => *slot = Decided::Absent,
            }
        }
    }
    let take = |d: &Decided| match d {
        Decided::Found(t) => Some(t.clone()),
        Decided::Open | Decided::Absent => None,
    };
    Ok(Accounts {
        passwd: take(&state[0].1),
        group: take(&state[1].1),
    })
}

/// A blocking reader over the chunks the async side sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.cur = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A zstd stream of one or more frames (encoders may split a layer into several).
struct ZstdFrames<R: BufRead> {
    src: Option<R>,
    cur: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(dec) = self.cur.as_mut() {
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if let Some(done) = self.cur.take() {
                    self.src = Some(done.into_inner());
                }
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

/// A tar entry path relative to the root: no leading `/` or `./`, no trailing `/`.
fn rel(path: &str) -> &str {
    let mut p = path;
    loop {
        if let Some(r) = p.strip_prefix("./") {
            p = r;
        } else if let Some(r) = p.strip_prefix('/') {
            p = r;
        } else {
            break;
        }
    }
    p.trim_end_matches('/')
}

/// Whether `ancestor` is a proper ancestor directory of `path` (`""` is the root).
fn is_under(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path
            .strip_prefix(ancestor)
            .is_some_and(|r| r.starts_with('/'))
}

/// Walks one layer's tar for the `want` paths; stops reading once every one has a file.
fn scan_layer<R: Read>(src: R, kind: Compression, want: &[&str]) -> Result<Vec<Seen>, String> {
    let src = BufReader::with_capacity(128 * 1024, src);
    let tar: Box<dyn Read> = match kind {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(ZstdFrames {
            src: Some(src),
            cur: None,
        }),
    };
    let mut ar = tar::Archive::new(tar);
    let mut seen = vec![Seen::Nothing; want.len()];
    let entries = ar.entries().map_err(|e| format!("read tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("read tar: {e}"))?;
        let raw = entry.path().map_err(|e| format!("tar entry path: {e}"))?;
        let path = rel(&raw.to_string_lossy()).to_string();
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b.to_string()),
            None => (String::new(), path.clone()),
        };
        let kind = entry.header().entry_type();
        for (i, target) in want.iter().enumerate() {
            // A file found in this layer wins over this layer's own whiteouts, which hide lower
            // layers only.
            if matches!(seen[i], Seen::File(_)) {
                continue;
            }
            if path == *target {
                if kind.is_file() || kind == tar::EntryType::Continuous {
                    let mut text = String::new();
                    let size = entry.header().size().unwrap_or(0);
                    if size > MAX_FILE_BYTES {
                        return Err(format!(
                            "/{target} is {size} bytes (more than {MAX_FILE_BYTES})"
                        ));
                    }
                    (&mut entry)
                        .take(MAX_FILE_BYTES)
                        .read_to_string(&mut text)
                        .map_err(|e| format!("read /{target}: {e}"))?;
                    seen[i] = Seen::File(text);
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let to = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Err(format!(
                        "/{target} is a {} to {to:?}: not supported (a regular file is)",
                        if kind.is_symlink() {
                            "symbolic link"
                        } else {
                            "hard link"
                        }
                    ));
                } else {
                    // A directory or device where the file should be: no such file.
                    seen[i] = Seen::Hidden;
                }
                continue;
            }
            if base == OPAQUE {
                if is_under(target, &dir) {
                    seen[i] = Seen::Hidden;
                }
            } else if let Some(hidden) = base.strip_prefix(WHITEOUT) {
                let gone = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                if *target == gone || is_under(target, &gone) {
                    seen[i] = Seen::Hidden;
                }
            } else if is_under(target, &path) && !kind.is_dir() {
                if kind.is_symlink() {
                    return Err(format!(
                        "/{path} (a parent of /{target}) is a symbolic link: not supported"
                    ));
                }
                seen[i] = Seen::Hidden;
            }
        }
        if seen.iter().all(|s| matches!(s, Seen::File(_))) {
            // Dropping the reader ends the fetch of the rest of this layer.
            return Ok(seen);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const DOCKER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            match e {
                E::File(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, p, *d).expect("append");
                }
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, p, &[][..]).expect("append");
                }
                E::Symlink(p, to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, p, to).expect("append");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn compress(media_type: &str, tar: Vec<u8>) -> Vec<u8> {
        if media_type.ends_with("gzip") {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).expect("gzip");
            e.finish().expect("gzip")
        } else if media_type.ends_with("zstd") {
            ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest)
        } else {
            tar
        }
    }

    /// Layers in memory, served in small chunks; remembers which were opened.
    struct Mem {
        blobs: Vec<(String, Vec<u8>)>,
        opened: Mutex<Vec<String>>,
        chunk: usize,
    }

    #[async_trait]
    impl LayerOpener for Mem {
        async fn open_layer(
            &self,
            _image: &ImageFacts,
            layer: &LayerFacts,
        ) -> Result<ChunkStream, ImageFactsError> {
            self.opened.lock().unwrap().push(layer.digest.clone());
            let data = self
                .blobs
                .iter()
                .find(|(d, _)| *d == layer.digest)
                .map(|(_, b)| b.clone())
                .expect("layer in memory");
            let chunks: Vec<Result<Bytes, ImageFactsError>> = data
                .chunks(self.chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(Box::pin(futures::stream::iter(chunks)))
        }
    }

    /// Builds an image of `layers` (lowest first, each with its media type).
    fn image(layers: Vec<(&str, Vec<u8>)>) -> (ImageFacts, Mem) {
        let mut facts = Vec::new();
        let mut blobs = Vec::new();
        for (i, (mt, tar)) in layers.into_iter().enumerate() {
            let blob = compress(mt, tar);
            let digest = format!("sha256:{:064x}", i + 1);
            facts.push(LayerFacts {
                digest: digest.clone(),
                diff_id: digest.clone(),
                media_type: mt.to_string(),
                size: blob.len() as u64,
            });
            blobs.push((digest, blob));
        }
        (
            ImageFacts {
                reference: "img".into(),
                name: "docker.io/library/img:latest".into(),
                manifest_digest: format!("sha256:{:064x}", 99),
                index_digest: None,
                config_digest: format!("sha256:{:064x}", 98),
                config: Default::default(),
                layers: facts,
            },
            Mem {
                blobs,
                opened: Mutex::new(Vec::new()),
                chunk: 4096,
            },
        )
    }

    fn run(image: &ImageFacts, mem: &Mem) -> (Result<Accounts, ImageFactsError>, Counters) {
        let counters = Counters::default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let r = rt.block_on(read_accounts(mem, image, &counters));
        (r, counters)
    }

    const PW_BASE: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";
    const GR_BASE: &[u8] = b"root:x:0:\n";
    const PW_APP: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";

    fn base() -> Vec<u8> {
        tar_of(&[
            E::Dir("etc/"),
            E::File("etc/passwd", PW_BASE),
            E::File("etc/group", GR_BASE),
            E::Dir("bin/"),
        ])
    }

    #[test]
    fn top_layer_wins_and_lower_layers_are_not_opened() {
        for mt in [TAR, GZ, ZST, DOCKER_GZ] {
            let top = tar_of(&[
                E::File("./etc/passwd", PW_APP),
                E::File("./etc/group", b"root:x:0:\napp:x:1000:\n"),
            ]);
            let (img, mem) = image(vec![(GZ, base()), (mt, top)]);
            let (r, counters) = run(&img, &mem);
            let acc = r.unwrap_or_else(|e| panic!("{mt}: {e}"));
            assert_eq!(
                acc.passwd.as_deref(),
                Some(std::str::from_utf8(PW_APP).unwrap())
            );
            assert_eq!(acc.group.as_deref(), Some("root:x:0:\napp:x:1000:\n"));
            assert_eq!(
                *mem.opened.lock().unwrap(),
                vec![img.layers[1].digest.clone()]
            );
            assert_eq!(counters.snapshot().layers_opened, 1);
        }
    }

    #[test]
    fn files_split_across_layers() {
        let top = tar_of(&[E::Dir("etc/"), E::File("etc/passwd", PW_APP)]);
        let (img, mem) = image(vec![(ZST, base()), (GZ, top)]);
        let acc = run(&img, &mem).0.unwrap();
        assert_eq!(
            acc.passwd.as_deref(),
            Some(std::str::from_utf8(PW_APP).unwrap())
        );
        assert_eq!(
            acc.group.as_deref(),
            Some(std::str::from_utf8(GR_BASE).unwrap())
        );
        assert_eq!(mem.opened.lock().unwrap().len(), 2);
    }

    #[test]
    fn whiteout_hides_the_lower_file() {
        let top = tar_of(&[E::File("etc/.wh.passwd", b"")]);
        let (img, mem) = image(vec![(GZ, base()), (GZ, top)]);
        let acc = run(&img, &mem).0.unwrap();
        assert_eq!(acc.passwd, None);
        assert_eq!(
            acc.group.as_deref(),
            Some(std::str::from_utf8(GR_BASE).unwrap())
        );
    }

    #[test]
    fn opaque_dir_hides_lower_files_but_not_its_own() {
        let top = tar_of(&[
            E::Dir("etc/"),
            E::File("etc/.wh..wh..opq", b""),
            E::File("etc/group", b"g:x:5:\n"),
        ]);
        let (img, mem) = image(vec![(GZ, base()), (TAR, top)]);
        let acc = run(&img, &mem).0.unwrap();
        assert_eq!(acc.passwd, None);
        assert_eq!(acc.group.as_deref(), Some("g:x:5:\n"));
        // Both decided in the top layer: the base is never opened.
        assert_eq!(mem.opened.lock().unwrap().len(), 1);
    }

    #[test]
    fn whiteout_of_etc_and_a_file_in_the_same_layer() {
        // The whiteout hides lower layers; the file this layer adds stays.
        let top = tar_of(&[E::File(".wh.etc", b""), E::File("etc/passwd", PW_APP)]);
        let (img, mem) = image(vec![(GZ, base()), (GZ, top)]);
        let acc = run(&img, &mem).0.unwrap();
        assert_eq!(
            acc.passwd.as_deref(),
            Some(std::str::from_utf8(PW_APP).unwrap())
        );
        assert_eq!(acc.group, None);
    }

    #[test]
    fn image_without_the_files() {
        let (img, mem) = image(vec![(GZ, tar_of(&[E::Dir("bin/")]))]);
        assert_eq!(run(&img, &mem).0.unwrap(), Accounts::default());
    }

    #[test]
    fn stops_reading_a_layer_once_both_are_found() {
        // Incompressible filler after the files: most of the layer must stay unread.
        let mut filler = vec![0u8; 8 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in filler.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let top = tar_of(&[
            E::File("etc/passwd", PW_APP),
            E::File("etc/group", GR_BASE),
            E::File("data/blob", &filler),
        ]);
        let (img, mem) = image(vec![(GZ, base()), (GZ, top)]);
        let total = img.layers[1].size;
        let (r, counters) = run(&img, &mem);
        r.unwrap();
        let read = counters.snapshot().layer_bytes;
        assert!(read > 0);
        assert!(
            read < total / 4,
            "read {read} of {total} compressed bytes of the top layer"
        );
    }

    #[test]
    fn symlinked_passwd_is_an_error_naming_layer_and_target() {
        let top = tar_of(&[E::Symlink("etc/passwd", "/usr/lib/passwd")]);
        let (img, mem) = image(vec![(GZ, base()), (GZ, top)]);
        let err = run(&img, &mem).0.unwrap_err().to_string();
        assert!(err.contains(&img.layers[1].digest), "{err}");
        assert!(err.contains("/usr/lib/passwd"), "{err}");
    }

    #[test]
    fn corrupt_layer_names_it() {
        let (img, mut mem) = image(vec![(GZ, base())]);
        mem.blobs[0].1 = b"not gzip at all".to_vec();
        let err = run(&img, &mem).0.unwrap_err().to_string();
        assert!(err.contains(&img.layers[0].digest), "{err}");
        assert!(err.contains("docker.io/library/img:latest"), "{err}");
    }

    #[test]
    fn oversized_passwd_is_refused() {
        let big = vec![b'x'; (MAX_FILE_BYTES + 1) as usize];
        let top = tar_of(&[E::File("etc/passwd", &big)]);
        let (img, mem) = image(vec![(TAR, top)]);
        let err = run(&img, &mem).0.unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(rel("./etc/passwd"), "etc/passwd");
        assert_eq!(rel("/etc/"), "etc");
        assert!(is_under("etc/passwd", "etc"));
        assert!(is_under("etc/passwd", ""));
        assert!(!is_under("etc/passwd", "et"));
        assert!(!is_under("etc", "etc"));
    }
}
