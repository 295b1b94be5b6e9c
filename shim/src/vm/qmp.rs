//! Minimal QMP client: capability negotiation and single commands (JSON lines over a unix socket).

use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects and leaves negotiation mode; everything bounded by `timeout`.
    pub async fn connect(sock: &Path, timeout: Duration) -> io::Result<Qmp> {
        tokio::time::timeout(timeout, async {
            let stream = UnixStream::connect(sock).await?;
            let (r, w) = stream.into_split();
            let mut qmp = Qmp {
                reader: BufReader::new(r),
                writer: w,
            };
            let greeting = qmp.read_message().await?;
            if greeting.get("QMP").is_none() {
                return Err(io::Error::other(format!("not a QMP greeting: {greeting}")));
            }
            qmp.execute("qmp_capabilities").await?;
            Ok(qmp)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "QMP connect timed out"))?
    }

    async fn read_message(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QMP socket closed",
            ));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::other(format!("bad QMP JSON: {e}")))
    }

    /// Runs a command without arguments and returns its `return` value (events are skipped).
    pub async fn execute(&mut self, command: &str) -> io::Result<Value> {
        let msg = serde_json::json!({ "execute": command });
        self.writer.write_all(format!("{msg}\n").as_bytes()).await?;
        loop {
            let m = self.read_message().await?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(io::Error::other(format!("QMP {command}: {e}")));
            }
            // An asynchronous event: keep reading.
        }
    }
}

/// Asks QEMU to exit now (`quit`). QEMU may close the socket before answering: that is success.
pub async fn quit(sock: &Path, timeout: Duration) -> io::Result<()> {
    let mut qmp = Qmp::connect(sock, timeout).await?;
    match tokio::time::timeout(timeout, qmp.execute("quit")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "QMP quit timed out",
        )),
    }
}
