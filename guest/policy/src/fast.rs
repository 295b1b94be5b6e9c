//! The fast path of policy evaluation: the policy compiled to regorus's bytecode VM (RVM).
//!
//! The tree-walking interpreter spends most of a CreateContainerRequest check on per-call
//! overhead (function lookup by formatted path, print formatting): 2–10 ms for a generated Kata
//! policy. The RVM runs the same rules several times faster, but has no `print`. So:
//! - the RVM runs a copy of the policy whose `print(...)` calls are replaced by `true` (what
//!   `print` evaluates to, whatever its arguments), and decides **allowed** requests on its own;
//! - anything else (a denial, an undefined rule, an error, a result of an unexpected shape) is
//!   evaluated again by the interpreter on the original policy, which is authoritative and
//!   gathers the prints for the denial message.
//!
//! `regex.match` is answered by the host (a registered host-await builtin): regorus's own hands
//! out a clone of its cached `Regex` per call, and a clone starts with an empty lazy-DFA cache,
//! which made regex matching half of a CreateContainerRequest check. Here each compiled
//! pattern is kept and matched by reference. Patterns are compiled exactly as regorus does
//! (same size limit); a pattern that does not compile, or a non-string argument, abandons the
//! VM run so that the interpreter decides with regorus's own error semantics.
//!
//! regorus's RVM binds `x := <undefined>` and goes on (the interpreter, like OPA, makes the
//! body undefined there), so a rule whose body assigns a value it never tests again would be
//! allowed by the VM and denied by the policy. The VM's copy therefore says `x = ...` in rule
//! bodies ([`bind_strictly`]): unification binds a fresh variable only to a defined value, and
//! compares where the name is bound already, so the VM can only be stricter than the policy
//! there, and what it refuses goes to the interpreter anyway.
//!
//! A policy the RVM cannot compile simply has no fast path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{ExecutionMode, ExecutionState, RegoVM};
use regorus::Value;

/// A compiled policy plus a VM to run it, with the current data document.
pub(super) struct FastPath {
    program: Arc<Program>,
    vm: RegoVM,
    /// The data document the VM sees (kept in step with the interpreter's).
    data: Value,
    /// Full rule paths (`data.agent_policy.X`) compiled as entry points.
    entry_points: HashSet<String>,
    /// Compiled `regex.match` patterns, shared by clones of this policy (the patterns are a
    /// property of the policy text; the lazy DFA inside each `Regex` stays warm).
    regexes: Arc<Mutex<HashMap<String, Arc<regex::Regex>>>>,
}

/// The builtin answered by the host, and its argument count.
const REGEX_MATCH: (&str, usize) = ("regex.match", 2);
/// Regorus's compiled-size limit for regex patterns (`builtins/regex.rs`).
const REGEX_SIZE_LIMIT: usize = 100 * 1024;
/// Compiled patterns kept per policy; beyond this the cache starts over.
const MAX_REGEXES: usize = 4096;

impl Clone for FastPath {
    fn clone(&self) -> Self {
        // The program is shared; the data document is the only state.
        let mut vm = new_vm(self.program.clone());
        let _ = vm.set_data(self.data.clone());
        FastPath {
            program: self.program.clone(),
            vm,
            data: self.data.clone(),
            entry_points: self.entry_points.clone(),
            regexes: self.regexes.clone(),
        }
    }
}

fn new_vm(program: Arc<Program>) -> RegoVM {
    let mut vm = RegoVM::new();
    vm.load_program(program);
    // As the interpreter: no instruction budget, failing builtins are undefined.
    vm.set_max_instructions(usize::MAX);
    vm.set_strict_builtin_errors(false);
    // Suspendable: `regex.match` suspends the VM for the host to answer.
    vm.set_execution_mode(ExecutionMode::Suspendable);
    vm
}

impl FastPath {
    /// Compiles `rego_text` (print-stripped) for the given rule paths. `None` when the RVM
    /// cannot compile the policy: evaluation then uses the interpreter only.
    pub(super) fn new(rego_text: &str, source_name: &str, rules: &[String]) -> Option<FastPath> {
        let first: regorus::Rc<str> = rules.first()?.as_str().into();
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(true);
        engine.set_strict_builtin_errors(false);
        engine
            .add_policy(
                source_name.to_string(),
                bind_strictly(&strip_prints(rego_text)),
            )
            .ok()?;
        let compiled = engine.compile_with_entrypoint(&first).ok()?;
        let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
        let program =
            Compiler::compile_from_policy_with_host_await(&compiled, &refs, &[REGEX_MATCH]).ok()?;
        Some(FastPath {
            vm: new_vm(program.clone()),
            program,
            data: Value::new_object(),
            entry_points: rules.iter().cloned().collect(),
            regexes: Arc::default(),
        })
    }

    /// Replaces the data document (after state ops). On failure the fast path must not be
    /// used any more: the caller drops it.
    pub(super) fn set_data(&mut self, data: Value) -> bool {
        self.data = data.clone();
        self.vm.set_data(data).is_ok()
    }

    /// Runs `rule` (a full path) with `input`; `None` if the rule is not compiled in or the
    /// VM failed (the caller then asks the interpreter).
    pub(super) fn eval(&mut self, rule: &str, input: Value) -> Option<Value> {
        if !self.entry_points.contains(rule) {
            return None;
        }
        self.vm.set_input(input);
        let mut result = self.vm.execute_entry_point_by_name(rule);
        while let ExecutionState::Suspended { .. } = self.vm.execution_state() {
            let answer = self.host_await();
            result = self.vm.resume(Some(answer?));
        }
        match self.vm.execution_state() {
            ExecutionState::Completed { .. } => result.ok(),
            _ => None,
        }
    }

    /// Answers the VM's pending `regex.match(pattern, value)`.
    fn host_await(&mut self) -> Option<Value> {
        if self.vm.get_host_await_identifier()? != &Value::from(REGEX_MATCH.0) {
            return None;
        }
        let args = self.vm.get_host_await_argument()?.as_array().ok()?;
        let (Some(Value::String(pattern)), Some(Value::String(value))) =
            (args.first(), args.get(1))
        else {
            return None;
        };
        let mut regexes = self.regexes.lock().ok()?;
        let re = match regexes.get(pattern.as_ref()) {
            Some(re) => re.clone(),
            None => {
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .ok()?;
                if regexes.len() >= MAX_REGEXES {
                    regexes.clear();
                }
                let re = Arc::new(re);
                regexes.insert(pattern.to_string(), re.clone());
                re
            }
        };
        drop(regexes);
        Some(Value::Bool(re.is_match(value)))
    }
}

/// Replaces every `print(...)` call in Rego source by `true`, keeping line breaks so that line
/// numbers do not move. Comments, strings and raw strings are skipped; `x.print(` and
/// `myprint(` are not calls of the builtin.
pub(super) fn strip_prints(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => i = skip_string(b, i),
            b'`' => i = skip_raw(b, i),
            b'p' if b[i..].starts_with(b"print(")
                && (i == 0
                    || !(b[i - 1].is_ascii_alphanumeric() || matches!(b[i - 1], b'_' | b'.'))) =>
            {
                let (end, newlines) = call_end(b, i + "print".len());
                out.push_str(&src[copied..i]);
                out.push_str("true");
                out.extend(std::iter::repeat_n('\n', newlines));
                i = end;
                copied = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&src[copied..]);
    out
}

/// Turns `name :=` into `name  =` (same columns) where it assigns inside braces: a rule body,
/// a comprehension or an `every` body (rule heads and `else` clauses are outside braces, object
/// keys use `:`). Comments, strings and raw strings are left alone; a destructuring assignment
/// (`[a, b] := ...`) is not rewritten.
pub(super) fn bind_strictly(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => i = skip_string(b, i),
            b'`' => i = skip_raw(b, i),
            b'{' => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if (c.is_ascii_alphabetic() || c == b'_')
                && (i == 0
                    || !(b[i - 1].is_ascii_alphanumeric() || matches!(b[i - 1], b'_' | b'.'))) =>
            {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let mut k = j;
                while k < b.len() && matches!(b[k], b' ' | b'\t') {
                    k += 1;
                }
                if depth > 0 && b[k..].starts_with(b":=") {
                    out.push_str(&src[copied..k]);
                    out.push_str(" =");
                    copied = k + 2;
                    i = k + 2;
                } else {
                    i = j;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&src[copied..]);
    out
}

/// Index after the string literal starting at `start` (a `"`).
fn skip_string(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index after the raw string starting at `start` (a backquote).
fn skip_raw(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() && b[i] != b'`' {
        i += 1;
    }
    i + 1
}

/// For the argument list opening at `open` (a `(`): the index after its closing `)` and the
/// number of line breaks inside.
fn call_end(b: &[u8], open: usize) -> (usize, usize) {
    let mut depth = 0usize;
    let mut newlines = 0;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return (i + 1, newlines);
                }
            }
            b'"' => {
                i = skip_string(b, i);
                continue;
            }
            b'`' => {
                let end = skip_raw(b, i).min(b.len());
                newlines += b[i..end].iter().filter(|c| **c == b'\n').count();
                i = end;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\n' => newlines += 1,
            _ => {}
        }
        i += 1;
    }
    (b.len(), newlines)
}

#[cfg(test)]
mod tests {
    use super::{bind_strictly, strip_prints};

    #[test]
    fn assignments_in_bodies_become_unifications() {
        let src = "package p\n\
                   default R := false\n\
                   R := {\"ops\": ops} if {\n  \
                     op := f(input.x) # x := 1\n  \
                     ops := [o | o := [op][_]; o != null]\n  \
                     s := \"a := b\"\n  \
                     [a, b] := [1, 2]\n  \
                     t.u := 1\n\
                   } else := false\n\
                   f(x) := y if { y:=x }\n";
        assert_eq!(
            bind_strictly(src),
            "package p\n\
             default R := false\n\
             R := {\"ops\": ops} if {\n  \
               op  = f(input.x) # x := 1\n  \
               ops  = [o | o  = [op][_]; o != null]\n  \
               s  = \"a := b\"\n  \
               [a, b] := [1, 2]\n  \
               t.u := 1\n\
             } else := false\n\
             f(x) := y if { y =x }\n"
        );
    }

    #[test]
    fn strips_print_calls_only() {
        let src = "package p\n# print(\"x\")\na {\n  print(\"a)\", [1, (2)],\n    input.x)\n  x.print(1)\n  s := \"print(1)\"\n}\n";
        let out = strip_prints(src);
        assert_eq!(
            out,
            "package p\n# print(\"x\")\na {\n  true\n\n  x.print(1)\n  s := \"print(1)\"\n}\n"
        );
        assert_eq!(out.lines().count(), src.lines().count());
    }
}
