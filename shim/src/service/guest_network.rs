//! Sends the pod's network to the agent (after SetPolicy, before CreateSandbox, as Kata's
//! `setupNetworks`): UpdateInterface per link, retried while the guest has no link with that
//! MAC yet (its NIC driver is still loading), then UpdateRoutes and AddARPNeighbors.

use std::future::Future;
use std::time::{Duration, Instant};

use super::sandbox::SandboxError;
use crate::agent::{context, AgentClient};
use crate::network::requests::NetworkRequests;

/// What the agent answers while it finds no link with the requested MAC (Kata's agent:
/// "Link not found (...)"; Kata's runtime retries on exactly this text).
const LINK_NOT_FOUND: &str = "Link not found";
/// First and longest pause between UpdateInterface attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

fn link_not_found(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::RpcStatus(s) if s.message().contains(LINK_NOT_FOUND))
}

/// Calls `attempt` until it succeeds, fails otherwise than "Link not found", or `limit` has
/// passed (then the last answer is returned).
async fn retry_while_no_link<T, F, Fut>(limit: Duration, mut attempt: F) -> Result<T, ttrpc::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ttrpc::Error>>,
{
    let deadline = Instant::now() + limit;
    let mut pause = FIRST_PAUSE;
    loop {
        match attempt().await {
            Err(e) if link_not_found(&e) && Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            r => return r,
        }
    }
}

/// Sends the requests in Kata's order. An agent refusal (a policy denying one of them) keeps
/// the agent's status and message.
pub async fn configure(
    agent: &AgentClient,
    reqs: &NetworkRequests,
    rpc_timeout: Duration,
    link_timeout: Duration,
) -> Result<(), SandboxError> {
    for req in &reqs.interfaces {
        let interface = req.interface.name.clone();
        let started = Instant::now();
        retry_while_no_link(link_timeout, || {
            agent.agent.update_interface(context(rpc_timeout), req)
        })
        .await
        .map_err(|source| SandboxError::Network {
            rpc: "UpdateInterface",
            what: format!("interface {interface} ({})", req.interface.hwAddr),
            source,
        })?;
        log::info!(
            "guest interface {interface} configured ({} ms)",
            started.elapsed().as_millis()
        );
    }
    if let Some(r) = &reqs.routes {
        agent
            .agent
            .update_routes(context(rpc_timeout), r)
            .await
            .map_err(|source| SandboxError::Network {
                rpc: "UpdateRoutes",
                what: format!("{} routes", r.routes.Routes.len()),
                source,
            })?;
    }
    if let Some(n) = &reqs.neighbours {
        agent
            .agent
            .add_arp_neighbors(context(rpc_timeout), n)
            .await
            .map_err(|source| SandboxError::Network {
                rpc: "AddARPNeighbors",
                what: format!("{} neighbours", n.neighbors.ARPNeighbors.len()),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: ttrpc::Code, msg: &str) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
    }

    #[tokio::test]
    async fn retries_only_while_the_link_is_missing() {
        let calls = AtomicU32::new(0);
        let r = retry_while_no_link(Duration::from_secs(5), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(status(
                        ttrpc::Code::INTERNAL,
                        "Link not found (hwaddr 46:7c:91:8d:d4:20)",
                    ))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);

        // A policy refusal is final, its code and message kept.
        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = retry_while_no_link(Duration::from_secs(5), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(status(
                    ttrpc::Code::PERMISSION_DENIED,
                    "UpdateInterfaceRequest is blocked by policy",
                ))
            }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let e = SandboxError::Network {
            rpc: "UpdateInterface",
            what: "interface eth0 (46:7c:91:8d:d4:20)".into(),
            source: r.unwrap_err(),
        };
        assert_eq!(
            e.to_string(),
            "agent UpdateInterface, interface eth0 (46:7c:91:8d:d4:20): UpdateInterfaceRequest is blocked by policy"
        );
        let e = super::super::error::Error::from(e);
        assert_eq!(e.code(), ttrpc::Code::PERMISSION_DENIED);
    }

    #[tokio::test]
    async fn gives_up_after_the_limit() {
        let started = Instant::now();
        let r: Result<(), _> = retry_while_no_link(Duration::from_millis(300), || async {
            Err(status(ttrpc::Code::INTERNAL, "Link not found (x)"))
        })
        .await;
        assert!(link_not_found(&r.unwrap_err()));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
