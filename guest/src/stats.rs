//! StatsContainer from the container's cgroup v2 files.

use std::collections::HashMap;
use std::path::Path;

use agent_proto::agent;

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

fn read_kv(dir: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Statistics of the cgroup at `dir`.
pub fn cgroup_stats(dir: &Path) -> agent::CgroupStats {
    let cpu = read_kv(dir, "cpu.stat");
    let mut usage = agent::CpuUsage::new();
    usage.total_usage = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
    usage.usage_in_usermode = cpu.get("user_usec").copied().unwrap_or(0) * 1000;
    usage.usage_in_kernelmode = cpu.get("system_usec").copied().unwrap_or(0) * 1000;
    let mut thr = agent::ThrottlingData::new();
    thr.periods = cpu.get("nr_periods").copied().unwrap_or(0);
    thr.throttled_periods = cpu.get("nr_throttled").copied().unwrap_or(0);
    thr.throttled_time = cpu.get("throttled_usec").copied().unwrap_or(0) * 1000;
    let mut cpu_stats = agent::CpuStats::new();
    cpu_stats.cpu_usage = Some(usage).into();
    cpu_stats.throttling_data = Some(thr).into();

    let stat = read_kv(dir, "memory.stat");
    let events = read_kv(dir, "memory.events");
    let mut mem_usage = agent::MemoryData::new();
    mem_usage.usage = read_u64(dir, "memory.current").unwrap_or(0);
    mem_usage.max_usage = read_u64(dir, "memory.peak").unwrap_or(0);
    mem_usage.limit = read_u64(dir, "memory.max").unwrap_or(u64::MAX);
    mem_usage.failcnt = events.get("max").copied().unwrap_or(0);
    let mut swap = agent::MemoryData::new();
    swap.usage = read_u64(dir, "memory.swap.current").unwrap_or(0);
    swap.limit = read_u64(dir, "memory.swap.max").unwrap_or(0);
    let mut mem = agent::MemoryStats::new();
    mem.cache = stat.get("file").copied().unwrap_or(0);
    mem.usage = Some(mem_usage).into();
    mem.swap_usage = Some(swap).into();
    mem.use_hierarchy = true;
    mem.stats = stat;

    let mut pids = agent::PidsStats::new();
    pids.current = read_u64(dir, "pids.current").unwrap_or(0);
    pids.limit = read_u64(dir, "pids.max").unwrap_or(0);

    let mut out = agent::CgroupStats::new();
    out.cpu_stats = Some(cpu_stats).into();
    out.memory_stats = Some(mem).into();
    out.pids_stats = Some(pids).into();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// memory.stat goes over whole: `inactive_file` is there for the shim's working set
    /// (containerd's total_inactive_file).
    #[test]
    fn memory_stat_carries_inactive_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("memory.stat"),
            "anon 4096\nfile 8192\nactive_file 4096\ninactive_file 4096\n",
        )
        .unwrap();
        std::fs::write(t.path().join("memory.current"), "12288\n").unwrap();
        std::fs::write(t.path().join("memory.max"), "max\n").unwrap();
        let s = cgroup_stats(t.path());
        let m = s.memory_stats.as_ref().unwrap();
        assert_eq!(m.stats.get("inactive_file"), Some(&4096));
        assert_eq!(m.cache, 8192);
        assert_eq!(m.usage.usage, 12288);
        assert_eq!(m.usage.limit, u64::MAX);
    }
}
