//! The ttrpc services: `grpc.AgentService` and `grpc.Health`.

use std::path::Path;
use std::sync::Arc;

use agent_proto::{agent, agent_ttrpc, csi, empty::Empty, health, health_ttrpc, types};
use async_trait::async_trait;
use ttrpc::r#async::TtrpcContext;

use crate::container::Sandbox;
use crate::copyfile;
use crate::error::{unimplemented, AgentError};
use crate::layers;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Reads are capped so one response stays well below ttrpc's message size limit.
const MAX_READ: usize = 1024 * 1024;

pub struct Agent {
    pub sandbox: Arc<Sandbox>,
    pub layers_dir: std::path::PathBuf,
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
        let cid = req.container_id.clone();
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
        ok(self.sandbox.exec_process(req).await, "ExecProcess")?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> TResult<Empty> {
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
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "ReadStdout",
        )?;
        let mut r = agent::ReadStreamResponse::new();
        if let Some(s) = &p.io.stdout {
            r.data = s.read((req.len as usize).min(MAX_READ)).await;
        }
        Ok(r)
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> TResult<agent::ReadStreamResponse> {
        let p = ok(
            self.sandbox.process(&req.container_id, &req.exec_id).await,
            "ReadStderr",
        )?;
        let mut r = agent::ReadStreamResponse::new();
        // A terminal process has no separate stderr: it reads as an empty stream (EOF).
        if let Some(s) = &p.io.stderr {
            r.data = s.read((req.len as usize).min(MAX_READ)).await;
        }
        Ok(r)
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> TResult<Empty> {
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
        if !req.hostname.is_empty() && std::process::id() == 1 {
            if let Err(e) = nix::unistd::sethostname(&req.hostname) {
                return Err(AgentError::internal(format!(
                    "setting hostname {:?}: {e}",
                    req.hostname
                ))
                .into());
            }
        }
        if !req.storages.is_empty() {
            return Err(AgentError::invalid(
                "CreateSandboxRequest.storages are not supported by kata-cc-agent",
            )
            .into());
        }
        *self.sandbox.sandbox_id.lock().await = Some(req.sandbox_id.clone());
        log::info!("sandbox {} created", req.sandbox_id);
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::DestroySandboxRequest,
    ) -> TResult<Empty> {
        ok(self.sandbox.remove_all().await, "DestroySandbox")?;
        let _ = std::fs::remove_dir_all(&self.layers_dir);
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> TResult<agent::GuestDetailsResponse> {
        let mut d = agent::AgentDetails::new();
        d.version = VERSION.to_string();
        d.init_daemon = std::process::id() == 1;
        d.storage_handlers = vec![layers::DRIVER.to_string()];
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
        ok(
            copyfile::copy_chunk(
                &self.layers_dir,
                &req.path,
                req.offset,
                &req.data,
                req.file_mode,
                req.dir_mode,
            ),
            "CopyFile",
        )?;
        Ok(Empty::new())
    }

    // Everything below is declared by the protocol but not offered by kata-cc-agent.
    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::UpdateContainerRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("UpdateContainerRequest"))
    }

    async fn update_ephemeral_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::UpdateEphemeralMountsRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("UpdateEphemeralMountsRequest"))
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::PauseContainerRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("PauseContainerRequest"))
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ResumeContainerRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("ResumeContainerRequest"))
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("RemoveStaleVirtiofsShareMountsRequest"))
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::UpdateInterfaceRequest,
    ) -> TResult<types::Interface> {
        Err(unimplemented("UpdateInterfaceRequest"))
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::UpdateRoutesRequest,
    ) -> TResult<agent::Routes> {
        Err(unimplemented("UpdateRoutesRequest"))
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListInterfacesRequest,
    ) -> TResult<agent::Interfaces> {
        Err(unimplemented("ListInterfacesRequest"))
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListRoutesRequest,
    ) -> TResult<agent::Routes> {
        Err(unimplemented("ListRoutesRequest"))
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::AddARPNeighborsRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("AddARPNeighborsRequest"))
    }

    async fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetIPTablesRequest,
    ) -> TResult<agent::GetIPTablesResponse> {
        Err(unimplemented("GetIPTablesRequest"))
    }

    async fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::SetIPTablesRequest,
    ) -> TResult<agent::SetIPTablesResponse> {
        Err(unimplemented("SetIPTablesRequest"))
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetMetricsRequest,
    ) -> TResult<agent::Metrics> {
        Err(unimplemented("GetMetricsRequest"))
    }

    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentMemcgConfig,
    ) -> TResult<Empty> {
        Err(unimplemented("MemAgentMemcgConfig"))
    }

    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentCompactConfig,
    ) -> TResult<Empty> {
        Err(unimplemented("MemAgentCompactConfig"))
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::OnlineCPUMemRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("OnlineCPUMemRequest"))
    }

    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ReseedRandomDevRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("ReseedRandomDevRequest"))
    }

    async fn mem_hotplug_by_probe(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemHotplugByProbeRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("MemHotplugByProbeRequest"))
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::SetGuestDateTimeRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("SetGuestDateTimeRequest"))
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetOOMEventRequest,
    ) -> TResult<agent::OOMEvent> {
        Err(unimplemented("GetOOMEventRequest"))
    }

    async fn add_swap(&self, _ctx: &TtrpcContext, _req: agent::AddSwapRequest) -> TResult<Empty> {
        Err(unimplemented("AddSwapRequest"))
    }

    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::VolumeStatsRequest,
    ) -> TResult<csi::VolumeStatsResponse> {
        Err(unimplemented("VolumeStatsRequest"))
    }

    async fn resize_volume(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ResizeVolumeRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("ResizeVolumeRequest"))
    }

    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::SetPolicyRequest,
    ) -> TResult<Empty> {
        Err(unimplemented("SetPolicyRequest"))
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
