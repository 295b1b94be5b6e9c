//! The shim's one pod: the sandbox its first container starts (under CRI the pause, marked
//! `io.kubernetes.cri.container-type=sandbox`, whose id is the sandbox id), which later
//! containers join, and which is stopped when the pod is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::CreateTaskRequest;
use tokio::sync::Mutex;

use super::annotations::{is_pod_sandbox, ANNOTATION_SANDBOX_ID};
use super::error::{Error, Result, WithContext};
use super::events::Events;
use super::oom;
use super::runtime_options::runtime_options_config_path;
use super::sandbox::{Sandbox, SandboxSetup};
use super::spec::BundleSpec;
use crate::config::Config;
use crate::policy_source;
use crate::timeline;

pub struct Pod {
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    rpc_timeout: Duration,
    events: Arc<Events>,
}

impl Pod {
    pub fn new(rpc_timeout: Duration, events: Arc<Events>) -> Self {
        Pod {
            sandbox: Mutex::new(None),
            rpc_timeout,
            events,
        }
    }

    /// The pod's sandbox for a new container, started by the pod's first container (then the
    /// second value is true). A later container's policy replaces the pod's (if it differs).
    pub async fn sandbox_for(
        &self,
        req: &CreateTaskRequest,
        spec: &BundleSpec,
        annotations: &HashMap<String, String>,
    ) -> Result<(Arc<Sandbox>, bool)> {
        let mut slot = self.sandbox.lock().await;
        // A bad policy annotation fails here, before anything is started.
        let policy = policy_source::from_annotations(annotations)
            .with_context(|| format!("container {}", req.id))?;
        if let Some(sb) = slot.as_ref() {
            if sb.is_ending() {
                return Err(Error::PodGone {
                    sandbox: sb.id.clone(),
                });
            }
            if let Some(p) = &policy {
                sb.update_policy(p)
                    .await
                    .with_context(|| format!("container {}: sandbox {}", req.id, sb.id))?;
            }
            return Ok((sb.clone(), false));
        }
        if annotations.contains_key(ANNOTATION_SANDBOX_ID) && !is_pod_sandbox(annotations) {
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
        let cfg = Config::load(&cfg_path)?;
        let resources = spec.linux_resources()?;
        let setup = SandboxSetup::from_spec(&spec.to_agent()?)
            .with_context(|| format!("sandbox {sandbox_id}"))?;
        let sb = Sandbox::start(
            &cfg,
            &sandbox_id,
            &setup,
            annotations,
            resources.as_ref(),
            policy,
            self.rpc_timeout,
        )
        .await
        .with_context(|| format!("sandbox {sandbox_id}"))?;
        oom::spawn(self.events.clone(), &sb);
        *slot = Some(sb.clone());
        Ok((sb, true))
    }

    /// Stops the VM (the pod's last container is gone, or its first failed); the sandbox stays
    /// in place, dead, so later containers of the pod fail clearly.
    pub async fn stop(&self) {
        let sb = self.sandbox.lock().await.clone();
        if let Some(sb) = sb {
            sb.stop().await;
        }
    }

    /// The shim is exiting: stop the VM for good.
    pub async fn shutdown(&self) {
        let sb = self.sandbox.lock().await.take();
        if let Some(sb) = sb {
            sb.stop().await;
            crate::timeline::mark(&sb.id, timeline::VM_STOPPED);
        }
    }
}
