use super::*;
use serde_json::json;

const BASE: &str = "package agent_policy\n\ndefault ReadStreamRequest := false\n";

#[test]
fn bool_result() {
    let mut p = PolicyEngine::new(&format!(
        "{BASE}ExecProcessRequest {{ input.process.Args[0] == \"ls\"\n print(\"ok\") }}\n\
         default ExecProcessRequest := false\nCloseStdinRequest := true\n"
    ))
    .unwrap();
    let d = p
        .evaluate("ExecProcessRequest", &json!({"process": {"Args": ["ls"]}}))
        .unwrap();
    assert!(d.allowed && !d.forced && !d.undefined);
    // The compiled form decides allowed requests and runs no prints (they only matter in a
    // denial message); the interpreter gathers them.
    assert!(p.has_fast_path());
    assert!(d.prints.is_empty(), "{:?}", d.prints);
    let mut interp = p.clone();
    interp.disable_fast_path();
    let d = interp
        .evaluate("ExecProcessRequest", &json!({"process": {"Args": ["ls"]}}))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.prints.len(), 1);
    assert!(d.prints[0].ends_with("ok"), "{:?}", d.prints);
    let d = p
        .evaluate("ExecProcessRequest", &json!({"process": {"Args": ["sh"]}}))
        .unwrap();
    assert!(!d.allowed);
    assert!(p.evaluate("CloseStdinRequest", &json!({})).unwrap().allowed);
    assert!(!p.evaluate("ReadStreamRequest", &json!({})).unwrap().allowed);
}

#[test]
fn undefined_rule_denies() {
    let mut p = PolicyEngine::new(BASE).unwrap();
    let d = p.evaluate("ExecProcessRequest", &json!({})).unwrap();
    assert!(!d.allowed && d.undefined);
    assert_eq!(
        d.denial_message("ExecProcessRequest"),
        "ExecProcessRequest is blocked by policy: the policy has no rule ExecProcessRequest"
    );
    // A rule that exists but has no default and whose body fails is undefined too.
    let mut p =
        PolicyEngine::new(&format!("{BASE}CloseStdinRequest {{ input.x == 1 }}\n")).unwrap();
    let d = p.evaluate("CloseStdinRequest", &json!({"x": 2})).unwrap();
    assert!(!d.allowed && d.undefined);
    assert!(
        p.evaluate("CloseStdinRequest", &json!({"x": 1}))
            .unwrap()
            .allowed
    );
    assert!(matches!(
        p.evaluate("bad.name", &json!({})),
        Err(PolicyError::BadRequestName(_))
    ));
}

#[test]
fn allow_requests_failing_policy() {
    let mut p = PolicyEngine::new(&format!(
        "{BASE}default AllowRequestsFailingPolicy := true\nExecProcessRequest {{ print(\"no\")\n false }}\n"
    ))
    .unwrap();
    assert!(p.allows_failures());
    let d = p.evaluate("ReadStreamRequest", &json!({})).unwrap();
    assert!(d.allowed && d.forced);
    let d = p.evaluate("PullImageRequest", &json!({})).unwrap();
    assert!(d.allowed && d.forced && d.undefined);
    let d = p
        .evaluate("AllowRequestsFailingPolicy", &json!({}))
        .unwrap();
    assert!(d.allowed && !d.forced);
}

/// A fast path compiled apart: the interpreter decides until it is installed; it installs
/// only into the policy it was compiled for, with the state the policy has by then.
#[test]
fn deferred_fast_path_installs_into_its_own_policy_only() {
    let rego = r#"package agent_policy
import future.keywords.if

default ExecProcessRequest := {"allowed": false}

ExecProcessRequest := {"allowed": true, "ops": [{"op": "add", "path": "/seen", "value": true}]} if {
    not data.seen
}

ExecProcessRequest := {"allowed": true, "ops": []} if {
    data.seen
    input.process.Args[0] == "ls"
}
"#;
    let (mut p, job) = PolicyEngine::new_deferred(rego).unwrap();
    let (mut other, other_job) = PolicyEngine::new_deferred(rego).unwrap();
    assert!(!p.has_fast_path());
    let req = |a: &str| json!({"process": {"Args": [a]}});
    // State changes before the compiled form lands.
    assert!(
        p.evaluate("ExecProcessRequest", &req("sh"))
            .unwrap()
            .allowed
    );
    assert_eq!(p.state(), json!({"pstate": {}, "seen": true}));
    assert!(!p.install_fast_path(other_job.compile()));
    assert!(!p.has_fast_path());
    assert!(p.install_fast_path(job.compile()));
    assert!(p.has_fast_path());
    // The fast path sees the state: `sh` is refused now, `ls` allowed.
    assert!(
        !p.evaluate("ExecProcessRequest", &req("sh"))
            .unwrap()
            .allowed
    );
    assert!(
        p.evaluate("ExecProcessRequest", &req("ls"))
            .unwrap()
            .allowed
    );
    // The other policy never got one and still decides with the interpreter.
    assert!(!other.has_fast_path());
    assert!(
        other
            .evaluate("ExecProcessRequest", &req("sh"))
            .unwrap()
            .allowed
    );
}

#[test]
fn ops_update_state() {
    // A policy in the style of newer genpolicy: the first exec of a container records its
    // command line in data.pstate; later execs must repeat it.
    let rego = r#"package agent_policy
import future.keywords.if

default ExecProcessRequest := {"allowed": false}

ExecProcessRequest := {"allowed": true, "ops": ops} if {
    not data.pstate[input.container_id]
    ops := [
        {"op": "add", "path": "/pstate", "value": {}},
        {"op": "add", "path": sprintf("/pstate/%s", [input.container_id]), "value": input.process.Args},
    ]
} else := {"allowed": true, "ops": []} if {
    data.pstate[input.container_id] == input.process.Args
}

ReadStreamRequest := {"allowed": true, "ops": [{"op": "remove", "path": "/nope"}]}
"#;
    let mut p = PolicyEngine::new(rego).unwrap();
    // Every policy starts with an empty state, as under Kata's agent.
    assert_eq!(p.state(), json!({"pstate": {}}));
    let req = |args: &[&str]| json!({"container_id": "c1", "process": {"Args": args}});
    let d = p.evaluate("ExecProcessRequest", &req(&["ls"])).unwrap();
    assert!(d.allowed);
    assert_eq!(d.ops_applied, 2);
    assert_eq!(p.state(), json!({"pstate": {"c1": ["ls"]}}));
    assert!(
        p.evaluate("ExecProcessRequest", &req(&["ls"]))
            .unwrap()
            .allowed
    );
    let d = p.evaluate("ExecProcessRequest", &req(&["sh"])).unwrap();
    assert!(!d.allowed);
    assert_eq!(p.state(), json!({"pstate": {"c1": ["ls"]}}));
    // An op that cannot apply is an error naming the op; the state is unchanged.
    let e = p.evaluate("ReadStreamRequest", &json!({})).unwrap_err();
    assert!(e.to_string().contains("state op 0"), "{e}");
    assert_eq!(p.state(), json!({"pstate": {"c1": ["ls"]}}));
}

/// genpolicy's state helpers read `data["pstate"]` before anything was recorded: the state
/// must exist, empty, from the start (as Kata's agent makes it), or every CreateContainer is
/// refused.
#[test]
fn genpolicy_state_helpers_start_from_an_empty_state() {
    let rego = r#"package agent_policy
import future.keywords.if

default CreateContainerRequest := {"allowed": false}

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    op := state_allows("sandbox_name", input.OCI.Annotations["io.kubernetes.cri.sandbox-name"])
    ops := [o | o := [op][_]; o != null]
}

state_allows(key, value) = action if {
    state := data["pstate"]
    not state[key]
    action := {"op": "add", "path": concat("/", ["/pstate", key]), "value": value}
}

state_allows(key, value) = action if {
    state := data["pstate"]
    value == state[key]
    action := null
}
"#;
    let mut p = PolicyEngine::new(rego).unwrap();
    let req =
        |name: &str| json!({"OCI": {"Annotations": {"io.kubernetes.cri.sandbox-name": name}}});
    let d = p.evaluate("CreateContainerRequest", &req("web")).unwrap();
    assert!(d.allowed, "{:?}", d.prints);
    assert_eq!(p.state(), json!({"pstate": {"sandbox_name": "web"}}));
    assert!(
        p.evaluate("CreateContainerRequest", &req("web"))
            .unwrap()
            .allowed
    );
    let mut interp = p.clone();
    interp.disable_fast_path();
    let d = interp
        .evaluate("CreateContainerRequest", &req("other"))
        .unwrap();
    assert!(
        !d.allowed,
        "interpreter: {:?} state {}",
        d.prints,
        interp.state()
    );
    let d = p.evaluate("CreateContainerRequest", &req("other")).unwrap();
    assert!(!d.allowed, "fast path: {:?} state {}", d.prints, p.state());
}

#[test]
fn parse_error_names_line() {
    let e = PolicyEngine::new("package agent_policy\n\ndefault X := true\nY {\n  input.a == \n}\n")
        .unwrap_err();
    match &e {
        PolicyError::Parse { line, message, .. } => {
            assert!((4..=6).contains(line), "{e}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn missing_package() {
    let e = PolicyEngine::new("package other\n\ndefault X := true\n").unwrap_err();
    assert!(
        matches!(&e, PolicyError::MissingPackage { found } if found == "other"),
        "{e:?}"
    );
    assert!(PolicyEngine::new("default X := true\n").is_err());
    assert!(PolicyEngine::new("").is_err());
}

#[test]
fn evaluation_error_is_an_error() {
    // Regorus resolves functions when a rule is first evaluated: the request fails (the agent
    // denies it), other rules still work.
    let mut p = PolicyEngine::new(&format!("{BASE}X {{ no_such_function(1) }}\n")).unwrap();
    let e = p.evaluate("X", &json!({})).unwrap_err();
    assert!(e.to_string().contains("no_such_function"), "{e}");
    assert!(!p.evaluate("ReadStreamRequest", &json!({})).unwrap().allowed);
}

#[test]
fn denial_message_is_bounded() {
    let d = Decision {
        allowed: false,
        forced: false,
        undefined: false,
        prints: (0..5000).map(|i| format!("print {i}")).collect(),
        ops_applied: 0,
    };
    let m = d.denial_message("CreateContainerRequest");
    assert!(m.starts_with("CreateContainerRequest is blocked by policy: ..."));
    assert!(m.len() <= MAX_DENIAL_MESSAGE);
    assert!(m.ends_with("print 4999"));
}

/// Every logged request of the corpus survives JSON -> message -> JSON. Our messages follow a
/// newer agent.proto than the one the logs were made with, so fields the log lacks come back with
/// their default value; those are listed (and must be defaults), anything else fails.
#[test]
fn corpus_requests_round_trip() {
    let mut added = std::collections::BTreeSet::new();
    let mut checked = 0;
    for case in kata_cc_fixtures::kata_policy_cases() {
        let text = std::fs::read_to_string(case.join("inputs.txt")).unwrap();
        for e in log::parse(&text).unwrap() {
            if input::descriptor(&e.name).is_none() {
                // AllowRequestsFailingPolicy is a policy rule, not a message.
                assert_eq!(e.name, ALLOW_FAILURES_RULE, "{}:{}", case.display(), e.line);
                continue;
            }
            let mut orig = e.input.clone();
            // Kata renamed Interface.pciPath (field 6) to devicePath after these logs were made;
            // our types.proto has the new name.
            if let Some(i) = orig.get_mut("interface").and_then(|i| i.as_object_mut()) {
                if let Some(v) = i.remove("pciPath") {
                    i.insert("devicePath".into(), v);
                    added.insert("UpdateInterfaceRequest..pciPath renamed devicePath".into());
                }
            }
            let m = input::from_json(&e.name, &orig)
                .unwrap_or_else(|err| panic!("{}:{}: {err}", case.display(), e.line));
            let mut back = input::to_json(&*m);
            if e.name == "CopyFileRequest" {
                // Upstream's keys, derived from the request (the logs are AKS-era): checked
                // here, then left out of the comparison.
                check_copy_file_derived(&orig, &mut back)
                    .unwrap_or_else(|err| panic!("{}:{}: {err}", case.display(), e.line));
                added.insert("CopyFileRequest..file_type, symlink_target (derived)".into());
            }
            compare(&orig, &back, &e.name, &mut added)
                .unwrap_or_else(|err| panic!("{}:{}: {err}", case.display(), e.line));
            checked += 1;
        }
    }
    assert!(checked >= 150, "{checked}");
    eprintln!("round-tripped {checked} requests; fields our protocol adds: {added:?}");
}

/// `file_type` follows `file_mode`, `symlink_target` is the link's target (the AKS-era
/// `symlink_src`) or null; both are removed from `back`.
fn check_copy_file_derived(
    orig: &serde_json::Value,
    back: &mut serde_json::Value,
) -> Result<(), String> {
    let mode = orig["file_mode"].as_u64().ok_or("no file_mode")? as u32;
    let obj = back.as_object_mut().ok_or("not an object")?;
    let ft = obj.remove("file_type").ok_or("no file_type")?;
    if ft != input::file_type(mode) {
        return Err(format!("file_type {ft} for file_mode {mode:#o}"));
    }
    let target = obj.remove("symlink_target").ok_or("no symlink_target")?;
    let want = match orig["symlink_src"].as_str() {
        Some(s) if !s.is_empty() => json!(s),
        _ => serde_json::Value::Null,
    };
    if target != want {
        return Err(format!("symlink_target {target}, expected {want}"));
    }
    Ok(())
}

fn compare(
    orig: &serde_json::Value,
    back: &serde_json::Value,
    path: &str,
    added: &mut std::collections::BTreeSet<String>,
) -> Result<(), String> {
    use serde_json::Value;
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, av) in a {
                let bv = b
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k}: lost in the round trip"))?;
                compare(av, bv, &format!("{path}.{k}"), added)?;
            }
            for (k, bv) in b {
                if !a.contains_key(k) {
                    let default = match bv {
                        Value::Null => true,
                        Value::Bool(b) => !b,
                        Value::Number(n) => n.as_f64() == Some(0.0),
                        Value::String(s) => s.is_empty(),
                        Value::Array(v) => v.is_empty(),
                        Value::Object(o) => o.is_empty(),
                    };
                    if !default {
                        return Err(format!("{path}.{k}: appeared with value {bv}"));
                    }
                    let generic = path.split('.').next().unwrap_or(path);
                    added.insert(format!("{generic}..{k}"));
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(x, y, &format!("{path}[{i}]"), added)?;
            }
            Ok(())
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: {a} came back as {b}")),
    }
}

/// The engine reaches the decisions in each case's outputs.json, in order.
#[test]
fn corpus_decisions() {
    for case in kata_cc_fixtures::kata_policy_cases() {
        let rego = std::fs::read_to_string(case.join("policy.rego")).unwrap();
        let text = std::fs::read_to_string(case.join("inputs.txt")).unwrap();
        let outputs: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(case.join("outputs.json")).unwrap())
                .unwrap();
        let entries = log::parse(&text).unwrap();
        assert_eq!(entries.len(), outputs.len(), "{}", case.display());
        let mut p = PolicyEngine::new(&rego).unwrap();
        for (e, want) in entries.iter().zip(&outputs) {
            let want = match want {
                serde_json::Value::Bool(b) => *b,
                other => other["allowed"].as_bool().unwrap(),
            };
            let d = p.evaluate(&e.name, &e.input).unwrap();
            assert_eq!(d.allowed, want, "{}:{} {}", case.display(), e.line, e.name);
        }
    }
}

/// Requests built from our own messages (not from the log JSON) get the same decisions.
#[test]
fn corpus_decisions_via_messages() {
    for case in kata_cc_fixtures::kata_policy_cases() {
        let rego = std::fs::read_to_string(case.join("policy.rego")).unwrap();
        let text = std::fs::read_to_string(case.join("inputs.txt")).unwrap();
        let mut p = PolicyEngine::new(&rego).unwrap();
        let mut q = p.clone();
        for e in log::parse(&text).unwrap() {
            let Ok(m) = input::from_json(&e.name, &e.input) else {
                continue;
            };
            let a = p.evaluate(&e.name, &e.input).unwrap().allowed;
            let b = q.evaluate(&e.name, &input::to_json(&*m)).unwrap().allowed;
            assert_eq!(a, b, "{}:{} {}", case.display(), e.line, e.name);
        }
    }
}

#[test]
fn engine_is_send() {
    fn send<T: Send + 'static>() {}
    send::<PolicyEngine>();
}

/// A CopyFile request reaches the policy with both generations' keys and without its data;
/// from_json takes either generation's keys back.
#[test]
fn copy_file_input_has_both_generations_keys() {
    use agent_proto::agent::CopyFileRequest;
    let mut r = CopyFileRequest::new();
    r.path = "/run/kata-containers/shared/containers/c-0123456789abcdef-sa/..data".into();
    r.file_mode = 0o120777;
    r.dir_mode = 0x8000_01e8;
    r.data = b"..2024_05_08".to_vec();
    let v = input::to_json(&r);
    assert_eq!(v["file_type"], "Symlink");
    assert_eq!(v["symlink_target"], "..2024_05_08");
    assert_eq!(v["symlink_src"], "..2024_05_08");
    assert!(v.get("data").is_none(), "{v}");
    let back = input::from_json("CopyFileRequest", &v).unwrap();
    assert_eq!(input::to_json(&*back), v);
    // An upstream log line has no symlink_src.
    let mut upstream = v.clone();
    upstream.as_object_mut().unwrap().remove("symlink_src");
    let m = input::from_json("CopyFileRequest", &upstream).unwrap();
    assert_eq!(input::to_json(&*m), v);

    for (mode, ft) in [
        (0o100644, "Regular"),
        (0o40755, "Directory"),
        (0o41777, "Directory"),
        (0o644, "Unknown"),
        (0o140755, "Unknown"),
    ] {
        let mut r = CopyFileRequest::new();
        r.file_mode = mode;
        r.data = b"content".to_vec();
        let v = input::to_json(&r);
        assert_eq!(v["file_type"], ft, "{mode:#o}");
        assert_eq!(v["symlink_target"], serde_json::Value::Null);
        assert_eq!(v["symlink_src"], "");
    }
}

/// Upstream's CopyFile rules (genpolicy rules.rego, cut down) decide on our input.
#[test]
fn upstream_copy_file_rules_see_file_type_and_target() {
    let rego = r#"package agent_policy
import future.keywords.if

default CopyFileRequest := false

CopyFileRequest if {
    input.file_type == "Regular"
}
CopyFileRequest if {
    input.file_type == "Directory"
}
CopyFileRequest if {
    input.file_type == "Symlink"
    not regex.match("(^|/)\\.\\.($|/)", input.symlink_target)
    not startswith(input.symlink_target, "/")
}
"#;
    use agent_proto::agent::CopyFileRequest;
    let mut p = PolicyEngine::new(rego).unwrap();
    let mut decide = |mode: u32, data: &[u8]| {
        let mut r = CopyFileRequest::new();
        r.file_mode = mode;
        r.data = data.to_vec();
        p.evaluate("CopyFileRequest", &input::to_json(&r))
            .unwrap()
            .allowed
    };
    assert!(decide(0o100644, b"x"));
    assert!(decide(0o40755, b""));
    assert!(decide(0o120777, b"..data/token"));
    assert!(!decide(0o120777, b"/etc"));
    assert!(!decide(0o120777, b"../x"));
    assert!(!decide(0o644, b"x"));
}

/// `Storage.shared` reaches a policy that names it and not one that never does.
#[test]
fn storage_shared_follows_the_policy() {
    let input =
        json!({"storages": [{"driver": "ephemeral", "shared": false}], "sandbox_pidns": false});
    // AKS-era: the storage compared whole with the policy's own (no `shared`).
    let mut aks = PolicyEngine::new(
        "package agent_policy\n\nCreateSandboxRequest { input.storages[0] == {\"driver\": \"ephemeral\"} }\n",
    )
    .unwrap();
    assert!(
        aks.evaluate("CreateSandboxRequest", &input)
            .unwrap()
            .allowed
    );
    // Upstream: tests the field.
    let mut up = PolicyEngine::new(
        "package agent_policy\n\nCreateSandboxRequest { input.storages[0].shared == false }\n",
    )
    .unwrap();
    assert!(up.evaluate("CreateSandboxRequest", &input).unwrap().allowed);
    let mut up2 = PolicyEngine::new(
        "package agent_policy\n\np := {\"driver\": \"ephemeral\", \"shared\": false}\n\
         CreateSandboxRequest { input.storages[0] == p }\n",
    )
    .unwrap();
    assert!(
        up2.evaluate("CreateSandboxRequest", &input)
            .unwrap()
            .allowed
    );
    assert!(names_storage_shared("x := input.storages[0].shared"));
    assert!(names_storage_shared("{\"shared\": true}"));
    assert!(!names_storage_shared(
        "count(input.shared_mounts) == 0 # shared dir"
    ));
    assert!(!names_storage_shared(
        "\"/run/kata-containers/shared/containers\""
    ));
}

/// A value assigned and never tested again still has to be defined (OPA's semantics, and the
/// interpreter's): the fast path must not allow what the policy denies. regorus's VM binds
/// `x := <undefined>` and goes on; the VM's copy of the policy unifies instead.
#[test]
fn fast_path_never_allows_what_the_policy_denies() {
    let bodies = [
        "op := input.missing",
        "op := f(input.v)",
        "op := f(input.v); ops := [o | o := [op][_]; o != null]",
        "x := input.missing; y := x.allowed",
        "s := data.pstate; v := s[input.v]",
        "every a in [1] { b := input.missing }",
    ];
    for body in bodies {
        let rego = format!(
            "package agent_policy\nimport future.keywords.if\nimport future.keywords.every\n\
             default CreateContainerRequest := false\n\
             CreateContainerRequest if {{ {body} }}\n\
             f(v) := a if {{ v == 1; a := 1 }}\n\
             ExecProcessRequest := {{\"allowed\": true, \"ops\": [{{\"op\": \"add\", \"path\": \"/pstate/k\", \"value\": \"web\"}}]}}\n"
        );
        let mut p = PolicyEngine::new(&rego).unwrap();
        assert!(p.has_fast_path(), "{body}: no fast path");
        assert!(
            p.evaluate("ExecProcessRequest", &json!({}))
                .unwrap()
                .allowed
        );
        for v in [json!(2), json!("other")] {
            let input = json!({ "v": v });
            let mut interp = p.clone();
            interp.disable_fast_path();
            assert!(
                !interp
                    .evaluate("CreateContainerRequest", &input)
                    .unwrap()
                    .allowed,
                "{body}: the interpreter allows {input}"
            );
            assert!(
                !p.evaluate("CreateContainerRequest", &input)
                    .unwrap()
                    .allowed,
                "{body}: the fast path allows {input}"
            );
        }
        // And what the policy allows, the fast path still allows.
        let ok = format!(
            "{}\nCreateContainerRequest if {{ op := f(input.v); op == 1 }}\n",
            rego
        );
        let mut p = PolicyEngine::new(&ok).unwrap();
        assert!(p.has_fast_path());
        assert!(
            p.evaluate("CreateContainerRequest", &json!({"v": 1}))
                .unwrap()
                .allowed
        );
    }
}
