//! The agent's StatsContainer answer as containerd's cgroups v1 `Metrics` (what `ctr task
//! metrics` and the CRI decode).

use agent_proto::agent::{MemoryData, StatsContainerResponse};
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
        let get = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
        m.memory = MessageField::some(MemoryStat {
            cache: mem.cache,
            rss: get("rss"),
            mapped_file: get("mapped_file"),
            inactive_anon: get("inactive_anon"),
            active_anon: get("active_anon"),
            inactive_file: get("inactive_file"),
            active_file: get("active_file"),
            unevictable: get("unevictable"),
            usage: mem.usage.as_ref().map(entry).into(),
            swap: mem.swap_usage.as_ref().map(entry).into(),
            kernel: mem.kernel_usage.as_ref().map(entry).into(),
            ..Default::default()
        });
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
    use agent_proto::agent::{CgroupStats, MemoryStats, PidsStats};

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
}
