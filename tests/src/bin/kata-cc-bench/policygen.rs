//! `make bench`, policy generation part: the time `kata-cc policy gen` and Kata's genpolicy take
//! for the same manifests from the same loopback registry, rounds interleaved (tool by tool,
//! manifest by manifest), medians. Manifests: a one-container Pod; a Deployment with two
//! containers (env, an exec readiness probe); a Pod of five containers whose images are
//! distinct and `KATA_CC_BENCH_POLICYGEN_MB` (default 300) MB each (a small base layer with
//! /etc/passwd and one layer of incompressible bytes, gzip). kata-cc runs twice: with the
//! registry as source and with a private containerd's content store (the images pulled into it
//! first, as a node has them). genpolicy downloads every layer of every image (to read
//! /etc/passwd); kata-cc reads manifests and configs only. Besides the two CLIs, the image
//! facts alone are timed in this process through kata-cc's library (cold sources each round),
//! with the bytes they fetched.
//!
//! genpolicy: `$KATA_CC_GENPOLICY_DIR` or `<repo>/../shared/tools/genpolicy` (its README):
//! a settings dir with a drop-in naming the pause image of this registry, run on a copy of the
//! manifest (it rewrites `-y FILE` in place), in a scratch working dir (no layer cache).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kata_cc_shim::policy_gen::images::{
    ContainerdSource, DockerCredentials, ImageSource, RegistrySource,
};
use kata_cc_tests::registry::Registry;
use kata_cc_tests::{paths, Containerd, Options, TestImage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{stats, stats_json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const BIG_IMAGES: usize = 5;
/// A generated annotation's name prefix (policy or init-data).
const ANNOTATION_PREFIX: &str = "io.katacontainers.config.";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Incompressible bytes (xorshift), distinct per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    out
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("tar append");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() + (data.len() >> 6)),
        flate2::Compression::fast(),
    );
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Builds image `i` (base layer + `mb` MB of noise, gzip) and pushes it as `kata-cc/big<i>:1`.
fn push_big(reg: &Registry, i: usize, mb: usize) -> String {
    let base = tar_of(&[
        ("etc/", b""),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", b"root:x:0:\n"),
    ]);
    let data = tar_of(&[
        ("data/", b""),
        (&format!("data/blob-{i}"), &noise(mb << 20, i as u64 + 1)),
    ]);
    let (base_gz, data_gz) = (gzip(&base), gzip(&data));
    let (base_d, data_d) = (sha256(&base_gz), sha256(&data_gz));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&data)]},
    }))
    .expect("config");
    let config_d = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [
            {"mediaType": GZ, "digest": base_d, "size": base_gz.len()},
            {"mediaType": GZ, "digest": data_d, "size": data_gz.len()},
        ],
    }))
    .expect("manifest");
    reg.push_blobs(
        &format!("kata-cc/big{i}"),
        "1",
        OCI_MANIFEST,
        &manifest,
        &[
            (config_d.as_str(), &config[..]),
            (base_d.as_str(), &base_gz[..]),
            (data_d.as_str(), &data_gz[..]),
        ],
    )
    .reference
}

struct Case {
    name: &'static str,
    containers: usize,
    yaml: String,
    /// Every image the policy names, the pause image first.
    images: Vec<String>,
}

fn cases(addr: &str, pause: &str, big: &[String]) -> Vec<Case> {
    let small = format!("{addr}/kata-cc/busybox:1");
    let small2 = format!("{addr}/kata-cc/busybox:2");
    let one = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench-one\nspec:\n  runtimeClassName: kata-cc\n  \
         containers:\n  - name: app\n    image: {small}\n    command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
    );
    let two = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bench-two\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels:\n      app: bench-two\n  template:\n    metadata:\n      labels:\n        \
         app: bench-two\n    spec:\n      runtimeClassName: kata-cc\n      containers:\n      - name: web\n        \
         image: {small}\n        command: [\"sh\", \"-c\", \"sleep 3600\"]\n        env:\n        - name: MODE\n          \
         value: bench\n        readinessProbe:\n          exec:\n            command: [\"cat\", \"/etc/hostname\"]\n      \
         - name: sidecar\n        image: {small2}\n        command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
    );
    let mut five = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench-five\nspec:\n  runtimeClassName: kata-cc\n  containers:\n"
        .to_string();
    for (i, image) in big.iter().enumerate() {
        five.push_str(&format!(
            "  - name: c{i}\n    image: {image}\n    command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
        ));
    }
    let with_pause = |v: Vec<String>| {
        let mut all = vec![pause.to_string()];
        all.extend(v);
        all
    };
    vec![
        Case {
            name: "pod, 1 container",
            containers: 1,
            yaml: one,
            images: with_pause(vec![small.clone()]),
        },
        Case {
            name: "deployment, 2 containers",
            containers: 2,
            yaml: two,
            images: with_pause(vec![small, small2]),
        },
        Case {
            name: "pod, 5 containers x large images",
            containers: BIG_IMAGES,
            yaml: five,
            images: with_pause(big.to_vec()),
        },
    ]
}

/// One generator invocation.
struct Tool {
    name: &'static str,
    /// Command for a manifest copy at the given path.
    command: Box<dyn Fn(&Path) -> Command>,
    /// Why it does not run (set after its first failure, or up front).
    unavailable: Option<String>,
}

/// Runs `tool` on a fresh copy of `yaml`; the seconds, or why it failed.
fn run_tool(tool: &Tool, yaml: &str, work: &Path, tag: &str) -> Result<f64, String> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let file = work.join(format!("{tag}.yaml"));
    std::fs::write(&file, yaml).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut c = (tool.command)(&file);
    c.current_dir(work);
    let (out, secs) = run_timed(c, Duration::from_secs(1800))?;
    if !out.status.success() {
        // The output goes to stderr; the table gets the first line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("bench: {}: {stderr}", tool.name);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("exit {:?}: {}", out.status.code(), first.trim()));
    }
    let written = std::fs::read_to_string(&file).unwrap_or_default();
    if !written.contains(ANNOTATION_PREFIX) {
        return Err(format!(
            "exit 0 but no {ANNOTATION_PREFIX}* annotation written to {}",
            file.display()
        ));
    }
    Ok(secs)
}

/// Runs `c` to its exit and times it to the exit itself (a blocking wait in a thread, not a
/// poll, so short runs are not rounded up to a polling period); killed by PID on timeout.
fn run_timed(mut c: Command, timeout: Duration) -> Result<(std::process::Output, f64), String> {
    use std::process::Stdio;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = child.wait_with_output();
        let _ = tx.send((r, t.elapsed().as_secs_f64()));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(out), secs)) => Ok((out, secs)),
        Ok((Err(e), _)) => Err(format!("{c:?}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!(
                "{c:?}: no exit within {}s (killed)",
                timeout.as_secs()
            ))
        }
    }
}

fn genpolicy_dir() -> PathBuf {
    std::env::var_os("KATA_CC_GENPOLICY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::repo().join("../shared/tools/genpolicy"))
}

/// A copy of genpolicy's settings with a drop-in naming this registry's pause image.
fn genpolicy_settings(dir: &Path, gp: &Path, pause: &str) -> PathBuf {
    let settings = dir.join("genpolicy-settings");
    let _ = std::fs::remove_dir_all(&settings);
    std::fs::create_dir_all(settings.join("genpolicy-settings.d")).expect("settings dir");
    std::fs::copy(
        gp.join("genpolicy-settings.json"),
        settings.join("genpolicy-settings.json"),
    )
    .expect("copy genpolicy-settings.json");
    let patch = json!([{ "op": "replace", "path": "/cluster_config/pause_container_image", "value": pause }]);
    std::fs::write(
        settings.join("genpolicy-settings.d/10-pause.json"),
        format!("{patch:#}\n"),
    )
    .expect("pause drop-in");
    settings
}

/// Image facts of `images` through kata-cc's library, cold: seconds, bytes fetched.
fn library_facts(
    rt: &tokio::runtime::Runtime,
    source: &dyn Fn() -> Box<dyn ImageSource>,
    images: &[String],
) -> Result<(f64, u64), String> {
    rt.block_on(async {
        let t = Instant::now();
        let src = source();
        let all = facts_of(src.as_ref(), images).await?;
        let secs = t.elapsed().as_secs_f64();
        Ok((secs, all))
    })
}

/// Facts of every image, one after the other; returns the layer bytes the facts' sizes add up
/// to (what genpolicy downloads for them).
async fn facts_of(src: &dyn ImageSource, images: &[String]) -> Result<u64, String> {
    let mut layer_bytes = 0;
    for i in images {
        let facts = src.image(i).await.map_err(|e| format!("{i}: {e}"))?;
        layer_bytes += facts.layers.iter().map(|l| l.size).sum::<u64>();
    }
    Ok(layer_bytes)
}

pub fn run(runs: usize) -> Value {
    let mb = env_usize("KATA_CC_BENCH_POLICYGEN_MB", 300);
    // Not `bench-policygen-<pid>`: that is the private containerd's own dir (emptied at start).
    let dir = paths::e2e_dir().join(format!("policygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let reg = Registry::start(&dir.join("registry"));
    let addr = reg.addr.clone();
    let busybox = TestImage::busybox();
    let pause = reg.push(&busybox, "kata-cc/pause", "3.6").reference;
    reg.push(&busybox, "kata-cc/busybox", "1");
    reg.push(&busybox, "kata-cc/busybox", "2");
    println!("== policy generation: building {BIG_IMAGES} images of {mb} MB (incompressible, gzip) in {addr}");
    let t = Instant::now();
    let big: Vec<String> = (0..BIG_IMAGES).map(|i| push_big(&reg, i, mb)).collect();
    println!("   built and pushed in {:.0} s", t.elapsed().as_secs_f64());
    let cases = cases(&addr, &pause, &big);

    // The node's content store: every image pulled into a private containerd (CRI off).
    let cd = Containerd::start_with(
        "bench-policygen",
        Options {
            images: Vec::new(),
            kata: false,
            cri: None,
        },
    );
    let mut all_images: Vec<String> = cases.iter().flat_map(|c| c.images.clone()).collect();
    all_images.sort();
    all_images.dedup();
    for image in &all_images {
        cd.ctr_with(
            &["images", "pull", "--plain-http", image],
            None,
            Duration::from_secs(1200),
        )
        .assert_success();
    }
    let socket = cd.socket.display().to_string();
    let namespace = cd.namespace.to_string();

    let kata_cc = paths::bin_dir().join("kata-cc");
    let gp = genpolicy_dir();
    let gp_bin = gp.join("genpolicy");
    let mut tools: Vec<Tool> = Vec::new();
    {
        let (addr, pause, kata_cc) = (addr.clone(), pause.clone(), kata_cc.clone());
        tools.push(Tool {
            name: "kata-cc policy gen (registry)",
            command: Box::new(move |file| {
                let mut c = Command::new(&kata_cc);
                c.args(["policy", "gen", "-y"]).arg(file).args([
                    "--insecure-registry",
                    &addr,
                    "--pause-image",
                    &pause,
                ]);
                c
            }),
            unavailable: None,
        });
    }
    {
        let (socket, namespace, pause, kata_cc) = (
            socket.clone(),
            namespace.clone(),
            pause.clone(),
            kata_cc.clone(),
        );
        tools.push(Tool {
            name: "kata-cc policy gen (containerd)",
            command: Box::new(move |file| {
                let mut c = Command::new(&kata_cc);
                c.args(["policy", "gen", "-y"]).arg(file).args([
                    "--containerd-socket",
                    &socket,
                    "--containerd-namespace",
                    &namespace,
                    "--pause-image",
                    &pause,
                ]);
                c
            }),
            unavailable: None,
        });
    }
    {
        let settings = genpolicy_settings(&dir, &gp, &pause);
        let rules = gp.join("rules.rego");
        let addr = addr.clone();
        let gp_bin2 = gp_bin.clone();
        tools.push(Tool {
            name: "genpolicy (registry)",
            command: Box::new(move |file| {
                let mut c = Command::new(&gp_bin2);
                c.arg("-p")
                    .arg(&rules)
                    .arg("-j")
                    .arg(&settings)
                    .arg(format!("--insecure-registry={addr}"))
                    .arg("-y")
                    .arg(file);
                c
            }),
            unavailable: (!gp_bin.is_file())
                .then(|| format!("NOT RUN: no genpolicy at {}", gp_bin.display())),
        });
    }
    if !kata_cc.is_file() {
        for t in tools.iter_mut().filter(|t| t.name.starts_with("kata-cc")) {
            t.unavailable = Some(format!("NOT RUN: no {}", kata_cc.display()));
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let insecure = vec![addr.clone()];
    let registry_source = move || -> Box<dyn ImageSource> {
        Box::new(RegistrySource::with_credentials(
            insecure.clone(),
            DockerCredentials::default(),
        ))
    };

    // times[case][tool], library[case] = (registry, containerd)
    let mut times: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); tools.len()]; cases.len()];
    let mut lib_reg: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut lib_cd: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut layer_bytes: Vec<u64> = vec![0; cases.len()];
    let mut lib_failure: Option<String> = None;
    let work = dir.join("work");
    for round in 0..runs {
        for (ci, case) in cases.iter().enumerate() {
            for (ti, tool) in tools.iter_mut().enumerate() {
                if tool.unavailable.is_some() {
                    continue;
                }
                match run_tool(tool, &case.yaml, &work, &format!("r{round}-c{ci}-t{ti}")) {
                    Ok(s) => times[ci][ti].push(s),
                    Err(e) => {
                        eprintln!("bench: {} on {:?}: {e}", tool.name, case.name);
                        tool.unavailable = Some(format!("failed on {:?}: {e}", case.name));
                    }
                }
            }
            if lib_failure.is_none() {
                match library_facts(&rt, &registry_source, &case.images) {
                    Ok((secs, bytes)) => {
                        lib_reg[ci].push(secs);
                        layer_bytes[ci] = bytes;
                    }
                    Err(e) => lib_failure = Some(e),
                }
                // Connecting to the local socket is outside the timed part.
                match rt.block_on(ContainerdSource::connect(&socket, &namespace)) {
                    Ok(src) => {
                        let t = Instant::now();
                        match rt.block_on(facts_of(&src, &case.images)) {
                            Ok(_) => lib_cd[ci].push(t.elapsed().as_secs_f64()),
                            Err(e) => lib_failure = Some(e),
                        }
                    }
                    Err(e) => lib_failure = Some(e.to_string()),
                }
            }
        }
    }
    drop(reg);
    cd.finish();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "== policy generation time, {runs} interleaved rounds (seconds: median, min, max); images from a loopback registry"
    );
    println!(
        "{:<34} {:>4} {:>10}  {:<42} {:>7} {:>7} {:>7}",
        "manifest", "ctrs", "layers MB", "tool", "median", "min", "max"
    );
    let mut doc_cases = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let mut tools_json = serde_json::Map::new();
        let mbytes = layer_bytes[ci] as f64 / 1e6;
        let mut row = |label: &str, v: &[f64], why: Option<&String>| {
            if v.is_empty() {
                let why = why.cloned().unwrap_or_else(|| "no runs".to_string());
                println!(
                    "{:<34} {:>4} {:>10.1}  {label:<42} {why}",
                    case.name, case.containers, mbytes
                );
                tools_json.insert(label.to_string(), json!({ "error": why }));
            } else {
                let (m, lo, hi) = stats(v);
                println!(
                    "{:<34} {:>4} {:>10.1}  {label:<42} {m:>7.3} {lo:>7.3} {hi:>7.3}",
                    case.name, case.containers, mbytes
                );
                tools_json.insert(label.to_string(), stats_json(v));
            }
        };
        for (ti, tool) in tools.iter().enumerate() {
            row(tool.name, &times[ci][ti], tool.unavailable.as_ref());
        }
        row(
            "kata-cc image facts, library (registry)",
            &lib_reg[ci],
            lib_failure.as_ref(),
        );
        row(
            "kata-cc image facts, library (containerd)",
            &lib_cd[ci],
            lib_failure.as_ref(),
        );
        doc_cases.push(json!({
            "manifest": case.name,
            "containers": case.containers,
            "images": case.images,
            "layer_bytes_of_images": layer_bytes[ci],
            "seconds": tools_json,
        }));
    }
    println!(
        "(layers MB: the compressed layers of the pod's images, pause included: what genpolicy downloads; kata-cc reads none of them when no container runs as a named user)"
    );
    json!({
        "runs": runs,
        "large_image_mb": mb,
        "cases": doc_cases,
    })
}
