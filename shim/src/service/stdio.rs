//! Process stdio between containerd's endpoints (fifos, `file://`, `binary://` log URIs) and the
//! agent's stream RPCs (ReadStdout/ReadStderr/WriteStdin/CloseStdin).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use agent_proto::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use agent_proto::agent_ttrpc::AgentServiceClient;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use crate::agent::context;

/// Bytes asked for per ReadStdout/ReadStderr call; the agent answers with whatever output is
/// queued, up to this. Every call is a round trip through the VM's vsock (about 1 ms under TCG),
/// so large replies are what make output fast. Safe with the hybrid-vsock backend since it runs
/// with a 16 KiB credit (vm::vsock_backend::TX_BUFFER_SIZE): with its 64 KiB default, replies
/// over ~32 KB stalled the connection.
const READ_CHUNK: u32 = 1 << 20;
/// Output chunks fetched from the agent but not yet written to containerd, per stream.
const OUT_CHUNKS_IN_FLIGHT: usize = 2;
/// Bytes sent per WriteStdin call.
const WRITE_CHUNK: usize = 256 << 10;
/// How long a logging binary may take to signal readiness or to exit after its pipes close
/// (containerd's own shims use about the same).
const LOGGER_TIMEOUT: Duration = Duration::from_secs(12);

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("stdio URI {uri}: {reason}")]
    Uri { uri: String, reason: String },
    /// `step` is what failed ("pipe: ", "start: ", ...; empty for setting up a pipe end).
    #[error("logging binary {path}: {step}{source}")]
    Logger {
        path: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("logging binary {path}: not ready within {timeout:?}")]
    LoggerNotReady { path: String, timeout: Duration },
}

/// What containerd asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// Opened host ends of one process's stdio.
#[derive(Default)]
pub struct OpenedStdio {
    pub stdin: Option<pipe::Receiver>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub logger: Option<Logger>,
}

impl OpenedStdio {
    /// Closes stdio that no copier took over (the process never started); a logging binary
    /// gets its EOF and the time to flush.
    pub async fn close(self) {
        let OpenedStdio {
            stdin,
            stdout,
            stderr,
            logger,
        } = self;
        drop((stdin, stdout, stderr));
        if let Some(l) = logger {
            l.finish().await;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(uri: &str) -> Result<Target, StdioError> {
    let uri = uri.trim();
    if uri.is_empty() {
        return Ok(Target::None);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Target::Fifo(PathBuf::from(uri)));
    };
    let bad = |reason: &str| StdioError::Uri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    // `scheme://host/path?query`: only an empty host is meaningful here.
    let (path_part, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = if let Some(p) = path_part.strip_prefix('/') {
        format!("/{p}")
    } else {
        return Err(bad("expected an absolute path (scheme:///path)"));
    };
    let path = PathBuf::from(percent_decode(&path));
    match scheme {
        "fifo" => Ok(Target::Fifo(path)),
        "file" => Ok(Target::File(path)),
        "binary" => {
            let mut args = Vec::new();
            if let Some(q) = query {
                for pair in q.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    args.push(percent_decode(k));
                    if !v.is_empty() {
                        args.push(percent_decode(v));
                    }
                }
            }
            Ok(Target::Binary { path, args })
        }
        other => Err(bad(&format!("unsupported scheme {other:?}"))),
    }
}

fn open_fifo_sender(what: &'static str, path: &Path) -> Result<Sink, StdioError> {
    // Read-write keeps the open from blocking before containerd's reader is there and means a
    // reader that goes away (containerd restart) does not turn into EPIPE for the container.
    let tx = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|source| StdioError::Open {
            what,
            path: path.display().to_string(),
            source,
        })?;
    // A larger fifo: the agent's replies come in chunks of up to READ_CHUNK, and the default
    // 64 KiB makes the shim and containerd's reader take turns every 64 KiB.
    // SAFETY: fcntl on a descriptor the sender owns; failure only leaves the default size.
    if unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, FIFO_SIZE) } < 0 {
        log::debug!(
            "{what} {}: fifo stays at its default size: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Box::pin(tx))
}

/// Capacity asked for containerd's output fifos.
const FIFO_SIZE: libc::c_int = 1 << 20;

fn open_file_sink(what: &'static str, path: &Path) -> Result<Sink, StdioError> {
    let err = |source| StdioError::Open {
        what,
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    Ok(Box::pin(tokio::fs::File::from_std(f)))
}

/// Open everything containerd named for one process.
pub async fn open(
    paths: &StdioPaths,
    container_id: &str,
    namespace: &str,
) -> Result<OpenedStdio, StdioError> {
    let mut out = OpenedStdio::default();
    if !paths.stdin.is_empty() {
        match parse_target(&paths.stdin)? {
            Target::Fifo(p) => {
                // Read-only and non-blocking: the open does not wait for containerd's writer,
                // and epoll reports nothing until a writer has connected, so the copier sees
                // EOF only once the client closed its end (ctr's way of ending stdin; CRI
                // uses CloseIO, handled as well).
                let rx = pipe::OpenOptions::new()
                    .open_receiver(&p)
                    .map_err(|source| StdioError::Open {
                        what: "stdin fifo",
                        path: p.display().to_string(),
                        source,
                    })?;
                out.stdin = Some(rx);
            }
            Target::None => {}
            _ => {
                return Err(StdioError::Uri {
                    uri: paths.stdin.clone(),
                    reason: "stdin must be a fifo".into(),
                })
            }
        }
    }
    let stdout = parse_target(&paths.stdout)?;
    let stderr = if paths.terminal {
        Target::None
    } else {
        parse_target(&paths.stderr)?
    };
    if let Target::Binary { path, args } = &stdout {
        let (logger, o, e) = Logger::spawn(path, args, container_id, namespace).await?;
        out.stdout = Some(o);
        if !paths.terminal {
            out.stderr = Some(e);
        }
        out.logger = Some(logger);
        return Ok(out);
    }
    out.stdout = match stdout {
        Target::None => None,
        Target::Fifo(p) => Some(open_fifo_sender("stdout fifo", &p)?),
        Target::File(p) => Some(open_file_sink("stdout file", &p)?),
        Target::Binary { .. } => None,
    };
    out.stderr = match stderr {
        Target::None => None,
        Target::Fifo(p) => Some(open_fifo_sender("stderr fifo", &p)?),
        Target::File(p) => Some(open_file_sink("stderr file", &p)?),
        Target::Binary { .. } => {
            return Err(StdioError::Uri {
                uri: paths.stderr.clone(),
                reason: "binary:// for stderr only is not supported".into(),
            })
        }
    };
    Ok(out)
}

/// A logging binary started for a `binary://` URI, fed through pipes on its fds 3 and 4; it
/// signals readiness by closing (or writing to) fd 5.
pub struct Logger {
    path: String,
    child: tokio::process::Child,
}

fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Duplicate an fd to a number >= 10 (close-on-exec), so the dup2 calls in the child that
/// place fds 3, 4, 5 can never clobber a source fd.
fn dup_high(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(std::io::Error::from)?;
    // SAFETY: fcntl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

impl Logger {
    async fn spawn(
        path: &Path,
        args: &[String],
        container_id: &str,
        namespace: &str,
    ) -> Result<(Logger, Sink, Sink), StdioError> {
        let name = path.display().to_string();
        let lerr = |step: &'static str| {
            let path = name.clone();
            move |source| StdioError::Logger { path, step, source }
        };
        let (out_r, out_w) = cloexec_pipe().map_err(lerr("pipe: "))?;
        let (err_r, err_w) = cloexec_pipe().map_err(lerr("pipe: "))?;
        let (ready_r, ready_w) = cloexec_pipe().map_err(lerr("pipe: "))?;
        let fds = [
            dup_high(&out_r).map_err(lerr("dup: "))?,
            dup_high(&err_r).map_err(lerr("dup: "))?,
            dup_high(&ready_w).map_err(lerr("dup: "))?,
        ];
        drop((out_r, err_r, ready_w));
        let raw: [i32; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
        let mut cmd = tokio::process::Command::new(path);
        cmd.args(args)
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false);
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(lerr("start: "))?;
        drop(fds);
        // Wait for readiness: a byte or EOF on the ready pipe.
        let ready = pipe::Receiver::from_owned_fd(ready_r).map_err(lerr(""));
        let logger = Logger {
            path: name.clone(),
            child,
        };
        let wait_ready = async {
            let mut rx = ready?;
            let mut b = [0u8; 1];
            rx.read(&mut b).await.map_err(lerr("reading readiness: "))
        };
        // On failure `logger` is dropped, which kills and reaps the binary.
        match tokio::time::timeout(LOGGER_TIMEOUT, wait_ready).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StdioError::LoggerNotReady {
                    path: name.clone(),
                    timeout: LOGGER_TIMEOUT,
                })
            }
        }
        let set_nb = |fd: OwnedFd| -> Result<Sink, StdioError> {
            let tx = pipe::Sender::from_owned_fd(fd).map_err(lerr(""))?;
            Ok(Box::pin(tx))
        };
        Ok((logger, set_nb(out_w)?, set_nb(err_w)?))
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(LOGGER_TIMEOUT, self.child.wait()).await;
    }

    /// After the pipes are closed: let the logger flush and exit, kill it if it does not.
    /// (Dropping a `Logger` instead kills it at once.)
    pub async fn finish(mut self) {
        match tokio::time::timeout(LOGGER_TIMEOUT, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                log::warn!(
                    "logging binary {} did not exit {:?} after its input closed: killing it",
                    self.path,
                    LOGGER_TIMEOUT
                );
                self.kill().await;
            }
        }
    }
}

impl Drop for Logger {
    /// A logger nobody finished (an error path, a process that never started): SIGKILL by
    /// PID and reap it, so no logging binary outlives its process or stays a zombie.
    fn drop(&mut self) {
        // None: already waited for by `finish`/`kill`.
        let Some(pid) = self.child.id() else {
            return;
        };
        let _ = self.child.start_kill();
        // SIGKILL ends it at once; bounded all the same (an uninterruptible sleep).
        let deadline = std::time::Instant::now() + REAP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(None) => {
                    log::warn!(
                        "logging binary {} (pid {pid}) still there {REAP_TIMEOUT:?} after SIGKILL",
                        self.path
                    );
                    return;
                }
            }
        }
    }
}

/// Bound on reaping a killed logging binary in `Drop` (which cannot await).
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

async fn wait_dead(mut dead: watch::Receiver<bool>) {
    // A closed channel means the sandbox is gone as well.
    let _ = dead.wait_for(|d| *d).await;
}

/// Copy one output stream of a process from the agent to `sink` until EOF (empty data), an
/// error, or the VM's death. Runs without a deadline: it legitimately lasts as long as the
/// process. A failing sink does not stop the draining (the process would block otherwise).
pub async fn copy_out(
    agent: AgentServiceClient,
    stream: Stream,
    container_id: String,
    exec_id: String,
    mut sink: Option<Sink>,
    dead: watch::Receiver<bool>,
) {
    let req = ReadStreamRequest {
        container_id: container_id.clone(),
        exec_id: exec_id.clone(),
        len: READ_CHUNK,
        ..Default::default()
    };
    let (container_id_w, exec_id_w) = (container_id.clone(), exec_id.clone());
    let name = format!("{container_id}/{exec_id}");
    // The next chunk is fetched while the last one is written to containerd: the VM link and
    // containerd's reader work at the same time. One fetcher keeps the order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_CHUNKS_IN_FLIGHT);
    let fetch = async move {
        loop {
            let r = match stream {
                Stream::Stdout => {
                    agent
                        .read_stdout(ttrpc::context::Context::default(), &req)
                        .await
                }
                Stream::Stderr => {
                    agent
                        .read_stderr(ttrpc::context::Context::default(), &req)
                        .await
                }
            };
            match r {
                Ok(resp) if resp.data.is_empty() => break,
                Ok(resp) => {
                    if tx.send(resp.data).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    log::warn!("{container_id}/{exec_id} {stream:?}: agent read failed: {e}");
                    break;
                }
            }
        }
        // Dropping tx ends the writer once it has written everything fetched.
    };
    let write = async {
        while let Some(data) = rx.recv().await {
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.write_all(&data).await {
                    log::warn!(
                        "{cid}/{eid} {stream:?}: writing to containerd failed: {e}; discarding further output",
                        cid = container_id_w,
                        eid = exec_id_w,
                    );
                    sink = None;
                }
            }
        }
        if let Some(s) = sink.as_mut() {
            let _ = s.flush().await;
        }
    };
    // The fetcher stops when the stream ends or the VM dies; the writer then writes what was
    // already fetched (bounded in time after a death: nobody may be reading any more).
    let fetch = async {
        tokio::select! {
            _ = fetch => false,
            _ = wait_dead(dead) => true,
        }
    };
    tokio::pin!(write);
    let died = tokio::select! {
        biased;
        died = fetch => Some(died),
        // Only once the fetcher is gone (it holds the sender); kept for completeness.
        _ = &mut write => None,
    };
    match died {
        Some(false) => write.await,
        Some(true) => {
            log::warn!("{name} {stream:?}: VM is gone; output stream ends");
            let _ = tokio::time::timeout(DRAIN_AFTER_DEATH, write).await;
        }
        None => {}
    }
}

/// How long output already fetched may take to reach containerd once the VM is gone.
const DRAIN_AFTER_DEATH: Duration = Duration::from_secs(2);

/// Copy stdin from containerd's fifo to the agent until `close` fires (containerd's CloseIO,
/// after its client hit EOF), then drain what is already in the fifo and close the process's
/// stdin. Ends silently when the process is gone.
pub async fn copy_in(
    agent: AgentServiceClient,
    container_id: String,
    exec_id: String,
    mut fifo: pipe::Receiver,
    mut close: oneshot::Receiver<()>,
    rpc_timeout: Duration,
) {
    let mut buf = vec![0u8; WRITE_CHUNK];
    let write = |data: Vec<u8>| {
        let agent = agent.clone();
        let req = WriteStreamRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            data,
            ..Default::default()
        };
        async move {
            let total = req.data.len();
            let mut req = req;
            let mut sent = 0usize;
            while sent < total {
                let r = agent.write_stdin(context(rpc_timeout), &req).await?;
                let n = (r.len as usize).min(req.data.len());
                if n == 0 {
                    return Err(ttrpc::Error::Others(
                        "agent accepted 0 bytes of stdin".into(),
                    ));
                }
                sent += n;
                req.data.drain(..n);
            }
            Ok::<(), ttrpc::Error>(())
        }
    };
    loop {
        tokio::select! {
            biased;
            r = fifo.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = write(buf[..n].to_vec()).await {
                        log::info!("{container_id}/{exec_id}: stdin write stopped: {e}");
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("{container_id}/{exec_id}: reading stdin fifo: {e}");
                    break;
                }
            },
            _ = &mut close => {
                // Whatever the client wrote before closing is already in the fifo.
                loop {
                    match fifo.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Err(e) = write(buf[..n].to_vec()).await {
                                log::info!("{container_id}/{exec_id}: stdin write stopped: {e}");
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                break;
            }
        }
    }
    let req = CloseStdinRequest {
        container_id: container_id.clone(),
        exec_id: exec_id.clone(),
        ..Default::default()
    };
    if let Err(e) = agent.close_stdin(context(rpc_timeout), &req).await {
        log::info!("{container_id}/{exec_id}: close stdin: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("").unwrap(), Target::None);
        assert_eq!(
            parse_target("/run/containerd/fifo/1/x-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            parse_target("file:///var/log/c%201.log").unwrap(),
            Target::File("/var/log/c 1.log".into())
        );
        assert_eq!(
            parse_target("binary:///usr/bin/logger?id=abc&verbose").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "abc".into(), "verbose".into()]
            }
        );
        assert!(parse_target("http://x/y").is_err());
        assert!(parse_target("file://relative").is_err());
    }

    #[tokio::test]
    async fn binary_logger_gets_output() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("logger.sh");
        let out = dir.path().join("out.txt");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\ncat <&3 > {}\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $1\" >> {}\n",
                out.display(),
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let paths = StdioPaths {
            stdout: format!("binary://{}?flag", script.display()),
            stderr: format!("binary://{}?flag", script.display()),
            ..Default::default()
        };
        let mut io = open(&paths, "c1", "ns1").await.unwrap();
        let mut o = io.stdout.take().unwrap();
        o.write_all(b"hello\n").await.unwrap();
        drop(o);
        drop(io.stderr.take());
        io.logger.take().unwrap().finish().await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "hello\nc1 ns1 flag\n"
        );
    }

    #[tokio::test]
    async fn dropped_logger_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("logger.sh");
        let pidfile = dir.path().join("pid");
        // Ready at once, then never exits on its own (holds its input open).
        crate::vm::test_util::script(
            &script,
            &format!("echo $$ > {}\nexec 5>&-\nexec sleep 100", pidfile.display()),
        );
        let paths = StdioPaths {
            stdout: format!("binary://{}", script.display()),
            ..Default::default()
        };
        let io = open(&paths, "c1", "ns").await.unwrap();
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(proc_dir.exists());
        // The sinks stay open: only the drop ends it.
        drop(io.logger);
        // Gone, not a zombie (a zombie keeps its /proc entry until reaped).
        assert!(!proc_dir.exists(), "{} still there", proc_dir.display());
        drop((io.stdout, io.stderr));
    }

    #[tokio::test]
    async fn stdin_fifo_eof_only_after_writer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stdin");
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdin: f.display().to_string(),
            ..Default::default()
        };
        let mut io = open(&paths, "c1", "ns").await.unwrap();
        let mut rx = io.stdin.take().unwrap();
        // No writer yet: no EOF.
        let mut buf = [0u8; 16];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.read(&mut buf))
                .await
                .is_err()
        );
        let f2 = f.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(f2).unwrap();
            w.write_all(b"hi").unwrap();
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn file_uri_appends() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/log.txt");
        let paths = StdioPaths {
            stdout: format!("file://{}", f.display()),
            stderr: format!("file://{}", f.display()),
            ..Default::default()
        };
        let mut io = open(&paths, "c1", "ns").await.unwrap();
        io.stdout.as_mut().unwrap().write_all(b"a").await.unwrap();
        io.stdout.as_mut().unwrap().flush().await.unwrap();
        io.stderr.as_mut().unwrap().write_all(b"b").await.unwrap();
        io.stderr.as_mut().unwrap().flush().await.unwrap();
        drop(io);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "ab");
    }
}
