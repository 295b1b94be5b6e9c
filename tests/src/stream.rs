//! A client of CRI's streaming server for Exec and Attach, as `kubectl exec` reaches it through
//! the API server: a WebSocket on the URL CRI returned, subprotocol `v4.channel.k8s.io`
//! (containerd 1.6.20 `pkg/cri/streaming/remotecommand/websocket.go`). Every binary message
//! starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final status (a Kubernetes
//! `Status` JSON), 4 terminal resize (`{"Width":W,"Height":H}`). The v4 protocol has no way to
//! close stdin alone: the session ends when the process ends (or the client hangs up).

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The subprotocol asked for (binary channels, v4 status).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// How long one socket read waits before the loop checks its deadline again.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("streaming URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("WebSocket handshake with {url}: {why}")]
    Handshake { url: String, why: String },
    #[error("server chose subprotocol {got:?}, not {PROTOCOL}")]
    Protocol { got: Option<String> },
    #[error("WebSocket {url}: {source}")]
    Io {
        url: String,
        source: tungstenite::Error,
    },
    #[error("{what}: nothing within {}s; stdout so far: {stdout:?}", timeout.as_secs())]
    Timeout {
        what: String,
        timeout: Duration,
        stdout: String,
    },
    #[error("the status on channel 3 is not JSON ({source}): {text:?}")]
    Status {
        text: String,
        source: serde_json::Error,
    },
}

/// The end of a session as the server reported it on channel 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    /// `status: "Success"`.
    pub success: bool,
    /// The exit code of a `NonZeroExitCode` failure (`details.causes[reason=ExitCode]`).
    pub exit_code: Option<i32>,
    /// The failure's message (empty on success).
    pub message: String,
}

impl ExecStatus {
    /// The process's exit code as kubectl derives it: 0 on success.
    pub fn code(&self) -> Option<i32> {
        if self.success {
            Some(0)
        } else {
            self.exit_code
        }
    }

    /// Parses the v4 status JSON.
    pub fn parse(data: &[u8]) -> Result<ExecStatus, StreamError> {
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|source| StreamError::Status {
                text: String::from_utf8_lossy(data).into_owned(),
                source,
            })?;
        let exit_code = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.trim().parse().ok());
        Ok(ExecStatus {
            success: v["status"] == "Success",
            exit_code,
            message: v["message"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// One Exec/Attach session.
pub struct Session {
    url: String,
    ws: WebSocket<TcpStream>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExecStatus>,
    /// The server closed the connection.
    pub closed: bool,
}

impl Session {
    /// Opens the WebSocket on `url` (`http://HOST:PORT/exec/<token>` as CRI returns it).
    pub fn connect(url: &str, timeout: Duration) -> Result<Session, StreamError> {
        let bad = |why: &str| StreamError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("not an http:// URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').ok_or_else(|| bad("no path"))?);
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| bad(&format!("address {authority}: {e}")))?
            .next()
            .ok_or_else(|| bad("no address"))?;
        let tcp =
            TcpStream::connect_timeout(&addr, timeout).map_err(|source| StreamError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let set = |t: Option<Duration>| {
            tcp.set_read_timeout(t)
                .and_then(|_| tcp.set_write_timeout(t))
                .map_err(|source| StreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })
        };
        set(Some(timeout))?;
        let ws_url = format!("ws://{authority}{path}");
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| bad(&e.to_string()))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, resp) = tungstenite::client(req, tcp).map_err(|e| StreamError::Handshake {
            url: ws_url.clone(),
            why: e.to_string(),
        })?;
        let got = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if got.as_deref() != Some(PROTOCOL) {
            return Err(StreamError::Protocol { got });
        }
        ws.get_ref()
            .set_read_timeout(Some(POLL))
            .map_err(|source| StreamError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Session {
            url: ws_url,
            ws,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            closed: false,
        })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), StreamError> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::binary(frame))
            .map_err(|source| StreamError::Io {
                url: self.url.clone(),
                source,
            })
    }

    /// Writes to the process's stdin.
    pub fn stdin(&mut self, data: &[u8]) -> Result<(), StreamError> {
        self.send(STDIN, data)
    }

    /// Resizes the process's terminal (TTY sessions).
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), StreamError> {
        let msg = serde_json::json!({ "Width": width, "Height": height }).to_string();
        self.send(RESIZE, msg.as_bytes())
    }

    /// Stdout so far, as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Reads one message if one comes within the poll interval; false when none came.
    fn pump(&mut self) -> Result<bool, StreamError> {
        if self.closed {
            return Ok(false);
        }
        match self.ws.read() {
            Ok(Message::Binary(b)) => {
                if let Some((&ch, data)) = b.split_first() {
                    match ch {
                        STDOUT => self.stdout.extend_from_slice(data),
                        STDERR => self.stderr.extend_from_slice(data),
                        STATUS if !data.is_empty() => self.status = Some(ExecStatus::parse(data)?),
                        _ => {}
                    }
                }
                Ok(true)
            }
            Ok(Message::Close(_)) => {
                self.closed = true;
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Ok(false)
            }
            // The server (x/net/websocket) may drop the TCP connection without a close frame
            // once the status is written: that is the end of the session too.
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(_)
                | tungstenite::Error::Io(_),
            ) if self.status.is_some() => {
                self.closed = true;
                Ok(false)
            }
            Err(source) => Err(StreamError::Io {
                url: self.url.clone(),
                source,
            }),
        }
    }

    /// Reads until `done(self)` holds (true) or the session ends or `timeout` passes (false).
    pub fn read_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Session) -> bool,
    ) -> Result<bool, StreamError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            if self.closed || Instant::now() >= deadline {
                return Ok(false);
            }
            self.pump()?;
        }
    }

    /// Reads until stdout contains `needle`; an error naming it if it does not come.
    pub fn expect_stdout(&mut self, needle: &str, timeout: Duration) -> Result<(), StreamError> {
        if self.read_until(timeout, |s| s.stdout_text().contains(needle))? {
            Ok(())
        } else {
            Err(StreamError::Timeout {
                what: format!("stdout {needle:?}"),
                timeout,
                stdout: self.stdout_text(),
            })
        }
    }

    /// Reads to the end of the session (the status, then the server's close).
    pub fn wait(mut self, timeout: Duration) -> Result<Finished, StreamError> {
        self.read_until(timeout, |s| s.closed)?;
        match self.status.take() {
            Some(status) => Ok(Finished {
                stdout: std::mem::take(&mut self.stdout),
                stderr: std::mem::take(&mut self.stderr),
                status,
            }),
            None => Err(StreamError::Timeout {
                what: "the exec status".to_string(),
                timeout,
                stdout: self.stdout_text(),
            }),
        }
    }
}

/// What a finished session gave.
#[derive(Debug, Clone)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExecStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_statuses() {
        let ok = ExecStatus::parse(br#"{"metadata":{},"status":"Success"}"#).unwrap();
        assert_eq!(ok.code(), Some(0));
        let failed = ExecStatus::parse(
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        )
        .unwrap();
        assert_eq!((failed.success, failed.code()), (false, Some(3)));
        assert!(failed.message.contains("exit code 3"));
        assert!(ExecStatus::parse(b"not json").is_err());
    }

    #[test]
    fn urls_must_be_http() {
        assert!(matches!(
            Session::connect("https://127.0.0.1:1/exec/x", POLL),
            Err(StreamError::Url { .. })
        ));
    }
}
