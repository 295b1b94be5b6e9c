//! The runtime configuration file (TOML, Kata `configuration.toml` section and key names).
//!
//! ```toml
//! [hypervisor.qemu]
//! path = "/usr/bin/qemu-system-x86_64"
//! kernel = "/usr/share/kata-cc/vmlinuz"
//! initrd = "/usr/share/kata-cc/initrd.img"
//! image = "/usr/share/kata-cc/rootfs.img"
//! kernel_params = "console=ttyS0 ..."
//! default_vcpus = 1
//! default_memory = 2048
//! boot_timeout = 60
//! firmware = ""              # -bios; empty: QEMU's default (SeaBIOS)
//! confidential_guest = false # true (SEV-SNP) is refused until it is implemented
//! # kata-cc keys (no Kata equivalent), with their defaults:
//! # accel = "auto"           # auto | kvm | tcg; auto probes whether KVM really works
//! # shutdown_timeout = 10    # s from QMP quit to SIGKILL
//! # machine_type = "q35"
//! # vsock_backend = "/usr/local/bin/vhost-device-vsock"
//! # force_vhost_user_vsock = false
//! # tcg_tb_size = 0          # MiB of TCG translated-code cache; 0: QEMU's default
//!
//! [agent.kata]
//! dial_timeout = 45          # s allowed for one agent connection
//! # enable_debug = false     # agent debug log, policy inputs on the VM console
//! # link_timeout = 30        # s UpdateInterface is retried while the guest has no such link yet
//!
//! [runtime]
//! enable_debug = false
//! # state_root = "/run/kata-cc/sandboxes"
//! # disable_guest_seccomp = true   # Kata's key: the spec's seccomp profile is not sent
//! # sandbox_sizing = "confidential" # or "pod-sandboxing" (kata-cc key; see `SandboxSizing`)
//! # internetworking_model = "tcfilter" # Kata's key: the pod netns's veth reaches the VM NIC
//! #                                    # through a TAP and tc redirects; "none": no NIC
//! ```
//!
//! Unknown keys are rejected so that a typo never silently falls back to a default. Relative
//! paths are taken relative to the config file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kata-cc/configuration.toml";
/// Environment variable that overrides the default location.
pub const CONFIG_PATH_ENV: &str = "KATA_CC_CONFIG_PATH";
/// Default root of the per-sandbox state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/kata-cc/sandboxes";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: key {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config file {path}: missing key {key}")]
    Missing { path: PathBuf, key: String },
    #[error("{what} path {value} does not exist ({key} in {path})")]
    NoSuchPath {
        what: &'static str,
        value: PathBuf,
        key: &'static str,
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The file this configuration was read from (for error messages).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorConfig {
    #[serde(default)]
    pub qemu: QemuConfig,
}

/// Hypervisor acceleration choice (our key `accel`; Kata has none, it always wants KVM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when it can really run a guest on this host, else TCG (logged).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// QEMU binary.
    #[serde(default = "default_qemu_path")]
    pub path: PathBuf,
    #[serde(default)]
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: PathBuf,
    /// Read-only rootfs image (erofs + dm-verity hash tree).
    #[serde(default)]
    pub image: PathBuf,
    #[serde(default)]
    pub kernel_params: String,
    /// Optional firmware (`-bios`); SeaBIOS from QEMU's data dir when empty.
    #[serde(default)]
    pub firmware: PathBuf,
    #[serde(default)]
    pub machine_type: Option<String>,
    #[serde(default = "default_vcpus")]
    pub default_vcpus: u32,
    /// Base memory in MiB (the sizing adds the pod's limits to it).
    #[serde(default = "default_memory")]
    pub default_memory: u64,
    /// Seconds to wait for the agent to answer after QEMU started.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: u64,
    /// Seconds to wait for QEMU to exit after QMP `quit` before SIGKILL.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: u64,
    #[serde(default)]
    pub confidential_guest: bool,
    /// SEV-SNP guest policy (Kata's `snp_guest_policy`): 0x30000 = SMT allowed, reserved bit 17.
    #[serde(default = "default_snp_guest_policy")]
    pub snp_guest_policy: u64,
    /// Optional SNP ID block and its authentication structure, base64 (Kata's `snp_id_block`,
    /// `snp_id_auth`); both or neither.
    #[serde(default)]
    pub snp_id_block: String,
    #[serde(default)]
    pub snp_id_auth: String,
    #[serde(default)]
    pub accel: AccelChoice,
    /// The vhost-user vsock backend, used when `/dev/vhost-vsock` is absent.
    #[serde(default = "default_vsock_backend")]
    pub vsock_backend: PathBuf,
    /// Use the vhost-user backend even when `/dev/vhost-vsock` exists.
    #[serde(default)]
    pub force_vhost_user_vsock: bool,
    /// TCG only: MiB of translated-code cache (QEMU `-accel tcg,tb-size=`); 0 = QEMU's default
    /// (up to 1 GiB, filled as the guest runs new code). Smaller saves host memory per VM but
    /// makes QEMU translate code again after each flush.
    #[serde(default)]
    pub tcg_tb_size: u32,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            path: default_qemu_path(),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            image: PathBuf::new(),
            kernel_params: String::new(),
            firmware: PathBuf::new(),
            machine_type: None,
            default_vcpus: default_vcpus(),
            default_memory: default_memory(),
            boot_timeout: default_boot_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            confidential_guest: false,
            snp_guest_policy: default_snp_guest_policy(),
            snp_id_block: String::new(),
            snp_id_auth: String::new(),
            accel: AccelChoice::Auto,
            vsock_backend: default_vsock_backend(),
            force_vhost_user_vsock: false,
            tcg_tb_size: 0,
        }
    }
}

impl QemuConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub kata: KataAgentConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KataAgentConfig {
    /// Seconds allowed for one agent connection (the hybrid-vsock handshake is retried within it).
    #[serde(default = "default_dial_timeout")]
    pub dial_timeout: u64,
    /// Kata's key: the agent logs at debug level and prints each request's policy input on the
    /// VM console, in Kata's request-log format (`KATA_CC_AGENT_LOG=debug` on the kernel
    /// command line; see docs/kubernetes.md).
    #[serde(default)]
    pub enable_debug: bool,
    /// Seconds UpdateInterface is retried while the agent answers "Link not found" (the guest's
    /// NIC driver is still loading). Kata retries 20 times 20 ms; an emulated guest needs more.
    #[serde(default = "default_link_timeout")]
    pub link_timeout: u64,
}

impl Default for KataAgentConfig {
    fn default() -> Self {
        KataAgentConfig {
            dial_timeout: default_dial_timeout(),
            enable_debug: false,
            link_timeout: default_link_timeout(),
        }
    }
}

impl KataAgentConfig {
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(self.dial_timeout)
    }
    pub fn link_timeout(&self) -> Duration {
        Duration::from_secs(self.link_timeout)
    }
}

/// How the pod's network namespace reaches the VM (Kata's `[runtime] internetworking_model`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterworkingModel {
    /// Kata's default: per link a TAP in the netns and `mirred` redirects both ways between it
    /// and the link, the TAP given to QEMU as the VM NIC's backend.
    #[default]
    Tcfilter,
    /// The VM gets no NIC.
    None,
}

/// How the VM of a pod is sized (kata-cc key `[runtime] sandbox_sizing`; Kata has no single
/// key for it). Both add the pod's memory limits; they differ in the base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxSizing {
    /// Confidential pods (AKS `KataCcIsolation`): `hypervisor.qemu.default_memory` (2048 MiB)
    /// + the limits.
    #[default]
    Confidential,
    /// Pod sandboxing, not confidential: 256 MiB + the limits, or with no memory limit an
    /// implicit 1792 MiB (a 2 GiB VM). `default_memory` is not used.
    PodSandboxing,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub enable_debug: bool,
    /// Root of the per-sandbox state directories (`<state_root>/<sandbox-id>/`).
    #[serde(default = "default_state_root")]
    pub state_root: PathBuf,
    /// Kata's `disable_guest_seccomp`: true (the default) drops the spec's seccomp profile
    /// before it goes to the guest; false passes it on.
    #[serde(default = "default_true")]
    pub disable_guest_seccomp: bool,
    #[serde(default)]
    pub sandbox_sizing: SandboxSizing,
    #[serde(default)]
    pub internetworking_model: InterworkingModel,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            enable_debug: false,
            state_root: default_state_root(),
            disable_guest_seccomp: true,
            sandbox_sizing: SandboxSizing::Confidential,
            internetworking_model: InterworkingModel::Tcfilter,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_qemu_path() -> PathBuf {
    PathBuf::from("/usr/bin/qemu-system-x86_64")
}
fn default_snp_guest_policy() -> u64 {
    crate::snp::qemu::DEFAULT_GUEST_POLICY
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    2048
}
fn default_boot_timeout() -> u64 {
    60
}
fn default_shutdown_timeout() -> u64 {
    10
}
fn default_dial_timeout() -> u64 {
    45
}
fn default_link_timeout() -> u64 {
    30
}
fn default_vsock_backend() -> PathBuf {
    PathBuf::from("/usr/local/bin/vhost-device-vsock")
}
fn default_state_root() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_ROOT)
}

impl Config {
    /// The config file to use: the runtime option `ConfigPath`, else `$KATA_CC_CONFIG_PATH`,
    /// else `/etc/kata-cc/configuration.toml`.
    pub fn locate(option_config_path: Option<&str>) -> PathBuf {
        if let Some(p) = option_config_path.filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        match std::env::var_os(CONFIG_PATH_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Reads, parses and checks a config file: every referenced file must exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse(&text, path)?;
        cfg.check_paths()?;
        Ok(cfg)
    }

    /// Parses config text; relative paths are taken relative to the file's directory.
    /// Does not look at the file system (see [`Config::check_paths`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key_at(text, e.span()),
            message: e.message().to_string(),
        })?;
        cfg.source = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("/"));
        let q = &mut cfg.hypervisor.qemu;
        for p in [
            &mut q.path,
            &mut q.kernel,
            &mut q.initrd,
            &mut q.image,
            &mut q.firmware,
            &mut q.vsock_backend,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.runtime.state_root.is_relative() {
            cfg.runtime.state_root = base.join(&cfg.runtime.state_root);
        }
        cfg.check_values()?;
        Ok(cfg)
    }

    fn check_values(&self) -> Result<(), ConfigError> {
        let q = &self.hypervisor.qemu;
        for (key, empty) in [
            ("hypervisor.qemu.kernel", q.kernel.as_os_str().is_empty()),
            ("hypervisor.qemu.initrd", q.initrd.as_os_str().is_empty()),
            ("hypervisor.qemu.image", q.image.as_os_str().is_empty()),
        ] {
            if empty {
                return Err(ConfigError::Missing {
                    path: self.source.clone(),
                    key: key.into(),
                });
            }
        }
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: self.source.clone(),
            key: key.into(),
            message: message.into(),
        };
        // SNP guest policy (ABI spec, GUEST_POLICY): bit 17 is reserved and must be 1; bits
        // 63:26 are reserved and must be 0.
        if q.snp_guest_policy & (1 << 17) == 0 || q.snp_guest_policy >> 26 != 0 {
            return Err(invalid(
                "hypervisor.qemu.snp_guest_policy",
                &format!(
                    "{:#x} is not an SNP guest policy (bit 17 must be set, bits 26 and up clear)",
                    q.snp_guest_policy
                ),
            ));
        }
        if q.snp_id_block.is_empty() != q.snp_id_auth.is_empty() {
            return Err(invalid(
                "hypervisor.qemu.snp_id_auth",
                "snp_id_block and snp_id_auth go together: give both or neither",
            ));
        }
        for (key, v) in [
            ("hypervisor.qemu.snp_id_block", &q.snp_id_block),
            ("hypervisor.qemu.snp_id_auth", &q.snp_id_auth),
        ] {
            use base64::Engine as _;
            if !v.is_empty() && base64::engine::general_purpose::STANDARD.decode(v).is_err() {
                return Err(invalid(key, "not valid base64"));
            }
        }
        if q.default_vcpus == 0 {
            return Err(invalid(
                "hypervisor.qemu.default_vcpus",
                "must be at least 1",
            ));
        }
        if q.default_memory < 64 {
            return Err(invalid(
                "hypervisor.qemu.default_memory",
                "must be at least 64 (MiB)",
            ));
        }
        if q.boot_timeout == 0 {
            return Err(invalid(
                "hypervisor.qemu.boot_timeout",
                "must be at least 1 (s)",
            ));
        }
        if self.agent.kata.dial_timeout == 0 {
            return Err(invalid("agent.kata.dial_timeout", "must be at least 1 (s)"));
        }
        if self.agent.kata.link_timeout == 0 {
            return Err(invalid("agent.kata.link_timeout", "must be at least 1 (s)"));
        }
        if q.confidential_guest && self.runtime.sandbox_sizing == SandboxSizing::PodSandboxing {
            return Err(invalid(
                "runtime.sandbox_sizing",
                "\"pod-sandboxing\" is for pods that are not confidential; \
                 hypervisor.qemu.confidential_guest = true needs \"confidential\"",
            ));
        }
        Ok(())
    }

    /// Every file the VM needs must exist; the error names the path, the key and the file.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        let q = &self.hypervisor.qemu;
        let mut checks = vec![
            ("QEMU binary", &q.path, "hypervisor.qemu.path"),
            ("kernel", &q.kernel, "hypervisor.qemu.kernel"),
            ("initrd", &q.initrd, "hypervisor.qemu.initrd"),
            ("image", &q.image, "hypervisor.qemu.image"),
        ];
        if !q.firmware.as_os_str().is_empty() {
            checks.push(("firmware", &q.firmware, "hypervisor.qemu.firmware"));
        }
        for (what, value, key) in checks {
            if !value.exists() {
                return Err(ConfigError::NoSuchPath {
                    what,
                    value: value.clone(),
                    key,
                    path: self.source.clone(),
                });
            }
        }
        Ok(())
    }

    /// `<runtime.state_root>/<sandbox id>`: where a sandbox's sockets and console log live.
    pub fn sandbox_state_dir(&self, sandbox_id: &str) -> PathBuf {
        self.runtime.state_root.join(sandbox_id)
    }

    /// Checks the vsock backend binary (only needed when the vhost-user path is used).
    pub fn check_vsock_backend(&self) -> Result<(), ConfigError> {
        let q = &self.hypervisor.qemu;
        if !q.vsock_backend.exists() {
            return Err(ConfigError::NoSuchPath {
                what: "vsock backend (vhost-device-vsock)",
                value: q.vsock_backend.clone(),
                key: "hypervisor.qemu.vsock_backend",
                path: self.source.clone(),
            });
        }
        Ok(())
    }
}

/// Best-effort dotted key name at a byte span of TOML text: the enclosing `[table]` header plus
/// the key on the offending line (toml's own message names only the leaf).
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "(file)".into();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "(file)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/k/vmlinuz"
initrd = "/k/initrd.img"
image = "rootfs.img"
kernel_params = "console=ttyS0 quiet"
default_vcpus = 1
default_memory = 2048
boot_timeout = 30
confidential_guest = false

[agent.kata]
dial_timeout = 5

[runtime]
enable_debug = true
"#;

    #[test]
    fn parses_kata_keys_and_resolves_relative_paths() {
        let cfg = Config::parse(GOOD, Path::new("/etc/x/configuration.toml")).unwrap();
        let q = &cfg.hypervisor.qemu;
        assert_eq!(q.kernel, PathBuf::from("/k/vmlinuz"));
        assert_eq!(q.image, PathBuf::from("/etc/x/rootfs.img"));
        assert_eq!(q.boot_timeout(), Duration::from_secs(30));
        assert_eq!(q.accel, AccelChoice::Auto);
        assert_eq!(cfg.agent.kata.dial_timeout(), Duration::from_secs(5));
        assert!(cfg.runtime.enable_debug);
        assert_eq!(cfg.runtime.state_root, PathBuf::from(DEFAULT_STATE_ROOT));
        assert_eq!(cfg.source, PathBuf::from("/etc/x/configuration.toml"));
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let text = GOOD.replace("boot_timeout = 30", "boot_timout = 30");
        let err = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/c.toml"), "{msg}");
        assert!(msg.contains("hypervisor.qemu.boot_timout"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = GOOD.replace("default_memory = 2048", "default_memory = \"lots\"");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("hypervisor.qemu.default_memory"), "{msg}");
    }

    #[test]
    fn unknown_table_is_named() {
        let text = format!("{GOOD}\n[hypervisor.firecracker]\npath = \"/x\"\n");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("firecracker"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file() {
        let msg = Config::parse("[hypervisor.qemu\nkernel=1", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("invalid config file /c.toml"), "{msg}");
    }

    #[test]
    fn missing_kernel_key_is_named() {
        let text = GOOD.replace("kernel = \"/k/vmlinuz\"", "");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "config file /c.toml: missing key hypervisor.qemu.kernel"
        );
    }

    #[test]
    fn snp_keys_are_read_and_checked() {
        let cfg = Config::parse(GOOD, Path::new("/c.toml")).unwrap();
        assert_eq!(cfg.hypervisor.qemu.snp_guest_policy, 0x30000);
        let text = GOOD.replace(
            "confidential_guest = false",
            "confidential_guest = true\nsnp_guest_policy = 0x70000\nsnp_id_block = \"AAEC\"\nsnp_id_auth = \"AwQF\"",
        );
        let q = Config::parse(&text, Path::new("/c.toml"))
            .unwrap()
            .hypervisor
            .qemu;
        assert_eq!(
            (q.snp_guest_policy, q.snp_id_block.as_str()),
            (0x70000, "AAEC")
        );
        for (bad, key) in [
            (
                "snp_guest_policy = 0x10000",
                "hypervisor.qemu.snp_guest_policy",
            ),
            ("snp_id_block = \"AAEC\"", "hypervisor.qemu.snp_id_auth"),
            (
                "snp_id_block = \"AAEC\"\nsnp_id_auth = \"not base64!\"",
                "hypervisor.qemu.snp_id_auth",
            ),
        ] {
            let text = GOOD.replace("confidential_guest = false", bad);
            let msg = Config::parse(&text, Path::new("/c.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{bad}: {msg}");
        }
    }

    #[test]
    fn seccomp_and_sizing_keys() {
        let cfg = Config::parse(GOOD, Path::new("/c.toml")).unwrap();
        assert!(cfg.runtime.disable_guest_seccomp);
        assert_eq!(cfg.runtime.sandbox_sizing, SandboxSizing::Confidential);
        let text = GOOD.replace(
            "enable_debug = true",
            "disable_guest_seccomp = false\nsandbox_sizing = \"pod-sandboxing\"",
        );
        let cfg = Config::parse(&text, Path::new("/c.toml")).unwrap();
        assert!(!cfg.runtime.disable_guest_seccomp);
        assert_eq!(cfg.runtime.sandbox_sizing, SandboxSizing::PodSandboxing);
        // Pod sandboxing is not for confidential guests.
        let text = text.replace("confidential_guest = false", "confidential_guest = true");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("runtime.sandbox_sizing"), "{msg}");
        let text = GOOD.replace("enable_debug = true", "sandbox_sizing = \"tiny\"");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("runtime.sandbox_sizing"), "{msg}");
    }

    #[test]
    fn internetworking_model_key() {
        let cfg = Config::parse(GOOD, Path::new("/c.toml")).unwrap();
        assert_eq!(
            cfg.runtime.internetworking_model,
            InterworkingModel::Tcfilter
        );
        assert_eq!(cfg.agent.kata.link_timeout(), Duration::from_secs(30));
        let text = GOOD.replace("enable_debug = true", "internetworking_model = \"none\"");
        let cfg = Config::parse(&text, Path::new("/c.toml")).unwrap();
        assert_eq!(cfg.runtime.internetworking_model, InterworkingModel::None);
        // Kata's other models are not implemented: refused, naming the key.
        for model in ["macvtap", "TCFilter", ""] {
            let text = GOOD.replace(
                "enable_debug = true",
                &format!("internetworking_model = \"{model}\""),
            );
            let msg = Config::parse(&text, Path::new("/c.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("runtime.internetworking_model"), "{msg}");
            assert!(msg.contains("tcfilter"), "{msg}");
        }
        let text = GOOD.replace("dial_timeout = 5", "dial_timeout = 5\nlink_timeout = 0");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("agent.kata.link_timeout"), "{msg}");
    }

    #[test]
    fn zero_timeout_rejected() {
        let text = GOOD.replace("dial_timeout = 5", "dial_timeout = 0");
        let msg = Config::parse(&text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("agent.kata.dial_timeout"), "{msg}");
    }

    #[test]
    fn missing_files_are_named_with_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("configuration.toml");
        let qemu = dir.path().join("qemu");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&qemu, "").unwrap();
        std::fs::write(&kernel, "").unwrap();
        let text = format!(
            "[hypervisor.qemu]\npath = \"{}\"\nkernel = \"{}\"\ninitrd = \"/nonexistent/initrd.img\"\nimage = \"x.img\"\n",
            qemu.display(),
            kernel.display()
        );
        std::fs::write(&cfg_path, text).unwrap();
        let msg = Config::load(&cfg_path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "initrd path /nonexistent/initrd.img does not exist (hypervisor.qemu.initrd in {})",
                cfg_path.display()
            )
        );

        let text = "[hypervisor.qemu]\npath = \"/nonexistent/qemu-system-x86_64\"\nkernel = \"/k\"\ninitrd = \"/i\"\nimage = \"/r\"\n";
        std::fs::write(&cfg_path, text).unwrap();
        let msg = Config::load(&cfg_path).unwrap_err().to_string();
        assert!(
            msg.starts_with("QEMU binary path /nonexistent/qemu-system-x86_64 does not exist (hypervisor.qemu.path in"),
            "{msg}"
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        let msg = Config::load(Path::new("/nonexistent/kata.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("cannot read config file /nonexistent/kata.toml"),
            "{msg}"
        );
    }

    #[test]
    fn locate_prefers_option_then_env() {
        assert_eq!(Config::locate(Some("/a.toml")), PathBuf::from("/a.toml"));
        // The env var is process-global; only this test touches it.
        std::env::set_var(CONFIG_PATH_ENV, "/b.toml");
        assert_eq!(Config::locate(None), PathBuf::from("/b.toml"));
        assert_eq!(Config::locate(Some("")), PathBuf::from("/b.toml"));
        std::env::remove_var(CONFIG_PATH_ENV);
        assert_eq!(Config::locate(None), PathBuf::from(DEFAULT_CONFIG_PATH));
    }
}
