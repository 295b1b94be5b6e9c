//! kata-cc-agent: PID 1 of the kata-cc guest. Sets up the guest, reaps children, and serves the
//! Kata agent API over ttrpc on vsock port 1024.

mod cgroup;
mod container;
mod copyfile;
mod error;
mod init;
mod launch;
mod launcher;
mod layers;
mod logging;
mod metrics;
mod net;
mod network;
mod oom;
mod paths;
mod reaper;
mod sandbox;
mod server;
mod spec;
mod stats;
mod stdio;
mod storage;

use std::path::PathBuf;

use agent_proto::contract;
use kata_cc_policy as policy;
use std::sync::Arc;

/// Why the agent cannot start (it then says so and, as PID 1, powers the VM off).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("creating {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the policy {path}: {source}")]
    ReadPolicy {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gate policy: {0}")]
    GatePolicy(#[source] policy::PolicyError),
    #[error("policy {path}: {source}")]
    Policy {
        path: String,
        #[source]
        source: policy::PolicyError,
    },
    #[error("listening on {listen}: {source}")]
    Listen {
        listen: String,
        #[source]
        source: ttrpc::Error,
    },
}

fn main() {
    // One malloc arena: the agent's threads mostly wait, and every per-thread arena would keep
    // memory of its own (guest memory is host memory).
    // SAFETY: called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let pid1 = std::process::id() == 1;
    if pid1 {
        init::console();
    }
    logging::init();
    // Where the guest's boot time goes: kernel + init before this line, the agent's own
    // start-up between this line and the ready line.
    log::info!("kata-cc-agent {} starting", server::VERSION);
    if pid1 {
        init::mount_filesystems();
        init::setup_cgroups(std::path::Path::new(container::CGROUP_ROOT));
        let _ = nix::unistd::sethostname("kata-cc");
        // Containers share the guest's network namespace: its loopback must work.
        if let Err(e) = net::link_up("lo") {
            log::warn!("bringing lo up: {e}");
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(pid1, &StartError::Runtime(e)),
    };
    if let Err(e) = rt.block_on(run(pid1)) {
        fatal(pid1, &e);
    }
}

/// The initial policy: the one baked into the measured rootfs (`KATA_CC_POLICY_PATH` overrides
/// the path for host tests). Without one, only SetPolicy is allowed (see
/// [`policy::NO_POLICY_FALLBACK`]): an unmeasured allow-all would defeat the policy. A baked
/// policy that does not parse is fatal: the guest must not run under a policy it cannot enforce.
/// Under SNP the launch may name another policy (HOST_DATA): then only the gate of
/// [`launch::Launch::initial_policy`] holds until that policy is set.
fn load_policy(
    launch: &launch::Launch,
) -> Result<(policy::PolicyEngine, Option<policy::FastPathJob>), StartError> {
    let path = std::env::var("KATA_CC_POLICY_PATH")
        .unwrap_or_else(|_| policy::DEFAULT_POLICY_PATH.to_string());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!("no policy at {path}: only SetPolicy is allowed until one is set");
            policy::NO_POLICY_FALLBACK.to_string()
        }
        Err(source) => return Err(StartError::ReadPolicy { path, source }),
    };
    if let Some(gate) = launch.initial_policy(&text) {
        log::warn!(
            "the launch's HOST_DATA is not the digest of {path}: only SetPolicy with the bound \
             policy (and its init-data) is allowed until it is set"
        );
        return policy::PolicyEngine::new(gate)
            .map(|e| (e, None))
            .map_err(StartError::GatePolicy);
    }
    let (engine, job) = match policy::PolicyEngine::new_deferred(&text) {
        Ok(x) => x,
        Err(source) => return Err(StartError::Policy { path, source }),
    };
    log::info!("policy loaded from {path}");
    Ok((engine, Some(job)))
}

fn fatal(pid1: bool, msg: &StartError) -> ! {
    eprintln!("kata-cc-agent: fatal: {msg}");
    if pid1 {
        init::power_off();
    }
    std::process::exit(1);
}

async fn run(pid1: bool) -> Result<(), StartError> {
    // Start reaping before anything is spawned.
    let _reaper = reaper::Reaper::global();
    let listen = std::env::var("KATA_CC_AGENT_LISTEN")
        .unwrap_or_else(|_| format!("vsock://-1:{}", contract::AGENT_VSOCK_PORT));
    let paths = paths::Paths::from_env();
    for d in [&paths.containers, &paths.shared] {
        std::fs::create_dir_all(d).map_err(|source| StartError::CreateDir {
            dir: d.clone(),
            source,
        })?;
    }
    let sandbox = Arc::new(container::Sandbox::new(
        launcher::Launcher::from_env(),
        paths,
    ));
    let launch = launch::Launch::detect();
    let (policy, fast_path) = load_policy(&launch)?;
    let policy = Arc::new(std::sync::Mutex::new(policy));
    let agent = server::Agent {
        sandbox: sandbox.clone(),
        policy: policy.clone(),
        launch: Arc::new(launch),
        network: Arc::new(network::Network::new()),
    };
    let _server = server::serve(&listen, agent)
        .await
        .map_err(|source| StartError::Listen {
            listen: listen.clone(),
            source,
        })?;
    // The uptime tells the host how long kernel and init took by the guest's clock.
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "{} {listen} (kata-cc-agent {}, uptime {uptime} s)",
        contract::READY_LINE,
        server::VERSION
    );
    if let Some(job) = fast_path {
        server::compile_fast_path(policy, job);
    }
    spawn_oom_poller(sandbox.clone());
    if pid1 {
        // Serve until the VM is stopped by the host.
        std::future::pending::<()>().await;
    }
    // Not PID 1 (a host test): serve until SIGTERM/SIGINT, then undo what was set up (mounts,
    // containers) as DestroySandbox does.
    wait_for_termination().await;
    if let Err(e) = sandbox.destroy().await {
        log::warn!("at exit: {e}");
    }
    log::info!("kata-cc-agent: terminated");
    Ok(())
}

/// Checks the containers' OOM counters every [`oom::POLL_INTERVAL`].
fn spawn_oom_poller(sandbox: Arc<container::Sandbox>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(oom::POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sandbox.check_ooms().await;
        }
    });
}

async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
