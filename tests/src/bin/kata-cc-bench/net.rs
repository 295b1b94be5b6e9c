//! `make bench`, network part: TCP from the host (this process) into a kata-cc pod, through the
//! pod's veth, the tcfilter redirects, the TAP and the VM's virtio-net NIC, next to the same
//! against a runc pod on the same CRI bridge (its veth straight into the container), the
//! compared runs interleaved round by round in one run:
//! - throughput: `KATA_CC_BENCH_NET_MIB` MiB (default 64) written to `nc -ll -e wc -c` in the
//!   pod, timed from connect until the pod's byte count comes back;
//! - HTTP request/response: `KATA_CC_BENCH_HTTP_REQUESTS` (default 1000, spread over the
//!   rounds) GETs of a small file from busybox `httpd`, a new connection each (as a probe or a
//!   client without keep-alive makes them);
//! - TCP round trip: `KATA_CC_BENCH_ECHO_ROUND_TRIPS` (default 1000) one-byte exchanges with
//!   `nc -ll -e cat` on one connection: the network path alone, no process start.
//!
//! Each server is one container of its pod (busybox of the tests), reached at the pod IP CRI
//! reports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kata_cc_tests::cri::{ContainerSpec, PodSpec, HANDLER, RUNC_HANDLER};
use kata_cc_tests::kubelet::{Node, Pod};
use kata_cc_tests::net::{pod_ip, poll_answer};
use serde_json::{json, Value};

use super::{env_usize, stats, stats_json};

const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
const HTTP_PORT: u16 = 8081;
/// What the bench's httpd serves (and checks it got back).
const PAGE: &str = "kata-cc-bench";
/// Per TCP step: generous for an emulated guest, finite for a stalled one.
const STEP: Duration = Duration::from_secs(60);

/// The servers of one pod: httpd (it daemonizes), the echo server in the background, the byte
/// counter as the container's process.
fn server_script() -> String {
    format!(
        "mkdir -p /tmp/www && printf {PAGE} > /tmp/www/index.html && \
         busybox httpd -p {HTTP_PORT} -h /tmp/www; \
         busybox nc -ll -p {ECHO_PORT} -e cat & \
         exec busybox nc -ll -p {SINK_PORT} -e wc -c"
    )
}

/// One pod running the servers, with the handler it runs under.
struct Target {
    name: &'static str,
    pod: Pod,
    ip: Ipv4Addr,
}

fn start_target(node: &Node, name: &'static str, handler: &str, uid: &str) -> Target {
    let spec = PodSpec::new(&format!("bench-net-{name}"), uid, &node.log_root);
    let pod = node.run_pod_with(&spec, handler);
    let script = server_script();
    let mut c = ContainerSpec::new("servers", &node.busybox.reference, &["sh", "-c", &script]);
    c.mounts = pod.kubelet_mounts("servers");
    node.run_container(&pod, &c);
    let ip = pod_ip(node, &pod);
    // Ready when the last server (the sink) answers: an empty stream counts 0 bytes.
    poll_answer(SocketAddr::from((ip, SINK_PORT)), "0\n");
    Target { name, pod, ip }
}

/// Seconds to move `bytes` into the pod's byte counter and get its count back.
fn throughput_run(ip: Ipv4Addr, bytes: usize) -> Result<f64, String> {
    let addr = SocketAddr::from((ip, SINK_PORT));
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("{addr}: {e}"))?;
    s.set_write_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .map_err(|e| format!("{addr}: after {} bytes: {e}", bytes - left))?;
        left -= n;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("{addr}: the count: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    match answer.trim().parse::<usize>() {
        Ok(n) if n == bytes => Ok(secs),
        _ => Err(format!("{addr}: counted {answer:?}, sent {bytes}")),
    }
}

/// `n` HTTP GETs, each on a new connection; their latencies in ms.
fn http_gets(ip: Ipv4Addr, n: usize) -> Result<Vec<f64>, String> {
    let addr = SocketAddr::from((ip, HTTP_PORT));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.write_all(b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n")
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut r = Vec::new();
        s.read_to_end(&mut r).map_err(|e| format!("{addr}: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        let text = String::from_utf8_lossy(&r);
        if !(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with(PAGE)) {
            return Err(format!("{addr}: unexpected answer {text:?}"));
        }
    }
    Ok(out)
}

/// `n` one-byte round trips on one connection to the echo server; their times in µs.
fn echo_round_trips(ip: Ipv4Addr, n: usize) -> Result<Vec<f64>, String> {
    let addr = SocketAddr::from((ip, ECHO_PORT));
    let mut s = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n {
        let sent = [b'a' + (i % 26) as u8];
        let t = Instant::now();
        s.write_all(&sent).map_err(|e| format!("{addr}: {e}"))?;
        s.read_exact(&mut b).map_err(|e| format!("{addr}: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        if b != sent {
            return Err(format!("{addr}: echoed {b:?} for {sent:?}"));
        }
    }
    Ok(out)
}

/// The q-quantile (0..=1) of unsorted values (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn latency_json(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "p50": quantile(v, 0.5),
        "p90": quantile(v, 0.9),
        "p99": quantile(v, 0.99),
        "max": quantile(v, 1.0),
    })
}

/// What one target gave over all rounds.
#[derive(Default)]
struct Figures {
    throughput_s: Vec<f64>,
    http_ms: Vec<f64>,
    echo_us: Vec<f64>,
    failure: Option<String>,
}

impl Figures {
    fn record<T>(&mut self, what: &str, r: Result<T, String>, into: impl FnOnce(&mut Self, T)) {
        match r {
            Ok(v) => into(self, v),
            Err(e) => {
                eprintln!("bench: {what}: {e}");
                self.failure.get_or_insert(format!("{what}: {e}"));
            }
        }
    }
}

/// Runs the network part; its JSON document.
pub fn run(runs: usize) -> Value {
    let mib = env_usize("KATA_CC_BENCH_NET_MIB", 64);
    let bytes = mib << 20;
    let requests = env_usize("KATA_CC_BENCH_HTTP_REQUESTS", 1000);
    let trips = env_usize("KATA_CC_BENCH_ECHO_ROUND_TRIPS", 1000);
    let node = Node::start("bench-net");
    let targets = [
        start_target(
            &node,
            "kata-cc",
            HANDLER,
            "7b2e1c30-0000-4000-8000-00000000c001",
        ),
        start_target(
            &node,
            "runc",
            RUNC_HANDLER,
            "7b2e1c30-0000-4000-8000-00000000c002",
        ),
    ];
    let qemu = node.qemu_of(&targets[0].pod).pid;
    // Warm-up (page cache, ARP, the servers' first fork) once each, not counted.
    for t in &targets {
        if let Err(e) = throughput_run(t.ip, 1 << 20)
            .and_then(|_| http_gets(t.ip, 5))
            .and_then(|_| echo_round_trips(t.ip, 10))
        {
            eprintln!("bench: warm-up of {}: {e}", t.name);
        }
    }
    let mut figs = [Figures::default(), Figures::default()];
    for round in 0..runs {
        // Spread the request counts over the rounds (the first rounds take the remainder).
        let share = |total: usize| total / runs + usize::from(round < total % runs);
        for (t, f) in targets.iter().zip(figs.iter_mut()) {
            if f.failure.is_some() {
                continue;
            }
            f.record(
                &format!("{} throughput", t.name),
                throughput_run(t.ip, bytes),
                |f, s| f.throughput_s.push(s),
            );
            f.record(
                &format!("{} HTTP", t.name),
                http_gets(t.ip, share(requests)),
                |f, v| f.http_ms.extend(v),
            );
            f.record(
                &format!("{} echo", t.name),
                echo_round_trips(t.ip, share(trips)),
                |f, v| f.echo_us.extend(v),
            );
        }
    }
    for t in &targets {
        node.teardown(&t.pod, (t.name == "kata-cc").then_some(qemu));
    }
    node.finish();

    let mib_s: Vec<Vec<f64>> = figs
        .iter()
        .map(|f| f.throughput_s.iter().map(|s| mib as f64 / s).collect())
        .collect();
    let median = |v: &[f64]| if v.is_empty() { f64::NAN } else { stats(v).0 };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let tp_ratio = ratio(median(&mib_s[0]), median(&mib_s[1]));
    let http_ratio = ratio(
        quantile(&figs[0].http_ms, 0.5),
        quantile(&figs[1].http_ms, 0.5),
    );
    let echo_ratio = ratio(
        quantile(&figs[0].echo_us, 0.5),
        quantile(&figs[1].echo_us, 0.5),
    );

    println!(
        "== pod network: host -> pod through the VM NIC (kata-cc) vs a runc pod on the same \
         bridge, {runs} interleaved rounds"
    );
    let range = |v: &[f64]| {
        if v.is_empty() {
            "no runs".to_string()
        } else {
            let (m, lo, hi) = stats(v);
            format!("{m:.1} MiB/s ({lo:.1}-{hi:.1})")
        }
    };
    println!(
        "throughput, {mib} MiB into `nc | wc -c`: kata-cc {} | runc {} | kata-cc/runc {tp_ratio:.2}",
        range(&mib_s[0]),
        range(&mib_s[1])
    );
    let lat = |v: &[f64], unit: &str| {
        format!(
            "p50 {:.2} p90 {:.2} p99 {:.2} {unit} (n={})",
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            v.len()
        )
    };
    println!(
        "HTTP GET (busybox httpd, a connection each): kata-cc {} | runc {} | p50 kata-cc/runc {http_ratio:.2}",
        lat(&figs[0].http_ms, "ms"),
        lat(&figs[1].http_ms, "ms")
    );
    println!(
        "TCP round trip (1 byte, one connection): kata-cc {} | runc {} | p50 kata-cc/runc {echo_ratio:.2}",
        lat(&figs[0].echo_us, "us"),
        lat(&figs[1].echo_us, "us")
    );
    for (t, f) in targets.iter().zip(&figs) {
        if let Some(e) = &f.failure {
            println!("{}: stopped after a failure: {e}", t.name);
        }
    }
    let side = |f: &Figures, mib_s: &[f64]| {
        json!({
            "throughput_s": if f.throughput_s.is_empty() { Value::Null } else { stats_json(&f.throughput_s) },
            "throughput_mib_per_s": if mib_s.is_empty() { Value::Null } else { stats_json(mib_s) },
            "http_get_ms": latency_json(&f.http_ms),
            "echo_round_trip_us": latency_json(&f.echo_us),
            "failure": f.failure,
        })
    };
    json!({
        "runs": runs,
        "throughput_bytes": bytes,
        "http_requests": requests,
        "echo_round_trips": trips,
        "kata_cc": side(&figs[0], &mib_s[0]),
        "runc": side(&figs[1], &mib_s[1]),
        "ratio_kata_cc_to_runc": {
            "throughput_median": tp_ratio,
            "http_get_p50": http_ratio,
            "echo_round_trip_p50": echo_ratio,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.5), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn server_script_runs_three_servers() {
        let s = server_script();
        for p in [SINK_PORT, ECHO_PORT, HTTP_PORT] {
            assert!(s.contains(&p.to_string()), "{s}");
        }
        assert!(s.ends_with("-e wc -c"), "{s}");
    }
}
