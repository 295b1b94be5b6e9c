//! `kata-cc policy gen` as a user runs it: the built binary on manifest files. Usage and input
//! errors (one line naming file:line and the field, kind or image; exit status 1 or 2; the
//! file untouched) need no image; the full run reads images from a loopback registry
//! (Debian's docker-registry) this test starts and fills.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

fn kata_cc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(args)
        .output()
        .expect("run kata-cc")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A manifest in a temp dir.
struct Manifest {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Manifest {
    fn new(content: &str) -> Manifest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod.yaml");
        std::fs::write(&path, content).unwrap();
        Manifest { _dir: dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }
}

const POD: &str = "\
# a comment that stays
apiVersion: v1
kind: Pod
metadata:
  name: one
spec:
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'echo hi; sleep 3600']
";

/// One input error: exit status 1, one stderr line, the file as it was.
fn input_error(content: &str, extra: &[&str]) -> String {
    let m = Manifest::new(content);
    let mut args = vec!["policy", "gen", "-y", m.path()];
    args.extend_from_slice(extra);
    let out = kata_cc(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(m.read(), content, "the manifest was written");
    err.trim_end()
        .replace(&format!("{}:", m.path()), "pod.yaml:")
}

#[test]
fn input_errors_name_the_line_and_write_nothing() {
    let pod = POD.replace("IMAGE", "busybox:1.36");
    assert_eq!(
        input_error(
            &pod.replace(
                "    command:",
                "    volumeDevices: [{name: d, devicePath: /dev/xvda}]\n    command:"
            ),
            &[]
        ),
        "kata-cc policy gen: pod.yaml:10: spec.containers[0].volumeDevices: not supported"
    );
    assert_eq!(
        input_error(
            &format!("{pod}---\nkind: Gadget\nmetadata: {{name: g}}\n"),
            &[]
        ),
        "kata-cc policy gen: pod.yaml:12: kind Gadget: not supported (kinds with pods: Pod, \
         Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, \
         List; and ConfigMap, Secret)"
    );
    // YAML allows no tab in indentation.
    let e = input_error(&pod.replace("    image:", "\timage:"), &[]);
    assert!(
        e.starts_with("kata-cc policy gen: pod.yaml:9: not YAML: "),
        "{e}"
    );
    // An image the registry does not have (nothing listens on the discard port).
    let e = input_error(
        &POD.replace("IMAGE", "127.0.0.1:9/nope:1"),
        &[
            "--insecure-registry",
            "127.0.0.1:9",
            "--pause-image",
            "127.0.0.1:9/pause:3.6",
        ],
    );
    assert!(
        e.starts_with("kata-cc policy gen: pod.yaml:9: spec.containers[0].image: "),
        "{e}"
    );
    assert!(e.contains("127.0.0.1:9/nope:1"), "{e}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = kata_cc(&["policy", "gen", "-r"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("kata-cc policy gen: -y/--yaml-file is required"));
    let out = kata_cc(&[
        "policy",
        "gen",
        "-y",
        "x.yaml",
        "--allow-exec-command",
        "date",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected a JSON array of strings"));
    let out = kata_cc(&["policy", "gen", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("kata-cc policy gen -y|--yaml-file FILE"));
    let out = kata_cc(&["policy", "gen", "-y", "/nonexistent/pod.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("kata-cc policy gen: /nonexistent/pod.yaml: No such file")
    );
    let out = kata_cc(&["help"]);
    assert!(text(&out.stdout).contains("  policy gen -y POD.yaml"));
}

// ---------------------------------------------------------------------------------------------
// A loopback registry with two small images.

/// Debian's registry on a loopback port; ended by PID on drop.
struct Registry {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}}}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/docker-registry (Debian package docker-registry)");
        let r = Registry {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(&r.addr, "GET", "/v2/", &[], &[]).map(|x| x.0).ok() != Some(200) {
            assert!(
                Instant::now() < deadline,
                "registry on {} did not answer",
                r.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
        let (code, headers, _) = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(code, 202);
        let location = header(&headers, "location").unwrap();
        let path = location
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (code, _, body) = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        )
        .unwrap();
        assert_eq!(code, 201, "{}", text(&body));
        digest
    }

    /// An image of one layer (an empty tar) with `config` (the image config's `config`).
    fn push(&self, repo: &str, tag: &str, config: serde_json::Value) -> String {
        let tar = vec![0u8; 1024];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        })
        .to_string();
        let layer_digest = self.push_blob(repo, &layer);
        let config_digest = self.push_blob(repo, config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
        })
        .to_string();
        let (code, _, body) = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            manifest.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 201, "{}", text(&body));
        diff_id
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Ours, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request (`Connection: close`).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((code, headers, raw[end + 4..].to_vec()))
}

fn annotation(manifest: &str, key: &str) -> Option<String> {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .map(str::to_string)
}

/// The full run: images from the registry, the annotation written in place (the comment and
/// the other document kept), the digest the shim will compute, `-r`, `--initdata`.
#[test]
fn generates_from_a_loopback_registry() {
    if !Path::new("/usr/bin/docker-registry").is_file() {
        panic!("/usr/bin/docker-registry is missing (make deps)");
    }
    let r = Registry::start();
    r.push(
        "pause",
        "3.6",
        serde_json::json!({"User": "65535:65535", "Entrypoint": ["/pause"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"}),
    );
    let diff_id = r.push(
        "busybox",
        "1.36",
        serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
    );
    let image = format!("{}/busybox:1.36", r.addr);
    let service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}   # kept\nspec: {ports: [{port: 80}]}\n";
    let content = format!("{}{service}", POD.replace("IMAGE", &image));
    let m = Manifest::new(&content);
    let pause = format!("{}/pause:3.6", r.addr);
    let base = [
        "policy",
        "gen",
        "-y",
        m.path(),
        "--insecure-registry",
        &r.addr,
        "--pause-image",
        &pause,
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        let out = kata_cc(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };

    // -r: the Rego on stdout, the file untouched.
    let raw = text(&run(&["-r"]).stdout);
    assert!(raw.starts_with("# kata-cc's rules"), "{raw}");
    assert!(raw.contains(&diff_id), "the layer is pinned");
    assert_eq!(m.read(), content);

    // In place, with the digest.
    let out = run(&["--print-digest"]);
    let digest = text(&out.stdout).trim().to_string();
    let written = m.read();
    assert!(written.starts_with("# a comment that stays\n"), "{written}");
    assert!(written.ends_with(service), "{written}");
    let value = annotation(&written, "io.katacontainers.config.agent.policy").unwrap();
    let rego = text(
        &base64::engine::general_purpose::STANDARD
            .decode(&value)
            .unwrap(),
    );
    assert_eq!(rego, raw);
    assert_eq!(digest, hex(&Sha256::digest(rego.as_bytes())));
    kata_cc_policy::PolicyEngine::new(&rego).unwrap();

    // Init-data instead: the other annotation goes, the digest is the document's.
    let out = run(&["--initdata", "--print-digest"]);
    let written = m.read();
    assert!(annotation(&written, "io.katacontainers.config.agent.policy").is_none());
    let value = annotation(&written, "io.katacontainers.config.hypervisor.cc_init_data").unwrap();
    let p = kata_cc_shim::policy_source::from_initdata_annotation(&value).unwrap();
    assert_eq!(p.text, raw);
    assert_eq!(text(&out.stdout).trim(), p.digest_hex());

    // An image the live registry does not have: one error naming the field and the image,
    // the manifest as it was.
    let before = m.read();
    let missing = format!("{}/busybox:9.99", r.addr);
    let mut a = base.to_vec();
    let replaced = before.replace(&image, &missing);
    std::fs::write(m.path(), &replaced).unwrap();
    a.push("-r");
    let out = kata_cc(&a);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("spec.containers[0].image"), "{err}");
    assert!(err.contains(&missing), "{err}");
    assert_eq!(m.read(), replaced, "the manifest was written");
}
