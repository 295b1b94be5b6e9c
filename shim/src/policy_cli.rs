//! `kata-cc policy ...`: runs request logs through the agent's own policy engine
//! (`kata_cc_policy`), so the host tool and the guest decide alike.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use kata_cc_policy::{input, log, PolicyEngine};
use serde_json::{json, Value};
use thiserror::Error;

pub const USAGE: &str = "  policy replay --policy P --requests LOG [--verbose]\n                           feed a request log through the policy in order; one `allow|deny <Request>` line each\n  policy bench --policy P --requests LOG [--iterations N]\n                           per-request-type evaluation time (p50/p99) over the log;\n                           --interpreter: without the compiled (VM) fast path; --json FILE: also as JSON\n  policy check --policy P --pod POD.yaml [--base LOG]\n                           which of a pod's container creations/exec probes the policy denies (--help)\n";

/// `policy gen`'s usage lines (with [`USAGE`] in `kata-cc help`).
pub const GEN_USAGE: &str = kata_cc_shim::policy_gen::cli::USAGE;

/// A command line `kata-cc policy` cannot take (exit status 2).
#[derive(Debug, Error, PartialEq, Eq)]
enum ArgsError {
    #[error("kata-cc policy: unknown command '{0}'\nusage:\n{USAGE}")]
    UnknownCommand(String),
    #[error("kata-cc policy {cmd}: {flag} needs a value")]
    NoValue { cmd: String, flag: String },
    #[error("kata-cc policy {cmd}: --iterations {value}: not a positive number")]
    Iterations { cmd: String, value: String },
    #[error("kata-cc policy {cmd}: unknown argument {arg}")]
    Unknown { cmd: String, arg: String },
    #[error("kata-cc policy {cmd}: --policy and --requests are required")]
    PolicyAndRequests { cmd: String },
    /// `policy check --help`: the help text, as an error so that it goes to stderr.
    #[error("{CHECK_HELP}")]
    CheckHelp,
    #[error("kata-cc policy check: unknown argument {0}\n{CHECK_HELP}")]
    CheckUnknown(String),
    #[error("kata-cc policy check: --policy and --pod are required\n{CHECK_HELP}")]
    PolicyAndPod,
}

/// A file of `kata-cc policy` that cannot be used; `path` as given on the command line.
#[derive(Debug, Error)]
enum InputError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Policy {
        path: String,
        #[source]
        source: kata_cc_policy::PolicyError,
    },
    #[error("{path}: {source}")]
    Log {
        path: String,
        #[source]
        source: log::LogError,
    },
    /// The --base log has no request of the kind (`sandbox` or `container`).
    #[error("{path}: no {kind} CreateContainerRequest")]
    NoSkeleton { path: String, kind: &'static str },
    #[error("{path}: not a JSON or YAML manifest: {source}")]
    Manifest {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path}: the pod template is not a mapping")]
    TemplateNotMapping { path: String },
    #[error("{path}: kind: no Pod or pod template in the manifest (kinds: {})", .kinds.join(", "))]
    NoPod { path: String, kinds: Vec<String> },
    /// A pod field (`field`) the check needs: `problem` says what is wrong with it.
    #[error("{path}: {field}: {problem}")]
    PodField {
        path: String,
        field: &'static str,
        problem: &'static str,
    },
}

fn read(path: &str) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_string(),
        source,
    })
}

fn policy_engine(path: &str, rego: &str) -> Result<PolicyEngine, InputError> {
    PolicyEngine::new(rego).map_err(|source| InputError::Policy {
        path: path.to_string(),
        source,
    })
}

fn parse_log(path: &str, text: &str) -> Result<Vec<log::LogEntry>, InputError> {
    log::parse(text).map_err(|source| InputError::Log {
        path: path.to_string(),
        source,
    })
}

struct Args {
    policy: String,
    requests: String,
    iterations: usize,
    verbose: bool,
    interpreter: bool,
    json: Option<String>,
}

fn parse_args(cmd: &str, args: &[String]) -> Result<Args, ArgsError> {
    let mut a = Args {
        policy: String::new(),
        requests: String::new(),
        iterations: 50,
        verbose: false,
        interpreter: false,
        json: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().cloned().ok_or_else(|| ArgsError::NoValue {
                cmd: cmd.to_string(),
                flag: flag.clone(),
            })
        };
        match flag.as_str() {
            "--policy" => a.policy = value()?,
            "--requests" => a.requests = value()?,
            "--iterations" => {
                let v = value()?;
                a.iterations = match v.parse().ok().filter(|n| *n > 0) {
                    Some(n) => n,
                    None => {
                        return Err(ArgsError::Iterations {
                            cmd: cmd.to_string(),
                            value: v,
                        })
                    }
                };
            }
            "--verbose" | "-v" => a.verbose = true,
            "--interpreter" => a.interpreter = true,
            "--json" => a.json = Some(value()?),
            other => {
                return Err(ArgsError::Unknown {
                    cmd: cmd.to_string(),
                    arg: other.to_string(),
                })
            }
        }
    }
    if a.policy.is_empty() || a.requests.is_empty() {
        return Err(ArgsError::PolicyAndRequests {
            cmd: cmd.to_string(),
        });
    }
    Ok(a)
}

/// The engine and the request log of `replay`/`bench`.
fn load(a: &Args) -> Result<(PolicyEngine, Vec<log::LogEntry>), InputError> {
    let engine = policy_engine(&a.policy, &read(&a.policy)?)?;
    let entries = parse_log(&a.requests, &read(&a.requests)?)?;
    Ok((engine, entries))
}

pub fn main(args: &[String]) -> ExitCode {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("usage:\n{USAGE}{GEN_USAGE}");
            return ExitCode::from(2);
        }
    };
    if cmd == "check" {
        return check_main(rest);
    }
    if cmd == "gen" {
        return kata_cc_shim::policy_gen::cli::main(rest);
    }
    let parsed = match cmd {
        "replay" | "bench" => parse_args(cmd, rest),
        other => Err(ArgsError::UnknownCommand(other.to_string())),
    };
    let a = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (mut engine, entries) = match load(&a) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kata-cc policy {cmd}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.interpreter {
        engine.disable_fast_path();
    }
    if cmd == "replay" {
        replay(engine, &entries, a.verbose)
    } else {
        bench(engine, &entries, a.iterations, a.json.as_deref())
    }
}

fn replay(mut engine: PolicyEngine, entries: &[log::LogEntry], verbose: bool) -> ExitCode {
    for e in entries {
        match engine.evaluate(&e.name, &e.input) {
            Ok(d) => {
                println!("{} {}", if d.allowed { "allow" } else { "deny" }, e.name);
                if verbose && !d.allowed {
                    // Every print, not the agent's shortened message: the rule that failed is
                    // among the last, the input often among the first.
                    eprintln!(
                        "line {}: {} is blocked by policy; its prints:",
                        e.line, e.name
                    );
                    for p in &d.prints {
                        eprintln!("  {p}");
                    }
                }
            }
            Err(err) => {
                // An evaluation error denies, as in the agent.
                println!("deny {}", e.name);
                if verbose {
                    eprintln!("line {}: {err}", e.line);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Replays the log `iterations` times, each pass from the freshly loaded policy (state ops
/// start over), timing each evaluation (input conversion included).
fn bench(
    engine: PolicyEngine,
    entries: &[log::LogEntry],
    iterations: usize,
    json_out: Option<&str>,
) -> ExitCode {
    let mut times: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for _ in 0..iterations {
        let mut p = engine.clone();
        for e in entries {
            let start = Instant::now();
            let _ = p.evaluate(&e.name, &e.input);
            times
                .entry(e.name.as_str())
                .or_default()
                .push(start.elapsed().as_nanos() as u64);
        }
    }
    println!(
        "{:<32} {:>7} {:>10} {:>10}",
        "request", "count", "p50 (us)", "p99 (us)"
    );
    let mut rows = Vec::new();
    for (name, mut t) in times {
        t.sort_unstable();
        let pct = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        println!(
            "{:<32} {:>7} {:>10.1} {:>10.1}",
            name,
            t.len(),
            pct(0.50),
            pct(0.99)
        );
        rows.push(
            json!({"request": name, "count": t.len(), "p50_us": pct(0.50), "p99_us": pct(0.99)}),
        );
    }
    if let Some(path) = json_out {
        let doc = json!({"fast_path": engine.has_fast_path(), "iterations": iterations, "requests": rows});
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            eprintln!("kata-cc policy bench: {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// `policy check`: the requests a pod would cause, checked against a policy.

pub const CHECK_HELP: &str = "\
kata-cc policy check --policy P --pod POD.yaml [--base LOG] [--verbose]
  Builds the agent requests the pod's creation would cause and says, per container, whether the
  policy allows them: CreateSandboxRequest and the sandbox (pause) container first, then each container's
  CreateContainerRequest, then one ExecProcessRequest per exec probe (liveness/readiness/startup).
  POD: a Kubernetes manifest, YAML or JSON (several documents allowed): its first Pod, or the
  pod template of its first Deployment/StatefulSet/DaemonSet/ReplicaSet/Job/CronJob.
  Modeled from the pod: metadata.name/namespace (CRI sandbox-name/namespace annotations),
  each container's name, image (image-name annotation), command+args (process Args), env entries
  with literal `value` (appended to the base env, replacing same-named ones), workingDir (Cwd),
  securityContext.privileged / runAsUser / runAsGroup / readOnlyRootFilesystem, exec probe
  commands. Not modeled: the image's own entrypoint/env/user (the pod must give `command` or the
  base's args are kept), valueFrom env, volumes/mounts, resources, devices, networking.
  Everything not modeled comes from --base: a request log of a similar pod (the format of
  `kata-cc policy replay`), whose first sandbox/container CreateContainerRequest and first
  ExecProcessRequest are used as skeletons (their container ids replaced per container).
  Without --base the skeletons are the protocol's empty messages, which generated policies deny
  for unmodeled fields (mounts, capabilities, namespaces): the output says so.
  Output: one `allow|deny <Request> <what>` line each, a denial followed by the policy's last
  prints (the failing rule and line); exit status 1 if anything is denied.
";

const ANNO_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const ANNO_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const ANNO_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const ANNO_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const ANNO_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
const ANNO_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The CreateSandboxRequest of the pod: the base log's (its sandbox id replaced), else the
/// shim's shape: the pod's hostname, CRI's 64 MiB shm.
fn create_sandbox_request(sk: &Skeletons, pod: &Value, name: &str, sandbox_id: &str) -> Value {
    if let Some(base) = &sk.create_sandbox {
        let mut v = with_id(base, sandbox_id);
        v["sandbox_id"] = json!(sandbox_id);
        return v;
    }
    let hostname: String = pod
        .pointer("/spec/hostname")
        .and_then(Value::as_str)
        .unwrap_or(name)
        .chars()
        .take(64)
        .collect();
    use agent_proto::contract;
    let req = agent_proto::agent::CreateSandboxRequest {
        hostname,
        storages: vec![agent_proto::agent::Storage {
            driver: contract::EPHEMERAL_DRIVER.to_string(),
            source: "shm".to_string(),
            fstype: "tmpfs".to_string(),
            options: contract::shm_options(contract::DEFAULT_SHM_SIZE),
            mount_point: contract::SANDBOX_SHM_DIR.to_string(),
            ..Default::default()
        }],
        sandbox_id: sandbox_id.to_string(),
        ..Default::default()
    };
    input::to_json(&req)
}

struct CheckArgs {
    policy: String,
    pod: String,
    base: Option<String>,
    verbose: bool,
}

fn parse_check_args(args: &[String]) -> Result<CheckArgs, ArgsError> {
    let mut a = CheckArgs {
        policy: String::new(),
        pod: String::new(),
        base: None,
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().cloned().ok_or_else(|| ArgsError::NoValue {
                cmd: "check".into(),
                flag: flag.clone(),
            })
        };
        match flag.as_str() {
            "--policy" => a.policy = value()?,
            "--pod" => a.pod = value()?,
            "--base" => a.base = Some(value()?),
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => return Err(ArgsError::CheckHelp),
            other => return Err(ArgsError::CheckUnknown(other.to_string())),
        }
    }
    if a.policy.is_empty() || a.pod.is_empty() {
        return Err(ArgsError::PolicyAndPod);
    }
    Ok(a)
}

/// Request skeletons: everything the pod spec does not say.
struct Skeletons {
    /// The base log's CreateSandboxRequest, if it has one.
    create_sandbox: Option<Value>,
    sandbox: Value,
    container: Value,
    exec: Value,
    from_base: bool,
}

fn empty_request(name: &str, oci: bool) -> Value {
    let seed = if oci {
        json!({"OCI": {"Process": {"User": {}, "Capabilities": {}}, "Root": {}, "Linux": {}}})
    } else {
        json!({"process": {"User": {}}})
    };
    input::from_json(name, &seed)
        .map(|m| input::to_json(&*m))
        .unwrap_or(seed)
}

fn container_type(req: &Value) -> Option<&str> {
    req.pointer(&format!(
        "/OCI/Annotations/{}",
        ANNO_CONTAINER_TYPE.replace('~', "~0").replace('/', "~1")
    ))?
    .as_str()
}

fn skeletons(base: Option<&str>) -> Result<Skeletons, InputError> {
    let mut s = Skeletons {
        create_sandbox: None,
        sandbox: empty_request("CreateContainerRequest", true),
        container: empty_request("CreateContainerRequest", true),
        exec: empty_request("ExecProcessRequest", false),
        from_base: false,
    };
    let Some(path) = base else { return Ok(s) };
    let entries = parse_log(path, &read(path)?)?;
    let (mut sandbox, mut container, mut exec) = (None, None, None);
    for e in entries {
        match e.name.as_str() {
            "CreateContainerRequest" => match container_type(&e.input) {
                Some("sandbox") if sandbox.is_none() => sandbox = Some(e.input),
                Some("container") if container.is_none() => container = Some(e.input),
                _ => {}
            },
            "ExecProcessRequest" if exec.is_none() => exec = Some(e.input),
            "CreateSandboxRequest" if s.create_sandbox.is_none() => {
                s.create_sandbox = Some(e.input)
            }
            _ => {}
        }
    }
    let missing = |kind| InputError::NoSkeleton {
        path: path.to_string(),
        kind,
    };
    s.sandbox = sandbox.ok_or_else(|| missing("sandbox"))?;
    s.container = container.ok_or_else(|| missing("container"))?;
    if let Some(x) = exec {
        s.exec = x;
    }
    s.from_base = true;
    Ok(s)
}

/// A container id for `what`, stable across runs (64 hex digits like containerd's).
fn container_id(what: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(what.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `skeleton` with its container id replaced by `new_id` wherever it occurs (bundle paths,
/// mount sources, storages).
fn with_id(skeleton: &Value, new_id: &str) -> Value {
    let old = skeleton
        .get("container_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    if old.is_empty() {
        let mut v = skeleton.clone();
        v["container_id"] = json!(new_id);
        return v;
    }
    let text = skeleton.to_string().replace(old, new_id);
    serde_json::from_str(&text).unwrap_or_else(|_| skeleton.clone())
}

fn set_annotation(req: &mut Value, key: &str, value: &str) {
    if let Some(oci) = req.get_mut("OCI").and_then(Value::as_object_mut) {
        let annos = oci.entry("Annotations").or_insert_with(|| json!({}));
        if !annos.is_object() {
            *annos = json!({});
        }
        annos[key] = json!(value);
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies the modeled fields of a pod container to a process (`OCI.Process` or an exec's
/// `process`).
fn apply_container(process: &mut Value, c: &Value) {
    let mut args = str_list(c.get("command"));
    if !args.is_empty() {
        args.extend(str_list(c.get("args")));
        process["Args"] = json!(args);
    } else if c.get("args").is_some() {
        // args without command: the image's entrypoint (not known) + args; keep the base's
        // first word as the entrypoint.
        let mut base = str_list(process.get("Args"));
        base.truncate(1);
        base.extend(str_list(c.get("args")));
        process["Args"] = json!(base);
    }
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        let mut out = str_list(process.get("Env"));
        for e in env {
            let (Some(name), Some(value)) = (
                e.get("name").and_then(Value::as_str),
                e.get("value").and_then(Value::as_str),
            ) else {
                continue;
            };
            out.retain(|x| x.split('=').next() != Some(name));
            out.push(format!("{name}={value}"));
        }
        process["Env"] = json!(out);
    }
    if let Some(cwd) = c.get("workingDir").and_then(Value::as_str) {
        process["Cwd"] = json!(cwd);
    }
    if let Some(sc) = c.get("securityContext") {
        if let Some(uid) = sc.get("runAsUser").and_then(Value::as_u64) {
            process["User"]["UID"] = json!(uid);
        }
        if let Some(gid) = sc.get("runAsGroup").and_then(Value::as_u64) {
            process["User"]["GID"] = json!(gid);
        }
    }
}

/// The pod of a manifest: JSON or YAML (several `---` documents allowed, as `kubectl apply`
/// takes them). The first Pod is used, or else the pod template of the first workload
/// (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job; a CronJob's job template).
fn read_pod(path: &str, text: &str) -> Result<Value, InputError> {
    let docs: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(v) => vec![v],
        Err(_) => {
            let mut docs = Vec::new();
            for d in serde_norway::Deserializer::from_str(text) {
                let v = <Value as serde::Deserialize>::deserialize(d).map_err(|source| {
                    InputError::Manifest {
                        path: path.to_string(),
                        source,
                    }
                })?;
                if !v.is_null() {
                    docs.push(v);
                }
            }
            docs
        }
    };
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            d.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    if let Some(p) = docs
        .iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("Pod"))
    {
        return Ok(p.clone());
    }
    for d in &docs {
        let template = match d.get("kind").and_then(Value::as_str) {
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job") => {
                d.pointer("/spec/template")
            }
            Some("CronJob") => d.pointer("/spec/jobTemplate/spec/template"),
            _ => None,
        };
        if let Some(t) = template {
            if !t.is_object() {
                return Err(InputError::TemplateNotMapping {
                    path: path.to_string(),
                });
            }
            let mut pod = t.clone();
            pod["kind"] = json!("Pod");
            // A template has no name of its own: the workload's stands in.
            if !pod["metadata"].is_object() {
                pod["metadata"] = json!({});
            }
            for key in ["name", "namespace"] {
                if pod["metadata"].get(key).is_none() {
                    if let Some(v) = d.pointer(&format!("/metadata/{key}")) {
                        pod["metadata"][key] = v.clone();
                    }
                }
            }
            return Ok(pod);
        }
    }
    Err(InputError::NoPod {
        path: path.to_string(),
        kinds,
    })
}

fn check(a: &CheckArgs) -> Result<bool, InputError> {
    let mut engine = policy_engine(&a.policy, &read(&a.policy)?)?;
    let pod = read_pod(&a.pod, &read(&a.pod)?)?;
    let pod = &pod;
    let pod_field = |field, problem| InputError::PodField {
        path: a.pod.clone(),
        field,
        problem,
    };
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| pod_field("metadata.name", "missing"))?;
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| pod_field("spec.containers", "missing or empty"))?;
    let sk = skeletons(a.base.as_deref())?;
    println!(
        "modeled: pod name/namespace, container name/image/command/args/env values/workingDir/\
runAsUser/runAsGroup, exec probe commands; from {}: everything else",
        match &a.base {
            Some(b) => format!("--base {b}"),
            None => "empty protocol messages (no --base: expect denials on unmodeled fields)"
                .to_string(),
        }
    );
    let mut all_allowed = true;
    let mut run = |engine: &mut PolicyEngine, request: &str, what: &str, input: &Value| {
        let (allowed, detail) = match engine.evaluate(request, input) {
            Ok(d) if d.allowed => (true, String::new()),
            Ok(d) => {
                let keep = if a.verbose { d.prints.len() } else { 3 };
                let start = d.prints.len().saturating_sub(keep);
                let mut detail = d.prints[start..].join("\n    ");
                if d.undefined && detail.is_empty() {
                    detail = format!("the policy has no rule {request}");
                }
                (false, detail)
            }
            Err(e) => (false, e.to_string()),
        };
        all_allowed &= allowed;
        if allowed {
            println!("allow {request} {what}");
        } else {
            println!("deny {request} {what}\n    {detail}");
        }
    };

    // The sandbox, as CRI's first request to the agent makes it (its id is the pause's).
    let sandbox_id = container_id(&format!("{namespace}/{name}"));
    let create_sandbox = create_sandbox_request(&sk, pod, name, &sandbox_id);
    run(
        &mut engine,
        "CreateSandboxRequest",
        "sandbox",
        &create_sandbox,
    );
    let mut sandbox = with_id(&sk.sandbox, &sandbox_id);
    set_annotation(&mut sandbox, ANNO_SANDBOX_ID, &sandbox_id);
    set_annotation(&mut sandbox, ANNO_SANDBOX_NAME, name);
    set_annotation(&mut sandbox, ANNO_SANDBOX_NAMESPACE, namespace);
    run(
        &mut engine,
        "CreateContainerRequest",
        "sandbox (pause)",
        &sandbox,
    );

    for c in containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
        let id = container_id(&format!("{namespace}/{name}/{cname}"));
        let mut req = with_id(&sk.container, &id);
        set_annotation(&mut req, ANNO_SANDBOX_NAME, name);
        set_annotation(&mut req, ANNO_SANDBOX_NAMESPACE, namespace);
        set_annotation(&mut req, ANNO_SANDBOX_ID, &sandbox_id);
        set_annotation(&mut req, ANNO_CONTAINER_NAME, cname);
        if let Some(image) = c.get("image").and_then(Value::as_str) {
            set_annotation(&mut req, ANNO_IMAGE_NAME, image);
        }
        if let Some(process) = req.pointer_mut("/OCI/Process") {
            apply_container(process, c);
        }
        if let Some(sc) = c.get("securityContext") {
            if let Some(ro) = sc.get("readOnlyRootFilesystem").and_then(Value::as_bool) {
                if let Some(root) = req.pointer_mut("/OCI/Root") {
                    root["Readonly"] = json!(ro);
                }
            }
        }
        run(
            &mut engine,
            "CreateContainerRequest",
            &format!("container {cname}"),
            &req,
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(cmd) = c.pointer(&format!("/{probe}/exec/command")) else {
                continue;
            };
            let mut exec = sk.exec.clone();
            exec["container_id"] = json!(id);
            exec["exec_id"] = json!(container_id(&format!("{id}/{probe}")));
            if !exec["process"].is_object() {
                exec["process"] = json!({});
            }
            exec["process"]["Args"] = json!(str_list(Some(cmd)));
            run(
                &mut engine,
                "ExecProcessRequest",
                &format!("container {cname} {probe}"),
                &exec,
            );
        }
    }
    if !sk.from_base {
        println!("note: without --base the requests lack what a CRI runtime adds (mounts, capabilities, namespaces)");
    }
    Ok(all_allowed)
}

fn check_main(args: &[String]) -> ExitCode {
    let a = match parse_check_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match check(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kata-cc policy check: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// What `kata-cc policy` prints for a bad command line or input.
    #[test]
    fn messages_read_as_before() {
        let e = parse_args("bench", &args(&["--policy", "p", "--iterations", "0"]));
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("kata-cc policy bench: --iterations 0: not a positive number")
        );
        let e = parse_args("replay", &args(&["--policy"]));
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("kata-cc policy replay: --policy needs a value")
        );
        let e = parse_check_args(&args(&["--pod", "x.yaml"])).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("kata-cc policy check: --policy and --pod are required\n{CHECK_HELP}")
        );
        assert_eq!(
            parse_check_args(&args(&["-h"])).err(),
            Some(ArgsError::CheckHelp)
        );
        assert_eq!(ArgsError::CheckHelp.to_string(), CHECK_HELP);
        let e = read_pod("p.yaml", "kind: Service\n---\nkind: ConfigMap\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.yaml: kind: no Pod or pod template in the manifest (kinds: Service, ConfigMap)"
        );
        let e = skeletons(Some("/nonexistent/base.log")).err().unwrap();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/base.log: No such file"),
            "{e}"
        );
    }
}
