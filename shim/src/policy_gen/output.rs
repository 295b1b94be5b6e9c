//! Where a generated policy goes: the pod annotation (base64 of the Rego, or base64 of gzip
//! of an init-data document), its digest as the shim computes it, and the manifest with the
//! annotation written into each pod (template) in place.
//!
//! The rewrite inserts or replaces one line per pod in the text, so comments, key order and
//! the other documents stay as they were; the result is parsed again and compared with what
//! it must be. Only where that cannot work (metadata or annotations written in flow style,
//! `{...}`) is the file written out again from its parsed documents: comments and key order
//! are then lost, and a warning says so.

use std::io::Write;

use base64::Engine as _;
use serde_json::{json, Value};

use super::workload::{File, PodSource};
use super::yaml::{self, FieldPath};
use super::GenError;
use crate::policy_source::{
    self, INITDATA_ANNOTATION, INITDATA_POLICY_KEY, INITDATA_VERSION, POLICY_ANNOTATION,
};

/// Which annotation carries the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `io.katacontainers.config.agent.policy` = base64(Rego).
    Policy,
    /// `io.katacontainers.config.hypervisor.cc_init_data` = base64(gzip(init-data TOML)).
    InitData,
}

impl Carrier {
    pub fn key(self) -> &'static str {
        match self {
            Carrier::Policy => POLICY_ANNOTATION,
            Carrier::InitData => INITDATA_ANNOTATION,
        }
    }

    fn other(self) -> &'static str {
        match self {
            Carrier::Policy => INITDATA_ANNOTATION,
            Carrier::InitData => POLICY_ANNOTATION,
        }
    }
}

/// The init-data document carrying `rego` (CoCo's format, sha256).
pub fn initdata_document(rego: &str) -> String {
    let mut doc = format!("version = \"{INITDATA_VERSION}\"\nalgorithm = \"sha256\"\n\n[data]\n");
    if rego.contains("'''") {
        // A literal string cannot hold its own delimiter: a basic string, escaped.
        let value = toml::Value::String(rego.to_string()).to_string();
        doc.push_str(&format!("\"{INITDATA_POLICY_KEY}\" = {value}\n"));
    } else {
        doc.push_str(&format!("\"{INITDATA_POLICY_KEY}\" = '''\n{rego}'''\n"));
    }
    doc
}

/// The annotation value carrying `rego`.
pub fn annotation_value(rego: &str, carrier: Carrier) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    match carrier {
        Carrier::Policy => b64.encode(rego.as_bytes()),
        Carrier::InitData => {
            let doc = initdata_document(rego);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail.
            let _ = gz.write_all(doc.as_bytes());
            b64.encode(gz.finish().unwrap_or_default())
        }
    }
}

/// The HOST_DATA hex the shim derives from the annotation (`policy_source`, the same code).
pub fn host_data_hex(carrier: Carrier, value: &str) -> Result<String, String> {
    let p = match carrier {
        Carrier::Policy => policy_source::from_policy_annotation(value),
        Carrier::InitData => policy_source::from_initdata_annotation(value),
    }
    .map_err(|e| e.to_string())?;
    Ok(p.host_data().iter().map(|b| format!("{b:02x}")).collect())
}

/// One annotation to write into a pod (template).
pub struct Edit<'a> {
    pub pod: &'a PodSource,
    pub value: String,
}

/// The manifest with each pod's annotation set (and the other policy annotation removed).
/// Returns the new text and warnings.
pub fn annotate(
    file: &File,
    edits: &[Edit],
    carrier: Carrier,
) -> Result<(String, Vec<String>), GenError> {
    let mut expected: Vec<Value> = file.docs.iter().map(|d| d.value.clone()).collect();
    for e in edits {
        let doc = &mut expected[e.pod.doc];
        let Some(pod) = pointer_mut(doc, &e.pod.path) else {
            continue;
        };
        if !pod.get("metadata").is_some_and(Value::is_object) {
            pod["metadata"] = json!({});
        }
        let meta = &mut pod["metadata"];
        if !meta.get("annotations").is_some_and(Value::is_object) {
            meta["annotations"] = json!({});
        }
        let annos = meta["annotations"]
            .as_object_mut()
            .expect("just made an object");
        annos.remove(carrier.other());
        annos.insert(carrier.key().to_string(), json!(e.value));
    }
    if let Some(text) = textual(file, edits, carrier) {
        if let Ok(docs) = yaml::documents(&text) {
            let got: Vec<&Value> = docs.iter().map(|d| &d.value).collect();
            if got.len() == expected.len() && got.iter().zip(&expected).all(|(a, b)| *a == b) {
                return Ok((text, Vec::new()));
            }
        }
    }
    // Written out again from the documents: JSON as JSON.
    if expected.len() == 1 && serde_json::from_str::<Value>(&file.text).is_ok() {
        let json = serde_json::to_string_pretty(&expected[0]).map_err(|e| GenError::Output {
            file: file.path.clone(),
            message: format!("writing JSON: {e}"),
        })?;
        return Ok((
            json + "\n",
            vec![format!(
                "{}: JSON manifest written out again from its parsed document (keys sorted)",
                file.path
            )],
        ));
    }
    let mut out = String::new();
    for (i, v) in expected.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        if v.is_null() {
            continue;
        }
        let y = serde_norway::to_string(v).map_err(|e| GenError::Output {
            file: file.path.clone(),
            message: format!("writing YAML: {e}"),
        })?;
        out.push_str(&y);
    }
    Ok((
        out,
        vec![format!(
            "{}: the annotation could not be inserted in place (flow-style metadata?): the file was rewritten from its parsed documents, comments and key order are lost",
            file.path
        )],
    ))
}

fn pointer_mut<'a>(v: &'a mut Value, path: &FieldPath) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in &path.0 {
        cur = match s {
            yaml::Seg::Key(k) => cur.get_mut(k)?,
            yaml::Seg::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// A change of the text: replace lines `start..end` (0-based) with `new`.
struct Splice {
    start: usize,
    end: usize,
    new: Vec<String>,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// What follows `key:` on its line (comments dropped).
fn after_key(line: &str, col0: usize) -> Option<&str> {
    let rest = line.get(col0..)?;
    let colon = rest.find(':')?;
    let tail = rest[colon + 1..].trim();
    Some(if tail.starts_with('#') { "" } else { tail })
}

/// The first line after `line` that belongs to the block under a key at column `col0`, and
/// its indent; `None` if the key has no block under it.
fn first_child(lines: &[&str], line: usize, col0: usize) -> Option<(usize, usize)> {
    for (i, l) in lines.iter().enumerate().skip(line + 1) {
        if is_blank_or_comment(l) {
            continue;
        }
        let ind = indent_of(l);
        return (ind > col0).then_some((i, ind));
    }
    None
}

/// The end (exclusive) of the value of a key at `line`, column `col0`.
fn value_end(lines: &[&str], line: usize, col0: usize) -> usize {
    let mut end = line + 1;
    for (i, l) in lines.iter().enumerate().skip(line + 1) {
        if is_blank_or_comment(l) {
            continue;
        }
        if indent_of(l) <= col0 {
            break;
        }
        end = i + 1;
    }
    end
}

/// Whether the key at (line, col0) is the first thing on its line (block style), or after
/// a sequence dash.
fn starts_line(line: &str, col0: usize) -> bool {
    let before = &line[..col0.min(line.len())];
    before
        .trim_start_matches(' ')
        .trim_end_matches(' ')
        .chars()
        .all(|c| c == '-')
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

/// The splices for one pod, or `None` if the text is not in a shape this handles.
fn splices_for(file: &File, lines: &[&str], e: &Edit, carrier: Carrier) -> Option<Vec<Splice>> {
    let doc = e.pod.doc;
    let meta = e.pod.path.key("metadata");
    let annos = meta.key("annotations");
    let loc = |p: &FieldPath| yaml::locate(&file.text, doc, p).map(|(l, c)| (l - 1, c - 1));
    let entry = |indent: usize| format!("{}{}: {}", pad(indent), carrier.key(), e.value);
    let mut out = Vec::new();
    if let Some((l, c)) = loc(&annos.key(carrier.other())) {
        if !starts_line(lines[l], c) {
            return None;
        }
        out.push(Splice {
            start: l,
            end: value_end(lines, l, c),
            new: Vec::new(),
        });
    }
    if let Some((l, c)) = loc(&annos.key(carrier.key())) {
        if !starts_line(lines[l], c) {
            return None;
        }
        out.push(Splice {
            start: l,
            end: value_end(lines, l, c),
            new: vec![entry(c)],
        });
        return Some(out);
    }
    if let Some((l, c)) = loc(&annos) {
        if !starts_line(lines[l], c) {
            return None;
        }
        let tail = after_key(lines[l], c)?;
        match (tail, first_child(lines, l, c)) {
            ("", Some((_, ind))) => out.push(Splice {
                start: l + 1,
                end: l + 1,
                new: vec![entry(ind)],
            }),
            ("" | "{}" | "~" | "null", None) => {
                let key = &lines[l][..lines[l].find(':')? + 1];
                out.push(Splice {
                    start: l,
                    end: l + 1,
                    new: vec![key.to_string(), entry(c + 2)],
                });
            }
            _ => return None,
        }
        return Some(out);
    }
    if let Some((l, c)) = loc(&meta) {
        if !starts_line(lines[l], c) || !after_key(lines[l], c)?.is_empty() {
            return None;
        }
        let (_, ind) = first_child(lines, l, c)?;
        out.push(Splice {
            start: l + 1,
            end: l + 1,
            new: vec![format!("{}annotations:", pad(ind)), entry(ind + 2)],
        });
        return Some(out);
    }
    // A template without metadata: it goes first in the template's mapping.
    let (l, c) = loc(&e.pod.path)?;
    if !starts_line(lines[l], c) || !after_key(lines[l], c)?.is_empty() {
        return None;
    }
    let (_, ind) = first_child(lines, l, c)?;
    out.push(Splice {
        start: l + 1,
        end: l + 1,
        new: vec![
            format!("{}metadata:", pad(ind)),
            format!("{}annotations:", pad(ind + 2)),
            entry(ind + 4),
        ],
    });
    Some(out)
}

fn textual(file: &File, edits: &[Edit], carrier: Carrier) -> Option<String> {
    let lines: Vec<&str> = file.text.split_inclusive('\n').collect();
    let bare: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_end_matches(['\n', '\r']))
        .collect();
    let mut splices = Vec::new();
    for e in edits {
        splices.extend(splices_for(file, &bare, e, carrier)?);
    }
    // From the bottom up, so that earlier line numbers stay valid.
    splices.sort_by_key(|s| std::cmp::Reverse(s.start));
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut last_start = usize::MAX;
    for s in splices {
        if s.end > last_start {
            return None;
        }
        last_start = s.start;
        let new: Vec<String> = s.new.into_iter().map(|l| l + "\n").collect();
        out.splice(s.start..s.end.min(out.len()), new);
    }
    let mut text = out.concat();
    if !file.text.ends_with('\n') && text.ends_with('\n') && !file.text.is_empty() {
        // Keep a missing final newline missing only if the last line was untouched.
        if lines
            .last()
            .is_some_and(|l| text.ends_with(&format!("{l}\n")))
        {
            text.pop();
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_gen::workload::{collect, Inputs};
    use crate::policy_gen::Diagnostics;

    fn pods(f: &File) -> Vec<PodSource> {
        let mut i = Inputs::default();
        collect(f, true, &mut i, &mut Diagnostics::new(false)).unwrap();
        i.pods
    }

    fn run(text: &str, carrier: Carrier) -> (String, Vec<String>) {
        let f = File::parse("m.yaml", text.to_string()).unwrap();
        let p = pods(&f);
        let edits: Vec<Edit> = p
            .iter()
            .enumerate()
            .map(|(i, pod)| Edit {
                pod,
                value: format!("V{i}"),
            })
            .collect();
        annotate(&f, &edits, carrier).unwrap()
    }

    #[test]
    fn inserted_in_place_keeping_comments_and_other_documents() {
        let text = "\
# my service
apiVersion: v1
kind: Service
metadata: {name: s}   # flow style here is fine: no pod
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    # the pod
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: a
        image: busybox:1
---
kind: Pod
metadata:
  name: p
  annotations:
    other: x
    io.katacontainers.config.hypervisor.cc_init_data: old
spec:
  containers:
  - name: a
    image: busybox:1
---
kind: Job
metadata:
  name: j
spec:
  template:
    spec:
      containers:
      - {name: a, image: busybox:1}
";
        let (out, warnings) = run(text, Carrier::Policy);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(out.starts_with("# my service\napiVersion: v1\nkind: Service\nmetadata: {name: s}   # flow style here is fine: no pod\n---\n"), "{out}");
        assert!(out.contains("    # the pod\n    metadata:\n      annotations:\n        io.katacontainers.config.agent.policy: V0\n      labels:\n"), "{out}");
        assert!(out.contains("  annotations:\n    io.katacontainers.config.agent.policy: V1\n    other: x\nspec:\n"), "{out}");
        assert!(!out.contains("cc_init_data"), "{out}");
        assert!(out.contains("  template:\n    metadata:\n      annotations:\n        io.katacontainers.config.agent.policy: V2\n    spec:\n"), "{out}");
        // Run again: the values are replaced, nothing else moves.
        let (again, _) = run(&out, Carrier::Policy);
        assert_eq!(again, out);
    }

    #[test]
    fn flow_style_metadata_falls_back_to_rewriting() {
        let (out, warnings) = run(
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: b:1}]}\n",
            Carrier::InitData,
        );
        assert_eq!(warnings.len(), 1);
        let docs = yaml::documents(&out).unwrap();
        assert_eq!(
            docs[0].value["metadata"]["annotations"][INITDATA_ANNOTATION],
            "V0"
        );
    }

    #[test]
    fn a_json_manifest_stays_json() {
        let (out, warnings) = run(
            r#"{"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "b:1"}]}}"#,
            Carrier::Policy,
        );
        assert_eq!(warnings.len(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["metadata"]["annotations"][POLICY_ANNOTATION], "V0");
    }

    #[test]
    fn digests_are_the_shims() {
        let rego = "package agent_policy\n\ndefault X := true\n";
        let v = annotation_value(rego, Carrier::Policy);
        let p = policy_source::from_policy_annotation(&v).unwrap();
        assert_eq!(p.text, rego);
        let hex = host_data_hex(Carrier::Policy, &v).unwrap();
        assert_eq!(hex.len(), 64);
        let v = annotation_value(rego, Carrier::InitData);
        let p = policy_source::from_initdata_annotation(&v).unwrap();
        assert_eq!(p.text, rego);
        assert_eq!(
            p.document.as_deref(),
            Some(initdata_document(rego).as_str())
        );
        let want: String = kata_cc_policy::initdata::digest::compute(
            kata_cc_policy::initdata::digest::Algorithm::Sha256,
            initdata_document(rego).as_bytes(),
        )
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
        assert_eq!(host_data_hex(Carrier::InitData, &v).unwrap(), want);
        // A policy holding the literal-string delimiter still round-trips.
        let odd = "package agent_policy\n# '''\n";
        let p = policy_source::from_initdata_annotation(&annotation_value(odd, Carrier::InitData))
            .unwrap();
        assert_eq!(p.text, odd);
    }
}
