//! `kata-cc install|uninstall`: the command line over `kata_cc_shim::install`. Reports go to
//! stderr, so that stdout is only the RuntimeClass (`kata-cc install | kubectl apply -f -`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kata_cc_shim::config::DEFAULT_CONFIG_PATH;
use kata_cc_shim::install::{self, Handler, Outcome, DEFAULT_CONTAINERD_CONFIG, RUNTIME_CLASS};

pub const USAGE: &str =
    "  install [--containerd-config PATH] [--config PATH] [--shim PATH] [--from-config PATH]
                           add the kata-cc runtime handler to containerd's config (containerd 1.6,
                           `version = 2`; default /etc/containerd/config.toml; a missing file is
                           made) and keep the rest of the file as it is; the file as it was before
                           the first change is kept in PATH.kata-cc.bak. Handler values: ConfigPath
                           = --config (default /etc/kata-cc/configuration.toml), runtime_path =
                           --shim (default: none, containerd finds the shim on its PATH).
                           --from-config F: copy F to --config if no file is there yet.
                           Prints the RuntimeClass kata-cc-isolation on stdout; containerd reads
                           its config only at start: restart it afterwards
  install --print-runtimeclass
                           print the RuntimeClass only
  uninstall [--containerd-config PATH]
                           remove the handler again: where install added it, the file is then as
                           it was before (and the backup, now the same, is removed)
";

pub fn install(args: &[String]) -> ExitCode {
    if args == ["--print-runtimeclass"] {
        print!("{RUNTIME_CLASS}");
        return ExitCode::SUCCESS;
    }
    let flags = match parse(
        "install",
        args,
        &["--containerd-config", "--config", "--shim", "--from-config"],
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let containerd_config = flags.get("--containerd-config", DEFAULT_CONTAINERD_CONFIG);
    let handler = Handler::new(
        flags.get("--config", DEFAULT_CONFIG_PATH),
        flags.value("--shim").map(PathBuf::from),
    );
    let from = flags.value("--from-config").map(PathBuf::from);
    let done = handler.and_then(|h| {
        let out = install::install(&containerd_config, &h, from.as_deref())?;
        Ok((h, out))
    });
    let (handler, out) = match done {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kata-cc install: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &out.config_copied {
        eprintln!(
            "kata-cc install: copied the shim's config to {}",
            p.display()
        );
    } else if !handler.config_path.exists() {
        eprintln!(
            "kata-cc install: warning: {} does not exist yet: every kata-cc pod fails until it \
             does (make install, or --from-config)",
            handler.config_path.display()
        );
    }
    report("install", &containerd_config, &out);
    print!("{RUNTIME_CLASS}");
    ExitCode::SUCCESS
}

pub fn uninstall(args: &[String]) -> ExitCode {
    let flags = match parse("uninstall", args, &["--containerd-config"]) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let containerd_config = flags.get("--containerd-config", DEFAULT_CONTAINERD_CONFIG);
    match install::uninstall(&containerd_config) {
        Ok(out) => {
            report("uninstall", &containerd_config, &out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kata-cc uninstall: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(cmd: &str, file: &Path, out: &Outcome) {
    let file = file.display();
    if out.changes.is_empty() {
        eprintln!("kata-cc {cmd}: {file}: nothing to change");
    }
    for c in &out.changes {
        eprintln!("kata-cc {cmd}: {file}: {c}");
    }
    if let Some(b) = &out.backup {
        eprintln!(
            "kata-cc {cmd}: the file as it was before kata-cc changed it: {}",
            b.display()
        );
    }
    if !out.changes.is_empty() {
        if let Some(pid) = containerd_pid() {
            eprintln!(
                "kata-cc {cmd}: containerd is running (pid {pid}) and reads its config only at \
                 start: systemctl restart containerd"
            );
        }
    }
}

/// A running process named `containerd`, if any (the restart hint only; nothing is restarted).
fn containerd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim_end() == "containerd").then_some(pid)
    })
}

/// `--flag value` pairs.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn value(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn get(&self, flag: &str, default: &str) -> PathBuf {
        PathBuf::from(self.value(flag).unwrap_or(default))
    }
}

/// Err: the exit code after the message (2: a command line it cannot take; 0: --help).
fn parse(cmd: &str, args: &[String], known: &[&str]) -> Result<Flags, ExitCode> {
    let usage = |msg: String| {
        eprintln!("kata-cc {cmd}: {msg}\nusage:\n{USAGE}");
        ExitCode::from(2)
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            return Err(ExitCode::SUCCESS);
        }
        if !known.contains(&flag.as_str()) {
            return Err(usage(format!("unknown argument '{flag}'")));
        }
        let Some(v) = it.next() else {
            return Err(usage(format!("{flag} needs a value")));
        };
        if out.iter().any(|(f, _)| f == flag) {
            return Err(usage(format!("{flag} given twice")));
        }
        out.push((flag.clone(), v.clone()));
    }
    Ok(Flags(out))
}
