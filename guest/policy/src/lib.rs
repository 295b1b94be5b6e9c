//! The agent security policy: a Rego document (package `agent_policy`) that decides, request by
//! request, what the host may ask the agent to do. Shared by the agent (enforcement) and the host
//! tool `kata-cc policy` (replay/check/bench), so both reach the same decisions. With it, what
//! binds a policy to a launch: init-data and its digests ([`initdata`]) and the TEE's report and
//! HOST_DATA check ([`tee`]).
//!
//! API:
//! - [`PolicyEngine::new`]`(rego_text)`: parses once (Rego v0 syntax, as Kata's genpolicy emits;
//!   `import rego.v1` / future keywords also load). Errors: [`PolicyError::Parse`] (line, column,
//!   message), [`PolicyError::MissingPackage`].
//! - [`PolicyEngine::evaluate`]`(request_name, &input_json)`: evaluates
//!   `data.agent_policy.<request_name>` with the request as `input` and returns a [`Decision`].
//!   The rule may yield a bool or `{"allowed": bool, "ops": [JSON-patch ops]}`; the ops of an
//!   allowed request are applied to the data document (policy state, e.g. `/pstate/...`) for later
//!   requests. An undefined rule denies. If the policy sets `AllowRequestsFailingPolicy := true`,
//!   denials become allows with [`Decision::forced`] set (for debugging only).
//! - [`input`]: request message <-> policy input JSON (Kata's field names), by reflection.
//! - [`log`]: the request log format (`["ep":"<Name>",{json}],` per line).

mod fast;
pub mod initdata;
pub mod input;
pub mod log;
mod patch;
pub mod tee;

use std::collections::HashMap;

use regorus::Value;
use serde::Deserialize;

/// The Rego package every policy must declare.
pub const PACKAGE: &str = "agent_policy";
/// The rule that turns denials into (logged) allows.
pub const ALLOW_FAILURES_RULE: &str = "AllowRequestsFailingPolicy";
/// Where a measured guest rootfs carries its default policy.
pub const DEFAULT_POLICY_PATH: &str = "/etc/kata-cc/policy.rego";
/// The agent's policy when the rootfs has none: deny everything except SetPolicy, so the shim
/// can still install the pod's policy (as Kata's `disallow-all-except-setpolicy` example).
pub const NO_POLICY_FALLBACK: &str = "package agent_policy\n\n\
# No policy was baked into the guest image: only a SetPolicy request is allowed.\n\
default SetPolicyRequest := true\n";
/// A policy allowing every request of the agent protocol (the behaviour of Kata's stock
/// `allow-all.rego`), for tests and tools.
pub fn allow_all() -> String {
    let mut names: Vec<String> = agent_proto::agent::file_descriptor()
        .messages()
        .map(|m| m.name().to_string())
        .filter(|n| n.ends_with("Request"))
        .collect();
    names.sort();
    let mut out = String::from("package agent_policy\n\n");
    for n in names {
        out.push_str(&format!("default {n} := true\n"));
    }
    out
}

/// Denial messages are cut to this many bytes (keeping the end, where the failing check printed)
/// so a reply stays far below transport limits.
pub const MAX_DENIAL_MESSAGE: usize = 8 * 1024;

/// Source name given to the parser; parse errors are reported against it.
const SOURCE_NAME: &str = "policy.rego";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy does not parse: line {line}, column {column}: {message}")]
    Parse {
        line: u32,
        column: u32,
        message: String,
    },
    #[error("policy does not parse: {0}")]
    Compile(String),
    #[error("policy declares package `{found}`, expected `package {PACKAGE}`")]
    MissingPackage { found: String },
    #[error("evaluating data.{PACKAGE}.{request}: {message}")]
    Eval { request: String, message: String },
    #[error("data.{PACKAGE}.{request} gave {value}, expected a bool or {{\"allowed\": bool, \"ops\": [..]}}")]
    BadResult { request: String, value: String },
    #[error("data.{PACKAGE}.{request}: state op {index}: {message}")]
    StateOp {
        request: String,
        index: usize,
        message: String,
    },
    #[error("request name {0:?} is not a Rego identifier")]
    BadRequestName(String),
    #[error("{request}: input: {message}")]
    Input { request: String, message: String },
}

/// The outcome of one policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// True when the policy denied (or did not define the rule) but `AllowRequestsFailingPolicy`
    /// let the request through.
    pub forced: bool,
    /// True when the policy does not define a rule for the request at all.
    pub undefined: bool,
    /// Output of the policy's `print` calls during this evaluation, in order.
    pub prints: Vec<String>,
    /// Number of state ops applied.
    pub ops_applied: usize,
}

impl Decision {
    /// The ttrpc message of a denial: `<Name> is blocked by policy: <prints>`, cut to
    /// [`MAX_DENIAL_MESSAGE`] bytes keeping the end.
    pub fn denial_message(&self, request_name: &str) -> String {
        let mut prints = self.prints.join(" ");
        if self.undefined && prints.is_empty() {
            prints = format!("the policy has no rule {request_name}");
        }
        let head = format!("{request_name} is blocked by policy: ");
        let budget = MAX_DENIAL_MESSAGE.saturating_sub(head.len());
        if prints.len() > budget {
            let mut cut = prints.len() - budget + 3;
            while !prints.is_char_boundary(cut) {
                cut += 1;
            }
            prints = format!("...{}", &prints[cut..]);
        }
        head + &prints
    }
}

/// Distinguishes policies, so a fast path compiled apart lands only in the engine it was
/// compiled for (see [`PolicyEngine::new_deferred`]).
static NEXT_POLICY_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The fast path of one policy, still to be compiled ([`FastPathJob::compile`]), e.g. on a
/// thread of its own while the interpreter already decides requests.
pub struct FastPathJob {
    policy_id: u64,
    text: String,
    rules: Vec<String>,
}

/// A compiled fast path, for [`PolicyEngine::install_fast_path`]. `None` inside when the RVM
/// cannot compile the policy.
pub struct CompiledFastPath {
    policy_id: u64,
    fast: Option<fast::FastPath>,
}

impl FastPathJob {
    pub fn compile(self) -> CompiledFastPath {
        CompiledFastPath {
            policy_id: self.policy_id,
            fast: fast::FastPath::new(&self.text, SOURCE_NAME, &self.rules),
        }
    }
}

impl CompiledFastPath {
    /// Whether the RVM compiled the policy.
    pub fn is_some(&self) -> bool {
        self.fast.is_some()
    }
}

/// A parsed policy with its state. Parse once, evaluate many times.
#[derive(Clone)]
pub struct PolicyEngine {
    /// Which policy text this is (clones share it).
    id: u64,
    engine: regorus::Engine,
    allow_failures: bool,
    /// Request name -> whether the policy declares a rule of that name.
    declared: HashMap<String, bool>,
    /// The policy compiled to regorus's VM, deciding allowed requests quickly (see `fast`).
    fast: Option<fast::FastPath>,
    /// Whether the policy knows `Storage.shared` (see [`PolicyEngine::evaluate`]).
    storage_shared: bool,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("allow_failures", &self.allow_failures)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Parses `rego_text` (a whole policy, package `agent_policy`).
    pub fn new(rego_text: &str) -> Result<PolicyEngine, PolicyError> {
        let (mut p, job) = Self::new_deferred(rego_text)?;
        p.install_fast_path(job.compile());
        Ok(p)
    }

    /// As [`PolicyEngine::new`], but without compiling the fast path: the engine decides every
    /// request with the interpreter until the job's result is installed. Compiling is the
    /// larger part of loading a policy; the agent does it off the request path.
    pub fn new_deferred(rego_text: &str) -> Result<(PolicyEngine, FastPathJob), PolicyError> {
        let mut engine = regorus::Engine::new();
        // Generated Kata policies are Rego v0; a v1 module still loads via `import rego.v1`.
        engine.set_rego_v0(true);
        engine.set_gather_prints(true);
        // As OPA (and Kata's agent): a failing builtin makes the expression undefined.
        engine.set_strict_builtin_errors(false);
        let package = engine
            .add_policy(SOURCE_NAME.to_string(), rego_text.to_string())
            .map_err(|e| parse_error(&e))?;
        // Kata's agent starts every policy with an empty state object, `data.pstate`: the
        // state helpers of genpolicy's rules (`get_state() := data["pstate"]`) are undefined,
        // and so deny, without it.
        engine
            .add_data(
                Value::from_json_str(&format!("{{\"{STATE_KEY}\": {{}}}}"))
                    .map_err(|e| parse_error(&e))?,
            )
            .map_err(|e| parse_error(&e))?;
        if package != format!("data.{PACKAGE}") {
            return Err(PolicyError::MissingPackage {
                found: package
                    .strip_prefix("data.")
                    .unwrap_or(&package)
                    .to_string(),
            });
        }
        let mut p = PolicyEngine {
            id: NEXT_POLICY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            engine,
            allow_failures: false,
            declared: HashMap::new(),
            fast: None,
            storage_shared: names_storage_shared(rego_text),
        };
        // Preparing for the first evaluation analyses the whole policy: semantic errors
        // (unknown functions, unsafe variables) fail the load rather than a later request.
        p.engine
            .eval_query("true".to_string(), false)
            .map_err(|e| parse_error(&e))?;
        if p.is_declared(ALLOW_FAILURES_RULE)? {
            let v = p
                .engine
                .eval_rule(format!("data.{PACKAGE}.{ALLOW_FAILURES_RULE}"))
                .map_err(|e| parse_error(&e))?;
            let _ = p.engine.take_prints();
            p.allow_failures = v == Value::from(true);
        }
        // Every request rule of the agent protocol the policy declares is a VM entry point.
        let mut rules = Vec::new();
        for m in agent_proto::agent::file_descriptor().messages() {
            if m.name().ends_with("Request") && p.is_declared(m.name())? {
                rules.push(format!("data.{PACKAGE}.{}", m.name()));
            }
        }
        let job = FastPathJob {
            policy_id: p.id,
            text: rego_text.to_string(),
            rules,
        };
        Ok((p, job))
    }

    /// Puts a fast path compiled by [`FastPathJob::compile`] to use, with the policy's current
    /// state. False (and nothing changes) if it was compiled for another policy, the RVM could
    /// not compile the policy, or the VM refuses the current data document.
    pub fn install_fast_path(&mut self, compiled: CompiledFastPath) -> bool {
        if compiled.policy_id != self.id {
            return false;
        }
        let Some(mut fast) = compiled.fast else {
            return false;
        };
        if !fast.set_data(self.engine.get_data()) {
            return false;
        }
        self.fast = Some(fast);
        true
    }

    /// Whether allowed requests are decided by the compiled (VM) form of the policy.
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Evaluates with the interpreter only from now on (to compare, or to rule the VM out).
    pub fn disable_fast_path(&mut self) {
        self.fast = None;
    }

    /// Whether `AllowRequestsFailingPolicy` is true in this policy.
    pub fn allows_failures(&self) -> bool {
        self.allow_failures
    }

    /// The current data document (policy state), as JSON.
    pub fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.get_data()).unwrap_or(serde_json::Value::Null)
    }

    /// Checks one request. `input` is the request as the policy sees it (see [`input`]).
    ///
    /// `Storage.shared` (field 8) came after the AKS-era policies, which compare a sandbox
    /// storage with `==` against their own copy that has no such key. Kata's agents gave
    /// those policies no `shared` key (their protocol had none) and give newer ones, which test
    /// `storage.shared`, `"shared": false`. So the key goes to a policy that names it anywhere
    /// and is left out for one that never does: both generations decide as under Kata.
    pub fn evaluate(
        &mut self,
        request_name: &str,
        input: &serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        let without_shared = (!self.storage_shared && STORAGE_REQUESTS.contains(&request_name))
            .then(|| strip_storage_shared(input))
            .flatten();
        let input = without_shared.as_ref().unwrap_or(input);
        let value = Value::deserialize(input).map_err(|e| PolicyError::Input {
            request: request_name.to_string(),
            message: e.to_string(),
        })?;
        self.evaluate_value(request_name, value)
    }

    /// As [`PolicyEngine::evaluate`], with the input already converted.
    pub fn evaluate_value(
        &mut self,
        request_name: &str,
        input: Value,
    ) -> Result<Decision, PolicyError> {
        if !self.is_declared(request_name)? {
            return Ok(Decision {
                allowed: self.allow_failures,
                forced: self.allow_failures,
                undefined: true,
                prints: Vec::new(),
                ops_applied: 0,
            });
        }
        let rule = format!("data.{PACKAGE}.{request_name}");
        if let Some(fast) = &mut self.fast {
            // The VM decides allowed requests; a denial (or anything unexpected) is decided
            // again below by the interpreter, which also gathers the prints for the message.
            if let Some(Ok((true, ops, _))) = fast.eval(&rule, input.clone()).map(|v| shape(&v)) {
                let ops_applied = match ops {
                    Some(ops) => self.apply_ops(request_name, &ops)?,
                    None => 0,
                };
                return Ok(Decision {
                    allowed: true,
                    forced: false,
                    undefined: false,
                    prints: Vec::new(),
                    ops_applied,
                });
            }
        }
        self.engine.set_input(input);
        let result = self.engine.eval_rule(rule);
        let prints = self.engine.take_prints().unwrap_or_default();
        let result = match result {
            Ok(v) => v,
            Err(e) if self.allow_failures => {
                let mut prints = prints;
                prints.push(format!("evaluation error: {e}"));
                return Ok(Decision {
                    allowed: true,
                    forced: true,
                    undefined: false,
                    prints,
                    ops_applied: 0,
                });
            }
            Err(e) => {
                return Err(PolicyError::Eval {
                    request: request_name.to_string(),
                    message: e.to_string(),
                })
            }
        };
        let (allowed, ops, undefined) = match shape(&result) {
            Ok(s) => s,
            Err(()) => return Err(self.bad_result(request_name, &result)),
        };
        let mut ops_applied = 0;
        // State changes only for requests that go ahead: a denied request leaves no trace.
        if allowed {
            if let Some(ops) = ops {
                ops_applied = self.apply_ops(request_name, &ops)?;
            }
        }
        Ok(Decision {
            allowed: allowed || self.allow_failures,
            forced: !allowed && self.allow_failures,
            undefined,
            prints,
            ops_applied,
        })
    }

    fn bad_result(&self, request: &str, v: &Value) -> PolicyError {
        PolicyError::BadResult {
            request: request.to_string(),
            value: v.to_json_str().unwrap_or_else(|_| format!("{v:?}")),
        }
    }

    fn is_declared(&mut self, request_name: &str) -> Result<bool, PolicyError> {
        if let Some(d) = self.declared.get(request_name) {
            return Ok(*d);
        }
        let valid = !request_name.is_empty()
            && request_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !request_name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(PolicyError::BadRequestName(request_name.to_string()));
        }
        let d = self
            .engine
            .has_declared_rule_rooted_at(SOURCE_NAME, request_name)
            .map_err(|e| PolicyError::Eval {
                request: request_name.to_string(),
                message: e.to_string(),
            })?;
        self.declared.insert(request_name.to_string(), d);
        Ok(d)
    }

    /// Applies JSON-patch ops to the data document. Only the patched paths are copied (values
    /// are copy-on-write); the policy itself is not parsed again.
    fn apply_ops(&mut self, request: &str, ops: &Value) -> Result<usize, PolicyError> {
        let ops = match ops {
            Value::Array(a) => a.iter().cloned().collect::<Vec<_>>(),
            Value::Undefined | Value::Null => return Ok(0),
            other => {
                return Err(PolicyError::StateOp {
                    request: request.to_string(),
                    index: 0,
                    message: format!(
                        "ops is {}, expected an array",
                        other.to_json_str().unwrap_or_default()
                    ),
                })
            }
        };
        if ops.is_empty() {
            return Ok(0);
        }
        // The data document holds only state (generated policies keep their fixed data in
        // rules), so converting it is cheap; the policy itself is not parsed again.
        let err = |index: usize, message: String| PolicyError::StateOp {
            request: request.to_string(),
            index,
            message,
        };
        let mut data =
            serde_json::to_value(self.engine.get_data()).map_err(|e| err(0, e.to_string()))?;
        for (index, op) in ops.iter().enumerate() {
            let op = serde_json::to_value(op).map_err(|e| err(index, e.to_string()))?;
            patch::apply(&mut data, &op).map_err(|e| err(index, e.to_string()))?;
        }
        let data = Value::deserialize(&data).map_err(|e| err(ops.len(), e.to_string()))?;
        if let Some(fast) = &mut self.fast {
            if !fast.set_data(data.clone()) {
                // The VM refuses this data document (it conflicts with a rule path): decide
                // with the interpreter alone from now on.
                self.fast = None;
            }
        }
        self.engine.clear_data();
        self.engine
            .add_data(data)
            .map_err(|e| err(ops.len(), e.to_string()))?;
        Ok(ops.len())
    }
}

/// The data document's key for the policy's state (Kata's agent's name).
pub const STATE_KEY: &str = "pstate";

/// Requests whose input has `storages` (of `Storage` messages).
const STORAGE_REQUESTS: &[&str] = &["CreateSandboxRequest", "CreateContainerRequest"];

/// Whether a policy text names a `shared` field: a `"shared"` key in its data or `.shared` in
/// its rules (`.shared_mounts` and the like do not count).
fn names_storage_shared(text: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices("shared").any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + "shared".len()).copied();
        let word = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
        match before {
            Some(b'"') => after == Some(b'"'),
            Some(b'.') => !word(after),
            _ => false,
        }
    })
}

/// `input` without the `shared` key of its storages; `None` if none has one.
fn strip_storage_shared(input: &serde_json::Value) -> Option<serde_json::Value> {
    let has = input
        .get("storages")
        .and_then(|s| s.as_array())
        .is_some_and(|a| a.iter().any(|s| s.get("shared").is_some()));
    if !has {
        return None;
    }
    let mut v = input.clone();
    if let Some(storages) = v.get_mut("storages").and_then(|s| s.as_array_mut()) {
        for s in storages {
            if let Some(o) = s.as_object_mut() {
                o.remove("shared");
            }
        }
    }
    Some(v)
}

/// A rule's result as (allowed, ops, undefined): a bool, undefined (deny), or
/// `{"allowed": bool, "ops": [...]}`; anything else is `Err`.
#[allow(clippy::result_unit_err)]
fn shape(result: &Value) -> Result<(bool, Option<Value>, bool), ()> {
    match result {
        Value::Bool(b) => Ok((*b, None, false)),
        Value::Undefined => Ok((false, None, true)),
        Value::Object(obj) => match obj.get(&Value::from("allowed")) {
            Some(Value::Bool(b)) => Ok((*b, obj.get(&Value::from("ops")).cloned(), false)),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// Regorus reports parse errors as `--> policy.rego:<line>:<col>`, the source excerpt, then
/// `error: <message>`.
fn parse_error(e: &anyhow::Error) -> PolicyError {
    let text = e.to_string();
    let location = text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("-->")?.trim();
        let rest = rest.strip_prefix(SOURCE_NAME)?.strip_prefix(':')?;
        let (line, col) = rest.split_once(':')?;
        Some((
            line.trim().parse::<u32>().ok()?,
            col.trim().parse::<u32>().ok()?,
        ))
    });
    let message = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("error:")
            .map(|m| m.trim().to_string())
    });
    match (location, message) {
        (Some((line, column)), Some(message)) => PolicyError::Parse {
            line,
            column,
            message,
        },
        _ => PolicyError::Compile(text.split_whitespace().collect::<Vec<_>>().join(" ")),
    }
}

#[cfg(test)]
mod tests;
