//! `Registry`: Debian's `docker-registry` on a loopback port with a private storage dir, the
//! image registry a cluster's node pulls from. Images built by hack/oci-image.sh are pushed to
//! it over the registry HTTP API v2 (blob upload POST + PUT, manifest PUT), so a CRI PullImage
//! really fetches them. Stopped on drop by PID (SIGTERM, then SIGKILL), its dir removed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::image::TestImage;
use crate::{paths, procs};

/// Debian's registry binary (package docker-registry, `make deps`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub struct Registry {
    /// `127.0.0.1:<port>`: the host part of the references it serves.
    pub addr: String,
    pub dir: PathBuf,
    child: Child,
}

/// What a push put in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `<addr>/<repo>:<tag>`.
    pub reference: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest: the image id CRI reports for the pulled image.
    pub config_digest: String,
}

impl Registry {
    /// Starts a registry for this test process in `<build/e2e>/registry-<pid>`, after ending
    /// (by PID) registries of earlier test processes that were killed before their drop.
    pub fn start_for_test() -> Registry {
        let base = paths::e2e_dir();
        end_orphans(&base);
        Self::start(&base.join(format!("registry-{}", std::process::id())))
    }

    /// Starts a registry in `dir` (created; emptied first) and waits until `GET /v2/` answers.
    pub fn start(dir: &Path) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: run `make deps` (Debian package docker-registry)"
        );
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("storage"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // A port free now; the registry binds it a moment later (a loopback port taken in
        // between makes the start fail with the registry's message, not a hang).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry.log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{REGISTRY_BIN}: {e}"));
        let mut reg = Registry {
            addr,
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reg.request("GET", "/v2/", &[], &[]) {
                if r.status == 200 {
                    break;
                }
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!("docker-registry exited during start ({st}):\n{}", reg.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 20s:\n{}",
                reg.addr,
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image of an oci-image.sh archive as `<repo>:<tag>` (its blobs, then its
    /// manifest, byte for byte, so digests stay those of the archive).
    pub fn push(&self, img: &TestImage, repo: &str, tag: &str) -> Pushed {
        let blobs = read_archive(&img.archive);
        let index: serde_json::Value = serde_json::from_slice(
            blobs
                .get("index.json")
                .unwrap_or_else(|| panic!("{}: no index.json", img.archive.display())),
        )
        .expect("index.json is JSON");
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .expect("index.json names a manifest")
            .to_string();
        let manifest_bytes = blob(&blobs, &manifest_digest, img);
        let manifest: serde_json::Value =
            serde_json::from_slice(manifest_bytes).expect("manifest is JSON");
        let media_type = manifest["mediaType"]
            .as_str()
            .expect("manifest has a mediaType")
            .to_string();
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("manifest names a config")
            .to_string();
        let mut digests = vec![config_digest.clone()];
        for l in manifest["layers"].as_array().expect("manifest has layers") {
            digests.push(l["digest"].as_str().expect("layer digest").to_string());
        }
        for d in &digests {
            self.push_blob(repo, d, blob(&blobs, d, img));
        }
        let r = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Content-Type", &media_type)],
                manifest_bytes,
            )
            .unwrap_or_else(|e| panic!("PUT manifest {repo}:{tag}: {e}"));
        assert_eq!(
            r.status,
            201,
            "PUT manifest {repo}:{tag}: {}\n{}",
            r.describe(),
            self.log()
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(manifest_digest.as_str()),
            "the registry's digest of the manifest {repo}:{tag}"
        );
        Pushed {
            reference: format!("{}/{repo}:{tag}", self.addr),
            manifest_digest,
            config_digest,
        }
    }

    /// Pushes an image given as its blobs (config and layers, by digest) and its manifest as
    /// `<repo>:<tag>`: images generated in memory (the bench's large ones), not archives.
    pub fn push_blobs(
        &self,
        repo: &str,
        tag: &str,
        manifest_media_type: &str,
        manifest: &[u8],
        blobs: &[(&str, &[u8])],
    ) -> Pushed {
        let parsed: serde_json::Value = serde_json::from_slice(manifest).expect("manifest is JSON");
        let config_digest = parsed["config"]["digest"]
            .as_str()
            .expect("manifest names a config")
            .to_string();
        for (d, data) in blobs {
            self.push_blob(repo, d, data);
        }
        let r = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Content-Type", manifest_media_type)],
                manifest,
            )
            .unwrap_or_else(|e| panic!("PUT manifest {repo}:{tag}: {e}"));
        assert_eq!(r.status, 201, "PUT manifest {repo}:{tag}: {}", r.describe());
        Pushed {
            reference: format!("{}/{repo}:{tag}", self.addr),
            manifest_digest: format!("sha256:{}", hex_digest(manifest)),
            config_digest,
        }
    }

    fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let head = self
            .request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], &[])
            .unwrap_or_else(|e| panic!("HEAD blob {digest}: {e}"));
        if head.status == 200 {
            return;
        }
        let start = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .unwrap_or_else(|e| panic!("POST upload {repo}: {e}"));
        assert_eq!(start.status, 202, "start upload: {}", start.describe());
        let location = start
            .header("location")
            .unwrap_or_else(|| panic!("upload start without Location: {}", start.describe()));
        // Location may be absolute (http://host/...) or a path.
        let path = match location.strip_prefix("http://") {
            Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                data,
            )
            .unwrap_or_else(|e| panic!("PUT blob {digest}: {e}"));
        assert_eq!(
            put.status,
            201,
            "PUT blob {digest}: {}\n{}",
            put.describe(),
            self.log()
        );
    }

    /// One HTTP/1.1 request on a fresh connection (`Connection: close`), with timeouts.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let sock = self
            .addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", self.addr)))?;
        let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        // Large blobs (the bench's 300 MB layers) need longer than small ones.
        let secs = 30 + (body.len() as u64 >> 24);
        s.set_read_timeout(Some(Duration::from_secs(secs)))?;
        s.set_write_timeout(Some(Duration::from_secs(secs)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Response::parse(method, path, &raw)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Registries under `base/registry-<pid>` whose test process `<pid>` is gone: ended by PID
/// (found through /proc by their config path), their dirs removed.
fn end_orphans(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("registry-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() as i32 || procs::alive(owner) {
            continue;
        }
        let config = format!("{}/config.yml", e.path().display());
        for p in procs::all() {
            if p.argv0 == REGISTRY_BIN && p.cmdline.contains(&config) {
                procs::kill_pid(p.pid);
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

struct Response {
    what: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(method: &str, path: &str, raw: &[u8]) -> std::io::Result<Response> {
        let what = format!("{method} {path}");
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("{what}: no HTTP response head")))?;
        let head = String::from_utf8_lossy(&raw[..end]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("{what}: bad status line")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Response {
            what,
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn describe(&self) -> String {
        format!(
            "{} -> {} {}",
            self.what,
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// The files of an oci-layout tar: `index.json` and each blob by digest (`sha256:<hex>`),
/// every blob checked against its name.
fn read_archive(path: &Path) -> HashMap<String, Vec<u8>> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    for e in ar
        .entries()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    {
        let mut e = e.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path().expect("entry path").to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        let key = if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            format!("sha256:{hex}")
        } else if name == "index.json" {
            name
        } else {
            continue;
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .unwrap_or_else(|err| panic!("{}: {key}: {err}", path.display()));
        if let Some(hex) = key.strip_prefix("sha256:") {
            let got = hex_digest(&data);
            assert_eq!(got, hex, "{}: blob {key} has digest {got}", path.display());
        }
        out.insert(key, data);
    }
    out
}

fn blob<'a>(blobs: &'a HashMap<String, Vec<u8>>, digest: &str, img: &TestImage) -> &'a [u8] {
    blobs
        .get(digest)
        .unwrap_or_else(|| panic!("{}: no blob {digest}", img.archive.display()))
}

fn hex_digest(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
