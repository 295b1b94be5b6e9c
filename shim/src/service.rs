//! The containerd shim (`containerd-shim-kata-cc-v2`, runtime `io.containerd.kata-cc.v2`):
//! shim lifecycle (start/delete/serve) here, the Task API in `task`.

pub mod annotations;
#[cfg(test)]
mod conformance_tests;
mod container;
mod error;
mod events;
mod guest_network;
mod oom;
mod pod;
#[cfg(test)]
mod policy_gen_tests;
mod process;
mod runtime_options;
mod sandbox;
mod shape;
mod spec;
mod stats;
mod stdio;
mod task;
mod volume_watch;
mod volumes;
mod watch;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::DeleteResponse, spawn, ExitSignal, Flags, Shim, StartOpts};

pub use sandbox::COPY_CHUNK;
pub use task::TaskService;
pub use watch::VM_GONE_STATUS;

use annotations::ANNOTATION_SANDBOX_ID;
use runtime_options::config_path_from_any_bytes;

use crate::config::{Config, CONFIG_PATH_ENV};

pub const RUNTIME_ID: &str = "io.containerd.kata-cc.v2";
/// Seconds allowed for one agent request (streams and WaitProcess have none).
pub const RPC_TIMEOUT_ENV: &str = "KATA_CC_AGENT_REQUEST_TIMEOUT";
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The shim options a kata-cc shim needs from containerd-shim: it reaps nothing itself (its
/// children are owned and waited for by the structs that started them).
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

fn rpc_timeout() -> Duration {
    match std::env::var(RPC_TIMEOUT_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => {
                log::warn!("{RPC_TIMEOUT_ENV}={v:?} is not a positive number of seconds; using the default");
                DEFAULT_RPC_TIMEOUT
            }
        },
        Err(_) => DEFAULT_RPC_TIMEOUT,
    }
}

/// Pod grouping key from a bundle's config.json (`io.kubernetes.cri.sandbox-id`, else the id).
fn grouping(bundle: &Path, id: &str) -> String {
    let Ok(spec) = spec::BundleSpec::read(bundle) else {
        return id.to_string();
    };
    spec.annotations()
        .get(ANNOTATION_SANDBOX_ID)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

pub struct KataShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    address: String,
}

#[async_trait]
impl Shim for KataShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        KataShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle directory.
        let group = grouping(Path::new("."), &opts.id);
        // The runtime options arrive on stdin; a ConfigPath in them is passed on to the
        // serving shim (it takes precedence over the inherited environment).
        let mut data = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut data);
        let cfg_path = config_path_from_any_bytes(&data);
        let mut vars: Vec<(&str, &str)> = Vec::new();
        if let Some(p) = cfg_path.as_deref() {
            vars.push((CONFIG_PATH_ENV, p));
        }
        let address = spawn(opts, &group, vars).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd calls this (in the bundle directory) when the serving shim is gone. Its VM
        // died with it (the VM's processes have PDEATHSIG); remove the state dir it left, unless
        // another container's shim still serves the pod.
        let group = grouping(Path::new("."), &self.id);
        let socket = containerd_shim::socket_address(&self.address, &self.namespace, &group);
        let sock_path = socket
            .strip_prefix("unix://")
            .unwrap_or(&socket)
            .to_string();
        let alive = std::os::unix::net::UnixStream::connect(&sock_path).is_ok();
        if !alive {
            let state_root = Config::load(&Config::locate(None))
                .map(|c| c.runtime.state_root)
                .unwrap_or_else(|_| crate::config::DEFAULT_STATE_ROOT.into());
            let dir = state_root.join(&group);
            if dir.exists() {
                log::warn!("removing state dir {} left by a dead shim", dir.display());
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    log::error!("removing {}: {e}", dir.display());
                }
            }
            let _ = std::fs::remove_file(&sock_path);
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(process::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(
            &self.namespace,
            &self.address,
            publisher,
            self.exit.clone(),
            rpc_timeout(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_by_sandbox_annotation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod1");
    }
}
