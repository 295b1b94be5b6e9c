//! CreateSandbox's sandbox-wide setup, undone by DestroySandbox: the IPC and UTS namespaces
//! every container joins (the UTS one carries the pod's hostname) and the sandbox's tmpfs
//! storages (the pod's `/dev/shm`).
//!
//! The namespaces are made without a process: a thread of its own unshares them, sets the
//! hostname, and binds `/proc/thread-self/ns/{ipc,uts}` onto files; the bind mounts keep them
//! alive after the thread ends, and the launcher joins them by those paths.

use std::path::{Path, PathBuf};

use agent_proto::agent::CreateSandboxRequest;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::AgentError;
use crate::paths::Paths;
use crate::storage;

/// The sandbox's own namespaces, as files the launcher can join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNs {
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

/// What CreateSandbox set up.
#[derive(Debug, Default)]
pub struct SandboxSetup {
    pub sandbox_id: String,
    pub hostname: String,
    pub dns: Vec<String>,
    pub ns: Option<SharedNs>,
    /// Mounted storages, in mount order.
    pub mounts: Vec<PathBuf>,
}

fn internal(what: String) -> impl FnOnce(nix::errno::Errno) -> AgentError {
    move |e| AgentError::internal(format!("{what}: {e}"))
}

/// Makes a fresh IPC and UTS namespace (hostname set when given) bound at `<dir>/ipc` and
/// `<dir>/uts`.
pub fn make_namespaces(dir: &Path, hostname: &str) -> Result<SharedNs, AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("creating", dir, e))?;
    let ns = SharedNs {
        ipc: dir.join("ipc"),
        uts: dir.join("uts"),
    };
    for f in [&ns.ipc, &ns.uts] {
        std::fs::File::create(f).map_err(|e| AgentError::io("creating", f, e))?;
    }
    let (ipc, uts, host) = (ns.ipc.clone(), ns.uts.clone(), hostname.to_string());
    // A thread that does nothing else: its namespaces change, no other thread's do.
    let made = std::thread::Builder::new()
        .name("sandbox-ns".into())
        .spawn(move || -> Result<(), AgentError> {
            unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .map_err(internal("unsharing the IPC and UTS namespaces".into()))?;
            if !host.is_empty() {
                nix::unistd::sethostname(&host)
                    .map_err(|e| AgentError::invalid(format!("hostname {host:?}: {e}")))?;
            }
            for (kind, file) in [("ipc", &ipc), ("uts", &uts)] {
                let src = format!("/proc/thread-self/ns/{kind}");
                mount(
                    Some(src.as_str()),
                    file.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(internal(format!("binding {src} on {}", file.display())))?;
            }
            Ok(())
        })
        .map_err(|e| AgentError::internal(format!("starting the namespace thread: {e}")))?
        .join()
        .map_err(|_| AgentError::internal("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = remove_namespaces(&ns);
        return Err(e);
    }
    Ok(ns)
}

/// Unbinds the namespace files (the namespaces end with their last user) and removes them.
pub fn remove_namespaces(ns: &SharedNs) -> Vec<String> {
    let mut errs = Vec::new();
    for f in [&ns.ipc, &ns.uts] {
        match umount2(f.as_path(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errs.push(format!("unmounting {}: {e}", f.display())),
        }
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push(format!("removing {}: {e}", f.display()));
            }
        }
    }
    errs
}

/// Checks and performs a CreateSandboxRequest; on failure nothing of it stays.
pub fn create(paths: &Paths, req: &CreateSandboxRequest) -> Result<SandboxSetup, AgentError> {
    if req.sandbox_pidns {
        return Err(AgentError::invalid(
            "CreateSandbox: sandbox_pidns = true is not supported (there is no separate pause \
             process): a container shares the pause container's PID namespace with \
             CreateContainerRequest.sandbox_pidns",
        ));
    }
    if !req.guest_hook_path.is_empty() {
        return Err(AgentError::invalid(format!(
            "CreateSandbox: guest_hook_path {:?}: guest hooks are not supported",
            req.guest_hook_path
        )));
    }
    if let Some(m) = req.kernel_modules.first() {
        return Err(AgentError::invalid(format!(
            "CreateSandbox: kernel module {:?}: loading kernel modules is not supported",
            m.name
        )));
    }
    let ns_dir = paths.ns_dir();
    // Everything is checked before anything is mounted.
    let tmpfs = req
        .storages
        .iter()
        .map(|s| storage::sandbox_storage(&paths.sandbox, &ns_dir, s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::invalid(format!("CreateSandbox: {e}")))?;
    let mut setup = SandboxSetup {
        sandbox_id: req.sandbox_id.clone(),
        hostname: req.hostname.clone(),
        dns: req.dns.iter().filter(|l| !l.is_empty()).cloned().collect(),
        ns: None,
        mounts: Vec::new(),
    };
    setup.ns = Some(
        make_namespaces(&ns_dir, &req.hostname).map_err(|e| match e {
            AgentError::InvalidArgument(m) => {
                AgentError::InvalidArgument(format!("CreateSandbox: {m}"))
            }
            other => AgentError::Internal(format!("CreateSandbox: {other}")),
        })?,
    );
    for t in tmpfs {
        let done = std::fs::create_dir_all(&t.mount_point)
            .map_err(|e| AgentError::io("CreateSandbox: creating", &t.mount_point, e))
            .and_then(|()| {
                mount(
                    Some(t.source.as_str()),
                    t.mount_point.as_path(),
                    Some("tmpfs"),
                    t.flags,
                    Some(t.data.as_str()),
                )
                .map_err(|e| {
                    AgentError::internal(format!(
                        "CreateSandbox: mounting tmpfs on {} ({}): {e}",
                        t.mount_point.display(),
                        t.data
                    ))
                })
            });
        if let Err(e) = done {
            for m in setup.teardown() {
                log::warn!("CreateSandbox rollback: {m}");
            }
            return Err(e);
        }
        setup.mounts.push(t.mount_point.clone());
    }
    Ok(setup)
}

impl SandboxSetup {
    /// Unmounts the storages and unbinds the namespaces; returns what failed.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        for m in self.mounts.drain(..).rev() {
            match umount2(m.as_path(), MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => errs.push(format!("unmounting {}: {e}", m.display())),
            }
            let _ = std::fs::remove_dir(&m);
        }
        if let Some(ns) = self.ns.take() {
            errs.extend(remove_namespaces(&ns));
            if let Some(d) = ns.ipc.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidns_hooks_and_modules_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let paths = Paths {
            containers: t.path().join("c"),
            shared: t.path().join("s"),
            sandbox: t.path().join("sb"),
        };
        let mut r = CreateSandboxRequest::new();
        r.sandbox_pidns = true;
        let e = create(&paths, &r).unwrap_err().to_string();
        assert!(e.contains("sandbox_pidns"), "{e}");
        let mut r = CreateSandboxRequest::new();
        r.guest_hook_path = "/x".into();
        assert!(create(&paths, &r)
            .unwrap_err()
            .to_string()
            .contains("\"/x\""));
        let mut r = CreateSandboxRequest::new();
        let mut m = agent_proto::agent::KernelModule::new();
        m.name = "evil".into();
        r.kernel_modules = vec![m];
        assert!(create(&paths, &r)
            .unwrap_err()
            .to_string()
            .contains("\"evil\""));
        // A bad storage is refused before anything is made.
        let mut r = CreateSandboxRequest::new();
        let mut s = agent_proto::agent::Storage::new();
        s.driver = "local".into();
        r.storages = vec![s];
        let e = create(&paths, &r).unwrap_err().to_string();
        assert!(e.contains("\"local\""), "{e}");
        assert!(!paths.sandbox.exists());
    }
}
