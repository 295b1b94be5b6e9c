//! One pod's utility VM as the task service sees it: the VM, the agent connection, the layers
//! already copied into the guest, and a flag that flips when QEMU is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use agent_proto::agent::{CopyFileRequest, CreateSandboxRequest, SetPolicyRequest};
use agent_proto::contract;
use tokio::sync::{watch, Mutex};

use crate::agent::{context, status_of, AgentClient};
use crate::config::Config;
use crate::image::{digest_hex, ImageStore, Layer};
use crate::policy_source::{self, PodPolicy, PolicyState};
use crate::sizing::size_for;
use crate::timeline;
use crate::vm::{Vm, VmSpec};

/// Largest CopyFile payload (the ttrpc default message limit is 4 MiB).
pub const COPY_CHUNK: usize = 1 << 20;
/// Guest directory the layer blobs are copied to (guest tmpfs).

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("sizing the VM: {0}")]
    Sizing(#[from] crate::sizing::SizingError),
    #[error("{0}")]
    Vm(#[from] crate::vm::VmError),
    #[error("agent {rpc}: {source}")]
    Agent {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("{0}")]
    Image(#[from] crate::image::ImageError),
    #[error("copy layer {digest} to the guest: {source}")]
    CopyLayer {
        digest: String,
        source: ttrpc::Error,
    },
    #[error("layer {digest}: containerd sent {got} bytes, manifest says {want}")]
    LayerSize { digest: String, got: i64, want: i64 },
    /// The agent refused the pod's policy (current policy denies SetPolicy, or the text does
    /// not parse); containerd gets the agent's status code (service::error). `step` names a
    /// part of sending it other than SetPolicy itself.
    #[error("policy from annotation {annotation}: agent SetPolicy: {step}{}", status_of(.source).1)]
    SetPolicy {
        annotation: &'static str,
        step: &'static str,
        source: ttrpc::Error,
    },
    #[error("cannot record the policy in {path}: {source}")]
    PolicyState {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Sandbox {
    pub id: String,
    pub agent: AgentClient,
    pub rpc_timeout: Duration,
    vm: Mutex<Option<Vm>>,
    qemu_pid: u32,
    dead: watch::Receiver<bool>,
    stopping: AtomicBool,
    /// Held from a container's first layer copy until its CreateContainer returned: two
    /// containers of a pod may share a blob path, which the agent consumes.
    pub layer_lock: Mutex<()>,
    state_dir: PathBuf,
    /// SEV-SNP launch: the agent binds policies to HOST_DATA.
    confidential: bool,
    launch_host_data: Option<[u8; 32]>,
    /// The policy the shim last set (None: the agent's baked default).
    policy: Mutex<Option<PodPolicy>>,
}

/// Sends a policy to the agent, which checks SetPolicyRequest against its current policy.
/// A confidential guest first gets the init-data document the policy came from (if it did):
/// the agent checks the document's digest against the launch's HOST_DATA.
async fn set_policy(
    agent: &AgentClient,
    timeout: Duration,
    p: &PodPolicy,
    confidential: bool,
) -> Result<(), SandboxError> {
    if let (true, Some(doc)) = (confidential, &p.document) {
        copy_initdata(agent, timeout, doc, p.source.annotation()).await?;
    }
    let req = SetPolicyRequest {
        policy: p.text.clone(),
        ..Default::default()
    };
    agent
        .agent
        .set_policy(context(timeout), &req)
        .await
        .map(|_| ())
        .map_err(|source| SandboxError::SetPolicy {
            annotation: p.source.annotation(),
            step: "",
            source,
        })
}

/// CopyFile of the init-data document to its fixed guest path, in chunks.
async fn copy_initdata(
    agent: &AgentClient,
    timeout: Duration,
    doc: &str,
    annotation: &'static str,
) -> Result<(), SandboxError> {
    const CHUNK: usize = 1 << 20;
    let bytes = doc.as_bytes();
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK).min(bytes.len());
        let req = CopyFileRequest {
            path: kata_cc_policy::initdata::GUEST_PATH.to_string(),
            file_size: bytes.len() as i64,
            file_mode: 0o600,
            dir_mode: 0o700,
            offset: offset as i64,
            data: bytes[offset..end].to_vec(),
            ..Default::default()
        };
        agent
            .agent
            .copy_file(context(timeout), &req)
            .await
            .map_err(|source| SandboxError::SetPolicy {
                annotation,
                step: "copying the init-data document: ",
                source,
            })?;
        offset = end;
        if offset >= bytes.len() {
            return Ok(());
        }
    }
}

fn record_policy(state_dir: &std::path::Path, state: &PolicyState) -> Result<(), SandboxError> {
    policy_source::write_state(state_dir, state).map_err(|source| SandboxError::PolicyState {
        path: state_dir.join(policy_source::POLICY_STATE_FILE),
        source,
    })
}

impl Sandbox {
    /// Size and boot the VM for a pod, send the pod's policy (if it has one: otherwise the
    /// agent keeps its baked default), then announce the sandbox to the agent. Nothing is left
    /// running when this fails.
    pub async fn start(
        cfg: &Config,
        id: &str,
        hostname: &str,
        annotations: &HashMap<String, String>,
        resources: Option<&oci_spec::runtime::LinuxResources>,
        policy: Option<PodPolicy>,
        rpc_timeout: Duration,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let size = size_for(cfg.hypervisor.qemu.default_memory, annotations, resources)?;
        log::info!(
            "sandbox {id}: starting VM with {} MiB, {} vCPUs",
            size.memory_mib,
            size.vcpus
        );
        let state_dir = cfg.runtime.state_root.join(id);
        let mut vm = Vm::start(
            cfg,
            VmSpec {
                id: id.to_string(),
                size,
                state_dir: state_dir.clone(),
                host_data: policy.as_ref().map(PodPolicy::host_data),
            },
        )
        .await?;
        // The one place a failed start stops the VM: every step after the boot reports here.
        let agent = match Self::prepare_guest(
            &vm,
            cfg,
            id,
            hostname,
            policy.as_ref(),
            &state_dir,
            rpc_timeout,
        )
        .await
        {
            Ok(agent) => agent,
            Err(e) => {
                if let Err(stop) = vm.stop().await {
                    log::error!("sandbox {id}: stopping VM: {stop}");
                }
                return Err(e);
            }
        };
        crate::timeline::mark(id, timeline::SANDBOX_CREATED);
        log::info!(
            "sandbox {id}: VM up in {:?} ({:?})",
            vm.boot_time(),
            vm.accel()
        );
        let (dead_tx, dead_rx) = watch::channel(false);
        let exited = vm.wait_exited();
        let sandbox = Arc::new(Sandbox {
            id: id.to_string(),
            agent,
            rpc_timeout,
            qemu_pid: vm.qemu_pid().map_or(0, |p| p as u32),
            vm: Mutex::new(Some(vm)),
            dead: dead_rx,
            stopping: AtomicBool::new(false),
            layer_lock: Mutex::new(()),
            state_dir,
            confidential: cfg.hypervisor.qemu.confidential_guest,
            launch_host_data: policy.as_ref().map(PodPolicy::host_data),
            policy: Mutex::new(policy),
        });
        let weak = Arc::downgrade(&sandbox);
        tokio::spawn(async move {
            let exit = exited.await;
            let _ = dead_tx.send(true);
            if let Some(sb) = weak.upgrade() {
                if !sb.stopping.load(Ordering::SeqCst) {
                    log::error!(
                        "sandbox {}: QEMU exited unexpectedly ({exit}); marking its processes exited",
                        sb.id
                    );
                    // Give the process waiters a moment to record exits, then clean up the
                    // backend and the state dir.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    sb.stop().await;
                }
            }
        });
        Ok(sandbox)
    }

    /// The steps between a booted VM and a usable sandbox: connect to the agent, send the
    /// pod's policy, record it, announce the sandbox. The caller stops the VM on failure.
    async fn prepare_guest(
        vm: &Vm,
        cfg: &Config,
        id: &str,
        hostname: &str,
        policy: Option<&PodPolicy>,
        state_dir: &Path,
        rpc_timeout: Duration,
    ) -> Result<AgentClient, SandboxError> {
        let agent = vm.agent().await?;
        // The policy goes first: CreateSandbox and everything after are checked against it.
        let state = Self::apply_policy(&agent, cfg, id, policy, rpc_timeout).await?;
        record_policy(state_dir, &state)?;
        let req = CreateSandboxRequest {
            hostname: hostname.to_string(),
            sandbox_id: id.to_string(),
            ..Default::default()
        };
        agent
            .agent
            .create_sandbox(context(rpc_timeout), &req)
            .await
            .map_err(|source| SandboxError::Agent {
                rpc: "CreateSandbox",
                source,
            })?;
        Ok(agent)
    }

    /// Sends the pod's policy (if it has one: otherwise the agent keeps its baked default);
    /// returns what to record about the policy in force.
    async fn apply_policy(
        agent: &AgentClient,
        cfg: &Config,
        id: &str,
        policy: Option<&PodPolicy>,
        rpc_timeout: Duration,
    ) -> Result<PolicyState, SandboxError> {
        let state = match policy {
            Some(p) => {
                set_policy(
                    agent,
                    rpc_timeout,
                    p,
                    cfg.hypervisor.qemu.confidential_guest,
                )
                .await?;
                log::info!(
                    "sandbox {id}: policy from {} set ({:?} digest {})",
                    p.source.annotation(),
                    p.algorithm,
                    p.digest_hex()
                );
                p.state(Some(p.host_data()))
            }
            None => PolicyState::baked_default(),
        };
        Ok(PolicyState {
            snp_launch: state.host_data.is_some() && cfg.hypervisor.qemu.confidential_guest,
            ..state
        })
    }

    /// The PID reported to containerd for the pod's processes (QEMU's: the process that
    /// actually carries the workload on this host).
    pub fn pid(&self) -> u32 {
        if self.qemu_pid != 0 {
            self.qemu_pid
        } else {
            std::process::id()
        }
    }

    /// A later container of the pod carries a policy: if it differs from the one in force the
    /// shim asks the agent to replace it, which only succeeds if the current policy allows
    /// SetPolicyRequest. The same policy again (CRI repeats pod annotations on every
    /// container) is not re-sent.
    pub async fn update_policy(&self, p: &PodPolicy) -> Result<(), SandboxError> {
        let mut current = self.policy.lock().await;
        if current.as_ref().is_some_and(|c| c.text == p.text) {
            return Ok(());
        }
        set_policy(&self.agent, self.rpc_timeout, p, self.confidential).await?;
        log::info!(
            "sandbox {}: policy replaced from {} (digest {})",
            self.id,
            p.source.annotation(),
            p.digest_hex()
        );
        *current = Some(p.clone());
        let state = PolicyState {
            snp_launch: self.launch_host_data.is_some() && self.confidential,
            ..p.state(self.launch_host_data)
        };
        record_policy(&self.state_dir, &state)
    }

    pub fn dead(&self) -> watch::Receiver<bool> {
        self.dead.clone()
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Stop QEMU and the vsock backend and remove the state dir. Idempotent.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut vm = self.vm.lock().await;
        if let Some(mut v) = vm.take() {
            log::info!("sandbox {}: stopping VM", self.id);
            if let Err(e) = v.stop().await {
                log::error!("sandbox {}: stopping VM: {e}", self.id);
            }
        }
    }

    /// Guest path of a layer blob.
    pub fn guest_layer_path(digest: &str) -> String {
        format!("{}/{}", contract::GUEST_LAYER_DIR, digest_hex(digest))
    }

    /// Copy a container's layer blobs to the guest, streaming from containerd's content store
    /// in <= 1 MiB CopyFile chunks. Sent for every container: the agent consumes a blob when it
    /// unpacks it (guest memory is the scarce resource), so nothing is cached across containers.
    pub async fn send_layers(
        &self,
        store: &ImageStore,
        layers: &[Layer],
    ) -> Result<(), SandboxError> {
        for layer in layers {
            self.send_layer(store, layer).await?;
        }
        Ok(())
    }

    async fn send_layer(&self, store: &ImageStore, layer: &Layer) -> Result<(), SandboxError> {
        let path = Self::guest_layer_path(&layer.digest);
        let started = std::time::Instant::now();
        let mut reader = store.open(&layer.digest).await?;
        let mut offset: i64 = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(COPY_CHUNK);
        let copy = |offset: i64, data: Vec<u8>| {
            let req = CopyFileRequest {
                path: path.clone(),
                file_size: layer.size,
                file_mode: 0o644,
                dir_mode: 0o755,
                uid: 0,
                gid: 0,
                offset,
                data,
                ..Default::default()
            };
            let agent = self.agent.agent.clone();
            let timeout = self.rpc_timeout;
            let digest = layer.digest.clone();
            async move {
                agent
                    .copy_file(context(timeout), &req)
                    .await
                    .map_err(|source| SandboxError::CopyLayer { digest, source })
            }
        };
        loop {
            let chunk = reader.next_chunk().await?;
            let done = chunk.is_none();
            if let Some(c) = chunk {
                let mut c = &c[..];
                while !c.is_empty() {
                    let take = (COPY_CHUNK - buf.len()).min(c.len());
                    buf.extend_from_slice(&c[..take]);
                    c = &c[take..];
                    if buf.len() == COPY_CHUNK {
                        let data = std::mem::replace(&mut buf, Vec::with_capacity(COPY_CHUNK));
                        let n = data.len() as i64;
                        if offset + n > layer.size {
                            return Err(SandboxError::LayerSize {
                                digest: layer.digest.clone(),
                                got: offset + n,
                                want: layer.size,
                            });
                        }
                        copy(offset, data).await?;
                        offset += n;
                    }
                }
            }
            if done {
                break;
            }
        }
        let n = buf.len() as i64;
        if offset + n != layer.size {
            return Err(SandboxError::LayerSize {
                digest: layer.digest.clone(),
                got: offset + n,
                want: layer.size,
            });
        }
        // The final (possibly empty) chunk completes the file in the guest.
        if n > 0 || offset == 0 {
            copy(offset, buf).await?;
        }
        log::info!(
            "sandbox {}: layer {} ({} bytes) copied to the guest in {:?}",
            self.id,
            layer.digest,
            layer.size,
            started.elapsed()
        );
        Ok(())
    }
}
