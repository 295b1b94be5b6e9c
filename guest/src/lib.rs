//! kata-cc guest library: the parts of the agent that the host tool shares (the policy engine,
//! init-data and the SNP report layout).

/// What the agent prints on the console (always, whatever the log level) once it listens; the
/// shim waits for it before its first vsock connection attempt (see shim/src/vm/mod.rs).
pub const READY_LINE: &str = "kata-cc-agent: ready: listening on";

/// Seconds since boot with milliseconds (CLOCK_BOOTTIME, what /proc/uptime shows; needs no
/// /proc), for console lines.
pub fn uptime_text() -> String {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => format!("{}.{:03}", t.tv_sec(), t.tv_nsec() / 1_000_000),
        Err(_) => "?".into(),
    }
}

pub mod initdata;
pub mod policy;
pub mod tee;
