//! One pod's utility VM as the task service sees it: the VM, the agent connection, its size,
//! the pod's emptyDir copies, and flags that flip when the VM is stopping and when QEMU is gone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use agent_proto::agent::{CopyFileRequest, CreateSandboxRequest, SetPolicyRequest, Storage};
use agent_proto::contract::{self, LayerRef};
use tokio::sync::{watch, Mutex};

use super::volumes::AgentSink;
use crate::agent::{context, status_of, AgentClient};
use crate::config::Config;
use crate::image::{ImageStore, Layer};
use crate::network::PodNetwork;
use crate::policy_source::{self, PodPolicy, PolicyState};
use crate::sizing::{size_with, VmSize};
use crate::timeline;
use crate::vm::{Vm, VmSpec};

/// Largest CopyFile payload (the ttrpc default message limit is 4 MiB).
pub const COPY_CHUNK: usize = 1 << 20;
/// Longest hostname the guest gets (Kata's `maxHostnameLen`).
const MAX_HOSTNAME: usize = 64;
/// Guest console lines logged when the VM dies unexpectedly.
const CONSOLE_TAIL: usize = 30;

/// What CreateSandbox tells the guest, taken from the pod's sandbox (pause) container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSetup {
    /// The pause spec's hostname.
    pub hostname: String,
    /// The lines of the file the spec binds at /etc/resolv.conf (Kata's split: a final
    /// newline gives a final empty line).
    pub dns: Vec<String>,
    /// Bytes of the sandbox's shm tmpfs.
    pub shm_size: u64,
    /// The pod's network namespace (the spec's `network` namespace path; CRI's
    /// `.../netns/cni-...`). None: no namespace given by path (ctr's containers get a new,
    /// empty one; host networking has none), so no NIC.
    pub netns: Option<PathBuf>,
}

impl SandboxSetup {
    /// From the spec of the pod's first container (CRI: the pause): its hostname, the file it
    /// binds at /etc/resolv.conf (read on the host, as Kata does), the size of the host
    /// tmpfs CRI binds at /dev/shm (`statfs`; a `/dev/shm` that is no such bind, ctr's tmpfs,
    /// gives the default size), and its network namespace's path. Read before the spec is
    /// shaped for the guest, which drops the network namespace.
    pub fn from_spec(spec: &agent_proto::oci::Spec) -> Result<Self, SandboxError> {
        let mut dns = Vec::new();
        let mut shm_size = contract::DEFAULT_SHM_SIZE;
        for m in &spec.Mounts {
            match m.destination.as_str() {
                "/etc/resolv.conf" => {
                    let text =
                        std::fs::read(&m.source).map_err(|source| SandboxError::HostFile {
                            what: "DNS file (the /etc/resolv.conf mount's source)",
                            path: PathBuf::from(&m.source),
                            source,
                        })?;
                    dns = String::from_utf8_lossy(&text)
                        .split('\n')
                        .map(str::to_string)
                        .collect();
                }
                "/dev/shm" if m.type_ == "bind" && m.source != "/dev/shm" => {
                    let st = nix::sys::statfs::statfs(m.source.as_str()).map_err(|e| {
                        SandboxError::HostFile {
                            what: "statfs of the /dev/shm mount's source",
                            path: PathBuf::from(&m.source),
                            source: e.into(),
                        }
                    })?;
                    shm_size = (st.block_size() as u64).saturating_mul(st.blocks());
                }
                _ => {}
            }
        }
        let netns = spec
            .Linux
            .as_ref()
            .and_then(|l| {
                l.Namespaces
                    .iter()
                    .find(|n| n.Type == "network" && !n.Path.is_empty())
            })
            .map(|n| PathBuf::from(&n.Path));
        Ok(SandboxSetup {
            hostname: spec.Hostname.clone(),
            dns,
            shm_size,
            netns,
        })
    }

    /// The CreateSandbox request (Kata's shape: the shm storage, no shared pid namespace).
    pub fn request(&self, sandbox_id: &str) -> CreateSandboxRequest {
        let hostname: String = self.hostname.chars().take(MAX_HOSTNAME).collect();
        CreateSandboxRequest {
            hostname,
            dns: self.dns.clone(),
            storages: vec![Storage {
                driver: contract::EPHEMERAL_DRIVER.to_string(),
                source: "shm".to_string(),
                fstype: "tmpfs".to_string(),
                options: contract::shm_options(self.shm_size),
                mount_point: contract::SANDBOX_SHM_DIR.to_string(),
                ..Default::default()
            }],
            sandbox_pidns: false,
            sandbox_id: sandbox_id.to_string(),
            ..Default::default()
        }
    }
}

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
    #[error("copy layer {digest} to the guest: {}", status_of(.source).1)]
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
    /// A host file CreateSandbox is made from (resolv.conf, the shm mount).
    #[error("{what} {path}: {source}")]
    HostFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot record the policy in {path}: {source}")]
    PolicyState {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The pod's network namespace could not be connected to the VM.
    #[error("pod network: {0}")]
    NetworkSetup(#[from] crate::network::NetworkError),
    /// The agent refused or failed a network request; a policy refusal keeps the agent's code
    /// (service::error).
    #[error("agent {rpc}, {what}: {}", status_of(.source).1)]
    Network {
        rpc: &'static str,
        what: String,
        source: ttrpc::Error,
    },
}

pub struct Sandbox {
    pub id: String,
    pub agent: AgentClient,
    pub rpc_timeout: Duration,
    /// The VM's size, fixed at creation.
    pub size: VmSize,
    /// `[runtime] disable_guest_seccomp = false`.
    pub pass_seccomp: bool,
    /// The pod's emptyDir copies in the guest (host source -> guest path), shared by its
    /// containers.
    pub empty_dirs: Mutex<HashMap<String, String>>,
    vm: Mutex<Option<Vm>>,
    qemu_pid: u32,
    dead: watch::Receiver<bool>,
    stopping: AtomicBool,
    stop_tx: watch::Sender<bool>,
    state_dir: PathBuf,
    /// SEV-SNP launch: the agent binds policies to HOST_DATA.
    confidential: bool,
    launch_host_data: Option<[u8; 32]>,
    /// The policy the shim last set (None: the agent's baked default).
    policy: Mutex<Option<PodPolicy>>,
    /// The pod's links connected to the VM, removed after the VM stops.
    network: Mutex<Option<PodNetwork>>,
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
            file_mode: libc::S_IFREG | 0o600,
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

/// Removes the pod network's TAPs and redirects (logged: nothing is left to retry with).
async fn remove_network(id: &str, network: Option<PodNetwork>) {
    if let Some(n) = network {
        let netns = n.netns().display().to_string();
        if let Err(e) = n.teardown().await {
            log::error!("sandbox {id}: removing the network in {netns}: {e}");
        }
    }
}

fn record_policy(state_dir: &std::path::Path, state: &PolicyState) -> Result<(), SandboxError> {
    policy_source::write_state(state_dir, state).map_err(|source| SandboxError::PolicyState {
        path: state_dir.join(policy_source::POLICY_STATE_FILE),
        source,
    })
}

/// A layer as the image storage names it.
pub fn layer_ref(l: &Layer) -> LayerRef {
    LayerRef {
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        media_type: l.media_type.clone(),
    }
}

/// A container's image: one storage in the shape of Kata's guest-pull storage, its layers as
/// `driver_options`, lowest first (contract::IMAGE_DRIVER).
pub fn image_storage(container_id: &str, image: &str, layers: &[Layer]) -> Storage {
    Storage {
        driver: contract::IMAGE_DRIVER.to_string(),
        driver_options: layers.iter().map(|l| layer_ref(l).option()).collect(),
        source: image.to_string(),
        fstype: contract::IMAGE_FSTYPE.to_string(),
        options: Vec::new(),
        mount_point: contract::guest_rootfs(container_id),
        shared: false,
        ..Default::default()
    }
}

impl Sandbox {
    /// Size and boot the VM for a pod, send the pod's policy (if it has one: otherwise the
    /// agent keeps its baked default), then announce the sandbox to the agent. Nothing is left
    /// running when this fails.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: &Config,
        id: &str,
        setup: &SandboxSetup,
        annotations: &HashMap<String, String>,
        resources: Option<&oci_spec::runtime::LinuxResources>,
        policy: Option<PodPolicy>,
        rpc_timeout: Duration,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let size = size_with(
            cfg.runtime.sandbox_sizing,
            cfg.hypervisor.qemu.default_memory,
            annotations,
            resources,
        )?;
        log::info!(
            "sandbox {id}: starting VM with {} MiB, {} vCPUs",
            size.memory_mib,
            size.vcpus
        );
        let state_dir = cfg.runtime.state_root.join(id);
        // The TAPs exist before QEMU, which gets them by descriptor.
        let network =
            PodNetwork::setup(cfg.runtime.internetworking_model, setup.netns.as_deref()).await?;
        let nics = network
            .as_ref()
            .map(PodNetwork::qemu_devices)
            .unwrap_or_default();
        let vm = Vm::start_with_nics(
            cfg,
            VmSpec {
                id: id.to_string(),
                size,
                state_dir: state_dir.clone(),
                host_data: policy.as_ref().map(PodPolicy::host_data),
            },
            &nics,
        )
        .await;
        let mut vm = match vm {
            Ok(vm) => vm,
            Err(e) => {
                remove_network(id, network).await;
                return Err(e.into());
            }
        };
        // The one place a failed start stops the VM and removes the network: every step after
        // the boot reports here.
        let agent = match Self::prepare_guest(
            &vm,
            cfg,
            id,
            setup,
            policy.as_ref(),
            network.as_ref(),
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
                remove_network(id, network).await;
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
        let console = vm.console_log();
        let sandbox = Arc::new(Sandbox {
            id: id.to_string(),
            agent,
            rpc_timeout,
            size,
            pass_seccomp: !cfg.runtime.disable_guest_seccomp,
            empty_dirs: Mutex::new(HashMap::new()),
            qemu_pid: vm.qemu_pid().map_or(0, |p| p as u32),
            vm: Mutex::new(Some(vm)),
            dead: dead_rx,
            stopping: AtomicBool::new(false),
            stop_tx: watch::channel(false).0,
            state_dir,
            confidential: cfg.hypervisor.qemu.confidential_guest,
            launch_host_data: policy.as_ref().map(PodPolicy::host_data),
            policy: Mutex::new(policy),
            network: Mutex::new(network),
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
                    // The console log goes with the state dir: its tail is the only account
                    // of what the guest saw.
                    for line in crate::vm::console::tail_of(&console, CONSOLE_TAIL) {
                        log::error!("sandbox {}: guest console: {line}", sb.id);
                    }
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
    /// pod's policy, record it, configure the guest's network, announce the sandbox. The
    /// caller stops the VM on failure.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_guest(
        vm: &Vm,
        cfg: &Config,
        id: &str,
        setup: &SandboxSetup,
        policy: Option<&PodPolicy>,
        network: Option<&PodNetwork>,
        state_dir: &Path,
        rpc_timeout: Duration,
    ) -> Result<AgentClient, SandboxError> {
        let agent = vm.agent().await?;
        // The policy goes first: the network requests, CreateSandbox and everything after
        // are checked against it.
        let state = Self::apply_policy(&agent, cfg, id, policy, rpc_timeout).await?;
        record_policy(state_dir, &state)?;
        if let Some(net) = network {
            super::guest_network::configure(
                &agent,
                &net.requests(),
                rpc_timeout,
                cfg.agent.kata.link_timeout(),
            )
            .await?;
            crate::timeline::mark(id, timeline::NETWORK_CONFIGURED);
        }
        let req = setup.request(id);
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

    /// The VM is being (or has been) stopped, or is gone: no request should wait for it.
    pub fn is_ending(&self) -> bool {
        self.stopping.load(Ordering::SeqCst) || self.is_dead()
    }

    /// Resolves once the VM is stopping or gone: what background work for the pod (update
    /// watches, the OOM poll) ends with.
    pub fn until_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut dead = self.dead.clone();
        let mut stop = self.stop_tx.subscribe();
        async move {
            tokio::select! {
                _ = dead.wait_for(|d| *d) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// The agent as a CopyFile target for work that outlives one request.
    pub fn file_sink(&self) -> AgentSink {
        AgentSink {
            agent: self.agent.agent.clone(),
            timeout: self.rpc_timeout,
        }
    }

    /// Stop QEMU and the vsock backend, remove the state dir, then the pod network's TAPs and
    /// redirects. Idempotent.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_tx.send_replace(true);
        let mut vm = self.vm.lock().await;
        if let Some(mut v) = vm.take() {
            log::info!("sandbox {}: stopping VM", self.id);
            if let Err(e) = v.stop().await {
                log::error!("sandbox {}: stopping VM: {e}", self.id);
            }
        }
        let network = self.network.lock().await.take();
        remove_network(&self.id, network).await;
    }

    /// Copies a container's layer blobs to the guest, each to its per-container path
    /// ([`LayerRef::blob_path`]), streaming from containerd's content store in <= 1 MiB
    /// CopyFile chunks (the agent consumes a blob when it unpacks it: nothing is shared).
    pub async fn send_layers(
        &self,
        container_id: &str,
        store: &ImageStore,
        layers: &[Layer],
    ) -> Result<(), SandboxError> {
        for layer in layers {
            self.send_layer(container_id, store, layer).await?;
        }
        Ok(())
    }

    async fn send_layer(
        &self,
        container_id: &str,
        store: &ImageStore,
        layer: &Layer,
    ) -> Result<(), SandboxError> {
        let path = layer_ref(layer).blob_path(container_id);
        let started = std::time::Instant::now();
        let mut reader = store.open(&layer.digest).await?;
        let mut offset: i64 = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(COPY_CHUNK);
        let copy = |offset: i64, data: Vec<u8>| {
            let req = CopyFileRequest {
                path: path.clone(),
                file_size: layer.size,
                file_mode: libc::S_IFREG | 0o644,
                dir_mode: super::volumes::DIR_MODE,
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

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::oci;

    fn mount(dest: &str, source: &str, kind: &str) -> oci::Mount {
        oci::Mount {
            destination: dest.into(),
            source: source.into(),
            type_: kind.into(),
            ..Default::default()
        }
    }

    /// A ctr container: no resolv.conf mount, a tmpfs /dev/shm: no DNS, the default shm size.
    #[test]
    fn setup_of_a_ctr_container() {
        let spec = oci::Spec {
            Hostname: "h".repeat(70),
            Mounts: vec![mount("/dev/shm", "shm", "tmpfs")],
            // ctr: a new network namespace, no path.
            Linux: protobuf::MessageField::some(oci::Linux {
                Namespaces: vec![oci::LinuxNamespace {
                    Type: "network".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let setup = SandboxSetup::from_spec(&spec).unwrap();
        assert_eq!(setup.dns, Vec::<String>::new());
        // No network namespace by path: no NIC.
        assert_eq!(setup.netns, None);
        assert_eq!(setup.shm_size, contract::DEFAULT_SHM_SIZE);
        let req = setup.request("s1");
        // Kata's hostname limit.
        assert_eq!(req.hostname, "h".repeat(64));
        assert_eq!(req.sandbox_id, "s1");
        assert!(!req.sandbox_pidns);
        let st = &req.storages[0];
        assert_eq!(
            (
                st.driver.as_str(),
                st.source.as_str(),
                st.fstype.as_str(),
                st.mount_point.as_str()
            ),
            ("ephemeral", "shm", "tmpfs", contract::SANDBOX_SHM_DIR)
        );
        assert_eq!(st.options, contract::shm_options(64 << 20));
    }

    #[test]
    fn setup_reads_the_host_files_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.0.0.10\n").unwrap();
        let spec = oci::Spec {
            Mounts: vec![
                mount("/dev/shm", dir.path().to_str().unwrap(), "bind"),
                mount("/etc/resolv.conf", resolv.to_str().unwrap(), "bind"),
            ],
            ..Default::default()
        };
        let setup = SandboxSetup::from_spec(&spec).unwrap();
        assert_eq!(setup.dns, vec!["nameserver 10.0.0.10", ""]);
        let st = nix::sys::statfs::statfs(dir.path()).unwrap();
        assert_eq!(setup.shm_size, st.block_size() as u64 * st.blocks());
        let spec = oci::Spec {
            Mounts: vec![mount(
                "/etc/resolv.conf",
                "/nonexistent/resolv.conf",
                "bind",
            )],
            ..Default::default()
        };
        let e = SandboxSetup::from_spec(&spec).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/resolv.conf"), "{e}");
    }

    #[test]
    fn one_image_storage_per_container() {
        let layers = vec![
            Layer {
                digest: "sha256:1111222233334444aaaa".into(),
                diff_id: "sha256:d1".into(),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: 10,
            },
            Layer {
                digest: "sha256:5555666677778888bbbb".into(),
                diff_id: "sha256:d2".into(),
                media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
                size: 20,
            },
        ];
        let s = image_storage("c1", "docker.io/library/busybox:latest", &layers);
        assert_eq!(s.driver, "image_guest_pull");
        assert_eq!(s.source, "docker.io/library/busybox:latest");
        assert_eq!(s.fstype, "overlay");
        assert!(s.options.is_empty() && !s.shared && s.fs_group.is_none());
        assert_eq!(s.mount_point, "/run/kata-containers/c1/rootfs");
        assert_eq!(
            s.driver_options,
            vec![
                "kata-cc.layer=sha256:1111222233334444aaaa,sha256:d1,application/vnd.oci.image.layer.v1.tar+gzip",
                "kata-cc.layer=sha256:5555666677778888bbbb,sha256:d2,application/vnd.docker.image.rootfs.diff.tar.gzip",
            ]
        );
        assert_eq!(
            layer_ref(&layers[0]).blob_path("c1"),
            "/run/kata-containers/shared/containers/c1-1111222233334444-layer"
        );
    }
}
