//! The agent's container launcher: youki's `libcontainer`, run by the agent itself (no runtime
//! binary in the guest). Inputs as runc's: the bundle the agent writes (config.json naming the
//! rootfs it unpacked), the process's stdio ends or a console socket, a pid file.
//!
//! libcontainer clones its processes with a raw `clone3`, which skips glibc's fork handling: in
//! a multi-threaded process (the agent: tokio workers, the reaper thread, one malloc arena) a
//! clone taken while another thread holds the malloc lock leaves the child a lock nobody will
//! release. So create and exec run in a helper forked with glibc's `fork` (which takes and resets
//! the allocator's locks around the fork): the helper is single-threaded, calls libcontainer
//! (whose intermediate and init processes are its children), writes an error, if any, on a pipe
//! and exits. The container's init is then re-parented to the agent (PID 1, or the subreaper on
//! a host), as runc's was; its exit reaches the agent's reaper with SIGCHLD. Start and delete
//! spawn nothing but run in a helper as well, so that the agent itself never executes (and keeps
//! resident) libcontainer's code: its resident memory is guest memory.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use crate::reaper::{ExitStatus, Reaper};

/// Where libcontainer keeps each container's state (state.json, notify socket).
pub const LAUNCHER_ROOT: &str = "/run/kata-cc/launcher";
/// Bounds each step (a create under TCG takes tens of milliseconds; a stuck one must not hang
/// the request forever).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit code of a helper whose step failed (the message is on its error pipe).
const HELPER_FAILED: i32 = 1;

/// Why a launcher step failed, naming the container and the step.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// libcontainer's own messages are terse at the top: the whole cause chain is shown.
    #[error("container {cid}: {step}: {}", chain(.source.as_ref()))]
    Lib {
        cid: String,
        step: &'static str,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// A forked helper's report (the text of a [`LaunchError::Lib`] made in the helper).
    #[error("{0}")]
    Helper(String),
    #[error("container {cid}: {step}: {what}")]
    Os {
        cid: String,
        step: &'static str,
        what: String,
    },
    #[error("container {cid}: {step} did not finish within {}s", .timeout.as_secs())]
    Timeout {
        cid: String,
        step: &'static str,
        timeout: Duration,
    },
}

/// The stdio a new container process gets.
pub enum LaunchIo {
    /// stdin, stdout, stderr ends for the process.
    Pipes(OwnedFd, OwnedFd, OwnedFd),
    /// A terminal: the pty master is sent to this unix socket (runc's --console-socket protocol).
    Console(PathBuf),
}

pub struct Launcher {
    root: PathBuf,
}

impl Launcher {
    pub fn new(root: PathBuf) -> Launcher {
        Launcher { root }
    }

    /// From `KATA_CC_LAUNCHER_ROOT` (tests on a host), else the guest path.
    pub fn from_env() -> Launcher {
        let root = std::env::var_os("KATA_CC_LAUNCHER_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(LAUNCHER_ROOT));
        Launcher::new(root)
    }

    /// Create: namespaces, mounts, pivot_root, cgroup, user, capabilities, seccomp; the init
    /// then waits for [`Self::start`]. Its pid is written to `pid_file` (as runc does).
    pub async fn create(
        &self,
        cid: &str,
        bundle: &Path,
        pid_file: &Path,
        io: LaunchIo,
    ) -> Result<i32, LaunchError> {
        let root = self.root.clone();
        in_helper(cid, "create", move || {
            builder(&root, cid, pid_file, io)?
                .as_init(bundle)
                .with_systemd(false)
                // The agent owns the process's stdio and waits for it through its reaper.
                .with_detach(true)
                .build()
                .map(|_| ())
                .map_err(|e| lib_error(cid, "create", e))
        })
        .await?;
        pid_of(cid, "create", pid_file)
    }

    /// Exec: the process described by `process` (runc's --process JSON) in the running
    /// container's namespaces and cgroup; its pid is written to `pid_file`.
    pub async fn exec(
        &self,
        cid: &str,
        process: &Path,
        pid_file: &Path,
        io: LaunchIo,
    ) -> Result<i32, LaunchError> {
        let root = self.root.clone();
        in_helper(cid, "exec", move || {
            builder(&root, cid, pid_file, io)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map(|_| ())
                .map_err(|e| lib_error(cid, "exec", e))
        })
        .await?;
        pid_of(cid, "exec", pid_file)
    }

    /// Start: releases the created init into the process's entrypoint (nothing is spawned).
    /// In a helper too: the agent itself then never runs (and keeps resident) libcontainer's code.
    pub async fn start(&self, cid: &str) -> Result<(), LaunchError> {
        let dir = self.root.join(cid);
        in_helper(cid, "start", move || {
            Container::load(dir)
                .and_then(|mut c| c.start())
                .map_err(|e| lib_error(cid, "start", e))
        })
        .await
    }

    /// Delete (forced: a running init is killed first), with its cgroup and state. A container
    /// the launcher has no state of (its create failed early) is not an error.
    pub async fn delete(&self, cid: &str) -> Result<(), LaunchError> {
        let dir = self.root.join(cid);
        if !dir.exists() {
            return Ok(());
        }
        in_helper(cid, "delete", move || {
            // libcontainer's status refresh sees /proc/<pid>, then reads /proc/<pid>/stat: an
            // init reaped in between fails the read. Loaded again, it is seen stopped.
            let mut tries = 0;
            loop {
                match Container::load(dir.clone()).and_then(|mut c| c.delete(true)) {
                    Ok(()) => return Ok(()),
                    Err(e) if tries < 2 && is_reaped_meanwhile(&e) => tries += 1,
                    Err(e) => return Err(lib_error(cid, "delete", e)),
                }
            }
        })
        .await
    }
}

fn builder(
    root: &Path,
    cid: &str,
    pid_file: &Path,
    io: LaunchIo,
) -> Result<ContainerBuilder, LaunchError> {
    let lib = |step, source| lib_error(cid, step, source);
    let b = ContainerBuilder::new(cid.to_string(), SyscallType::Linux)
        .with_root_path(root)
        .map_err(|e| lib("state directory", e))?
        .with_pid_file(Some(pid_file))
        .map_err(|e| lib("pid file", e))?;
    Ok(match io {
        LaunchIo::Pipes(i, o, e) => b.with_stdin(i).with_stdout(o).with_stderr(e),
        LaunchIo::Console(sock) => b.with_console_socket(Some(sock)),
    })
}

/// The pid a create or exec step wrote.
fn pid_of(cid: &str, what: &'static str, pid_file: &Path) -> Result<i32, LaunchError> {
    read_pid(pid_file).map_err(|e| LaunchError::Os {
        cid: cid.to_string(),
        step: what,
        what: e.to_string(),
    })
}

/// Runs `step` in a helper forked from the agent (see the module comment) and waits for it
/// through the reaper, at most [`STEP_TIMEOUT`].
async fn in_helper(
    cid: &str,
    what: &'static str,
    step: impl FnOnce() -> Result<(), LaunchError>,
) -> Result<(), LaunchError> {
    forked(cid, what, Some(STEP_TIMEOUT), || {
        step().map_err(|e| e.to_string())
    })
    .await
}

/// Runs `step` in a single-threaded helper forked from the agent and waits for it through the
/// reaper (at most `timeout`); the step's error text comes back as [`LaunchError::Helper`].
async fn forked(
    cid: &str,
    what: &'static str,
    timeout: Option<Duration>,
    step: impl FnOnce() -> Result<(), String>,
) -> Result<(), LaunchError> {
    let os = |e: std::io::Error| LaunchError::Os {
        cid: cid.to_string(),
        step: what,
        what: e.to_string(),
    };
    // Close-on-exec: the container's init holds a copy until its exec, so the agent reads what
    // the helper wrote once it has exited, without waiting for EOF.
    let (err_r, err_w) = crate::stdio::pipe().map_err(os)?;
    let waiter = Reaper::global()
        .fork(move || {
            // Nothing in the helper may take a lock another agent thread could have held at the
            // fork: no logging (libcontainer's tracing has no subscriber: a no-op).
            log::set_max_level(log::LevelFilter::Off);
            match step() {
                Ok(()) => 0,
                Err(msg) => {
                    // SAFETY: a plain write of a buffer we own to a descriptor we own.
                    unsafe { libc::write(err_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
                    HELPER_FAILED
                }
            }
        })
        .map_err(os)?;
    let pid = waiter.pid();
    let wait = async {
        match timeout {
            Some(t) => tokio::time::timeout(t, waiter.wait()).await.ok(),
            None => Some(waiter.wait().await),
        }
    };
    let status = match wait.await {
        Some(s) => s,
        None => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(LaunchError::Timeout {
                cid: cid.to_string(),
                step: what,
                timeout: timeout.unwrap_or_default(),
            });
        }
    };
    if status == ExitStatus::Exited(0) {
        return Ok(());
    }
    let mut msg = String::new();
    let mut f = std::fs::File::from(err_r);
    let _ = nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let _ = f.read_to_string(&mut msg);
    if msg.is_empty() {
        msg = format!(
            "container {cid}: {what}: the launcher helper ended with status {}",
            status.code()
        );
    }
    Err(LaunchError::Helper(msg))
}

fn lib_error(
    cid: &str,
    step: &'static str,
    source: libcontainer::error::LibcontainerError,
) -> LaunchError {
    LaunchError::Lib {
        cid: cid.to_string(),
        step,
        source: Box::new(source),
    }
}

/// The status refresh's race with the reaper: `/proc/<pid>/...` vanished while being read.
fn is_reaped_meanwhile(e: &libcontainer::error::LibcontainerError) -> bool {
    let text = chain(e);
    text.contains("/proc/") && text.to_ascii_lowercase().contains("not found")
}

/// An error and its causes, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Read a pid file the launcher wrote.
fn read_pid(path: &Path) -> crate::error::Result<i32> {
    use crate::error::AgentError;
    let s = std::fs::read_to_string(path).map_err(|e| AgentError::io("reading", path, e))?;
    s.trim()
        .parse()
        .map_err(|e| AgentError::internal(format!("pid file {}: {e}", path.display())))
}

#[cfg(test)]
// The tests' serializing guard is held across awaits on purpose: each test has its own runtime,
// and the guard only makes the other tests' threads wait.
#[allow(clippy::await_holding_lock)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// One launcher test at a time: run in parallel within one test process, a container
    /// sometimes exits before its entrypoint prints anything (not understood yet; `make e2e` runs
    /// tests one at a time anyway, and the agent's own tests over ttrpc never showed it).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// These tests create real containers (namespaces, mounts, cgroups): as root only. Elsewhere
    /// they claim nothing and say so, with a marker `make e2e` lists (it runs as root).
    fn root(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
        if nix::unistd::geteuid().is_root() {
            return Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner()));
        }
        eprintln!("NOT RUN: {test}: needs root");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/e2e/not-run");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join(test),
            format!("launcher::{test}: NOT RUN: needs root\n"),
        );
        None
    }

    /// Create and start `cid` from bundle `b` with fresh pipes (stdin left open), then its
    /// whole stdout and stderr once it has exited.
    async fn run_to_end(l: &Launcher, cid: &str, b: &Path, pid_file: &Path) -> (String, String) {
        let (in_r, _in_w) = raw_pipe();
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        l.create(cid, b, pid_file, LaunchIo::Pipes(in_r, out_w, err_w))
            .await
            .expect("create");
        l.start(cid).await.expect("start");
        let mut out = String::new();
        out_r.read_to_string(&mut out).expect("stdout");
        let mut err = String::new();
        err_r.read_to_string(&mut err).expect("stderr");
        (out, err)
    }

    /// A container's cgroup directory on this machine: cgroup v2 (the guest), else the v1 `pids`
    /// hierarchy (a v1 host; every controller gets the same path).
    fn cgroup_dir(path: &str) -> PathBuf {
        let root = Path::new("/sys/fs/cgroup");
        let rel = path.trim_start_matches('/');
        if root.join("cgroup.controllers").exists() {
            root.join(rel)
        } else {
            root.join("pids").join(rel)
        }
    }

    /// Close-on-exec like the agent's own pipes (crate::stdio): a copy of one end inherited
    /// by a later container process would keep the other end from seeing EOF.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = crate::stdio::pipe().expect("pipe");
        (std::fs::File::from(r), w)
    }

    fn raw_pipe() -> (OwnedFd, OwnedFd) {
        crate::stdio::pipe().expect("pipe")
    }

    /// A bundle: a static busybox as the rootfs and a spec in the agent's shape (own pid, mount,
    /// ipc, uts namespaces, a cgroup below the root, /proc and /dev mounted).
    fn bundle(dir: &Path, cid: &str, script: &str, extra: serde_json::Value) -> PathBuf {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        for d in ["proc", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
        symlink("busybox", rootfs.join("bin/sh")).expect("sh link");
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": rootfs, "readonly": false},
            "hostname": "launch-host",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/busybox", "sh", "-c", script],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {
                    "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1000}]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
            ],
            "linux": {
                "cgroupsPath": format!("/kata-cc-launch/{cid}"),
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                               {"type": "uts"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&spec).expect("spec"),
        )
        .expect("config.json");
        dir.to_path_buf()
    }

    /// create, start, output on the agent's pipes, delete (state and cgroup gone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_start_delete_one_busybox_container() {
        let Some(_serial) = root("create_start_delete_one_busybox_container") else {
            return;
        };
        let t = tempfile::tempdir().expect("tempdir");
        let cid = "launch-one";
        let script = "echo host=$(hostname) pid=$$ root=$(ls / | tr '\\n' ,); \
                      echo nofile=$(ulimit -n) >&2; exit 7";
        let b = bundle(t.path(), cid, script, serde_json::json!({}));
        let l = Launcher::new(t.path().join("state"));
        let (in_r, _in_w) = raw_pipe();
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        let pid_file = t.path().join("init.pid");

        let t0 = std::time::Instant::now();
        let pid = l
            .create(cid, &b, &pid_file, LaunchIo::Pipes(in_r, out_w, err_w))
            .await
            .expect("create");
        let create_ms = t0.elapsed().as_millis();
        let written: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        assert_eq!(written, pid);
        // Created, not started: the entrypoint has not run yet, so nothing is on stdout.
        nix::fcntl::fcntl(
            &out_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking");
        let mut buf = [0u8; 64];
        let early = out_r.read(&mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "output before start: {early:?}"
        );
        nix::fcntl::fcntl(
            &out_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .expect("blocking");

        let t1 = std::time::Instant::now();
        l.start(cid).await.expect("start");
        let start_ms = t1.elapsed().as_millis();
        let mut out = String::new();
        out_r.read_to_string(&mut out).expect("stdout");
        let mut err = String::new();
        err_r.read_to_string(&mut err).expect("stderr");
        eprintln!("create {create_ms} ms, start {start_ms} ms; stdout {out:?} stderr {err:?}");
        // Its own UTS namespace with the spec's hostname, PID 1 of its own pid namespace, the
        // busybox rootfs as / (pivot_root), the spec's rlimit.
        assert!(out.contains("host=launch-host"), "{out}");
        assert!(out.contains("pid=1 "), "{out}");
        assert!(out.contains("root=bin,dev,proc,tmp,"), "{out}");
        assert_eq!(err.trim(), "nofile=1000");

        // The init was re-parented to this process or reaped elsewhere; either way it is gone
        // once its output closed and delete must clean the state and the cgroup.
        l.delete(cid).await.expect("delete");
        assert!(!t.path().join("state").join(cid).exists());
        assert!(!cgroup_dir(&format!("kata-cc-launch/{cid}")).exists());
    }

    /// exec into a running container: its namespaces (hostname, pid namespace where the init
    /// is 1), the process JSON's args and env, output on the exec's own pipes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exec_joins_a_running_container() {
        let Some(_serial) = root("exec_joins_a_running_container") else {
            return;
        };
        // As the agent (PID 1 or a subreaper): the orphaned init is re-parented here.
        let t = tempfile::tempdir().expect("tempdir");
        let cid = "launch-exec";
        let b = bundle(t.path(), cid, "read line; exit 0", serde_json::json!({}));
        let l = Launcher::new(t.path().join("state"));
        let (in_r, in_w) = raw_pipe();
        let (_out_r, out_w) = pipe();
        let (_err_r, err_w) = pipe();
        l.create(
            cid,
            &b,
            &t.path().join("init.pid"),
            LaunchIo::Pipes(in_r, out_w, err_w),
        )
        .await
        .expect("create");
        l.start(cid).await.expect("start");

        let process = t.path().join("exec.json");
        let p = serde_json::json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/busybox", "sh", "-c", "echo exec host=$(hostname) init=$(cat /proc/1/cmdline | tr '\\0' ' ') v=$V"],
            "env": ["PATH=/bin", "V=42"],
            "cwd": "/"
        });
        std::fs::write(&process, serde_json::to_vec(&p).expect("process")).expect("exec.json");
        let (ei_r, _ei_w) = raw_pipe();
        let (mut eo_r, eo_w) = pipe();
        let (mut ee_r, ee_w) = pipe();
        let t0 = std::time::Instant::now();
        let epid = l
            .exec(
                cid,
                &process,
                &t.path().join("exec.pid"),
                LaunchIo::Pipes(ei_r, eo_w, ee_w),
            )
            .await
            .expect("exec");
        let exec_ms = t0.elapsed().as_millis();
        let mut out = String::new();
        eo_r.read_to_string(&mut out).expect("exec stdout");
        let mut err = String::new();
        ee_r.read_to_string(&mut err).expect("exec stderr");
        eprintln!("exec {exec_ms} ms (pid {epid}); stdout {out:?} stderr {err:?}");
        assert!(out.contains("exec host=launch-host"), "{out}");
        assert!(out.contains("init=/bin/busybox sh -c read line"), "{out}");
        assert!(out.contains("v=42"), "{out}");

        // Forced delete kills the still running init (the agent's RemoveContainer path).
        // The exec is our child: until it is reaped, the killed init (its pid namespace's
        // reaper) cannot finish exiting. The agent's reaper does this for every child.
        l.delete(cid).await.expect("delete");
        drop(in_w);
        assert!(!t.path().join("state").join(cid).exists());
    }

    /// With libseccomp linked in, a spec's filter is applied: mkdir fails with the errno given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seccomp_filter_from_the_spec_is_enforced() {
        let Some(_serial) = root("a_seccomp_filter_from_the_spec_is_enforced") else {
            return;
        };
        let t = tempfile::tempdir().expect("tempdir");
        let cid = "launch-seccomp";
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]
        });
        let b = bundle(
            t.path(),
            cid,
            "mkdir /tmp/x && echo made || echo denied",
            serde_json::json!({}),
        );
        // The filter goes into the spec's linux section next to the namespaces.
        let cfg = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        spec["linux"]["seccomp"] = seccomp;
        std::fs::write(&cfg, serde_json::to_vec(&spec).expect("spec")).expect("write");
        let l = Launcher::new(t.path().join("state"));
        let (out, err) = run_to_end(&l, cid, &b, &t.path().join("init.pid")).await;
        assert_eq!(out.trim(), "denied", "stderr {err:?}");
        assert!(err.contains("Operation not permitted"), "{err}");
        l.delete(cid).await.expect("delete");
    }

    /// A CRI app container joins its pause container's pid, ipc and uts namespaces by path
    /// (what spec.rs writes for sandbox_pidns and the sandbox's namespaces).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_container_joins_the_pause_namespaces_by_path() {
        let Some(_serial) = root("a_container_joins_the_pause_namespaces_by_path") else {
            return;
        };
        let t = tempfile::tempdir().expect("tempdir");
        let l = Launcher::new(t.path().join("state"));
        let pause_dir = t.path().join("pause");
        let b = bundle(
            &pause_dir,
            "launch-pause",
            "read line",
            serde_json::json!({}),
        );
        let (in_r, in_w) = raw_pipe();
        let (_o, o_w) = pipe();
        let (_e, e_w) = pipe();
        let pause = l
            .create(
                "launch-pause",
                &b,
                &pause_dir.join("pid"),
                LaunchIo::Pipes(in_r, o_w, e_w),
            )
            .await
            .expect("create pause");
        l.start("launch-pause").await.expect("start pause");

        let app_dir = t.path().join("app");
        let script = "echo host=$(hostname) one=$(cat /proc/1/cmdline | tr '\\0' ' ')";
        let b = bundle(&app_dir, "launch-app", script, serde_json::json!({}));
        let cfg = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        spec["linux"]["namespaces"] = serde_json::json!([
            {"type": "mount"},
            {"type": "pid", "path": format!("/proc/{pause}/ns/pid")},
            {"type": "ipc", "path": format!("/proc/{pause}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{pause}/ns/uts")}
        ]);
        // Joining a UTS namespace: the hostname is the pause's (spec.rs drops it too).
        spec.as_object_mut().expect("object").remove("hostname");
        std::fs::write(&cfg, serde_json::to_vec(&spec).expect("spec")).expect("write");
        let (ai_r, _ai_w) = raw_pipe();
        let (mut ao_r, ao_w) = pipe();
        let (mut ae_r, ae_w) = pipe();
        l.create(
            "launch-app",
            &b,
            &app_dir.join("pid"),
            LaunchIo::Pipes(ai_r, ao_w, ae_w),
        )
        .await
        .expect("create app");
        l.start("launch-app").await.expect("start app");
        let mut out = String::new();
        ao_r.read_to_string(&mut out).expect("stdout");
        let mut err = String::new();
        ae_r.read_to_string(&mut err).expect("stderr");
        assert!(out.contains("host=launch-host"), "{out} {err}");
        assert!(
            out.contains("one=/bin/busybox sh -c read line"),
            "{out} {err}"
        );

        l.delete("launch-app").await.expect("delete app");
        l.delete("launch-pause").await.expect("delete pause");
        drop(in_w);
        assert!(!t.path().join("state/launch-app").exists());
        assert!(!t.path().join("state/launch-pause").exists());
    }

    /// A terminal: the pty master arrives on the console socket (runc's protocol, received with
    /// the agent's own `recv_fd`), the process sees a tty on stdin and its output comes on the
    /// master.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_terminal_process_gets_its_pty_through_the_console_socket() {
        let Some(_serial) = root("a_terminal_process_gets_its_pty_through_the_console_socket")
        else {
            return;
        };
        let t = tempfile::tempdir().expect("tempdir");
        let cid = "launch-tty";
        let b = bundle(
            t.path(),
            cid,
            "test -t 0 && echo is-a-tty",
            serde_json::json!({}),
        );
        let cfg = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        spec["process"]["terminal"] = serde_json::json!(true);
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.push(
                serde_json::json!({"destination": "/dev/pts", "type": "devpts",
                "source": "devpts", "options": ["nosuid", "noexec", "newinstance",
                "ptmxmode=0666", "mode=0620"]}),
            );
        }
        std::fs::write(&cfg, serde_json::to_vec(&spec).expect("spec")).expect("write");
        let sock = t.path().join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let receiver = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            crate::container::recv_fd(&s).expect("pty master")
        });
        let l = Launcher::new(t.path().join("state"));
        l.create(cid, &b, &t.path().join("pid"), LaunchIo::Console(sock))
            .await
            .expect("create");
        let master = receiver.join().expect("receiver");
        l.start(cid).await.expect("start");
        let mut m = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        // The master reads EIO once the last slave end is closed (the process exited).
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("is-a-tty"), "{out:?}");
        l.delete(cid).await.expect("delete");
    }

    /// Containers created while other threads allocate hard: the forked helper must never
    /// inherit a held allocator lock (a create that never returns would show it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_while_other_threads_allocate() {
        let Some(_serial) = root("creates_while_other_threads_allocate") else {
            return;
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churners: Vec<_> = (0..4)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut keep = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        keep.push(vec![i as u8; 1 + keep.len() % 4096]);
                        if keep.len() > 512 {
                            keep.clear();
                        }
                    }
                })
            })
            .collect();
        let t = tempfile::tempdir().expect("tempdir");
        let l = Launcher::new(t.path().join("state"));
        let rounds: usize = std::env::var("KATA_CC_LAUNCHER_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let t0 = std::time::Instant::now();
        for n in 0..rounds {
            let cid = format!("launch-stress-{n}");
            let dir = t.path().join(&cid);
            let b = bundle(&dir, &cid, "echo ok", serde_json::json!({}));
            let (out, err) = run_to_end(&l, &cid, &b, &dir.join("pid")).await;
            assert_eq!(out.trim(), "ok", "round {n}: stderr {err:?}");
            l.delete(&cid).await.expect("delete");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in churners {
            c.join().expect("churner");
        }
        eprintln!(
            "{rounds} create/start/delete rounds under allocation churn in {:?}",
            t0.elapsed()
        );
    }

    /// The agent's own config.json (spec.rs from a Kata protobuf spec) is accepted by
    /// libcontainer's spec types and applied: user, additional groups, cwd, env, rlimit, the
    /// guest's /dev/shm bind and cgroup path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The protobuf types are built field by field, as in spec.rs's tests.
    #[allow(clippy::field_reassign_with_default)]
    async fn the_agents_own_config_json_runs() {
        let Some(_serial) = root("the_agents_own_config_json_runs") else {
            return;
        };
        use agent_proto::oci;
        let t = tempfile::tempdir().expect("tempdir");
        let cid = "launch-agent-spec";
        // The busybox rootfs (and a throwaway spec) from the helper; config.json replaced below.
        let b = bundle(t.path(), cid, "true", serde_json::json!({}));
        std::fs::create_dir_all(b.join("rootfs/w")).expect("cwd");
        let shm = t.path().join("shm");
        std::fs::create_dir_all(&shm).expect("shm");
        let mut spec = oci::Spec::default();
        let mut p = oci::Process::default();
        p.Args = vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "echo id=$(busybox id) cwd=$(pwd) a=$A nofile=$(ulimit -n) shm=$(busybox stat -f -c %T /dev/shm)".into(),
        ];
        p.Env = vec!["A=1".into(), "PATH=/bin".into()];
        p.Cwd = "/w".into();
        let mut u = oci::User::default();
        u.UID = 1000;
        u.GID = 1001;
        u.AdditionalGids = vec![5, 6];
        p.User = Some(u).into();
        p.NoNewPrivileges = true;
        let mut rl = oci::POSIXRlimit::default();
        rl.Type = "RLIMIT_NOFILE".into();
        rl.Hard = 1024;
        rl.Soft = 512;
        p.Rlimits = vec![rl];
        spec.Process = Some(p).into();
        let mut proc_m = oci::Mount::default();
        proc_m.destination = "/proc".into();
        proc_m.source = "proc".into();
        proc_m.type_ = "proc".into();
        spec.Mounts = vec![proc_m];
        spec.Linux = Some(oci::Linux::default()).into();
        let g = crate::spec::GuestSetup {
            shm_dir: shm.clone(),
            ..crate::spec::GuestSetup::default()
        };
        let v = crate::spec::config_json(cid, &spec, &b.join("rootfs"), &g).expect("config");
        std::fs::write(b.join("config.json"), serde_json::to_vec(&v).expect("json"))
            .expect("write");
        // The guest's shm is a tmpfs; here a tmpfs as well so the bind shows it.
        nix::mount::mount(
            Some("tmpfs"),
            &shm,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("shm tmpfs");

        let l = Launcher::new(t.path().join("state"));
        let (out, err) = run_to_end(&l, cid, &b, &t.path().join("pid")).await;
        eprintln!("stdout {out:?} stderr {err:?}");
        assert!(
            out.contains("id=uid=1000 gid=1001 groups=5,6"),
            "{out} {err}"
        );
        assert!(
            out.contains("cwd=/w a=1 nofile=512 shm=tmpfs"),
            "{out} {err}"
        );
        assert!(cgroup_dir(&crate::spec::cgroup_path(cid)).exists());
        l.delete(cid).await.expect("delete");
        assert!(!cgroup_dir(&crate::spec::cgroup_path(cid)).exists());
        let _ = nix::mount::umount(&shm);
    }
}
