//! Containers and their processes in the guest: bundles, layers, runc lifecycle, stdio, statuses.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_proto::agent;
use agent_proto::contract::LAYER_DRIVER;
use tokio::sync::{watch, Mutex};

use crate::error::{AgentError, Result};
use crate::layers::{self, Layer};
use crate::reaper::Reaper;
use crate::runc::{read_pid, Runc, RuncIo};
use crate::spec;
use crate::stdio::{self, ProcessIo};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a terminal process's runc may take to hand over the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);
/// RemoveContainer's wait for the init process after SIGKILL when the request gives none.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One process of a container (its init or an exec).
pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
    status: watch::Receiver<Option<i32>>,
}

impl Process {
    fn new(pid: i32, since: u64, io: ProcessIo) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let waiter = Reaper::global().watch(pid, since);
        tokio::spawn(async move {
            let st = waiter.wait().await;
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
}

impl Container {
    pub fn cgroup_dir(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(spec::cgroup_path(&self.id).trim_start_matches('/'))
    }
}

pub struct Sandbox {
    pub runc: Runc,
    pub containers_dir: PathBuf,
    /// Where CopyFile puts layer blobs; blobs used by CreateContainer are removed from here.
    pub layers_dir: PathBuf,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pub sandbox_id: Mutex<Option<String>>,
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

/// Stdio for a new process: runc's side and ours (for a terminal, ours arrives after runc runs).
enum PendingIo {
    Pipes(ProcessIo),
    Console(tokio::net::UnixListener, PathBuf),
}

fn prepare_io(terminal: bool, dir: &Path, name: &str) -> Result<(RuncIo, PendingIo)> {
    if terminal {
        let sock = dir.join(format!("{name}.console.sock"));
        let _ = std::fs::remove_file(&sock);
        let l = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| AgentError::io("binding console socket", &sock, e))?;
        return Ok((RuncIo::Console(sock.clone()), PendingIo::Console(l, sock)));
    }
    let err =
        |e: std::io::Error| AgentError::internal(format!("creating stdio pipes for {name}: {e}"));
    let (in_r, in_w) = stdio::pipe().map_err(err)?;
    let (out_r, out_w) = stdio::output_pipe().map_err(err)?;
    let (err_r, err_w) = stdio::output_pipe().map_err(err)?;
    let ours = ProcessIo::from_pipes(in_w, out_r, err_r).map_err(err)?;
    Ok((RuncIo::Pipes(in_r, out_w, err_w), PendingIo::Pipes(ours)))
}

impl PendingIo {
    /// Runs `runc` (the create or exec given the matching [`RuncIo`]) and returns our end of the
    /// process's I/O: the pipes, or the pty master runc sends on the console socket meanwhile.
    /// `what` names the process in errors.
    async fn complete(
        self,
        what: &str,
        runc: impl std::future::Future<Output = Result<()>>,
    ) -> Result<ProcessIo> {
        let (l, sock) = match self {
            PendingIo::Pipes(io) => {
                runc.await?;
                return Ok(io);
            }
            PendingIo::Console(l, sock) => (l, sock),
        };
        // Accepted while runc runs: runc hands the pty over before it returns.
        let recv = tokio::spawn(async move {
            let r = receive_pty(l, &sock).await;
            let _ = std::fs::remove_file(&sock);
            r
        });
        if let Err(e) = runc.await {
            recv.abort();
            return Err(e);
        }
        let fd = recv
            .await
            .map_err(|e| AgentError::internal(format!("{what}: console: {e}")))??;
        ProcessIo::from_pty(fd).map_err(|e| AgentError::internal(format!("{what}: pty: {e}")))
    }
}

/// Receive the pty master runc sends on the console socket.
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

fn recv_fd(s: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
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
    pub fn new(runc: Runc, containers_dir: PathBuf, layers_dir: PathBuf) -> Sandbox {
        Sandbox {
            runc,
            containers_dir,
            layers_dir,
            containers: Mutex::new(HashMap::new()),
            sandbox_id: Mutex::new(None),
        }
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
        if self.containers.lock().await.contains_key(&cid) {
            return Err(AgentError::AlreadyExists(format!(
                "container {cid} already exists"
            )));
        }
        let bundle = self.containers_dir.join(&cid);
        if bundle.exists() {
            return Err(AgentError::AlreadyExists(format!(
                "container {cid}: bundle {} already exists",
                bundle.display()
            )));
        }
        let blobs: Vec<PathBuf> = req
            .storages
            .iter()
            .filter(|s| s.driver == LAYER_DRIVER)
            .map(|s| PathBuf::from(&s.source))
            .collect();
        let res = self.create_in(&req, &bundle).await;
        // Layer blobs are consumed by this request either way: guest memory is precious.
        for b in blobs {
            if b.starts_with(&self.layers_dir) {
                let _ = std::fs::remove_file(&b);
            }
        }
        match res {
            Ok(c) => {
                self.containers.lock().await.insert(cid, c);
                Ok(())
            }
            Err(e) => {
                // Nothing of a failed container stays behind.
                let _ = self.runc.delete(&cid).await;
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
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| AgentError::io("creating", &rootfs, e))?;
        let spec_in = req.OCI.as_ref().ok_or_else(|| {
            AgentError::invalid(format!(
                "container {cid}: CreateContainerRequest.OCI is missing"
            ))
        })?;

        let mut layers_ = Vec::new();
        for s in &req.storages {
            if s.driver != LAYER_DRIVER {
                return Err(AgentError::invalid(format!(
                    "container {cid}: storage driver {:?} (source {}) is not supported",
                    s.driver, s.source
                )));
            }
            if Path::new(&s.mount_point) != rootfs {
                return Err(AgentError::invalid(format!(
                    "container {cid}: layer storage mount_point {} must be {}",
                    s.mount_point,
                    rootfs.display()
                )));
            }
            layers_.push(
                Layer::from_storage(&s.source, &s.fstype, &s.options)
                    .map_err(|e| AgentError::invalid(format!("container {cid}: {e}")))?,
            );
        }
        if layers_.is_empty() && spec_in.Root.as_ref().is_none_or(|r| r.Path.is_empty()) {
            return Err(AgentError::invalid(format!(
                "container {cid}: no kata-cc.layer storages and no root path"
            )));
        }
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
        let t_runc = std::time::Instant::now();
        let root_path = if req.storages.is_empty() {
            PathBuf::from(&spec_in.Root.Path)
        } else {
            rootfs.clone()
        };
        let config = spec::config_json(cid, spec_in, &root_path);
        let cfg_path = bundle.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|e| AgentError::io("writing", &cfg_path, e))?;

        let terminal = spec_in.Process.as_ref().is_some_and(|p| p.Terminal);
        let (runc_io, pending) = prepare_io(terminal, bundle, "init")?;
        let pid_file = bundle.join("init.pid");
        let mark = Reaper::global().mark();
        let io = pending
            .complete(
                &format!("container {cid}"),
                self.runc.create(cid, bundle, &pid_file, runc_io),
            )
            .await?;
        let pid = read_pid(&pid_file)?;
        let init = Process::new(pid, mark, io);
        let init_exec_id = if req.exec_id.is_empty() {
            cid.to_string()
        } else {
            req.exec_id.clone()
        };
        log::info!(
            "container {cid} created, init pid {pid} (layers {layers_ms} ms, bundle + runc create {} ms)",
            t_runc.elapsed().as_millis()
        );
        Ok(Arc::new(Container {
            id: cid.to_string(),
            bundle: bundle.to_path_buf(),
            init_exec_id,
            init,
            execs: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
        }))
    }

    pub async fn start_container(&self, cid: &str) -> Result<()> {
        let c = self.container(cid).await?;
        if c.started.swap(true, Ordering::SeqCst) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {cid} is already started"
            )));
        }
        if let Err(e) = self.runc.start(cid).await {
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
        let (runc_io, pending) = prepare_io(p.Terminal, &dir, exec_id)?;
        let mark = Reaper::global().mark();
        let io = pending
            .complete(
                &format!("exec {exec_id}"),
                self.runc.exec(cid, exec_id, &pjson, &pid_file, runc_io),
            )
            .await?;
        let pid = read_pid(&pid_file)?;
        execs.insert(exec_id.to_string(), Process::new(pid, mark, io));
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
        self.runc.delete(cid).await?;
        if let Err(e) = std::fs::remove_dir_all(&c.bundle) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(AgentError::io("removing", &c.bundle, e));
            }
        }
        self.containers.lock().await.remove(cid);
        log::info!("container {cid} removed");
        Ok(())
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
