//! `kata-cc policy replay` reaches, for every case of Kata's policy corpus (from the regorus
//! package), exactly the decisions in its outputs.json (true / {"allowed": true} -> allow), line
//! for line.

use std::process::Command;

fn kata_cc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(args)
        .output()
        .expect("run kata-cc")
}

#[test]
fn replay_matches_conformance_outputs() {
    for case in kata_cc_fixtures::kata_policy_cases() {
        let out = kata_cc(&[
            "policy",
            "replay",
            "--policy",
            case.join("policy.rego").to_str().unwrap(),
            "--requests",
            case.join("inputs.txt").to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let outputs: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(case.join("outputs.json")).unwrap())
                .unwrap();
        let inputs = std::fs::read_to_string(case.join("inputs.txt")).unwrap();
        let names: Vec<String> = inputs
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('"').nth(3).unwrap().to_string())
            .collect();
        assert_eq!(got.len(), outputs.len(), "{}", case.display());
        assert_eq!(names.len(), outputs.len(), "{}", case.display());
        let mut denials = 0;
        for (i, ((line, want), name)) in got.iter().zip(&outputs).zip(&names).enumerate() {
            let allowed = match want {
                serde_json::Value::Bool(b) => *b,
                other => other["allowed"].as_bool().expect("allowed is a bool"),
            };
            denials += usize::from(!allowed);
            let expected = format!("{} {name}", if allowed { "allow" } else { "deny" });
            assert_eq!(line, &expected, "{} request {}", case.display(), i + 1);
        }
        // Each case has at least one denial (AllowRequestsFailingPolicy): the check can fail.
        assert!(denials > 0, "{}", case.display());
    }
}

#[test]
fn replay_reports_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.rego");
    std::fs::write(&policy, "package agent_policy\n\nX {\n  input.a ==\n").unwrap();
    let log = dir.path().join("log.txt");
    std::fs::write(&log, "[\"ep\":\"X\",{}],\n").unwrap();
    let out = kata_cc(&[
        "policy",
        "replay",
        "--policy",
        policy.to_str().unwrap(),
        "--requests",
        log.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.rego") && err.contains("line"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `kata-cc policy check` on a YAML manifest (two documents) against the genpolicy policy of
/// the `pod-exec` case, with that case's request log as the skeleton: the pod as generated is
/// allowed, a changed command and an unlisted exec probe are denied, naming the rule's line.
#[test]
fn check_names_the_denied_container_and_probe() {
    let case = kata_cc_fixtures::kata_policy_cases()
        .into_iter()
        .find(|c| c.ends_with("pod-exec"))
        .expect("pod-exec case");
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: v1
kind: Pod
metadata:
  name: exec-test
spec:
  containers:
  - name: busybox
    image: mcr.microsoft.com/aks/e2e/library-busybox:master.220314.1-linux-amd64
    command: ["/bin/sh", "-c", "while true; do echo Kubernetes; sleep 10; done"]
    livenessProbe:
      exec:
        command: ["echo", "${ISTIO_META_NODE_NAME} startup"]
    readinessProbe:
      exec:
        command: ["cat", "/etc/shadow"]
  - name: busybox
    image: mcr.microsoft.com/aks/e2e/library-busybox:master.220314.1-linux-amd64
    command: ["/bin/sh", "-c", "nc -l -p 4444 -e /bin/sh"]
"#,
    )
    .unwrap();
    let out = kata_cc(&[
        "policy",
        "check",
        "--policy",
        case.join("policy.rego").to_str().unwrap(),
        "--pod",
        pod.to_str().unwrap(),
        "--base",
        case.join("inputs.txt").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decisions: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("allow ") || l.starts_with("deny "))
        .collect();
    assert_eq!(
        decisions,
        [
            "allow CreateSandboxRequest sandbox",
            "allow CreateContainerRequest sandbox (pause)",
            "allow CreateContainerRequest container busybox",
            "allow ExecProcessRequest container busybox livenessProbe",
            "deny ExecProcessRequest container busybox readinessProbe",
            "deny CreateContainerRequest container busybox",
        ],
        "{stdout}"
    );
    // Each denial is followed by the policy's prints: the rule's file line and what failed.
    assert!(stdout.contains("i_command = cat /etc/shadow"), "{stdout}");
    assert!(
        stdout.contains("policy.rego:") && stdout.contains("i_arg = nc -l -p 4444 -e /bin/sh"),
        "{stdout}"
    );

    // A manifest without a pod is one clear error.
    std::fs::write(&pod, "kind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let out = kata_cc(&[
        "policy",
        "check",
        "--policy",
        case.join("policy.rego").to_str().unwrap(),
        "--pod",
        pod.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no Pod or pod template") && stderr.contains("ConfigMap"),
        "{stderr}"
    );
}
