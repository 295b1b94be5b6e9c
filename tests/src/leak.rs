//! The leak checker: what of a test may still exist on the host after it (processes, mounts,
//! files in the shim's state dirs), found through /proc and the file system.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{paths, procs};

/// What belongs to one test: its private containerd dir and the container/sandbox ids it used.
pub struct Scope<'a> {
    pub dir: &'a Path,
    pub containerd_pid: Option<i32>,
    pub namespace: &'a str,
    pub ids: &'a [String],
}

impl Scope<'_> {
    /// Strings that appear in the command line of every process started for this test:
    /// the containerd dir (shims get `-address <dir>/containerd.sock`) and each sandbox dir
    /// (QEMU and the vsock backend get paths under it).
    fn markers(&self) -> Vec<String> {
        let mut m = vec![format!("{}/", self.dir.display())];
        for id in self.ids {
            m.push(format!("{}/", paths::sandbox_dir(id).display()));
        }
        m
    }

    /// Processes of this test other than its containerd: matched by marker or descended from
    /// containerd or from a matched process.
    pub fn processes(&self) -> Vec<procs::Proc> {
        let all = procs::all();
        let me = std::process::id() as i32;
        let markers = self.markers();
        let mut roots: BTreeSet<i32> = all
            .iter()
            .filter(|p| p.pid != me && Some(p.pid) != self.containerd_pid)
            .filter(|p| markers.iter().any(|m| p.cmdline.contains(m.as_str())))
            .map(|p| p.pid)
            .collect();
        if let Some(c) = self.containerd_pid {
            roots.insert(c);
        }
        let set = procs::with_descendants(&all, &roots);
        all.into_iter()
            .filter(|p| set.contains(&p.pid) && Some(p.pid) != self.containerd_pid)
            .filter(|p| procs::alive(p.pid))
            .collect()
    }

    /// Mount points under the test's dir or a sandbox dir of its ids, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let markers = self.markers();
        let mut v: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|mp| markers.iter().any(|m| mp.starts_with(m.as_str())))
            .map(PathBuf::from)
            .collect();
        v.sort();
        v.reverse();
        v
    }

    /// State the shim must remove: its sandbox dirs and containerd's bundle dirs for our ids.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for id in self.ids {
            let s = paths::sandbox_dir(id);
            if s.exists() {
                v.push(s);
            }
            let b = self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(self.namespace)
                .join(id);
            if b.exists() {
                v.push(b);
            }
        }
        v
    }

    /// Everything left, one line each; empty when clean.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.processes() {
            out.push(format!("process left: {p}"));
        }
        for m in self.mounts() {
            out.push(format!("mount left: {}", m.display()));
        }
        for f in self.files() {
            out.push(format!("state left: {}{}", f.display(), list_dir(&f)));
        }
        out
    }
}

fn list_dir(p: &Path) -> String {
    match std::fs::read_dir(p) {
        Ok(rd) => {
            let names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            format!(" (contains: {})", names.join(", "))
        }
        Err(_) => String::new(),
    }
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
