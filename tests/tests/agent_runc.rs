//! The real agent binary, driven over ttrpc on a unix socket, running busybox containers with the
//! host's runc (the same code path as in the guest, minus PID 1 and vsock). Needs root and runc:
//! host tier (moved from guest/tests/agent_runc.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use agent_proto::{
    agent, agent_ttrpc::AgentServiceClient, health, health_ttrpc::HealthClient, oci,
};
use sha2::{Digest, Sha256};

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";

/// The agent process; killed by PID on drop.
struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
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
        let child = Command::new(kata_cc_tests::paths::workspace_bin("kata-cc-agent"))
            .env("KATA_CC_AGENT_LISTEN", format!("unix://{}", sock.display()))
            .env("KATA_CC_CONTAINERS_DIR", dir.path().join("containers"))
            .env("KATA_CC_LAYERS_DIR", dir.path().join("layers"))
            .env("KATA_CC_RUNC_ROOT", dir.path().join("runc"))
            .env("KATA_CC_RUNC", RUNC)
            .env("KATA_CC_POLICY_PATH", &policy)
            .spawn()
            .expect("start kata-cc-agent");
        AgentProc { child, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
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
    for applet in ["sh", "cat", "echo", "sleep", "seq", "stty", "tty", "kill"] {
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

async fn copy_blob(c: &AgentServiceClient, layers: &Path, blob: &[u8], digest: &str) -> String {
    let path = layers.join(digest.trim_start_matches("sha256:"));
    let path = path.to_str().expect("utf8").to_string();
    let mut off = 0usize;
    for chunk in blob.chunks(1 << 20) {
        let mut r = agent::CopyFileRequest::new();
        r.path = path.clone();
        r.file_size = blob.len() as i64;
        r.file_mode = 0o600;
        r.dir_mode = 0o750;
        r.offset = off as i64;
        r.data = chunk.to_vec();
        c.copy_file(ctx(), &r).await.expect("CopyFile");
        off += chunk.len();
    }
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

fn create_request(
    cid: &str,
    rootfs: &Path,
    blob: &str,
    diff_id: &str,
    digest: &str,
    args: &[&str],
) -> agent::CreateContainerRequest {
    let mut spec = oci::Spec::new();
    spec.Version = "1.0.2".into();
    spec.Process = Some(process(args, false)).into();
    let mut root = oci::Root::new();
    root.Path = "rootfs".into();
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
    spec.Linux = Some(oci::Linux::new()).into();
    let mut s = agent::Storage::new();
    s.driver = "kata-cc.layer".into();
    s.source = blob.into();
    s.fstype = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    s.options = vec![format!("diff_id={diff_id}"), format!("digest={digest}")];
    s.mount_point = rootfs.display().to_string();
    let mut r = agent::CreateContainerRequest::new();
    r.container_id = cid.into();
    r.exec_id = cid.into();
    r.storages = vec![s];
    r.OCI = Some(spec).into();
    r
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
        Path::new(RUNC).exists(),
        "{RUNC} is needed (hack/deps.sh installs it)"
    );
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
    let rss: u64 = m
        .metrics
        .lines()
        .find_map(|l| l.strip_prefix("kata_cc_agent_rss_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kata_cc_agent_rss_bytes in {:?}", m.metrics));
    assert!(rss > 0, "{}", m.metrics);
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

    let (blob, diff_id, digest) = busybox_layer();
    let layers = a.path("layers");

    // A layer whose diff_id does not match fails CreateContainer, naming the layer; nothing stays.
    let bad_path = copy_blob(&c, &layers, &blob, &digest).await;
    let wrong = sha(b"not this layer");
    let rootfs = a.path("containers/bad/rootfs");
    let req = create_request("bad", &rootfs, &bad_path, &wrong, &digest, &["true"]);
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
    assert!(!Path::new(&bad_path).exists());

    // The real container.
    let blob_path = copy_blob(&c, &layers, &blob, &digest).await;
    let cid = "c1";
    let rootfs = a.path("containers/c1/rootfs");
    let req = create_request(
        cid,
        &rootfs,
        &blob_path,
        &diff_id,
        &digest,
        &[
            "sh",
            "-c",
            "echo hello; echo err >&2; read line; echo got $line; exit 3",
        ],
    );
    c.create_container(ctx(), &req)
        .await
        .expect("CreateContainer");
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
    assert!(!Path::new(&blob_path).exists());
    let e = c.start_container(ctx(), &s).await.expect_err("gone");
    assert!(format!("{e:?}").contains("container c1 not found"), "{e:?}");
}
