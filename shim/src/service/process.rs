//! One process of a container (its init or an exec) as the shim tracks it.

use std::sync::Mutex;

use agent_proto::oci;
use containerd_shim::protos::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{oneshot, watch};

use super::stdio::{OpenedStdio, StdioPaths};

#[derive(Debug, Clone, PartialEq)]
pub struct ExitInfo {
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

pub struct Process {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub pid: u32,
    pub stdio: StdioPaths,
    /// The exec's process spec (None for init).
    pub spec: Option<oci::Process>,
    phase: Mutex<Phase>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    /// Host ends of stdio, opened at create, handed to the copy tasks at start.
    io: Mutex<Option<OpenedStdio>>,
    /// Fires the stdin copier's close (CloseIO).
    stdin_close: Mutex<(bool, Option<oneshot::Sender<()>>)>,
}

pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        pid: u32,
        stdio: StdioPaths,
        spec: Option<oci::Process>,
        io: OpenedStdio,
    ) -> Self {
        let (exit_tx, _) = watch::channel(None);
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            stdio,
            spec,
            phase: Mutex::new(Phase::Created),
            exit_tx,
            io: Mutex::new(Some(io)),
            stdin_close: Mutex::new((false, None)),
        }
    }

    /// The id containerd uses for this process in events (`id` of TaskExit).
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| *p).unwrap_or(Phase::Stopped)
    }

    pub fn set_running(&self) {
        if let Ok(mut p) = self.phase.lock() {
            if *p == Phase::Created {
                *p = Phase::Running;
            }
        }
    }

    /// Record the exit (first one wins) and wake every waiter.
    pub fn set_exited(&self, code: u32) -> ExitInfo {
        if let Some(e) = self.exit() {
            return e;
        }
        if let Ok(mut p) = self.phase.lock() {
            *p = Phase::Stopped;
        }
        let info = ExitInfo { code, at: now() };
        self.exit_tx.send_replace(Some(info.clone()));
        info
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        self.exit_tx.borrow().clone()
    }

    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            // The sender lives as long as `self`, so this cannot fail while we borrow it.
            if rx.changed().await.is_err() {
                return ExitInfo {
                    code: 255,
                    at: now(),
                };
            }
        }
    }

    pub fn take_io(&self) -> Option<OpenedStdio> {
        self.io.lock().ok().and_then(|mut g| g.take())
    }

    /// Closes the stdio no copier took over (the process never started); a no-op once the
    /// copiers have it.
    pub async fn close_unstarted_io(&self) {
        if let Some(io) = self.take_io() {
            io.close().await;
        }
    }

    /// Hand over the stdin copier's close trigger; a CloseIO that came first fires it at once.
    pub fn set_stdin_closer(&self, tx: oneshot::Sender<()>) {
        if let Ok(mut g) = self.stdin_close.lock() {
            if g.0 {
                let _ = tx.send(());
            } else {
                g.1 = Some(tx);
            }
        }
    }

    pub fn close_stdin(&self) {
        if let Ok(mut g) = self.stdin_close.lock() {
            g.0 = true;
            if let Some(tx) = g.1.take() {
                let _ = tx.send(());
            }
        }
    }

    pub fn status(&self) -> Status {
        match self.phase() {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped => Status::STOPPED,
        }
    }
}
