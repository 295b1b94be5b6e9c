//! The pod's policy through CRI: the kubelet passes the pod annotation
//! `io.katacontainers.config.agent.policy` (base64 Rego) in the PodSandboxConfig, containerd's
//! `pod_annotations = ["io.katacontainers.*"]` hands it to the shim, the shim to the agent
//! (SetPolicy), and the agent enforces it: the image's baked policy allows every exec, this
//! one forbids one command, so a refusal proves the annotation's policy is the one in force.

use std::time::{Duration, Instant};

use kata_cc_tests::checks::Checks;
use kata_cc_tests::cri::{ContainerSpec, PodSpec};
use kata_cc_tests::kubelet::Node;
use kata_cc_tests::paths;
use kata_cc_tests::policy::{self, POLICY_ANNOTATION};

const FORBIDDEN: [&str; 2] = ["cat", "/etc/shadow"];
const MESSAGE: &str = "ExecProcessRequest is blocked by policy";

#[test]
fn pod_annotation_policy_is_enforced() {
    let node = Node::start("cri-policy");
    let rego = policy::allow_all_except_exec_of(&FORBIDDEN);
    let mut spec = PodSpec::new(
        "policy-pod",
        "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
        &node.log_root,
    );
    spec.annotations.push((
        POLICY_ANNOTATION.to_string(),
        policy::base64(rego.as_bytes()),
    ));
    let pod = node.run_pod(&spec);
    let qemu = node.qemu_of(&pod);
    let mut app = ContainerSpec::new("app", &node.busybox.reference, &["sleep", "1000000"]);
    app.mounts = pod.kubelet_mounts("app");
    let cid = node.run_container(&pod, &app);

    let mut checks = Checks::new();
    // How long a refusal may take: an allowed exec answers in about a second under TCG.
    const PROMPT: Duration = Duration::from_secs(20);
    let mut refused_in = None;
    checks.run(
        "the forbidden exec is refused with the policy's message",
        || {
            let started = Instant::now();
            let answer = node.try_exec_within(&cid, &FORBIDDEN, paths::run_timeout());
            refused_in = Some(started.elapsed());
            let said = match answer {
                Err(e) => e.message().to_string(),
                Ok(o) => {
                    assert_ne!(o.exit_code, 0, "`cat /etc/shadow` ran: {o:?}");
                    format!("{}{}", o.stdout, o.stderr)
                }
            };
            assert!(
                said.contains(MESSAGE),
                "the refusal does not carry the policy's message: {said}"
            );
        },
    );
    checks.run("the refusal comes promptly", || {
        let took = refused_in.expect("the refused exec was tried");
        assert!(
            took < PROMPT,
            "ExecSync of a refused exec took {:.1}s (containerd cleans a failed exec up with \
             Kill + Wait: the shim must answer both for an exec that never started)",
            took.as_secs_f64()
        );
    });
    checks.run("an allowed exec runs", || {
        let o = node.exec(&cid, &["echo", "allowed"]);
        assert_eq!((o.exit_code, o.out()), (0, "allowed"), "{o:?}");
        // The same file through another command: only the one argument list is forbidden.
        let o = node.exec(&cid, &["head", "-c", "0", "/etc/shadow"]);
        assert!(!o.stderr.contains(MESSAGE), "{o:?}");
    });
    node.teardown(&pod, Some(qemu.pid));
    node.finish_with(checks);
}
