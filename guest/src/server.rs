//! The ttrpc services: `grpc.AgentService` and `grpc.Health`.

use std::path::Path;
use std::sync::Arc;

use agent_proto::{agent, agent_ttrpc, csi, empty::Empty, health, health_ttrpc, types};
use async_trait::async_trait;
use kata_cc_policy::{self as policy, FastPathJob, PolicyEngine};
use protobuf::MessageDyn;
use ttrpc::r#async::TtrpcContext;

use crate::container::Sandbox;
use crate::copyfile;
use crate::error::{unimplemented, AgentError};
use crate::launch::Launch;
use crate::network::Network;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Reads are capped so one response stays well below ttrpc's message size limit.
const MAX_READ: usize = 1024 * 1024;

pub struct Agent {
    pub sandbox: Arc<Sandbox>,
    /// The sandbox's security policy: one engine (and its state) per agent.
    pub policy: Arc<std::sync::Mutex<PolicyEngine>>,
    /// The TEE and the launch's HOST_DATA, which a new policy must match.
    pub launch: Arc<Launch>,
    /// The guest's links, addresses, routes and neighbours (the network requests).
    pub network: Arc<Network>,
}

impl Agent {
    /// Checks a request against the policy before any work is done for it.
    fn check(&self, req: &dyn MessageDyn) -> TResult<()> {
        let name = req.descriptor_dyn().name().to_string();
        let input = policy::input::to_json(req);
        if log::log_enabled!(log::Level::Debug) {
            log_policy_input(&name, &input);
        }
        let decision = {
            // A poisoned lock means an evaluation panicked: deny rather than trust its state.
            let Ok(mut engine) = self.policy.lock() else {
                return Err(denied(format!(
                    "{name} is blocked by policy: policy engine failed"
                )));
            };
            engine.evaluate(&name, &input)
        };
        match decision {
            Ok(d) if d.allowed => {
                if d.forced {
                    log::warn!(
                        "policy: {name} allowed by AllowRequestsFailingPolicy: {}",
                        d.prints.join(" ")
                    );
                }
                Ok(())
            }
            Ok(d) => {
                let msg = d.denial_message(&name);
                log::warn!("{msg}");
                Err(denied(msg))
            }
            Err(e) => {
                let msg = format!("{name} is blocked by policy: {e}");
                log::warn!("{msg}");
                Err(denied(msg))
            }
        }
    }

    /// ReadStdout/ReadStderr. A denied read answers the refusal at once (the host logs it:
    /// that is where a user sees why a container's log stays empty), and the stream is drained
    /// here until the process closes it, so the process never blocks on a full pipe.
    async fn read_stream(
        &self,
        req: agent::ReadStreamRequest,
        stdout: bool,
    ) -> TResult<agent::ReadStreamResponse> {
        let denied = self.check(&req).err();
        let what = if stdout { "ReadStdout" } else { "ReadStderr" };
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            what,
        )?;
        if let Some(e) = denied {
            let stream = if stdout { &p.io.stdout } else { &p.io.stderr };
            if stream.as_ref().is_some_and(|s| s.start_draining()) {
                let p = p.clone();
                tokio::spawn(async move {
                    let stream = if stdout { &p.io.stdout } else { &p.io.stderr };
                    if let Some(s) = stream {
                        while !s.read(MAX_READ).await.is_empty() {}
                    }
                });
            }
            return Err(e);
        }
        let mut r = agent::ReadStreamResponse::new();
        // A terminal process has no separate stderr: it reads as an empty stream (EOF).
        let stream = if stdout { &p.io.stdout } else { &p.io.stderr };
        if let Some(s) = stream {
            r.data = s.read((req.len as usize).min(MAX_READ)).await;
        }
        Ok(r)
    }
}

/// With the agent's debug log on (`[agent.kata] enable_debug`): a request's policy input as a
/// line of Kata's request log (`["ep":"<Name>",{input}],`) on the console, which the shim keeps
/// in the sandbox's console log, so a refusal can be replayed offline (`kata-cc policy replay`).
/// SetPolicy is left out: its input is the whole policy, which the pod's annotation carries.
fn log_policy_input(name: &str, input: &serde_json::Value) {
    use std::io::Write;
    if name == "SetPolicyRequest" {
        return;
    }
    // One write for the whole line, so other console output cannot land inside it.
    let line = format!("{}\n", policy::log::format_entry(name, input));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn denied(msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::PERMISSION_DENIED, msg))
}

type TResult<T> = ttrpc::Result<T>;

fn ok<T>(r: crate::error::Result<T>, what: &str) -> TResult<T> {
    r.map_err(|e| {
        log::warn!("{what}: {e}");
        ttrpc::Error::from(e)
    })
}

#[async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        let cid = req.container_id.clone();
        if let Some(spec) = req.OCI.as_ref() {
            let wants = crate::spec::wants_attestation(spec)
                .map_err(|e| AgentError::invalid(format!("CreateContainer {cid}: {e}")))?;
            if wants && !matches!(self.launch.tee, kata_cc_policy::tee::Tee::SnpTsm { .. }) {
                let why = match self.launch.tee {
                    kata_cc_policy::tee::Tee::None => "this VM has no TEE",
                    _ => "the guest has no configfs-tsm report interface",
                };
                return Err(AgentError::invalid(format!(
                    "CreateContainer {cid}: annotation {}: {why} ({}): no attestation report \
                     can be made in it",
                    crate::spec::ATTESTATION_ANNOTATION,
                    self.launch.feature()
                ))
                .into());
            }
        }
        ok(
            self.sandbox.create_container(req).await,
            &format!("CreateContainer {cid}"),
        )?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(
            self.sandbox.start_container(&req.container_id).await,
            "StartContainer",
        )?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(
            self.sandbox
                .remove_container(&req.container_id, req.timeout)
                .await,
            "RemoveContainer",
        )?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(self.sandbox.exec_process(req).await, "ExecProcess")?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(
            self.sandbox
                .signal_process(&req.container_id, &req.exec_id, req.signal)
                .await,
            "SignalProcess",
        )?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> TResult<agent::WaitProcessResponse> {
        self.check(&req)?;
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "WaitProcess",
        )?;
        let mut r = agent::WaitProcessResponse::new();
        r.status = p.wait().await;
        Ok(r)
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> TResult<agent::StatsContainerResponse> {
        self.check(&req)?;
        ok(
            self.sandbox.stats(&req.container_id).await,
            "StatsContainer",
        )
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> TResult<agent::WriteStreamResponse> {
        self.check(&req)?;
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "WriteStdin",
        )?;
        let n = ok(
            p.io.write_stdin(&req.data).await.map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "writing stdin of container {} process {:?}: {e}",
                    req.container_id, req.exec_id
                ))
            }),
            "WriteStdin",
        )?;
        let mut r = agent::WriteStreamResponse::new();
        r.len = n as u32;
        Ok(r)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> TResult<agent::ReadStreamResponse> {
        self.read_stream(req, true).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> TResult<agent::ReadStreamResponse> {
        self.read_stream(req, false).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "CloseStdin",
        )?;
        ok(
            p.io.close_stdin().await.map_err(|e| {
                AgentError::internal(format!(
                    "closing stdin of container {}: {e}",
                    req.container_id
                ))
            }),
            "CloseStdin",
        )?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "TtyWinResize",
        )?;
        ok(
            p.io.resize(req.row as u16, req.column as u16).map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "resizing the terminal of container {} process {:?}: {e}",
                    req.container_id, req.exec_id
                ))
            }),
            "TtyWinResize",
        )?;
        Ok(Empty::new())
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(self.sandbox.create_sandbox(&req).await, "CreateSandbox")?;
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(self.sandbox.destroy().await, "DestroySandbox")?;
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> TResult<agent::GuestDetailsResponse> {
        self.check(&req)?;
        let mut d = agent::AgentDetails::new();
        d.version = VERSION.to_string();
        d.init_daemon = std::process::id() == 1;
        d.storage_handlers = vec![
            agent_proto::contract::IMAGE_DRIVER.to_string(),
            agent_proto::contract::EPHEMERAL_DRIVER.to_string(),
        ];
        d.extra_features = vec![self.launch.feature()];
        let mut r = agent::GuestDetailsResponse::new();
        r.agent_details = Some(d).into();
        if req.mem_block_size {
            r.mem_block_size_bytes =
                std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                    .unwrap_or(0);
        }
        r.support_mem_hotplug_probe =
            req.mem_hotplug_probe && Path::new("/sys/devices/system/memory/probe").exists();
        Ok(r)
    }

    async fn copy_file(&self, _ctx: &TtrpcContext, req: agent::CopyFileRequest) -> TResult<Empty> {
        self.check(&req)?;
        if req.path == kata_cc_policy::initdata::GUEST_PATH {
            self.launch
                .store_initdata(req.offset, &req.data)
                .map_err(|e| AgentError::invalid(format!("CopyFile: {e}")))?;
            return Ok(Empty::new());
        }
        ok(
            copyfile::copy(
                &self.sandbox.paths.shared,
                &copyfile::Request::from_proto(&req),
            )
            .map_err(AgentError::from),
            "CopyFile",
        )?;
        Ok(Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        ok(
            self.sandbox
                .update_container(&req.container_id, req.resources.as_ref())
                .await,
            "UpdateContainer",
        )?;
        Ok(Empty::new())
    }

    /// Waits for the next OOM kill of a container (the shim asks in a loop).
    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> TResult<agent::OOMEvent> {
        self.check(&req)?;
        let mut r = agent::OOMEvent::new();
        r.container_id = self.sandbox.oom_events.next().await;
        Ok(r)
    }

    // The network requests: the shim sends them after SetPolicy and before CreateSandbox.

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> TResult<types::Interface> {
        self.check(&req)?;
        let Some(interface) = req.interface.as_ref() else {
            return Err(AgentError::invalid("UpdateInterfaceRequest: no interface").into());
        };
        ok(
            self.network
                .update_interface(interface)
                .await
                .map_err(|e| AgentError::from(e).context("UpdateInterfaceRequest")),
            "UpdateInterface",
        )
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> TResult<agent::Routes> {
        self.check(&req)?;
        let Some(routes) = req.routes.as_ref() else {
            return Err(AgentError::invalid("UpdateRoutesRequest: no routes").into());
        };
        let list = ok(
            self.network
                .update_routes(&routes.Routes)
                .await
                .map_err(|e| AgentError::from(e).context("UpdateRoutesRequest")),
            "UpdateRoutes",
        )?;
        let mut r = agent::Routes::new();
        r.Routes = list;
        Ok(r)
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> TResult<agent::Interfaces> {
        self.check(&req)?;
        let list = ok(
            self.network
                .list_interfaces()
                .await
                .map_err(|e| AgentError::from(e).context("ListInterfacesRequest")),
            "ListInterfaces",
        )?;
        let mut r = agent::Interfaces::new();
        r.Interfaces = list;
        Ok(r)
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> TResult<agent::Routes> {
        self.check(&req)?;
        let list = ok(
            self.network
                .list_routes()
                .await
                .map_err(|e| AgentError::from(e).context("ListRoutesRequest")),
            "ListRoutes",
        )?;
        let mut r = agent::Routes::new();
        r.Routes = list;
        Ok(r)
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        let Some(neighbors) = req.neighbors.as_ref() else {
            return Err(AgentError::invalid("AddARPNeighborsRequest: no neighbors").into());
        };
        ok(
            self.network
                .add_arp_neighbors(&neighbors.ARPNeighbors)
                .await
                .map_err(|e| AgentError::from(e).context("AddARPNeighborsRequest")),
            "AddARPNeighbors",
        )?;
        Ok(Empty::new())
    }

    // Everything below is declared by the protocol but not offered by kata-cc-agent.

    async fn update_ephemeral_mounts(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("UpdateEphemeralMountsRequest"))
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("PauseContainerRequest"))
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("ResumeContainerRequest"))
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("RemoveStaleVirtiofsShareMountsRequest"))
    }

    async fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> TResult<agent::GetIPTablesResponse> {
        self.check(&req)?;
        Err(unimplemented("GetIPTablesRequest"))
    }

    async fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> TResult<agent::SetIPTablesResponse> {
        self.check(&req)?;
        Err(unimplemented("SetIPTablesRequest"))
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> TResult<agent::Metrics> {
        self.check(&req)?;
        let mut m = agent::Metrics::new();
        m.metrics = crate::metrics::text();
        Ok(m)
    }

    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemAgentMemcgConfig,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("MemAgentMemcgConfig"))
    }

    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemAgentCompactConfig,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("MemAgentCompactConfig"))
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("OnlineCPUMemRequest"))
    }

    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("ReseedRandomDevRequest"))
    }

    async fn mem_hotplug_by_probe(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("MemHotplugByProbeRequest"))
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("SetGuestDateTimeRequest"))
    }

    async fn add_swap(&self, _ctx: &TtrpcContext, req: agent::AddSwapRequest) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("AddSwapRequest"))
    }

    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> TResult<csi::VolumeStatsResponse> {
        self.check(&req)?;
        Err(unimplemented("VolumeStatsRequest"))
    }

    async fn resize_volume(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResizeVolumeRequest,
    ) -> TResult<Empty> {
        self.check(&req)?;
        Err(unimplemented("ResizeVolumeRequest"))
    }

    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetPolicyRequest,
    ) -> TResult<Empty> {
        // The current policy decides whether it may be replaced.
        self.check(&req)?;
        // Under SNP only the policy the measured launch names (HOST_DATA) may be enforced.
        if let Err(e) = self.launch.check_policy(&req.policy) {
            let msg = format!("SetPolicyRequest: {e}");
            log::warn!("{msg}");
            return Err(denied(msg));
        }
        let (engine, job) = PolicyEngine::new_deferred(&req.policy).map_err(|e| {
            log::warn!("SetPolicy: {e}");
            ttrpc::Error::from(AgentError::invalid(format!("SetPolicyRequest: {e}")))
        })?;
        match self.policy.lock() {
            Ok(mut current) => *current = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
        log::info!("policy replaced by SetPolicy ({} bytes)", req.policy.len());
        compile_fast_path(self.policy.clone(), job);
        Ok(Empty::new())
    }
}

/// Compiles a policy's fast path on a thread of its own, then installs it: until then the
/// interpreter (always authoritative for denials) decides every request. Loading a policy thus
/// costs its parse only, and the compile overlaps the time the guest waits for the host while a
/// pod starts. Normal priority on purpose: an idle-priority thread holding malloc's lock (one
/// arena) would stall the agent's other threads while a container keeps the vCPU busy.
pub fn compile_fast_path(policy: Arc<std::sync::Mutex<PolicyEngine>>, job: FastPathJob) {
    let spawned = std::thread::Builder::new()
        .name("policy-compile".into())
        .spawn(move || {
            // The compile is a speed-up, not a need: it runs when the guest's CPU has nothing
            // else to do. At normal priority it took its 0.1 s (under TCG, one vCPU) from the
            // sandbox's first requests, which arrive right after the ready line.
            // SAFETY: sets this thread's own policy; `param` outlives the call.
            let idle = unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
            };
            if idle != 0 {
                log::debug!(
                    "policy fast path: SCHED_IDLE refused ({}); compiling at normal priority",
                    std::io::Error::last_os_error()
                );
            }
            let t = std::time::Instant::now();
            let compiled = job.compile();
            let compiled_ok = compiled.is_some();
            let installed = match policy.lock() {
                Ok(mut p) => p.install_fast_path(compiled),
                Err(poisoned) => poisoned.into_inner().install_fast_path(compiled),
            };
            let ms = t.elapsed().as_millis();
            // The compiler's working memory is free now; give it back to the guest.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
            match (compiled_ok, installed) {
                (true, true) => log::info!("policy fast path ready ({ms} ms)"),
                (false, _) => log::info!(
                    "policy has no fast path (the RVM cannot compile it): the interpreter decides"
                ),
                (true, false) => {
                    log::info!("policy fast path dropped: the policy changed meanwhile")
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("policy fast path: cannot start its thread ({e}): the interpreter decides");
    }
}

pub struct HealthService;

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> TResult<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> TResult<health::VersionCheckResponse> {
        let mut r = health::VersionCheckResponse::new();
        r.agent_version = VERSION.to_string();
        r.grpc_version = VERSION.to_string();
        Ok(r)
    }
}

/// Start serving on `addr` (`vsock://-1:1024` in the guest, `unix://<path>` in tests).
pub async fn serve(addr: &str, agent: Agent) -> ttrpc::Result<ttrpc::r#async::Server> {
    let agent_svc = agent_ttrpc::create_agent_service(Arc::new(agent));
    let health_svc = health_ttrpc::create_health(Arc::new(HealthService));
    let mut server = ttrpc::r#async::Server::new()
        .bind(addr)?
        .register_service(agent_svc)
        .register_service(health_svc);
    server.start().await?;
    Ok(server)
}
