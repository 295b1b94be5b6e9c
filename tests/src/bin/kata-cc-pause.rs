//! `kata-cc-pause`: the sandbox ("pause") process of the tests' CRI pods, the job of
//! Kubernetes' `pause`: it holds the pod's namespaces and does nothing else. It blocks SIGINT,
//! SIGTERM and SIGCHLD and waits for them (sigwait): a child that ends is reaped (it may be PID
//! 1 of a shared PID namespace, the parent of orphans), SIGINT or SIGTERM ends it with status 0.
//! SIGKILL (what CRI's StopPodSandbox sends) ends it as any process. Static (the workspace
//! builds with crt-static), so the image needs no libc.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    // Blocked signals stay pending for sigwait, also for PID 1 (which otherwise ignores
    // signals it has no handler for).
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("kata-cc-pause: sigprocmask: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGINT | Signal::SIGTERM) => std::process::exit(0),
            Ok(_) => {}
            Err(e) => {
                eprintln!("kata-cc-pause: sigwait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Reaps every child that has ended (one SIGCHLD may stand for several).
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
