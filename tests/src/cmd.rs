//! Running a command with a deadline: output captured, the child killed by PID on timeout.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// A readable account of the run, for assertion messages (long output shortened).
    pub fn describe(&self) -> String {
        format!(
            "`{}` -> exit {:?} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.elapsed.as_secs_f64(),
            shorten(&self.stdout_str()),
            shorten(&self.stderr_str())
        )
    }
    /// Panics with the whole account unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {}", self.describe());
        self
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut head = MAX / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - MAX / 2;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n... ({} bytes left out) ...\n{}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader<R: Read + Send + 'static>(mut r: R, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// A command running in the background with its stdout/stderr collected as they arrive.
pub struct Background {
    pub cmdline: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    status: Option<ExitStatus>,
}

impl Background {
    /// Starts `cmd`; `stdin` (if any) is written and closed from a thread, else stdin is empty.
    pub fn spawn(cmd: Command, stdin: Option<Vec<u8>>) -> Background {
        Self::start(cmd, StdinMode::Data(stdin))
    }

    /// Starts `cmd` with a stdin pipe the caller writes and closes (`write_stdin`,
    /// `close_stdin`). Needed with ctr: it closes the task's stdin on EOF only once the task
    /// exists, so an EOF that comes too early is lost and the process never sees it.
    pub fn spawn_interactive(cmd: Command) -> Background {
        Self::start(cmd, StdinMode::Pipe)
    }

    fn start(mut cmd: Command, mode: StdinMode) -> Background {
        let cmdline = describe_cmd(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(match mode {
            StdinMode::Data(None) => Stdio::null(),
            _ => Stdio::piped(),
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![
            reader(child.stdout.take().expect("piped"), stdout.clone()),
            reader(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        let mut stdin = None;
        match mode {
            StdinMode::Data(Some(data)) => {
                if let Some(mut w) = child.stdin.take() {
                    readers.push(std::thread::spawn(move || {
                        let _ = w.write_all(&data);
                        // Dropping w closes the pipe: the process sees EOF.
                    }));
                }
            }
            StdinMode::Pipe => stdin = child.stdin.take(),
            StdinMode::Data(None) => {}
        }
        Background {
            cmdline,
            stdin,
            child: Some(child),
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            status: None,
        }
    }

    /// Writes to the process's stdin (spawn_interactive only).
    pub fn write_stdin(&mut self, data: &[u8]) {
        let w = self
            .stdin
            .as_mut()
            .expect("write_stdin: stdin is not an open pipe");
        w.write_all(data)
            .unwrap_or_else(|e| panic!("writing stdin of `{}`: {e}", self.cmdline));
        let _ = w.flush();
    }

    /// Closes stdin: the process reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The stdout bytes received so far.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` bytes arrived on stdout; panics (after killing it) on timeout.
    pub fn wait_for_stdout_len(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stdout.lock().unwrap_or_else(|e| e.into_inner()).len() < n {
            if self.finished() || Instant::now() >= deadline {
                let out = self.kill_collect();
                panic!(
                    "expected {n} bytes on stdout within {}s: {}",
                    timeout.as_secs(),
                    out.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Whether it has exited (reaping it if so).
    pub fn finished(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
            }
        }
        self.status.is_some()
    }

    /// Waits until stdout contains `needle`; panics (after killing it) on timeout or early exit.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_now().contains(needle) {
                return;
            }
            if self.finished() {
                // Output may still be in the pipe when the exit is noticed.
                let out = self.finish_collect();
                assert!(
                    out.stdout_str().contains(needle),
                    "waiting for {needle:?} on stdout, but the command ended: {}",
                    out.describe()
                );
                return;
            }
            if Instant::now() >= deadline {
                let out = self.kill_collect();
                panic!(
                    "no {needle:?} on stdout within {}s (killed it): {}",
                    timeout.as_secs(),
                    out.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; on timeout kills it by PID and panics.
    pub fn wait(mut self, timeout: Duration) -> CmdOutput {
        let deadline = Instant::now() + timeout;
        while !self.finished() {
            if Instant::now() >= deadline {
                let out = self.kill_collect();
                panic!(
                    "timed out after {}s (killed it): {}",
                    timeout.as_secs(),
                    out.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.finish_collect()
    }

    /// Kills it by PID and returns what it printed.
    pub fn kill(mut self) -> CmdOutput {
        self.kill_collect()
    }

    fn kill_collect(&mut self) -> CmdOutput {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                self.status = Some(st);
            }
        }
        self.finish_collect()
    }

    fn finish_collect(&mut self) -> CmdOutput {
        self.stdin = None;
        // The pipes close when the process (and anything that inherited them) is gone.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.child = None;
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        CmdOutput {
            cmdline: self.cmdline.clone(),
            code: self.status.and_then(|s| s.code()),
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A test that panicked mid-way must not leave its ctr running.
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

enum StdinMode {
    /// These bytes then EOF, or (None) an empty stdin.
    Data(Option<Vec<u8>>),
    /// A pipe the caller writes.
    Pipe,
}

/// Runs `cmd` to completion with a deadline (stdin: `stdin` bytes then EOF, or empty).
pub fn run(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> CmdOutput {
    Background::spawn(cmd, stdin).wait(timeout)
}
