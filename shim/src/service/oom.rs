//! OOM kills in the guest as containerd's `/tasks/oom` events (CRI then reports the
//! container's reason as `OOMKilled`): the agent's GetOOMEvent is long-polled, as Kata's shim
//! does, for as long as the sandbox lives.

use std::sync::Arc;
use std::time::Duration;

use agent_proto::agent::GetOOMEventRequest;
use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::Context;

use super::events::{Event, Events};
use super::sandbox::Sandbox;
use crate::agent::status_of;

/// Pause after a failed poll (an agent restarting its OOM source, a transient error).
const RETRY_PAUSE: Duration = Duration::from_secs(1);

pub fn oom_event(container_id: &str) -> Event {
    Event::new(
        "/tasks/oom",
        TaskOOM {
            container_id: container_id.to_string(),
            ..Default::default()
        },
    )
}

/// Whether polling should stop on this error: an agent without GetOOMEvent (older), or a
/// policy that refuses it, will not change its mind.
fn is_final(e: &ttrpc::Error) -> bool {
    matches!(
        status_of(e).0,
        ttrpc::Code::UNIMPLEMENTED | ttrpc::Code::PERMISSION_DENIED
    ) && matches!(e, ttrpc::Error::RpcStatus(_))
}

/// Starts the poll; it ends when the sandbox stops or its VM is gone.
pub fn spawn(events: Arc<Events>, sandbox: &Sandbox) {
    let agent = sandbox.agent.agent.clone();
    let id = sandbox.id.clone();
    let ended = sandbox.until_ended();
    tokio::spawn(async move {
        tokio::pin!(ended);
        let req = GetOOMEventRequest::new();
        loop {
            // No deadline: the call returns when a container is OOM-killed.
            let r = tokio::select! {
                _ = &mut ended => return,
                r = agent.get_oom_event(Context::default(), &req) => r,
            };
            match r {
                Ok(ev) if ev.container_id.is_empty() => {}
                Ok(ev) => {
                    log::warn!("sandbox {id}: container {} was OOM-killed", ev.container_id);
                    events.publish(oom_event(&ev.container_id)).await;
                }
                Err(e) if is_final(&e) => {
                    log::info!(
                        "sandbox {id}: no OOM events from this agent ({}): not watched",
                        status_of(&e).1
                    );
                    return;
                }
                Err(e) => {
                    log::debug!("sandbox {id}: GetOOMEvent: {e}");
                    tokio::select! {
                        _ = &mut ended => return,
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_errors() {
        let st = |c| ttrpc::Error::RpcStatus(ttrpc::get_status(c, "x"));
        assert!(is_final(&st(ttrpc::Code::UNIMPLEMENTED)));
        assert!(is_final(&st(ttrpc::Code::PERMISSION_DENIED)));
        assert!(!is_final(&st(ttrpc::Code::INTERNAL)));
        assert!(!is_final(&ttrpc::Error::RemoteClosed));
        let ev = oom_event("c1");
        assert_eq!(ev.topic(), "/tasks/oom");
    }
}
