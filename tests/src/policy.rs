//! Pod policies for the end-to-end tests: the shipped allow-all policy with some requests
//! turned off, and the annotation encodings (base64, gzip'd init-data). Encoding uses the
//! system tools (`gzip`, `sha*sum`) so the tests do not share code with the shim under test.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::paths;

pub const POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// The allow-all policy the bake ships (hack/guest/policy/allow-all.rego).
pub fn allow_all() -> String {
    let p = paths::repo().join("hack/guest/policy/allow-all.rego");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// allow-all with the given requests denied.
pub fn allow_all_except(denied: &[&str]) -> String {
    let mut text = allow_all();
    for r in denied {
        let allow = format!("default {r} := true\n");
        assert!(
            text.contains(&allow),
            "allow-all.rego has no line {allow:?}"
        );
        text = text.replace(&allow, &format!("default {r} := false\n"));
    }
    text
}

/// allow-all, except that ExecProcessRequest is allowed only for commands other than `argv`
/// (the whole argument list, as `input.process.Args` of Kata's policy input).
pub fn allow_all_except_exec_of(argv: &[&str]) -> String {
    let text = allow_all_except(&["ExecProcessRequest"]);
    let args = serde_json::to_string(argv).expect("JSON of strings");
    format!(
        "{text}\n# Exec allowed, except of one command.\nExecProcessRequest {{\n    input.process.Args != {args}\n}}\n"
    )
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs a filter tool on `input`, returns its stdout.
fn filter(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    // Written from a thread: a large input would fill the pipe while stdout is not read.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write");
    assert!(out.status.success(), "{tool} {args:?} failed");
    out.stdout
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    filter("gzip", &["-n", "-c"], data)
}

/// Hex digest with coreutils' `<alg>sum` (alg = sha256, sha384, sha512).
pub fn digest_hex(alg: &str, data: &[u8]) -> String {
    let out = filter(&format!("{alg}sum"), &[], data);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An init-data TOML document carrying `policy`.
pub fn initdata(alg: &str, policy: &str) -> String {
    format!("algorithm = \"{alg}\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''\n{policy}'''\n")
}

/// `--annotation` arguments for ctr.
pub fn annotation_args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--annotation".to_string(), format!("{k}={v}")])
        .collect()
}

/// The policy annotation for `policy`, as ctr arguments.
pub fn policy_args(policy: &str) -> Vec<String> {
    annotation_args(&[(POLICY_ANNOTATION, base64(policy.as_bytes()))])
}

/// The init-data annotation for a TOML document, as ctr arguments.
pub fn initdata_args(toml: &str) -> Vec<String> {
    annotation_args(&[(INITDATA_ANNOTATION, base64(&gzip(toml.as_bytes())))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_base64_tool() {
        for input in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"\x00\xff\x10binary",
        ] {
            let want = filter("base64", &["-w0"], input);
            assert_eq!(base64(input), String::from_utf8_lossy(&want), "{input:?}");
        }
    }

    /// The policy the CRI policy test sends decides as meant (the agent runs the same engine).
    #[test]
    fn exec_of_one_command_is_denied() {
        let text = allow_all_except_exec_of(&["cat", "/etc/shadow"]);
        let mut p = kata_cc_policy::PolicyEngine::new(&text).expect("the policy parses");
        let exec = |args: &[&str]| serde_json::json!({"process": {"Args": args}});
        let d = p
            .evaluate("ExecProcessRequest", &exec(&["cat", "/etc/shadow"]))
            .unwrap();
        assert!(!d.allowed);
        assert!(d
            .denial_message("ExecProcessRequest")
            .starts_with("ExecProcessRequest is blocked by policy"));
        for ok in [
            &["cat", "/etc/hostname"][..],
            &["cat"],
            &["sh", "-c", "cat /etc/shadow"],
        ] {
            assert!(
                p.evaluate("ExecProcessRequest", &exec(ok)).unwrap().allowed,
                "{ok:?}"
            );
        }
        let create = serde_json::json!({"container_id": "c"});
        assert!(
            p.evaluate("CreateContainerRequest", &create)
                .unwrap()
                .allowed
        );
    }

    /// The demo's policy (examples/demo-policy.rego): exec yes, of a shell no.
    #[test]
    fn demo_policy_refuses_shells_only() {
        let path = paths::repo().join("examples/demo-policy.rego");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut p = kata_cc_policy::PolicyEngine::new(&text).expect("the policy parses");
        let exec = |args: &[&str]| serde_json::json!({"process": {"Args": args}});
        for args in [&["sh", "-c", "id"][..], &["/bin/sh"], &["busybox", "sh"]] {
            assert!(
                !p.evaluate("ExecProcessRequest", &exec(args))
                    .unwrap()
                    .allowed,
                "{args:?}"
            );
        }
        for args in [
            &["uname", "-r"][..],
            &["cat", "/etc/demo/greeting"],
            &["hostname"],
        ] {
            assert!(
                p.evaluate("ExecProcessRequest", &exec(args))
                    .unwrap()
                    .allowed,
                "{args:?}"
            );
        }
        for r in [
            "CreateContainerRequest",
            "ReadStreamRequest",
            "SetPolicyRequest",
        ] {
            assert!(
                p.evaluate(r, &serde_json::json!({})).unwrap().allowed,
                "{r}"
            );
        }
    }
}
