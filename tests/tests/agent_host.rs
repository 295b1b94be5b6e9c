//! The real agent binary, driven over ttrpc on a unix socket, running busybox containers with its
//! own launcher on the host (the same code path as in the guest, minus PID 1 and vsock; cgroup v1
//! or v2, whichever the host has). Needs root: host tier. Requests have the shape the shim sends
//! (Kata's): CopyFile below the shared directory, one image storage, Root.Path the guest rootfs.
//!
//! The agent runs in a mount namespace of its own (what it mounts for a sandbox stays out of the
//! host's), with its guest directories moved below a temporary directory.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use agent_proto::contract::{self, LayerRef};
use agent_proto::{
    agent, agent_ttrpc::AgentServiceClient, health, health_ttrpc::HealthClient, oci,
};
use sha2::{Digest, Sha256};

const BUSYBOX: &str = "/bin/busybox";

/// The agent process; stopped by PID on drop (SIGTERM, which makes it remove its containers and
/// unmount what it mounted; SIGKILL if it does not end).
struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProc {
    fn start() -> AgentProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        // Without a policy the agent allows only SetPolicy; these tests exercise the data path.
        let policy = dir.path().join("policy.rego");
        std::fs::write(&policy, kata_cc_tests::policy::allow_all()).expect("write policy");
        // Not this package's binary (no CARGO_BIN_EXE): the workspace build's, same profile.
        let mut cmd = Command::new(kata_cc_tests::paths::workspace_bin("kata-cc-agent"));
        cmd.env("KATA_CC_AGENT_LISTEN", format!("unix://{}", sock.display()))
            .env("KATA_CC_CONTAINERS_DIR", dir.path().join("containers"))
            .env("KATA_CC_SHARED_DIR", dir.path().join("shared"))
            .env("KATA_CC_SANDBOX_DIR", dir.path().join("sandbox"))
            .env("KATA_CC_LAUNCHER_ROOT", dir.path().join("launcher"))
            .env("KATA_CC_POLICY_PATH", &policy);
        // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start kata-cc-agent");
        AgentProc { child, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The mount points in the agent's mount namespace below the test's directory.
    fn mounts(&self) -> Vec<String> {
        let info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap_or_default();
        let dir = self.dir.path().display().to_string();
        info.lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect()
    }

    async fn connect(&self) -> ttrpc::r#async::Client {
        let addr = format!("unix://{}", self.path("agent.sock").display());
        for _ in 0..100 {
            if let Ok(c) = ttrpc::r#async::Client::connect(&addr).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("agent did not listen on {addr}");
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A gzip layer holding busybox and the directories a container needs.
fn busybox_layer() -> (Vec<u8>, String, String) {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, d, &[][..]).expect("dir");
    }
    let bb = std::fs::read(BUSYBOX).expect("read busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(bb.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, "bin/busybox", &bb[..])
        .expect("busybox");
    for applet in [
        "sh", "cat", "echo", "sleep", "seq", "stty", "tty", "kill", "readlink", "ls",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    let blob = gz.finish().expect("gz");
    let diff_id = sha(&tar);
    let digest = sha(&blob);
    (blob, diff_id, digest)
}

/// A busybox layer as the image storage names it, with its blob.
struct TestLayer {
    blob: Vec<u8>,
    layer: LayerRef,
}

fn test_layer() -> TestLayer {
    let (blob, diff_id, digest) = busybox_layer();
    TestLayer {
        blob,
        layer: LayerRef {
            digest,
            diff_id,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        },
    }
}

/// Go's os.ModeDir, which Kata's runtime leaves in dir_mode.
const GO_MODE_DIR: u32 = 0x8000_0000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

async fn copy_file(c: &AgentServiceClient, path: &Path, file_mode: u32, data: &[u8]) {
    try_copy_file(c, path, file_mode, data)
        .await
        .unwrap_or_else(|e| panic!("CopyFile {}: {e:?}", path.display()));
}

/// CopyFile in 1 MiB chunks, as the shim sends it.
async fn try_copy_file(
    c: &AgentServiceClient,
    path: &Path,
    file_mode: u32,
    data: &[u8],
) -> ttrpc::Result<()> {
    let mut off = 0usize;
    loop {
        let chunk = &data[off..(off + (1 << 20)).min(data.len())];
        let mut r = agent::CopyFileRequest::new();
        r.path = path.display().to_string();
        r.file_size = if file_mode & S_IFLNK == S_IFLNK {
            0
        } else {
            data.len() as i64
        };
        r.file_mode = file_mode;
        r.dir_mode = GO_MODE_DIR | 0o750;
        r.offset = off as i64;
        r.data = chunk.to_vec();
        c.copy_file(ctx(), &r).await?;
        off += chunk.len();
        if off >= data.len() {
            return Ok(());
        }
    }
}

/// Copies the layer's blob where the shim puts it for `cid`; returns its guest path.
async fn copy_blob(a: &AgentProc, c: &AgentServiceClient, l: &TestLayer, cid: &str) -> PathBuf {
    let name = PathBuf::from(l.layer.blob_path(cid));
    let path = a.path("shared").join(name.file_name().expect("blob name"));
    copy_file(c, &path, S_IFREG | 0o600, &l.blob).await;
    path
}

fn mount(dest: &str, typ: &str, opts: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.source = typ.into();
    m.type_ = typ.into();
    m.options = opts.iter().map(|s| s.to_string()).collect();
    m
}

fn process(args: &[&str], terminal: bool) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = args.iter().map(|s| s.to_string()).collect();
    p.Env = vec!["PATH=/bin".into()];
    p.Cwd = "/".into();
    p.Terminal = terminal;
    p.User = Some(oci::User::new()).into();
    p
}

/// A CreateContainerRequest in Kata's shape: the image storage, Root.Path the guest rootfs.
fn create_request(
    a: &AgentProc,
    cid: &str,
    layer: &LayerRef,
    args: &[&str],
) -> agent::CreateContainerRequest {
    let rootfs = a.path("containers").join(cid).join("rootfs");
    let mut spec = oci::Spec::new();
    spec.Version = "1.0.2".into();
    spec.Process = Some(process(args, false)).into();
    let mut root = oci::Root::new();
    root.Path = rootfs.display().to_string();
    spec.Root = Some(root).into();
    spec.Hostname = "kata-cc-test".into();
    spec.Mounts = vec![
        mount("/proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    let mut linux = oci::Linux::new();
    for t in ["ipc", "uts", "mount"] {
        let mut n = oci::LinuxNamespace::new();
        n.Type = t.into();
        linux.Namespaces.push(n);
    }
    spec.Linux = Some(linux).into();
    let mut s = agent::Storage::new();
    s.driver = contract::IMAGE_DRIVER.into();
    s.source = "localhost/busybox:test".into();
    s.fstype = contract::IMAGE_FSTYPE.into();
    s.driver_options = vec![layer.option()];
    s.mount_point = rootfs.display().to_string();
    let mut r = agent::CreateContainerRequest::new();
    r.container_id = cid.into();
    r.exec_id = cid.into();
    r.storages = vec![s];
    r.OCI = Some(spec).into();
    r
}

fn bind(dest: &str, source: &Path, opts: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.source = source.display().to_string();
    m.type_ = "bind".into();
    m.options = opts.iter().map(|s| s.to_string()).collect();
    m
}

/// Copies the blob, creates and starts the container.
async fn run_container(
    a: &AgentProc,
    c: &AgentServiceClient,
    l: &TestLayer,
    req: agent::CreateContainerRequest,
) {
    let cid = req.container_id.clone();
    copy_blob(a, c, l, &cid).await;
    c.create_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}"));
    let mut s = agent::StartContainerRequest::new();
    s.container_id = cid.clone();
    c.start_container(ctx(), &s)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
}

/// Runs `args` in the container; (exit code, stdout).
async fn output(c: &AgentServiceClient, cid: &str, exec_id: &str, args: &[&str]) -> (i32, String) {
    exec(c, cid, exec_id, args, false).await;
    let out = read_all(c, cid, exec_id, false).await;
    let code = wait(c, cid, exec_id).await;
    (code, String::from_utf8_lossy(&out).into_owned())
}

fn status_of(e: &ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

async fn remove(c: &AgentServiceClient, cid: &str) {
    let mut rm = agent::RemoveContainerRequest::new();
    rm.container_id = cid.into();
    c.remove_container(ctx(), &rm)
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
}

/// A container's cgroup file on this host (the launcher's cgroupfs layout, v2 or v1).
fn cgroup_file(cid: &str, v2: &str, v1: (&str, &str)) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.join("kata-cc").join(cid).join(v2)
    } else {
        root.join(v1.0).join("kata-cc").join(cid).join(v1.1)
    }
}

async fn read_all(c: &AgentServiceClient, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut r = agent::ReadStreamRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.len = 64 * 1024;
        let resp = if stderr {
            c.read_stderr(ctx(), &r).await
        } else {
            c.read_stdout(ctx(), &r).await
        }
        .expect("read stream");
        if resp.data.is_empty() {
            return out;
        }
        out.extend_from_slice(&resp.data);
    }
}

async fn wait(c: &AgentServiceClient, cid: &str, exec_id: &str) -> i32 {
    let mut r = agent::WaitProcessRequest::new();
    r.container_id = cid.into();
    r.exec_id = exec_id.into();
    c.wait_process(ctx(), &r).await.expect("WaitProcess").status
}

async fn exec(c: &AgentServiceClient, cid: &str, exec_id: &str, args: &[&str], terminal: bool) {
    let mut r = agent::ExecProcessRequest::new();
    r.container_id = cid.into();
    r.exec_id = exec_id.into();
    r.process = Some(process(args, terminal)).into();
    c.exec_process(ctx(), &r).await.expect("ExecProcess");
}

async fn write_stdin(c: &AgentServiceClient, cid: &str, exec_id: &str, data: &[u8]) {
    let mut r = agent::WriteStreamRequest::new();
    r.container_id = cid.into();
    r.exec_id = exec_id.into();
    r.data = data.to_vec();
    let resp = c.write_stdin(ctx(), &r).await.expect("WriteStdin");
    assert_eq!(resp.len as usize, data.len());
}

async fn close_stdin(c: &AgentServiceClient, cid: &str, exec_id: &str) {
    let mut r = agent::CloseStdinRequest::new();
    r.container_id = cid.into();
    r.exec_id = exec_id.into();
    c.close_stdin(ctx(), &r).await.expect("CloseStdin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_through_the_agent() {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is needed (busybox-static)"
    );
    let a = AgentProc::start();
    let client = a.connect().await;
    let c = AgentServiceClient::new(client.clone());
    let h = HealthClient::new(client);

    let hc = h
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("Check");
    assert_eq!(
        hc.status.enum_value_or_default(),
        health::health_check_response::ServingStatus::SERVING
    );
    // Not in a TEE here: said in the guest details, as the agent said once in its log.
    let gd = c
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    assert_eq!(gd.agent_details.extra_features, ["tee: none"]);
    // GetMetrics: the agent's own RSS, a positive byte count, in Prometheus text.
    let m = c
        .get_metrics(ctx(), &agent::GetMetricsRequest::new())
        .await
        .expect("GetMetrics");
    let gauge = |name: &str| -> u64 {
        m.metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", m.metrics))
    };
    let rss = gauge("kata_cc_agent_rss_bytes");
    assert!(rss > 0, "{}", m.metrics);
    // Its two parts (heap and stacks; the binary's pages) are both there and within the whole.
    let (anon, file) = (
        gauge("kata_cc_agent_rss_anon_bytes"),
        gauge("kata_cc_agent_rss_file_bytes"),
    );
    assert!(anon > 0 && file > 0 && anon + file <= rss, "{}", m.metrics);
    assert!(
        m.metrics.contains("# TYPE kata_cc_agent_rss_bytes gauge"),
        "{}",
        m.metrics
    );
    let e = c
        .pause_container(ctx(), &agent::PauseContainerRequest::new())
        .await
        .expect_err("Pause is not implemented");
    match e {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED);
            assert_eq!(
                s.message(),
                "PauseContainerRequest is not implemented by kata-cc-agent"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }

    assert_eq!(
        gd.agent_details.storage_handlers,
        [contract::IMAGE_DRIVER, contract::EPHEMERAL_DRIVER]
    );

    let l = test_layer();
    let digest = l.layer.digest.clone();
    let diff_id = l.layer.diff_id.clone();

    // A layer whose diff_id does not match fails CreateContainer, naming the layer; nothing stays.
    let bad_blob = copy_blob(&a, &c, &l, "bad").await;
    let wrong = sha(b"not this layer");
    let mut bad = l.layer.clone();
    bad.diff_id = wrong.clone();
    let req = create_request(&a, "bad", &bad, &["true"]);
    let e = c
        .create_container(ctx(), &req)
        .await
        .expect_err("diff_id mismatch");
    let msg = format!("{e:?}");
    assert!(
        msg.contains(&format!(
            "layer {digest}: diff_id mismatch: expected {wrong} got {diff_id}"
        )),
        "{msg}"
    );
    assert!(!a.path("containers/bad").exists());
    assert!(!bad_blob.exists());

    // Root.Path must be the image storage's mount point; an old-style layer storage is refused.
    copy_blob(&a, &c, &l, "bad").await;
    let mut req = create_request(&a, "bad", &l.layer, &["true"]);
    req.OCI
        .as_mut()
        .expect("spec")
        .Root
        .as_mut()
        .expect("root")
        .Path = "rootfs".into();
    let (code, msg) = status_of(&c.create_container(ctx(), &req).await.expect_err("root"));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("Root.Path \"rootfs\"") && msg.contains("containers/bad/rootfs"),
        "{msg}"
    );
    assert!(!bad_blob.exists(), "the blob is consumed either way");
    let mut req = create_request(&a, "bad", &l.layer, &["true"]);
    req.storages[0].driver = "kata-cc.layer".into();
    let (_, msg) = status_of(&c.create_container(ctx(), &req).await.expect_err("driver"));
    assert!(msg.contains("\"kata-cc.layer\""), "{msg}");
    // Reserved ids name Kata's own directories.
    let req = create_request(&a, "shared", &l.layer, &["true"]);
    let (_, msg) = status_of(&c.create_container(ctx(), &req).await.expect_err("reserved"));
    assert!(msg.contains("\"shared\" is reserved"), "{msg}");

    // The real container.
    let cid = "c1";
    let blob_path = copy_blob(&a, &c, &l, cid).await;
    let req = create_request(
        &a,
        cid,
        &l.layer,
        &[
            "sh",
            "-c",
            "echo hello; echo err >&2; read line; echo got $line; exit 3",
        ],
    );
    c.create_container(ctx(), &req)
        .await
        .expect("CreateContainer");
    assert!(!blob_path.exists(), "the blob is consumed");
    let mut s = agent::StartContainerRequest::new();
    s.container_id = cid.into();
    c.start_container(ctx(), &s).await.expect("StartContainer");

    // exec with stdin
    exec(&c, cid, "e1", &["cat"], false).await;
    write_stdin(&c, cid, "e1", b"ping\n").await;
    close_stdin(&c, cid, "e1").await;
    assert_eq!(read_all(&c, cid, "e1", false).await, b"ping\n");
    assert_eq!(wait(&c, cid, "e1").await, 0);

    // large output arrives complete and in order
    exec(&c, cid, "e2", &["seq", "1", "300000"], false).await;
    let out = read_all(&c, cid, "e2", false).await;
    let expected: String = (1..=300000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected.as_bytes());
    assert_eq!(wait(&c, cid, "e2").await, 0);

    // signals: 128 + signo
    exec(&c, cid, "e3", &["sleep", "100"], false).await;
    let mut sig = agent::SignalProcessRequest::new();
    sig.container_id = cid.into();
    sig.exec_id = "e3".into();
    sig.signal = 15;
    c.signal_process(ctx(), &sig).await.expect("SignalProcess");
    assert_eq!(wait(&c, cid, "e3").await, 128 + 15);

    // terminal with resize
    exec(
        &c,
        cid,
        "t1",
        &["sh", "-c", "sleep 2; stty size; tty"],
        true,
    )
    .await;
    let mut rs = agent::TtyWinResizeRequest::new();
    rs.container_id = cid.into();
    rs.exec_id = "t1".into();
    rs.row = 33;
    rs.column = 77;
    c.tty_win_resize(ctx(), &rs).await.expect("TtyWinResize");
    let out = String::from_utf8_lossy(&read_all(&c, cid, "t1", false).await).to_string();
    assert!(out.contains("33 77"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(wait(&c, cid, "t1").await, 0);

    // the init process: stdout, stderr, stdin, exit code
    write_stdin(&c, cid, "", b"x\n").await;
    assert_eq!(read_all(&c, cid, "", false).await, b"hello\ngot x\n");
    assert_eq!(read_all(&c, cid, cid, true).await, b"err\n");
    assert_eq!(wait(&c, cid, cid).await, 3);

    let mut st = agent::StatsContainerRequest::new();
    st.container_id = cid.into();
    c.stats_container(ctx(), &st).await.expect("StatsContainer");

    let mut rm = agent::RemoveContainerRequest::new();
    rm.container_id = cid.into();
    c.remove_container(ctx(), &rm)
        .await
        .expect("RemoveContainer");
    assert!(!a.path("containers/c1").exists());
    let e = c.start_container(ctx(), &s).await.expect_err("gone");
    assert!(format!("{e:?}").contains("container c1 not found"), "{e:?}");
}

/// A pod as the shim drives it: CreateSandbox (hostname, shm storage), a pause container whose
/// id is the sandbox id, an app container sharing its PID namespace, volumes copied with
/// CopyFile (a ConfigMap-like tree whose `..data` link is swapped), DestroySandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_shares_namespaces_volumes_and_shm() {
    let a = AgentProc::start();
    let c = AgentServiceClient::new(a.connect().await);
    let l = test_layer();
    let (pause, app) = ("kcc-pause", "kcc-app");
    let shared = a.path("shared");
    let shm = a.path("sandbox/shm");
    let with_pidns = |cid: &str, args: &[&str]| {
        let mut r = create_request(&a, cid, &l.layer, args);
        r.sandbox_pidns = true;
        r
    };

    // sandbox_pidns needs the sandbox's pause container.
    copy_blob(&a, &c, &l, app).await;
    let e = c
        .create_container(ctx(), &with_pidns(app, &["true"]))
        .await
        .expect_err("no sandbox");
    let (code, msg) = status_of(&e);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("no CreateSandbox"), "{msg}");

    let mut sb = agent::CreateSandboxRequest::new();
    sb.hostname = "kcc-pod".into();
    sb.dns = vec!["nameserver 10.0.0.10".into(), "".into()];
    sb.sandbox_id = pause.into();
    let mut st = agent::Storage::new();
    st.driver = contract::EPHEMERAL_DRIVER.into();
    st.source = "shm".into();
    st.fstype = "tmpfs".into();
    st.options = contract::shm_options(contract::DEFAULT_SHM_SIZE);
    st.mount_point = shm.display().to_string();
    sb.storages = vec![st];
    c.create_sandbox(ctx(), &sb).await.expect("CreateSandbox");
    let mounts = a.mounts();
    for m in ["sandbox/shm", "sandbox/ns/ipc", "sandbox/ns/uts"] {
        let p = a.path(m).display().to_string();
        assert!(mounts.contains(&p), "{p} not mounted: {mounts:?}");
    }
    let (code, _) = status_of(&c.create_sandbox(ctx(), &sb).await.expect_err("twice"));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);

    copy_blob(&a, &c, &l, app).await;
    let e = c
        .create_container(ctx(), &with_pidns(app, &["true"]))
        .await
        .expect_err("no pause yet");
    let (_, msg) = status_of(&e);
    assert!(
        msg.contains("pause container kcc-pause does not exist"),
        "{msg}"
    );

    // The app's volumes: a ConfigMap-like tree and a resolv.conf.
    let top = shared.join(format!("{app}-0123456789abcdef-cm"));
    copy_file(&c, &top, S_IFDIR | 0o1777, b"").await;
    copy_file(&c, &top.join("..2024_01"), S_IFDIR | 0o755, b"").await;
    copy_file(&c, &top.join("..2024_01/key"), S_IFREG | 0o644, b"v1").await;
    copy_file(&c, &top.join("..data"), S_IFLNK | 0o777, b"..2024_01").await;
    copy_file(&c, &top.join("key"), S_IFLNK | 0o777, b"..data/key").await;
    let resolv = shared.join(format!("{app}-0123456789abcdef-resolv.conf"));
    copy_file(&c, &resolv, S_IFREG | 0o644, b"nameserver 10.0.0.10\n").await;
    // Escapes are refused, naming what was asked.
    for (path, mode, data, want) in [
        (top.join("etc"), S_IFLNK | 0o777, &b"/etc"[..], "absolute"),
        (top.join("up"), S_IFLNK | 0o777, &b"../../x"[..], "'..'"),
        (
            top.join("..data/evil"),
            S_IFREG | 0o644,
            &b"x"[..],
            "..data",
        ),
        (
            PathBuf::from("/etc/kcc-test"),
            S_IFREG | 0o644,
            &b"x"[..],
            "/etc/kcc-test",
        ),
        (top.join("sock"), 0o140755, &b""[..], "0o140755"),
    ] {
        let e = try_copy_file(&c, &path, mode, data)
            .await
            .expect_err("refused");
        let (code, msg) = status_of(&e);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains(want), "{msg} (want {want})");
    }
    assert!(!Path::new("/etc/kcc-test").exists());

    let shm_mount = bind("/dev/shm", &shm, &["rbind"]);
    let mut req = create_request(&a, pause, &l.layer, &["sleep", "1001"]);
    req.OCI
        .as_mut()
        .expect("spec")
        .Mounts
        .push(shm_mount.clone());
    run_container(&a, &c, &l, req).await;
    let mut req = with_pidns(app, &["sleep", "1002"]);
    let spec = req.OCI.as_mut().expect("spec");
    spec.Mounts.push(shm_mount.clone());
    spec.Mounts
        .push(bind("/etc/config", &top, &["rbind", "rprivate", "ro"]));
    spec.Mounts.push(bind(
        "/etc/resolv.conf",
        &resolv,
        &["rbind", "rprivate", "ro"],
    ));
    run_container(&a, &c, &l, req).await;

    // One hostname, one IPC and UTS namespace for both; not the host's.
    for cid in [pause, app] {
        let (code, out) = output(&c, cid, "h", &["cat", "/proc/sys/kernel/hostname"]).await;
        assert_eq!((code, out.as_str()), (0, "kcc-pod\n"), "{cid}");
    }
    for ns in ["ipc", "uts"] {
        let link = format!("/proc/self/ns/{ns}");
        let (_, p) = output(&c, pause, &format!("p{ns}"), &["readlink", &link]).await;
        let (_, q) = output(&c, app, &format!("a{ns}"), &["readlink", &link]).await;
        assert_eq!(p, q, "{ns}");
        let host = std::fs::read_link(&link).expect("own ns");
        assert_ne!(p.trim(), host.display().to_string(), "{ns}");
    }
    // The app sees the pause as PID 1.
    let (_, cmdline) = output(&c, app, "pid1", &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(cmdline, "sleep\x001001\x00");
    // /dev/shm is the sandbox's tmpfs, shared.
    let (code, _) = output(&c, pause, "w", &["sh", "-c", "echo shm-ok > /dev/shm/x"]).await;
    assert_eq!(code, 0);
    let (_, out) = output(&c, app, "r", &["cat", "/dev/shm/x"]).await;
    assert_eq!(out, "shm-ok\n");

    // The volumes, read-only; the kubelet's ..data swap reaches the container.
    let (_, out) = output(&c, app, "cm1", &["cat", "/etc/config/key"]).await;
    assert_eq!(out, "v1");
    let (_, out) = output(&c, app, "rc", &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(out, "nameserver 10.0.0.10\n");
    let (code, _) = output(&c, app, "ro", &["sh", "-c", "echo x > /etc/config/new"]).await;
    assert_ne!(code, 0, "a read-only volume takes no writes");
    copy_file(&c, &top.join("..2024_02"), S_IFDIR | 0o755, b"").await;
    copy_file(&c, &top.join("..2024_02/key"), S_IFREG | 0o644, b"v2").await;
    copy_file(&c, &top.join("..data"), S_IFLNK | 0o777, b"..2024_02").await;
    let (_, out) = output(&c, app, "cm2", &["cat", "/etc/config/key"]).await;
    assert_eq!(out, "v2");

    // A volume that was never copied fails the container, naming it.
    let missing = shared.join("kcc-bad-0123456789abcdef-hosts");
    copy_blob(&a, &c, &l, "kcc-bad").await;
    let mut req = create_request(&a, "kcc-bad", &l.layer, &["true"]);
    req.OCI
        .as_mut()
        .expect("spec")
        .Mounts
        .push(bind("/etc/hosts", &missing, &["rbind", "ro"]));
    let (code, msg) = status_of(&c.create_container(ctx(), &req).await.expect_err("missing"));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("not copied"),
        "{msg}"
    );

    // Removing the app removes its copied files.
    remove(&c, app).await;
    assert!(!top.exists() && !resolv.exists());

    // A pause that is gone cannot be joined.
    let mut sig = agent::SignalProcessRequest::new();
    sig.container_id = pause.into();
    sig.signal = 9;
    c.signal_process(ctx(), &sig).await.expect("kill the pause");
    assert_eq!(wait(&c, pause, pause).await, 128 + 9);
    copy_blob(&a, &c, &l, "kcc-late").await;
    let (code, msg) = status_of(
        &c.create_container(ctx(), &with_pidns("kcc-late", &["true"]))
            .await
            .expect_err("pause gone"),
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("kcc-pause is not running"), "{msg}");

    c.destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    assert_eq!(a.mounts(), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&shared).expect("shared").count(), 0);
    assert_eq!(
        std::fs::read_dir(a.path("containers"))
            .expect("containers")
            .count(),
        0
    );
}

/// UpdateContainer reaches the container's cgroup or says which field it refuses; an OOM kill
/// is reported by GetOOMEvent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_oom() {
    let a = AgentProc::start();
    let client = a.connect().await;
    let c = AgentServiceClient::new(client.clone());
    let l = test_layer();

    let upd = "kcc-upd";
    run_container(
        &a,
        &c,
        &l,
        create_request(&a, upd, &l.layer, &["sleep", "1000"]),
    )
    .await;
    let mut u = agent::UpdateContainerRequest::new();
    u.container_id = upd.into();
    let mut r = oci::LinuxResources::new();
    let mut m = oci::LinuxMemory::new();
    m.Limit = 64 << 20;
    r.Memory = Some(m).into();
    let mut cpu = oci::LinuxCPU::new();
    cpu.Shares = 512;
    cpu.Quota = 50_000;
    cpu.Period = 100_000;
    r.CPU = Some(cpu).into();
    let mut p = oci::LinuxPids::new();
    p.Limit = 50;
    r.Pids = Some(p).into();
    u.resources = Some(r.clone()).into();
    c.update_container(ctx(), &u)
        .await
        .expect("UpdateContainer");
    let read = |v2: &str, v1: (&str, &str)| {
        let f = cgroup_file(upd, v2, v1);
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory.max", ("memory", "memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("pids.max", ("pids", "pids.max")), "50");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("cpu.max", ("", "")), "50000 100000");
        assert_eq!(read("cpu.weight", ("", "")), "20");
    } else {
        assert_eq!(read("", ("cpu", "cpu.cfs_quota_us")), "50000");
        assert_eq!(read("", ("cpu", "cpu.shares")), "512");
    }
    // More memory than the VM has: refused, naming the field.
    let mut big = r.clone();
    big.Memory.as_mut().expect("memory").Limit = 1 << 50;
    u.resources = Some(big).into();
    let (code, msg) = status_of(&c.update_container(ctx(), &u).await.expect_err("too big"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("resources.Memory.Limit 1125899906842624") && msg.contains("MemTotal"),
        "{msg}"
    );
    u.container_id = "nope".into();
    let (code, _) = status_of(&c.update_container(ctx(), &u).await.expect_err("no such"));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    // OOM: a shell that doubles a string under a 32 MiB limit.
    let oom = "kcc-oom";
    let waiter = {
        let c = AgentServiceClient::new(client.clone());
        tokio::spawn(async move {
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(180).as_nanos() as i64);
            c.get_oom_event(ctx, &agent::GetOOMEventRequest::new())
                .await
        })
    };
    let mut req = create_request(
        &a,
        oom,
        &l.layer,
        &["sh", "-c", "x=a; while :; do x=$x$x; done"],
    );
    let mut res = oci::LinuxResources::new();
    let mut m = oci::LinuxMemory::new();
    m.Limit = 32 << 20;
    res.Memory = Some(m).into();
    req.OCI
        .as_mut()
        .expect("spec")
        .Linux
        .as_mut()
        .expect("linux")
        .Resources = Some(res).into();
    run_container(&a, &c, &l, req).await;
    assert_eq!(
        wait(&c, oom, oom).await,
        128 + 9,
        "killed by the OOM killer"
    );
    let ev = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("an OOM event within 60 s")
        .expect("task")
        .expect("GetOOMEvent");
    assert_eq!(ev.container_id, oom);
    remove(&c, oom).await;
    remove(&c, upd).await;
}
