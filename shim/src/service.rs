//! The containerd shim (`containerd-shim-kata-cc-v2`, runtime `io.containerd.kata-cc.v2`):
//! shim lifecycle (start/delete/serve) here, the Task API in `task`.

mod container;
mod error;
mod events;
mod pod;
mod process;
mod sandbox;
mod spec;
mod stats;
mod stdio;
mod task;
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

use crate::config::{Config, CONFIG_PATH_ENV};

pub const RUNTIME_ID: &str = "io.containerd.kata-cc.v2";
/// CRI's pod id on every container of a pod: one shim (and one VM) per value.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's `sandbox` / `container` marker.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
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

/// Reads a protobuf varint.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `config_path` (field 2) of containerd's `runtimeoptions.v1.Options`, which `ctr run
/// --runtime-config-path` and CRI's runtime `ConfigPath` produce. Other option types are not
/// ours and are ignored.
pub fn runtime_options_config_path(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.contains("runtimeoptions") {
        return None;
    }
    let mut pos = 0;
    let mut found = None;
    while pos < value.len() {
        let key = varint(value, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(value, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(value, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= value.len())?;
                if field == 2 {
                    found = Some(String::from_utf8_lossy(&value[pos..end]).into_owned());
                }
                pos = end;
            }
            _ => return None,
        }
    }
    found.filter(|p| !p.is_empty())
}

/// The runtime options containerd writes to `start`'s stdin (a serialized `Any`).
fn config_path_from_any_bytes(data: &[u8]) -> Option<String> {
    use containerd_shim::protos::protobuf::Message;
    let any = containerd_shim::protos::protobuf::well_known_types::any::Any::parse_from_bytes(data)
        .ok()?;
    runtime_options_config_path(&any.type_url, &any.value)
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

    fn encode_options(path: &str) -> Vec<u8> {
        // runtimeoptions.v1.Options { type_url = 1 ("x"), config_path = 2 }
        let mut v = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        v.extend_from_slice(path.as_bytes());
        v
    }

    #[test]
    fn config_path_from_runtime_options() {
        let v = encode_options("/etc/kata-cc/other.toml");
        assert_eq!(
            runtime_options_config_path("runtimeoptions.v1.Options", &v).as_deref(),
            Some("/etc/kata-cc/other.toml")
        );
        // runc's options are not ours.
        assert_eq!(
            runtime_options_config_path("containerd.runc.v1.Options", &v),
            None
        );
        // Truncated input does not panic.
        assert_eq!(
            runtime_options_config_path("runtimeoptions.v1.Options", &v[..6]),
            None
        );
        use containerd_shim::protos::protobuf::Message;
        let any = containerd_shim::protos::protobuf::well_known_types::any::Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: v,
            ..Default::default()
        };
        assert_eq!(
            config_path_from_any_bytes(&any.write_to_bytes().unwrap()).as_deref(),
            Some("/etc/kata-cc/other.toml")
        );
        assert_eq!(config_path_from_any_bytes(b""), None);
    }

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
