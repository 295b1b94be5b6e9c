//! Milestones of a pod's life, logged as `timeline <id> <phase> <unix ms>` so that `make bench`
//! can split a pod's start and stop into phases from containerd's log (wall clock: the bench
//! compares them with its own timestamps around `ctr run`).

use std::time::{SystemTime, UNIX_EPOCH};

/// The log line's marker word.
pub use agent_proto::contract::timeline::*;

/// Logs that `id` reached `phase` now.
pub fn mark(id: &str, phase: &str) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    log::info!("{MARKER} {id} {phase} {ms}");
}

/// The guest's uptime when the agent started listening, from its ready line on the console
/// (`kata-cc-agent: ready: listening on ... uptime 1.234 s)`): how long the kernel and init
/// took, by the guest's own clock.
pub fn agent_uptime_ms(console: &str) -> Option<u64> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains(agent_proto::contract::READY_LINE))?;
    let rest = &line[line.rfind("uptime ")? + "uptime ".len()..];
    let secs: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_from_the_agent_line() {
        let console = "[    0.5] something\nkata-cc-agent: ready: listening on vsock://-1:1024 (kata-cc-agent 0.1.0, uptime 2.468 s)\n";
        assert_eq!(super::agent_uptime_ms(console), Some(2468));
        assert_eq!(super::agent_uptime_ms("no agent here\n"), None);
    }
}
