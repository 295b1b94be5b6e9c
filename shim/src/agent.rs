//! Host side of the agent channel: a ttrpc client over hybrid vsock (vhost-user backend's unix
//! socket + `CONNECT <port>\n` / `OK <n>\n`) or over AF_VSOCK (kernel vhost-vsock).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_proto::{agent_ttrpc, health_ttrpc};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// The agent's vsock port in the guest.
pub use agent_proto::contract::AGENT_VSOCK_PORT;

/// Longest accepted handshake reply line (`OK <u32>\n`).
const MAX_REPLY: usize = 64;
/// Pause between attempts while the guest is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest one handshake attempt may take. A CONNECT sent before the guest listens can go
/// unanswered (seen with 8 TCG guests booting at once: the guest listened at 42 s, the one
/// attempt begun earlier never got a reply and used up the whole dial timeout); a new attempt
/// then gets through.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients of both agent services sharing one ttrpc connection.
#[derive(Clone)]
pub struct AgentClient {
    pub agent: agent_ttrpc::AgentServiceClient,
    pub health: health_ttrpc::HealthClient,
}

impl AgentClient {
    pub fn new(client: Client) -> Self {
        AgentClient {
            agent: agent_ttrpc::AgentServiceClient::new(client.clone()),
            health: health_ttrpc::HealthClient::new(client),
        }
    }
}

/// A ttrpc context whose deadline travels to the agent.
pub fn context(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

/// The status code and text containerd should see for a failed agent call: the agent's own
/// for a status it returned (its message, not ttrpc's `Debug` of the status), else INTERNAL
/// with the transport error.
pub fn status_of(e: &ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => (ttrpc::Code::INTERNAL, other.to_string()),
    }
}

#[derive(Debug, Error)]
pub enum AgentConnectError {
    #[error("agent at {uds} port {port}: no connection within {timeout:?} (last error: {last})")]
    HybridTimeout {
        uds: PathBuf,
        port: u32,
        timeout: Duration,
        last: String,
    },
    #[error("agent at vsock cid {cid} port {port}: no connection within {timeout:?} (last error: {last})")]
    VsockTimeout {
        cid: u32,
        port: u32,
        timeout: Duration,
        last: String,
    },
}

/// One handshake attempt on the backend's unix socket.
async fn hybrid_attempt(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Byte by byte: whatever follows the reply line belongs to ttrpc.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "backend closed the connection after CONNECT {port} (guest not listening yet?)"
                ),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_REPLY {
            return Err(io::Error::other("handshake reply line too long"));
        }
    }
    let reply = String::from_utf8_lossy(&line);
    if reply.starts_with("OK ") {
        Ok(s)
    } else {
        Err(io::Error::other(format!(
            "unexpected handshake reply {reply:?}"
        )))
    }
}

/// Connects to `port` in the guest through the hybrid-vsock unix socket `uds`, retrying until
/// `timeout` while the socket is absent or the guest does not listen, and returns a ttrpc client.
pub async fn connect_hybrid_vsock(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<Client, AgentConnectError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("none");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentConnectError::HybridTimeout {
                uds: uds.to_path_buf(),
                port,
                timeout,
                last,
            });
        }
        match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), hybrid_attempt(uds, port)).await {
            Ok(Ok(stream)) => return Ok(Client::new(Socket::from(stream))),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "handshake timed out".into(),
        }
        tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// Connects over AF_VSOCK (kernel vhost-vsock), retrying until `timeout`.
pub async fn connect_vsock(
    cid: u32,
    port: u32,
    timeout: Duration,
) -> Result<Client, AgentConnectError> {
    let deadline = Instant::now() + timeout;
    let addr = format!("vsock://{cid}:{port}");
    let mut last = String::from("none");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentConnectError::VsockTimeout {
                cid,
                port,
                timeout,
                last,
            });
        }
        match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), Socket::connect(&addr)).await {
            Ok(Ok(sock)) => return Ok(Client::new(sock)),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "connect timed out".into(),
        }
        tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn handshake_retries_until_ok() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let uds2 = uds.clone();
        // A fake backend: refuses the first attempt (closes), accepts the second.
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await; // socket absent at first
            let l = UnixListener::bind(&uds2).unwrap();
            for attempt in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                let mut r = tokio::io::BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                if attempt == 1 {
                    let mut s = r.into_inner();
                    s.write_all(b"OK 1073741824\n").await.unwrap();
                    return s;
                }
            }
            unreachable!()
        });
        let client = connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT, Duration::from_secs(5)).await;
        assert!(client.is_ok());
        server.await.unwrap();
    }

    /// A backend that takes the CONNECT and never answers it: the next attempt gets through.
    #[tokio::test]
    async fn an_unanswered_attempt_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let l = UnixListener::bind(&uds).unwrap();
        let server = tokio::spawn(async move {
            let (silent, _) = l.accept().await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let mut s = r.into_inner();
            s.write_all(b"OK 1073741825\n").await.unwrap();
            (silent, s)
        });
        let t = Instant::now();
        let client = connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT, Duration::from_secs(30)).await;
        assert!(client.is_ok());
        assert!(
            t.elapsed() >= ATTEMPT_TIMEOUT,
            "the first attempt was not waited for"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn handshake_times_out_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("absent.sock");
        let err = connect_hybrid_vsock(&uds, 1024, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("absent.sock port 1024"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }
}
