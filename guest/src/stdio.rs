//! Process stdio as the shim sees it: a stdin writer and stdout/stderr readers over pipes or a
//! pty master. Output is pumped into a bounded queue: when the shim does not read, the process
//! blocks on write (back-pressure) instead of data being dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Mutex};

/// Chunks queued per output stream before the process is made to wait.
const QUEUE_CHUNKS: usize = 2;
/// Largest read from the process (its pipe holds as much, see OUTPUT_PIPE_SIZE): a chunk read
/// whole is sent to the host as it is, with no copy to gather it.
const CHUNK: usize = 1024 * 1024;
/// First read size; it grows (x4, up to CHUNK) each time a read fills it, so a process that
/// prints a line now and then never costs a large buffer.
const FIRST_CHUNK: usize = 64 * 1024;

/// A non-blocking fd driven by tokio (works for pipes and pty masters alike).
pub struct AsyncFile {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncFile {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: an OwnedFd is a valid open descriptor that stays the same until it is dropped
        // together with the AsyncFd owning it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(AsyncFile { fd })
    }

    pub fn raw(&self) -> i32 {
        self.fd.get_ref().as_raw_fd()
    }

    /// Read some bytes; Ok(0) is end of file (EIO on a pty master whose slave side is gone too).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// One output stream (stdout or stderr) of a process.
pub struct OutStream {
    inner: Mutex<OutState>,
    /// Set once the agent drains the stream itself (its reads are refused by the policy).
    draining: std::sync::atomic::AtomicBool,
}

struct OutState {
    rx: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl OutStream {
    /// Start pumping `src` into a new stream.
    pub fn pump(src: std::sync::Arc<AsyncFile>) -> OutStream {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        tokio::spawn(async move {
            let mut size = FIRST_CHUNK;
            let mut buf = vec![0u8; size];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if n == size && size < CHUNK {
                            size = (size * 4).min(CHUNK);
                        }
                        // A large read is sent on as it is (no copy); a few lines are copied
                        // out, so they do not pin a whole buffer while queued.
                        let chunk = if n < buf.len() / 4 {
                            buf[..n].to_vec()
                        } else {
                            let mut full = std::mem::replace(&mut buf, vec![0u8; size]);
                            full.truncate(n);
                            full
                        };
                        if buf.len() != size {
                            buf = vec![0u8; size];
                        }
                        if tx.send(chunk).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        log::warn!("reading process output: {e}");
                        break;
                    }
                }
            }
            // Dropping tx: the reader sees end of stream once the queue is drained.
        });
        OutStream {
            inner: Mutex::new(OutState {
                rx,
                pending: Vec::new(),
            }),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True the first time only: the caller then drains the stream to its end.
    pub fn start_draining(&self) -> bool {
        !self
            .draining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Up to `len` bytes; blocks until data is there; an empty result means end of stream.
    pub async fn read(&self, len: usize) -> Vec<u8> {
        let len = len.max(1);
        let mut st = self.inner.lock().await;
        if st.pending.is_empty() {
            match st.rx.recv().await {
                Some(chunk) => st.pending = chunk,
                None => return Vec::new(),
            }
        }
        let mut out = std::mem::take(&mut st.pending);
        // Whatever else is already queued rides along (up to `len`): one round trip to the host
        // costs far more than a large reply (see shim/src/service/stdio.rs READ_CHUNK).
        while out.len() < len {
            match st.rx.try_recv() {
                Ok(chunk) if out.is_empty() => out = chunk,
                Ok(chunk) => {
                    let take = (len - out.len()).min(chunk.len());
                    out.extend_from_slice(&chunk[..take]);
                    if take < chunk.len() {
                        st.pending = chunk[take..].to_vec();
                    }
                }
                Err(_) => break,
            }
        }
        if out.len() > len {
            st.pending = out.split_off(len);
        }
        out
    }
}

/// What the agent keeps of one process's stdio.
pub struct ProcessIo {
    pub stdin: Mutex<Option<std::sync::Arc<AsyncFile>>>,
    pub stdout: Option<OutStream>,
    pub stderr: Option<OutStream>,
    /// The pty master for terminal processes (resize target).
    pub tty: Option<std::sync::Arc<AsyncFile>>,
}

impl ProcessIo {
    pub fn from_pipes(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<ProcessIo> {
        let out = std::sync::Arc::new(AsyncFile::new(stdout)?);
        let err = std::sync::Arc::new(AsyncFile::new(stderr)?);
        Ok(ProcessIo {
            stdin: Mutex::new(Some(std::sync::Arc::new(AsyncFile::new(stdin)?))),
            stdout: Some(OutStream::pump(out)),
            stderr: Some(OutStream::pump(err)),
            tty: None,
        })
    }

    pub fn from_pty(master: OwnedFd) -> io::Result<ProcessIo> {
        let m = std::sync::Arc::new(AsyncFile::new(master)?);
        Ok(ProcessIo {
            stdin: Mutex::new(Some(m.clone())),
            stdout: Some(OutStream::pump(m.clone())),
            stderr: None,
            tty: Some(m),
        })
    }

    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<usize> {
        let w = self.stdin.lock().await.clone();
        match w {
            Some(w) => {
                w.write_all(data).await?;
                Ok(data.len())
            }
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Close stdin. For a terminal, send EOF (^D) instead: the master also carries the output.
    pub async fn close_stdin(&self) -> io::Result<()> {
        let w = self.stdin.lock().await.take();
        if let (Some(w), Some(_)) = (w, &self.tty) {
            w.write_all(&[4u8]).await?;
        }
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let Some(tty) = &self.tty else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process has no terminal",
            ));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
        let rc = unsafe { libc::ioctl(tty.raw(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A pipe pair with close-on-exec set on both ends (the child's end is dup'ed onto 0/1/2).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Capacity of a process's stdout/stderr pipe. The kernel's 64 KiB default makes a writer of
/// large blocks wait for the agent after every 64 KiB: a context switch per 64 KiB on a one-vCPU
/// guest. Pages are only allocated while data sits in the pipe.
const OUTPUT_PIPE_SIZE: i32 = 1 << 20;

/// As [`pipe`], for process output: enlarged to [`OUTPUT_PIPE_SIZE`] where the kernel allows.
pub fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    if let Err(e) = fcntl(r.as_fd(), FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE)) {
        log::debug!("output pipe stays at its default size: {e}");
    }
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_complete_in_order_and_ends_with_empty_read() {
        let (r, w) = pipe().expect("pipe");
        let out = OutStream::pump(std::sync::Arc::new(AsyncFile::new(r).expect("async")));
        let total = 3 * 1024 * 1024 + 17;
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            std::io::Write::write_all(&mut f, &data).expect("write");
        });
        let mut got = Vec::new();
        loop {
            let chunk = out.read(10_000).await;
            assert!(chunk.len() <= 10_000);
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        writer.join().expect("writer");
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        assert!(out.read(10).await.is_empty());
    }

    #[tokio::test]
    async fn one_read_gathers_what_is_queued_up_to_len() {
        let (r, w) = pipe().expect("pipe");
        let out = OutStream::pump(std::sync::Arc::new(AsyncFile::new(r).expect("async")));
        let mut f = std::fs::File::from(w);
        // Two separate pipe writes (the queue holds two chunks), each read by the pump on its own.
        for b in [1u8, 2] {
            std::io::Write::write_all(&mut f, &[b; 1000]).expect("write");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(f);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let first = out.read(1500).await;
        assert_eq!(first.len(), 1500);
        assert!(first[..1000].iter().all(|b| *b == 1) && first[1000..].iter().all(|b| *b == 2));
        let rest = out.read(1 << 20).await;
        assert_eq!(rest, vec![2u8; 500]);
        assert!(out.read(10).await.is_empty());
    }
}
