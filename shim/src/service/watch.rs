//! A started process's life on the host: its stdio copiers and the wait for its exit, which is
//! recorded and published only after its output has been copied out.

use std::sync::Arc;
use std::time::Duration;

use agent_proto::agent::WaitProcessRequest;
use containerd_shim::Context;
use tokio::sync::oneshot;

use super::events::{self, Events};
use super::process::Process;
use super::sandbox::Sandbox;
use super::stdio::{copy_in, copy_out, Stream};
use crate::timeline;

/// Exit status recorded for processes whose VM died under them.
pub const VM_GONE_STATUS: u32 = 255;
/// Bound on copying a process's remaining output after it exited (the process cannot produce
/// more, so this only trips when something holds its pipes open, e.g. a daemonized child).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Start copying the process's stdio and wait for its exit in the background. `ends_pod`:
/// the process is the pod's sandbox (pause): once its exit is published the VM is stopped,
/// and every other process of the pod exits with it.
pub fn spawn(events: Arc<Events>, sandbox: &Arc<Sandbox>, proc: Arc<Process>, ends_pod: bool) {
    let pod = ends_pod.then(|| sandbox.clone());
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
            sandbox.rpc_timeout,
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
            log::warn!("{cid}/{eid}: output still open {DRAIN_TIMEOUT:?} after exit; closing it");
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
            crate::timeline::mark(&cid, timeline::EXIT);
        }
        events.publish(events::exited(&proc, &exit)).await;
        if let Some(sb) = pod {
            log::info!(
                "sandbox {}: its sandbox container exited: stopping the VM",
                sb.id
            );
            sb.stop().await;
        }
    });
}
