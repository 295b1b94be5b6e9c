//! `kata-cc agent --sandbox ID ...`: talks to a running sandbox's agent directly, over the
//! hybrid-vsock socket in its state dir (the channel the shim uses; the agent's policy still
//! decides every request).
//! - `metrics`: GetMetrics (the agent's RSS, guest memory), Prometheus text;
//! - `ping [--count N]`: N Health checks, round-trip p50/p99/min/max in microseconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_proto::{agent, health};
use kata_cc_shim::agent::{connect_hybrid_vsock, context, AgentClient, AGENT_VSOCK_PORT};
use kata_cc_shim::config::DEFAULT_STATE_ROOT;

pub const USAGE: &str = "  agent --sandbox ID [--state-root DIR] metrics | ping [--count N]\n                           a running sandbox's agent: GetMetrics, or Health round-trip times\n";

const TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(args: &[String]) -> ExitCode {
    let mut sandbox = None;
    let mut state_root = PathBuf::from(DEFAULT_STATE_ROOT);
    let mut count = 100usize;
    let mut cmd = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or(format!("kata-cc agent: {a} needs a value"))
        };
        let r = match a.as_str() {
            "--sandbox" => value().map(|v| sandbox = Some(v)),
            "--state-root" => value().map(|v| state_root = PathBuf::from(v)),
            "--count" => value().and_then(|v| {
                v.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| count = n)
                    .ok_or(format!("kata-cc agent: --count {v}: not a positive number"))
            }),
            "metrics" | "ping" if cmd.is_none() => {
                cmd = Some(a.clone());
                Ok(())
            }
            other => Err(format!(
                "kata-cc agent: unknown argument {other}\nusage:\n{USAGE}"
            )),
        };
        if let Err(e) = r {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }
    let (Some(id), Some(cmd)) = (sandbox, cmd) else {
        eprint!("kata-cc agent: --sandbox and a command are required\nusage:\n{USAGE}");
        return ExitCode::from(2);
    };
    let uds = state_root
        .join(&id)
        .join(kata_cc_shim::vm::qemu::HYBRID_VSOCK_SOCK);
    if !uds.exists() {
        eprintln!(
            "kata-cc agent: {} does not exist (no such sandbox, or it uses kernel vhost-vsock, \
             which this command does not reach)",
            uds.display()
        );
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kata-cc agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let client = connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let c = AgentClient::new(client);
        if cmd == "metrics" {
            let m = c
                .agent
                .get_metrics(context(TIMEOUT), &agent::GetMetricsRequest::new())
                .await
                .map_err(|e| format!("GetMetrics: {e}"))?;
            print!("{}", m.metrics);
            return Ok(());
        }
        let mut t = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            c.health
                .check(context(TIMEOUT), &health::CheckRequest::new())
                .await
                .map_err(|e| format!("Health.Check: {e}"))?;
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(|a, b| a.total_cmp(b));
        let pct = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "health round trip over {count} calls (us): p50 {:.0} p99 {:.0} min {:.0} max {:.0}",
            pct(0.5),
            pct(0.99),
            t[0],
            t[t.len() - 1]
        );
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-cc agent: sandbox {id}: {e}");
            ExitCode::FAILURE
        }
    }
}
