//! Running a command on a pseudo-terminal, as `ctr ... -t` needs its stdio to be a terminal.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::CmdOutput;

/// Runs `cmd` with stdin/stdout/stderr on a new pty (80x24); `input` is typed into it first.
/// The output is what the terminal showed (CRLF line ends); stderr is merged into it.
pub fn run_on_pty(mut cmd: Command, input: &[u8], timeout: Duration) -> CmdOutput {
    let cmdline = format!("{cmd:?}");
    let ws = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
    cmd.stdin(dup(&slave))
        .stdout(dup(&slave))
        .stderr(dup(&slave));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    // Only the child holds the slave now, so the master reads EIO once it has exited.
    drop(slave);
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    if !input.is_empty() {
        use std::io::Write;
        master.write_all(input).expect("write to pty");
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let buf = buf.clone();
        let mut m = master.try_clone().expect("dup pty master");
        std::thread::spawn(move || {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match m.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                }
            }
        })
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // EIO ends the reader once no process holds the slave.
    let _ = reader.join();
    drop(master);
    let out = CmdOutput {
        cmdline,
        code: status.and_then(|s| s.code()),
        stdout: std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner())),
        stderr: Vec::new(),
        elapsed: started.elapsed(),
    };
    assert!(
        status.is_some(),
        "timed out after {}s on a pty (killed it): {}",
        timeout.as_secs(),
        out.describe()
    );
    out
}
