//! Containers and their processes in the guest: bundles, layers, launcher lifecycle, stdio,
//! statuses.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_proto::contract::{self, LayerRef};
use agent_proto::{agent, oci};
use tokio::sync::{watch, Mutex};

use crate::cgroup::{self, Cgroup};
use crate::error::{AgentError, Result};
use crate::launcher::{LaunchError, LaunchIo, Launcher};
use crate::layers::{self, Layer};
use crate::oom::{OomEvents, OomWatch};
use crate::paths::Paths;
use crate::reaper::Reaper;
use crate::sandbox::{self, SandboxSetup};
use crate::spec;
use crate::stdio::{self, ProcessIo};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a terminal process's launcher may take to hand over the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);
/// RemoveContainer's wait for the init process after SIGKILL when the request gives none.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One process of a container (its init or an exec).
pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
    status: watch::Receiver<Option<i32>>,
}

/// Runs when a process has exited, before its status is visible.
type OnExit = Box<dyn FnOnce() + Send>;

impl Process {
    fn new(pid: i32, since: u64, io: ProcessIo, on_exit: Option<OnExit>) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let waiter = Reaper::global().watch(pid, since);
        tokio::spawn(async move {
            let st = waiter.wait().await;
            if let Some(f) = on_exit {
                f();
            }
            let _ = tx.send(Some(st.code()));
        });
        Arc::new(Process {
            pid,
            io,
            status: rx,
        })
    }

    pub fn exit_code(&self) -> Option<i32> {
        *self.status.borrow()
    }

    /// The exit code (or 128 + signal) once the process has ended.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.status.clone();
        loop {
            if let Some(c) = *rx.borrow_and_update() {
                return c;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().unwrap_or(128 + libc::SIGKILL);
            }
        }
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init_exec_id: String,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    started: AtomicBool,
    cgroup: Cgroup,
    oom: Arc<OomWatch>,
}

impl Container {
    pub fn cgroup_dir(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(spec::cgroup_path(&self.id).trim_start_matches('/'))
    }
}

pub struct Sandbox {
    launcher: Launcher,
    pub paths: Paths,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// What CreateSandbox set up (none before it, or in host tests that skip it).
    setup: Mutex<Option<SandboxSetup>>,
    pub oom_events: Arc<OomEvents>,
    cgroup_version: cgroup::Version,
}

fn check_id(kind: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(format!(
            "{kind} {id:?} is not a valid id (letters, digits, '-', '_', '.')"
        )))
    }
}

/// Stdio for a new process: the launcher's side and ours (for a terminal, ours arrives while the
/// launcher runs).
enum PendingIo {
    Pipes(ProcessIo),
    Console(tokio::net::UnixListener, PathBuf),
}

/// Where console sockets are bound: a unix socket path must fit in 108 bytes, which a path in a
/// bundle named by CRI's 64-hex ids (container and exec) does not.
const CONSOLE_SOCKET_DIR: &str = "/run/kata-cc/tty";

fn console_socket_path() -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = Path::new(CONSOLE_SOCKET_DIR);
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("creating", dir, e))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{}-{n}.sock", std::process::id())))
}

fn prepare_io(terminal: bool, name: &str) -> Result<(LaunchIo, PendingIo)> {
    if terminal {
        let sock = console_socket_path()?;
        let _ = std::fs::remove_file(&sock);
        let l = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| AgentError::io("binding console socket", &sock, e))?;
        return Ok((LaunchIo::Console(sock.clone()), PendingIo::Console(l, sock)));
    }
    let err =
        |e: std::io::Error| AgentError::internal(format!("creating stdio pipes for {name}: {e}"));
    let (in_r, in_w) = stdio::pipe().map_err(err)?;
    let (out_r, out_w) = stdio::output_pipe().map_err(err)?;
    let (err_r, err_w) = stdio::output_pipe().map_err(err)?;
    let ours = ProcessIo::from_pipes(in_w, out_r, err_r).map_err(err)?;
    Ok((LaunchIo::Pipes(in_r, out_w, err_w), PendingIo::Pipes(ours)))
}

impl PendingIo {
    /// Runs `launch` (the create or exec given the matching [`LaunchIo`]) and returns our end of
    /// the process's I/O (the pipes, or the pty master sent on the console socket meanwhile)
    /// with what `launch` returned. `what` names the process in errors.
    async fn complete<T>(
        self,
        what: &str,
        launch: impl std::future::Future<Output = Result<T>>,
    ) -> Result<(ProcessIo, T)> {
        let (l, sock) = match self {
            PendingIo::Pipes(io) => {
                let out = launch.await?;
                return Ok((io, out));
            }
            PendingIo::Console(l, sock) => (l, sock),
        };
        // Accepted while the launcher runs: it hands the pty over before it returns.
        let recv = tokio::spawn(async move {
            let r = receive_pty(l, &sock).await;
            let _ = std::fs::remove_file(&sock);
            r
        });
        let out = match launch.await {
            Ok(out) => out,
            Err(e) => {
                recv.abort();
                return Err(e);
            }
        };
        let fd = recv
            .await
            .map_err(|e| AgentError::internal(format!("{what}: console: {e}")))??;
        let io = ProcessIo::from_pty(fd)
            .map_err(|e| AgentError::internal(format!("{what}: pty: {e}")))?;
        Ok((io, out))
    }
}

/// Receive the pty master the launcher sends on the console socket.
async fn receive_pty(listener: tokio::net::UnixListener, sock: &Path) -> Result<OwnedFd> {
    let (stream, _) = tokio::time::timeout(CONSOLE_TIMEOUT, listener.accept())
        .await
        .map_err(|_| AgentError::DeadlineExceeded(format!("no pty arrived on {}", sock.display())))?
        .map_err(|e| AgentError::io("accepting on", sock, e))?;
    let std_stream = stream
        .into_std()
        .map_err(|e| AgentError::io("console socket", sock, e))?;
    std_stream
        .set_nonblocking(false)
        .map_err(|e| AgentError::io("console socket", sock, e))?;
    let sock2 = sock.to_path_buf();
    tokio::task::spawn_blocking(move || {
        recv_fd(&std_stream).map_err(|e| AgentError::io("receiving the pty master on", &sock2, e))
    })
    .await
    .map_err(|e| AgentError::internal(format!("console receiver: {e}")))?
}

pub(crate) fn recv_fd(s: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our table for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "no file descriptor in the console message",
    ))
}

impl Sandbox {
    pub fn new(launcher: Launcher, paths: Paths) -> Sandbox {
        Sandbox {
            launcher,
            paths,
            containers: Mutex::new(HashMap::new()),
            setup: Mutex::new(None),
            oom_events: Arc::new(OomEvents::default()),
            cgroup_version: cgroup::version(Path::new(CGROUP_ROOT)),
        }
    }

    /// The container's init, created (waiting for StartContainer); its pid.
    async fn create_process(
        &self,
        cid: &str,
        bundle: &Path,
        pid_file: &Path,
        io: LaunchIo,
    ) -> Result<i32> {
        self.launcher
            .create(cid, bundle, pid_file, io)
            .await
            .map_err(launch_error)
    }

    async fn exec_in(
        &self,
        cid: &str,
        process: &Path,
        pid_file: &Path,
        io: LaunchIo,
    ) -> Result<i32> {
        self.launcher
            .exec(cid, process, pid_file, io)
            .await
            .map_err(launch_error)
    }

    async fn start_init(&self, cid: &str) -> Result<()> {
        self.launcher.start(cid).await.map_err(launch_error)
    }

    async fn delete_state(&self, cid: &str) -> Result<()> {
        self.launcher.delete(cid).await.map_err(launch_error)
    }

    /// CreateSandbox: the shared namespaces and storages, once.
    pub async fn create_sandbox(&self, req: &agent::CreateSandboxRequest) -> Result<()> {
        let mut slot = self.setup.lock().await;
        if let Some(s) = slot.as_ref() {
            return Err(AgentError::AlreadyExists(format!(
                "CreateSandbox: sandbox {} exists already",
                s.sandbox_id
            )));
        }
        let (paths, r) = (self.paths.clone(), req.clone());
        let setup = tokio::task::spawn_blocking(move || sandbox::create(&paths, &r))
            .await
            .map_err(|e| AgentError::internal(format!("CreateSandbox: {e}")))??;
        log::info!(
            "sandbox {} created: hostname {:?}, {} storage(s), DNS {:?}",
            setup.sandbox_id,
            setup.hostname,
            setup.mounts.len(),
            setup.dns
        );
        *slot = Some(setup);
        Ok(())
    }

    /// DestroySandbox (and the agent's end): every container, then what CreateSandbox set up,
    /// then the copied files.
    pub async fn destroy(&self) -> Result<()> {
        let res = self.remove_all().await;
        if let Some(mut s) = self.setup.lock().await.take() {
            for e in s.teardown() {
                log::warn!("DestroySandbox: {e}");
            }
            log::info!("sandbox {} destroyed", s.sandbox_id);
        }
        if let Ok(rd) = std::fs::read_dir(&self.paths.shared) {
            for e in rd.flatten() {
                let _ = remove_any(&e.path());
            }
        }
        res
    }

    /// The sandbox id CreateSandbox gave.
    pub async fn sandbox_id(&self) -> Option<String> {
        self.setup
            .lock()
            .await
            .as_ref()
            .map(|s| s.sandbox_id.clone())
    }

    /// The PID namespace of the sandbox's pause container (the container whose id is the
    /// sandbox id), for a container created with `sandbox_pidns`.
    async fn pause_pid_ns(&self, cid: &str) -> Result<Option<PathBuf>> {
        let Some(sid) = self.sandbox_id().await else {
            return Err(AgentError::FailedPrecondition(format!(
                "container {cid}: sandbox_pidns: no CreateSandbox named the sandbox (and its \
                 pause container)"
            )));
        };
        if sid == cid {
            // The pause container makes the namespace the others join.
            return Ok(None);
        }
        let pause = self.containers.lock().await.get(&sid).cloned();
        let pause = pause.ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "container {cid}: sandbox_pidns: the sandbox's pause container {sid} does not \
                 exist"
            ))
        })?;
        if let Some(code) = pause.init.exit_code() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {cid}: sandbox_pidns: the sandbox's pause container {sid} is not \
                 running (exit status {code})"
            )));
        }
        let ns = PathBuf::from(format!("/proc/{}/ns/pid", pause.init.pid));
        if !ns.exists() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {cid}: sandbox_pidns: {} is gone (pause container {sid})",
                ns.display()
            )));
        }
        Ok(Some(ns))
    }

    /// Checks every running container's OOM counter (see [`crate::oom`]).
    pub async fn check_ooms(&self) {
        let running: Vec<Arc<Container>> = self
            .containers
            .lock()
            .await
            .values()
            .filter(|c| c.init.exit_code().is_none())
            .cloned()
            .collect();
        for c in running {
            c.oom.check();
        }
    }

    /// UpdateContainer: the resources applied to the container's cgroup.
    pub async fn update_container(&self, cid: &str, r: Option<&oci::LinuxResources>) -> Result<()> {
        let c = self.container(cid).await?;
        let Some(r) = r else {
            return Ok(());
        };
        let ctx = format!("container {cid}");
        let writes = c
            .cgroup
            .plan(r, cgroup::mem_total())
            .map_err(|e| e.context(&ctx))?;
        c.cgroup.apply(&writes).map_err(|e| e.context(&ctx))?;
        log::info!(
            "container {cid}: updated {}",
            writes
                .iter()
                .map(|w| format!("{}={}", w.field, w.content))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    pub async fn container(&self, cid: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(cid)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("container {cid} not found")))
    }

    /// The process named by (container id, exec id); empty or the init's exec id is the init.
    pub async fn process(&self, cid: &str, exec_id: &str) -> Result<Arc<Process>> {
        let c = self.container(cid).await?;
        if exec_id.is_empty() || exec_id == c.init_exec_id || exec_id == c.id {
            return Ok(c.init.clone());
        }
        let found = c.execs.lock().await.get(exec_id).cloned();
        found.ok_or_else(|| {
            AgentError::NotFound(format!("process {exec_id} not found in container {cid}"))
        })
    }

    pub async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()> {
        let cid = req.container_id.clone();
        check_id("container id", &cid)?;
        if contract::RESERVED_IDS.contains(&cid.as_str()) {
            return Err(AgentError::invalid(format!(
                "container id {cid:?} is reserved: {} names the agent's own directory",
                self.paths.bundle(&cid).display()
            )));
        }
        if self.containers.lock().await.contains_key(&cid) {
            return Err(AgentError::AlreadyExists(format!(
                "container {cid} already exists"
            )));
        }
        let bundle = self.paths.bundle(&cid);
        if bundle.exists() {
            return Err(AgentError::AlreadyExists(format!(
                "container {cid}: bundle {} already exists",
                bundle.display()
            )));
        }
        // Layer blobs are consumed by this request either way: guest memory is precious.
        let blobs: Vec<PathBuf> = req
            .storages
            .iter()
            .flat_map(|s| s.driver_options.iter())
            .filter_map(|o| LayerRef::parse(o)?.ok())
            .map(|l| self.paths.blob(&l, &cid))
            .collect();
        let res = self.create_in(&req, &bundle).await;
        for b in blobs {
            let _ = std::fs::remove_file(&b);
        }
        match res {
            Ok(c) => {
                self.containers.lock().await.insert(cid, c);
                Ok(())
            }
            Err(e) => {
                // Nothing of a failed container stays behind.
                let _ = self.delete_state(&cid).await;
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn create_in(
        &self,
        req: &agent::CreateContainerRequest,
        bundle: &Path,
    ) -> Result<Arc<Container>> {
        let cid = req.container_id.as_str();
        let rootfs = self.paths.rootfs(cid);
        let spec_in = req.OCI.as_ref().ok_or_else(|| {
            AgentError::invalid(format!(
                "container {cid}: CreateContainerRequest.OCI is missing"
            ))
        })?;
        let refs = crate::storage::image_layers(&rootfs, &req.storages)
            .map_err(|e| AgentError::invalid(format!("container {cid}: {e}")))?;
        let root_path = spec_in.Root.as_ref().map(|r| r.Path.as_str()).unwrap_or("");
        if Path::new(root_path) != rootfs {
            return Err(AgentError::invalid(format!(
                "container {cid}: OCI Root.Path {root_path:?} must be {} (the image storage's \
                 mount point)",
                rootfs.display()
            )));
        }
        let layers_ = refs
            .iter()
            .map(|r| Layer::from_ref(self.paths.blob(r, cid), r))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| AgentError::invalid(format!("container {cid}: {e}")))?;
        // The namespaces it joins, checked before the layers are unpacked.
        let mut g = spec::GuestSetup {
            shared_dir: self.paths.shared.clone(),
            shm_dir: self.paths.shm(),
            ..spec::GuestSetup::default()
        };
        if let Some(ns) = self.setup.lock().await.as_ref().and_then(|s| s.ns.clone()) {
            g.ipc_ns = Some(ns.ipc);
            g.uts_ns = Some(ns.uts);
        }
        if req.sandbox_pidns {
            g.pid_ns = self.pause_pid_ns(cid).await?;
        }

        std::fs::create_dir_all(&rootfs).map_err(|e| AgentError::io("creating", &rootfs, e))?;
        let root_dir = rootfs.clone();
        let t_layers = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> std::result::Result<(), layers::LayerError> {
            for l in &layers_ {
                l.apply(&root_dir)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| AgentError::internal(format!("container {cid}: layer task: {e}")))?
        .map_err(|e| AgentError::FailedPrecondition(format!("container {cid}: {e}")))?;

        let layers_ms = t_layers.elapsed().as_millis();
        // Unpacking used large buffers; hand what malloc keeps of them back to the guest.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        let t_launch = std::time::Instant::now();
        let config = spec::config_json(cid, spec_in, &rootfs, &g)
            .map_err(|e| AgentError::invalid(format!("container {cid}: {e}")))?;
        let cfg_path = bundle.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|e| AgentError::io("writing", &cfg_path, e))?;

        let terminal = spec_in.Process.as_ref().is_some_and(|p| p.Terminal);
        let (launch_io, pending) = prepare_io(terminal, "init")?;
        let pid_file = bundle.join("init.pid");
        let mark = Reaper::global().mark();
        let (io, pid) = pending
            .complete(
                &format!("container {cid}"),
                self.create_process(cid, bundle, &pid_file, launch_io),
            )
            .await?;
        let cg = Cgroup::new(
            Path::new(CGROUP_ROOT),
            &spec::cgroup_path(cid),
            self.cgroup_version,
        );
        let oom = Arc::new(OomWatch::new(cid, cg.clone(), self.oom_events.clone()));
        // An OOM kill of the init is queued before its exit status can be read.
        let last_check = oom.clone();
        let init = Process::new(pid, mark, io, Some(Box::new(move || last_check.check())));
        let init_exec_id = if req.exec_id.is_empty() {
            cid.to_string()
        } else {
            req.exec_id.clone()
        };
        log::info!(
            "container {cid} created, init pid {pid} (layers {layers_ms} ms, bundle + create {} ms)",
            t_launch.elapsed().as_millis()
        );
        Ok(Arc::new(Container {
            id: cid.to_string(),
            bundle: bundle.to_path_buf(),
            init_exec_id,
            init,
            execs: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            cgroup: cg,
            oom,
        }))
    }

    pub async fn start_container(&self, cid: &str) -> Result<()> {
        let c = self.container(cid).await?;
        if c.started.swap(true, Ordering::SeqCst) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {cid} is already started"
            )));
        }
        if let Err(e) = self.start_init(cid).await {
            c.started.store(false, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    pub async fn exec_process(&self, req: agent::ExecProcessRequest) -> Result<()> {
        let cid = req.container_id.as_str();
        let exec_id = req.exec_id.as_str();
        check_id("exec id", exec_id)?;
        let c = self.container(cid).await?;
        if c.init.exit_code().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {exec_id}: container {cid} is not running"
            )));
        }
        let mut execs = c.execs.lock().await;
        if execs.contains_key(exec_id) || exec_id == c.init_exec_id {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id} already exists in container {cid}"
            )));
        }
        let p = req.process.as_ref().ok_or_else(|| {
            AgentError::invalid(format!(
                "exec {exec_id}: ExecProcessRequest.process is missing"
            ))
        })?;
        let dir = c.bundle.join("execs");
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("creating", &dir, e))?;
        let pjson = dir.join(format!("{exec_id}.json"));
        std::fs::write(
            &pjson,
            serde_json::to_vec(&spec::process_json(p)).unwrap_or_default(),
        )
        .map_err(|e| AgentError::io("writing", &pjson, e))?;
        let pid_file = dir.join(format!("{exec_id}.pid"));
        let (launch_io, pending) = prepare_io(p.Terminal, exec_id)?;
        let mark = Reaper::global().mark();
        let (io, pid) = pending
            .complete(
                &format!("exec {exec_id}"),
                self.exec_in(cid, &pjson, &pid_file, launch_io),
            )
            .await?;
        execs.insert(exec_id.to_string(), Process::new(pid, mark, io, None));
        log::info!("container {cid}: exec {exec_id} started, pid {pid}");
        Ok(())
    }

    pub async fn signal_process(&self, cid: &str, exec_id: &str, signal: u32) -> Result<()> {
        let p = self.process(cid, exec_id).await?;
        if p.exit_code().is_some() {
            return Err(AgentError::NotFound(format!(
                "container {cid} process {exec_id:?} has already exited"
            )));
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| AgentError::invalid(format!("signal {signal} is not a valid signal")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(|e| {
            AgentError::internal(format!(
                "signalling container {cid} process {exec_id:?} (pid {}): {e}",
                p.pid
            ))
        })
    }

    pub async fn remove_container(&self, cid: &str, timeout_secs: u32) -> Result<()> {
        let c = self.container(cid).await?;
        if c.init.exit_code().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let t = if timeout_secs == 0 {
                DEFAULT_REMOVE_TIMEOUT
            } else {
                Duration::from_secs(timeout_secs.into())
            };
            if tokio::time::timeout(t, c.init.wait()).await.is_err() {
                return Err(AgentError::DeadlineExceeded(format!(
                    "container {cid}: init process {} did not exit within {}s of SIGKILL",
                    c.init.pid,
                    t.as_secs()
                )));
            }
        }
        self.delete_state(cid).await?;
        if let Err(e) = std::fs::remove_dir_all(&c.bundle) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(AgentError::io("removing", &c.bundle, e));
            }
        }
        self.containers.lock().await.remove(cid);
        // Its copied files go with it; the pause container's (the sandbox's, which others may
        // share) stay until DestroySandbox.
        if self.sandbox_id().await.as_deref() != Some(cid) {
            self.remove_copied(cid);
        }
        log::info!("container {cid} removed");
        Ok(())
    }

    /// Removes `<shared>/<cid>-<16 hex>-*`, what CopyFile made for the container.
    fn remove_copied(&self, cid: &str) {
        let Ok(rd) = std::fs::read_dir(&self.paths.shared) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(cid)) else {
                continue;
            };
            let b = rest.as_bytes();
            let ours = b.len() > 18
                && b[0] == b'-'
                && b[1..17].iter().all(u8::is_ascii_hexdigit)
                && b[17] == b'-';
            if ours {
                if let Err(err) = remove_any(&e.path()) {
                    log::warn!("removing {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Remove every container (DestroySandbox).
    pub async fn remove_all(&self) -> Result<()> {
        let ids: Vec<String> = self.containers.lock().await.keys().cloned().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.remove_container(&id, 0).await {
                log::error!("{e}");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub async fn stats(&self, cid: &str) -> Result<agent::StatsContainerResponse> {
        let c = self.container(cid).await?;
        let mut r = agent::StatsContainerResponse::new();
        r.cgroup_stats = Some(crate::stats::cgroup_stats(&c.cgroup_dir())).into();
        Ok(r)
    }
}

fn launch_error(e: LaunchError) -> AgentError {
    match e {
        LaunchError::Timeout { .. } => AgentError::DeadlineExceeded(e.to_string()),
        e => AgentError::internal(e.to_string()),
    }
}

/// Removes a file, link or directory tree (not following links).
fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
