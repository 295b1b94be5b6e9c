//! containerd's Task API (v2) on top of the pod VM's agent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::agent::{
    CreateContainerRequest, ExecProcessRequest as AgentExecRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, StatsContainerRequest, Storage,
    TtyWinResizeRequest, WaitProcessRequest,
};
use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, WaitRequest, WaitResponse,
};
use containerd_shim::protos::api::{
    CheckpointTaskRequest, Empty, PauseRequest, ProcessInfo, ResumeRequest, UpdateTaskRequest,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Task, TtrpcContext, TtrpcResult};
use tokio::sync::{oneshot, Mutex};

use super::process::{Phase, Process};
use super::sandbox::Sandbox;
use super::spec::{exec_process_to_agent, BundleSpec};
use super::stats::metrics_any;
use super::stdio::{self, copy_in, copy_out, StdioPaths, Stream};
use super::{runtime_options_config_path, ANNOTATION_CONTAINER_TYPE, ANNOTATION_SANDBOX_ID};
use crate::agent::context;
use crate::config::Config;
use crate::image::ImageStore;
use crate::policy_source;

/// Storage driver the agent unpacks layers with.
pub const LAYER_DRIVER: &str = "kata-cc.layer";
/// Bound on copying a process's remaining output after it exited (the process cannot produce
/// more, so this only trips when something holds its pipes open, e.g. a daemonized child).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit status recorded for processes whose VM died under them.
pub const VM_GONE_STATUS: u32 = 255;

fn rpc_status(code: ttrpc::Code, msg: impl AsRef<str>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.as_ref()))
}
fn not_found(msg: impl AsRef<str>) -> ttrpc::Error {
    rpc_status(ttrpc::Code::NOT_FOUND, msg)
}
fn precondition(msg: impl AsRef<str>) -> ttrpc::Error {
    rpc_status(ttrpc::Code::FAILED_PRECONDITION, msg)
}
fn invalid(msg: impl AsRef<str>) -> ttrpc::Error {
    rpc_status(ttrpc::Code::INVALID_ARGUMENT, msg)
}
fn internal(msg: impl AsRef<str>) -> ttrpc::Error {
    rpc_status(ttrpc::Code::INTERNAL, msg)
}
fn unimplemented(what: &str, why: &str) -> ttrpc::Error {
    rpc_status(
        ttrpc::Code::UNIMPLEMENTED,
        format!("kata-cc: {what} is not supported: {why}"),
    )
}
/// Agent errors keep their status (code and message); anything else becomes INTERNAL.
fn agent_err(rpc: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(mut s) => {
            let msg = format!("agent {rpc}: {}", s.message());
            s.set_message(msg);
            ttrpc::Error::RpcStatus(s)
        }
        other => internal(format!("agent {rpc}: {other}")),
    }
}

/// Closes a process's stdio that no copier took over (the process never started).
async fn close_stdio(io: stdio::OpenedStdio) {
    if let Some(l) = io.logger {
        drop((io.stdin, io.stdout, io.stderr));
        l.finish().await;
    }
}

pub struct Container {
    pub bundle: String,
    pub init: Arc<Process>,
    pub execs: HashMap<String, Arc<Process>>,
    pub sandbox: Arc<Sandbox>,
}

pub struct Inner {
    pub namespace: String,
    pub containerd_address: String,
    pub publisher: RemotePublisher,
    pub exit: Arc<ExitSignal>,
    pub rpc_timeout: Duration,
    pub sandbox: Mutex<Option<Arc<Sandbox>>>,
    pub containers: Mutex<HashMap<String, Container>>,
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        containerd_address: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        rpc_timeout: Duration,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                containerd_address: containerd_address.to_string(),
                publisher,
                exit,
                rpc_timeout,
                sandbox: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    async fn lookup(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Process>, Arc<Sandbox>)> {
        let containers = self.containers.lock().await;
        let c = containers
            .get(id)
            .ok_or_else(|| not_found(format!("container {id} not found")))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(format!("exec {exec_id} of container {id} not found")))?
        };
        Ok((p, c.sandbox.clone()))
    }

    /// The pod's VM, started by its first container.
    async fn sandbox_for(
        &self,
        req: &CreateTaskRequest,
        spec: &BundleSpec,
        annotations: &HashMap<String, String>,
    ) -> TtrpcResult<(Arc<Sandbox>, bool)> {
        let mut slot = self.sandbox.lock().await;
        // A bad policy annotation fails here, before anything is started.
        let policy = policy_source::from_annotations(annotations)
            .map_err(|e| invalid(format!("container {}: {e}", req.id)))?;
        if let Some(sb) = slot.as_ref() {
            if sb.is_dead() {
                return Err(precondition(format!(
                    "the VM of sandbox {} is gone; the pod must be recreated",
                    sb.id
                )));
            }
            if let Some(p) = &policy {
                sb.update_policy(p).await.map_err(|e| {
                    rpc_status(
                        e.code(),
                        format!("container {}: sandbox {}: {e}", req.id, sb.id),
                    )
                })?;
            }
            return Ok((sb.clone(), false));
        }
        if annotations
            .get(ANNOTATION_CONTAINER_TYPE)
            .map(String::as_str)
            == Some("container")
        {
            log::warn!(
                "container {} is the first of its pod but not the sandbox container: sizing from it",
                req.id
            );
        }
        let sandbox_id = annotations
            .get(ANNOTATION_SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| req.id.clone());
        let option_path = req
            .options
            .as_ref()
            .and_then(|any| runtime_options_config_path(&any.type_url, &any.value));
        let cfg_path = Config::locate(option_path.as_deref());
        log::info!("sandbox {sandbox_id}: config {}", cfg_path.display());
        let cfg = Config::load(&cfg_path).map_err(|e| invalid(e.to_string()))?;
        let resources = spec.linux_resources().map_err(|e| invalid(e.to_string()))?;
        let hostname = spec
            .json
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_string();
        let sb = Sandbox::start(
            &cfg,
            &sandbox_id,
            &hostname,
            annotations,
            resources.as_ref(),
            policy,
            self.rpc_timeout,
        )
        .await
        .map_err(|e| rpc_status(e.code(), format!("sandbox {sandbox_id}: {e}")))?;
        *slot = Some(sb.clone());
        Ok((sb, true))
    }

    /// Everything of Create after the VM is there.
    async fn create_in(
        &self,
        req: &CreateTaskRequest,
        sandbox: &Arc<Sandbox>,
        spec: &BundleSpec,
    ) -> TtrpcResult<Arc<Process>> {
        let agent_spec = spec.to_agent().map_err(|e| invalid(e.to_string()))?;
        let store = ImageStore::connect(&self.containerd_address, &self.namespace)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let image = store
            .container_image(&req.id)
            .await
            .map_err(|e| precondition(e.to_string()))?;
        let layers = store
            .layers(&image)
            .await
            .map_err(|e| precondition(e.to_string()))?;
        log::info!(
            "container {}: image {} manifest {}: {} layers",
            req.id,
            image,
            layers.manifest_digest,
            layers.layers.len()
        );
        let _layers_guard = sandbox.layer_lock.lock().await;
        sandbox
            .send_layers(&store, &layers.layers)
            .await
            .map_err(|e| internal(format!("container {}: {e}", req.id)))?;
        crate::timeline::mark(&req.id, "layers_sent");
        let mount_point = format!("/run/kata-cc/containers/{}/rootfs", req.id);
        let storages = layers
            .layers
            .iter()
            .map(|l| Storage {
                driver: LAYER_DRIVER.to_string(),
                source: Sandbox::guest_layer_path(&l.digest),
                fstype: l.media_type.clone(),
                options: vec![
                    format!("diff_id={}", l.diff_id),
                    format!("digest={}", l.digest),
                ],
                mount_point: mount_point.clone(),
                ..Default::default()
            })
            .collect();

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = stdio::open(&paths, &req.id, &self.namespace)
            .await
            .map_err(|e| invalid(format!("container {}: {e}", req.id)))?;

        let creq = CreateContainerRequest {
            container_id: req.id.clone(),
            exec_id: req.id.clone(),
            storages,
            OCI: MessageField::some(agent_spec),
            ..Default::default()
        };
        sandbox
            .agent
            .agent
            .create_container(context(self.rpc_timeout), &creq)
            .await
            .map_err(|e| agent_err("CreateContainer", e))?;
        crate::timeline::mark(&req.id, "container_created");
        Ok(Arc::new(Process::new(
            &req.id,
            "",
            sandbox.pid(),
            paths,
            None,
            io,
        )))
    }

    /// Start copying the process's stdio and wait for its exit in the background; the exit is
    /// recorded and published only after its output has been copied out.
    fn spawn_process(self: &Arc<Self>, sandbox: Arc<Sandbox>, proc: Arc<Process>) {
        let inner = self.clone();
        let io = proc.take_io().unwrap_or_default();
        let agent = sandbox.agent.agent.clone();
        let dead = sandbox.dead();
        let cid = proc.container_id.clone();
        let eid = proc.exec_id.clone();

        let mut outputs = vec![tokio::spawn(copy_out(
            agent.clone(),
            Stream::Stdout,
            cid.clone(),
            eid.clone(),
            io.stdout,
            dead.clone(),
        ))];
        if !proc.stdio.terminal {
            outputs.push(tokio::spawn(copy_out(
                agent.clone(),
                Stream::Stderr,
                cid.clone(),
                eid.clone(),
                io.stderr,
                dead.clone(),
            )));
        }
        let stdin_task = io.stdin.map(|fifo| {
            let (tx, rx) = oneshot::channel();
            proc.set_stdin_closer(tx);
            tokio::spawn(copy_in(
                agent.clone(),
                cid.clone(),
                eid.clone(),
                fifo,
                rx,
                inner.rpc_timeout,
            ))
        });
        let logger = io.logger;

        tokio::spawn(async move {
            let req = WaitProcessRequest {
                container_id: cid.clone(),
                exec_id: eid.clone(),
                ..Default::default()
            };
            let mut dead_rx = dead.clone();
            // No deadline: a process may run for as long as it likes.
            let code = tokio::select! {
                r = agent.wait_process(Context::default(), &req) => match r {
                    Ok(r) => u32::try_from(r.status).unwrap_or(VM_GONE_STATUS),
                    Err(e) => {
                        log::error!("{cid}/{eid}: WaitProcess failed: {e}");
                        VM_GONE_STATUS
                    }
                },
                _ = dead_rx.wait_for(|d| *d) => {
                    log::warn!("{cid}/{eid}: VM is gone; process marked exited ({VM_GONE_STATUS})");
                    VM_GONE_STATUS
                }
            };
            let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
            if tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(outputs))
                .await
                .is_err()
            {
                log::warn!(
                    "{cid}/{eid}: output still open {DRAIN_TIMEOUT:?} after exit; closing it"
                );
                for a in aborts {
                    a.abort();
                }
            }
            if let Some(l) = logger {
                l.finish().await;
            }
            if let Some(t) = stdin_task {
                t.abort();
            }
            let exit = proc.set_exited(code);
            log::info!("{cid}/{eid}: exited with status {}", exit.code);
            if eid.is_empty() {
                crate::timeline::mark(&cid, "exit");
            }
            inner
                .publish(
                    "/tasks/exit",
                    Box::new(TaskExit {
                        container_id: cid.clone(),
                        id: proc.event_id().to_string(),
                        pid: proc.pid,
                        exit_status: exit.code,
                        exited_at: MessageField::some(exit.at),
                        ..Default::default()
                    }),
                )
                .await;
        });
    }

    /// Stop the VM once no container is left.
    async fn stop_sandbox_if_empty(&self) {
        let empty = self.containers.lock().await.is_empty();
        if !empty {
            return;
        }
        let sb = self.sandbox.lock().await.clone();
        if let Some(sb) = sb {
            sb.stop().await;
        }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let inner = &self.inner;
        log::info!("create {} bundle {}", req.id, req.bundle);
        if inner.containers.lock().await.contains_key(&req.id) {
            return Err(rpc_status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(unimplemented(
                "restoring from a checkpoint",
                "the guest's memory cannot be checkpointed from the host",
            ));
        }
        let spec = BundleSpec::read(Path::new(&req.bundle)).map_err(|e| invalid(e.to_string()))?;
        let annotations = spec.annotations();
        // The host-side rootfs mounts containerd prepared are deliberately not used: the guest
        // builds the rootfs from the verified image layers.
        if !req.rootfs.is_empty() {
            log::info!(
                "container {}: {} host rootfs mount(s) not used (layers go to the guest)",
                req.id,
                req.rootfs.len()
            );
        }
        let (sandbox, started_here) = inner.sandbox_for(&req, &spec, &annotations).await?;
        let init = match inner.create_in(&req, &sandbox, &spec).await {
            Ok(p) => p,
            Err(e) => {
                log::error!("create {}: {e:?}", req.id);
                if started_here {
                    inner.stop_sandbox_if_empty().await;
                }
                return Err(e);
            }
        };
        let pid = init.pid;
        inner.containers.lock().await.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
                sandbox,
            },
        );
        inner
            .publish(
                "/tasks/create",
                Box::new(TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let inner = &self.inner;
        let (proc, sandbox) = inner.lookup(&req.id, &req.exec_id).await?;
        if proc.phase() != Phase::Created {
            return Err(precondition(format!(
                "process {} of container {} was already started",
                proc.event_id(),
                req.id
            )));
        }
        if sandbox.is_dead() {
            return Err(precondition(format!(
                "the VM of sandbox {} is gone",
                sandbox.id
            )));
        }
        let agent = &sandbox.agent.agent;
        let started = if req.exec_id.is_empty() {
            agent
                .start_container(
                    context(inner.rpc_timeout),
                    &StartContainerRequest {
                        container_id: req.id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ())
                .map_err(|e| agent_err("StartContainer", e))
        } else {
            let mut process = proc.spec.clone().unwrap_or_default();
            process.Terminal = proc.stdio.terminal;
            agent
                .exec_process(
                    context(inner.rpc_timeout),
                    &AgentExecRequest {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        process: MessageField::some(process),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ())
                .map_err(|e| agent_err("ExecProcess", e))
        };
        if let Err(e) = started {
            // containerd's client waits for EOF on the process's stdio before it returns the
            // error (and deletes the process): close it now.
            if let Some(io) = proc.take_io() {
                close_stdio(io).await;
            }
            return Err(e);
        }
        proc.set_running();
        inner.spawn_process(sandbox, proc.clone());
        if req.exec_id.is_empty() {
            crate::timeline::mark(&req.id, "started");
            inner
                .publish(
                    "/tasks/start",
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid: proc.pid,
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            inner
                .publish(
                    "/tasks/exec-started",
                    Box::new(TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid: proc.pid,
                        ..Default::default()
                    }),
                )
                .await;
        }
        Ok(StartResponse {
            pid: proc.pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (proc, _) = self.inner.lookup(&req.id, &req.exec_id).await?;
        let bundle = self
            .inner
            .containers
            .lock()
            .await
            .get(&req.id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        let exit = proc.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: proc.pid,
            status: proc.status().into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let (proc, _) = self.inner.lookup(&req.id, "").await?;
        // Guest PIDs mean nothing on the host; the VM's PID stands for the container.
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: proc.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let inner = &self.inner;
        let (proc, sandbox) = inner.lookup(&req.id, &req.exec_id).await?;
        if proc.phase() == Phase::Stopped {
            return Err(not_found(format!(
                "process {} of container {}: process already finished",
                proc.event_id(),
                req.id
            )));
        }
        if sandbox.is_dead() {
            // Its exit is being (or has been) recorded by the VM watcher.
            return Ok(Empty::new());
        }
        // `all` addresses the container's init: it owns the PID namespace, so the guest
        // runtime signals every process in it.
        let exec_id = if req.all {
            String::new()
        } else {
            req.exec_id.clone()
        };
        log::info!(
            "kill {}/{} signal {} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        sandbox
            .agent
            .agent
            .signal_process(
                context(inner.rpc_timeout),
                &SignalProcessRequest {
                    container_id: req.id.clone(),
                    exec_id,
                    signal: req.signal,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_err("SignalProcess", e))?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let inner = &self.inner;
        if req.exec_id.is_empty() {
            return Err(invalid("exec id must not be empty"));
        }
        let (init, sandbox) = inner.lookup(&req.id, "").await?;
        if init.phase() != Phase::Running {
            return Err(precondition(format!("container {} is not running", req.id)));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid(format!("exec {}: no process spec", req.exec_id)))?;
        let mut spec =
            exec_process_to_agent(&any.value, &format!("exec {} process spec", req.exec_id))
                .map_err(|e| invalid(e.to_string()))?;
        spec.Terminal = req.terminal;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let containers = inner.containers.lock().await;
            if containers
                .get(&req.id)
                .is_some_and(|c| c.execs.contains_key(&req.exec_id))
            {
                return Err(rpc_status(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!(
                        "exec {} already exists in container {}",
                        req.exec_id, req.id
                    ),
                ));
            }
        }
        let io = stdio::open(&paths, &req.id, &inner.namespace)
            .await
            .map_err(|e| invalid(format!("exec {}: {e}", req.exec_id)))?;
        let proc = Arc::new(Process::new(
            &req.id,
            &req.exec_id,
            sandbox.pid(),
            paths,
            Some(spec),
            io,
        ));
        {
            let mut containers = inner.containers.lock().await;
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            c.execs.insert(req.exec_id.clone(), proc);
        }
        inner
            .publish(
                "/tasks/exec-added",
                Box::new(TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let inner = &self.inner;
        let (proc, sandbox) = inner.lookup(&req.id, &req.exec_id).await?;
        if proc.phase() != Phase::Running || sandbox.is_dead() {
            return Ok(Empty::new());
        }
        sandbox
            .agent
            .agent
            .tty_win_resize(
                context(inner.rpc_timeout),
                &TtyWinResizeRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    row: req.height,
                    column: req.width,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let (proc, _) = self.inner.lookup(&req.id, &req.exec_id).await?;
        if req.stdin {
            proc.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (proc, _) = self.inner.lookup(&req.id, &req.exec_id).await?;
        let exit = proc.wait().await;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let inner = &self.inner;
        let (proc, sandbox) = inner.lookup(&req.id, &req.exec_id).await?;
        if proc.phase() == Phase::Running {
            return Err(precondition(format!(
                "process {} of container {} is still running; kill it first",
                proc.event_id(),
                req.id
            )));
        }
        // A process that never started: record its end so waiters return.
        let exit = proc.exit().unwrap_or_else(|| proc.set_exited(0));
        if !req.exec_id.is_empty() {
            if let Some(c) = inner.containers.lock().await.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            // An exec that never started still holds its stdio open.
            if let Some(io) = proc.take_io() {
                close_stdio(io).await;
            }
            return Ok(DeleteResponse {
                pid: proc.pid,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        if !sandbox.is_dead() {
            let r = sandbox
                .agent
                .agent
                .remove_container(
                    context(inner.rpc_timeout),
                    &RemoveContainerRequest {
                        container_id: req.id.clone(),
                        timeout: inner.rpc_timeout.as_secs() as u32,
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = r {
                // The VM goes away with the pod anyway; do not keep containerd from cleaning up.
                log::warn!("container {}: agent RemoveContainer: {e}", req.id);
            }
        }
        if let Some(c) = inner.containers.lock().await.remove(&req.id) {
            // Execs that never started still hold opened stdio (and maybe a logger): close them.
            for (_, p) in c.execs {
                if let Some(io) = p.take_io() {
                    if let Some(l) = io.logger {
                        drop((io.stdin, io.stdout, io.stderr));
                        l.finish().await;
                    }
                }
            }
            if let Some(io) = c.init.take_io() {
                if let Some(l) = io.logger {
                    drop((io.stdin, io.stdout, io.stderr));
                    l.finish().await;
                }
            }
        }
        inner
            .publish(
                "/tasks/delete",
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid: proc.pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(exit.at.clone()),
                    id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        inner.stop_sandbox_if_empty().await;
        Ok(DeleteResponse {
            pid: proc.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let inner = &self.inner;
        let (_, sandbox) = inner.lookup(&req.id, "").await?;
        if sandbox.is_dead() {
            return Err(precondition(format!(
                "the VM of sandbox {} is gone",
                sandbox.id
            )));
        }
        let stats = sandbox
            .agent
            .agent
            .stats_container(
                context(inner.rpc_timeout),
                &StatsContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_err("StatsContainer", e))?;
        let any: Any = metrics_any(&stats).map_err(|e| internal(format!("stats: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = match self.inner.lookup(&req.id, "").await {
            Ok((p, _)) => p.pid,
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let inner = &self.inner;
        let remaining = inner.containers.lock().await.len();
        if remaining > 0 {
            log::info!("shutdown ignored: {remaining} container(s) remain");
            return Ok(Empty::new());
        }
        log::info!("shutdown: stopping the VM and exiting");
        let sb = inner.sandbox.lock().await.take();
        if let Some(sb) = sb {
            sb.stop().await;
            crate::timeline::mark(&sb.id, "vm_stopped");
        }
        inner.exit.signal();
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TtrpcResult<Empty> {
        Err(unimplemented(
            "Pause",
            "containers in a kata-cc VM cannot be frozen from the host",
        ))
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TtrpcResult<Empty> {
        Err(unimplemented(
            "Resume",
            "containers in a kata-cc VM cannot be frozen from the host",
        ))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(unimplemented(
            "Checkpoint",
            "a confidential VM's memory cannot be read by the host",
        ))
    }

    async fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(unimplemented(
            "Update",
            "a confidential VM is sized once at sandbox creation and cannot be resized",
        ))
    }
}
