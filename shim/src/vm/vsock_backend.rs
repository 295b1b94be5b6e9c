//! The vhost-user vsock backend (`vhost-device-vsock`), used when `/dev/vhost-vsock` is absent.
//! QEMU connects to its vhost-user socket; the shim reaches the guest through its hybrid-vsock
//! unix socket (`CONNECT <port>\n`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::OwnedProcess;

/// The guest CID inside the backend: private to this VM, so always the first free one.
pub const GUEST_CID: u32 = 3;

pub struct VsockBackend {
    pub process: OwnedProcess,
    pub vhost_socket: PathBuf,
    pub uds_path: PathBuf,
}

/// The backend's per-connection buffer, which is also the credit it gives the guest, so no
/// guest->host packet is larger. Linux >= 6.12.69 splits a vsock packet of more than ~32 KB into
/// several descriptors, and vhost-device-vsock 0.3 reads one descriptor per packet: it drops
/// such a packet without returning the descriptor or its credit, and the connection stalls for
/// good (its default is 64 KiB). 16 KiB packets are never split. A power of two: the backend's
/// ring arithmetic wraps at 2^32.
pub const TX_BUFFER_SIZE: u32 = 16 << 10;

/// Arguments of `vhost-device-vsock` (pure, for tests).
pub fn backend_args(vhost_socket: &Path, uds_path: &Path) -> Vec<String> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={GUEST_CID},socket={},uds-path={},tx-buffer-size={TX_BUFFER_SIZE}",
            vhost_socket.display(),
            uds_path.display()
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot start vsock backend {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock backend {path} exited ({exit}) before creating {socket}: {log}")]
    Exited {
        path: PathBuf,
        exit: String,
        socket: PathBuf,
        log: String,
    },
    #[error("vsock backend {path} did not create {socket} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        socket: PathBuf,
        timeout: Duration,
    },
}

impl VsockBackend {
    /// Starts the backend and waits until its vhost-user socket exists (QEMU needs it at start).
    pub async fn start(
        binary: &Path,
        vhost_socket: &Path,
        uds_path: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<VsockBackend, BackendError> {
        let mut cmd = Command::new(binary);
        cmd.args(backend_args(vhost_socket, uds_path));
        let process = OwnedProcess::spawn("vhost-device-vsock", cmd, log).map_err(|source| {
            BackendError::Spawn {
                path: binary.to_path_buf(),
                source,
            }
        })?;
        let deadline = Instant::now() + timeout;
        loop {
            if vhost_socket.exists() {
                return Ok(VsockBackend {
                    process,
                    vhost_socket: vhost_socket.to_path_buf(),
                    uds_path: uds_path.to_path_buf(),
                });
            }
            if let Some(exit) = process.exit() {
                return Err(BackendError::Exited {
                    path: binary.to_path_buf(),
                    exit: exit.to_string(),
                    socket: vhost_socket.to_path_buf(),
                    log: super::console::relevant_lines_of(log, 10).join(" | "),
                });
            }
            if Instant::now() >= deadline {
                // `process` is dropped here: killed by PID.
                return Err(BackendError::Timeout {
                    path: binary.to_path_buf(),
                    socket: vhost_socket.to_path_buf(),
                    timeout,
                });
            }
            // The socket appears a few milliseconds after the spawn, and QEMU waits for it.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(
            backend_args(Path::new("/s/vhost.sock"), Path::new("/s/vsock.sock")),
            vec![
                "--vm".to_string(),
                "guest-cid=3,socket=/s/vhost.sock,uds-path=/s/vsock.sock,tx-buffer-size=16384"
                    .to_string()
            ]
        );
    }

    #[tokio::test]
    async fn backend_that_exits_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = VsockBackend::start(
            Path::new("/bin/false"),
            &dir.path().join("vhost.sock"),
            &dir.path().join("vsock.sock"),
            &dir.path().join("log"),
            Duration::from_secs(5),
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("exited (exit status 1)"), "{err}");
    }
}
