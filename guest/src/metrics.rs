//! GetMetrics: what the agent reports about its own memory and the guest's.

/// The metrics in the Prometheus text format.
pub fn text() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // `Key:   123 kB` lines, in bytes.
    let kib = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| n * 1024)
    };
    let mut out = String::new();
    for (name, help, value) in [
        (
            "kata_cc_agent_rss_bytes",
            "Resident set size of kata-cc-agent.",
            kib(&status, "VmRSS"),
        ),
        (
            "kata_cc_agent_rss_anon_bytes",
            "Resident anonymous memory of kata-cc-agent (heap, stacks).",
            kib(&status, "RssAnon"),
        ),
        (
            "kata_cc_agent_rss_file_bytes",
            "Resident file pages of kata-cc-agent (its binary's pages).",
            kib(&status, "RssFile"),
        ),
        (
            "kata_cc_agent_hwm_bytes",
            "Peak resident set size of kata-cc-agent.",
            kib(&status, "VmHWM"),
        ),
        (
            "kata_cc_guest_mem_total_bytes",
            "Guest memory (MemTotal).",
            kib(&meminfo, "MemTotal"),
        ),
        (
            "kata_cc_guest_mem_available_bytes",
            "Guest memory available (MemAvailable).",
            kib(&meminfo, "MemAvailable"),
        ),
    ] {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
    }
    out
}
