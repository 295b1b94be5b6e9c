//! The policy text: kata-cc's rules (`rules.rego`, package `agent_policy`) followed by the
//! pod's `policy_data`.

use serde_json::Value;

/// kata-cc's own rules for generated policies.
pub const RULES: &str = include_str!("rules.rego");

/// The whole policy of a pod.
pub fn policy(data: &Value) -> String {
    // Pretty-printed as genpolicy prints its data: one field a line, for readers and diffs.
    let json = serde_json::to_string_pretty(data).unwrap_or_else(|_| data.to_string());
    format!("{RULES}\n######################################################################\n# The pod (kata-cc policy gen)\n\npolicy_data := {json}\n")
}
