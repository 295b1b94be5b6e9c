//! The pod's network namespace, held open by file descriptor, and work done inside it.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so each piece of work runs on a new
//! thread that enters the namespace first and ends with the work: no thread of the shim's
//! runtime ever changes namespace. Sockets (netlink) and TUN devices opened on that thread
//! belong to the pod's namespace for good.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::NetworkError;

/// An open network namespace. Holding the descriptor keeps the namespace alive even if its
/// path is unmounted before the pod's network is torn down.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens the namespace at `path` (CRI: `<state>/io.containerd.grpc.v1.cri/netns/cni-...`).
    pub fn open(path: &Path) -> Result<NetNs, NetworkError> {
        let file = File::open(path).map_err(|source| NetworkError::Netns {
            path: path.to_path_buf(),
            step: "open",
            source,
        })?;
        Ok(NetNs {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside the namespace and waits for it without blocking the
    /// async runtime.
    pub async fn run<T, F>(&self, f: F) -> Result<T, NetworkError>
    where
        F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(
            move |r| {
                let _ = tx.send(r);
            },
            f,
        )?;
        rx.await.map_err(|_| NetworkError::Thread {
            path: self.path.clone(),
        })?
    }

    /// Runs `f` on a new thread inside the namespace and blocks until it is done (for Drop).
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T, NetworkError>
    where
        F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn(
            move |r| {
                let _ = tx.send(r);
            },
            f,
        )?;
        rx.recv().map_err(|_| NetworkError::Thread {
            path: self.path.clone(),
        })?
    }

    fn spawn<T, F, D>(&self, done: D, f: F) -> Result<(), NetworkError>
    where
        F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
        D: FnOnce(Result<T, NetworkError>) + Send + 'static,
        T: Send + 'static,
    {
        let spawn_err = |source| NetworkError::Netns {
            path: self.path.clone(),
            step: "start a thread for",
            source,
        };
        let file = self.file.try_clone().map_err(spawn_err)?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let r = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::Netns {
                        path,
                        step: "enter",
                        source: e.into(),
                    })
                    .and_then(|()| f());
                done(r);
            })
            .map_err(spawn_err)?;
        Ok(())
    }
}
