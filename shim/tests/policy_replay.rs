//! `kata-cc policy replay` reaches, for every conformance case, exactly the decisions in its
//! outputs.json (true / {"allowed": true} -> allow), line for line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/kata-policy");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("policy.rego").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "conformance cases missing in {}",
        dir.display()
    );
    cases
}

fn kata_cc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(args)
        .output()
        .expect("run kata-cc")
}

#[test]
fn replay_matches_conformance_outputs() {
    for case in cases() {
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
