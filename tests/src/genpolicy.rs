//! Policy generators run on a manifest for the harness's node: Kata's `genpolicy` (an outside
//! tool, at `$KATA_CC_GENPOLICY_DIR` or `<repo>/../shared/tools/genpolicy`) and kata-cc's own
//! `kata-cc policy gen`, behind one [`PolicyTool`], so the same end-to-end scenarios run with
//! either.
//!
//! genpolicy reads images from a registry (the node's loopback one, `--insecure-registry`) and
//! its settings from a directory: a copy of its `genpolicy-settings.json` plus JSON-patch
//! drop-ins in `genpolicy-settings.d/`, which say what is particular to this node, as a user
//! with such a node would write them ([`NodeFacts::drop_ins`]): the pause image its containerd
//! uses, where containerd keeps its bundles and the pods' network namespaces, and the OCI
//! version its containerd writes. Each run works on a copy of the manifest (genpolicy rewrites
//! the file it is given) and returns the annotated copy and the Rego.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kubelet::Node;
use crate::{cmd, paths};

/// Where to find genpolicy instead of `<repo>/../shared/tools/genpolicy`.
pub const GENPOLICY_DIR_ENV: &str = "KATA_CC_GENPOLICY_DIR";
/// The template marker for the registry's `HOST:PORT` in tests/manifests/*.yaml.
pub const REGISTRY_MARKER: &str = "@REGISTRY@";
/// The init-data annotation genpolicy writes (base64 of gzip of a TOML with the policy).
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// The policy annotation `kata-cc policy gen` writes by default (base64 of the Rego).
pub const POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";

/// What a generator gave for one manifest.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The annotated manifest (a copy; the input is left as it was).
    pub manifest: PathBuf,
    /// The policy (Rego) the annotation carries.
    pub rego: String,
    /// The annotation the tool wrote (`INITDATA_ANNOTATION` or `POLICY_ANNOTATION`).
    pub annotation: &'static str,
    /// How long the tool ran.
    pub elapsed: Duration,
    /// What it said on stderr (warnings).
    pub stderr: String,
}

/// What is particular to the harness's node, for the generators.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// `HOST:PORT` of the loopback registry (plain HTTP).
    pub registry: String,
    /// CRI's `sandbox_image` (the pause).
    pub pause_image: String,
    /// containerd's state dir: bundles are `<state>/io.containerd.runtime.v2.task/k8s.io/<id>`.
    pub containerd_state: PathBuf,
    /// Where CRI makes the pods' network namespaces (`netns_mounts_under_state_dir`).
    pub netns_dir: PathBuf,
    /// The `ociVersion` this containerd writes in its specs.
    pub oci_version: String,
    /// containerd's version (`major.minor...`, `ctr version`'s server version).
    pub containerd_version: String,
}

impl NodeFacts {
    /// The facts of a harness node: its registry, pause image and containerd dirs, and the
    /// OCI version from containerd's own default spec (`ctr oci spec`).
    pub fn of(node: &Node) -> NodeFacts {
        let spec = node.cd.ctr(&["oci", "spec"]);
        spec.assert_success();
        let v: serde_json::Value = serde_json::from_slice(&spec.stdout)
            .unwrap_or_else(|e| panic!("`ctr oci spec` is not JSON ({e}): {}", spec.describe()));
        let oci_version = v["ociVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("`ctr oci spec` has no ociVersion: {}", spec.describe()))
            .to_string();
        let version = node.cd.ctr(&["version"]);
        version.assert_success();
        let containerd_version = version
            .stdout_str()
            .split("Server:")
            .nth(1)
            .and_then(|server| {
                server.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix("Version:")
                        .map(|v| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| panic!("no server version in {}", version.describe()));
        let state = node.cd.dir.join("state");
        NodeFacts {
            containerd_version,
            registry: node.reg.addr.clone(),
            pause_image: node.pause.reference.clone(),
            netns_dir: state.join("io.containerd.grpc.v1.cri/netns"),
            containerd_state: state,
            oci_version,
        }
    }

    /// genpolicy's settings drop-ins for this node, `(file name, JSON patch)`:
    /// - the pause image CRI runs (genpolicy reads its config to expect the pause's process);
    /// - the bundle path prefix of the `io.katacontainers.pkg.oci.bundle_path` annotation
    ///   (containerd's state dir; genpolicy's default is /run/containerd);
    /// - the pause's network namespace (`nerdctl/network-namespace`, which Kata's runtime and
    ///   kata-cc's shim put on the sandbox: genpolicy expects /var/run/netns/cni-<uuid>, CRI
    ///   makes them under its state dir with `netns_mounts_under_state_dir`);
    /// - the OCI version containerd writes (genpolicy's default is containerd 1.7+'s 1.1.0);
    /// - with containerd 1.6, the options of CRI's bind mounts in the pause's spec
    ///   (`rbind ro`: 1.7 added `nosuid nodev noexec`).
    pub fn drop_ins(&self) -> Vec<(String, String)> {
        let bundles = format!(
            "{}/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)",
            self.containerd_state.display()
        );
        let netns = format!(
            "^{}/cni-[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$",
            regex_escape(&self.netns_dir.to_string_lossy())
        );
        let patch =
            |ops: serde_json::Value| serde_json::to_string_pretty(&ops).expect("JSON of a patch");
        let mut out = vec![
            (
                "10-pause-image.json".to_string(),
                patch(serde_json::json!([
                    {"op": "replace", "path": "/cluster_config/pause_container_image",
                     "value": self.pause_image},
                ])),
            ),
            (
                "20-containerd-paths.json".to_string(),
                patch(serde_json::json!([
                    {"op": "replace",
                     "path": "/pause_container/Annotations/io.katacontainers.pkg.oci.bundle_path",
                     "value": bundles},
                    {"op": "replace",
                     "path": "/other_container/Annotations/io.katacontainers.pkg.oci.bundle_path",
                     "value": bundles},
                    {"op": "add",
                     "path": "/pause_container/Annotations/nerdctl~1network-namespace",
                     "value": netns},
                ])),
            ),
            (
                "30-oci-version.json".to_string(),
                patch(serde_json::json!([
                    {"op": "replace", "path": "/kata_config/oci_version",
                     "value": self.oci_version},
                ])),
            ),
        ];
        if self.containerd_version.starts_with("1.6.") {
            out.push((
                "40-containerd-1.6-sandbox-mounts.json".to_string(),
                patch(serde_json::json!([
                    {"op": "test", "path": "/pause_container/Mounts/1/destination",
                     "value": "/etc/resolv.conf"},
                    {"op": "replace", "path": "/pause_container/Mounts/1/options",
                     "value": ["rbind", "ro"]},
                ])),
            ));
        }
        out
    }
}

/// A regex matching `s` literally.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The genpolicy build to test against.
#[derive(Debug, Clone)]
pub struct Genpolicy {
    /// The tool's dir: `genpolicy`, `rules.rego`, `genpolicy-settings.json`.
    pub dir: PathBuf,
}

impl Genpolicy {
    /// The dir genpolicy is looked for in.
    pub fn dir() -> PathBuf {
        match std::env::var_os(GENPOLICY_DIR_ENV) {
            Some(d) => PathBuf::from(d),
            None => paths::repo().join("../shared/tools/genpolicy"),
        }
    }

    /// genpolicy, or the path where it is missing.
    pub fn find() -> Result<Genpolicy, PathBuf> {
        let dir = Self::dir();
        let dir = dir.canonicalize().unwrap_or(dir);
        for f in ["genpolicy", "rules.rego", "genpolicy-settings.json"] {
            if !dir.join(f).is_file() {
                return Err(dir.join(f));
            }
        }
        Ok(Genpolicy { dir })
    }

    /// A settings dir in `work`: genpolicy's settings file and this node's drop-ins.
    pub fn settings_dir(&self, facts: &NodeFacts, work: &Path) -> PathBuf {
        let dir = work.join("genpolicy-settings");
        let d = dir.join("genpolicy-settings.d");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        let src = self.dir.join("genpolicy-settings.json");
        std::fs::copy(&src, dir.join("genpolicy-settings.json"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        for (name, text) in facts.drop_ins() {
            std::fs::write(d.join(&name), text)
                .unwrap_or_else(|e| panic!("{}: {e}", d.join(&name).display()));
        }
        dir
    }

    /// Runs genpolicy on a copy of `manifest` (in `work`) with the node's settings; the
    /// annotated copy and the Rego (`-r`), or genpolicy's account of its failure.
    pub fn generate(
        &self,
        facts: &NodeFacts,
        work: &Path,
        manifest: &Path,
        config_files: &[PathBuf],
    ) -> Result<Generated, String> {
        let settings = self.settings_dir(facts, work);
        let copy = copy_manifest(manifest, work, "genpolicy");
        let mut c = Command::new(self.dir.join("genpolicy"));
        c.current_dir(work)
            .arg("-p")
            .arg(self.dir.join("rules.rego"))
            .arg("-j")
            .arg(&settings)
            .arg(format!("--insecure-registry={}", facts.registry))
            .arg("-r")
            .arg("-y")
            .arg(&copy);
        for f in config_files {
            c.arg("-c").arg(f);
        }
        let out = cmd::run(c, None, paths::ctr_timeout());
        if !out.success() {
            return Err(out.describe());
        }
        let rego = out.stdout_str();
        if !rego.contains("package agent_policy") {
            return Err(format!("genpolicy printed no policy: {}", out.describe()));
        }
        Ok(Generated {
            manifest: copy,
            rego,
            annotation: INITDATA_ANNOTATION,
            elapsed: out.elapsed,
            stderr: out.stderr_str(),
        })
    }
}

/// `<work>/<tool>-<file name>`, a copy of `manifest` for a tool that rewrites its input.
fn copy_manifest(manifest: &Path, work: &Path, tool: &str) -> PathBuf {
    let name = manifest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest.yaml".to_string());
    let copy = work.join(format!("{tool}-{name}"));
    std::fs::copy(manifest, &copy)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", manifest.display(), copy.display()));
    copy
}

/// A manifest of tests/manifests with the registry's address filled in, written to `work`.
pub fn render_manifest(name: &str, registry: &str, work: &Path) -> PathBuf {
    let src = paths::repo().join("tests/manifests").join(name);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = work.join(name);
    std::fs::write(&out, text.replace(REGISTRY_MARKER, registry))
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

/// The policy tools whose policies the end-to-end scenarios run.
#[derive(Debug, Clone)]
pub enum PolicyTool {
    /// Kata's genpolicy (init-data annotation; image layers not pinned).
    Genpolicy(Genpolicy),
    /// `kata-cc policy gen` (agent policy annotation; image layers pinned).
    KataCc { bin: PathBuf },
}

impl PolicyTool {
    /// genpolicy, or why it cannot run here.
    pub fn genpolicy() -> Result<PolicyTool, String> {
        Genpolicy::find()
            .map(PolicyTool::Genpolicy)
            .map_err(|p| format!("no genpolicy at {}", p.display()))
    }

    /// `kata-cc policy gen` of the tests' build, or why it cannot run (the subcommand is not
    /// there yet).
    pub fn kata_cc() -> Result<PolicyTool, String> {
        let bin = paths::bin_dir().join("kata-cc");
        if !bin.is_file() {
            return Err(format!("no {}", bin.display()));
        }
        let mut c = Command::new(&bin);
        c.args(["policy", "gen", "--help"]);
        let out = cmd::run(c, None, paths::ctr_timeout());
        if !out.success() {
            let said = out.stderr_str();
            return Err(format!(
                "{} has no `policy gen` ({})",
                bin.display(),
                said.lines().next().unwrap_or("").trim()
            ));
        }
        Ok(PolicyTool::KataCc { bin })
    }

    pub fn name(&self) -> &'static str {
        match self {
            PolicyTool::Genpolicy(_) => "genpolicy",
            PolicyTool::KataCc { .. } => "kata-cc policy gen",
        }
    }

    /// Whether the tool's policies pin the image layers (a different image under the same tag
    /// is refused).
    pub fn pins_layers(&self) -> bool {
        matches!(self, PolicyTool::KataCc { .. })
    }

    /// Generates the policy of `manifest` (and its ConfigMaps/Secrets) for the node.
    pub fn generate(
        &self,
        facts: &NodeFacts,
        work: &Path,
        manifest: &Path,
        config_files: &[PathBuf],
    ) -> Result<Generated, String> {
        match self {
            PolicyTool::Genpolicy(g) => g.generate(facts, work, manifest, config_files),
            PolicyTool::KataCc { bin } => {
                let copy = copy_manifest(manifest, work, "kata-cc");
                let mut c = kata_cc_gen(bin, facts, &copy);
                c.current_dir(work);
                for f in config_files {
                    c.arg("-c").arg(f);
                }
                let out = cmd::run(c, None, paths::ctr_timeout());
                if !out.success() {
                    return Err(out.describe());
                }
                let rego = annotation_policy(&copy)?;
                Ok(Generated {
                    manifest: copy,
                    rego,
                    annotation: POLICY_ANNOTATION,
                    elapsed: out.elapsed,
                    stderr: out.stderr_str(),
                })
            }
        }
    }
}

/// `kata-cc policy gen -y MANIFEST` for this node: its registry (plain HTTP) and its CRI
/// sandbox image, pinned like the pod's own images. Callers add the other flags.
pub fn kata_cc_gen(bin: &Path, facts: &NodeFacts, manifest: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["policy", "gen", "-y"])
        .arg(manifest)
        .arg("--insecure-registry")
        .arg(&facts.registry)
        .arg("--pause-image")
        .arg(&facts.pause_image);
    c
}

/// The value of the (first) annotation `key` a tool wrote into a manifest (one line, quotes
/// removed), or `None`.
pub fn annotation_value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}:");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
}

/// The Rego of the (first) `io.katacontainers.config.agent.policy` annotation in a manifest.
fn annotation_policy(manifest: &Path) -> Result<String, String> {
    use base64::Engine as _;
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let value = annotation_value(&text, POLICY_ANNOTATION)
        .ok_or_else(|| format!("{}: no {POLICY_ANNOTATION} annotation", manifest.display()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| {
            format!(
                "{}: {POLICY_ANNOTATION}: not base64: {e}",
                manifest.display()
            )
        })?;
    String::from_utf8(bytes)
        .map_err(|_| format!("{}: {POLICY_ANNOTATION}: not UTF-8", manifest.display()))
}

/// Says that a test did not run and why: on stderr and as a marker file in
/// `build/e2e/not-run/<test>` (`make e2e` lists them), so a missing tool is never counted as a
/// result.
pub fn not_run(test: &str, why: &str) {
    eprintln!("NOT RUN: {why}");
    let dir = paths::e2e_dir().join("not-run");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(test), format!("{test}: NOT RUN: {why}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            registry: "127.0.0.1:5000".into(),
            pause_image: "127.0.0.1:5000/kata-cc/pause:3.6".into(),
            containerd_state: "/b/e2e/x-1/state".into(),
            netns_dir: "/b/e2e/x-1/state/io.containerd.grpc.v1.cri/netns".into(),
            oci_version: "1.0.2-dev".into(),
            containerd_version: "1.6.20~ds1".into(),
        }
    }

    #[test]
    fn drop_ins_are_json_patches_for_this_node() {
        let d = facts().drop_ins();
        assert_eq!(d.len(), 4);
        let mut newer = facts();
        newer.containerd_version = "1.7.20".into();
        assert_eq!(newer.drop_ins().len(), 3);
        let all: Vec<serde_json::Value> = d
            .iter()
            .flat_map(|(_, t)| {
                serde_json::from_str::<Vec<serde_json::Value>>(t).expect("a JSON patch")
            })
            .collect();
        let value = |path: &str| {
            all.iter()
                .find(|op| op["path"] == path)
                .unwrap_or_else(|| panic!("no op on {path}"))["value"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            value("/cluster_config/pause_container_image"),
            "127.0.0.1:5000/kata-cc/pause:3.6"
        );
        assert_eq!(
            value("/other_container/Annotations/io.katacontainers.pkg.oci.bundle_path"),
            "/b/e2e/x-1/state/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)"
        );
        let netns = value("/pause_container/Annotations/nerdctl~1network-namespace");
        let re = regex::Regex::new(&netns).expect("a regex");
        assert!(re.is_match(
            "/b/e2e/x-1/state/io.containerd.grpc.v1.cri/netns/cni-b894e817-0cf4-867e-21d1-af214f3a1a59"
        ));
        assert!(!re.is_match("/b/e2e/x-1/state/io.containerd.grpc.v1.cri/netns/cni-x"));
        assert!(!re.is_match("/var/run/netns/cni-b894e817-0cf4-867e-21d1-af214f3a1a59"));
        assert_eq!(value("/kata_config/oci_version"), "1.0.2-dev");
        let opts = all
            .iter()
            .find(|op| op["path"] == "/pause_container/Mounts/1/options")
            .expect("the resolv.conf options");
        assert_eq!(opts["value"], serde_json::json!(["rbind", "ro"]));
    }

    /// The drop-ins apply to genpolicy's own settings file: every `replace`/`test` path exists.
    #[test]
    fn drop_ins_fit_the_settings_file() {
        let Ok(g) = Genpolicy::find() else {
            // The settings file is genpolicy's: without it there is nothing to check against
            // (the unit tier writes nothing under build/, so no marker file here).
            eprintln!("NOT RUN: no genpolicy at {}", Genpolicy::dir().display());
            return;
        };
        let text = std::fs::read_to_string(g.dir.join("genpolicy-settings.json")).unwrap();
        let settings: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (name, patch) in facts().drop_ins() {
            for op in serde_json::from_str::<Vec<serde_json::Value>>(&patch).unwrap() {
                let path = op["path"].as_str().unwrap();
                let pointer = if op["op"] == "add" {
                    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
                } else {
                    path
                };
                assert!(
                    settings.pointer(pointer).is_some(),
                    "{name}: {path}: not in genpolicy-settings.json"
                );
                if op["op"] == "test" {
                    assert_eq!(settings.pointer(path), Some(&op["value"]), "{name}: {path}");
                }
            }
        }
    }

    #[test]
    fn escapes_regex_metacharacters() {
        let re = regex::Regex::new(&format!("^{}$", regex_escape("/a.b-c/(d)+"))).unwrap();
        assert!(re.is_match("/a.b-c/(d)+"));
        assert!(!re.is_match("/aXb-c/(d)+"));
    }
}
