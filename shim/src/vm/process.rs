//! One owner per external process (QEMU, the vsock backend): it is killed by PID on Drop and
//! dies with the shim (PR_SET_PDEATHSIG).
//!
//! The child is spawned *and waited for* on a dedicated thread: PR_SET_PDEATHSIG fires when the
//! thread that forked the child exits, so that thread must live exactly as long as the child.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ProcessExit {
    fn from_status(s: ExitStatus) -> Self {
        ProcessExit {
            code: s.code(),
            signal: s.signal(),
        }
    }
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

#[derive(Default)]
struct ExitCell {
    exit: Mutex<Option<ProcessExit>>,
    cond: Condvar,
}

pub struct OwnedProcess {
    name: String,
    pid: i32,
    cell: Arc<ExitCell>,
    exit_rx: watch::Receiver<Option<ProcessExit>>,
}

impl OwnedProcess {
    /// Starts `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<OwnedProcess> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The shim may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }

        let cell = Arc::new(ExitCell::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let thread_cell = cell.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(format!("own-{name}"))
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id() as i32;
                let _ = pid_tx.send(Ok(pid));
                // Wait without reaping first: as long as the zombie exists its PID cannot be
                // reused, so `signal` (which holds the lock) can never hit another process.
                loop {
                    // SAFETY: waitid on our own child with a zeroed siginfo out-parameter.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    let r = unsafe {
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOWAIT,
                        )
                    };
                    if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                    {
                        break;
                    }
                }
                let mut guard = thread_cell.exit.lock().ok();
                let exit = match child.wait() {
                    Ok(s) => ProcessExit::from_status(s),
                    Err(e) => {
                        log::error!("{thread_name}: wait failed: {e}");
                        ProcessExit {
                            code: None,
                            signal: None,
                        }
                    }
                };
                log::info!("{thread_name} (pid {pid}) ended: {exit}");
                if let Some(g) = guard.as_mut() {
                    **g = Some(exit);
                }
                drop(guard);
                thread_cell.cond.notify_all();
                let _ = exit_tx.send(Some(exit));
            })?;
        let pid = pid_rx
            .recv()
            .map_err(|_| std::io::Error::other("process owner thread died"))??;
        log::info!("{name} started, pid {pid}");
        Ok(OwnedProcess {
            name: name.to_string(),
            pid,
            cell,
            exit_rx,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn exit(&self) -> Option<ProcessExit> {
        self.cell.exit.lock().ok().and_then(|g| *g)
    }

    /// A receiver that turns `Some` once the process has been reaped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ProcessExit>> {
        self.exit_rx.clone()
    }

    /// Sends `sig` unless the process has already been reaped (so a recycled PID is never hit).
    pub fn signal(&self, sig: libc::c_int) {
        let guard = match self.cell.exit.lock() {
            Ok(g) => g,
            Err(_) => return,
        };
        if guard.is_none() {
            // SAFETY: plain kill(2). The reaper reaps only while holding this lock, so the PID
            // is still our child (alive or a zombie).
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Blocks up to `timeout` for the process to be reaped.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<ProcessExit> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.cell.exit.lock().ok()?;
        loop {
            if let Some(e) = *guard {
                return Some(e);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = self.cell.cond.wait_timeout(guard, left).ok()?.0;
        }
    }

    /// Waits (async) up to `timeout` for the process to be reaped.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<ProcessExit> {
        let mut rx = self.exit_rx.clone();
        tokio::time::timeout(timeout, async move {
            loop {
                if let Some(e) = *rx.borrow_and_update() {
                    return Some(e);
                }
                if rx.changed().await.is_err() {
                    return *rx.borrow();
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// SIGKILL and wait (bounded) until reaped.
    pub fn kill_blocking(&self) -> Option<ProcessExit> {
        if let Some(e) = self.exit() {
            return Some(e);
        }
        self.signal(libc::SIGKILL);
        let r = self.wait_blocking(Duration::from_secs(5));
        if r.is_none() {
            log::error!("{} (pid {}) did not die after SIGKILL", self.name, self.pid);
        }
        r
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.kill_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let p = OwnedProcess::spawn("sleep", cmd, &dir.path().join("log")).unwrap();
        let pid = p.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert!(p.exit().is_none());
        drop(p);
        // Reaped: no zombie left either.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn exit_is_observed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hi; exit 7"]);
        let log = dir.path().join("log");
        let p = OwnedProcess::spawn("sh", cmd, &log).unwrap();
        let e = p.wait_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(e.code, Some(7));
        assert_eq!(std::fs::read_to_string(log).unwrap(), "hi\n");
    }

    /// Not a test on its own: with KATA_CC_PDEATH_PIDFILE set (by `dies_with_its_owner`) it
    /// starts an owned `sleep`, records its PID and exits without running any destructor.
    #[test]
    fn pdeath_helper() {
        let Some(pidfile) = std::env::var_os("KATA_CC_PDEATH_PIDFILE") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let p = OwnedProcess::spawn("sleep", cmd, &dir.path().join("log")).unwrap();
        std::fs::write(pidfile, p.pid().to_string()).unwrap();
        std::process::exit(0);
    }

    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie waiting for its new parent to reap it is dead too.
            Ok(stat) => stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        }
    }

    #[test]
    fn dies_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "vm::process::tests::pdeath_helper",
                "--exact",
                "--test-threads=1",
            ])
            .env("KATA_CC_PDEATH_PIDFILE", &pidfile)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(&pid) {
            assert!(
                Instant::now() < deadline,
                "owned process {pid} outlived its owner"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn missing_binary_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("/nonexistent/qemu");
        assert!(OwnedProcess::spawn("x", cmd, &dir.path().join("log")).is_err());
    }
}
