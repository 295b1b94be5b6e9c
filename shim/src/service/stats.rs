//! The agent's StatsContainer answer as containerd's cgroups v1 `Metrics` (what `ctr task
//! metrics` and the CRI decode).

use agent_proto::agent::{MemoryData, MemoryStats, StatsContainerResponse};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

fn entry(d: &MemoryData) -> MemoryEntry {
    MemoryEntry {
        limit: d.limit,
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.failcnt,
        ..Default::default()
    }
}

/// The v1 `MemoryStat` from the agent's figures, whose `stats` map holds either cgroup v1
/// `memory.stat` keys or the guest's cgroup v2 ones (`anon`, `file_mapped`, ...). The guest
/// container's cgroup is a leaf, so each `total_*` (v1: this cgroup and its descendants) is the
/// same figure; containerd's CRI computes the working set as `usage - total_inactive_file`.
pub fn memory_stat(mem: &MemoryStats) -> MemoryStat {
    // The first key present: the v1 name, then the v2 one.
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| mem.stats.get(*k).copied())
            .unwrap_or(0)
    };
    let cache = if mem.cache != 0 {
        mem.cache
    } else {
        get(&["cache", "file"])
    };
    let rss = get(&["rss", "anon"]);
    let rss_huge = get(&["rss_huge", "anon_thp"]);
    let mapped_file = get(&["mapped_file", "file_mapped"]);
    let dirty = get(&["dirty", "file_dirty"]);
    let writeback = get(&["writeback", "file_writeback"]);
    let pg_pg_in = get(&["pgpgin"]);
    let pg_pg_out = get(&["pgpgout"]);
    let pg_fault = get(&["pgfault"]);
    let pg_maj_fault = get(&["pgmajfault"]);
    let inactive_anon = get(&["inactive_anon"]);
    let active_anon = get(&["active_anon"]);
    let inactive_file = get(&["inactive_file"]);
    let active_file = get(&["active_file"]);
    let unevictable = get(&["unevictable"]);
    // A v1 agent's own `total_*` figures win.
    let total = |k: &str, v: u64| mem.stats.get(&format!("total_{k}")).copied().unwrap_or(v);
    MemoryStat {
        cache,
        rss,
        rss_huge,
        mapped_file,
        dirty,
        writeback,
        pg_pg_in,
        pg_pg_out,
        pg_fault,
        pg_maj_fault,
        inactive_anon,
        active_anon,
        inactive_file,
        active_file,
        unevictable,
        hierarchical_memory_limit: get(&["hierarchical_memory_limit"]),
        hierarchical_swap_limit: get(&["hierarchical_swap_limit"]),
        total_cache: total("cache", cache),
        total_rss: total("rss", rss),
        total_rss_huge: total("rss_huge", rss_huge),
        total_mapped_file: total("mapped_file", mapped_file),
        total_dirty: total("dirty", dirty),
        total_writeback: total("writeback", writeback),
        total_pg_pg_in: total("pgpgin", pg_pg_in),
        total_pg_pg_out: total("pgpgout", pg_pg_out),
        total_pg_fault: total("pgfault", pg_fault),
        total_pg_maj_fault: total("pgmajfault", pg_maj_fault),
        total_inactive_anon: total("inactive_anon", inactive_anon),
        total_active_anon: total("active_anon", active_anon),
        total_inactive_file: total("inactive_file", inactive_file),
        total_active_file: total("active_file", active_file),
        total_unevictable: total("unevictable", unevictable),
        usage: mem.usage.as_ref().map(entry).into(),
        swap: mem.swap_usage.as_ref().map(entry).into(),
        kernel: mem.kernel_usage.as_ref().map(entry).into(),
        ..Default::default()
    }
}

pub fn to_metrics(stats: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    let Some(cg) = stats.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(p) = cg.pids_stats.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(c) = cg.cpu_stats.as_ref() {
        let mut cpu = CPUStat::new();
        if let Some(u) = c.cpu_usage.as_ref() {
            cpu.usage = MessageField::some(CPUUsage {
                total: u.total_usage,
                kernel: u.usage_in_kernelmode,
                user: u.usage_in_usermode,
                per_cpu: u.percpu_usage.clone(),
                ..Default::default()
            });
        }
        if let Some(t) = c.throttling_data.as_ref() {
            cpu.throttling = MessageField::some(Throttle {
                periods: t.periods,
                throttled_periods: t.throttled_periods,
                throttled_time: t.throttled_time,
                ..Default::default()
            });
        }
        m.cpu = MessageField::some(cpu);
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        m.memory = MessageField::some(memory_stat(mem));
    }
    m
}

pub fn metrics_any(stats: &StatsContainerResponse) -> Result<Any, protobuf::Error> {
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: to_metrics(stats).write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::agent::{CgroupStats, PidsStats};

    #[test]
    fn memory_and_pids() {
        let stats = StatsContainerResponse {
            cgroup_stats: MessageField::some(CgroupStats {
                memory_stats: MessageField::some(MemoryStats {
                    usage: MessageField::some(MemoryData {
                        usage: 4096,
                        limit: 8192,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                pids_stats: MessageField::some(PidsStats {
                    current: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = metrics_any(&stats).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 8192);
        assert_eq!(m.pids.current, 3);
    }

    /// The guest's cgroup v2 `memory.stat` keys as v1 figures, `total_*` included: CRI's
    /// working set is `usage - total_inactive_file`.
    #[test]
    fn v2_memory_stat_as_v1_with_totals() {
        let stats: std::collections::HashMap<String, u64> = [
            ("anon", 1000),
            ("file", 3000),
            ("file_mapped", 200),
            ("file_dirty", 20),
            ("file_writeback", 2),
            ("inactive_anon", 100),
            ("active_anon", 900),
            ("inactive_file", 2500),
            ("active_file", 500),
            ("unevictable", 7),
            ("pgfault", 40),
            ("pgmajfault", 4),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mem = MemoryStats {
            cache: 3000,
            usage: MessageField::some(MemoryData {
                usage: 5000,
                limit: 1 << 30,
                ..Default::default()
            }),
            stats,
            ..Default::default()
        };
        let m = memory_stat(&mem);
        assert_eq!(
            (m.cache, m.rss, m.mapped_file, m.dirty, m.writeback),
            (3000, 1000, 200, 20, 2)
        );
        assert_eq!(
            (
                m.total_cache,
                m.total_rss,
                m.total_mapped_file,
                m.total_dirty,
                m.total_writeback
            ),
            (3000, 1000, 200, 20, 2)
        );
        assert_eq!((m.inactive_file, m.total_inactive_file), (2500, 2500));
        assert_eq!((m.active_file, m.total_active_file), (500, 500));
        assert_eq!((m.inactive_anon, m.total_inactive_anon), (100, 100));
        assert_eq!((m.active_anon, m.total_active_anon), (900, 900));
        assert_eq!((m.unevictable, m.total_unevictable), (7, 7));
        assert_eq!((m.pg_fault, m.total_pg_fault), (40, 40));
        assert_eq!((m.pg_maj_fault, m.total_pg_maj_fault), (4, 4));
        // containerd's CRI: working set = usage - total_inactive_file.
        assert_eq!(m.usage.usage - m.total_inactive_file, 2500);

        // A v1 agent's own figures are taken as they are.
        let v1 = MemoryStats {
            stats: [("rss", 10u64), ("total_rss", 30), ("inactive_file", 5)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..Default::default()
        };
        let m = memory_stat(&v1);
        assert_eq!((m.rss, m.total_rss), (10, 30));
        assert_eq!(m.total_inactive_file, 5);
    }
}
