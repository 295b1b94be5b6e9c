//! End-to-end: the pod's security policy, sent by the shim from the pod annotations and enforced
//! by the agent in the VM (issue 3, "Done when"). Each test runs its own private containerd and
//! ends with the leak check.

use std::time::{Duration, Instant};

use kata_cc_tests::containerd::{toml_set, Containerd};
use kata_cc_tests::policy::{self as pol, POLICY_ANNOTATION};
use kata_cc_tests::{paths, Background, TestImage};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A long-running container that prints `ready`, then, once a line arrives on its stdin,
/// reports whether /tmp/exec-ran exists (the side effect of the exec the policy should stop).
fn spawn_witness(cd: &Containerd, id: &str, opts: &[String]) -> Background {
    let mut main = cd.spawn_run_interactive(
        id,
        &strs(opts),
        &TestImage::busybox(),
        &[
            "sh",
            "-c",
            "echo ready; read line; \
             if [ -e /tmp/exec-ran ]; then echo exec-ran; else echo exec-did-not-run; fi",
        ],
    );
    main.wait_for_stdout("ready", paths::run_timeout());
    main
}

/// `ctr task exec` of a command that would leave /tmp/exec-ran and print a marker.
fn exec_marker(cd: &Containerd, id: &str, exec_id: &str) -> kata_cc_tests::CmdOutput {
    cd.ctr_with(
        &[
            "tasks",
            "exec",
            "--exec-id",
            exec_id,
            id,
            "sh",
            "-c",
            "touch /tmp/exec-ran; echo exec-output",
        ],
        None,
        paths::run_timeout(),
    )
}

fn assert_exec_denied(cd: &Containerd, out: &kata_cc_tests::CmdOutput) {
    assert!(!out.success(), "the exec ran: {}", out.describe());
    assert!(
        out.stderr_str()
            .contains("ExecProcessRequest is blocked by policy"),
        "the exec error is not the policy's: {}\n{}",
        out.describe(),
        cd.log_tail()
    );
    assert!(
        !out.stdout_str().contains("exec-output"),
        "{}",
        out.describe()
    );
}

/// Ends a witness: it reports whether the exec's side effect is there and exits 0.
fn finish_witness(cd: &Containerd, mut main: Background, want: &str) {
    main.write_stdin(b"go\n");
    main.close_stdin();
    let out = main.wait(paths::run_timeout());
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(
        out.stdout_str(),
        format!("ready\n{want}\n"),
        "{}",
        out.describe()
    );
}

/// The policy record in the sandbox state dir.
fn policy_state(id: &str) -> serde_json::Value {
    let p = paths::sandbox_dir(id).join("policy.json");
    let text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn exec_denied_by_annotation_policy() {
    let cd = Containerd::start("policy-noexec");
    let id = cd.id("noexec");
    let policy = pol::allow_all_except(&["ExecProcessRequest"]);
    let main = spawn_witness(&cd, &id, &pol::policy_args(&policy));

    // The shim recorded the policy's digest: sha256 of the text, also the HOST_DATA value.
    let st = policy_state(&id);
    let sha = pol::digest_hex("sha256", policy.as_bytes());
    assert_eq!(st["source"], "annotation", "{st}");
    assert_eq!(st["annotation"], POLICY_ANNOTATION, "{st}");
    assert_eq!(st["algorithm"], "sha256", "{st}");
    assert_eq!(st["digest"], sha.as_str(), "{st}");
    assert_eq!(st["host_data"], sha.as_str(), "{st}");

    let out = exec_marker(&cd, &id, "denied");
    assert_exec_denied(&cd, &out);
    finish_witness(&cd, main, "exec-did-not-run");
    cd.finish();
}

#[test]
fn read_stream_denied_withholds_output_without_blocking() {
    let cd = Containerd::start("policy-nologs");
    let id = cd.id("nologs");
    let policy = pol::allow_all_except(&["ReadStreamRequest"]);
    // 1 MiB to stdout and a line to stderr: far more than a pipe holds, so the writer only
    // finishes if the agent keeps draining what it may not hand out. A hang would end in
    // ctr's deadline (KATA_CC_E2E_TIMEOUT) with no exit code.
    let out = cd.run(
        &id,
        &strs(&pol::policy_args(&policy)),
        &TestImage::busybox(),
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/zero | tr '\\000' x; echo stdout-marker; \
             echo stderr-marker >&2; exit 0",
        ],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.describe(), cd.log_tail());
    assert!(
        out.stdout.is_empty(),
        "{} bytes of output reached ctr: {}",
        out.stdout.len(),
        out.describe()
    );
    assert!(
        !out.stderr_str().contains("stderr-marker"),
        "stderr reached ctr: {}",
        out.describe()
    );
    // Where the node's admin sees why: the shim logs the agent's refusal in containerd's log.
    let log = std::fs::read_to_string(cd.dir.join("containerd.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("ReadStreamRequest is blocked by policy") && l.contains(&id)),
        "no ReadStream refusal for {id} in containerd's log\n{}",
        cd.log_tail()
    );
    cd.finish();
}

#[test]
fn allow_all_annotation_allows_exec_and_output() {
    let cd = Containerd::start("policy-allowall");
    let id = cd.id("allowall");
    let main = spawn_witness(&cd, &id, &pol::policy_args(&pol::allow_all()));
    let out = exec_marker(&cd, &id, "allowed");
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "exec-output\n", "{}", out.describe());
    finish_witness(&cd, main, "exec-ran");
    cd.finish();
}

#[test]
fn initdata_policy_is_enforced_and_its_digest_recorded() {
    let cd = Containerd::start("policy-initdata");
    let id = cd.id("initdata");
    let policy = pol::allow_all_except(&["ExecProcessRequest"]);
    let doc = pol::initdata("sha384", &policy);
    let main = spawn_witness(&cd, &id, &pol::initdata_args(&doc));

    // sha384 of the TOML document, truncated to the 32 bytes of HOST_DATA.
    let st = policy_state(&id);
    let sha384 = pol::digest_hex("sha384", doc.as_bytes());
    assert_eq!(st["source"], "init-data", "{st}");
    assert_eq!(st["algorithm"], "sha384", "{st}");
    assert_eq!(st["digest"], sha384.as_str(), "{st}");
    assert_eq!(st["host_data"], &sha384[..64], "{st}");
    assert_eq!(
        st["policy_sha256"],
        pol::digest_hex("sha256", policy.as_bytes()).as_str(),
        "{st}"
    );

    let out = exec_marker(&cd, &id, "denied");
    assert_exec_denied(&cd, &out);
    finish_witness(&cd, main, "exec-did-not-run");
    cd.finish();
}

/// Semantics: a pod's policy is set at sandbox creation. A later container of the pod that
/// carries the same policy changes nothing (CRI repeats pod annotations on every container);
/// one that carries a different policy makes the shim send SetPolicy, which the policy in
/// force must allow. Here it does not: the container is refused and the pod keeps its policy.
#[test]
fn policy_without_set_policy_cannot_be_replaced() {
    let cd = Containerd::start("policy-locked");
    let pod = cd.id("pod");
    let locked = pol::allow_all_except(&["SetPolicyRequest", "ExecProcessRequest"]);
    let pod_args = |kind: &str, policy: &str| {
        let mut a = pol::annotation_args(&[
            (pol::SANDBOX_ID_ANNOTATION, pod.clone()),
            (pol::CONTAINER_TYPE_ANNOTATION, kind.to_string()),
        ]);
        a.extend(pol::policy_args(policy));
        a
    };
    let main = spawn_witness(&cd, &pod, &pod_args("sandbox", &locked));

    // Same policy again: accepted (nothing to change), the container runs in the pod's VM.
    let same = cd.id("same");
    let out = cd.run(
        &same,
        &strs(&pod_args("container", &locked)),
        &TestImage::busybox(),
        &["echo", "second-container"],
    );
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "second-container\n");

    // A different (allow-all) policy: SetPolicy is refused, so is the container.
    let other = cd.id("repolicy");
    let out = cd.run(
        &other,
        &strs(&pod_args("container", &pol::allow_all())),
        &TestImage::busybox(),
        &["echo", "must-not-run"],
    );
    assert!(!out.success(), "re-policied: {}", out.describe());
    assert!(
        out.stderr_str()
            .contains("SetPolicyRequest is blocked by policy"),
        "{}\n{}",
        out.describe(),
        cd.log_tail()
    );
    assert!(
        out.stderr_str().contains(POLICY_ANNOTATION),
        "{}",
        out.describe()
    );
    assert!(!out.stdout_str().contains("must-not-run"));

    // The pod still runs under its own policy: exec is still denied.
    assert_exec_denied(&cd, &exec_marker(&cd, &pod, "still-denied"));
    let st = policy_state(&pod);
    assert_eq!(
        st["digest"],
        pol::digest_hex("sha256", locked.as_bytes()).as_str(),
        "{st}"
    );
    finish_witness(&cd, main, "exec-did-not-run");
    cd.finish();
}

/// `ctr run` with the given annotation arguments fails, naming `needles`; nothing is left.
fn run_fails_naming(cd: &Containerd, what: &str, args: &[String], needles: &[&str]) {
    let id = cd.id(what);
    let out = cd.run(&id, &strs(args), &TestImage::busybox(), &["echo", "ran"]);
    assert!(
        !out.success(),
        "{what}: ctr run succeeded: {}",
        out.describe()
    );
    for needle in needles {
        assert!(
            out.stderr_str().contains(needle),
            "{what}: the error does not name {needle:?}: {}\n{}",
            out.describe(),
            cd.log_tail()
        );
    }
    assert!(
        !paths::sandbox_dir(&id).exists(),
        "{what}: {} left",
        paths::sandbox_dir(&id).display()
    );
    let ls = cd.ctr(&["containers", "ls", "-q"]);
    assert_eq!(ls.stdout_str().trim(), "", "{what}: container left");
}

#[test]
fn bad_policy_annotations_fail_clearly_and_leave_nothing() {
    let cd = Containerd::start("policy-bad");
    let ann = POLICY_ANNOTATION;
    let init = pol::INITDATA_ANNOTATION;

    run_fails_naming(
        &cd,
        "notbase64",
        &pol::annotation_args(&[(ann, "this is not base64!".to_string())]),
        &[&format!("annotation {ann}: not valid base64")],
    );
    // Parsed in the guest (the agent's Rego parser): the VM was up and is stopped again.
    run_fails_naming(
        &cd,
        "badrego",
        &pol::policy_args("package agent_policy\n\ndefault CreateContainerRequest := \n}{\n"),
        &[ann, "SetPolicy", "policy does not parse: line 4"],
    );
    run_fails_naming(
        &cd,
        "notgzip",
        &pol::annotation_args(&[(init, pol::base64(b"algorithm = \"sha256\"\n"))]),
        &[&format!("annotation {init}: not gzip data")],
    );
    run_fails_naming(
        &cd,
        "badtoml",
        &pol::initdata_args("algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data\n"),
        &[&format!("annotation {init}: init-data TOML line 3")],
    );
    run_fails_naming(
        &cd,
        "nopolicy",
        &pol::initdata_args("algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data]\n"),
        &[&format!(
            "annotation {init}: init-data has no data.\"policy.rego\""
        )],
    );
    cd.finish();
}

/// A container asking for attestation reports in a VM without a TEE: refused by the agent,
/// naming the annotation and the TEE; nothing is left (the VM is stopped).
#[test]
fn attestation_without_tee_is_refused() {
    let cd = Containerd::start("policy-attest");
    run_fails_naming(
        &cd,
        "attest",
        &pol::annotation_args(&[("io.katacontainers.kata-cc.attestation", "true".to_string())]),
        &[
            "annotation io.katacontainers.kata-cc.attestation",
            "this VM has no TEE (tee: none)",
        ],
    );
    cd.finish();
}

/// Bakes the guest image again with `--default-policy no-exec-no-logs` (same agent, same
/// kernel) into the test's dir and points the test's config at it.
fn use_no_exec_no_logs_image(cd: &Containerd) {
    let out_dir = cd.dir.join("guest-no-exec-no-logs");
    let mut bake = std::process::Command::new("bash");
    bake.arg(paths::repo().join("hack/bake-image.sh"))
        .arg("--agent")
        .arg(paths::guest_bin_dir().join("kata-cc-agent"))
        .arg("--init")
        .arg(paths::guest_bin_dir().join("kata-cc-init"))
        .arg("--out")
        .arg(&out_dir)
        .arg("--no-config")
        .args(["--default-policy", "no-exec-no-logs"]);
    kata_cc_tests::cmd::run(bake, None, paths::run_timeout()).assert_success();
    let manifest =
        kata_cc_shim::manifest::Manifest::load_dir(&out_dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest.default_policy.name, "no-exec-no-logs");
    let cmdline = std::fs::read_to_string(out_dir.join("cmdline")).expect("cmdline");
    let image = out_dir.join("rootfs.img");
    cd.edit_config(|t| {
        let t = toml_set(
            &t,
            "hypervisor.qemu",
            "image",
            &format!("\"{}\"", image.display()),
        );
        toml_set(
            &t,
            "hypervisor.qemu",
            "kernel_params",
            &format!("\"{}\"", cmdline.trim()),
        )
    });
}

/// Waits until `ctr tasks ls` shows the task RUNNING (its output cannot be watched here).
fn wait_running(cd: &Containerd, id: &str) {
    let deadline = Instant::now() + paths::run_timeout();
    loop {
        let ls = cd.ctr(&["tasks", "ls"]);
        if ls
            .stdout_str()
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not running: {}\n{}",
            ls.describe(),
            cd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The policy baked into the rootfs applies when a pod has none; a pod's own policy replaces
/// it (the baked no-exec-no-logs allows SetPolicy).
#[test]
fn baked_no_exec_no_logs_default_and_its_override() {
    let cd = Containerd::start("policy-baked");
    use_no_exec_no_logs_image(&cd);

    // No annotation: output withheld, exec refused.
    let id = cd.id("quiet");
    let out = cd.run(
        &id,
        &[],
        &TestImage::busybox(),
        &["sh", "-c", "echo hidden-output; exit 0"],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.describe(), cd.log_tail());
    assert!(
        out.stdout.is_empty(),
        "output reached ctr: {}",
        out.describe()
    );
    let id = cd.id("noexec");
    let main = cd.spawn_run(&id, &[], &TestImage::busybox(), &["sleep", "3600"]);
    wait_running(&cd, &id);
    let st = policy_state(&id);
    assert_eq!(st["source"], "default", "{st}");
    assert!(st["host_data"].is_null(), "{st}");
    assert_exec_denied(&cd, &exec_marker(&cd, &id, "denied"));
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id])
        .assert_success();
    let out = main.wait(paths::run_timeout());
    assert_eq!(out.code, Some(137), "{}\n{}", out.describe(), cd.log_tail());

    // The pod's allow-all annotation replaces the baked policy.
    let id = cd.id("override");
    let out = cd.run(
        &id,
        &strs(&pol::policy_args(&pol::allow_all())),
        &TestImage::busybox(),
        &["echo", "visible-output"],
    );
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "visible-output\n");
    cd.finish();
}
