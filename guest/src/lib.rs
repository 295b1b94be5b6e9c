//! kata-cc guest library: the parts of the agent that the host tool shares (the policy engine,
//! init-data and the SNP report layout).

/// What the agent prints on the console (always, whatever the log level) once it listens; the
/// shim waits for it before its first vsock connection attempt (see shim/src/vm/mod.rs).
pub const READY_LINE: &str = "kata-cc-agent: ready: listening on";

pub mod initdata;
pub mod policy;
pub mod tee;
