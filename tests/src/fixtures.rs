//! Test data a checkout finds by itself (DESIGN.md, "Test data a checkout can find by itself"):
//! fixtures shipped in crates.io packages that cargo has already unpacked for this workspace
//! (`sev` 8.0.0: SNP reports, VCEKs, chains, OVMF suffixes; `regorus` 0.14.1: Kata's policy
//! corpus), and, only for what no package ships, `../shared/conformance/` beside the checkout.
//!
//! Self-contained (std and serde_json only) so that a crate that cannot depend on
//! `kata-cc-tests` (the shim's own unit tests) can include this file with `#[path]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target the workspace builds for (`.cargo/config.toml`); filtering on it keeps
/// `cargo metadata` from wanting packages of other platforms, which `--offline` may not have.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Why a package's directory could not be found.
#[derive(Debug, Clone)]
pub enum FixtureError {
    /// `cargo metadata` could not be run or failed (offline and not yet fetched, no cargo, ...).
    Cargo { command: String, detail: String },
    /// `cargo metadata` printed something that is not its JSON.
    Metadata { detail: String },
    /// The workspace does not depend on a package of that name.
    NotADependency { name: String },
    /// The workspace resolves the name to several versions; the caller must not guess.
    Ambiguous { name: String, versions: Vec<String> },
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixtureError::Cargo { command, detail } => write!(
                f,
                "`{command}` failed: {detail} (cargo unpacks dependency packages when it builds \
                 the workspace; run `cargo fetch` once online, or set CARGO to the cargo binary)"
            ),
            FixtureError::Metadata { detail } => write!(f, "cargo metadata: {detail}"),
            FixtureError::NotADependency { name } => write!(
                f,
                "package {name:?} is not a dependency of the workspace for {TARGET}"
            ),
            FixtureError::Ambiguous { name, versions } => write!(
                f,
                "package {name:?} resolves to several versions ({}): name one fixture source",
                versions.join(", ")
            ),
        }
    }
}

impl std::error::Error for FixtureError {}

/// (name, version, directory) of every package the workspace resolves to.
type Packages = Vec<(String, String, PathBuf)>;

/// The workspace's manifest: the crate that compiled this file is a member.
fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")
}

fn load_packages() -> Result<Packages, FixtureError> {
    // `cargo test` sets CARGO for the tests it runs; a test binary run by hand uses PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_manifest();
    let mut cmd = Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TERM_COLOR", "never");
    let command = format!(
        "{} metadata --offline --filter-platform {TARGET} --manifest-path {}",
        Path::new(&cargo).display(),
        manifest.display()
    );
    let out = cmd.output().map_err(|e| FixtureError::Cargo {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(FixtureError::Cargo {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| FixtureError::Metadata {
            detail: format!("not JSON: {e}"),
        })?;
    let pkgs = v["packages"].as_array().ok_or(FixtureError::Metadata {
        detail: "no \"packages\" array".into(),
    })?;
    let mut found = Vec::with_capacity(pkgs.len());
    for p in pkgs {
        let (Some(name), Some(version), Some(manifest)) = (
            p["name"].as_str(),
            p["version"].as_str(),
            p["manifest_path"].as_str(),
        ) else {
            return Err(FixtureError::Metadata {
                detail: format!("package entry without name, version or manifest_path: {p}"),
            });
        };
        let dir = Path::new(manifest)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        found.push((name.to_string(), version.to_string(), dir));
    }
    Ok(found)
}

/// The unpacked source directory of dependency package `name` (e.g. `"sev"`), as cargo
/// metadata names it: offline, for the workspace's target. One `cargo metadata` per process.
pub fn package_dir(name: &str) -> Result<PathBuf, FixtureError> {
    static PACKAGES: OnceLock<Result<Packages, FixtureError>> = OnceLock::new();
    let pkgs = PACKAGES
        .get_or_init(load_packages)
        .as_ref()
        .map_err(Clone::clone)?;
    let hits: Vec<_> = pkgs.iter().filter(|(n, _, _)| n == name).collect();
    match hits.as_slice() {
        [] => Err(FixtureError::NotADependency { name: name.into() }),
        [(_, _, dir)] => Ok(dir.clone()),
        many => Err(FixtureError::Ambiguous {
            name: name.into(),
            versions: many.iter().map(|(_, v, _)| v.clone()).collect(),
        }),
    }
}

/// `rel` inside package `name`'s directory; panics naming the package and the file when either
/// cannot be found (a test never passes without its data).
pub fn package_file(name: &str, rel: &str) -> PathBuf {
    let dir = package_dir(name).unwrap_or_else(|e| panic!("fixture {rel} of package {name}: {e}"));
    let p = dir.join(rel);
    assert!(
        p.exists(),
        "fixture {} is missing from package {name} (at {})",
        rel,
        p.display()
    );
    p
}

/// An SNP test vector from the `sev` package: `tests/certs_data/<name>` (reports, VCEKs,
/// chains) or `tests/measurement/<name>` (OVMF suffixes, id-block keys).
pub fn sev_file(name: &str) -> PathBuf {
    let dir = package_dir("sev").unwrap_or_else(|e| panic!("SNP fixture {name}: {e}"));
    let candidates = [
        dir.join("tests/certs_data").join(name),
        dir.join("tests/measurement").join(name),
    ];
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "SNP fixture {name} is missing from the sev package: neither {} nor {}",
            candidates[0].display(),
            candidates[1].display()
        ),
    }
}

/// `../shared/conformance/<rel>` beside the checkout: only for data no package ships (the
/// go-sev-guest report). Panics naming the file when it is not there.
pub fn conformance_file(rel: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    let p = root.join(rel);
    assert!(
        p.is_file(),
        "conformance file {rel} is missing: expected at {} (../shared/conformance beside the \
         checkout; no crate package ships it)",
        p.display()
    );
    p
}
