//! The utility VM: QEMU plus (without `/dev/vhost-vsock`) the vhost-user vsock backend, the
//! sandbox state dir, and the agent connection. One `Vm` owns everything it starts; dropping it
//! kills both processes by PID and removes the state dir.

pub mod accel;
pub mod console;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod vsock_backend;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use crate::agent::{self, AgentClient, AgentConnectError, AGENT_VSOCK_PORT};
use crate::config::{Config, ConfigError};
use crate::sizing::VmSize;
use crate::snp::qemu::SnpLaunch;
use crate::timeline;
use accel::Accel;
use process::OwnedProcess;
pub use process::ProcessExit;
use qemu::{NetDevice, QemuLaunch, VsockDevice};
use vsock_backend::{BackendError, VsockBackend};

/// How QEMU ended.
pub type VmExit = ProcessExit;

/// Console lines quoted in errors.
const CONSOLE_LINES: usize = 20;
/// Bound on waiting for the backend's vhost-user socket.
const BACKEND_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one Health.Check call during boot.
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on QMP connect/quit.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest unix socket path (sun_path without the NUL).
const MAX_SOCKET_PATH: usize = 107;

pub struct VmSpec {
    pub id: String,
    pub size: VmSize,
    pub state_dir: PathBuf,
    /// SNP HOST_DATA (the pod policy's digest): becomes the `sev-snp-guest` object's
    /// `host-data` (`snp::qemu::snp_object`) when `confidential_guest = true`.
    pub host_data: Option<[u8; 32]>,
}

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `confidential_guest = true` on a host that cannot launch SNP: names what is missing.
    #[error(transparent)]
    SnpUnavailable(#[from] crate::snp::host::SnpUnavailable),
    #[error(transparent)]
    SnpArgs(#[from] crate::snp::qemu::SnpArgsError),
    #[error("invalid sandbox id {0:?}: must be non-empty, without '/', not . or ..")]
    BadId(String),
    #[error("sandbox state dir {0} already exists")]
    StateDirExists(PathBuf),
    #[error("cannot create sandbox state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket path {0} is longer than {MAX_SOCKET_PATH} bytes; use a shorter runtime.state_root"
    )]
    SocketPathTooLong(PathBuf),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot start QEMU {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {id}: QEMU exited ({exit}) before the agent answered; guest console: {}{}",
        .console.join(" | "),
        if .qemu_log.is_empty() { String::new() } else { format!("; QEMU: {}", .qemu_log.join(" | ")) })]
    BootFailed {
        id: String,
        exit: String,
        console: Vec<String>,
        qemu_log: Vec<String>,
    },
    #[error("VM {id}: the agent did not answer within {timeout:?} (hypervisor.qemu.boot_timeout; last error: {last}); guest console: {}",
        .console.join(" | "))]
    BootTimeout {
        id: String,
        timeout: Duration,
        #[source]
        last: Box<AgentWaitError>,
        console: Vec<String>,
    },
    #[error(transparent)]
    Agent(#[from] AgentConnectError),
    #[error("VM {id} is not running (QEMU {exit})")]
    NotRunning { id: String, exit: String },
    #[error("VM {id}: QEMU (pid {pid}) did not exit after SIGKILL")]
    Unkillable { id: String, pid: i32 },
}

/// Why the agent has not answered (yet) during boot: the last attempt's error.
#[derive(Debug, Error)]
pub enum AgentWaitError {
    /// Hybrid vsock: the agent's ready line did not appear on the console in time.
    #[error("{0}")]
    NoReadyLine(String),
    /// The deadline passed before a first attempt.
    #[error("none")]
    NoAttempt,
    #[error(transparent)]
    Connect(AgentConnectError),
    #[error("Health.Check: {0}")]
    Health(#[source] ttrpc::Error),
    #[error("QEMU exited ({0})")]
    QemuExited(VmExit),
}

/// How the host reaches the agent.
#[derive(Debug, Clone)]
enum AgentChannel {
    Hybrid { uds: PathBuf },
    Vsock { cid: u32 },
}

pub struct Vm {
    id: String,
    state_dir: PathBuf,
    qemu: Option<OwnedProcess>,
    backend: Option<VsockBackend>,
    qemu_exit: watch::Receiver<Option<ProcessExit>>,
    channel: AgentChannel,
    dial_timeout: Duration,
    shutdown_timeout: Duration,
    boot_time: Duration,
    accel: Accel,
    /// The connection whose Health.Check proved the agent up, handed to the first
    /// [`Vm::agent`] caller: one CONNECT handshake through the guest less per pod start.
    first_client: std::sync::Mutex<Option<AgentClient>>,
}

/// Removes the state dir unless disarmed (on every early return of `start`).
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    /// Someone else (the `Vm`) removes the dir from now on.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            remove_state_dir(&d);
        }
    }
}

fn remove_state_dir(d: &Path) {
    match std::fs::remove_dir_all(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::error!("cannot remove state dir {}: {e}", d.display()),
    }
}

fn check_socket_path(p: &Path) -> Result<(), VmError> {
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmError::SocketPathTooLong(p.to_path_buf()));
    }
    Ok(())
}

/// Kernel vhost-vsock when the device is usable (and not overridden), else the vhost-user backend.
fn kernel_vsock_usable(cfg: &Config) -> bool {
    if cfg.hypervisor.qemu.force_vhost_user_vsock {
        return false;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock")
        .is_ok()
}

/// A guest CID for kernel vsock: CIDs are host-global, so derive one from the sandbox id and PID.
fn guest_cid_for(id: &str) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    std::process::id().hash(&mut h);
    3 + (h.finish() % 0x7fff_0000) as u32
}

/// The vsock device QEMU gets, the process serving it (vhost-user only) and how the host then
/// reaches the agent.
struct VsockSetup {
    backend: Option<VsockBackend>,
    device: VsockDevice,
    channel: AgentChannel,
}

/// SEV-SNP launch parameters, checked before anything is started: a confidential guest never
/// falls back to a non-confidential VM.
fn snp_launch(cfg: &Config, spec: &VmSpec) -> Result<Option<SnpLaunch>, VmError> {
    let q = &cfg.hypervisor.qemu;
    if !q.confidential_guest {
        return Ok(None);
    }
    let (cbitpos, reduced) = crate::snp::host::require_snp(
        &crate::snp::host::HostPaths::default(),
        &q.firmware,
        &cfg.source,
    )?;
    let mut l = SnpLaunch::new(cbitpos, reduced);
    l.host_data = spec.host_data;
    l.policy = q.snp_guest_policy;
    let nonempty = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
    l.id_block = nonempty(&q.snp_id_block);
    l.id_auth = nonempty(&q.snp_id_auth);
    Ok(Some(l))
}

/// The sandbox id names the state dir: it must stay one path component.
fn check_id(id: &str) -> Result<(), VmError> {
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return Err(VmError::BadId(id.to_string()));
    }
    Ok(())
}

/// The configured files exist and the VM's sockets fit in `sun_path`. Returns whether the
/// kernel's vhost-vsock is used (else the vhost-user backend must be there too).
fn check_host(cfg: &Config, state_dir: &Path) -> Result<bool, VmError> {
    cfg.check_paths()?;
    let use_kernel_vsock = kernel_vsock_usable(cfg);
    if !use_kernel_vsock {
        cfg.check_vsock_backend()?;
    }
    for name in [
        qemu::QMP_SOCK,
        qemu::VHOST_USER_SOCK,
        qemu::HYBRID_VSOCK_SOCK,
    ] {
        check_socket_path(&state_dir.join(name))?;
    }
    Ok(use_kernel_vsock)
}

/// Creates the sandbox state dir (never reusing one); it is removed again when the returned
/// guard drops armed.
fn create_state_dir(sd: &Path) -> Result<DirGuard, VmError> {
    if sd.exists() {
        return Err(VmError::StateDirExists(sd.to_path_buf()));
    }
    if let Some(parent) = sd.parent() {
        std::fs::create_dir_all(parent).map_err(|source| VmError::StateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(sd)
        .map_err(|source| VmError::StateDir {
            path: sd.to_path_buf(),
            source,
        })?;
    Ok(DirGuard(Some(sd.to_path_buf())))
}

/// Kernel vhost-vsock needs nothing started; otherwise the vhost-user backend is started and
/// waited for.
async fn start_vsock(
    cfg: &Config,
    id: &str,
    sd: &Path,
    use_kernel_vsock: bool,
) -> Result<VsockSetup, VmError> {
    if use_kernel_vsock {
        let cid = guest_cid_for(id);
        log::info!("vsock: kernel vhost-vsock, guest cid {cid}");
        return Ok(VsockSetup {
            backend: None,
            device: VsockDevice::Kernel { guest_cid: cid },
            channel: AgentChannel::Vsock { cid },
        });
    }
    let q = &cfg.hypervisor.qemu;
    let vhost = sd.join(qemu::VHOST_USER_SOCK);
    let uds = sd.join(qemu::HYBRID_VSOCK_SOCK);
    log::info!(
        "vsock: vhost-user backend {} (no usable /dev/vhost-vsock)",
        q.vsock_backend.display()
    );
    let b = VsockBackend::start(
        &q.vsock_backend,
        &vhost,
        &uds,
        &sd.join(qemu::BACKEND_LOG),
        BACKEND_SOCKET_TIMEOUT,
    )
    .await?;
    Ok(VsockSetup {
        backend: Some(b),
        device: VsockDevice::VhostUser { socket: vhost },
        channel: AgentChannel::Hybrid { uds },
    })
}

/// An SNP launch needs KVM; otherwise the configured choice (or the probe) decides.
async fn choose_accel(cfg: &Config, snp: Option<&SnpLaunch>) -> Accel {
    let q = &cfg.hypervisor.qemu;
    match snp {
        Some(_) => Accel::Kvm,
        None => accel::choose(q.accel, &q.path, &q.kernel).await,
    }
}

/// Lets the child inherit `fds` under their numbers: they stay close-on-exec in the shim (no
/// other child gets them), the flag is cleared in this child only, between fork and exec.
fn inherit_fds(cmd: &mut Command, fds: Vec<i32>) {
    use std::os::unix::process::CommandExt;
    if fds.is_empty() {
        return;
    }
    // SAFETY: only fcntl (async-signal-safe) between fork and exec; `fds` is not reallocated.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Builds QEMU's command line and starts it (its output to the state dir's QEMU log).
fn spawn_qemu(
    cfg: &Config,
    spec: &VmSpec,
    accel: Accel,
    vsock: VsockDevice,
    snp: Option<&SnpLaunch>,
    nics: &[NetDevice],
) -> Result<OwnedProcess, VmError> {
    let q = &cfg.hypervisor.qemu;
    let sd = &spec.state_dir;
    let mut args = qemu::qemu_args(&QemuLaunch {
        id: &spec.id,
        qemu: q,
        size: spec.size,
        accel,
        vsock,
        state_dir: sd,
        free_page_reporting: snp.is_none(),
        agent_debug: cfg.agent.kata.enable_debug,
    });
    args.extend(qemu::nic_args(nics));
    let args = match snp {
        Some(l) => crate::snp::qemu::snp_qemu_args(&args, l)?,
        None => args,
    };
    log::info!("starting {} {}", q.path.display(), args.join(" "));
    let mut cmd = Command::new(&q.path);
    cmd.args(&args);
    inherit_fds(
        &mut cmd,
        nics.iter()
            .flat_map(|n| std::iter::once(n.tap_fd).chain(n.vhost_fd))
            .collect(),
    );
    crate::timeline::mark(&spec.id, timeline::QEMU_SPAWN);
    OwnedProcess::spawn("qemu", cmd, &sd.join(qemu::QEMU_LOG)).map_err(|source| VmError::Spawn {
        path: q.path.clone(),
        source,
    })
}

impl Vm {
    /// Creates the state dir, starts the vsock backend and QEMU, and waits until the agent answers
    /// Health.Check. On any failure everything started is killed and the state dir removed
    /// (each step's resources release on drop).
    pub async fn start(cfg: &Config, spec: VmSpec) -> Result<Vm, VmError> {
        Self::start_with_nics(cfg, spec, &[]).await
    }

    /// `start` with NICs backed by the given TAP descriptors (which must stay open until
    /// QEMU has started: the caller owns them).
    pub async fn start_with_nics(
        cfg: &Config,
        spec: VmSpec,
        nics: &[NetDevice],
    ) -> Result<Vm, VmError> {
        let snp = snp_launch(cfg, &spec)?;
        check_id(&spec.id)?;
        let use_kernel_vsock = check_host(cfg, &spec.state_dir)?;
        let mut dir_guard = create_state_dir(&spec.state_dir)?;
        let started = Instant::now();
        let vsock = start_vsock(cfg, &spec.id, &spec.state_dir, use_kernel_vsock).await?;
        let accel = choose_accel(cfg, snp.as_ref()).await;
        let qemu_proc = spawn_qemu(cfg, &spec, accel, vsock.device, snp.as_ref(), nics)?;
        let vm = Vm::assemble(cfg, &spec, qemu_proc, vsock.backend, vsock.channel, accel);
        // From here on `vm`'s Drop cleans up (processes first, then the dir).
        dir_guard.disarm();
        vm.boot(cfg, spec.size, started).await
    }

    /// The `Vm` that owns the started processes.
    fn assemble(
        cfg: &Config,
        spec: &VmSpec,
        qemu_proc: OwnedProcess,
        backend: Option<VsockBackend>,
        channel: AgentChannel,
        accel: Accel,
    ) -> Vm {
        let q = &cfg.hypervisor.qemu;
        Vm {
            id: spec.id.clone(),
            state_dir: spec.state_dir.clone(),
            qemu_exit: qemu_proc.exit_watch(),
            qemu: Some(qemu_proc),
            backend,
            channel,
            dial_timeout: cfg.agent.kata.dial_timeout(),
            shutdown_timeout: q.shutdown_timeout(),
            boot_time: Duration::ZERO,
            first_client: std::sync::Mutex::new(None),
            accel,
        }
    }

    /// Waits for the agent (bounded by `hypervisor.qemu.boot_timeout` from `started`); on
    /// failure kills everything and explains from the console and QEMU's log.
    async fn boot(mut self, cfg: &Config, size: VmSize, started: Instant) -> Result<Vm, VmError> {
        let boot_timeout = cfg.hypervisor.qemu.boot_timeout();
        match self.wait_for_agent(started + boot_timeout).await {
            Ok(client) => {
                self.boot_time = started.elapsed();
                self.first_client = std::sync::Mutex::new(Some(client));
                self.report_ready(size);
                Ok(self)
            }
            Err(last) => Err(self.boot_failed(boot_timeout, last)),
        }
    }

    /// Timeline and log lines of a booted VM (the bench reads both).
    fn report_ready(&self, size: VmSize) {
        crate::timeline::mark(&self.id, timeline::AGENT_READY);
        if let Some(ms) = std::fs::read_to_string(self.console_log())
            .ok()
            .and_then(|c| crate::timeline::agent_uptime_ms(&c))
        {
            log::info!(
                "{} {} {} {ms}",
                timeline::MARKER,
                self.id,
                timeline::GUEST_UPTIME_AT_AGENT_MS
            );
        }
        log::info!(
            "VM {} ready in {:.1} s ({}, {} vCPUs, {} MiB)",
            self.id,
            self.boot_time.as_secs_f64(),
            self.accel.as_qemu(),
            size.vcpus,
            size.memory_mib
        );
    }

    /// Kills everything and builds the boot error: QEMU's exit with the console and QEMU's log
    /// if it died, else the timeout with the console and the last connection error.
    fn boot_failed(mut self, timeout: Duration, last: AgentWaitError) -> VmError {
        let exited = self.qemu.as_ref().and_then(|p| p.exit());
        // Kill first so the console log is complete and nothing outlives the error.
        self.kill_all();
        let console = console::relevant_lines_of(&self.console_log(), CONSOLE_LINES);
        let err = match exited {
            Some(exit) => VmError::BootFailed {
                id: self.id.clone(),
                exit: exit.to_string(),
                console,
                qemu_log: console::relevant_lines_of(
                    &self.state_dir.join(qemu::QEMU_LOG),
                    CONSOLE_LINES,
                ),
            },
            None => VmError::BootTimeout {
                id: self.id.clone(),
                timeout,
                last: Box::new(last),
                console,
            },
        };
        log::error!("{err}");
        drop(self);
        err
    }

    /// Polls Health.Check until it answers, QEMU exits, or `deadline` passes; Ok: the connection
    /// that answered. Err = why not.
    async fn wait_for_agent(&self, deadline: Instant) -> Result<AgentClient, AgentWaitError> {
        let exited = self.wait_exited();
        let probe = async {
            // vhost-device-vsock: a CONNECT sent while the guest's vsock driver is not ready can
            // wedge the backend for good (seen: the agent listened at 6.4 s, no CONNECT was
            // answered in 120 s). So the first attempt waits for the agent's ready line.
            if matches!(self.channel, AgentChannel::Hybrid { .. }) {
                let mut ready = ReadyLine::new(self.console_log());
                while !ready.seen() {
                    if Instant::now() >= deadline {
                        return Err(AgentWaitError::NoReadyLine(format!(
                            "the agent never printed {:?} on the console",
                            agent_proto::contract::READY_LINE
                        )));
                    }
                    // Every millisecond here is pod start time; a poll reads only what is new.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut last = AgentWaitError::NoAttempt;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                match self.connect(left.min(self.dial_timeout)).await {
                    Ok(c) => {
                        let ctx = agent::context(HEALTH_CALL_TIMEOUT.min(left));
                        let req = agent_proto::health::CheckRequest::new();
                        match c.health.check(ctx, &req).await {
                            Ok(_) => return Ok(c),
                            Err(e) => last = AgentWaitError::Health(e),
                        }
                    }
                    Err(e) => last = AgentWaitError::Connect(e),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            e = exited => Err(AgentWaitError::QemuExited(e)),
            r = probe => r,
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<AgentClient, AgentConnectError> {
        let client = match &self.channel {
            AgentChannel::Hybrid { uds } => {
                agent::connect_hybrid_vsock(uds, AGENT_VSOCK_PORT, timeout).await?
            }
            AgentChannel::Vsock { cid } => {
                agent::connect_vsock(*cid, AGENT_VSOCK_PORT, timeout).await?
            }
        };
        Ok(AgentClient::new(client))
    }

    /// A connection to the agent: the first call gets the one the boot's Health.Check used, later
    /// calls a new one (bounded by `[agent.kata] dial_timeout`); fails at once when QEMU has
    /// exited or exits meanwhile.
    pub async fn agent(&self) -> Result<AgentClient, VmError> {
        let not_running = |exit: VmExit| VmError::NotRunning {
            id: self.id.clone(),
            exit: exit.to_string(),
        };
        if let Some(e) = self.exited() {
            return Err(not_running(e));
        }
        let first = self.first_client.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = first {
            return Ok(c);
        }
        tokio::select! {
            e = self.wait_exited() => Err(not_running(e)),
            c = self.connect(self.dial_timeout) => Ok(c?),
        }
    }

    /// Resolves when QEMU has exited for any reason; callable any number of times.
    pub fn wait_exited(&self) -> impl Future<Output = VmExit> + Send + 'static {
        let mut rx = self.qemu_exit.clone();
        async move {
            loop {
                if let Some(e) = *rx.borrow_and_update() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    // The owner thread sends before it ends, so this only happens if it panicked.
                    return (*rx.borrow()).unwrap_or(ProcessExit {
                        code: None,
                        signal: None,
                    });
                }
            }
        }
    }

    /// QEMU's exit, if it has exited.
    pub fn exited(&self) -> Option<VmExit> {
        *self.qemu_exit.borrow()
    }

    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join(qemu::CONSOLE_LOG)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Time from `start` until the agent answered.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn qemu_pid(&self) -> Option<i32> {
        self.qemu.as_ref().map(|p| p.pid())
    }

    pub fn backend_pid(&self) -> Option<i32> {
        self.backend.as_ref().map(|b| b.process.pid())
    }

    /// QMP `quit`, wait up to `shutdown_timeout`, then SIGKILL; stop the backend; remove the state
    /// dir. Idempotent.
    pub async fn stop(&mut self) -> Result<(), VmError> {
        let mut result = Ok(());
        if let Some(q) = self.qemu.as_ref() {
            if q.exit().is_none() {
                let qmp_sock = self.state_dir.join(qemu::QMP_SOCK);
                if let Err(e) = qmp::quit(&qmp_sock, QMP_TIMEOUT).await {
                    log::warn!("VM {}: QMP quit failed ({e}); sending SIGTERM", self.id);
                    q.signal(libc::SIGTERM);
                }
                if q.wait_timeout(self.shutdown_timeout).await.is_none() {
                    log::warn!(
                        "VM {}: QEMU did not exit within {:?}; SIGKILL",
                        self.id,
                        self.shutdown_timeout
                    );
                    q.signal(libc::SIGKILL);
                    if q.wait_timeout(Duration::from_secs(5)).await.is_none() {
                        result = Err(VmError::Unkillable {
                            id: self.id.clone(),
                            pid: q.pid(),
                        });
                    }
                }
            }
        }
        if result.is_ok() {
            self.qemu = None;
        }
        if let Some(b) = self.backend.as_ref() {
            b.process.signal(libc::SIGTERM);
            if b.process
                .wait_timeout(Duration::from_secs(2))
                .await
                .is_none()
            {
                b.process.signal(libc::SIGKILL);
                b.process.wait_timeout(Duration::from_secs(5)).await;
            }
        }
        self.backend = None;
        remove_state_dir(&self.state_dir);
        result
    }

    /// SIGKILL both processes and wait for them (blocking, bounded).
    fn kill_all(&mut self) {
        if let Some(q) = self.qemu.as_ref() {
            q.kill_blocking();
        }
        if let Some(b) = self.backend.as_ref() {
            b.process.kill_blocking();
        }
    }
}

/// Watches the console log for the agent's ready line, reading only what was appended since the
/// last look.
struct ReadyLine {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// The unread end of the previous read that may start the ready line.
    tail: Vec<u8>,
}

impl ReadyLine {
    fn new(path: PathBuf) -> ReadyLine {
        ReadyLine {
            path,
            file: None,
            tail: Vec::new(),
        }
    }

    /// Whether the ready line has been written by now.
    fn seen(&mut self) -> bool {
        use std::io::Read;
        let needle = agent_proto::contract::READY_LINE.as_bytes();
        if self.file.is_none() {
            // QEMU creates the file; until then nothing was written.
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        let mut buf = std::mem::take(&mut self.tail);
        // A failed read may still have appended bytes: they are searched all the same, and the
        // next poll goes on from where the file position is.
        let _ = f.read_to_end(&mut buf);
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = buf.len().min(needle.len().saturating_sub(1));
        self.tail = buf.split_off(buf.len() - keep);
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // QEMU before the backend: it is the backend's client.
        self.qemu.take();
        self.backend.take();
        remove_state_dir(&self.state_dir);
    }
}

/// Test helpers shared by the VM modules' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::Path;

    /// Writes an executable shell script from a child process: no descriptor of ours is ever
    /// open for writing on it, so a test thread forking meanwhile cannot make the exec fail with
    /// "Text file busy".
    pub fn script(path: &Path, body: &str) {
        use std::io::Write;
        let mut c = std::process::Command::new("sh")
            .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        stdin
            .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
        drop(stdin);
        assert!(c.wait().unwrap().success());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QemuConfig;
    use test_util::script;

    fn cfg_with(dir: &Path, q: QemuConfig) -> Config {
        Config {
            hypervisor: crate::config::HypervisorConfig { qemu: q },
            source: dir.join("configuration.toml"),
            ..Default::default()
        }
    }

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            id: "t".into(),
            size: VmSize {
                memory_mib: 128,
                vcpus: 1,
            },
            state_dir: dir.join("state/t"),
            host_data: None,
        }
    }

    #[test]
    fn ready_line_is_found_across_reads_and_only_once_written() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut r = ReadyLine::new(path.clone());
        assert!(!r.seen(), "no file yet");
        let line = format!(
            "{} vsock://-1:1024 (uptime 3.1 s)\n",
            agent_proto::contract::READY_LINE
        );
        let (a, b) = line.split_at(agent_proto::contract::READY_LINE.len() / 2);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"SeaBIOS\nkata-cc: init: insmod erofs\n")
            .unwrap();
        assert!(!r.seen());
        f.write_all(a.as_bytes()).unwrap();
        assert!(!r.seen(), "half of the line is not the line");
        f.write_all(b.as_bytes()).unwrap();
        assert!(r.seen());
        // A line that only resembles it is not it.
        let mut other = ReadyLine::new(dir.path().join("other.log"));
        std::fs::write(dir.path().join("other.log"), &line[..line.len() / 3]).unwrap();
        assert!(!other.seen());
    }

    /// The task service keeps a `Vm` in shared state and drives it from spawned tasks.
    #[test]
    fn vm_and_its_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Vm>();
        send_sync::<AgentClient>();
        let cfg = Config::default();
        let dir = tempfile::tempdir().unwrap();
        let start = Vm::start(&cfg, spec(dir.path()));
        send(&start);
    }

    /// A TAP descriptor reaches QEMU under its number; the shim's other close-on-exec
    /// descriptors do not.
    #[test]
    fn only_the_nic_descriptors_are_inherited() {
        use std::os::fd::AsRawFd;
        let passed = std::fs::File::open("/dev/null").unwrap();
        let kept = std::fs::File::open("/dev/null").unwrap();
        let (p, k) = (passed.as_raw_fd(), kept.as_raw_fd());
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("test -e /proc/self/fd/{p} && ! test -e /proc/self/fd/{k}"),
        ]);
        inherit_fds(&mut cmd, vec![p]);
        let status = cmd.status().unwrap();
        assert!(status.success(), "fd {p} not inherited or fd {k} leaked");
        // The shim's own descriptor is still close-on-exec.
        let flags = nix::fcntl::fcntl(&passed, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[tokio::test]
    async fn confidential_guest_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let q = QemuConfig {
            confidential_guest: true,
            ..Default::default()
        };
        let err = Vm::start(&cfg_with(dir.path(), q), spec(dir.path()))
            .await
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.starts_with("SEV-SNP requested (hypervisor.qemu.confidential_guest = true in"),
            "{msg}"
        );
        assert!(
            msg.contains("SEV firmware (hypervisor.qemu.firmware is not set"),
            "{msg}"
        );
        assert!(!dir.path().join("state/t").exists());
    }

    #[tokio::test]
    async fn missing_qemu_named_and_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["k", "i", "r"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let q = QemuConfig {
            path: "/nonexistent/qemu-system-x86_64".into(),
            kernel: dir.path().join("k"),
            initrd: dir.path().join("i"),
            image: dir.path().join("r"),
            ..Default::default()
        };
        let err = Vm::start(&cfg_with(dir.path(), q), spec(dir.path()))
            .await
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/qemu-system-x86_64 does not exist (hypervisor.qemu.path in"),
            "{msg}"
        );
        assert!(!dir.path().join("state/t").exists());
    }

    /// A config whose "QEMU" and vsock backend are shell scripts (no real VM).
    fn fake_cfg(dir: &Path, qemu_body: &str) -> Config {
        for f in ["k", "i", "r"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        script(&dir.join("fake-qemu"), qemu_body);
        // Creates the vhost-user socket path given in `--vm ...,socket=<path>,...` and stays up.
        script(
            &dir.join("fake-backend"),
            "p=${2#*socket=}; p=${p%%,*}; : > \"$p\"; exec sleep 100",
        );
        let q = QemuConfig {
            path: dir.join("fake-qemu"),
            kernel: dir.join("k"),
            initrd: dir.join("i"),
            image: dir.join("r"),
            accel: crate::config::AccelChoice::Tcg,
            vsock_backend: dir.join("fake-backend"),
            force_vhost_user_vsock: true,
            boot_timeout: 1,
            ..Default::default()
        };
        cfg_with(dir, q)
    }

    #[tokio::test]
    async fn qemu_that_dies_is_reported_and_cleaned_up() {
        // Writes a verity failure line to the console file it is given, then exits 1.
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_cfg(
            dir.path(),
            "for a in \"$@\"; do case \"$a\" in file,id=console,path=*) \
             echo 'kata-cc: rootfs did not verify' > \"${a#file,id=console,path=}\";; esac; done\n\
             echo 'qemu: boom' >&2; exit 1",
        );
        let err = Vm::start(&cfg, spec(dir.path())).await.err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("QEMU exited (exit status 1)"), "{msg}");
        assert!(msg.contains("kata-cc: rootfs did not verify"), "{msg}");
        assert!(msg.contains("qemu: boom"), "{msg}");
        assert!(!dir.path().join("state/t").exists());
    }

    #[tokio::test]
    async fn boot_timeout_kills_everything() {
        // A "QEMU" that never boots: records its PID (kept by exec) and sleeps.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        let cfg = fake_cfg(
            dir.path(),
            &format!("echo $$ > {}; exec sleep 100", pidfile.display()),
        );
        let t = Instant::now();
        let err = Vm::start(&cfg, spec(dir.path())).await.err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("the agent did not answer within 1s"), "{msg}");
        assert!(msg.contains("hypervisor.qemu.boot_timeout"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
        assert!(!dir.path().join("state/t").exists());
    }

    #[tokio::test]
    async fn existing_state_dir_and_bad_id_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_cfg(dir.path(), "exit 1");
        std::fs::create_dir_all(dir.path().join("state/t")).unwrap();
        let err = Vm::start(&cfg, spec(dir.path())).await.err().unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
        // Not ours: left alone.
        assert!(dir.path().join("state/t").exists());
        let mut bad = spec(dir.path());
        bad.id = "../x".into();
        let err = Vm::start(&cfg, bad).await.err().unwrap();
        assert!(err.to_string().starts_with("invalid sandbox id"), "{err}");
    }
}
