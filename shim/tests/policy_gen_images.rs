//! Host tier, no VM: `kata-cc policy gen`'s image facts against real stores. Images are built
//! here byte for byte (tar layers, gzip or zstd, OCI config and manifest) and pushed to Debian's
//! `docker-registry` on a loopback port, or imported into a private containerd (`ctr images
//! import --no-unpack`, CRI's namespace `k8s.io`). Both sources must give the same facts, read
//! no layer for them, and read layers top down only for /etc/passwd and /etc/group. A small
//! fake registry in this file checks the anonymous bearer-token flow public registries use.
//! Needs `make deps` (docker-registry, containerd, ctr) and root (containerd).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kata_cc_shim::policy_gen::images::{
    Accounts, ContainerdSource, DockerCredentials, ImageFacts, ImageFactsError, ImageSource,
    RegistrySource,
};
use sha2::{Digest, Sha256};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tar of (path, content) files; a path ending in '/' is a directory.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
        }
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("tar append");
    }
    b.into_inner().expect("tar")
}

fn compress(media_type: &str, tar: &[u8]) -> Vec<u8> {
    if media_type.ends_with("gzip") {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(tar).expect("gzip");
        e.finish().expect("gzip")
    } else if media_type.ends_with("zstd") {
        ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
    } else {
        tar.to_vec()
    }
}

/// An image built here: every blob by digest.
#[derive(Clone)]
struct Built {
    manifest: Vec<u8>,
    manifest_digest: String,
    manifest_type: String,
    config_digest: String,
    /// (digest, diff_id, media type, size), lowest first.
    layers: Vec<(String, String, String, u64)>,
    blobs: HashMap<String, Vec<u8>>,
}

fn build(layers: &[(&str, Vec<u8>)], user: &str, env: &[&str], manifest_type: &str) -> Built {
    let mut blobs = HashMap::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut out_layers = Vec::new();
    for (mt, tar) in layers {
        let blob = compress(mt, tar);
        let d = digest(&blob);
        let diff = digest(tar);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        out_layers.push((d.clone(), diff.clone(), mt.to_string(), blob.len() as u64));
        diff_ids.push(diff);
        blobs.insert(d, blob);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": user, "Env": env, "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = digest(&config);
    let config_type = if manifest_type == DOCKER_MANIFEST {
        "application/vnd.docker.container.image.v1+json"
    } else {
        "application/vnd.oci.image.config.v1+json"
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    blobs.insert(config_digest.clone(), config);
    let manifest_digest = digest(&manifest);
    blobs.insert(manifest_digest.clone(), manifest.clone());
    Built {
        manifest,
        manifest_digest,
        manifest_type: manifest_type.to_string(),
        config_digest,
        layers: out_layers,
        blobs,
    }
}

/// A base layer with the accounts files.
fn base_layer() -> Vec<u8> {
    tar_of(&[
        ("etc/", b""),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", b"root:x:0:\n"),
        ("bin/", b""),
        ("bin/tool", &noise(64 << 10, 1)),
    ])
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, one request per connection.

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head"));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply { status, headers }
}

// ---------------------------------------------------------------------------------------------
// docker-registry on a loopback port, ended by PID on drop.

struct Registry {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: run `make deps` (Debian package docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{REGISTRY_BIN}: {e}"));
        let reg = Registry {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn push_blob(&self, repo: &str, d: &str, data: &[u8]) {
        let start = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            &[],
        );
        assert_eq!(start.status, 202, "start upload");
        let loc = start.header("location").expect("Location").to_string();
        let path = match loc.strip_prefix("http://") {
            Some(rest) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
            None => loc,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={d}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        );
        assert_eq!(put.status, 201, "PUT blob {d}");
    }

    fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            bytes,
        );
        assert_eq!(r.status, 201, "PUT manifest {repo}:{reference}");
    }

    /// Pushes the image's blobs and its manifest as `repo:tag`; returns the reference.
    fn push(&self, img: &Built, repo: &str, tag: &str) -> String {
        for (d, b) in &img.blobs {
            if *d != img.manifest_digest {
                self.push_blob(repo, d, b);
            }
        }
        self.push_manifest(repo, tag, &img.manifest_type, &img.manifest);
        format!("{}/{repo}:{tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM by PID, SIGKILL after 10 s.
fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn registry_source(reg: &Registry) -> RegistrySource {
    RegistrySource::with_credentials(vec![reg.addr.clone()], DockerCredentials::default())
}

fn check_facts(facts: &ImageFacts, img: &Built) {
    assert_eq!(facts.manifest_digest, img.manifest_digest);
    assert_eq!(facts.config_digest, img.config_digest);
    let got: Vec<(String, String, String, u64)> = facts
        .layers
        .iter()
        .map(|l| {
            (
                l.digest.clone(),
                l.diff_id.clone(),
                l.media_type.clone(),
                l.size,
            )
        })
        .collect();
    assert_eq!(got, img.layers);
}

// ---------------------------------------------------------------------------------------------
// Registry tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_facts_read_manifest_and_config_only() {
    let reg = Registry::start();
    let img = build(
        &[
            (GZ, base_layer()),
            (
                ZST,
                tar_of(&[("app/", b""), ("app/data", &noise(1 << 20, 2))]),
            ),
        ],
        "",
        &["PATH=/usr/bin:/bin", "MODE=test"],
        OCI_MANIFEST,
    );
    let reference = reg.push(&img, "kcc/app", "1.0");
    let src = registry_source(&reg);
    let facts = src.image(&reference).await.expect("facts");
    assert_eq!(facts.reference, reference);
    assert_eq!(facts.name, reference);
    assert_eq!(facts.index_digest, None);
    check_facts(&facts, &img);
    assert_eq!(facts.config.env, vec!["PATH=/usr/bin:/bin", "MODE=test"]);
    assert_eq!(facts.config.cmd, vec!["sh"]);
    assert_eq!(facts.config.user, "");
    let stats = src.stats();
    assert_eq!(stats.layer_bytes, 0, "no layer is fetched for facts");
    assert_eq!(stats.layers_opened, 0);
    let config_len = img.blobs[&img.config_digest].len() as u64;
    assert_eq!(stats.metadata_bytes, img.manifest.len() as u64 + config_len);

    // Pinned by digest: the same facts, the tag-less name containerd records.
    let pinned = format!("{}/kcc/app@{}", reg.addr, img.manifest_digest);
    let facts = src.image(&pinned).await.expect("pinned facts");
    assert_eq!(facts.name, pinned);
    check_facts(&facts, &img);
    // A Docker v2 manifest of the same layers reads the same way.
    let docker = build(&[(DOCKER_GZ, base_layer())], "", &[], DOCKER_MANIFEST);
    let r = reg.push(&docker, "kcc/docker", "v2");
    check_facts(&src.image(&r).await.expect("docker v2"), &docker);
    assert_eq!(src.stats().layer_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_index_resolves_linux_amd64() {
    let reg = Registry::start();
    let amd = build(&[(GZ, base_layer())], "", &[], OCI_MANIFEST);
    let arm = build(
        &[(GZ, tar_of(&[("arm/", b""), ("arm/x", b"arm")]))],
        "",
        &[],
        OCI_MANIFEST,
    );
    for img in [&amd, &arm] {
        for (d, b) in &img.blobs {
            if *d != img.manifest_digest {
                reg.push_blob("kcc/multi", d, b);
            }
        }
        reg.push_manifest(
            "kcc/multi",
            &img.manifest_digest,
            OCI_MANIFEST,
            &img.manifest,
        );
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm.manifest_digest, "size": arm.manifest.len(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": amd.manifest_digest, "size": amd.manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    }))
    .unwrap();
    reg.push_manifest("kcc/multi", "2", OCI_INDEX, &index);
    let src = registry_source(&reg);
    let facts = src
        .image(&format!("{}/kcc/multi:2", reg.addr))
        .await
        .expect("facts");
    assert_eq!(facts.index_digest, Some(digest(&index)));
    check_facts(&facts, &amd);
    assert_eq!(src.stats().layer_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_missing_image_and_plain_http_are_named() {
    let reg = Registry::start();
    let img = build(&[(GZ, base_layer())], "", &[], OCI_MANIFEST);
    reg.push(&img, "kcc/app", "1");
    let src = registry_source(&reg);
    for missing in ["kcc/app:2", "kcc/none:1"] {
        let reference = format!("{}/{missing}", reg.addr);
        let err = src.image(&reference).await.expect_err("missing image");
        assert!(
            matches!(err, ImageFactsError::NotFound { .. }),
            "{reference}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&reference), "{msg}");
        assert!(msg.contains("not found in registry"), "{msg}");
    }
    // Without --insecure-registry the client speaks HTTPS to the plain-HTTP registry.
    let https = RegistrySource::with_credentials(vec![], DockerCredentials::default());
    let reference = format!("{}/kcc/app:1", reg.addr);
    let err = https
        .image(&reference)
        .await
        .expect_err("HTTPS to plain HTTP");
    let msg = err.to_string();
    assert!(matches!(err, ImageFactsError::Registry { .. }), "{msg}");
    assert!(msg.contains(&reg.addr), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_accounts_read_top_down_and_stop_early() {
    let reg = Registry::start();
    let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    let group = "root:x:0:\napp:x:1000:\n";
    // Top layer: the files first, then 4 MiB of noise that must stay unread.
    let top = tar_of(&[
        ("etc/", b""),
        ("etc/passwd", passwd.as_bytes()),
        ("etc/group", group.as_bytes()),
        ("blob", &noise(4 << 20, 3)),
    ]);
    let img = build(&[(GZ, base_layer()), (GZ, top)], "app", &[], OCI_MANIFEST);
    let reference = reg.push(&img, "kcc/users", "1");
    let src = registry_source(&reg);
    let facts = src.image(&reference).await.expect("facts");
    assert_eq!(facts.config.user, "app");
    assert_eq!(src.stats().layer_bytes, 0);
    let acc = src.accounts(&facts).await.expect("accounts");
    assert_eq!(acc.passwd.as_deref(), Some(passwd));
    assert_eq!(acc.group.as_deref(), Some(group));
    let stats = src.stats();
    assert_eq!(stats.layers_opened, 1, "only the top layer is opened");
    assert!(stats.layer_bytes > 0);
    assert!(
        stats.layer_bytes < facts.layers[1].size / 2,
        "read {} of the top layer's {} bytes",
        stats.layer_bytes,
        facts.layers[1].size
    );

    // Group only in the base, passwd whited out in the middle: all three layers are read.
    let middle = tar_of(&[("etc/", b""), ("etc/.wh.passwd", b"")]);
    let top = tar_of(&[("srv/", b""), ("srv/x", &noise(256 << 10, 4))]);
    let img2 = build(
        &[(GZ, base_layer()), (ZST, middle), (GZ, top)],
        "app",
        &[],
        OCI_MANIFEST,
    );
    let reference = reg.push(&img2, "kcc/users", "2");
    let src = registry_source(&reg);
    let facts = src.image(&reference).await.expect("facts");
    let acc = src.accounts(&facts).await.expect("accounts");
    assert_eq!(
        acc,
        Accounts {
            passwd: None,
            group: Some("root:x:0:\n".into())
        }
    );
    assert_eq!(src.stats().layers_opened, 3);
}

// ---------------------------------------------------------------------------------------------
// A fake registry that wants an anonymous bearer token, as Docker Hub and other public ones do.

struct FakeHub {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

const TOKEN: &str = "kata-cc-test-token";

fn not_found() -> (&'static str, String, Vec<u8>) {
    (
        "404 Not Found",
        String::new(),
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
    )
}

fn serve_fake(
    listener: TcpListener,
    blobs: HashMap<String, Vec<u8>>,
    manifest_digest: String,
    log: Arc<Mutex<Vec<String>>>,
) {
    let addr = listener.local_addr().unwrap().to_string();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { return };
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
        }
        log.lock().unwrap().push(format!("{target} {auth}"));
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fakehub\"\r\n"
        );
        let (status, extra, body): (&str, String, Vec<u8>) = if target.starts_with("/token") {
            (
                "200 OK",
                String::new(),
                format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
            )
        } else if auth != format!("Bearer {TOKEN}") {
            (
                "401 Unauthorized",
                challenge,
                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token\"}]}".to_vec(),
            )
        } else if target == "/v2/" {
            ("200 OK", String::new(), b"{}".to_vec())
        } else if let Some(tail) = target.strip_prefix("/v2/team/app/") {
            let (d, is_manifest) = match tail.strip_prefix("manifests/") {
                Some("1") => (manifest_digest.clone(), true),
                Some(d) => (d.to_string(), true),
                None => (tail.strip_prefix("blobs/").unwrap_or("").to_string(), false),
            };
            match blobs.get(&d) {
                Some(b) => (
                    "200 OK",
                    format!(
                        "Docker-Content-Digest: {d}\r\nContent-Type: {}\r\n",
                        if is_manifest {
                            OCI_MANIFEST
                        } else {
                            "application/octet-stream"
                        }
                    ),
                    b.clone(),
                ),
                None => not_found(),
            }
        } else {
            not_found()
        };
        let _ = s.write_all(
            format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let _ = s.write_all(&body);
    }
}

impl FakeHub {
    fn start(img: &Built) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (blobs, md, l) = (img.blobs.clone(), img.manifest_digest.clone(), log.clone());
        // The thread ends with the test process (it only accepts on its loopback port).
        std::thread::spawn(move || serve_fake(listener, blobs, md, l));
        FakeHub { addr, log }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_token_challenge() {
    let img = build(&[(GZ, base_layer())], "", &[], OCI_MANIFEST);
    let hub = FakeHub::start(&img);
    let src =
        RegistrySource::with_credentials(vec![hub.addr.clone()], DockerCredentials::default());
    let facts = src
        .image(&format!("{}/team/app:1", hub.addr))
        .await
        .expect("facts through a bearer token");
    check_facts(&facts, &img);
    let log = hub.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("/token?") && l.contains("repository%3Ateam%2Fapp%3Apull")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/manifests/1") && l.ends_with(&format!("Bearer {TOKEN}"))),
        "{log:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A private containerd (CRI off), ended by PID on drop.

struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        assert!(
            nix::unistd::geteuid().is_root(),
            "containerd needs root: run as root (make test does)"
        );
        for bin in ["containerd", "ctr"] {
            assert!(
                Command::new(bin).arg("--version").output().is_ok(),
                "{bin} is missing: run `make deps`"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
                d.display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let cd = Containerd { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cd.socket.exists() && cd.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(cd.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg("k8s.io")
            .args(args)
            .output()
            .expect("ctr")
    }

    /// Imports `img` as `name` from an OCI layout archive, without unpacking.
    fn import(&self, img: &Built, name: &str) {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": img.manifest_type, "digest": img.manifest_digest,
                "size": img.manifest.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name},
            }]
        }))
        .unwrap();
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
        ];
        for (d, b) in &img.blobs {
            files.push((format!("blobs/sha256/{}", &d["sha256:".len()..]), b.clone()));
        }
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (p.as_str(), &b[..])).collect();
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", digest(name.as_bytes())));
        std::fs::write(&archive, tar_of(&refs)).unwrap();
        let out = self.ctr(&[
            "images",
            "import",
            "--no-unpack",
            &archive.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_content_store_matches_the_registry() {
    let reg = Registry::start();
    let cd = Containerd::start();
    let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33::/srv:/bin/false\n";
    let top = tar_of(&[
        ("etc/", b""),
        ("etc/passwd", passwd.as_bytes()),
        ("srv/", b""),
        ("srv/site", &noise(512 << 10, 5)),
    ]);
    let img = build(
        &[(GZ, base_layer()), (ZST, top)],
        "web",
        &["PATH=/bin"],
        OCI_MANIFEST,
    );
    let reference = reg.push(&img, "kcc/web", "3");
    cd.import(&img, &reference);

    let socket = cd.socket.display().to_string();
    let store = ContainerdSource::connect(&socket, "k8s.io")
        .await
        .expect("connect");
    let from_store = store
        .image(&reference)
        .await
        .expect("facts from containerd");
    let registry = registry_source(&reg);
    let from_registry = registry
        .image(&reference)
        .await
        .expect("facts from registry");
    assert_eq!(from_store, from_registry);
    check_facts(&from_store, &img);
    assert_eq!(store.stats().layer_bytes, 0, "no layer read for facts");
    assert!(store.stats().metadata_bytes > 0);

    let a = store
        .accounts(&from_store)
        .await
        .expect("accounts from containerd");
    let b = registry
        .accounts(&from_registry)
        .await
        .expect("accounts from registry");
    assert_eq!(a, b);
    assert_eq!(a.passwd.as_deref(), Some(passwd));
    assert_eq!(a.group.as_deref(), Some("root:x:0:\n"));
    assert_eq!(store.stats().layers_opened, 2);

    // Not in the store: named with the namespace, nothing pulled.
    let missing = format!("{}/kcc/web:4", reg.addr);
    let err = store.image(&missing).await.expect_err("missing");
    let msg = err.to_string();
    assert!(matches!(err, ImageFactsError::NotFound { .. }), "{msg}");
    assert!(msg.contains(&missing) && msg.contains("k8s.io"), "{msg}");
    // Another namespace does not see the image.
    let other = ContainerdSource::connect(&socket, "default")
        .await
        .expect("connect");
    let err = other.image(&reference).await.expect_err("other namespace");
    assert!(err.to_string().contains("namespace default"), "{err}");

    // No containerd at a socket: an error naming it.
    let gone = cd.dir.path().join("nothing.sock").display().to_string();
    match ContainerdSource::connect(&gone, "k8s.io").await {
        Err(e) => assert!(e.to_string().contains(&gone), "{e}"),
        Ok(s) => {
            let e = s.image(&reference).await.expect_err("no containerd");
            assert!(e.to_string().contains("kcc/web"), "{e}");
        }
    }
}
