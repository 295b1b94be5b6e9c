//! containerd's Task API (v2) on top of the pod VM's agent: each request looks its container or
//! process up, calls its operation (`container`), and publishes the event (`events`). Errors
//! become ttrpc statuses in one place (`error`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use super::container::{Container, Containers, ImageSource};
use super::error::{Error, Result};
use super::events::{self, Events};
use super::pod::Pod;
use super::process::ExitInfo;
use super::spec::BundleSpec;

/// Why the host cannot freeze a container in the VM (Pause, Resume).
const NO_FREEZE: &str = "containers in a kata-cc VM cannot be frozen from the host";

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containerd_address: String,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    pod: Pod,
    containers: Containers,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        containerd_address: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        rpc_timeout: Duration,
    ) -> Self {
        let events = Arc::new(Events::new(publisher, namespace));
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                containerd_address: containerd_address.to_string(),
                events: events.clone(),
                exit,
                pod: Pod::new(rpc_timeout, events),
                containers: Containers::default(),
            }),
        }
    }
}

fn delete_response(pid: u32, exit: ExitInfo) -> DeleteResponse {
    DeleteResponse {
        pid,
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    }
}

impl Inner {
    /// Create: the pod's sandbox (started by its first container), then the container in it;
    /// returns the container's PID. A sandbox this container started is stopped again if the
    /// container cannot be created.
    async fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        self.containers.ensure_absent(&req.id).await?;
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented {
                what: "restoring from a checkpoint",
                why: "the guest's memory cannot be checkpointed from the host",
            });
        }
        let spec = BundleSpec::read(Path::new(&req.bundle))?;
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
        let (sandbox, started_here) = self.pod.sandbox_for(req, &spec, &annotations).await?;
        let images = ImageSource {
            containerd_address: &self.containerd_address,
            namespace: &self.namespace,
        };
        let container = match Container::create(req, sandbox, &spec, images).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("create {}: {}", req.id, e.message());
                if started_here {
                    self.stop_sandbox_if_empty().await;
                }
                return Err(e);
            }
        };
        let pid = container.init.pid;
        self.containers.insert(&req.id, container).await;
        Ok(pid)
    }

    /// Delete: an exec is forgotten; a container is removed from the guest and forgotten, or,
    /// when it is the pod's last container or its sandbox (pause) container, the pod's VM stops
    /// (and the guest with it: no RemoveContainer first).
    async fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let h = self.containers.lookup(&req.id, &req.exec_id).await?;
        let exit = h.finish()?;
        let pid = h.process.pid;
        if !req.exec_id.is_empty() {
            self.containers.remove_exec(&h).await;
            return Ok(delete_response(pid, exit));
        }
        self.containers.remove(&req.id).await;
        // The pod's pause, or its last container: the VM stops now and takes the container with
        // it (Kata removes no sandbox container in the guest either); else the guest removes it.
        let vm_stops = h.pod_sandbox || self.containers.is_empty().await;
        if !vm_stops {
            h.remove_from_guest().await;
        }
        self.events
            .publish(events::deleted(&h.process, &exit))
            .await;
        if vm_stops {
            self.pod.stop().await;
        }
        Ok(delete_response(pid, exit))
    }

    /// Stop the VM once no container is left.
    async fn stop_sandbox_if_empty(&self) {
        if self.containers.is_empty().await {
            self.pod.stop().await;
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
        log::info!("create {} bundle {}", req.id, req.bundle);
        crate::timeline::mark(&req.id, crate::timeline::TASK_CREATE);
        let pid = self.inner.create(&req).await?;
        self.inner
            .events
            .publish(events::task_create(&req, pid))
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let inner = &self.inner;
        let h = inner.containers.lookup(&req.id, &req.exec_id).await?;
        h.start(&inner.events).await?;
        inner.events.publish(events::started(&h.process)).await;
        Ok(StartResponse {
            pid: h.process.pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let inner = &self.inner;
        let proc = inner
            .containers
            .lookup(&req.id, &req.exec_id)
            .await?
            .process;
        let bundle = inner.containers.bundle(&req.id).await;
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
        let h = self.inner.containers.lookup(&req.id, "").await?;
        // Guest PIDs mean nothing on the host; the VM's PID stands for the container.
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: h.process.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let h = self.inner.containers.lookup(&req.id, &req.exec_id).await?;
        h.kill(req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let inner = &self.inner;
        inner.containers.exec(&req, &inner.namespace).await?;
        inner
            .events
            .publish(events::exec_added(&req.id, &req.exec_id))
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let h = self.inner.containers.lookup(&req.id, &req.exec_id).await?;
        h.resize(req.width, req.height).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let h = self.inner.containers.lookup(&req.id, &req.exec_id).await?;
        if req.stdin {
            h.process.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let h = self.inner.containers.lookup(&req.id, &req.exec_id).await?;
        let exit = h.process.wait().await;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.inner.delete(&req).await?)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let h = self.inner.containers.lookup(&req.id, "").await?;
        let stats = h.stats().await?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = match self.inner.containers.lookup(&req.id, "").await {
            Ok(h) => h.process.pid,
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
        let remaining = inner.containers.len().await;
        if remaining > 0 {
            log::info!("shutdown ignored: {remaining} container(s) remain");
            return Ok(Empty::new());
        }
        log::info!("shutdown: stopping the VM and exiting");
        inner.pod.shutdown().await;
        inner.exit.signal();
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented {
            what: "Pause",
            why: NO_FREEZE,
        }
        .into())
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented {
            what: "Resume",
            why: NO_FREEZE,
        }
        .into())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented {
            what: "Checkpoint",
            why: "a confidential VM's memory cannot be read by the host",
        }
        .into())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let h = self.inner.containers.lookup(&req.id, "").await?;
        let Some(resources) = req.resources.as_ref() else {
            return Ok(Empty::new());
        };
        log::info!("update {}: resources {}", req.id, resources.type_url);
        h.update(resources).await?;
        Ok(Empty::new())
    }
}
