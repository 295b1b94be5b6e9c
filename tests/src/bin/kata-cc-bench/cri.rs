//! `make bench`, CRI part: a pod's start as the kubelet drives it, against the guest kernel's
//! own boot. One node (the tests' loopback registry with busybox as the app and the pause image,
//! a private containerd with CRI); per round, interleaved so that machine noise hits all alike:
//! - kata-cc over CRI: RunPodSandbox (handler `kata-cc`), CreateContainer and StartContainer of
//!   a busybox app that prints one line and sleeps, until that line is in the container's CRI
//!   log file (polled every 10 ms from before StartContainer); the pod is then torn down
//!   (untimed) and must leave no shim or QEMU behind;
//! - kata-cc through ctr: `ctr run --rm busybox true` (the pods part's figure, in this run);
//! - a bare boot: the CRI pod's own QEMU command line (taken while the warm-up pod runs)
//!   without the agent channel and NICs, with an initrd whose init powers off at once;
//! - runc over CRI: the same pod with handler `runc`, a reference line.
//!
//! The kata-cc CRI start is split into phases from the shim's timeline marks (the sandbox's
//! under the pod id, which is also the pause container's id, and the app's under its container
//! id) and the bench's own clock around each CRI call; all are wall-clock unix ms on this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_proto::contract::timeline;
use kata_cc_tests::cri::{ContainerSpec, PodSpec, HANDLER, RUNC_HANDLER};
use kata_cc_tests::kubelet::{self, Node, Pod};
use kata_cc_tests::{paths, TestImage};
use serde_json::{json, Value};

use super::{
    argv, bare_args, bare_boot, bare_initrd, now_ms, phases, settle, stats, stats_json, timed_run,
    timeline_marks,
};

/// The app container's name and the line it prints first.
const APP: &str = "app";
const READY: &str = "ready";
/// How often the CRI log file is read for the app's first line.
const LOG_POLL: Duration = Duration::from_millis(10);

/// Issue 14's targets for the medians' ratios to the bare boot.
const GOAL_CTR: f64 = 1.5;
const GOAL_CRI: f64 = 1.7;

/// Named phases of one pod start, seconds each.
type Split = Vec<(&'static str, f64)>;

/// The bench's clock (unix ms) around one CRI pod start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock {
    /// RunPodSandbox called.
    t0: u64,
    /// RunPodSandbox returned.
    run_pod: u64,
    /// CreateContainer called (after PodSandboxStatus and the pod's dir, as the kubelet does).
    create: u64,
    /// CreateContainer returned; StartContainer called.
    created: u64,
    /// StartContainer returned.
    started: u64,
    /// The app's first line seen in its CRI log file.
    first_line: u64,
}

impl Clock {
    fn total_s(&self) -> f64 {
        secs(self.t0, self.first_line)
    }

    /// The kubelet's view: each CRI call's duration, and when the first line showed up
    /// relative to StartContainer's return (negative: before it returned).
    fn calls(&self) -> Split {
        vec![
            ("RunPodSandbox", secs(self.t0, self.run_pod)),
            (
                "PodSandboxStatus + pod dir (kubelet)",
                secs(self.run_pod, self.create),
            ),
            ("CreateContainer", secs(self.create, self.created)),
            ("StartContainer", secs(self.created, self.started)),
            (
                "first log line after StartContainer returned",
                (self.first_line as f64 - self.started as f64) / 1000.0,
            ),
        ]
    }
}

/// Seconds from `a` to `b` (unix ms); 0 if `b` is earlier.
fn secs(a: u64, b: u64) -> f64 {
    b.saturating_sub(a) as f64 / 1000.0
}

/// The phases of one kata-cc CRI pod start, from the sandbox's marks (`sb`: the VM and the
/// pause container), the app container's marks and the bench's clock. They follow each other,
/// so they add up to the total (RunPodSandbox called -> first log line). Err names the first
/// missing mark.
fn cri_phases(
    sb: &BTreeMap<String, u64>,
    app: &BTreeMap<String, u64>,
    c: &Clock,
) -> Result<Split, String> {
    let get = |m: &BTreeMap<String, u64>, who: &str, k: &str| {
        m.get(k)
            .copied()
            .ok_or_else(|| format!("no {k} mark of the {who}"))
    };
    let s = |k: &str| get(sb, "sandbox", k);
    let a = |k: &str| get(app, "app container", k);
    let (sb_create, spawn, ready) = (
        s(timeline::TASK_CREATE)?,
        s(timeline::QEMU_SPAWN)?,
        s(timeline::AGENT_READY)?,
    );
    let uptime = s(timeline::GUEST_UPTIME_AT_AGENT_MS)? as f64 / 1000.0;
    let (net, sandbox) = (
        s(timeline::NETWORK_CONFIGURED)?,
        s(timeline::SANDBOX_CREATED)?,
    );
    let (pause_sent, pause_created, pause_started) = (
        s(timeline::LAYERS_SENT)?,
        s(timeline::CONTAINER_CREATED)?,
        s(timeline::STARTED)?,
    );
    let (app_create, app_sent, app_created, app_started) = (
        a(timeline::TASK_CREATE)?,
        a(timeline::LAYERS_SENT)?,
        a(timeline::CONTAINER_CREATED)?,
        a(timeline::STARTED)?,
    );
    Ok(vec![
        (
            "containerd: pause snapshot, netns + CNI, shim start",
            secs(c.t0, sb_create),
        ),
        (
            "shim: pod network (TAPs), vsock backend",
            secs(sb_create, spawn),
        ),
        ("QEMU start + firmware", secs(spawn, ready) - uptime),
        ("guest kernel + init until agent ready", uptime),
        ("policy + guest network configured", secs(ready, net)),
        ("CreateSandbox", secs(net, sandbox)),
        ("pause: image read + layers sent", secs(sandbox, pause_sent)),
        (
            "pause: CreateContainer in the guest",
            secs(pause_sent, pause_created),
        ),
        ("pause: started", secs(pause_created, pause_started)),
        ("RunPodSandbox returns", secs(pause_started, c.run_pod)),
        (
            "kubelet: PodSandboxStatus, pod dir",
            secs(c.run_pod, c.create),
        ),
        (
            "CreateContainer (CRI: app metadata, snapshot)",
            secs(c.create, c.created),
        ),
        (
            "StartContainer until the shim's Create",
            secs(c.created, app_create),
        ),
        ("app: image read + layers sent", secs(app_create, app_sent)),
        (
            "app: CreateContainer in the guest",
            secs(app_sent, app_created),
        ),
        ("app: started", secs(app_created, app_started)),
        (
            "app's first line in its CRI log",
            secs(app_started, c.first_line),
        ),
    ])
}

/// A CRI pod started by [`start_pod`], with the bench's clock around it.
struct Started {
    pod: Pod,
    app: String,
    clock: Clock,
}

/// Reads `log` every [`LOG_POLL`] until it has the app's first stdout line; when it saw it
/// (unix ms), or why not within `timeout`.
fn first_line_at(log: &Path, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = kubelet::log_lines(log);
        if kubelet::stream_lines(&lines, "stdout")
            .first()
            .is_some_and(|l| l == READY)
        {
            return Ok(now_ms());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no line {READY:?} in {} within {}s; lines: {lines:?}",
                log.display(),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(LOG_POLL);
    }
}

/// RunPodSandbox, CreateContainer, StartContainer of the app, until its first log line; panics
/// (with containerd's log tail) if a step fails.
fn start_pod(node: &Node, handler: &str, name: &str, uid: &str) -> Started {
    let spec = PodSpec::new(name, uid, &node.log_root);
    let t0 = now_ms();
    let id = node
        .try_run_pod_with(&spec, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", node.cd.log_tail()));
    let run_pod = now_ms();
    let pod = node.ready_pod(&spec, handler, id);
    let script = format!("echo {READY}; exec sleep 3600");
    let mut c = ContainerSpec::new(APP, &node.busybox.reference, &["sh", "-c", &script]);
    c.mounts = pod.kubelet_mounts(APP);
    let log: PathBuf = pod.log_file(&c);
    let create = now_ms();
    let app = node.create_container(&pod, &c);
    let created = now_ms();
    // Polled from before StartContainer: the line may land before the call returns.
    let poller = std::thread::spawn(move || first_line_at(&log, paths::run_timeout()));
    node.start_container(&app);
    let started = now_ms();
    let first_line = poller
        .join()
        .unwrap_or_else(|_| Err("the log poller panicked".to_string()))
        .unwrap_or_else(|e| panic!("pod {name}: {e}\n{}", node.cd.log_tail()));
    Started {
        pod,
        app,
        clock: Clock {
            t0,
            run_pod,
            create,
            created,
            started,
            first_line,
        },
    }
}

/// One kata-cc CRI pod start, timed, its split read from the shim's marks, torn down; `qemu`
/// gets the pod's QEMU argv while it runs.
fn kata_round(
    node: &Node,
    name: &str,
    uid: &str,
    qemu: Option<&mut Vec<String>>,
) -> (Clock, Result<Split, String>, Result<Split, String>) {
    settle(&node.cd);
    let s = start_pod(node, HANDLER, name, uid);
    let q = node.qemu_of(&s.pod);
    if let Some(out) = qemu {
        *out = argv(q.pid);
    }
    // The console goes with the sandbox's state dir at teardown.
    let console = paths::sandbox_dir(&s.pod.id).join("console.log");
    let guest = std::fs::read_to_string(&console)
        .map_err(|e| format!("{}: {e}", console.display()))
        .and_then(|text| guest_phases(&text, &s.pod.id, &s.app));
    node.teardown(&s.pod, Some(q.pid));
    let split = cri_phases(
        &timeline_marks(&node.cd, &s.pod.id),
        &timeline_marks(&node.cd, &s.app),
        &s.clock,
    );
    (s.clock, split, guest)
}

/// The agent's own account of a container's creation, from its console line
/// `container <cid> created, init pid <n> (layers <a> ms, bundle + create <b> ms)`: seconds in
/// the layers (digests checked, unpacked) and in the bundle + launcher create.
fn created_line(console: &str, cid: &str) -> Result<(f64, f64), String> {
    let head = format!("container {cid} created, init pid ");
    let line = console
        .lines()
        .find_map(|l| l.find(&head).map(|at| &l[at + head.len()..]))
        .ok_or_else(|| format!("no `{head}...` line on the console"))?;
    let ms = |key: &str| -> Result<f64, String> {
        let at = line
            .find(key)
            .ok_or_else(|| format!("container {cid}: no `{key}` in {line:?}"))?;
        let digits: String = line[at + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits
            .parse::<f64>()
            .map(|v| v / 1000.0)
            .map_err(|_| format!("container {cid}: no milliseconds after `{key}` in {line:?}"))
    };
    Ok((ms("(layers ")?, ms("bundle + create ")?))
}

/// The guest's part of the two CreateContainer requests, from the agent's console lines.
fn guest_phases(console: &str, pause: &str, app: &str) -> Result<Split, String> {
    let (pl, pc) = created_line(console, pause)?;
    let (al, ac) = created_line(console, app)?;
    Ok(vec![
        ("pause: layers checked + unpacked (agent)", pl),
        ("pause: bundle + launcher create (agent)", pc),
        ("app: layers checked + unpacked (agent)", al),
        ("app: bundle + launcher create (agent)", ac),
    ])
}

fn runc_round(node: &Node, name: &str, uid: &str) -> Clock {
    let s = start_pod(node, RUNC_HANDLER, name, uid);
    node.teardown(&s.pod, None);
    s.clock
}

/// `ctr run --rm busybox true` on kata-cc, timed, with its split (the pods part's phases).
fn ctr_round(node: &Node, img: &TestImage, id: &str) -> (f64, Option<Split>) {
    settle(&node.cd);
    let begin = now_ms();
    let s = timed_run(&node.cd, kata_cc_tests::RUNTIME, id, img);
    let split = phases(&timeline_marks(&node.cd, id), begin, now_ms());
    (s, split)
}

/// A pod uid (a UUID) per pod of the run: `kind` 1 kata-cc, 2 runc; `n` the round (warm-up 0).
fn uid(kind: u32, n: usize) -> String {
    format!("7b2e1c30-0000-4000-8014-{kind:04x}{n:08x}")
}

/// Median, min, max per phase over the rounds, printed and as JSON.
fn split_table(title: &str, split: &[Split]) -> Vec<Value> {
    let mut out = Vec::new();
    let Some(first) = split.first() else {
        println!("-- {title}: no complete round");
        return out;
    };
    println!(
        "-- {title} ({} rounds; seconds: median, min, max)",
        split.len()
    );
    for (k, (name, _)) in first.iter().enumerate() {
        let v: Vec<f64> = split.iter().map(|p| p[k].1).collect();
        let (m, lo, hi) = stats(&v);
        println!("   {name:<52} {m:>7.2} {lo:>7.2} {hi:>7.2}");
        out.push(json!({"phase": name, "s": stats_json(&v)}));
    }
    out
}

/// Runs the CRI part; its JSON document.
pub fn run(runs: usize) -> Value {
    let node = Node::start("bench-cri");
    // ctr's pods run the same image, imported under the name the pods part uses.
    let img = TestImage::busybox();
    node.cd.import(&img);
    let dir = node.cd.dir.clone();

    // Warm-up, not counted (image unpack, page cache of kernel/initrd/rootfs): the CRI pod's
    // QEMU command line is what the bare boot copies.
    let mut pod_argv = Vec::new();
    let (_, warm_split, _) = kata_round(&node, "bench-cri-warm", &uid(1, 0), Some(&mut pod_argv));
    if let Err(e) = warm_split {
        eprintln!("bench: warm-up pod: {e}");
    }
    assert!(!pod_argv.is_empty(), "the warm-up pod's QEMU command line");
    let bare = bare_args(&pod_argv, &bare_initrd(&dir), &dir);
    ctr_round(&node, &img, &node.cd.id("warm-ctr"));
    bare_boot(&pod_argv[0], &bare);
    runc_round(&node, "bench-cri-runc-warm", &uid(2, 0));

    let (mut kata, mut ctr, mut bare_t, mut runc) = (Vec::new(), Vec::new(), Vec::new(), vec![]);
    let (mut calls, mut split, mut ctr_split, mut round_s) = (vec![], vec![], vec![], vec![]);
    let mut guest = vec![];
    for i in 1..=runs {
        let round = Instant::now();
        let name = format!("bench-cri-{i}");
        let (clock, s, g) = kata_round(&node, &name, &uid(1, i), None);
        kata.push(clock.total_s());
        calls.push(clock.calls());
        match s {
            Ok(p) => split.push(p),
            Err(e) => eprintln!("bench: {name}: timeline incomplete in containerd.log: {e}"),
        }
        match g {
            Ok(p) => guest.push(p),
            Err(e) => eprintln!("bench: {name}: guest console: {e}"),
        }
        let (t, s) = ctr_round(&node, &img, &node.cd.id(&format!("ctr{i}")));
        ctr.push(t);
        ctr_split.extend(s);
        settle(&node.cd);
        bare_t.push(bare_boot(&pod_argv[0], &bare));
        runc.push(runc_round(&node, &format!("bench-cri-runc-{i}"), &uid(2, i)).total_s());
        round_s.push(round.elapsed().as_secs_f64());
    }
    let (km, cm, bm) = (stats(&kata).0, stats(&ctr).0, stats(&bare_t).0);
    let (ratio_cri, ratio_ctr) = (km / bm, cm / bm);

    println!("== CRI pod start, {runs} interleaved rounds (seconds: median, min, max)");
    println!("{:<55} {:>7} {:>7} {:>7}", "", "median", "min", "max");
    for (what, v) in [
        ("kata-cc CRI: RunPodSandbox -> app's first log line", &kata),
        ("kata-cc ctr: ctr run --rm busybox true", &ctr),
        (
            "bare boot: the CRI pod's kernel/QEMU, init powers off",
            &bare_t,
        ),
        ("runc CRI: RunPodSandbox -> app's first log line", &runc),
    ] {
        let (m, lo, hi) = stats(v);
        println!("{what:<55} {m:>7.2} {lo:>7.2} {hi:>7.2}");
    }
    println!("ratio kata-cc CRI / bare boot (medians): {ratio_cri:.2} (goal <= {GOAL_CRI})");
    println!("ratio kata-cc ctr / bare boot (medians): {ratio_ctr:.2} (goal <= {GOAL_CTR})");
    let calls_json = split_table("kata-cc CRI calls, kubelet side", &calls);
    let split_json = split_table("kata-cc CRI pod start split", &split);
    let guest_json = split_table(
        "in the guest, inside CreateContainer (agent's console lines)",
        &guest,
    );
    let ctr_split_json: Vec<Value> = ctr_split
        .first()
        .map(|first| {
            (0..first.len())
                .map(|k| {
                    let v: Vec<f64> = ctr_split.iter().map(|p| p[k].1).collect();
                    json!({"phase": first[k].0, "s": stats_json(&v)})
                })
                .collect()
        })
        .unwrap_or_default();
    let (rm, rlo, rhi) = stats(&round_s);
    println!("one round (all four, teardowns included): {rm:.1} s median ({rlo:.1}-{rhi:.1})");

    let doc = json!({
        "runs": runs,
        "pod_start_s": {
            "kata_cc_cri": stats_json(&kata),
            "kata_cc_ctr": stats_json(&ctr),
            "bare_boot": stats_json(&bare_t),
            "runc_cri": stats_json(&runc),
        },
        "ratio_kata_cc_cri_to_bare_boot": ratio_cri,
        "ratio_kata_cc_ctr_to_bare_boot": ratio_ctr,
        "goals": {"cri_to_bare_boot": GOAL_CRI, "ctr_to_bare_boot": GOAL_CTR},
        "kata_cc_cri_calls": calls_json,
        "kata_cc_cri_split": split_json,
        "kata_cc_cri_guest_split": guest_json,
        "kata_cc_ctr_split": ctr_split_json,
        "round_s": stats_json(&round_s),
        "bare_boot_qemu_args": bare,
    });
    node.finish();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(m: &[(&str, u64)]) -> BTreeMap<String, u64> {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn phases_follow_each_other_and_add_up_to_the_total() {
        use timeline::*;
        let sb = marks(&[
            (TASK_CREATE, 1_100),
            (QEMU_SPAWN, 1_150),
            (AGENT_READY, 4_000),
            (GUEST_UPTIME_AT_AGENT_MS, 2_000),
            (NETWORK_CONFIGURED, 4_100),
            (SANDBOX_CREATED, 4_150),
            (LAYERS_SENT, 4_400),
            (CONTAINER_CREATED, 5_000),
            (STARTED, 5_050),
        ]);
        let app = marks(&[
            (TASK_CREATE, 5_300),
            (LAYERS_SENT, 5_500),
            (CONTAINER_CREATED, 6_300),
            (STARTED, 6_350),
        ]);
        let c = Clock {
            t0: 1_000,
            run_pod: 5_100,
            create: 5_120,
            created: 5_200,
            started: 6_400,
            first_line: 6_370,
        };
        let p = cri_phases(&sb, &app, &c).unwrap();
        let sum: f64 = p.iter().map(|(_, s)| s).sum();
        assert!((sum - c.total_s()).abs() < 1e-9, "{sum} vs {}", c.total_s());
        assert_eq!(c.total_s(), 5.37);
        let get = |n: &str| p.iter().find(|(k, _)| *k == n).unwrap().1;
        assert!((get("QEMU start + firmware") - 0.85).abs() < 1e-9);
        assert_eq!(get("guest kernel + init until agent ready"), 2.0);
        assert_eq!(get("app: CreateContainer in the guest"), 0.8);
        assert_eq!(get("app's first line in its CRI log"), 0.02);
        // The line came before StartContainer returned: the kubelet sees it 30 ms early.
        let calls = c.calls();
        assert_eq!(calls.last().unwrap().1, -0.03);
        assert_eq!(calls[0], ("RunPodSandbox", 4.1));

        let mut no_net = sb.clone();
        no_net.remove(NETWORK_CONFIGURED);
        let e = cri_phases(&no_net, &app, &c).unwrap_err();
        assert_eq!(e, "no network_configured mark of the sandbox");
    }

    #[test]
    fn the_agents_created_line_is_read_per_container() {
        let console = "kata-cc-agent: [2.9] INFO: container p1 created, init pid 7 (layers 120 ms, bundle + create 35 ms)\n\
                       kata-cc-agent: [3.5] INFO: container a1 created, init pid 9 (layers 80 ms, bundle + create 20 ms)\n";
        let g = guest_phases(console, "p1", "a1").expect("both lines");
        let v: Vec<f64> = g.iter().map(|(_, s)| *s).collect();
        assert_eq!(v, vec![0.12, 0.035, 0.08, 0.02]);
        let e = guest_phases(console, "p1", "zz").expect_err("no app line");
        assert!(e.contains("container zz created"), "{e}");
    }

    #[test]
    fn bare_boot_drops_the_pods_nics_and_agent_channel() {
        let pod: Vec<String> = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-m",
            "2048M",
            "-initrd",
            "/guest/initrd.img",
            "-chardev",
            "socket,id=vsock0,path=/run/x",
            "-device",
            "vhost-user-vsock-pci,chardev=vsock0",
            "-netdev",
            "tap,id=eth0,fd=3,vhost=off",
            "-device",
            "virtio-net-pci,netdev=eth0,mac=02:00:00:00:00:01,romfile=",
            "-device",
            "virtio-blk-pci,drive=rootfs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let d = Path::new("/tmp/bench");
        let a = bare_args(&pod, Path::new("/tmp/bench/bare.img"), d);
        assert_eq!(
            a,
            [
                "-nodefaults",
                "-m",
                "2048M",
                "-initrd",
                "/tmp/bench/bare.img",
                "-device",
                "virtio-blk-pci,drive=rootfs"
            ]
        );
    }
}
