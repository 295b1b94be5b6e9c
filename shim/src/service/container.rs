//! The pod's containers as the shim tracks them, and the operations on a container's processes
//! (each one agent call or a few, with the checks containerd expects before it).

use std::collections::HashMap;
use std::sync::Arc;

use agent_proto::agent::{
    CreateContainerRequest, ExecProcessRequest as AgentExecRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, StatsContainerRequest, TtyWinResizeRequest,
    UpdateContainerRequest,
};
use agent_proto::oci;
use containerd_shim::api::{CreateTaskRequest, ExecProcessRequest};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use tokio::sync::Mutex;

use super::annotations::is_pod_sandbox;
use super::error::{Error, Result, WithContext};
use super::events::Events;
use super::process::{ExitInfo, Phase, Process};
use super::sandbox::{image_storage, Sandbox};
use super::shape::{shape_container, shape_exec, shape_resources, ShapeInput};
use super::spec::{exec_process_to_agent, resources_to_agent, BundleSpec};
use super::stats::metrics_any;
use super::stdio::{self, StdioPaths};
use super::volume_watch::{self, VolumeWatch};
use super::volumes::{self, MountContext};
use super::watch;
use crate::agent::context;
use crate::image::ImageStore;
use crate::timeline;

/// One container of the pod: its bundle, its init process and its execs.
pub struct Container {
    pub bundle: String,
    pub init: Arc<Process>,
    pub execs: HashMap<String, Arc<Process>>,
    pub sandbox: Arc<Sandbox>,
    /// The pod's sandbox (pause) container: its exit and its delete end the VM.
    pub pod_sandbox: bool,
    /// Kubelet volume updates followed into the guest; they end with the container.
    pub watches: Vec<VolumeWatch>,
}

/// Where the container's image is read from: containerd's content store.
pub struct ImageSource<'a> {
    pub containerd_address: &'a str,
    pub namespace: &'a str,
}

impl Container {
    /// Everything of Create after the VM is there: the spec in Kata's shape, the host files
    /// its mounts need and the image's layers go to the guest, the process's stdio is opened,
    /// and the agent creates the container.
    pub async fn create(
        req: &CreateTaskRequest,
        sandbox: Arc<Sandbox>,
        spec: &BundleSpec,
        images: ImageSource<'_>,
    ) -> Result<Container> {
        let pod_sandbox = is_pod_sandbox(&spec.annotations());
        let mut agent_spec = spec.to_agent()?;
        let sandbox_pidns = shape_container(
            &mut agent_spec,
            &ShapeInput {
                container_id: &req.id,
                bundle: &req.bundle,
                pass_seccomp: sandbox.pass_seccomp,
            },
        );
        let sink = sandbox.file_sink();
        let targets = volumes::prepare(
            &mut agent_spec,
            &MountContext {
                container_id: &req.id,
                sandbox_id: &sandbox.id,
                empty_dirs: &sandbox.empty_dirs,
                sink: &sink,
            },
            volumes::random_hex,
        )
        .await
        .with_context(|| format!("container {}", req.id))?;

        let store = ImageStore::connect(images.containerd_address, images.namespace).await?;
        let image = store.container_image(&req.id).await?;
        let layers = store.layers(&image).await?;
        log::info!(
            "container {}: image {} manifest {}: {} layers",
            req.id,
            image,
            layers.manifest_digest,
            layers.layers.len()
        );
        sandbox
            .send_layers(&req.id, &store, &layers.layers)
            .await
            .with_context(|| format!("container {}", req.id))?;
        crate::timeline::mark(&req.id, timeline::LAYERS_SENT);

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = stdio::open(&paths, &req.id, images.namespace)
            .await
            .with_context(|| format!("container {}", req.id))?;

        let creq = CreateContainerRequest {
            container_id: req.id.clone(),
            exec_id: req.id.clone(),
            storages: vec![image_storage(&req.id, &image, &layers.layers)],
            OCI: MessageField::some(agent_spec),
            sandbox_pidns,
            ..Default::default()
        };
        // On failure `io` is dropped: a logging binary is killed with it.
        sandbox
            .agent
            .agent
            .create_container(context(sandbox.rpc_timeout), &creq)
            .await
            .map_err(Error::agent("CreateContainer"))?;
        crate::timeline::mark(&req.id, timeline::CONTAINER_CREATED);
        let sink: Arc<dyn volumes::FileSink> = Arc::new(sink);
        let watches = targets
            .into_iter()
            .map(|t| {
                volume_watch::spawn(
                    t,
                    sink.clone(),
                    sandbox.until_ended(),
                    format!("container {}", req.id),
                )
            })
            .collect();
        let init = Arc::new(Process::new(&req.id, "", sandbox.pid(), paths, None, io));
        Ok(Container {
            bundle: req.bundle.clone(),
            init,
            execs: HashMap::new(),
            sandbox,
            pod_sandbox,
            watches,
        })
    }

    /// Closes the stdio its processes never handed to a copier (they never started).
    pub async fn release(self) {
        // Its volumes are no longer followed.
        drop(self.watches);
        for (_, p) in self.execs {
            p.close_unstarted_io().await;
        }
        self.init.close_unstarted_io().await;
    }
}

/// A process looked up for one request, with the sandbox it runs in.
pub struct Handle {
    pub sandbox: Arc<Sandbox>,
    pub process: Arc<Process>,
    /// The process belongs to the pod's sandbox (pause) container.
    pub pod_sandbox: bool,
}

impl Handle {
    fn rpc_context(&self) -> ttrpc::context::Context {
        context(self.sandbox.rpc_timeout)
    }

    /// StartContainer (init) or ExecProcess (exec), then the copiers and the exit watch.
    pub async fn start(&self, events: &Arc<Events>) -> Result<()> {
        let proc = &self.process;
        if proc.phase() != Phase::Created {
            return Err(Error::AlreadyStarted {
                id: proc.container_id.clone(),
                process: proc.event_id().to_string(),
            });
        }
        if self.sandbox.is_dead() {
            return Err(Error::VmGone {
                sandbox: self.sandbox.id.clone(),
            });
        }
        if let Err(e) = self.start_in_guest().await {
            // containerd's client waits for EOF on the process's stdio before it returns the
            // error (and deletes the process): close it now.
            proc.close_unstarted_io().await;
            return Err(e);
        }
        proc.set_running();
        // The pause's exit is the pod's end (Kata's): the VM stops once it is published.
        let ends_pod = self.pod_sandbox && proc.exec_id.is_empty();
        watch::spawn(events.clone(), &self.sandbox, proc.clone(), ends_pod);
        if proc.exec_id.is_empty() {
            crate::timeline::mark(&proc.container_id, timeline::STARTED);
        }
        Ok(())
    }

    async fn start_in_guest(&self) -> Result<()> {
        let proc = &self.process;
        let agent = &self.sandbox.agent.agent;
        if proc.exec_id.is_empty() {
            let req = StartContainerRequest {
                container_id: proc.container_id.clone(),
                ..Default::default()
            };
            agent
                .start_container(self.rpc_context(), &req)
                .await
                .map_err(Error::agent("StartContainer"))?;
        } else {
            let mut process = proc.spec.clone().unwrap_or_default();
            process.Terminal = proc.stdio.terminal;
            let req = AgentExecRequest {
                container_id: proc.container_id.clone(),
                exec_id: proc.exec_id.clone(),
                process: MessageField::some(process),
                ..Default::default()
            };
            agent
                .exec_process(self.rpc_context(), &req)
                .await
                .map_err(Error::agent("ExecProcess"))?;
        }
        Ok(())
    }

    /// SignalProcess; `all` addresses the container's init: it owns the PID namespace, so the
    /// guest runtime signals every process in it.
    pub async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        let proc = &self.process;
        if proc.phase() == Phase::Stopped {
            return Err(Error::ProcessFinished {
                id: proc.container_id.clone(),
                process: proc.event_id().to_string(),
            });
        }
        if !proc.exec_id.is_empty() && !all && proc.phase() == Phase::Created {
            return Err(Error::NotStarted {
                id: proc.container_id.clone(),
                exec_id: proc.exec_id.clone(),
            });
        }
        if self.sandbox.is_dead() {
            // Its exit is being (or has been) recorded by the VM watcher.
            return Ok(());
        }
        let exec_id = if all {
            String::new()
        } else {
            proc.exec_id.clone()
        };
        log::info!(
            "kill {}/{} signal {} all={}",
            proc.container_id,
            proc.exec_id,
            signal,
            all
        );
        let req = SignalProcessRequest {
            container_id: proc.container_id.clone(),
            exec_id,
            signal,
            ..Default::default()
        };
        match self
            .sandbox
            .agent
            .agent
            .signal_process(self.rpc_context(), &req)
            .await
        {
            Ok(_) => Ok(()),
            // The VM stopped while the signal was on its way (a SIGKILL of the pause ends it as
            // soon as the exit is seen, possibly before the agent's answer arrives): the process
            // went with the VM, which is what the kill asked for.
            Err(_) if self.sandbox.is_ending() || proc.phase() == Phase::Stopped => Ok(()),
            Err(e) => Err(Error::agent("SignalProcess")(e)),
        }
    }

    /// The process spec and stdio of a new exec of this (init) process's container.
    pub fn exec_spec(&self, req: &ExecProcessRequest) -> Result<(oci::Process, StdioPaths)> {
        if self.process.phase() != Phase::Running {
            return Err(Error::NotRunning { id: req.id.clone() });
        }
        let any = req.spec.as_ref().ok_or_else(|| Error::NoExecSpec {
            exec_id: req.exec_id.clone(),
        })?;
        let mut spec =
            exec_process_to_agent(&any.value, &format!("exec {} process spec", req.exec_id))?;
        shape_exec(&mut spec);
        spec.Terminal = req.terminal;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        Ok((spec, paths))
    }

    /// TtyWinResize; nothing to resize once the process or its VM is gone.
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        let proc = &self.process;
        if proc.phase() != Phase::Running || self.sandbox.is_dead() {
            return Ok(());
        }
        let req = TtyWinResizeRequest {
            container_id: proc.container_id.clone(),
            exec_id: proc.exec_id.clone(),
            row: height,
            column: width,
            ..Default::default()
        };
        self.sandbox
            .agent
            .agent
            .tty_win_resize(self.rpc_context(), &req)
            .await
            .map_err(Error::agent("TtyWinResize"))?;
        Ok(())
    }

    /// UpdateContainer with new resources (runtime-spec `LinuxResources` JSON), applied to the
    /// container's guest cgroup. The VM keeps its size: a memory limit above it is refused.
    pub async fn update(&self, resources: &Any) -> Result<()> {
        let id = &self.process.container_id;
        if self.sandbox.is_dead() {
            return Err(Error::VmGone {
                sandbox: self.sandbox.id.clone(),
            });
        }
        let mut r = resources_to_agent(&resources.value, &format!("update {id} resources"))?;
        check_memory_limit(id, &r, self.sandbox.size.memory_mib)?;
        shape_resources(&mut r);
        let req = UpdateContainerRequest {
            container_id: id.clone(),
            resources: MessageField::some(r),
            ..Default::default()
        };
        self.sandbox
            .agent
            .agent
            .update_container(self.rpc_context(), &req)
            .await
            .map_err(Error::agent("UpdateContainer"))
            .with_context(|| format!("container {id}"))?;
        Ok(())
    }

    /// The container's cgroup statistics as containerd's metrics.
    pub async fn stats(&self) -> Result<Any> {
        if self.sandbox.is_dead() {
            return Err(Error::VmGone {
                sandbox: self.sandbox.id.clone(),
            });
        }
        let req = StatsContainerRequest {
            container_id: self.process.container_id.clone(),
            ..Default::default()
        };
        let stats = self
            .sandbox
            .agent
            .agent
            .stats_container(self.rpc_context(), &req)
            .await
            .map_err(Error::agent("StatsContainer"))?;
        metrics_any(&stats).map_err(Error::Metrics)
    }

    /// The exit to report for a deleted process (one that never started ends now, so that
    /// waiters return); a running process must be killed first.
    pub fn finish(&self) -> Result<ExitInfo> {
        let proc = &self.process;
        if proc.phase() == Phase::Running {
            return Err(Error::StillRunning {
                id: proc.container_id.clone(),
                process: proc.event_id().to_string(),
            });
        }
        Ok(proc.exit().unwrap_or_else(|| proc.set_exited(0)))
    }

    /// RemoveContainer, best effort: the VM goes away with the pod anyway, and containerd must
    /// not be kept from cleaning up.
    pub async fn remove_from_guest(&self) {
        // A stopping VM takes its containers with it; its agent may not answer any more.
        if self.sandbox.is_ending() {
            return;
        }
        let id = &self.process.container_id;
        let req = RemoveContainerRequest {
            container_id: id.clone(),
            timeout: self.sandbox.rpc_timeout.as_secs() as u32,
            ..Default::default()
        };
        let r = self
            .sandbox
            .agent
            .agent
            .remove_container(self.rpc_context(), &req)
            .await;
        if let Err(e) = r {
            log::warn!("container {id}: agent RemoveContainer: {e}");
        }
    }
}

/// A memory limit (bytes; 0 or less: none) must fit in the VM, which cannot grow.
pub fn check_memory_limit(id: &str, r: &oci::LinuxResources, vm_mib: u64) -> Result<()> {
    let limit = r.Memory.as_ref().map_or(0, |m| m.Limit);
    if limit > 0 && limit as u64 > vm_mib.saturating_mul(1 << 20) {
        return Err(Error::ExceedsVm {
            id: id.to_string(),
            limit_mib: (limit as u64).div_ceil(1 << 20),
            vm_mib,
        });
    }
    Ok(())
}

/// The shim's containers by id.
#[derive(Default)]
pub struct Containers(Mutex<HashMap<String, Container>>);

impl Containers {
    /// A container's init (`exec_id` empty) or one of its execs.
    pub async fn lookup(&self, id: &str, exec_id: &str) -> Result<Handle> {
        let containers = self.0.lock().await;
        let c = containers
            .get(id)
            .ok_or_else(|| Error::ContainerNotFound { id: id.to_string() })?;
        let process = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| Error::ExecNotFound {
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                })?
        };
        Ok(Handle {
            sandbox: c.sandbox.clone(),
            process,
            pod_sandbox: c.pod_sandbox,
        })
    }

    pub async fn ensure_absent(&self, id: &str) -> Result<()> {
        if self.0.lock().await.contains_key(id) {
            return Err(Error::ContainerExists { id: id.to_string() });
        }
        Ok(())
    }

    pub async fn insert(&self, id: &str, c: Container) {
        self.0.lock().await.insert(id.to_string(), c);
    }

    pub async fn bundle(&self, id: &str) -> String {
        self.0
            .lock()
            .await
            .get(id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default()
    }

    pub async fn len(&self) -> usize {
        self.0.lock().await.len()
    }

    pub async fn is_empty(&self) -> bool {
        self.0.lock().await.is_empty()
    }

    /// Exec: a new process of a running container, registered but not started.
    pub async fn exec(&self, req: &ExecProcessRequest, namespace: &str) -> Result<()> {
        if req.exec_id.is_empty() {
            return Err(Error::EmptyExecId);
        }
        let init = self.lookup(&req.id, "").await?;
        let (spec, paths) = init.exec_spec(req)?;
        {
            let containers = self.0.lock().await;
            if containers
                .get(&req.id)
                .is_some_and(|c| c.execs.contains_key(&req.exec_id))
            {
                return Err(Error::ExecExists {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
        }
        let io = stdio::open(&paths, &req.id, namespace)
            .await
            .with_context(|| format!("exec {}", req.exec_id))?;
        let proc = Arc::new(Process::new(
            &req.id,
            &req.exec_id,
            init.sandbox.pid(),
            paths,
            Some(spec),
            io,
        ));
        let mut containers = self.0.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::ContainerNotFound { id: req.id.clone() })?;
        c.execs.insert(req.exec_id.clone(), proc);
        Ok(())
    }

    /// Forgets an exec; its stdio, if it never started, is closed.
    pub async fn remove_exec(&self, h: &Handle) {
        let p = &h.process;
        if let Some(c) = self.0.lock().await.get_mut(&p.container_id) {
            c.execs.remove(&p.exec_id);
        }
        // An exec that never started still holds its stdio open.
        p.close_unstarted_io().await;
    }

    /// Forgets a container; execs that never started (and an init that never did) still hold
    /// opened stdio (and maybe a logger): closed here.
    pub async fn remove(&self, id: &str) {
        let removed = self.0.lock().await.remove(id);
        if let Some(c) = removed {
            c.release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_limit(limit: i64) -> oci::LinuxResources {
        oci::LinuxResources {
            Memory: MessageField::some(oci::LinuxMemory {
                Limit: limit,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_memory_limit_must_fit_in_the_vm() {
        let mib = 1i64 << 20;
        // Up to the VM's size, and "no limit" (0, -1, absent), pass.
        for ok in [0, -1, 512 * mib, 2560 * mib] {
            assert!(
                check_memory_limit("c1", &with_limit(ok), 2560).is_ok(),
                "{ok}"
            );
        }
        assert!(check_memory_limit("c1", &oci::LinuxResources::default(), 2560).is_ok());
        let e = check_memory_limit("c1", &with_limit(2560 * mib + 1), 2560).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "container c1: memory limit 2561 MiB exceeds the VM's 2560 MiB: a kata-cc VM is \
             sized once at pod creation"
        );
    }
}
