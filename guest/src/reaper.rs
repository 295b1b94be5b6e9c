//! Child reaping for the agent, which runs as PID 1 (or as a child subreaper when tested on a host).
//!
//! Every child of the agent (launcher helpers, container init and exec'd processes re-parented to
//! us) is reaped here with `waitpid(-1)`. Nothing else in the agent may wait on a child (no
//! `tokio::process`, no `std::process::Child::wait`), or statuses would be stolen from this loop.
//! Statuses nobody asked for yet are kept (stamped with a sequence number), so a child that exits
//! before its waiter registers is not lost.

use std::collections::HashMap;
#[cfg(test)]
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Unclaimed statuses kept at most (orphans re-parented to PID 1 that nobody waits for).
const MAX_UNCLAIMED: usize = 4096;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Shell convention used by containerd: the exit code, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

#[derive(Default)]
struct State {
    seq: u64,
    /// pid -> (sequence number when reaped, status)
    unclaimed: HashMap<i32, (u64, ExitStatus)>,
    /// pid -> (only statuses reaped at or after this sequence count, waiter)
    waiters: HashMap<i32, (u64, oneshot::Sender<ExitStatus>)>,
}

/// Process-wide reaper (there can be only one `waitpid(-1)` loop per process).
pub struct Reaper {
    state: Mutex<State>,
}

static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

impl Reaper {
    /// The process-wide reaper; the first call starts its SIGCHLD loop on a thread of its own.
    pub fn global() -> Arc<Reaper> {
        REAPER
            .get_or_init(|| {
                let r = Arc::new(Reaper {
                    state: Mutex::new(State::default()),
                });
                // When not PID 1 (tests on a host) become a subreaper, so orphaned container
                // processes are re-parented to us and their statuses reach this loop.
                // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
                unsafe {
                    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                }
                // The loop runs on a runtime of its own: it must outlive whichever caller first
                // asked for the reaper (each unit test has its own runtime, dropped at its end).
                let r2 = r.clone();
                let spawned = std::thread::Builder::new()
                    .name("reaper".into())
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                log::error!("cannot start the reaper runtime: {e}");
                                return;
                            }
                        };
                        rt.block_on(async move {
                            let mut sig = match tokio::signal::unix::signal(
                                tokio::signal::unix::SignalKind::child(),
                            ) {
                                Ok(sig) => Some(sig),
                                Err(e) => {
                                    log::error!("cannot install the SIGCHLD handler: {e}");
                                    None
                                }
                            };
                            loop {
                                r2.reap_all();
                                // A periodic sweep as well: signals coalesce, and a child that
                                // exited between registration and the handler install must not hang.
                                let tick = std::time::Duration::from_millis(500);
                                match sig.as_mut() {
                                    Some(sig) => {
                                        let _ = tokio::time::timeout(tick, sig.recv()).await;
                                    }
                                    None => tokio::time::sleep(tick).await,
                                }
                            }
                        });
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start the reaper thread: {e}");
                }
                r
            })
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reap every exited child. The state lock is held across `waitpid` so that `fork` and
    /// `spawn` (which hold it too) are never raced: a pid is registered before it can be reaped.
    fn reap_all(&self) {
        let mut st = self.lock();
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
            };
            let raw = pid.as_raw();
            st.seq += 1;
            let seq = st.seq;
            if let Some((since, tx)) = st.waiters.remove(&raw) {
                if seq >= since {
                    let _ = tx.send(status);
                    continue;
                }
                st.waiters.insert(raw, (since, tx));
            }
            if st.unclaimed.len() >= MAX_UNCLAIMED {
                if let Some(oldest) = st
                    .unclaimed
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(p, _)| *p)
                {
                    st.unclaimed.remove(&oldest);
                }
            }
            st.unclaimed.insert(raw, (seq, status));
        }
    }

    /// Current sequence number: statuses reaped from now on have a larger one.
    pub fn mark(&self) -> u64 {
        self.lock().seq + 1
    }

    #[cfg(test)]
    /// Spawn a child and register for its exit status atomically (no stale status of an earlier
    /// process with the same pid can be delivered).
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, Waiter)> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        st.unclaimed.remove(&pid);
        let since = st.seq + 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(pid, (since, tx));
        Ok((child, Waiter { pid, rx }))
    }

    /// Fork a helper that runs `f` and exits with its result, registered for its exit status
    /// atomically (no stale status of an earlier process with the same pid is delivered). The helper is a copy of this process with only the calling thread:
    /// `f` must not take locks other threads may hold (logging, the reaper, tokio); the
    /// allocator is safe, glibc's `fork` resets its locks in the child. The helper exits without
    /// running destructors or atexit handlers (they belong to the agent).
    pub fn fork(&self, f: impl FnOnce() -> i32) -> std::io::Result<Waiter> {
        let mut st = self.lock();
        // SAFETY: the child runs `f` (see above) and leaves with `_exit`; the parent only records
        // the pid.
        match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
            nix::unistd::ForkResult::Child => {
                let code = f();
                // SAFETY: ends the helper at once, which is the point.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let pid = child.as_raw();
                st.unclaimed.remove(&pid);
                let since = st.seq + 1;
                let (tx, rx) = oneshot::channel();
                st.waiters.insert(pid, (since, tx));
                Ok(Waiter { pid, rx })
            }
        }
    }

    /// Register for the status of `pid`, a process that came into existence after `since` (from
    /// `mark()`); a status of that pid already reaped at or after `since` is delivered at once.
    pub fn watch(&self, pid: i32, since: u64) -> Waiter {
        let mut st = self.lock();
        let (tx, rx) = oneshot::channel();
        match st.unclaimed.remove(&pid) {
            Some((seq, status)) if seq >= since => {
                let _ = tx.send(status);
            }
            _ => {
                st.waiters.insert(pid, (since, tx));
            }
        }
        drop(st);
        // The child may have exited before we asked: sweep now rather than at the next tick.
        self.reap_all();
        Waiter { pid, rx }
    }
}

/// A pending exit status of one child.
pub struct Waiter {
    pid: i32,
    rx: oneshot::Receiver<ExitStatus>,
}

impl Waiter {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub async fn wait(self) -> ExitStatus {
        // The sender is only dropped if the reaper is gone, which cannot happen while we run.
        self.rx.await.unwrap_or(ExitStatus::Signaled(libc::SIGKILL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statuses_are_delivered_even_for_fast_children() {
        let r = Reaper::global();
        let (_c, w) = r
            .spawn(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .expect("spawn sh");
        assert_eq!(w.wait().await, ExitStatus::Exited(7));
        let (_c, w) = r
            .spawn(Command::new("/bin/sh").args(["-c", "kill -TERM $$"]))
            .expect("spawn sh");
        let st = w.wait().await;
        assert_eq!(st, ExitStatus::Signaled(libc::SIGTERM));
        assert_eq!(st.code(), 128 + libc::SIGTERM);

        // A grandchild re-parented to us (we are a subreaper), watched after it has exited. It
        // outlives its parent by a second: one that exits first may be reaped by that shell,
        // and its status would never be ours to deliver.
        let mark = r.mark();
        let (c, w) = r
            .spawn(
                Command::new("/bin/sh")
                    .args(["-c", "sh -c 'sleep 1; exit 5' & echo $!"])
                    .stdout(std::process::Stdio::piped()),
            )
            .expect("spawn sh");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c.stdout.expect("stdout"), &mut out).expect("read");
        assert_eq!(w.wait().await, ExitStatus::Exited(0));
        let pid: i32 = out.trim().parse().expect("pid");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let st = tokio::time::timeout(std::time::Duration::from_secs(5), r.watch(pid, mark).wait())
            .await
            .expect("grandchild status");
        assert_eq!(st, ExitStatus::Exited(5));
    }
}
