//! `Containerd`: one private containerd per test (own root, state, socket and kata-cc config
//! under build/e2e/), with `ctr` helpers; it checks for leaks when the test finishes and stops
//! everything it started by PID.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cmd::{self, Background, CmdOutput};
use crate::cri::{Cri, CRI_NAMESPACE};
use crate::image::TestImage;
use crate::leak::{CriNetwork, Scope};
use crate::{paths, procs, pty, NAMESPACE, RUNTIME};

/// containerd's own runtime, used by the harness's self-tests.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// The e2e tests share the host's /run/kata-cc and two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How a test's containerd is set up.
pub struct Options {
    /// Images imported (and unpacked) right after start.
    pub images: Vec<TestImage>,
    /// Whether the kata-cc build products must exist (false only for the harness's own tests,
    /// which use runc).
    pub kata: bool,
    /// CRI on (hack/containerd.sh CRI mode); then `ctr` and the leak check use CRI's
    /// containerd namespace `k8s.io`.
    pub cri: Option<CriSetup>,
}

/// What CRI mode needs from the test.
pub struct CriSetup {
    /// The pause image reference (`sandbox_image`); CRI pulls it when it is not there.
    pub sandbox_image: String,
    /// `HOST:PORT` of a plain-HTTP registry (the loopback test registry).
    pub plain_http_registry: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            images: vec![TestImage::busybox()],
            kata: true,
            cri: None,
        }
    }
}

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pid: i32,
    /// The runtime `run_args` uses: kata-cc, or runc for the harness's own tests.
    pub runtime: &'static str,
    /// The containerd namespace of `ctr` and the leak check (CRI's `k8s.io` in CRI mode).
    pub namespace: &'static str,
    /// The CRI network (hack/containerd.sh `cri.env`) in CRI mode.
    cri_net: Option<CriNetwork>,
    ids: Mutex<Vec<String>>,
    tag: String,
    finished: bool,
    // Last: released only after Drop has cleaned up.
    _serial: MutexGuard<'static, ()>,
}

impl Containerd {
    /// Starts a private containerd with the baked kata-cc config and the busybox image.
    pub fn start(test: &str) -> Containerd {
        Self::start_with(test, Options::default())
    }

    pub fn start_with(test: &str, opts: Options) -> Containerd {
        let tag = format!("{}-{}", sanitize(test), std::process::id());
        Self::start_in(&paths::e2e_dir().join(&tag), &tag, opts)
    }

    /// A private containerd in `dir` (emptied first); `tag` prefixes the ids of [`Self::id`].
    pub fn start_in(dir: &Path, tag: &str, opts: Options) -> Containerd {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if opts.kata {
            paths::require_built();
        }
        let tag = tag.to_string();
        let dir = dir.to_path_buf();
        if dir.exists() {
            // A previous run of this process id that was killed: stop whatever it left.
            stop_script(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // Each test gets its own copy of the config, so a test can change it (the shim reads
        // it afresh for every new sandbox).
        let config = dir.join("kata-cc.toml");
        if opts.kata {
            std::fs::copy(paths::baked_config(), &config)
                .unwrap_or_else(|e| panic!("copy {}: {e}", paths::baked_config().display()));
        }

        let mut c = Command::new("bash");
        c.arg(paths::repo().join("hack/containerd.sh"))
            .arg("start")
            .arg(&dir)
            .env("KATA_CC_CONFIG_PATH", &config)
            .env("CONTAINERD_LOG_LEVEL", "info");
        if let Some(cri) = &opts.cri {
            c.env("CONTAINERD_CRI", "1")
                .env("CONTAINERD_SANDBOX_IMAGE", &cri.sandbox_image);
            if let Some(r) = &cri.plain_http_registry {
                c.env("CONTAINERD_PLAIN_HTTP_REGISTRY", r);
            }
        }
        if opts.kata {
            // The shim of the tests' own build first (containerd.sh puts the default release
            // dir before it, which is the same dir under `make e2e`).
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", paths::bin_dir().display()));
        }
        let out = cmd::run(c, None, paths::ctr_timeout());
        let pid = std::fs::read_to_string(dir.join("containerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let mut cd = Containerd {
            socket: dir.join("containerd.sock"),
            dir,
            pid: pid.unwrap_or(0),
            runtime: if opts.kata { RUNTIME } else { RUNC_RUNTIME },
            namespace: if opts.cri.is_some() {
                CRI_NAMESPACE
            } else {
                NAMESPACE
            },
            cri_net: None,
            ids: Mutex::new(Vec::new()),
            tag,
            finished: false,
            _serial: serial,
        };
        if !out.success() || pid.is_none() {
            cd.finished = true;
            stop_script(&cd.dir);
            panic!("private containerd did not start: {}", out.describe());
        }
        if opts.cri.is_some() {
            cd.cri_net = Some(CriNetwork::read(&cd.dir));
        }
        for img in &opts.images {
            cd.import(img);
        }
        cd
    }

    /// Imports (and unpacks, for ctr run) an image archive.
    pub fn import(&self, img: &TestImage) {
        let archive = img.archive.to_string_lossy().into_owned();
        self.ctr(&["images", "import", &archive]).assert_success();
        let ls = self.ctr(&["images", "ls", "-q"]);
        assert!(
            ls.stdout_str().lines().any(|l| l.trim() == img.name),
            "image {} not listed after import: {}",
            img.name,
            ls.describe()
        );
    }

    /// The kata-cc config file this containerd's shims read (KATA_CC_CONFIG_PATH).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("kata-cc.toml")
    }

    /// Rewrites the config file; later sandboxes use the new text.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::write(&p, f(text)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The CRI network's bridge, subnet and gateway (CRI mode).
    pub fn cri_network(&self) -> &CriNetwork {
        self.cri_net
            .as_ref()
            .expect("this containerd runs without CRI")
    }

    /// A CRI client on this containerd's socket (CRI mode).
    pub fn cri(&self) -> Cri {
        assert!(self.cri_net.is_some(), "this containerd runs without CRI");
        Cri::connect(&self.socket, paths::ctr_timeout())
    }

    /// Remembers an id made elsewhere (a CRI pod sandbox or container id) for the leak check.
    pub fn track(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }

    /// A fresh container (= sandbox, with ctr) id, remembered for the leak check.
    pub fn id(&self, what: &str) -> String {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{}-{}-{}", self.tag, sanitize(what), ids.len());
        ids.push(id.clone());
        id
    }

    /// `ctr --address <sock> -n <ns> <args>` as a Command.
    pub fn ctr_cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(self.namespace)
            .args(args);
        c
    }

    /// A quick ctr call (KATA_CC_E2E_CTR_TIMEOUT).
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        cmd::run(self.ctr_cmd(args), None, paths::ctr_timeout())
    }

    /// A ctr call with stdin and a deadline.
    pub fn ctr_with(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> CmdOutput {
        cmd::run(self.ctr_cmd(args), stdin.map(|s| s.to_vec()), timeout)
    }

    /// A ctr call on a pseudo-terminal (for `-t`).
    pub fn ctr_pty(&self, args: &[&str], input: &[u8], timeout: Duration) -> CmdOutput {
        pty::run_on_pty(self.ctr_cmd(args), input, timeout)
    }

    /// The argument list of `ctr run --rm --runtime <runtime> [opts] IMAGE ID CMD..`.
    pub fn run_args(
        &self,
        id: &str,
        opts: &[&str],
        image: &TestImage,
        command: &[&str],
    ) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--runtime".into(),
            self.runtime.into(),
        ];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.push(image.name.clone());
        a.push(id.to_string());
        a.extend(command.iter().map(|s| s.to_string()));
        a
    }

    /// Runs a container in a VM to completion (KATA_CC_E2E_TIMEOUT).
    pub fn run(&self, id: &str, opts: &[&str], image: &TestImage, command: &[&str]) -> CmdOutput {
        self.run_stdin(id, opts, image, command, None)
    }

    pub fn run_stdin(
        &self,
        id: &str,
        opts: &[&str],
        image: &TestImage,
        command: &[&str],
        stdin: Option<&[u8]>,
    ) -> CmdOutput {
        let args = self.run_args(id, opts, image, command);
        cmd::run(
            self.ctr_cmd(&args),
            stdin.map(|s| s.to_vec()),
            paths::run_timeout(),
        )
    }

    /// Starts `ctr run --rm ...` in the background (e.g. a long-running container to exec into).
    pub fn spawn_run(
        &self,
        id: &str,
        opts: &[&str],
        image: &TestImage,
        command: &[&str],
    ) -> Background {
        let args = self.run_args(id, opts, image, command);
        Background::spawn(self.ctr_cmd(&args), None)
    }

    /// `ctr run --rm ...` in the background with a stdin pipe the test writes and closes.
    pub fn spawn_run_interactive(
        &self,
        id: &str,
        opts: &[&str],
        image: &TestImage,
        command: &[&str],
    ) -> Background {
        let args = self.run_args(id, opts, image, command);
        Background::spawn_interactive(self.ctr_cmd(&args))
    }

    /// Any ctr command in the background with a stdin pipe (e.g. `ctr task exec ... cat`).
    pub fn spawn_ctr_interactive(&self, args: &[&str]) -> Background {
        Background::spawn_interactive(self.ctr_cmd(args))
    }

    /// Any ctr command in the background (e.g. `ctr events`).
    pub fn spawn_ctr(&self, args: &[&str]) -> Background {
        Background::spawn(self.ctr_cmd(args), None)
    }

    pub fn containerd_pid(&self) -> i32 {
        self.pid
    }

    /// The kata-cc shims this containerd started (found by their `-address` argument).
    pub fn shims(&self) -> Vec<procs::Proc> {
        let sock = self.socket.to_string_lossy().into_owned();
        procs::all()
            .into_iter()
            .filter(|p| p.argv0.contains("containerd-shim-kata-cc-v2") && p.cmdline.contains(&sock))
            .collect()
    }

    /// The QEMU process of sandbox `id`: a descendant of one of this containerd's shims whose
    /// command line names the sandbox's state dir.
    pub fn qemu_of(&self, id: &str) -> procs::Proc {
        let all = procs::all();
        let shims: BTreeSet<i32> = self.shims().iter().map(|p| p.pid).collect();
        let under = procs::with_descendants(&all, &shims);
        let sandbox = paths::sandbox_dir(id).to_string_lossy().into_owned();
        let found: Vec<&procs::Proc> = all
            .iter()
            .filter(|p| under.contains(&p.pid) && p.argv0.contains("qemu-system"))
            .filter(|p| p.cmdline.contains(&sandbox))
            .collect();
        match found.as_slice() {
            [one] => (*one).clone(),
            [] => panic!(
                "no QEMU process for sandbox {id} under the shims {shims:?}; processes of this test:\n{}",
                self.scope_processes()
            ),
            many => panic!("several QEMU processes for sandbox {id}: {many:?}"),
        }
    }

    fn scope_processes(&self) -> String {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let scope = Scope {
            dir: &self.dir,
            containerd_pid: Some(self.pid),
            namespace: self.namespace,
            ids: &ids,
        };
        scope
            .processes()
            .iter()
            .map(|p| format!("  {p}\n"))
            .collect()
    }

    /// The end of containerd's log (the shims' logs go there too), for failure messages.
    pub fn log_tail(&self) -> String {
        let p = self.dir.join("containerd.log");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- last lines of {} ---\n{}",
            p.display(),
            lines[from..].join("\n")
        )
    }

    /// Ends the test: asserts nothing is left (processes, mounts, state, containers, tasks),
    /// then stops containerd and removes its dir. Call it at the end of every test.
    pub fn finish(mut self) {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let scope = Scope {
            dir: &self.dir,
            containerd_pid: Some(self.pid),
            namespace: self.namespace,
            ids: &ids,
        };
        // Shims and VMs go away asynchronously after the last delete: allow a grace period.
        let deadline = Instant::now() + paths::leak_grace();
        let leaks = loop {
            let mut leaks = scope.leaks();
            for (what, args) in [
                ("container", ["containers", "ls", "-q"]),
                ("task", ["tasks", "ls", "-q"]),
            ] {
                let out = self.ctr(&args);
                if !out.success() {
                    leaks.push(format!("cannot list {what}s: {}", out.describe()));
                }
                for l in out.stdout_str().lines().filter(|l| !l.trim().is_empty()) {
                    leaks.push(format!("{what} left in containerd: {l}"));
                }
            }
            if let Some(net) = &self.cri_net {
                leaks.extend(net.leaks(&self.dir, &ids));
            }
            if leaks.is_empty() || Instant::now() >= deadline {
                break leaks;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if !leaks.is_empty() {
            let tail = self.log_tail();
            // Drop cleans up (by PID) so the next test starts clean; this test fails.
            panic!(
                "leak check failed after {}s grace:\n  {}\n{tail}",
                paths::leak_grace().as_secs(),
                leaks.join("\n  ")
            );
        }
        self.finished = true;
        let stop = stop_script(&self.dir);
        let scope = Scope {
            dir: &self.dir,
            containerd_pid: None,
            namespace: self.namespace,
            ids: &ids,
        };
        let mut after = scope.leaks();
        if let Some(net) = &self.cri_net {
            after.extend(net.leaks_after_stop(&self.dir, &ids));
        }
        let containerd_alive = procs::alive(self.pid);
        cleanup(&scope);
        assert!(
            stop.success() && !containerd_alive,
            "stopping the private containerd failed (alive: {containerd_alive}): {}",
            stop.describe()
        );
        assert!(
            after.is_empty(),
            "left after stopping containerd:\n  {}",
            after.join("\n  ")
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The test failed (or forgot finish()): stop everything it started so later tests
        // start clean. Nothing here is killed by name: PIDs come from /proc and the pid file.
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        stop_script(&self.dir);
        let scope = Scope {
            dir: &self.dir,
            containerd_pid: None,
            namespace: self.namespace,
            ids: &ids,
        };
        cleanup(&scope);
        eprintln!(
            "kata-cc-tests: cleaned up after a failed test; containerd log kept in {}",
            self.dir.display()
        );
    }
}

/// Kills (by PID) processes of the scope, unmounts its mounts and removes its sandbox dirs.
fn cleanup(scope: &Scope<'_>) {
    for _ in 0..3 {
        let ps = scope.processes();
        if ps.is_empty() {
            break;
        }
        for p in &ps {
            procs::kill_pid(p.pid);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for m in scope.mounts() {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    for id in scope.ids {
        let _ = std::fs::remove_dir_all(paths::sandbox_dir(id));
    }
}

fn stop_script(dir: &Path) -> CmdOutput {
    let mut c = Command::new("bash");
    c.arg(paths::repo().join("hack/containerd.sh"))
        .arg("stop")
        .arg(dir);
    cmd::run(c, None, Duration::from_secs(180))
}

/// Container ids allow [A-Za-z0-9_.-]; test names may have `::`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A path as a TOML string value.
pub fn toml_quoted(p: &std::path::Path) -> String {
    format!("\"{}\"", p.display())
}

/// Sets `key = value` (value as TOML text) in `[section]` of a config text; panics if the key
/// is not there (the test would otherwise prove nothing).
pub fn toml_set(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == format!("[{section}]");
        }
        let is_key = t.split_once('=').is_some_and(|(k, _)| k.trim() == key);
        if in_section && is_key && !done {
            out.push(format!("{key} = {value}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(done, "config has no key {key} in [{section}]:\n{text}");
    out.join("\n") + "\n"
}

/// Sets `key = value` (value as TOML text) in `[section]` of a config text, adding the key as
/// the section's first line when it is not there (a default the baked config leaves out).
pub fn toml_set_or_add(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let mut in_section = false;
    let has_key = text.lines().any(|line| {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == header;
        }
        in_section && t.split_once('=').is_some_and(|(k, _)| k.trim() == key)
    });
    if has_key {
        return toml_set(text, section, key, value);
    }
    assert!(
        text.lines().any(|l| l.trim() == header),
        "config has no section {header}:\n{text}"
    );
    let mut out = Vec::new();
    for line in text.lines() {
        out.push(line.to_string());
        if line.trim() == header {
            out.push(format!("{key} = {value}"));
        }
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_set_or_add_sets_or_adds() {
        let text = "[hypervisor.qemu]\npath = \"q\"\n\n[runtime]\nenable_debug = false\n";
        let added = toml_set_or_add(text, "runtime", "internetworking_model", "\"none\"");
        assert_eq!(
            added,
            "[hypervisor.qemu]\npath = \"q\"\n\n[runtime]\ninternetworking_model = \"none\"\nenable_debug = false\n"
        );
        let set = toml_set_or_add(&added, "runtime", "internetworking_model", "\"tcfilter\"");
        assert!(
            set.contains("internetworking_model = \"tcfilter\"\n"),
            "{set}"
        );
        assert!(!set.contains("none"), "{set}");
    }
}
