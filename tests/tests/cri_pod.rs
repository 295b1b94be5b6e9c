//! Kubernetes pods through containerd's CRI, the test playing the kubelet: a two-container
//! pod in one VM, with the volumes a kubelet gives (ConfigMap, Secret, service-account token,
//! emptyDir, hostPath file and dir, etc-hosts, termination log, and CRI's resolv.conf and
//! hostname), checked from inside the guest; a pod with `shareProcessNamespace`; and CRI
//! Attach to a container with a terminal.
//!
//! The two-container pod is booted once and several independent checks run on it (a boot
//! under TCG costs many seconds); every failed check is reported at the end, after the
//! teardown and its leak check.

use std::path::Path;
use std::time::Duration;

use kata_cc_tests::checks::Checks;
use kata_cc_tests::cri::{self, api, ContainerSpec, PodSpec};
use kata_cc_tests::kubelet::{self, poll, Node, Pod, MEMORY_MAX_SCRIPT};
use kata_cc_tests::podfs::{self, ApiVolume};
use kata_cc_tests::stream::Session;
use kata_cc_tests::{paths, procs};

const MIB: i64 = 1 << 20;
/// MemTotal is a little below the VM's memory (the kernel's own reservations).
const KERNEL_RESERVE_MIB: i64 = 256;
/// How many numbered lines the app writes to each of stdout and stderr.
const LOG_LINES: usize = 500;

/// The app container: numbered lines on stdout and stderr, then it stays up for the execs.
const APP_SCRIPT: &str = "i=1; while [ $i -le 500 ]; do echo \"out $i\"; echo \"err $i\" >&2; \
                          i=$((i+1)); done; exec sleep 1000000";

/// The files of the pod's volumes on the host, and where each container sees them.
struct Volumes {
    config: ApiVolume,
    secret: ApiVolume,
    token: ApiVolume,
    cache: std::path::PathBuf,
    host_file: std::path::PathBuf,
    host_dir: std::path::PathBuf,
}

const CONFIG_AT: &str = "/etc/app-config";
const SECRET_AT: &str = "/etc/app-secret";
const TOKEN_AT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const CACHE_AT: &str = "/cache";
const HOST_FILE_AT: &str = "/mnt/host-file";
const HOST_DIR_AT: &str = "/mnt/host-dir";

fn volumes(node: &Node, uid: &str) -> Volumes {
    let dir = node.pod_dir(uid);
    let config = dir.config_map(
        "app-config",
        &[
            ("greeting", b"hello from a ConfigMap\n"),
            ("settings.json", b"{\"level\": 3}\n"),
        ],
        0o644,
    );
    // defaultMode: 0400.
    let secret = dir.secret(
        "app-secret",
        &[("username", b"admin"), ("password", b"s3cr3t-pw")],
        0o400,
    );
    let token = dir.service_account(
        "kube-api-access-x7k2p",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.c2ln",
        "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG...test...\n-----END CERTIFICATE-----\n",
        "default",
    );
    let cache = dir.empty_dir("cache");
    // hostPath volumes live anywhere on the node.
    let host = node.root.join("host");
    let host_dir = host.join("dir");
    std::fs::create_dir_all(host_dir.join("sub")).expect("hostPath dir");
    let host_file = host.join("data.txt");
    write_mode(&host_file, b"host data\n", 0o640);
    write_mode(&host_dir.join("a.txt"), b"file a\n", 0o644);
    write_mode(&host_dir.join("sub/b.txt"), b"file b\n", 0o600);
    std::os::unix::fs::symlink("a.txt", host_dir.join("link")).expect("symlink");
    Volumes {
        config,
        secret,
        token,
        cache,
        host_file,
        host_dir,
    }
}

fn write_mode(p: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

#[test]
fn two_container_pod_in_one_vm() {
    let node = Node::start("cri-pod");
    let uid = "7d3a1c2e-5b6f-4a8d-9e0f-1a2b3c4d5e6f";
    let v = volumes(&node, uid);

    // 256 MiB + 128 MiB, 0.5 + 1 CPU: a 2432 MiB VM with ceil(1 + 1.5) = 3 vCPUs.
    let mut app = ContainerSpec::new("app", &node.busybox.reference, &["sh", "-c", APP_SCRIPT])
        .limits(256 * MIB, 500);
    app.envs
        .push(("KATA_CC_ENV".into(), "from-the-pod-spec".into()));
    let mut side = ContainerSpec::new(
        "side",
        &node.busybox.reference,
        &["sh", "-c", "exec sleep 1000000"],
    )
    .limits(128 * MIB, 1000);
    let mut spec = PodSpec::new("cri-pod", uid, &node.log_root).with_limits_of(&[&app, &side]);
    spec.ports.push((8080, 0));
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);

    // The kubelet's mounts: volumes in the pod spec's order, then etc-hosts and the
    // termination log. API-data volumes are read-only whatever the pod says.
    app.mounts = vec![
        cri::mount(CONFIG_AT, &v.config.dir, true),
        cri::mount(SECRET_AT, &v.secret.dir, true),
        cri::mount(TOKEN_AT, &v.token.dir, true),
        cri::mount(CACHE_AT, &v.cache, false),
        cri::mount(HOST_FILE_AT, &v.host_file, false),
        cri::mount(HOST_DIR_AT, &v.host_dir, true),
    ];
    app.mounts.extend(pod.kubelet_mounts("app"));
    side.mounts = vec![
        cri::mount(CONFIG_AT, &v.config.dir, true),
        cri::mount(TOKEN_AT, &v.token.dir, true),
        cri::mount(CACHE_AT, &v.cache, false),
    ];
    side.mounts.extend(pod.kubelet_mounts("side"));
    let app_id = node.run_container(&pod, &app);
    let side_id = node.run_container(&pod, &side);

    let mut checks = Checks::new();
    let mut v = v;
    checks.run("one VM and one shim for the pod", || {
        let shims = node.cd.shims();
        assert_eq!(shims.len(), 1, "shims: {shims:?}");
        let qemus = node.qemus();
        assert_eq!(qemus.len(), 1, "QEMU processes: {qemus:?}");
        assert_eq!(qemus[0].pid, qemu.pid);
    });
    checks.run("VM size from the pod's limits", || {
        vm_size(&node, &app_id, 256 + 128, 3)
    });
    checks.run("pod hostname and one IPC and UTS namespace", || {
        shared_namespaces(&node, &pod, &app_id, &side_id)
    });
    checks.run(
        "no shared PID namespace without shareProcessNamespace",
        || {
            let one = node.sh(&side_id, "tr '\\0' ' ' </proc/1/cmdline");
            assert!(one.starts_with("sleep"), "PID 1 of side: {one:?}");
            let all = node.sh(&side_id, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '");
            assert!(!all.contains("pause"), "side sees the pause: {all:?}");
        },
    );
    checks.run("CRI log file complete and in order", || logs(&pod, &app));
    checks.run("loopback up in the guest", || {
        // IFF_UP (0x1) in lo's flags: the agent brings it up at boot (the kernel leaves it down).
        let flags = node.sh(&app_id, "cat /sys/class/net/lo/flags");
        let v = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("lo flags {flags:?}: {e}"));
        assert_eq!(v & 1, 1, "lo is down: flags {flags}");
    });
    checks.run("environment", || {
        assert_eq!(node.sh(&app_id, "echo $KATA_CC_ENV"), "from-the-pod-spec");
    });
    checks.run("ExecSync output and exit code", || {
        let o = node.exec(&app_id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(
            (o.stdout.as_str(), o.stderr.as_str(), o.exit_code),
            ("out\n", "err\n", 3)
        );
    });
    checks.run(
        "exec probes, and a probe's timeout kills its process",
        || {
            let o = node
                .probe(&app_id, &["cat", "/proc/sys/kernel/hostname"], 10)
                .unwrap_or_else(|e| panic!("probe: {e}"));
            assert_eq!((o.exit_code, o.out()), (0, "cri-pod"));
            let started = std::time::Instant::now();
            match node.probe(&app_id, &["sleep", "4242"], 2) {
                Ok(o) => panic!("a 2 s probe of `sleep 4242` answered: {o:?}"),
                Err(e) => assert!(e.message().contains("timeout"), "{e}"),
            }
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(30),
                "the probe's timeout took {took:?}"
            );
            // containerd killed the probe's process when its time was up.
            poll(
                "the timed-out probe's process gone",
                paths::ctr_timeout(),
                || {
                    let ps = node.sh(&app_id, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '");
                    if ps.contains("sleep 4242") {
                        Err(ps)
                    } else {
                        Ok(())
                    }
                },
            );
        },
    );
    checks.run("exec without a TTY through the streaming server", || {
        exec_stream_plain(&node, &app_id)
    });
    checks.run("exec with a TTY through the streaming server", || {
        exec_stream_tty(&node, &side_id)
    });
    checks.run("volumes: contents, modes, symlinks as on the host", || {
        volume_contents(&node, &pod, &v, &app_id, &side_id)
    });
    checks.run("volumes: read-only mounts refuse writes", || {
        for f in [
            format!("{CONFIG_AT}/new"),
            format!("{HOST_DIR_AT}/new"),
            format!("{TOKEN_AT}/new"),
        ] {
            let o = node.exec(&app_id, &["sh", "-c", &format!("echo x > {f}")]);
            assert_ne!(o.exit_code, 0, "writing {f} succeeded");
            assert!(
                o.stderr.contains("Read-only file system"),
                "writing {f}: {}",
                o.stderr
            );
        }
    });
    checks.run("volumes: guest writes never reach the host", || {
        guest_writes(&node, &v, &app_id, &side_id)
    });
    checks.run("/dev/shm shared by the pod's containers", || {
        node.sh(&app_id, "echo via-shm > /dev/shm/from-app");
        assert_eq!(node.sh(&side_id, "cat /dev/shm/from-app"), "via-shm");
        let fs = node.sh(&side_id, "stat -f -c %T /dev/shm");
        assert_eq!(fs, "tmpfs", "/dev/shm file system");
    });
    checks.run("ConfigMap update reaches the guest", || {
        config_map_update(&node, &mut v.config, &app_id, &side_id)
    });
    checks.run("ContainerStats reports memory", || {
        for cid in [&app_id, &side_id] {
            let s = node.container_stats(cid);
            let ws = s
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value)
                .unwrap_or(0);
            assert!(ws > 0, "working set of {cid}: {s:?}");
        }
    });
    checks.run("UpdateContainerResources within and beyond the VM", || {
        update_resources(&node, &side_id, &side)
    });

    // The kubelet's teardown, then nothing of the pod may be left anywhere.
    node.teardown(&pod, Some(qemu.pid));
    node.finish_with(checks);
}

/// MemTotal and nproc in the guest: 2048 MiB + the pod's limits, ceil(1 + CPUs).
fn vm_size(node: &Node, cid: &str, limits_mib: i64, vcpus: u32) {
    let kb: i64 = node
        .sh(
            cid,
            "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
        )
        .parse()
        .expect("MemTotal in kB");
    let want = 2048 + limits_mib;
    let mem = kb / 1024;
    assert!(
        mem <= want && mem >= want - KERNEL_RESERVE_MIB,
        "guest MemTotal {mem} MiB: expected a {want} MiB VM (2048 + {limits_mib})"
    );
    let n: u32 = node.sh(cid, "nproc").parse().expect("nproc");
    assert_eq!(n, vcpus, "guest vCPUs");
}

fn shared_namespaces(node: &Node, pod: &Pod, a: &str, b: &str) {
    for cid in [a, b] {
        assert_eq!(node.sh(cid, "hostname"), pod.spec.name, "hostname in {cid}");
        assert_eq!(
            node.sh(cid, "cat /etc/hostname"),
            pod.spec.name,
            "/etc/hostname in {cid}"
        );
    }
    for ns in ["ipc", "uts"] {
        let cmd = format!("readlink /proc/self/ns/{ns}");
        let (na, nb) = (node.sh(a, &cmd), node.sh(b, &cmd));
        assert!(na.starts_with(&format!("{ns}:[")), "{ns} ns: {na:?}");
        assert_eq!(na, nb, "the containers' {ns} namespaces");
    }
    // The mount and PID namespaces stay per container.
    let cmd = "readlink /proc/self/ns/mnt";
    assert_ne!(node.sh(a, cmd), node.sh(b, cmd), "mount namespaces");
}

/// The CRI log file: every numbered line of each stream, in order, nothing else.
fn logs(pod: &Pod, app: &ContainerSpec) {
    let path = pod.log_file(app);
    let lines = poll(
        "500 lines per stream in the log",
        paths::ctr_timeout(),
        || {
            let l = kubelet::log_lines(&path);
            let (o, e) = (
                kubelet::stream_lines(&l, "stdout"),
                kubelet::stream_lines(&l, "stderr"),
            );
            if o.len() >= LOG_LINES && e.len() >= LOG_LINES {
                Ok((o, e))
            } else {
                Err(format!(
                    "{}: {} stdout and {} stderr lines",
                    path.display(),
                    o.len(),
                    e.len()
                ))
            }
        },
    );
    for (stream, got, prefix) in [("stdout", &lines.0, "out"), ("stderr", &lines.1, "err")] {
        let want: Vec<String> = (1..=LOG_LINES).map(|i| format!("{prefix} {i}")).collect();
        if *got != want {
            let first = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g != w)
                .unwrap_or(want.len().min(got.len()));
            panic!(
                "{} {stream}: {} lines, first difference at line {}: got {:?}, want {:?}",
                path.display(),
                got.len(),
                first + 1,
                got.get(first),
                want.get(first)
            );
        }
    }
}

fn exec_stream_plain(node: &Node, cid: &str) {
    let t = paths::ctr_timeout();
    let mut s = node.exec_stream(
        cid,
        &[
            "sh",
            "-c",
            "read line; echo \"got $line\"; echo err >&2; exit 4",
        ],
        false,
        true,
    );
    s.stdin(b"ping\n").expect("stdin");
    let done = s.wait(t).expect("the exec session");
    assert_eq!(
        (
            String::from_utf8_lossy(&done.stdout).as_ref(),
            String::from_utf8_lossy(&done.stderr).as_ref()
        ),
        ("got ping\n", "err\n")
    );
    assert_eq!(done.status.code(), Some(4), "status: {:?}", done.status);

    let ok = node
        .exec_stream(cid, &["echo", "fine"], false, false)
        .wait(t)
        .expect("the exec session");
    assert_eq!(ok.stdout, b"fine\n");
    assert!(ok.status.success, "status: {:?}", ok.status);
}

fn exec_stream_tty(node: &Node, cid: &str) {
    let s = node.exec_stream(cid, &["sh"], true, true);
    terminal_dialogue(s);
}

/// An interactive busybox shell on a terminal: its prompt, a resize to 100x30 seen by `stty`,
/// the terminal's echo of the input, `tty` naming a pty, and `exit 0` ending the session with
/// status Success and nothing on stderr.
fn terminal_dialogue(mut s: Session) {
    let t = paths::ctr_timeout();
    s.resize(100, 30).expect("resize");
    // An attached shell has printed its prompt already: a newline brings a new one.
    s.stdin(b"\n").expect("stdin");
    s.expect_stdout("# ", t).expect("a shell prompt");
    // The resize travels apart from stdin: ask until the terminal has the new size.
    let mut sized = false;
    for _ in 0..20 {
        s.stdin(b"stty size\n").expect("stdin");
        if s.read_until(Duration::from_secs(1), |s| {
            s.stdout_text().contains("30 100")
        })
        .expect("read")
        {
            sized = true;
            break;
        }
    }
    assert!(
        sized,
        "the terminal never became 100x30: {:?}",
        s.stdout_text()
    );
    s.stdin(b"tty; echo marker-$((6*7)); exit 0\n")
        .expect("stdin");
    let done = s.wait(t).expect("the session");
    let out = String::from_utf8_lossy(&done.stdout);
    // The terminal echoes what was typed, then the commands' output follows.
    assert!(
        out.contains("echo marker-$((6*7))"),
        "no echo of the input: {out:?}"
    );
    assert!(out.contains("marker-42"), "no output: {out:?}");
    assert!(
        out.contains("/dev/pts/"),
        "`tty` is not a terminal: {out:?}"
    );
    assert!(
        done.stderr.is_empty(),
        "stderr with a TTY: {:?}",
        done.stderr
    );
    assert_eq!(done.status.code(), Some(0), "status: {:?}", done.status);
}

/// What `stat`/`sha256sum` say of a path in the guest, as `<mode> <sha256 or dir>`.
const DESCRIBE: &str = "for f in \"$@\"; do \
    if [ -d \"$f\" ]; then h=dir; else h=$(sha256sum < \"$f\" | cut -d' ' -f1); fi; \
    echo \"$f $(stat -L -c %a \"$f\") $h\"; done";

fn host_describe(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mode = podfs::mode_of(p);
    let h = if p.is_dir() {
        "dir".to_string()
    } else {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    format!("{mode} {h}")
}

/// Every (guest path, host path) pair of a container: same mode, same content.
fn same_files(node: &Node, cid: &str, pairs: &[(String, std::path::PathBuf)]) {
    let mut cmd = vec!["sh", "-c", DESCRIBE, "describe"];
    cmd.extend(pairs.iter().map(|(g, _)| g.as_str()));
    let o = node.exec(cid, &cmd);
    assert_eq!(o.exit_code, 0, "stat in the guest: {}", o.stderr);
    let guest: Vec<&str> = o.stdout.lines().collect();
    let mut diffs = Vec::new();
    for (i, (g, h)) in pairs.iter().enumerate() {
        let want = format!("{g} {}", host_describe(h));
        let got = guest.get(i).copied().unwrap_or("<missing>");
        if got != want {
            let shown = node.exec(cid, &["cat", g]);
            diffs.push(format!(
                "{g} (host {}): guest `{got}`, host `{want}`; guest content {:?} {:?}, host {:?}",
                h.display(),
                shown.stdout,
                shown.stderr,
                std::fs::read_to_string(h).unwrap_or_default()
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "files differ in {cid}:\n  {}",
        diffs.join("\n  ")
    );
}

fn volume_contents(node: &Node, pod: &Pod, v: &Volumes, app: &str, side: &str) {
    let at = |dir: &str, name: &str| format!("{dir}/{name}");
    let mut app_pairs = Vec::new();
    for (vol, dir) in [
        (&v.config, CONFIG_AT),
        (&v.secret, SECRET_AT),
        (&v.token, TOKEN_AT),
    ] {
        for name in vol.visible() {
            app_pairs.push((at(dir, &name), vol.dir.join(&name)));
        }
    }
    for (name, host) in [
        ("a.txt", v.host_dir.join("a.txt")),
        ("sub", v.host_dir.join("sub")),
        ("sub/b.txt", v.host_dir.join("sub/b.txt")),
        ("link", v.host_dir.join("link")),
    ] {
        app_pairs.push((at(HOST_DIR_AT, name), host));
    }
    app_pairs.push((HOST_FILE_AT.to_string(), v.host_file.clone()));
    app_pairs.push(("/etc/hosts".to_string(), pod.etc_hosts.clone()));
    app_pairs.push((
        "/etc/resolv.conf".to_string(),
        node.cri_sandbox_file(pod, "resolv.conf"),
    ));
    app_pairs.push((
        "/etc/hostname".to_string(),
        node.cri_sandbox_file(pod, "hostname"),
    ));
    same_files(node, app, &app_pairs);
    let side_pairs: Vec<_> = app_pairs
        .iter()
        .filter(|(g, _)| {
            !g.starts_with(SECRET_AT)
                && (g.starts_with(CONFIG_AT) || g.starts_with(TOKEN_AT) || g.starts_with("/etc/"))
        })
        .cloned()
        .collect();
    same_files(node, side, &side_pairs);

    // The atomic writer's structure is there too: `key -> ..data/key`, `..data -> ..<ts>`.
    assert_eq!(
        node.sh(app, &format!("readlink {CONFIG_AT}/greeting")),
        "..data/greeting"
    );
    assert!(
        node.sh(app, &format!("readlink {CONFIG_AT}/..data"))
            .starts_with(".."),
        "..data is not a link to a timestamp dir"
    );
    assert_eq!(
        node.sh(app, &format!("readlink {HOST_DIR_AT}/link")),
        "a.txt"
    );
    // The names a pod sees in each volume are the host's.
    for (vol, dir) in [
        (&v.config, CONFIG_AT),
        (&v.secret, SECRET_AT),
        (&v.token, TOKEN_AT),
    ] {
        let listed = node.sh(app, &format!("ls {dir}"));
        let names: Vec<&str> = listed.lines().collect();
        assert_eq!(names, vol.visible(), "ls {dir}");
    }
    // The termination-log file is there for the container to write.
    node.sh(
        app,
        "test -f /dev/termination-log && test -w /dev/termination-log",
    );
    // And an empty emptyDir is empty.
    assert_eq!(node.sh(side, &format!("ls -A {CACHE_AT} | wc -l")), "0");
}

fn guest_writes(node: &Node, v: &Volumes, app: &str, side: &str) {
    // A writable hostPath file: the guest sees its write, the host file stays.
    node.sh(app, &format!("echo changed-in-guest > {HOST_FILE_AT}"));
    assert_eq!(
        node.sh(app, &format!("cat {HOST_FILE_AT}")),
        "changed-in-guest"
    );
    assert_eq!(
        std::fs::read_to_string(&v.host_file).expect("host file"),
        "host data\n",
        "the guest's write reached the host file {}",
        v.host_file.display()
    );
    // The emptyDir is one dir for the pod's containers, and none of it is on the host.
    node.sh(app, &format!("echo from-app > {CACHE_AT}/shared.txt"));
    assert_eq!(
        node.sh(side, &format!("cat {CACHE_AT}/shared.txt")),
        "from-app"
    );
    node.sh(side, &format!("echo from-side >> {CACHE_AT}/shared.txt"));
    assert_eq!(
        node.sh(app, &format!("cat {CACHE_AT}/shared.txt")),
        "from-app\nfrom-side"
    );
    let on_host: Vec<_> = std::fs::read_dir(&v.cache)
        .expect("emptyDir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        on_host.is_empty(),
        "the guest's emptyDir writes reached the host: {on_host:?}"
    );
}

fn config_map_update(node: &Node, config: &mut ApiVolume, app: &str, side: &str) {
    let before = config.current();
    config.write(&[
        ("greeting", b"hello again, updated\n"),
        ("settings.json", b"{\"level\": 4}\n"),
    ]);
    assert_ne!(config.current(), before, "the atomic writer swapped ..data");
    for cid in [app, side] {
        poll(
            &format!("the ConfigMap update in {cid}"),
            paths::update_timeout(),
            || {
                let o = node.exec(cid, &["cat", &format!("{CONFIG_AT}/greeting")]);
                if o.exit_code == 0 && o.stdout == "hello again, updated\n" {
                    Ok(())
                } else {
                    Err(format!("{:?} {:?}", o.stdout, o.stderr))
                }
            },
        );
        assert_eq!(
            node.sh(cid, &format!("cat {CONFIG_AT}/settings.json")),
            "{\"level\": 4}"
        );
        assert_eq!(
            node.sh(cid, &format!("stat -L -c %a {CONFIG_AT}/greeting")),
            "644"
        );
    }
}

fn update_resources(node: &Node, cid: &str, c: &ContainerSpec) {
    let memory_max = || node.sh(cid, MEMORY_MAX_SCRIPT);
    assert_eq!(
        memory_max(),
        c.memory_limit.to_string(),
        "memory.max before the update"
    );
    let resources = |memory: i64| api::LinuxContainerResources {
        cpu_period: c.cpu_period,
        cpu_quota: c.cpu_quota,
        cpu_shares: 2,
        memory_limit_in_bytes: memory,
        oom_score_adj: 1000,
        ..Default::default()
    };
    // Within the VM (2432 MiB): applied to the container's cgroup in the guest.
    let within = 192 * MIB;
    node.update_resources(cid, resources(within))
        .unwrap_or_else(|e| panic!("UpdateContainerResources to 192 MiB: {e}"));
    assert_eq!(
        memory_max(),
        within.to_string(),
        "memory.max after the update"
    );
    // Beyond the VM's fixed size: refused, saying why, and nothing changes.
    let beyond = 64 * 1024 * MIB;
    match node.update_resources(cid, resources(beyond)) {
        Ok(()) => panic!("UpdateContainerResources to 64 GiB succeeded in a 2432 MiB VM"),
        Err(e) => assert!(
            e.message().contains("exceeds the VM"),
            "the refusal does not say why: {e}"
        ),
    }
    assert_eq!(
        memory_max(),
        within.to_string(),
        "memory.max after the refused update"
    );
}

/// `shareProcessNamespace: true`: the containers join the pause's PID namespace, so the second
/// container sees the pause as PID 1 and the first container's process.
#[test]
fn shared_process_namespace_shows_the_pause() {
    let node = Node::start("cri-pidns");
    let mut spec = PodSpec::new(
        "pidns-pod",
        "2b4c6d8e-0f1a-4b3c-8d5e-7f9a0b1c2d3e",
        &node.log_root,
    );
    spec.share_process_namespace = true;
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    let mut first = ContainerSpec::new("first", &node.busybox.reference, &["sleep", "1000001"]);
    first.mounts = pod.kubelet_mounts("first");
    let mut second = ContainerSpec::new("second", &node.busybox.reference, &["sleep", "1000002"]);
    second.mounts = pod.kubelet_mounts("second");
    node.run_container(&pod, &first);
    let second_id = node.run_container(&pod, &second);

    let mut checks = Checks::new();
    checks.run("the pause is PID 1", || {
        let one = node.sh(&second_id, "tr '\\0' ' ' </proc/1/cmdline");
        assert!(
            one.contains("pause"),
            "PID 1 in the second container: {one:?}"
        );
    });
    checks.run("the other container's process is visible", || {
        let all = node.sh(
            &second_id,
            "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done",
        );
        assert!(all.contains("sleep 1000001"), "processes: {all}");
        assert!(all.contains("sleep 1000002"), "processes: {all}");
    });
    node.teardown(&pod, Some(qemu.pid));
    assert!(!procs::alive(qemu.pid));
    node.finish_with(checks);
}

/// `kubectl run -it`: a container with stdin and a terminal, its shell reached through CRI
/// Attach (the streaming server, as exec): the dialogue of a terminal; the shell's exit is
/// the container's.
#[test]
fn attach_to_a_terminal_container() {
    let node = Node::start("cri-attach");
    let spec = PodSpec::new(
        "attach-pod",
        "6f5e4d3c-2b1a-4098-8765-43210fedcba9",
        &node.log_root,
    );
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    let mut shell = ContainerSpec::new("shell", &node.busybox.reference, &["sh"]);
    shell.stdin = true;
    shell.tty = true;
    shell.mounts = pod.kubelet_mounts("shell");
    let cid = node.run_container(&pod, &shell);

    let mut checks = Checks::new();
    checks.run("a terminal through CRI Attach", || {
        terminal_dialogue(node.attach(&cid, true))
    });
    checks.run("the shell's exit ends the container", || {
        let st = node.wait_exited(&cid, paths::ctr_timeout());
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (0, "Completed"),
            "{st:?}"
        );
    });
    node.teardown(&pod, Some(qemu.pid));
    node.finish_with(checks);
}
