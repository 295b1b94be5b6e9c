//! Agent errors and their mapping onto ttrpc statuses for the shim.

use ttrpc::{Code, Error as TtrpcError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    DeadlineExceeded(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

impl AgentError {
    pub fn internal(msg: impl Into<String>) -> Self {
        AgentError::Internal(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        AgentError::InvalidArgument(msg.into())
    }
    /// An I/O error on a path, naming the operation and the path.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        AgentError::Internal(format!("{what} {}: {e}", path.display()))
    }

    /// The same error with `prefix: ` before its message.
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        let p = |m: String| format!("{prefix}: {m}");
        match self {
            AgentError::InvalidArgument(m) => AgentError::InvalidArgument(p(m)),
            AgentError::NotFound(m) => AgentError::NotFound(p(m)),
            AgentError::AlreadyExists(m) => AgentError::AlreadyExists(p(m)),
            AgentError::FailedPrecondition(m) => AgentError::FailedPrecondition(p(m)),
            AgentError::Internal(m) => AgentError::Internal(p(m)),
            AgentError::DeadlineExceeded(m) => AgentError::DeadlineExceeded(p(m)),
        }
    }

    fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
            AgentError::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
        }
    }
}

impl From<AgentError> for TtrpcError {
    fn from(e: AgentError) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// The answer for every RPC kata-cc-agent does not implement.
pub fn unimplemented(request: &str) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{request} is not implemented by kata-cc-agent"),
    ))
}
