//! `make bench`, pod part: a benchmark, not a test. Starts a private containerd (the e2e
//! harness), then measures, interleaving the compared runs so that machine noise hits all alike:
//! - pod start: `ctr run --rm ... true` through kata-cc, a bare boot of the same kernel with the
//!   same QEMU options and a trivial init that powers off, and `ctr run --rm` through runc;
//! - host memory of an idle pod: PSS of the shim, QEMU and the vsock backend (over
//!   `KATA_CC_BENCH_RUNS` idle pods started one after another);
//! - in that idle pod: the agent's RSS (default policy; then, in a second pod, the largest
//!   policy of Kata's conformance corpus), Health round trips, exec of `true`, and 64 MiB of a
//!   process's stdout through the agent versus 64 MiB written by a guest process to a vsock port
//!   and read through the sandbox's hybrid-vsock socket (`kata-cc-vsock-blast`, copied into
//!   the bench image): the raw throughput of the same path, in the same VM;
//! - 4 and 8 pods started at once: all must succeed; total time and host memory per idle pod;
//! - CRI pod start (cri.rs): RunPodSandbox -> CreateContainer -> StartContainer -> the app's
//!   first log line on kata-cc, against `ctr run`, the bare boot and runc over CRI, with the
//!   split of the CRI path from the shim's timeline marks;
//! - pod networking (net.rs): TCP from the host into a kata-cc pod through its VM NIC next to a
//!   runc pod on the same CRI bridge;
//! - policy generation (policygen.rs): `kata-cc policy gen` beside Kata's genpolicy on the same
//!   manifests and loopback registry.
//!
//! Prints tables and writes the same figures as JSON (`KATA_CC_BENCH_OUT`, default
//! build/bench/pods.json; the CRI part `KATA_CC_BENCH_CRI_OUT`, default build/bench/cri.json; the
//! network part `KATA_CC_BENCH_NET_OUT`, default
//! build/bench/net.json; the policy generation part `KATA_CC_BENCH_POLICYGEN_OUT`, default
//! build/bench/policygen.json). `KATA_CC_BENCH_RUNS` (default 5) runs per figure;
//! `KATA_CC_BENCH_PARTS` (default `pods,cri,net,policygen`) which parts run.

mod cri;
mod net;
mod policygen;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_proto::contract::timeline;
use kata_cc_tests::{cmd, paths, procs, Containerd, TestImage};
use serde_json::{json, Value};

const RUNC: &str = "io.containerd.runc.v2";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Median, min and max of seconds.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mid, s[0], s[s.len() - 1])
}

fn stats_json(v: &[f64]) -> Value {
    let (med, min, max) = stats(v);
    json!({"median": med, "min": min, "max": max, "runs": v})
}

/// Waits until none of this containerd's kata-cc shims is left (each QEMU is a shim's child),
/// so that no VM of a previous measurement runs during the next one; panics naming them.
fn settle(cd: &Containerd) {
    let deadline = Instant::now() + paths::leak_grace();
    loop {
        let shims = cd.shims();
        if shims.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kata-cc shims still running {}s after their pods ended: {shims:?}\n{}",
            paths::leak_grace().as_secs(),
            cd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr run --rm --runtime RUNTIME IMAGE ID true`, timed; panics if it fails.
fn timed_run(cd: &Containerd, runtime: &str, id: &str, img: &TestImage) -> f64 {
    let args = ["run", "--rm", "--runtime", runtime, &img.name, id, "true"];
    let t = Instant::now();
    let out = cmd::run(cd.ctr_cmd(&args), None, paths::run_timeout());
    let secs = t.elapsed().as_secs_f64();
    out.assert_success();
    secs
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shim's `timeline <id> <phase> <value>` lines of pod `id` (see shim/src/timeline.rs),
/// from containerd's log (which carries the shims' logs).
fn timeline_marks(cd: &Containerd, id: &str) -> std::collections::BTreeMap<String, u64> {
    let log = std::fs::read_to_string(cd.dir.join("containerd.log")).unwrap_or_default();
    let marker = format!("{} {id} ", timeline::MARKER);
    let mut out = std::collections::BTreeMap::new();
    for line in log.lines() {
        let Some(at) = line.find(&marker) else {
            continue;
        };
        let mut words = line[at + marker.len()..].split_whitespace();
        let (Some(phase), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let digits: String = value.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(v) = digits.parse() {
            out.insert(phase.to_string(), v);
        }
    }
    out
}

/// The phases of one pod's run, in seconds, from its timeline and the bench's own clock around
/// `ctr run`. `None` if a milestone is missing.
fn phases(
    t: &std::collections::BTreeMap<String, u64>,
    begin: u64,
    end: u64,
) -> Option<Vec<(&'static str, f64)>> {
    let g = |k: &str| t.get(k).copied();
    let (spawn, ready, uptime) = (
        g(timeline::QEMU_SPAWN)?,
        g(timeline::AGENT_READY)?,
        g(timeline::GUEST_UPTIME_AT_AGENT_MS)?,
    );
    let (sandbox, sent, created, started) = (
        g(timeline::SANDBOX_CREATED)?,
        g(timeline::LAYERS_SENT)?,
        g(timeline::CONTAINER_CREATED)?,
        g(timeline::STARTED)?,
    );
    let (exit, stopped) = (g(timeline::EXIT)?, g(timeline::VM_STOPPED)?);
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
    Some(vec![
        ("containerd + shim until QEMU spawn", d(begin, spawn)),
        (
            "QEMU start + firmware",
            d(spawn, ready) - uptime as f64 / 1000.0,
        ),
        (
            "kernel boot + init until agent ready",
            uptime as f64 / 1000.0,
        ),
        ("policy + sandbox created", d(ready, sandbox)),
        ("image read + layers sent (CopyFile)", d(sandbox, sent)),
        ("CreateContainer (verify, unpack, launch)", d(sent, created)),
        ("container started", d(created, started)),
        ("process exit", d(started, exit)),
        ("teardown (VM stopped)", d(exit, stopped)),
        ("ctr returns", d(stopped, end)),
    ])
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn argv(pid: i32) -> Vec<String> {
    // NUL-terminated arguments: an empty one (say `-append ""`) stays, the last NUL ends them.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            let b = b.strip_suffix(&[0]).unwrap_or(&b);
            b.split(|c| *c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Host processes of the running pods: (shims, QEMUs, vsock backends) PIDs.
fn pod_processes(cd: &Containerd) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let all = procs::all();
    let shims: BTreeSet<i32> = cd.shims().iter().map(|p| p.pid).collect();
    let under = procs::with_descendants(&all, &shims);
    let pick = |needle: &str| -> Vec<i32> {
        all.iter()
            .filter(|p| under.contains(&p.pid) && p.argv0.contains(needle))
            .map(|p| p.pid)
            .collect()
    };
    (
        shims.iter().copied().collect(),
        pick("qemu-system"),
        pick("vhost-device-vsock"),
    )
}

/// Starts `n` idle pods (`sleep`), waits until all run, returns them with their PIDs' PSS.
struct IdlePods {
    ids: Vec<String>,
    runs: Vec<kata_cc_tests::Background>,
    /// How many reached RUNNING.
    running: usize,
}

impl IdlePods {
    fn start(cd: &Containerd, img: &TestImage, n: usize, what: &str) -> IdlePods {
        Self::start_with(cd, img, n, what, &[])
    }

    fn start_with(
        cd: &Containerd,
        img: &TestImage,
        n: usize,
        what: &str,
        opts: &[&str],
    ) -> IdlePods {
        let ids: Vec<String> = (0..n).map(|i| cd.id(&format!("{what}{i}"))).collect();
        let runs = ids
            .iter()
            .map(|id| cd.spawn_run(id, opts, img, &["sleep", "3600"]))
            .collect();
        let mut pods = IdlePods {
            ids,
            runs,
            running: 0,
        };
        let deadline = Instant::now() + paths::run_timeout();
        // Until every pod runs or has failed (its `ctr run` ended): a failure is a figure.
        loop {
            let ls = cd.ctr(&["tasks", "ls"]).stdout_str();
            let running = pods
                .ids
                .iter()
                .filter(|id| {
                    ls.lines()
                        .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING"))
                })
                .count();
            let failed = pods
                .runs
                .iter_mut()
                .map(|r| r.finished())
                .filter(|f| *f)
                .count();
            if running + failed >= n {
                if failed > 0 {
                    eprintln!("bench: {failed} of {n} {what} pods failed to start");
                    // Why: each failed `ctr run`'s own words (containerd's log is gone with it).
                    for (id, r) in pods.ids.iter().zip(pods.runs.iter_mut()) {
                        if r.finished() {
                            eprintln!("bench: {id}: {}", r.stderr_now().trim());
                        }
                    }
                }
                pods.running = running;
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "{running} of {n} idle pods running after {}s:\n{ls}\n{}",
                paths::run_timeout().as_secs(),
                cd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(self, cd: &Containerd) {
        for id in &self.ids {
            cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        for r in self.runs {
            r.wait(paths::run_timeout());
        }
    }
}

/// A trivial initrd: busybox as /init's shell, powering the VM off at once.
fn bare_initrd(dir: &Path) -> PathBuf {
    let root = dir.join("bare-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).expect("bare root");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, hack/deps.sh)");
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox poweroff -f\n",
    )
    .expect("init");
    let status = Command::new("chmod")
        .args(["0755", "init", "bin/busybox"])
        .current_dir(&root)
        .status()
        .expect("chmod");
    assert!(status.success());
    let out = dir.join("bare-initrd.img");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "find . | cpio -o -H newc --quiet > {}",
            out.display()
        ))
        .current_dir(&root)
        .status()
        .expect("cpio");
    assert!(status.success(), "cpio failed");
    out
}

/// The pod's own QEMU command line with the trivial initrd and without the agent channel or the
/// pod's NICs (a CRI pod's TAPs are descriptors only its shim holds): same kernel, machine, CPU
/// model, memory and disk.
fn bare_args(pod_argv: &[String], initrd: &Path, dir: &Path) -> Vec<String> {
    const NO_VALUE: &[&str] = &["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"];
    let mut out = Vec::new();
    let mut i = 1; // argv[0] is QEMU itself
    while i < pod_argv.len() {
        let a = pod_argv[i].as_str();
        if NO_VALUE.contains(&a) {
            out.push(a.to_string());
            i += 1;
            continue;
        }
        let v = pod_argv.get(i + 1).cloned().unwrap_or_default();
        i += 2;
        match a {
            "-initrd" => out.extend([a.to_string(), initrd.display().to_string()]),
            "-chardev" if v.contains("id=vsock") => {}
            "-device" if v.contains("vsock") => {}
            "-qmp" => {}
            "-netdev" => {}
            "-device" if v.contains("netdev=") => {}
            "-chardev" if v.starts_with("file,id=console") => out.extend([
                a.to_string(),
                format!(
                    "file,id=console,path={}",
                    dir.join("bare-console.log").display()
                ),
            ]),
            _ => out.extend([a.to_string(), v]),
        }
    }
    out
}

fn bare_boot(qemu: &str, args: &[String]) -> f64 {
    let mut c = Command::new(qemu);
    c.args(args);
    let t = Instant::now();
    let out = cmd::run(c, None, paths::run_timeout());
    let secs = t.elapsed().as_secs_f64();
    out.assert_success();
    secs
}

/// `kata-cc agent --sandbox ID ARGS..`'s stdout; panics if it fails.
fn kata_cc_agent(id: &str, args: &[&str]) -> String {
    let mut c = Command::new(paths::bin_dir().join("kata-cc"));
    c.args(["agent", "--sandbox", id]).args(args);
    let out = cmd::run(c, None, paths::ctr_timeout());
    out.assert_success();
    out.stdout_str()
}

/// The agent's RSS (MiB) from its GetMetrics.
fn agent_rss_mib(id: &str) -> f64 {
    kata_cc_agent(id, &["metrics"])
        .lines()
        .find_map(|l| l.strip_prefix("kata_cc_agent_rss_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| b / (1024.0 * 1024.0))
        .expect("kata_cc_agent_rss_bytes in GetMetrics")
}

/// The largest policy of the conformance corpus, with AllowRequestsFailingPolicy on so that the
/// bench's busybox pod (not the pod it was generated for) runs under it.
fn largest_corpus_policy() -> (String, String) {
    let mut best: Option<(u64, PathBuf)> = None;
    for case in kata_cc_fixtures::kata_policy_cases() {
        let p = case.join("policy.rego");
        if let Ok(md) = std::fs::metadata(&p) {
            if best.as_ref().is_none_or(|(n, _)| md.len() > *n) {
                best = Some((md.len(), p));
            }
        }
    }
    let (_, path) = best.expect("a conformance policy");
    let text = std::fs::read_to_string(&path).expect("policy text");
    let text = text.replace(
        "default AllowRequestsFailingPolicy := false",
        "default AllowRequestsFailingPolicy := true",
    );
    (path.display().to_string(), text)
}

/// Guest vsock port of the bench's blast helper (any free port but the agent's 1024).
const BLAST_PORT: u32 = 2049;
/// Bytes moved per stdout and raw vsock figure.
const STREAM_BYTES: usize = 64 << 20;

/// Reads everything guest vsock `port` of sandbox `id` sends, through the sandbox's
/// hybrid-vsock socket (the path the shim's agent connection takes); returns the seconds from
/// the backend's `OK` until EOF, or why it did not get exactly `expect` bytes.
fn raw_vsock_read(id: &str, port: u32, expect: usize) -> Result<f64, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let uds = paths::sandbox_dir(id).join("vsock.sock");
    let s = std::os::unix::net::UnixStream::connect(&uds)
        .map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    (&s).write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut r = BufReader::with_capacity(1 << 20, &s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("hybrid vsock reply: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("CONNECT {port}: {line:?}"));
    }
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("stalled after {got} of {expect} bytes ({e})")),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if got != expect {
        return Err(format!("EOF after {got} of {expect} bytes"));
    }
    Ok(secs)
}

/// Summed PSS of `pids`, MiB.
fn pss_mib(pids: &[i32]) -> f64 {
    mib(pids.iter().map(|p| pss_kib(*p)).sum())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes a JSON document (pretty) to `path`, creating its dir.
fn write_json(path: &Path, doc: &Value) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(path, format!("{doc:#}\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("JSON: {}", path.display());
}

fn out_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::repo().join(default))
}

fn main() {
    let runs = env_usize("KATA_CC_BENCH_RUNS", 5);
    let parts = std::env::var("KATA_CC_BENCH_PARTS")
        .unwrap_or_else(|_| "pods,cri,net,policygen".to_string());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    if let Some(bad) = parts
        .iter()
        .find(|p| !matches!(**p, "pods" | "cri" | "net" | "policygen"))
    {
        eprintln!(
            "kata-cc-bench: KATA_CC_BENCH_PARTS: unknown part {bad:?} (pods, cri, net, policygen)"
        );
        std::process::exit(2);
    }
    // One at a time: each part has its own private containerd, and the harness runs one.
    if parts.contains(&"pods") {
        let doc = pods(runs);
        write_json(
            &out_path("KATA_CC_BENCH_OUT", "build/bench/pods.json"),
            &doc,
        );
    }
    if parts.contains(&"cri") {
        let doc = cri::run(runs);
        write_json(
            &out_path("KATA_CC_BENCH_CRI_OUT", "build/bench/cri.json"),
            &doc,
        );
    }
    if parts.contains(&"net") {
        let doc = net::run(runs);
        write_json(
            &out_path("KATA_CC_BENCH_NET_OUT", "build/bench/net.json"),
            &doc,
        );
    }
    if parts.contains(&"policygen") {
        let doc = policygen::run(runs);
        write_json(
            &out_path("KATA_CC_BENCH_POLICYGEN_OUT", "build/bench/policygen.json"),
            &doc,
        );
    }
}

/// The pod part: start, memory, agent, stdout, concurrency (see the module doc).
fn pods(runs: usize) -> Value {
    let cd = Containerd::start("bench");
    let img = TestImage::busybox();
    let blast_img = TestImage::busybox_with(
        "blast",
        &[(
            paths::bin_dir().join("kata-cc-vsock-blast"),
            "/bin/kata-cc-vsock-blast",
        )],
    );
    cd.import(&blast_img);
    let dir = cd.dir.clone();

    // Idle pod first: its QEMU command line is what the bare boot copies.
    let idle = IdlePods::start(&cd, &blast_img, 1, "idle");
    let (shims, qemus, backends) = pod_processes(&cd);
    let (mut shim_mib, mut qemu_mib, mut backend_mib) = (
        vec![pss_mib(&shims)],
        vec![pss_mib(&qemus)],
        vec![pss_mib(&backends)],
    );
    let pod_argv = argv(*qemus.first().expect("the idle pod's QEMU"));
    let idle_id = idle.ids[0].clone();
    let agent_rss_default = agent_rss_mib(&idle_id);
    let ping = kata_cc_agent(&idle_id, &["ping", "--count", "200"]);
    // Exec of `true` in the idle pod, timed end to end through ctr.
    let mut exec_s = Vec::new();
    for i in 0..runs.max(5) {
        let t = Instant::now();
        cd.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("bench{i}"),
            &idle_id,
            "true",
        ])
        .assert_success();
        exec_s.push(t.elapsed().as_secs_f64());
    }
    // 64 MiB of a process's stdout through the agent's stream RPCs and the shim into ctr, versus
    // the same bytes written to a guest vsock port and read by the bench through the sandbox's
    // hybrid-vsock socket: both in this VM, interleaved.
    let (mut dd, mut raw) = (Vec::new(), Vec::new());
    let mut raw_failure: Option<String> = None;
    let count = (STREAM_BYTES >> 20).to_string();
    for i in 0..runs {
        let t = Instant::now();
        let out = cd.ctr_with(
            &[
                "tasks",
                "exec",
                "--exec-id",
                &format!("dd{i}"),
                &idle_id,
                "dd",
                "if=/dev/zero",
                "bs=1048576",
                &format!("count={count}"),
            ],
            None,
            paths::run_timeout(),
        );
        let secs = t.elapsed().as_secs_f64();
        out.assert_success();
        assert_eq!(out.stdout.len(), STREAM_BYTES, "dd output incomplete");
        dd.push(secs);
        if raw_failure.is_some() {
            continue;
        }
        let mut blast = cd.spawn_ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("blast{i}"),
            &idle_id,
            "/bin/kata-cc-vsock-blast",
            "--port",
            &BLAST_PORT.to_string(),
            "--bytes",
            &STREAM_BYTES.to_string(),
        ]);
        blast.wait_for_stdout("listening on vsock port", paths::ctr_timeout());
        match raw_vsock_read(&idle_id, BLAST_PORT, STREAM_BYTES) {
            Ok(secs) => {
                raw.push(secs);
                blast.wait(paths::ctr_timeout()).assert_success();
            }
            Err(e) => {
                eprintln!("bench: raw vsock read: {e}");
                raw_failure = Some(e);
                blast.kill();
            }
        }
    }
    idle.stop(&cd);
    // Memory over several idle pods, one at a time (the first one above included), each taken
    // as soon as the pod runs.
    let mut rss_default = vec![agent_rss_default];
    for i in 1..runs {
        let p = IdlePods::start(&cd, &blast_img, 1, &format!("mem{i}-"));
        let (s, q, b) = pod_processes(&cd);
        shim_mib.push(pss_mib(&s));
        qemu_mib.push(pss_mib(&q));
        backend_mib.push(pss_mib(&b));
        rss_default.push(agent_rss_mib(&p.ids[0]));
        p.stop(&cd);
    }
    let (policy_path, big_policy) = largest_corpus_policy();
    let anno = format!(
        "{}={}",
        kata_cc_tests::policy::POLICY_ANNOTATION,
        kata_cc_tests::policy::base64(big_policy.as_bytes())
    );
    let mut rss_big = Vec::new();
    for i in 0..runs {
        let big = IdlePods::start_with(
            &cd,
            &img,
            1,
            &format!("bigpolicy{i}-"),
            &["--annotation", &anno],
        );
        rss_big.push(agent_rss_mib(&big.ids[0]));
        big.stop(&cd);
    }
    let qemu_backend: Vec<f64> = qemu_mib
        .iter()
        .zip(&backend_mib)
        .map(|(q, b)| q + b)
        .collect();
    let initrd = bare_initrd(&dir);
    let bare = bare_args(&pod_argv, &initrd, &dir);

    // Warm caches (image unpack, page cache of kernel/initrd/rootfs) once for each.
    timed_run(&cd, kata_cc_tests::RUNTIME, &cd.id("warm-kata"), &img);
    timed_run(&cd, RUNC, &cd.id("warm-runc"), &img);
    bare_boot(&pod_argv[0], &bare);

    let (mut kata, mut bare_t, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    let mut split: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for i in 0..runs {
        let id = cd.id(&format!("start{i}"));
        // As in the CRI part: no VM of the step before runs alongside a measurement.
        settle(&cd);
        let begin = now_ms();
        kata.push(timed_run(&cd, kata_cc_tests::RUNTIME, &id, &img));
        let end = now_ms();
        match phases(&timeline_marks(&cd, &id), begin, end) {
            Some(p) => split.push(p),
            None => eprintln!("bench: {id}: timeline incomplete in containerd.log"),
        }
        settle(&cd);
        bare_t.push(bare_boot(&pod_argv[0], &bare));
        runc.push(timed_run(&cd, RUNC, &cd.id(&format!("runc{i}")), &img));
    }
    let ratio = stats(&kata).0 / stats(&bare_t).0;

    // Several pods at once.
    let mut concurrent = Vec::new();
    for n in [4usize, 8] {
        let ids: Vec<String> = (0..n).map(|i| cd.id(&format!("par{n}-{i}"))).collect();
        let t = Instant::now();
        let bg: Vec<_> = ids
            .iter()
            .map(|id| cd.spawn_run(id, &[], &img, &["true"]))
            .collect();
        let ok = bg
            .into_iter()
            .map(|b| b.wait(paths::run_timeout()))
            .filter(|o| o.success())
            .count();
        let total = t.elapsed().as_secs_f64();
        let idle = IdlePods::start(&cd, &img, n, &format!("idle{n}-"));
        let (s, q, b) = pod_processes(&cd);
        let host = pss_mib(&s) + pss_mib(&q) + pss_mib(&b);
        // With several pods, the shim's and QEMU's code pages are shared: per-pod shim PSS
        // then shows what one more pod really costs.
        let shim = pss_mib(&s);
        let idle_running = idle.running;
        idle.stop(&cd);
        let per = idle_running.max(1) as f64;
        concurrent.push(json!({
            "pods": n, "succeeded": ok, "total_s": total,
            "idle_pods_running": idle_running,
            "host_pss_mib_per_idle_pod": host / per,
            "shim_pss_mib_per_idle_pod": shim / per,
        }));
    }

    let (km, kmin, kmax) = stats(&kata);
    let (bm, bmin, bmax) = stats(&bare_t);
    let (rm, rmin, rmax) = stats(&runc);
    println!("== pod start, {runs} interleaved runs each (seconds: median, min, max)");
    println!("{:<44} {:>7} {:>7} {:>7}", "", "median", "min", "max");
    for (name, m, lo, hi) in [
        ("kata-cc: ctr run --rm busybox true", km, kmin, kmax),
        (
            "bare boot: same kernel/QEMU, init powers off",
            bm,
            bmin,
            bmax,
        ),
        ("runc: ctr run --rm busybox true", rm, rmin, rmax),
    ] {
        println!("{name:<44} {m:>7.2} {lo:>7.2} {hi:>7.2}");
    }
    println!("ratio kata-cc / bare boot (medians): {ratio:.2} (goal <= 1.10)");
    let mut split_json = Vec::new();
    if let Some(first) = split.first() {
        println!(
            "-- kata-cc pod start split ({} runs; seconds: median, min, max)",
            split.len()
        );
        for (k, (name, _)) in first.iter().enumerate() {
            let v: Vec<f64> = split.iter().map(|p| p[k].1).collect();
            let (m, lo, hi) = stats(&v);
            println!("   {name:<41} {m:>7.2} {lo:>7.2} {hi:>7.2}");
            split_json.push(json!({"phase": name, "s": stats_json(&v)}));
        }
    }
    let (em, emin, emax) = stats(&exec_s);
    let (dm, dmin, dmax) = stats(&dd);
    let mb = (STREAM_BYTES >> 20) as f64;
    // The exec of `true` is the fixed cost of an exec; what remains of the dd exec is the stream.
    let stdout_mib_s = mb / (dm - em).max(0.001);
    let raw_mib_s = (!raw.is_empty()).then(|| mb / stats(&raw).0.max(0.001));
    println!("== stdout vs raw vsock, {runs} interleaved runs in one VM");
    println!(
        "stdout: exec of dd writing {mb} MiB {dm:.2} s median (min {dmin:.2}, max {dmax:.2}), \
         exec of `true` {em:.2} s -> {stdout_mib_s:.1} MiB/s"
    );
    match (raw_mib_s, &raw_failure) {
        (Some(r), None) => println!(
            "raw vsock (guest AF_VSOCK -> backend -> hybrid socket): {mb} MiB in {:.2} s median \
             (min {:.2}, max {:.2}) -> {r:.1} MiB/s; stdout / raw = {:.2} (goal >= 0.80)",
            stats(&raw).0,
            stats(&raw).1,
            stats(&raw).2,
            stdout_mib_s / r
        ),
        (_, Some(e)) => println!("raw vsock: failed: {e}"),
        (None, None) => println!("raw vsock: no runs"),
    }
    println!("== agent");
    println!(
        "{}; exec of `true` through ctr (s): median {em:.3} min {emin:.3} max {emax:.3}",
        ping.trim()
    );
    let mmm = |v: &[f64]| {
        let (m, lo, hi) = stats(v);
        format!("{m:.1} ({lo:.1}-{hi:.1})")
    };
    println!(
        "agent RSS in the guest (MiB, median (min-max) over {runs} pods): default policy {}, \
         largest corpus policy {} ({policy_path}) (goal <= 8)",
        mmm(&rss_default),
        mmm(&rss_big)
    );
    println!("== host memory of one idle pod (PSS, MiB, median (min-max) over {runs} pods)");
    println!(
        "shim {} (goal <= 5) | QEMU {} | vsock backend {} | QEMU + backend {} (goal <= 150)",
        mmm(&shim_mib),
        mmm(&qemu_mib),
        mmm(&backend_mib),
        mmm(&qemu_backend)
    );
    println!("== pods started at once (one run of each; PSS per pod while all are idle)");
    for c in &concurrent {
        println!(
            "{} pods: {}/{} succeeded in {:.1} s; {} idle pods running, host PSS per idle pod {:.1} MiB \
             (shim {:.1})",
            c["pods"],
            c["succeeded"],
            c["pods"],
            c["total_s"].as_f64().unwrap_or(0.0),
            c["idle_pods_running"],
            c["host_pss_mib_per_idle_pod"].as_f64().unwrap_or(0.0),
            c["shim_pss_mib_per_idle_pod"].as_f64().unwrap_or(0.0)
        );
    }

    let doc = json!({
        "runs": runs,
        "pod_start_s": {"kata_cc": stats_json(&kata), "bare_boot": stats_json(&bare_t), "runc": stats_json(&runc)},
        "ratio_kata_cc_to_bare_boot": ratio,
        "kata_cc_start_split": split_json,
        "stdout_exec_dd_s": stats_json(&dd),
        "stdout_mib_per_s": stdout_mib_s,
        "raw_vsock_s": if raw.is_empty() { Value::Null } else { stats_json(&raw) },
        "raw_vsock_mib_per_s": raw_mib_s,
        "raw_vsock_failure": raw_failure,
        "stdout_to_raw_vsock": raw_mib_s.map(|r| stdout_mib_s / r),
        "stream_bytes": STREAM_BYTES,
        "health_round_trip": ping.trim(),
        "exec_true_s": stats_json(&exec_s),
        "agent_rss_mib": {"default_policy": stats_json(&rss_default), "largest_corpus_policy": stats_json(&rss_big), "policy": policy_path},
        "idle_pod_pss_mib": {"shim": stats_json(&shim_mib), "qemu": stats_json(&qemu_mib), "vsock_backend": stats_json(&backend_mib), "qemu_and_backend": stats_json(&qemu_backend)},
        "concurrent": concurrent,
        "bare_boot_qemu_args": bare,
    });
    cd.finish();
    doc
}
