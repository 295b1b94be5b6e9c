//! Driving runc inside the guest. Every runc child is waited through the reaper.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{AgentError, Result};
use crate::reaper::{ExitStatus, Reaper};

pub const DEFAULT_RUNC: &str = "/usr/sbin/runc";
pub const RUNC_ROOT: &str = "/run/kata-cc/runc";
/// runc commands are slow under TCG; this bounds each one.
const RUNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The stdio runc (and, for create/exec, the container process) gets.
pub enum RuncIo {
    /// stdin, stdout, stderr ends for the process.
    Pipes(OwnedFd, OwnedFd, OwnedFd),
    /// A terminal: runc sends the pty master to this socket.
    Console(PathBuf),
}

pub struct Runc {
    bin: PathBuf,
    root: PathBuf,
}

impl Runc {
    pub fn new(bin: PathBuf, root: PathBuf) -> Runc {
        Runc { bin, root }
    }

    /// From `KATA_CC_RUNC` / `KATA_CC_RUNC_ROOT` (tests on a host), else the guest paths.
    pub fn from_env() -> Runc {
        let bin = std::env::var_os("KATA_CC_RUNC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNC));
        let root = std::env::var_os("KATA_CC_RUNC_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(RUNC_ROOT));
        Runc::new(bin, root)
    }

    fn base(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        if let Some(l) = log {
            c.arg("--log").arg(l).arg("--log-format").arg("json");
        }
        c
    }

    /// Run to completion; stdout on success, else an error naming the command and runc's message.
    async fn run(&self, what: &str, mut cmd: Command, log: Option<&Path>) -> Result<String> {
        if !self.bin.exists() {
            return Err(AgentError::internal(format!(
                "{what}: runc not found at {}",
                self.bin.display()
            )));
        }
        let (mut child, waiter) = Reaper::global().spawn(&mut cmd).map_err(|e| {
            AgentError::internal(format!("{what}: starting {}: {e}", self.bin.display()))
        })?;
        let pid = waiter.pid();
        let out = child.stdout.take();
        let err = child.stderr.take();
        let readers = tokio::task::spawn_blocking(move || {
            let mut o = String::new();
            let mut e = String::new();
            if let Some(mut s) = out {
                let _ = s.read_to_string(&mut o);
            }
            if let Some(mut s) = err {
                let _ = s.read_to_string(&mut e);
            }
            (o, e)
        });
        let status = match tokio::time::timeout(RUNC_TIMEOUT, waiter.wait()).await {
            Ok(s) => s,
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(AgentError::DeadlineExceeded(format!(
                    "{what}: runc did not finish within {}s",
                    RUNC_TIMEOUT.as_secs()
                )));
            }
        };
        let (stdout, stderr) = readers.await.unwrap_or_default();
        if status == ExitStatus::Exited(0) {
            return Ok(stdout);
        }
        let mut msg = stderr.trim().to_string();
        if let Some(l) = log {
            if let Some(m) = last_error(l) {
                msg = m;
            }
        }
        if msg.is_empty() {
            msg = format!("exit status {}", status.code());
        }
        Err(AgentError::internal(format!("{what}: runc: {msg}")))
    }

    fn with_io(cmd: &mut Command, io: RuncIo) {
        match io {
            RuncIo::Pipes(i, o, e) => {
                cmd.stdin(Stdio::from(i))
                    .stdout(Stdio::from(o))
                    .stderr(Stdio::from(e));
            }
            RuncIo::Console(sock) => {
                cmd.arg("--console-socket")
                    .arg(sock)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
    }

    pub async fn create(
        &self,
        cid: &str,
        bundle: &Path,
        pid_file: &Path,
        io: RuncIo,
    ) -> Result<()> {
        let log = bundle.join("runc.log");
        let mut c = self.base(Some(&log));
        c.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        Self::with_io(&mut c, io);
        c.arg(cid);
        self.run(&format!("creating container {cid}"), c, Some(&log))
            .await
            .map(|_| ())
    }

    pub async fn exec(
        &self,
        cid: &str,
        exec_id: &str,
        process: &Path,
        pid_file: &Path,
        io: RuncIo,
    ) -> Result<()> {
        let log = process.with_extension("log");
        let mut c = self.base(Some(&log));
        c.arg("exec")
            .arg("--detach")
            .arg("--process")
            .arg(process)
            .arg("--pid-file")
            .arg(pid_file);
        Self::with_io(&mut c, io);
        c.arg(cid);
        self.run(&format!("exec {exec_id} in container {cid}"), c, Some(&log))
            .await
            .map(|_| ())
    }

    fn piped(&self) -> Command {
        let mut c = self.base(None);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub async fn start(&self, cid: &str) -> Result<()> {
        let mut c = self.piped();
        c.arg("start").arg(cid);
        self.run(&format!("starting container {cid}"), c, None)
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, cid: &str) -> Result<()> {
        let mut c = self.piped();
        c.arg("delete").arg("--force").arg(cid);
        self.run(&format!("deleting container {cid}"), c, None)
            .await
            .map(|_| ())
    }
}

/// The last error message in a runc JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error" || v["level"] == "fatal")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

/// Read a pid file runc wrote.
pub fn read_pid(path: &Path) -> Result<i32> {
    let s = std::fs::read_to_string(path).map_err(|e| AgentError::io("reading", path, e))?;
    s.trim()
        .parse()
        .map_err(|e| AgentError::internal(format!("pid file {}: {e}", path.display())))
}
