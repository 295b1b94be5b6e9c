//! The task service's one error type, and the one place (`From<Error> for ttrpc::Error`) where
//! an error becomes the status containerd sees: its ttrpc code and a message that carries the
//! whole source chain.

use std::error::Error as StdError;

use super::sandbox::SandboxError;
use super::spec::SpecError;
use super::stdio::StdioError;
use super::volumes::VolumeError;
use crate::agent::status_of;
use crate::config::ConfigError;
use crate::image::ImageError;
use crate::policy_source::PolicySourceError;
use crate::vm::VmError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // NOT_FOUND
    #[error("container {id} not found")]
    ContainerNotFound { id: String },
    #[error("exec {exec_id} of container {id} not found")]
    ExecNotFound { id: String, exec_id: String },
    #[error("process {process} of container {id}: process already finished")]
    ProcessFinished { id: String, process: String },

    // ALREADY_EXISTS
    #[error("container {id} already exists")]
    ContainerExists { id: String },
    #[error("exec {exec_id} already exists in container {id}")]
    ExecExists { id: String, exec_id: String },

    // FAILED_PRECONDITION
    #[error("process {process} of container {id} was already started")]
    AlreadyStarted { id: String, process: String },
    #[error("process {process} of container {id} is still running; kill it first")]
    StillRunning { id: String, process: String },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    /// Kill of an exec that never started (containerd's cleanup of a failed exec start: runc's
    /// shim answers the same, and containerd then stops waiting for it).
    #[error("exec {exec_id} of container {id}: process not created")]
    NotStarted { id: String, exec_id: String },
    #[error("the VM of sandbox {sandbox} is gone")]
    VmGone { sandbox: String },
    /// A new container for a pod whose VM died: nothing of the pod can run any more.
    #[error("the VM of sandbox {sandbox} is gone; the pod must be recreated")]
    PodGone { sandbox: String },
    /// UpdateTask with a memory limit the VM cannot hold (it cannot grow).
    #[error("container {id}: memory limit {limit_mib} MiB exceeds the VM's {vm_mib} MiB: a kata-cc VM is sized once at pod creation")]
    ExceedsVm {
        id: String,
        limit_mib: u64,
        vm_mib: u64,
    },

    // INVALID_ARGUMENT
    #[error("exec id must not be empty")]
    EmptyExecId,
    #[error("exec {exec_id}: no process spec")]
    NoExecSpec { exec_id: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicySourceError),
    #[error(transparent)]
    Stdio(#[from] StdioError),

    // UNIMPLEMENTED
    #[error("kata-cc: {what} is not supported: {why}")]
    Unimplemented {
        what: &'static str,
        why: &'static str,
    },

    /// A failed agent call: the agent's status (code and message) when it answered with one.
    #[error("agent {rpc}: {}", status_of(.source).1)]
    Agent {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    /// The agent's code for a policy refusal, INTERNAL otherwise.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// INTERNAL when containerd cannot be reached, FAILED_PRECONDITION for the image itself.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A host file a mount needs: FAILED_PRECONDITION; a refused copy keeps the agent's code.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("stats: {0}")]
    Metrics(#[source] protobuf::Error),

    /// What the service was doing (`container <id>`, `sandbox <id>`, ...): keeps the inner
    /// error's code.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

impl Error {
    pub fn agent(rpc: &'static str) -> impl FnOnce(ttrpc::Error) -> Error {
        move |source| Error::Agent { rpc, source }
    }

    /// The ttrpc code containerd sees for this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            Error::ContainerNotFound { .. }
            | Error::ExecNotFound { .. }
            | Error::ProcessFinished { .. } => Code::NOT_FOUND,
            Error::ContainerExists { .. } | Error::ExecExists { .. } => Code::ALREADY_EXISTS,
            Error::AlreadyStarted { .. }
            | Error::StillRunning { .. }
            | Error::NotRunning { .. }
            | Error::NotStarted { .. }
            | Error::VmGone { .. }
            | Error::PodGone { .. }
            | Error::ExceedsVm { .. } => Code::FAILED_PRECONDITION,
            Error::EmptyExecId
            | Error::NoExecSpec { .. }
            | Error::Spec(_)
            | Error::Config(_)
            | Error::Policy(_)
            | Error::Stdio(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented { .. } => Code::UNIMPLEMENTED,
            Error::Agent { source, .. } => status_of(source).0,
            Error::Sandbox(SandboxError::SetPolicy { source, .. }) => status_of(source).0,
            // A policy denying the pod's network configuration: the agent's code.
            Error::Sandbox(SandboxError::Network { source, .. }) => status_of(source).0,
            Error::Sandbox(_) | Error::Vm(_) | Error::Metrics(_) => Code::INTERNAL,
            Error::Image(ImageError::Connect { .. }) => Code::INTERNAL,
            Error::Image(_) => Code::FAILED_PRECONDITION,
            Error::Volume(v) => v.code(),
            Error::Context { source, .. } => source.code(),
        }
    }

    /// The error's text followed by every source in its chain that the text does not already
    /// show (most errors here quote their source; an agent's status is quoted by its owner).
    pub fn message(&self) -> String {
        let mut msg = self.to_string();
        let mut next = self.source();
        while let Some(e) = next {
            let quoted_by_owner = matches!(
                e.downcast_ref::<ttrpc::Error>(),
                Some(ttrpc::Error::RpcStatus(_))
            );
            let text = e.to_string();
            if !quoted_by_owner && !text.is_empty() && !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            next = e.source();
        }
        msg
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
    }
}

/// Adds what the service was doing to an error on its way up.
pub trait WithContext<T> {
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> WithContext<T> for std::result::Result<T, E> {
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn rpc_status(code: Code, msg: &str) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
    }

    fn io(msg: &str) -> std::io::Error {
        std::io::Error::other(msg.to_string())
    }

    #[test]
    fn each_case_has_its_code_and_text() {
        let id = || "c1".to_string();
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Error::ContainerNotFound { id: id() },
                Code::NOT_FOUND,
                "container c1 not found",
            ),
            (
                Error::ExecNotFound {
                    id: id(),
                    exec_id: "e1".into(),
                },
                Code::NOT_FOUND,
                "exec e1 of container c1 not found",
            ),
            (
                Error::ProcessFinished {
                    id: id(),
                    process: "e1".into(),
                },
                Code::NOT_FOUND,
                "process e1 of container c1: process already finished",
            ),
            (
                Error::ContainerExists { id: id() },
                Code::ALREADY_EXISTS,
                "container c1 already exists",
            ),
            (
                Error::ExecExists {
                    id: id(),
                    exec_id: "e1".into(),
                },
                Code::ALREADY_EXISTS,
                "exec e1 already exists in container c1",
            ),
            (
                Error::AlreadyStarted {
                    id: id(),
                    process: "c1".into(),
                },
                Code::FAILED_PRECONDITION,
                "process c1 of container c1 was already started",
            ),
            (
                Error::StillRunning {
                    id: id(),
                    process: "c1".into(),
                },
                Code::FAILED_PRECONDITION,
                "process c1 of container c1 is still running; kill it first",
            ),
            (
                Error::NotRunning { id: id() },
                Code::FAILED_PRECONDITION,
                "container c1 is not running",
            ),
            (
                Error::VmGone {
                    sandbox: "p1".into(),
                },
                Code::FAILED_PRECONDITION,
                "the VM of sandbox p1 is gone",
            ),
            (
                Error::PodGone {
                    sandbox: "p1".into(),
                },
                Code::FAILED_PRECONDITION,
                "the VM of sandbox p1 is gone; the pod must be recreated",
            ),
            (
                Error::ExceedsVm {
                    id: id(),
                    limit_mib: 4096,
                    vm_mib: 2560,
                },
                Code::FAILED_PRECONDITION,
                "container c1: memory limit 4096 MiB exceeds the VM's 2560 MiB: a kata-cc VM is \
                 sized once at pod creation",
            ),
            (
                VolumeError::Copy {
                    path: "/run/kata-containers/shared/containers/c1-x-hosts".into(),
                    source: rpc_status(
                        Code::PERMISSION_DENIED,
                        "CopyFileRequest is blocked by policy",
                    ),
                }
                .into(),
                Code::PERMISSION_DENIED,
                "agent CopyFile /run/kata-containers/shared/containers/c1-x-hosts: \
                 CopyFileRequest is blocked by policy",
            ),
            (
                VolumeError::Host {
                    destination: "/etc/hosts".into(),
                    path: "/p/etc-hosts".into(),
                    source: io("gone"),
                }
                .into(),
                Code::FAILED_PRECONDITION,
                "mount /etc/hosts: host source /p/etc-hosts: gone",
            ),
            (
                Error::EmptyExecId,
                Code::INVALID_ARGUMENT,
                "exec id must not be empty",
            ),
            (
                Error::NoExecSpec {
                    exec_id: "e1".into(),
                },
                Code::INVALID_ARGUMENT,
                "exec e1: no process spec",
            ),
            (
                SpecError::Read {
                    path: "/b/config.json".into(),
                    source: io("gone"),
                }
                .into(),
                Code::INVALID_ARGUMENT,
                "read /b/config.json: gone",
            ),
            (
                PolicySourceError::Conflict.into(),
                Code::INVALID_ARGUMENT,
                "annotations io.katacontainers.config.agent.policy and \
                 io.katacontainers.config.hypervisor.cc_init_data carry different policies: \
                 give one of them",
            ),
            (
                StdioError::Uri {
                    uri: "http://x".into(),
                    reason: "unsupported scheme".into(),
                }
                .into(),
                Code::INVALID_ARGUMENT,
                "stdio URI http://x: unsupported scheme",
            ),
            (
                Error::Unimplemented {
                    what: "Pause",
                    why: "containers in a kata-cc VM cannot be frozen from the host",
                },
                Code::UNIMPLEMENTED,
                "kata-cc: Pause is not supported: containers in a kata-cc VM cannot be frozen \
                 from the host",
            ),
            (
                Error::Agent {
                    rpc: "ExecProcess",
                    source: rpc_status(
                        Code::PERMISSION_DENIED,
                        "ExecProcessRequest is blocked by policy",
                    ),
                },
                Code::PERMISSION_DENIED,
                "agent ExecProcess: ExecProcessRequest is blocked by policy",
            ),
            (
                Error::Agent {
                    rpc: "StartContainer",
                    source: ttrpc::Error::RemoteClosed,
                },
                Code::INTERNAL,
                "agent StartContainer: ttrpc err: remote stream closed",
            ),
            (
                SandboxError::SetPolicy {
                    annotation: "a",
                    step: "",
                    source: rpc_status(
                        Code::PERMISSION_DENIED,
                        "SetPolicyRequest is blocked by policy",
                    ),
                }
                .into(),
                Code::PERMISSION_DENIED,
                "policy from annotation a: agent SetPolicy: SetPolicyRequest is blocked by policy",
            ),
            (
                SandboxError::LayerSize {
                    digest: "sha256:ab".into(),
                    got: 1,
                    want: 2,
                }
                .into(),
                Code::INTERNAL,
                "layer sha256:ab: containerd sent 1 bytes, manifest says 2",
            ),
            (
                VmError::BadId("..".into()).into(),
                Code::INTERNAL,
                "invalid sandbox id \"..\": must be non-empty, without '/', not . or ..",
            ),
            (
                ImageError::NoImage("c1".into()).into(),
                Code::FAILED_PRECONDITION,
                "container c1 has no image in containerd (created without one?)",
            ),
            (
                Error::Metrics(protobuf::Error::from(io("full"))),
                Code::INTERNAL,
                "stats: full",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!(status(e), (code, text.to_string()));
        }
    }

    #[test]
    fn context_keeps_the_inner_code_and_prefixes_the_text() {
        let r: Result<(), Error> = Err(Error::Agent {
            rpc: "SetPolicy",
            source: rpc_status(Code::PERMISSION_DENIED, "denied"),
        });
        let e = r
            .with_context(|| "sandbox p1".into())
            .with_context(|| "container c1".into())
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                Code::PERMISSION_DENIED,
                "container c1: sandbox p1: agent SetPolicy: denied".to_string()
            )
        );
        let r: Result<(), StdioError> = Err(StdioError::Logger {
            path: "/bin/log".into(),
            step: "start: ",
            source: io("nope"),
        });
        let e = r.with_context(|| "exec e1".into()).unwrap_err();
        assert_eq!(
            status(e),
            (
                Code::INVALID_ARGUMENT,
                "exec e1: logging binary /bin/log: start: nope".to_string()
            )
        );
    }

    /// A source that its error's text does not quote still reaches containerd.
    #[derive(Debug, thiserror::Error)]
    #[error("outer step failed")]
    struct Quiet(#[source] std::io::Error);

    #[test]
    fn the_source_chain_is_in_the_message() {
        let e = Error::Context {
            context: "container c1".into(),
            source: Box::new(Error::Stdio(StdioError::Open {
                what: "stdout fifo",
                path: "/f".into(),
                source: io("denied"),
            })),
        };
        // Quoted sources are not repeated.
        assert_eq!(
            e.message(),
            "container c1: open stdout fifo /f: denied".to_string()
        );
        // Unquoted ones are appended, in order.
        let e = Error::Metrics(protobuf::Error::from(io("inner")));
        assert!(e.message().contains("inner"), "{}", e.message());
        let wrapped = SandboxError::PolicyState {
            path: "/s/policy.json".into(),
            source: std::io::Error::other(Quiet(io("disk full"))),
        };
        let msg = Error::from(wrapped).message();
        assert!(
            msg.starts_with("cannot record the policy in /s/policy.json"),
            "{msg}"
        );
        assert!(msg.contains("outer step failed"), "{msg}");
        assert!(msg.ends_with("disk full"), "{msg}");
    }
}
