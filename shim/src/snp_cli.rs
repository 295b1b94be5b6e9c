//! `kata-cc measure`, `kata-cc attest verify|report` and `kata-cc check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kata_cc_shim::config::Config;
use kata_cc_shim::snp::measure::{self, MeasureInput};
use kata_cc_shim::snp::report::{Report, ReportError};
use kata_cc_shim::snp::verify::{self, CertError, Expected};
use kata_cc_shim::snp::{self, host};
use kata_cc_shim::vm::accel::ProbeError;
use thiserror::Error;

pub const USAGE: &str = "  measure --firmware F [--kernel K [--initrd I] [--append CMDLINE | --cmdline-file F]] --vcpus N [--vcpu-type EPYC-v4] [--guest-features 0x1]
                           print the expected SEV-SNP launch measurement (hex)
  attest verify --report R [--vcek V] [--chain C] [--measurement M] [--host-data H] [--report-data D] [--allow-debug]
                           verify an SEV-SNP attestation report; prints each check, exits 1 naming failures
  attest report [--report-data D]
                           print this SNP guest's attestation report (hex; inside an SNP guest only)
  check [--config PATH]    what this host can do; exits 1 when the configured mode cannot run
";

/// A command line these commands cannot take (exit status 2).
#[derive(Debug, Error, PartialEq, Eq)]
enum UsageError {
    #[error("kata-cc {cmd}: unknown argument '{arg}' (expected one of {})", .known.join(", "))]
    Unknown {
        cmd: &'static str,
        arg: String,
        known: &'static [&'static str],
    },
    #[error("kata-cc {cmd}: {flag} needs a value")]
    NoValue { cmd: &'static str, flag: String },
    #[error("kata-cc {cmd}: {flag} given twice")]
    Twice { cmd: &'static str, flag: String },
    // Both `attest verify` and `attest report` have always said "attest verify" here.
    #[error("kata-cc attest verify: {flag} is not hex")]
    NotHex { flag: &'static str },
    #[error("kata-cc attest verify: {flag} is {len} bytes, expected {}{want}", if *.pad { "at most " } else { "" })]
    HexLength {
        flag: &'static str,
        len: usize,
        want: usize,
        pad: bool,
    },
}

/// `--flag value` pairs by flag.
type Flags = BTreeMap<String, String>;

/// `--flag value` pairs; Err names the bad argument.
fn flags(
    cmd: &'static str,
    args: &[String],
    known: &'static [&'static str],
) -> Result<Flags, UsageError> {
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !known.contains(&a.as_str()) {
            return Err(UsageError::Unknown {
                cmd,
                arg: a.clone(),
                known,
            });
        }
        let v = it.next().ok_or_else(|| UsageError::NoValue {
            cmd,
            flag: a.clone(),
        })?;
        if out.insert(a.clone(), v.clone()).is_some() {
            return Err(UsageError::Twice {
                cmd,
                flag: a.clone(),
            });
        }
    }
    Ok(out)
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(2)
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

pub fn measure(args: &[String]) -> ExitCode {
    let f = match flags(
        "measure",
        args,
        &[
            "--firmware",
            "--kernel",
            "--initrd",
            "--append",
            "--cmdline-file",
            "--vcpus",
            "--vcpu-type",
            "--guest-features",
        ],
    ) {
        Ok(f) => f,
        Err(e) => return usage_error(&e),
    };
    let Some(firmware) = f.get("--firmware") else {
        return usage_error("kata-cc measure: --firmware is required");
    };
    let vcpus = match f.get("--vcpus").map(|v| v.parse::<u32>()) {
        Some(Ok(n)) => n,
        Some(Err(_)) => return usage_error("kata-cc measure: --vcpus must be a number"),
        None => return usage_error("kata-cc measure: --vcpus is required"),
    };
    let guest_features = match f.get("--guest-features").map(|v| parse_u64(v)) {
        None => measure::DEFAULT_GUEST_FEATURES,
        Some(Some(v)) => v,
        Some(None) => {
            return usage_error("kata-cc measure: --guest-features must be a number (e.g. 0x1)")
        }
    };
    let append = match (f.get("--append"), f.get("--cmdline-file")) {
        (Some(_), Some(_)) => {
            return usage_error("kata-cc measure: give --append or --cmdline-file, not both")
        }
        (Some(a), None) => Some(a.clone()),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            // The file holds one line; QEMU gets it without the newline.
            Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                eprintln!("kata-cc measure: cannot read --cmdline-file {p}: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => None,
    };
    let input = MeasureInput {
        firmware: PathBuf::from(firmware),
        kernel: f.get("--kernel").map(PathBuf::from),
        initrd: f.get("--initrd").map(PathBuf::from),
        append,
        vcpus,
        vcpu_type: f
            .get("--vcpu-type")
            .cloned()
            .unwrap_or_else(|| measure::DEFAULT_VCPU_TYPE.to_string()),
        guest_features,
    };
    match measure::launch_digest(&input) {
        Ok(d) => {
            println!("{}", snp::hex(&d));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kata-cc measure: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn attest(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("verify") => attest_verify(&args[1..]),
        Some("report") => attest_report(&args[1..]),
        _ => usage_error("kata-cc attest: expected 'verify' or 'report'"),
    }
}

/// Hex of exactly `len` bytes, or (`pad`) at most `len` bytes zero-padded.
fn hex_arg(flag: &'static str, v: &str, len: usize, pad: bool) -> Result<Vec<u8>, UsageError> {
    let mut b = snp::unhex(v).ok_or(UsageError::NotHex { flag })?;
    if b.len() == len || (pad && b.len() < len) {
        b.resize(len, 0);
        Ok(b)
    } else {
        Err(UsageError::HexLength {
            flag,
            len: b.len(),
            want: len,
            pad,
        })
    }
}

/// The report or a certificate `attest verify` was given cannot be read.
#[derive(Debug, Error)]
enum LoadError {
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Cert(#[from] CertError),
}

fn attest_verify(args: &[String]) -> ExitCode {
    // The one flag without a value.
    let allow_debug = args.iter().any(|a| a == "--allow-debug");
    let args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--allow-debug")
        .cloned()
        .collect();
    let f = match flags(
        "attest verify",
        &args,
        &[
            "--report",
            "--vcek",
            "--chain",
            "--measurement",
            "--host-data",
            "--report-data",
        ],
    ) {
        Ok(f) => f,
        Err(e) => return usage_error(&e),
    };
    let Some(report) = f.get("--report") else {
        return usage_error("kata-cc attest verify: --report is required");
    };
    let mut expected = Expected {
        allow_debug,
        ..Expected::default()
    };
    for (flag, slot, len, pad) in [
        ("--measurement", &mut expected.measurement, 48, false),
        ("--host-data", &mut expected.host_data, 32, false),
        ("--report-data", &mut expected.report_data, 64, true),
    ] {
        if let Some(v) = f.get(flag) {
            match hex_arg(flag, v, len, pad) {
                Ok(b) => *slot = Some(b),
                Err(e) => return usage_error(&e),
            }
        }
    }
    let loaded = (|| -> Result<_, LoadError> {
        let r = Report::load(Path::new(report))?;
        let vek = f
            .get("--vcek")
            .map(|p| verify::load_vek(Path::new(p)))
            .transpose()?;
        let chain = f
            .get("--chain")
            .map(|p| verify::load_chain(Path::new(p)))
            .transpose()?;
        Ok((r, vek, chain))
    })();
    let (r, vek, chain) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kata-cc attest verify: {e}");
            return ExitCode::FAILURE;
        }
    };
    let v = verify::verify(&r, vek.as_ref(), chain.as_ref(), &expected);
    for c in &v.checks {
        println!(
            "{:<22} {:<6} {}",
            c.name,
            if c.ok { "ok" } else { "FAILED" },
            c.detail
        );
    }
    println!("measurement: {}", snp::hex(r.measurement()));
    println!("host_data:   {}", snp::hex(r.host_data()));
    if v.ok() {
        println!("report verified");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "kata-cc attest verify: failed checks: {}",
            v.failed().join(", ")
        );
        ExitCode::FAILURE
    }
}

/// Inside an SNP guest (a CVM node, or a container the policy let attest): a fresh report with
/// the given report data, through the same code the agent uses.
fn attest_report(args: &[String]) -> ExitCode {
    let f = match flags("attest report", args, &["--report-data"]) {
        Ok(f) => f,
        Err(e) => return usage_error(&e),
    };
    let data = match f
        .get("--report-data")
        .map(|v| hex_arg("--report-data", v, 64, true))
    {
        None => vec![0u8; 64],
        Some(Ok(d)) => d,
        Some(Err(e)) => return usage_error(&e),
    };
    match kata_cc_policy::tee::Tee::detect().report(&data) {
        Ok(r) => {
            println!("{}", snp::hex(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kata-cc attest report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why `kata-cc check` has no QEMU version.
#[derive(Debug, Error)]
enum QemuVersionError {
    #[error("{qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{qemu} --version did not answer within 10 s")]
    Timeout { qemu: PathBuf },
    #[error("cannot read a version from '{line}'")]
    Unreadable { line: String },
}

/// `<qemu> --version` -> (major, minor, text).
fn qemu_version(qemu: &Path) -> Result<(u32, u32, String), QemuVersionError> {
    let mut child = Command::new(qemu)
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| QemuVersionError::Spawn {
            qemu: qemu.to_path_buf(),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuVersionError::Timeout {
                    qemu: qemu.to_path_buf(),
                });
            }
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut out);
    }
    let line = out.lines().next().unwrap_or("").to_string();
    let ver = line
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("");
    let mut parts = ver.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => Ok((a, b, ver.to_string())),
        _ => Err(QemuVersionError::Unreadable { line }),
    }
}

/// Why `kata-cc check` finds KVM unusable.
#[derive(Debug, Error)]
enum KvmCheckError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot start a runtime for the probe: {0}")]
    Runtime(#[source] std::io::Error),
}

/// One line of `kata-cc check`: what was checked, whether it holds, the detail, and whether the
/// configured mode needs it.
struct Row {
    name: String,
    ok: bool,
    detail: String,
    needed: bool,
}

impl Row {
    fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>, needed: bool) -> Row {
        Row {
            name: name.into(),
            ok,
            detail: detail.into(),
            needed,
        }
    }
}

pub fn check(args: &[String]) -> ExitCode {
    let explicit = match args {
        [] => None,
        [flag, path] if flag == "--config" => Some(path.as_str()),
        _ => return usage_error("kata-cc check: expected [--config PATH]"),
    };
    let path = Config::locate(explicit);
    let (cfg, config_row) = match Config::load(&path) {
        Ok(c) => (
            c,
            Row::new("config", true, path.display().to_string(), true),
        ),
        Err(e) => (
            Config::default(),
            Row::new("config", false, e.to_string(), true),
        ),
    };
    let q = &cfg.hypervisor.qemu;
    let snp_mode = q.confidential_guest;
    let mut rows = vec![
        config_row,
        mode_row(snp_mode),
        guest_files_row(&cfg),
        kvm_row(q),
    ];
    rows.extend(vsock_rows(q));
    rows.push(qemu_version_row(q));
    for c in host::snp_capabilities(&host::HostPaths::default(), &q.firmware) {
        rows.push(Row::new(
            format!("SNP: {}", c.name),
            c.ok,
            c.detail,
            snp_mode,
        ));
    }
    print_verdict(&rows, snp_mode)
}

fn mode_row(snp_mode: bool) -> Row {
    Row::new(
        "mode",
        true,
        if snp_mode {
            "SEV-SNP (hypervisor.qemu.confidential_guest = true)"
        } else {
            "no TEE (hypervisor.qemu.confidential_guest = false): development only"
        },
        false,
    )
}

fn guest_files_row(cfg: &Config) -> Row {
    let paths = cfg.check_paths();
    Row::new(
        "guest files",
        paths.is_ok(),
        match &paths {
            Ok(()) => "qemu, kernel, initrd, image present".into(),
            Err(e) => e.to_string(),
        },
        true,
    )
}

/// The shim's own probe: a test VM in KVM, then the guest kernel booting under KVM.
fn kvm_row(q: &kata_cc_shim::config::QemuConfig) -> Row {
    let kvm = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt
            .block_on(kata_cc_shim::vm::accel::probe(&q.path, &q.kernel))
            .map_err(KvmCheckError::from),
        Err(e) => Err(KvmCheckError::Runtime(e)),
    };
    let kvm_needed = q.confidential_guest || q.accel == kata_cc_shim::config::AccelChoice::Kvm;
    Row::new(
        "KVM usable",
        kvm.is_ok(),
        match &kvm {
            Ok(()) => "a test VM ran and the guest kernel boots under KVM".into(),
            Err(e) if kvm_needed => e.to_string(),
            Err(e) => format!("{e} (TCG software emulation will be used)"),
        },
        kvm_needed,
    )
}

/// The kernel's vhost-vsock, or else the vhost-user backend the shim falls back to.
fn vsock_rows(q: &kata_cc_shim::config::QemuConfig) -> [Row; 2] {
    let vhost = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock");
    let backend = &q.vsock_backend;
    let backend_ok = backend.is_file();
    [
        Row::new(
            "/dev/vhost-vsock",
            vhost.is_ok(),
            match &vhost {
                Ok(_) => "usable".into(),
                Err(e) => format!("{e} (vhost-device-vsock is used instead)"),
            },
            false,
        ),
        Row::new(
            "vhost-device-vsock",
            backend_ok,
            if backend_ok {
                backend.display().to_string()
            } else {
                format!(
                    "{} does not exist (hypervisor.qemu.vsock_backend)",
                    backend.display()
                )
            },
            vhost.is_err() || q.force_vhost_user_vsock,
        ),
    ]
}

fn qemu_version_row(q: &kata_cc_shim::config::QemuConfig) -> Row {
    let qv = qemu_version(&q.path);
    Row::new(
        "QEMU version",
        matches!(qv, Ok((a, b, _)) if (a, b) >= (9, 1)),
        match &qv {
            Ok((a, b, v)) if (*a, *b) >= (9, 1) => format!("{v} ({})", q.path.display()),
            Ok((_, _, v)) => format!("{v} ({}): 9.1 or later is needed", q.path.display()),
            Err(e) => e.to_string(),
        },
        true,
    )
}

/// Prints the rows and whether every row the configured mode needs holds.
fn print_verdict(rows: &[Row], snp_mode: bool) -> ExitCode {
    let mut can_run = true;
    for r in rows {
        let status = match (r.ok, r.needed) {
            (true, _) => "ok",
            (false, true) => "MISSING",
            (false, false) => "no",
        };
        if !r.ok && r.needed {
            can_run = false;
        }
        println!("{:<24} {status:<8} {}", r.name, r.detail);
    }
    let mode = if snp_mode { "SEV-SNP" } else { "no TEE" };
    if can_run {
        println!("this host can run the configured mode ({mode})");
        ExitCode::SUCCESS
    } else {
        println!("this host cannot run the configured mode ({mode}): see the MISSING rows");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kata-cc measure|attest` print for a bad command line (exit status 2).
    #[test]
    fn usage_errors_read_as_before() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = flags("attest report", &args(&["--x"]), &["--report-data"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kata-cc attest report: unknown argument '--x' (expected one of --report-data)"
        );
        let e = flags(
            "measure",
            &args(&["--vcpus", "1", "--vcpus", "2"]),
            &["--vcpus"],
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "kata-cc measure: --vcpus given twice"
        );
        assert_eq!(hex_arg("--report-data", "00", 1, false), Ok(vec![0]));
        assert_eq!(
            hex_arg("--measurement", "0011", 48, false)
                .unwrap_err()
                .to_string(),
            "kata-cc attest verify: --measurement is 2 bytes, expected 48"
        );
        assert_eq!(
            hex_arg("--report-data", &"00".repeat(65), 64, true)
                .unwrap_err()
                .to_string(),
            "kata-cc attest verify: --report-data is 65 bytes, expected at most 64"
        );
        assert_eq!(
            hex_arg("--host-data", "xy", 32, false).unwrap_err(),
            UsageError::NotHex {
                flag: "--host-data"
            }
        );
    }
}
