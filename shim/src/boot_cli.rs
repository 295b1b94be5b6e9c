//! `kata-cc boot-check`: boots the guest image through the shim's own VM builder (`Vm::start`:
//! the same QEMU command line, vsock backend and agent wait as a pod) and reports what the guest
//! console says: the rootfs verified (and its root hash), the agent answered, a stand-in payload
//! started, or the init refused the rootfs. `--tamper` boots a changed copy instead (a flipped
//! byte in the data area or in the hash tree, a wrong or no root hash on the command line), to
//! show that the guest refuses it. The image checks (tests/tests/image.rs) use the library part.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::manifest::{Manifest, ManifestError};
use crate::sizing::VmSize;
use crate::vm::accel::Accel;
use crate::vm::{Vm, VmError, VmSpec};

pub const USAGE: &str = "  boot-check [--config PATH] [--guest DIR] [--tamper data|hash-tree|wrong-root-hash|no-root-hash]\n             [--expect agent|payload|refused] [--timeout S] [--console]\n                           boot the guest through the shim's VM builder and report its console\n";

/// The init's line when dm-verity refuses the rootfs (guest/src/bin/kata-cc-init.rs).
pub const VERIFY_FAIL: &str = "kata-cc: rootfs did not verify";
/// The init's line when the rootfs verified; the root hash follows.
pub const VERIFIED: &str = "kata-cc: rootfs verified (root hash ";
/// hack/guest/test-agent's line: the verified rootfs was mounted and PID 1 handed over.
pub const PAYLOAD_MARKER: &str = "kata-cc-test-agent: started";
/// The agent's line when it listens (what `Vm::start` waits for on the console).
pub use agent_proto::contract::READY_LINE as AGENT_READY;

/// A change to the guest that dm-verity (or the init) must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// One inverted byte in the middle of the data area.
    DataByte,
    /// One inverted byte in the hash tree (one block after the verity superblock).
    HashTreeByte,
    /// The command line's root hash with its last digit changed.
    WrongRootHash,
    /// No `kata_cc.roothash=` on the command line.
    NoRootHash,
}

impl Tamper {
    pub const ALL: [Tamper; 4] = [
        Tamper::DataByte,
        Tamper::HashTreeByte,
        Tamper::WrongRootHash,
        Tamper::NoRootHash,
    ];

    pub fn parse(s: &str) -> Option<Tamper> {
        Tamper::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Tamper::DataByte => "data",
            Tamper::HashTreeByte => "hash-tree",
            Tamper::WrongRootHash => "wrong-root-hash",
            Tamper::NoRootHash => "no-root-hash",
        }
    }
}

#[derive(Debug, Error)]
pub enum BootCheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel_params has no kata_cc.roothash=<hex>: {0}")]
    NoRootHashParam(String),
    #[error("hash offset {offset} from the manifest is past the end of {path} ({len} bytes)")]
    OffsetPastEnd {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootCheckError {
    let path = path.to_path_buf();
    move |source| BootCheckError::Io { what, path, source }
}

/// Points `cfg` at the guest baked in `dir` (vmlinuz, initrd.img, rootfs.img, and the kernel
/// command line from `cmdline`), keeping QEMU, vsock and sizing settings.
pub fn use_guest_dir(cfg: &mut Config, dir: &Path) -> Result<(), BootCheckError> {
    let cmdline = dir.join("cmdline");
    let params = std::fs::read_to_string(&cmdline).map_err(io_err("read", &cmdline))?;
    let q = &mut cfg.hypervisor.qemu;
    q.kernel = dir.join("vmlinuz");
    q.initrd = dir.join("initrd.img");
    q.image = dir.join("rootfs.img");
    q.kernel_params = params.trim().to_string();
    Ok(())
}

/// The manifest beside the configured image (baked `build/guest/` and installed
/// `/usr/share/kata-cc/` both keep it there).
pub fn manifest_of(cfg: &Config) -> Result<Manifest, BootCheckError> {
    let dir = cfg.hypervisor.qemu.image.parent().unwrap_or(Path::new("."));
    Ok(Manifest::load_dir(dir)?)
}

/// Inverts the byte at `offset` of `path` in place.
pub fn flip_byte(path: &Path, offset: u64) -> Result<(), BootCheckError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let len = f.metadata().map_err(io_err("stat", path))?.len();
    if offset >= len {
        return Err(BootCheckError::OffsetPastEnd {
            path: path.to_path_buf(),
            offset,
            len,
        });
    }
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek", path))?;
    f.read_exact(&mut b).map_err(io_err("read", path))?;
    b[0] = !b[0];
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek", path))?;
    f.write_all(&b).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))?;
    Ok(())
}

/// The root hash on a kernel command line.
pub fn root_hash_param(params: &str) -> Option<&str> {
    params
        .split_whitespace()
        .find_map(|p| p.strip_prefix("kata_cc.roothash="))
}

/// Changes `cfg` so the boot uses a tampered guest; copies go to `work_dir`. Returns what was
/// done, for the report.
pub fn apply_tamper(
    cfg: &mut Config,
    tamper: Tamper,
    work_dir: &Path,
) -> Result<String, BootCheckError> {
    let q = &mut cfg.hypervisor.qemu;
    match tamper {
        Tamper::DataByte | Tamper::HashTreeByte => {
            let hash_offset = manifest_of(cfg)?.rootfs.hash_offset;
            let q = &mut cfg.hypervisor.qemu;
            let copy = work_dir.join(format!("rootfs-{}.img", tamper.name()));
            std::fs::copy(&q.image, &copy).map_err(io_err("copy rootfs to", &copy))?;
            // Data: the middle of the erofs area. Hash tree: past the verity superblock block.
            let at = match tamper {
                Tamper::DataByte => hash_offset / 2,
                _ => hash_offset + 4096 + 100,
            };
            flip_byte(&copy, at)?;
            q.image = copy;
            Ok(format!(
                "byte {at} of {} inverted ({} area)",
                q.image.display(),
                if tamper == Tamper::DataByte {
                    "data"
                } else {
                    "hash tree"
                }
            ))
        }
        Tamper::WrongRootHash => {
            let hash = root_hash_param(&q.kernel_params)
                .ok_or_else(|| BootCheckError::NoRootHashParam(q.kernel_params.clone()))?
                .to_string();
            let mut wrong = hash.clone();
            let last = if wrong.pop() == Some('0') { '1' } else { '0' };
            wrong.push(last);
            q.kernel_params = q.kernel_params.replace(
                &format!("kata_cc.roothash={hash}"),
                &format!("kata_cc.roothash={wrong}"),
            );
            Ok(format!(
                "root hash {hash} replaced by {wrong} on the command line"
            ))
        }
        Tamper::NoRootHash => {
            let hash = root_hash_param(&q.kernel_params)
                .ok_or_else(|| BootCheckError::NoRootHashParam(q.kernel_params.clone()))?
                .to_string();
            q.kernel_params = q
                .kernel_params
                .split_whitespace()
                .filter(|p| !p.starts_with("kata_cc.roothash="))
                .collect::<Vec<_>>()
                .join(" ");
            Ok(format!(
                "kata_cc.roothash={hash} removed from the command line"
            ))
        }
    }
}

/// What a boot came to, by the console and `Vm::start`'s result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `Vm::start` returned: the agent answered Health.Check.
    AgentReady,
    /// The stand-in payload (hack/guest/test-agent) started as PID 1 on a verified rootfs.
    PayloadStarted,
    /// The init refused the rootfs and QEMU exited by itself, nothing else started.
    Refused,
    /// Anything else (timeout, crash, a refusal with the payload started, ...).
    Failed,
}

impl Verdict {
    pub fn parse_expect(s: &str) -> Option<Verdict> {
        match s {
            "agent" => Some(Verdict::AgentReady),
            "payload" => Some(Verdict::PayloadStarted),
            "refused" => Some(Verdict::Refused),
            _ => None,
        }
    }
}

/// One boot: what `Vm::start` said and everything the guest printed.
#[derive(Debug)]
pub struct BootReport {
    pub id: String,
    pub state_dir: PathBuf,
    pub image: PathBuf,
    pub kernel_params: String,
    /// `Vm::start`: the time until the agent answered, or its error.
    pub start: Result<Duration, VmError>,
    pub accel: Option<Accel>,
    /// Stopping the VM after a successful start, if that failed.
    pub stop_error: Option<String>,
    /// The whole guest console (serial port).
    pub console: String,
}

impl BootReport {
    /// The first console line with `needle`, from `needle` on (firmware escape sequences may
    /// precede it on the same line).
    fn console_line(&self, needle: &str) -> Option<&str> {
        self.console
            .lines()
            .find_map(|l| l.find(needle).map(|i| l[i..].trim_end_matches('\r')))
    }

    /// The root hash of a `kata-cc: rootfs verified (root hash H)` console line.
    pub fn verified_root_hash(&self) -> Option<&str> {
        let line = self.console_line(VERIFIED)?;
        let rest = &line[line.find(VERIFIED)? + VERIFIED.len()..];
        rest.split(')').next()
    }

    /// The init's `kata-cc: rootfs did not verify ...` line.
    pub fn refusal(&self) -> Option<&str> {
        self.console_line(VERIFY_FAIL)
    }

    /// The stand-in payload's start line.
    pub fn payload_started(&self) -> Option<&str> {
        self.console_line(PAYLOAD_MARKER)
    }

    /// How QEMU exited, when it exited by itself before the agent answered.
    pub fn exited_by_itself(&self) -> Option<&str> {
        match &self.start {
            Err(VmError::BootFailed { exit, .. }) => Some(exit),
            _ => None,
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.start.is_ok() && self.refusal().is_none() {
            return Verdict::AgentReady;
        }
        let exited = self.exited_by_itself().is_some();
        let agent_started = self.console.contains(AGENT_READY);
        match (self.refusal(), self.payload_started()) {
            (Some(_), None) if exited && !agent_started => Verdict::Refused,
            (None, Some(_)) if exited && self.verified_root_hash().is_some() => {
                Verdict::PayloadStarted
            }
            _ => Verdict::Failed,
        }
    }

    /// The report `kata-cc boot-check` prints.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "image:   {}\nparams:  {}\n",
            self.image.display(),
            self.kernel_params
        );
        match self.verified_root_hash() {
            Some(h) => s.push_str(&format!("rootfs:  verified (root hash {h})\n")),
            None => match self.refusal() {
                Some(l) => s.push_str(&format!("rootfs:  refused: {}\n", l.trim())),
                None => s.push_str("rootfs:  no verification line on the console\n"),
            },
        }
        if let Some(l) = self.payload_started() {
            s.push_str(&format!("payload: {}\n", l.trim()));
        }
        match &self.start {
            Ok(t) => s.push_str(&format!(
                "agent:   answered after {:.2} s ({})\n",
                t.as_secs_f64(),
                self.accel.map(|a| a.as_qemu()).unwrap_or("?")
            )),
            Err(e) => s.push_str(&format!("vm:      {e}\n")),
        }
        if let Some(e) = &self.stop_error {
            s.push_str(&format!("stop:    {e}\n"));
        }
        s
    }
}

/// Opens the console log as soon as QEMU creates it and keeps it open, so that its text can be
/// read after `Vm::start` removed the state dir (it does on every failure).
async fn hold_console(path: PathBuf, done: Arc<AtomicBool>) -> Option<std::fs::File> {
    loop {
        if let Ok(f) = std::fs::File::open(&path) {
            return Some(f);
        }
        if done.load(Ordering::Acquire) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Boots `cfg`'s guest as VM `id` (state in `cfg.runtime.state_root/<id>`), stops it again if
/// the agent answered, and reports. Needs a tokio runtime with time and I/O enabled.
pub async fn boot(cfg: &Config, id: &str) -> BootReport {
    let q = &cfg.hypervisor.qemu;
    let state_dir = cfg.runtime.state_root.join(id);
    let done = Arc::new(AtomicBool::new(false));
    let console = tokio::spawn(hold_console(
        state_dir.join(crate::vm::qemu::CONSOLE_LOG),
        done.clone(),
    ));
    let spec = VmSpec {
        id: id.to_string(),
        size: VmSize {
            memory_mib: q.default_memory,
            vcpus: q.default_vcpus.max(1),
        },
        state_dir: state_dir.clone(),
        host_data: None,
    };
    let started = Vm::start(cfg, spec).await;
    done.store(true, Ordering::Release);
    let file = console.await.ok().flatten();
    let mut report = BootReport {
        id: id.to_string(),
        state_dir,
        image: q.image.clone(),
        kernel_params: q.kernel_params.clone(),
        start: Ok(Duration::ZERO),
        accel: None,
        stop_error: None,
        console: String::new(),
    };
    report.start = match started {
        Ok(mut vm) => {
            report.accel = Some(vm.accel());
            let t = vm.boot_time();
            if let Err(e) = vm.stop().await {
                report.stop_error = Some(e.to_string());
            }
            Ok(t)
        }
        Err(e) => Err(e),
    };
    if let Some(mut f) = file {
        let mut bytes = Vec::new();
        // Read from the start: the state dir (and the file's name) may be gone already.
        if f.seek(SeekFrom::Start(0)).is_ok() && f.read_to_end(&mut bytes).is_ok() {
            report.console = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    report
}

/// A private scratch dir (tampered copies, VM state) removed on drop. Under /tmp: the unix
/// socket paths inside must stay short.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("kcboot-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Args {
    config: Option<String>,
    guest: Option<PathBuf>,
    tamper: Option<Tamper>,
    expect: Option<Verdict>,
    timeout: Option<u64>,
    /// Print the whole guest console even when the boot came to what was expected.
    console: bool,
}

/// A bad `kata-cc boot-check` command line, naming the argument.
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error("{0} needs a value")]
    NoValue(String),
    #[error("--tamper {0:?}: expected data, hash-tree, wrong-root-hash or no-root-hash")]
    Tamper(String),
    #[error("--expect {0:?}: expected agent, payload or refused")]
    Expect(String),
    #[error("--timeout {0:?}: expected whole seconds")]
    Timeout(String),
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

fn parse_args(args: &[String]) -> Result<Args, UsageError> {
    let mut a = Args {
        config: None,
        guest: None,
        tamper: None,
        expect: None,
        timeout: None,
        console: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError::NoValue(flag.clone()))
        };
        match flag.as_str() {
            "--config" => a.config = Some(value()?),
            "--guest" => a.guest = Some(PathBuf::from(value()?)),
            "--tamper" => {
                let v = value()?;
                a.tamper = Some(Tamper::parse(&v).ok_or(UsageError::Tamper(v))?)
            }
            "--expect" => {
                let v = value()?;
                a.expect = Some(Verdict::parse_expect(&v).ok_or(UsageError::Expect(v))?)
            }
            "--timeout" => {
                let v = value()?;
                a.timeout = Some(v.parse().map_err(|_| UsageError::Timeout(v))?)
            }
            "--console" => a.console = true,
            other => return Err(UsageError::Unknown(other.into())),
        }
    }
    Ok(a)
}

/// `kata-cc boot-check ...`: 0 when the boot came to what was expected (default: the agent
/// answers; with --tamper: the guest refuses), 1 when not, 2 on bad usage.
pub fn main(args: &[String]) -> ExitCode {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kata-cc boot-check: {e}\nusage:\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let expect = a.expect.unwrap_or(match a.tamper {
        Some(_) => Verdict::Refused,
        None => Verdict::AgentReady,
    });
    match run(&a) {
        Ok(report) => {
            print!("{}", report.describe());
            let got = report.verdict();
            if got == expect {
                println!("result:  ok ({got:?}, as expected)");
                if a.console {
                    println!("---- guest console ----\n{}----", report.console);
                }
                ExitCode::SUCCESS
            } else {
                println!("result:  FAILED: {got:?}, expected {expect:?}");
                println!("---- guest console ----\n{}----", report.console);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kata-cc boot-check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<BootReport, BootCheckError> {
    let path = Config::locate(a.config.as_deref());
    let mut cfg = Config::load(&path)?;
    if let Some(dir) = &a.guest {
        use_guest_dir(&mut cfg, dir)?;
    }
    if let Some(t) = a.timeout {
        cfg.hypervisor.qemu.boot_timeout = t;
    }
    let scratch = ScratchDir::new().map_err(io_err("create", &std::env::temp_dir()))?;
    cfg.runtime.state_root = scratch.0.join("s");
    println!("config:  {}", path.display());
    if let Some(t) = a.tamper {
        println!("tamper:  {}", apply_tamper(&mut cfg, t, &scratch.0)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime in", &scratch.0))?;
    let report = rt.block_on(boot(&cfg, "boot-check"));
    drop(rt);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_a_flag_and_other_words_are_refused() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse_args(&args(&["--timeout", "5", "--console"])).expect("parse");
        assert!(a.console);
        assert_eq!(a.timeout, Some(5));
        assert!(!parse_args(&args(&[])).expect("parse").console);
        let e = parse_args(&args(&["--consoles"])).err().expect("unknown");
        assert_eq!(e.to_string(), "unknown argument \"--consoles\"");
    }

    fn config_with(dir: &Path, params: &str) -> Config {
        let text = format!(
            "[hypervisor.qemu]\npath = \"/bin/true\"\nkernel = \"{d}/vmlinuz\"\ninitrd = \"{d}/initrd.img\"\nimage = \"{d}/rootfs.img\"\nkernel_params = \"{params}\"\n",
            d = dir.display()
        );
        Config::parse(&text, &dir.join("c.toml")).expect("config")
    }

    fn manifest_json(hash_offset: u64) -> String {
        format!(
            r#"{{"format":2,"cmdline":"","default_policy":{{"name":"a","path":"p","sha256":"s"}},
            "files":{{}},
            "inputs":{{"agent_sha256":"","busybox_sha256":"","init_sha256":"","source_date_epoch":0}},
            "kernel":{{"compiler":"","config_changes_sha256":"","config_flavour":"","config_package":"",
                       "config_sha256":"","source_package":"","source_version":"","version":"6.12"}},
            "rootfs":{{"data_blocks":2,"filesystem":"erofs","hash_offset":{hash_offset},"root_hash":"ab","salt":"00","verity":"v"}},
            "snp_measurement":{{"computed":false}}}}"#
        )
    }

    #[test]
    fn byte_tampering_changes_one_byte_of_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let img: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("rootfs.img"), &img).unwrap();
        std::fs::write(dir.path().join("manifest.json"), manifest_json(8192)).unwrap();
        for (t, at) in [
            (Tamper::DataByte, 4096usize),
            (Tamper::HashTreeByte, 8192 + 4096 + 100),
        ] {
            let mut cfg = config_with(dir.path(), "x");
            let what = apply_tamper(&mut cfg, t, dir.path()).unwrap();
            assert!(what.contains(&format!("byte {at} ")), "{what}");
            let copy = std::fs::read(&cfg.hypervisor.qemu.image).unwrap();
            assert_ne!(cfg.hypervisor.qemu.image, dir.path().join("rootfs.img"));
            let diff: Vec<usize> = (0..img.len()).filter(|&i| img[i] != copy[i]).collect();
            assert_eq!(diff, vec![at], "{t:?}");
            assert_eq!(copy[at], !img[at]);
        }
        // The original is untouched.
        assert_eq!(std::fs::read(dir.path().join("rootfs.img")).unwrap(), img);
        let e = flip_byte(&dir.path().join("rootfs.img"), 16384).unwrap_err();
        assert!(matches!(e, BootCheckError::OffsetPastEnd { .. }), "{e}");
    }

    #[test]
    fn root_hash_tampering_edits_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let params = "console=ttyS0 kata_cc.roothash=ab10 kata_cc.hashoffset=8192";
        let mut cfg = config_with(dir.path(), params);
        apply_tamper(&mut cfg, Tamper::WrongRootHash, dir.path()).unwrap();
        assert_eq!(
            cfg.hypervisor.qemu.kernel_params,
            "console=ttyS0 kata_cc.roothash=ab11 kata_cc.hashoffset=8192"
        );
        let mut cfg = config_with(dir.path(), params);
        apply_tamper(&mut cfg, Tamper::NoRootHash, dir.path()).unwrap();
        assert_eq!(
            cfg.hypervisor.qemu.kernel_params,
            "console=ttyS0 kata_cc.hashoffset=8192"
        );
        let mut cfg = config_with(dir.path(), "console=ttyS0");
        let e = apply_tamper(&mut cfg, Tamper::NoRootHash, dir.path()).unwrap_err();
        assert!(matches!(e, BootCheckError::NoRootHashParam(_)), "{e}");
        for t in Tamper::ALL {
            assert_eq!(Tamper::parse(t.name()), Some(t));
        }
    }

    fn report(start: Result<Duration, VmError>, console: &str) -> BootReport {
        BootReport {
            id: "t".into(),
            state_dir: PathBuf::from("/s"),
            image: PathBuf::from("/r.img"),
            kernel_params: String::new(),
            start,
            accel: None,
            stop_error: None,
            console: console.into(),
        }
    }

    fn exited() -> Result<Duration, VmError> {
        Err(VmError::BootFailed {
            id: "t".into(),
            exit: "exit status 0".into(),
            console: vec![],
            qemu_log: vec![],
        })
    }

    #[test]
    fn verdicts_follow_the_console() {
        let ok =
            "[ 1.0] x\r\nkata-cc: rootfs verified (root hash ab12)\r\nkata-cc-agent: ready\r\n";
        let r = report(Ok(Duration::from_secs(3)), ok);
        assert_eq!(r.verdict(), Verdict::AgentReady);
        assert_eq!(r.verified_root_hash(), Some("ab12"));
        let payload =
            "kata-cc: rootfs verified (root hash ab12)\nkata-cc-test-agent: started pid=1\n";
        assert_eq!(report(exited(), payload).verdict(), Verdict::PayloadStarted);
        let refused = "kata-cc: rootfs did not verify: dm-verity: data block 5 is corrupted\n";
        let r = report(exited(), refused);
        assert_eq!(r.verdict(), Verdict::Refused);
        assert!(r.refusal().unwrap().contains("block 5"));
        // SeaBIOS's screen clearing before the line is not part of it.
        let r = report(exited(), &format!("\u{1b}c\u{1b}[2J{refused}"));
        assert_eq!(r.refusal(), Some(refused.trim_end()));
        // A refusal line with the payload or the agent started anyway is not a refusal.
        assert_eq!(
            report(exited(), &format!("{refused}{payload}")).verdict(),
            Verdict::Failed
        );
        assert_eq!(
            report(exited(), &format!("{refused}{AGENT_READY} vsock:1024\n")).verdict(),
            Verdict::Failed
        );
        // QEMU still running at the deadline: neither refused nor started.
        let timeout = Err(VmError::BootTimeout {
            id: "t".into(),
            timeout: Duration::from_secs(1),
            last: Box::new(crate::vm::AgentWaitError::NoAttempt),
            console: vec![],
        });
        assert_eq!(report(timeout, refused).verdict(), Verdict::Failed);
        assert_eq!(report(exited(), "").verdict(), Verdict::Failed);
    }
}
