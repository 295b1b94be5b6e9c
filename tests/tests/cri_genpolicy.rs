//! Generated policies end to end through CRI: a policy tool (Kata's genpolicy; `kata-cc
//! policy gen` once it exists, same scenarios) generates the policy of a manifest in
//! tests/manifests for this node, the annotated manifest goes through the kubelet's translation
//! (`kube.rs`) to containerd's CRI with kata-cc's handler, and the policy, unchanged, admits
//! the whole life of the pod: the sandbox, the volumes' copies, every container, the exec
//! probes (ExecSync, as the kubelet's prober), the lifecycle hooks, StopContainer,
//! StopPodSandbox, RemovePodSandbox; a Job's container exits 0. And it refuses, naming the
//! request: a command changed after generation, an env var added, an exec that is not a
//! probe's, reading the containers' output (logs). What it does with a different image pushed
//! under the same tag is asserted per tool (genpolicy: admitted, its guest-pull storage is not
//! pinned; kata-cc: refused naming the layer). Every test ends with the leak check.
//!
//! A tool that is not there (no genpolicy at `$KATA_CC_GENPOLICY_DIR` or
//! `<repo>/../shared/tools/genpolicy`; a `kata-cc` without `policy gen`) makes its tests say
//! `NOT RUN: ...` on stderr and in build/e2e/not-run/<test>, and claim nothing.

use std::path::PathBuf;
use std::time::Duration;

use kata_cc_tests::checks::Checks;
use kata_cc_tests::cri::api;
use kata_cc_tests::genpolicy::{self, Generated, NodeFacts, PolicyTool};
use kata_cc_tests::kube::{EnvVar, KubePod, Objects};
use kata_cc_tests::kubelet::{self, poll, Node, BUSYBOX_REPO};
use kata_cc_tests::{paths, TestImage};

const POD: &str = "genpolicy-pod.yaml";
const DEPLOYMENT: &str = "genpolicy-deployment.yaml";
const DEPLOYMENT_CONFIG: &str = "genpolicy-deployment-config.yaml";
const JOB: &str = "genpolicy-job.yaml";

const CREATE_DENIED: &str = "CreateContainerRequest is blocked by policy";
const EXEC_DENIED: &str = "ExecProcessRequest is blocked by policy";
const READ_DENIED: &str = "ReadStreamRequest is blocked by policy";
/// What the pod manifest's container prints first (kept out of its log by the policy).
const HELLO: &str = "hello from a generated policy";

/// One test's node, the node's facts for the tool, a scratch dir, and the tool.
struct Bench {
    node: Node,
    facts: NodeFacts,
    work: PathBuf,
    tool: PolicyTool,
}

fn start(test: &str, tool: Result<PolicyTool, String>) -> Option<Bench> {
    let tool = match tool {
        Ok(t) => t,
        Err(why) => {
            genpolicy::not_run(test, &why);
            return None;
        }
    };
    let node = Node::start(test);
    if std::env::var_os("KATA_CC_E2E_AGENT_DEBUG").is_some() {
        enable_agent_debug(&node);
    }
    let facts = NodeFacts::of(&node);
    // Inside the containerd dir: removed with it.
    let work = node.cd.dir.join("policy-work");
    std::fs::create_dir_all(&work).unwrap_or_else(|e| panic!("{}: {e}", work.display()));
    Some(Bench {
        node,
        facts,
        work,
        tool,
    })
}

/// `[agent.kata] enable_debug = true` for the node's next sandboxes: the agent prints each
/// request's policy input on the console (the sandbox's console.log).
fn enable_agent_debug(node: &Node) {
    node.cd.edit_config(|text| {
        assert!(
            text.contains("[agent.kata]\n"),
            "no [agent.kata] in the config:\n{text}"
        );
        text.replacen("[agent.kata]\n", "[agent.kata]\nenable_debug = true\n", 1)
    });
}

impl Bench {
    /// The tool's policy for a manifest of tests/manifests (and its ConfigMap/Secret files).
    fn generate(&self, manifest: &str, configs: &[&str]) -> (Generated, Vec<PathBuf>) {
        let m = genpolicy::render_manifest(manifest, &self.facts.registry, &self.work);
        let configs: Vec<PathBuf> = configs
            .iter()
            .map(|c| genpolicy::render_manifest(c, &self.facts.registry, &self.work))
            .collect();
        let g = self
            .tool
            .generate(&self.facts, &self.work, &m, &configs)
            .unwrap_or_else(|e| panic!("{} on {manifest}: {e}", self.tool.name()));
        eprintln!(
            "{} on {manifest}: {:.2}s, {} bytes of Rego{}",
            self.tool.name(),
            g.elapsed.as_secs_f64(),
            g.rego.len(),
            if g.stderr.trim().is_empty() {
                String::new()
            } else {
                format!("; stderr:\n{}", g.stderr.trim_end())
            }
        );
        (g, configs)
    }

    /// The kubelet's view of the annotated manifest, its volumes laid out on the node.
    fn prepare(&self, g: &Generated, configs: &[PathBuf]) -> KubePod {
        let objs = Objects::load(&g.manifest, configs).unwrap_or_else(|e| panic!("{e}"));
        let kp = KubePod::prepare(&self.node, &objs).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            kp.sandbox
                .annotations
                .iter()
                .any(|(k, _)| k == g.annotation),
            "{}: the pod has no {} annotation",
            g.manifest.display(),
            g.annotation
        );
        kp
    }
}

/// CreateContainer then StartContainer, as the kubelet calls them: containerd creates the
/// task, so the shim's CreateContainer request to the agent, at StartContainer. A refused
/// container is removed again (the kubelet would retry it under a new attempt number); the
/// error is StartContainer's.
fn create_and_start(
    node: &Node,
    pod: &kata_cc_tests::kubelet::Pod,
    spec: &kata_cc_tests::cri::ContainerSpec,
) -> Result<String, tonic::Status> {
    let cid = node
        .try_create_container(pod, spec)
        .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", spec.name));
    match node.try_start_container(&cid) {
        Ok(()) => Ok(cid),
        Err(e) => {
            node.remove_container(&cid)
                .unwrap_or_else(|r| panic!("RemoveContainer {cid} after {e}: {r}"));
            Err(e)
        }
    }
}

/// The policy the shim gave the agent for sandbox `id` is the generated one, from the
/// annotation the tool wrote (the shim's record in the sandbox's state dir).
fn policy_in_force(sandbox_id: &str, g: &Generated) {
    let p = paths::sandbox_dir(sandbox_id).join("policy.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("policy.json is JSON");
    assert_eq!(v["annotation"], g.annotation, "{text}");
    let want = kata_cc_tests::policy::digest_hex("sha256", g.rego.as_bytes());
    assert_eq!(
        v["policy_sha256"], want,
        "the agent's policy is not the Rego the tool printed: {text}"
    );
}

/// Generates the policy of a long-running workload and runs its pod's whole life under it:
/// sandbox, containers, postStart hooks, every exec probe once, preStop hooks, StopContainer,
/// StopPodSandbox, RemovePodSandbox, then the leak check.
fn admits_whole_life(
    test: &str,
    tool: Result<PolicyTool, String>,
    manifest: &str,
    configs: &[&str],
) {
    let Some(b) = start(test, tool) else {
        return;
    };
    let (g, configs) = b.generate(manifest, configs);
    let kp = b.prepare(&g, &configs);
    let expected: Vec<String> = kp.containers.iter().map(|c| c.yaml.name.clone()).collect();
    let running = kp.run(&b.node);
    let mut checks = Checks::new();
    checks.run("the pod's policy is the generated one", || {
        policy_in_force(&running.pod.id, &g)
    });
    checks.run("every container was admitted and runs", || {
        let names: Vec<&str> = running
            .containers
            .iter()
            .map(|(c, _)| c.name.as_str())
            .collect();
        assert_eq!(names, expected);
        for (c, cid) in &running.containers {
            let st = b.node.container_status(cid);
            assert_eq!(
                st.state,
                api::ContainerState::ContainerRunning as i32,
                "{}: {st:?}",
                c.name
            );
        }
    });
    checks.run("every exec probe is admitted and succeeds", || {
        let results = running.probe_all(&b.node);
        assert!(!results.is_empty(), "the manifest has exec probes");
        for (c, h, r) in results {
            let o = r.unwrap_or_else(|e| panic!("{c}: {:?} probe {:?}: {e}", h.kind, h.command));
            assert_eq!(
                o.exit_code, 0,
                "{c}: {:?} probe {:?}: {o:?}",
                h.kind, h.command
            );
        }
    });
    for (c, r) in running.teardown(&b.node) {
        let o = r.unwrap_or_else(|e| panic!("{c}: preStop: {e}"));
        assert_eq!(o.exit_code, 0, "{c}: preStop: {o:?}");
    }
    b.node.finish_with(checks);
}

/// A Job's pod under the generated policy: its container runs to exit 0, then the kubelet
/// tears the finished pod down.
fn admits_the_job(test: &str, tool: Result<PolicyTool, String>) {
    let Some(b) = start(test, tool) else {
        return;
    };
    let (g, configs) = b.generate(JOB, &[]);
    let kp = b.prepare(&g, &configs);
    assert_eq!(
        kp.workload.template.spec.restart_policy.as_deref(),
        Some("Never")
    );
    let running = kp.run(&b.node);
    let mut checks = Checks::new();
    checks.run("the pod's policy is the generated one", || {
        policy_in_force(&running.pod.id, &g)
    });
    checks.run("the Job's container exits 0", || {
        let (c, cid) = &running.containers[0];
        let st = b.node.wait_exited(cid, paths::run_timeout());
        assert_eq!(st.exit_code, 0, "{}: {st:?}", c.name);
        assert_eq!(st.reason, "Completed", "{}: {st:?}", c.name);
    });
    running.teardown(&b.node);
    b.node.finish_with(checks);
}

/// The one-container pod's policy refuses what the manifest does not say, each refusal
/// naming the request, in one VM: a changed command and an added env var (CreateContainer),
/// an exec that is no probe's (ExecProcess), the container's output (ReadStream: the CRI log
/// stays empty; the refusal is in containerd's log, where the node's admin looks); then what a
/// different image under the same tag gets.
fn refusals(test: &str, tool: Result<PolicyTool, String>) {
    let Some(b) = start(test, tool) else {
        return;
    };
    // The agent prints each request's policy input on the console: the refusals are replayed
    // offline at the end, as a user would replay them.
    enable_agent_debug(&b.node);
    let (g, configs) = b.generate(POD, &[]);
    let mut kp = b.prepare(&g, &configs);
    let pod = b.node.run_pod(&kp.sandbox);
    let qemu = b.node.qemu_of(&pod);
    let mut checks = Checks::new();
    checks.run("the pod's policy is the generated one", || {
        policy_in_force(&pod.id, &g)
    });
    let original = kp.containers[0].yaml.clone();

    checks.run("a command changed after generation is refused", || {
        kp.containers[0].yaml.args = Some(vec!["echo changed; exec sleep 1000000".into()]);
        let spec = kp
            .container_spec(&b.node, &pod, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        kp.containers[0].yaml = original.clone();
        let e = create_and_start(&b.node, &pod, &spec)
            .expect_err("a container with a changed command was admitted");
        eprintln!("changed command: {}", e.message());
        assert!(e.message().contains(CREATE_DENIED), "{e}");
        names_the_rule(&b.tool, e.message(), "process.Args");
    });
    checks.run("an env var added after generation is refused", || {
        kp.containers[0].yaml.env.push(EnvVar {
            name: "INJECTED".into(),
            value: Some("1".into()),
            value_from: None,
        });
        let spec = kp
            .container_spec(&b.node, &pod, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        kp.containers[0].yaml = original.clone();
        let e = create_and_start(&b.node, &pod, &spec)
            .expect_err("a container with an added env var was admitted");
        eprintln!("added env var: {}", e.message());
        assert!(e.message().contains(CREATE_DENIED), "{e}");
        names_the_rule(&b.tool, e.message(), "process.Env \"INJECTED=1\"");
    });

    // The manifest as generated: admitted after the refusals.
    let spec = kp
        .container_spec(&b.node, &pod, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let cid = b.node.run_container(&pod, &spec);
    let probe = kp.containers[0].handlers[0].clone();
    checks.run("the probe's exec command is admitted", || {
        let cmd: Vec<&str> = probe.command.iter().map(|s| s.as_str()).collect();
        let o = b
            .node
            .probe(&cid, &cmd, probe.timeout_secs)
            .unwrap_or_else(|e| panic!("probe {cmd:?}: {e}"));
        assert_eq!(o.exit_code, 0, "probe {cmd:?}: {o:?}");
    });
    checks.run("an exec that is no probe's is refused", || {
        match b
            .node
            .try_exec_within(&cid, &["cat", "/etc/motd"], paths::run_timeout())
        {
            Err(e) => {
                eprintln!("exec: {}", e.message());
                assert!(e.message().contains(EXEC_DENIED), "{e}");
                names_the_rule(
                    &b.tool,
                    e.message(),
                    "is not one of the policy's exec commands",
                );
            }
            Ok(o) => panic!("`cat /etc/motd` was admitted: {o:?}"),
        }
    });
    checks.run("the container's output stays out of its log", || {
        let log = b.node.cd.dir.join("containerd.log");
        // The shim asks for the output as soon as the container starts: the refusal is logged.
        poll(
            "the ReadStream refusal in containerd's log",
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                match text
                    .lines()
                    .find(|l| l.contains(READ_DENIED) && l.contains(&cid))
                {
                    Some(l) => {
                        eprintln!("containerd's log: {l}");
                        Ok(())
                    }
                    None => Err(format!("no line with {READ_DENIED:?} and {cid}")),
                }
            },
        );
        let file = pod.log_file(&spec);
        let lines = kubelet::log_lines(&file);
        assert!(
            !lines.iter().any(|l| l.text.contains(HELLO)),
            "the container's output reached {}: {lines:?}",
            file.display()
        );
    });

    // The same tag, another image: the pod's container made again from it.
    b.node
        .stop_container(&cid, 0)
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    b.node
        .remove_container(&cid)
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    let other = TestImage::busybox_with(
        "other",
        &[(
            paths::workspace_bin("kata-cc-pause"),
            "/usr/bin/other-image",
        )],
    );
    let pushed = b.node.reg.push(&other, BUSYBOX_REPO, "gzip");
    let pulled = b.node.pull(&pushed.reference);
    assert_eq!(pulled, pushed.config_digest);
    assert_ne!(pulled, b.node.busybox.config_digest);
    let spec = kp
        .container_spec(&b.node, &pod, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.image, pulled, "the kubelet's image is the new one");
    let answer = create_and_start(&b.node, &pod, &spec);
    if b.tool.pins_layers() {
        checks.run(
            "a different image under the same tag is refused, naming the layer",
            || {
                let e = answer.as_ref().expect_err("the other image was admitted");
                eprintln!("other image: {}", e.message());
                assert!(e.message().contains(CREATE_DENIED), "{e}");
                assert!(e.message().contains("layer"), "{e}");
            },
        );
    } else {
        checks.run(
            "a different image under the same tag is admitted (genpolicy does not pin layers)",
            || {
                let cid = answer
                    .as_ref()
                    .unwrap_or_else(|e| panic!("the other image: {e}"));
                let st = b.node.container_status(cid);
                assert_eq!(
                    st.state,
                    api::ContainerState::ContainerRunning as i32,
                    "{st:?}"
                );
                // CRI names the image by its repo digest: the other image's manifest.
                assert!(
                    st.image_ref
                        .ends_with(&format!("@{}", pushed.manifest_digest)),
                    "{st:?}"
                );
            },
        );
    }
    checks.run(
        "the agent's request log replays offline to the same decisions",
        || {
            let (decisions, refused) = replay_console(&b, &pod.id, &g);
            let of = |name: &str| -> Vec<bool> {
                decisions
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, d)| *d)
                    .collect()
            };
            // The pause, the changed command, the added env var, the manifest's container,
            // the other image.
            assert_eq!(
                of("CreateContainerRequest"),
                [true, false, false, true, !b.tool.pins_layers()],
                "{decisions:?}"
            );
            // The probe's command, then `cat /etc/motd`.
            assert_eq!(of("ExecProcessRequest"), [true, false], "{decisions:?}");
            let reads = of("ReadStreamRequest");
            assert!(
                !reads.is_empty() && reads.iter().all(|d| !d),
                "{decisions:?}"
            );
            for (name, allowed) in &decisions {
                if !matches!(
                    name.as_str(),
                    "CreateContainerRequest" | "ExecProcessRequest" | "ReadStreamRequest"
                ) {
                    assert!(allowed, "{name} denied on replay: {decisions:?}");
                }
            }
            // The rule that refused, in the policy's prints: the args, the env, the exec.
            let prints_of = |name: &str, n: usize| -> String {
                refused
                    .iter()
                    .filter(|(r, _)| r == name)
                    .nth(n)
                    .map(|(_, p)| p.join("\n"))
                    .unwrap_or_else(|| panic!("no refused {name} #{n}"))
            };
            // genpolicy's rules print their names; another tool's prints name the values.
            let genpolicy = matches!(b.tool, PolicyTool::Genpolicy(_));
            let changed = prints_of("CreateContainerRequest", 0);
            assert!(
                changed.contains("echo changed") && (!genpolicy || changed.contains("allow_args")),
                "{changed}"
            );
            let env = prints_of("CreateContainerRequest", 1);
            assert!(
                env.contains("INJECTED=1") && (!genpolicy || env.contains("allow_var")),
                "{env}"
            );
            let exec = prints_of("ExecProcessRequest", 0);
            assert!(
                exec.contains("ExecProcessRequest") && exec.contains("/etc/motd"),
                "{exec}"
            );
        },
    );
    b.node.teardown(&pod, Some(qemu.pid));
    drop(kp);
    b.node.finish_with(checks);
}

/// The decisions of a replay (request, allowed), and each refused request's prints.
type Replayed = (Vec<(String, bool)>, Vec<(String, Vec<String>)>);

/// The requests the agent printed on sandbox `id`'s console (`[agent.kata] enable_debug`),
/// replayed with `kata-cc policy replay --verbose` against the generated policy.
/// kata-cc's rules name the field at fault in the refusal itself (genpolicy's name theirs only
/// in the prints of a replay, checked there).
fn names_the_rule(tool: &PolicyTool, message: &str, needle: &str) {
    if matches!(tool, PolicyTool::KataCc { .. }) {
        assert!(
            message.contains(needle),
            "the refusal does not name {needle:?}: {message}"
        );
    }
}

fn replay_console(b: &Bench, id: &str, g: &Generated) -> Replayed {
    let console = paths::sandbox_dir(id).join("console.log");
    let text =
        std::fs::read_to_string(&console).unwrap_or_else(|e| panic!("{}: {e}", console.display()));
    // The pod still runs: the guest may be writing a line right now (the shim's periodic
    // requests are logged too). Only complete lines count.
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let log: String = complete
        .lines()
        .filter(|l| l.starts_with("[\"ep\":\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!log.is_empty(), "no request lines in {}", console.display());
    let requests = b.work.join("requests.log");
    let policy = b.work.join("policy.rego");
    std::fs::write(&requests, &log).expect("requests.log");
    std::fs::write(&policy, &g.rego).expect("policy.rego");
    let mut c = std::process::Command::new(paths::workspace_bin("kata-cc"));
    c.args(["policy", "replay", "--verbose", "--policy"])
        .arg(&policy)
        .arg("--requests")
        .arg(&requests);
    let out = kata_cc_tests::cmd::run(c, None, paths::ctr_timeout());
    out.assert_success();
    let decisions: Vec<(String, bool)> = out
        .stdout_str()
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("allow", n)) => (n.to_string(), true),
            Some(("deny", n)) => (n.to_string(), false),
            _ => panic!("replay printed {l:?}"),
        })
        .collect();
    assert_eq!(decisions.len(), log.lines().count(), "{}", out.describe());
    // `line N: <Request> is blocked by policy; its prints:` and the prints, indented.
    let mut refused: Vec<(String, Vec<String>)> = Vec::new();
    for l in out.stderr_str().lines() {
        if let Some(p) = l.strip_prefix("  ") {
            if let Some(last) = refused.last_mut() {
                last.1.push(p.to_string());
            }
        } else if let Some((_, rest)) = l.split_once(": ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            refused.push((name.to_string(), Vec::new()));
        }
    }
    (decisions, refused)
}

#[test]
fn genpolicy_admits_a_pod() {
    admits_whole_life("gp-pod", PolicyTool::genpolicy(), POD, &[]);
}

#[test]
fn genpolicy_admits_a_deployment() {
    admits_whole_life(
        "gp-deployment",
        PolicyTool::genpolicy(),
        DEPLOYMENT,
        &[DEPLOYMENT_CONFIG],
    );
}

#[test]
fn genpolicy_admits_a_job() {
    admits_the_job("gp-job", PolicyTool::genpolicy());
}

#[test]
fn genpolicy_refusals() {
    refusals("gp-refusals", PolicyTool::genpolicy());
}

// The same scenarios with `kata-cc policy gen`'s policies.

#[test]
fn kata_cc_gen_admits_a_pod() {
    admits_whole_life("kcc-pod", PolicyTool::kata_cc(), POD, &[]);
}

#[test]
fn kata_cc_gen_admits_a_deployment() {
    admits_whole_life(
        "kcc-deployment",
        PolicyTool::kata_cc(),
        DEPLOYMENT,
        &[DEPLOYMENT_CONFIG],
    );
}

#[test]
fn kata_cc_gen_admits_a_job() {
    admits_the_job("kcc-job", PolicyTool::kata_cc());
}

#[test]
fn kata_cc_gen_refusals() {
    refusals("kcc-refusals", PolicyTool::kata_cc());
}

/// The init-data path (issue 13, Deliver 4): `kata-cc policy gen --initdata --print-digest`
/// writes the policy as init-data and prints the HOST_DATA a relying party expects; the shim
/// derives the same HOST_DATA from the pod's annotation (recorded in the sandbox's policy.json,
/// what an SNP launch passes to QEMU's `host-data`), equal to sha256 of the init-data document
/// as decompressed here; the agent enforces the document's policy and the pod runs.
#[test]
fn kata_cc_gen_initdata_digest_is_the_host_data() {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    use std::io::Read;

    let test = "kcc-initdata";
    let Some(b) = start(test, PolicyTool::kata_cc()) else {
        return;
    };
    let PolicyTool::KataCc { bin } = &b.tool else {
        unreachable!("started with kata-cc")
    };
    let m = genpolicy::render_manifest(POD, &b.facts.registry, &b.work);
    let mut c = genpolicy::kata_cc_gen(bin, &b.facts, &m);
    c.args(["--initdata", "--print-digest"]);
    let out = kata_cc_tests::cmd::run(c, None, paths::ctr_timeout());
    assert!(out.success(), "{}", out.describe());
    let printed = out.stdout_str().trim().to_string();
    assert!(
        printed.len() == 64 && printed.chars().all(|c| c.is_ascii_hexdigit()),
        "--print-digest printed {printed:?}"
    );

    // The annotation as written into the manifest: base64 of gzip of the init-data TOML.
    let text = std::fs::read_to_string(&m).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
    let value = genpolicy::annotation_value(&text, genpolicy::INITDATA_ANNOTATION)
        .unwrap_or_else(|| panic!("{}: no init-data annotation:\n{text}", m.display()));
    assert!(
        !text.contains(genpolicy::POLICY_ANNOTATION),
        "--initdata also wrote the plain policy annotation"
    );
    let gz = base64::engine::general_purpose::STANDARD
        .decode(&value)
        .expect("the init-data annotation is base64");
    let mut document = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut document)
        .expect("the init-data annotation is gzip of UTF-8 text");
    let own = format!("{:x}", Sha256::digest(document.as_bytes()));
    assert_eq!(
        printed, own,
        "--print-digest is not sha256 of the init-data document"
    );
    let parsed = kata_cc_policy::initdata::parse(&document).expect("init-data TOML");
    assert_eq!(parsed.algorithm, "sha256", "{document}");
    let rego = parsed
        .data
        .get("policy.rego")
        .expect("init-data has data.\"policy.rego\"")
        .clone();
    let g = Generated {
        manifest: m.clone(),
        rego,
        annotation: genpolicy::INITDATA_ANNOTATION,
        elapsed: out.elapsed,
        stderr: out.stderr_str(),
    };

    let kp = b.prepare(&g, &[]);
    let running = kp.run(&b.node);
    let mut checks = Checks::new();
    checks.run("the pod's policy is the init-data's", || {
        policy_in_force(&running.pod.id, &g)
    });
    checks.run("the shim's HOST_DATA is the printed digest", || {
        let p = paths::sandbox_dir(&running.pod.id).join("policy.json");
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .expect("policy.json is JSON");
        assert_eq!(state["source"], "init-data", "{state}");
        assert_eq!(state["host_data"], printed.as_str(), "{state}");
        assert_eq!(state["digest"], printed.as_str(), "{state}");
    });
    checks.run("the container runs", || {
        let (c, cid) = &running.containers[0];
        let st = b.node.container_status(cid);
        assert_eq!(
            st.state,
            api::ContainerState::ContainerRunning as i32,
            "{}: {st:?}",
            c.name
        );
    });
    running.teardown(&b.node);
    b.node.finish_with(checks);
}
