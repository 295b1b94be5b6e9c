//! kata-cc guest library: what the agent and its init (kata-cc-init) share.

/// Seconds since boot with milliseconds (CLOCK_BOOTTIME, what /proc/uptime shows; needs no
/// /proc), for console lines.
pub fn uptime_text() -> String {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => format!("{}.{:03}", t.tv_sec(), t.tv_nsec() / 1_000_000),
        Err(_) => "?".into(),
    }
}
