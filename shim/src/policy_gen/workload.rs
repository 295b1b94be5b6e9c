//! The pods of a manifest file: each Pod, or the pod template of each workload (Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob; a List's items),
//! with the name pattern its controller gives the pod; and the ConfigMaps and Secrets that
//! env `valueFrom`/`envFrom` and volumes read.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::yaml::{self, Document, FieldPath};
use super::{Diagnostics, GenError};

/// Kinds that carry no pod: passed over without a policy.
const NO_POD_KINDS: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "HorizontalPodAutoscaler",
    "Ingress",
    "LimitRange",
    "Namespace",
    "NetworkPolicy",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "PriorityClass",
    "ResourceQuota",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
];

/// The characters of the random suffix the API server gives generated names (apimachinery's
/// `rand.String`: no vowels, no 0, 1, 3), also those of a Deployment's pod-template-hash.
pub const NAME_SUFFIX: &str = "[bcdfghjklmnpqrstvwxz2456789]";

/// One pod (or pod template) of the file.
#[derive(Debug, Clone)]
pub struct PodSource {
    /// Index of the YAML document in the file.
    pub doc: usize,
    /// The object's kind and name, for messages (`Deployment/web`).
    pub kind: String,
    pub name: String,
    /// Path to the pod (template) object in its document (`spec.template`; empty for a Pod).
    pub path: FieldPath,
    /// The pod (template) object: `metadata` and `spec`.
    pub pod: Value,
    /// Anchored regex of the pod's name as its controller makes it.
    pub name_regex: String,
    /// The pod's name when it is fixed (a Pod with `metadata.name`).
    pub fixed_name: Option<String>,
    /// The object's namespace, if the manifest names one.
    pub namespace: Option<String>,
}

impl PodSource {
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The path of a field of the pod (template), from the document's root.
    pub fn field(&self, rel: &FieldPath) -> FieldPath {
        self.path.join(rel)
    }
}

/// A ConfigMap's or Secret's string values (a Secret's `data` decoded).
#[derive(Debug, Clone, Default)]
pub struct KeyValues {
    pub values: BTreeMap<String, String>,
}

/// What a manifest file (and the `-c` files) give.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub pods: Vec<PodSource>,
    /// By name (the namespace is the pod's; a ConfigMap without one matches any pod).
    pub config_maps: BTreeMap<String, KeyValues>,
    pub secrets: BTreeMap<String, KeyValues>,
}

/// A parsed file: its text (for lines) and documents.
#[derive(Debug)]
pub struct File {
    pub path: String,
    pub text: String,
    pub docs: Vec<Document>,
}

impl File {
    pub fn parse(path: &str, text: String) -> Result<File, GenError> {
        let docs = yaml::documents(&text).map_err(|e| GenError::Yaml {
            file: path.to_string(),
            line: e.line.unwrap_or(1),
            message: e.message,
        })?;
        Ok(File {
            path: path.to_string(),
            text,
            docs,
        })
    }

    /// The line of a field of document `doc` (or of its nearest ancestor).
    pub fn line(&self, doc: usize, field: &FieldPath) -> usize {
        yaml::line_of(&self.text, doc, field).unwrap_or(1)
    }
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in keys {
        cur = cur.get(k)?;
    }
    cur.as_str()
}

/// Collects the pods, ConfigMaps and Secrets of `file`. `pods_wanted`: false for `-c` files,
/// whose pods (if any) are an error.
pub fn collect(
    file: &File,
    pods_wanted: bool,
    inputs: &mut Inputs,
    diag: &mut Diagnostics,
) -> Result<(), GenError> {
    for d in &file.docs {
        if d.value.is_null() {
            continue;
        }
        collect_object(
            file,
            d.index,
            &FieldPath::default(),
            &d.value,
            pods_wanted,
            inputs,
            diag,
        )?;
    }
    Ok(())
}

fn collect_object(
    file: &File,
    doc: usize,
    at: &FieldPath,
    obj: &Value,
    pods_wanted: bool,
    inputs: &mut Inputs,
    diag: &mut Diagnostics,
) -> Result<(), GenError> {
    let kind_field = at.key("kind");
    let Some(kind) = obj.get("kind").and_then(Value::as_str) else {
        return Err(GenError::Field {
            file: file.path.clone(),
            line: file.line(doc, at),
            field: kind_field.to_string(),
            problem: "missing: every document must name its kind".into(),
        });
    };
    let name = str_at(obj, &["metadata", "name"]).map(str::to_string);
    let generate_name = str_at(obj, &["metadata", "generateName"]).map(str::to_string);
    let namespace = str_at(obj, &["metadata", "namespace"]).map(str::to_string);
    let display = name
        .clone()
        .or_else(|| generate_name.clone())
        .unwrap_or_default();
    let base = match (&name, &generate_name) {
        (Some(n), _) => Some(regex::escape(n)),
        (None, Some(g)) => Some(format!(
            "{}{NAME_SUFFIX}{{5}}",
            regex::escape(&generate_prefix(g))
        )),
        (None, None) => None,
    };
    let suffix5 = format!("{NAME_SUFFIX}{{5}}");
    let (template, pattern): (Option<FieldPath>, Option<String>) = match kind {
        "Pod" => (Some(FieldPath::default()), base.clone()),
        "Deployment" => (
            Some(FieldPath::keys(&["spec", "template"])),
            base.as_ref()
                .map(|b| format!("{b}-{NAME_SUFFIX}{{1,10}}-{suffix5}")),
        ),
        "ReplicaSet" | "ReplicationController" | "DaemonSet" => (
            Some(FieldPath::keys(&["spec", "template"])),
            base.as_ref().map(|b| format!("{b}-{suffix5}")),
        ),
        "StatefulSet" => (
            Some(FieldPath::keys(&["spec", "template"])),
            base.as_ref().map(|b| format!("{b}-[0-9]+")),
        ),
        // A Job's pods: `<job>-<5>`, an indexed Job's `<job>-<index>-<5>`.
        "Job" => (
            Some(FieldPath::keys(&["spec", "template"])),
            base.as_ref().map(|b| format!("{b}(-[0-9]+)?-{suffix5}")),
        ),
        // A CronJob's Job is `<cronjob>-<scheduled time in minutes>`.
        "CronJob" => (
            Some(FieldPath::keys(&[
                "spec",
                "jobTemplate",
                "spec",
                "template",
            ])),
            base.as_ref()
                .map(|b| format!("{b}-[0-9]+(-[0-9]+)?-{suffix5}")),
        ),
        "List" => {
            let items = obj.get("items").and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                collect_object(
                    file,
                    doc,
                    &at.key("items").index(i),
                    item,
                    pods_wanted,
                    inputs,
                    diag,
                )?;
            }
            return Ok(());
        }
        "ConfigMap" | "Secret" => {
            let Some(n) = name else {
                return Err(GenError::Field {
                    file: file.path.clone(),
                    line: file.line(doc, at),
                    field: at.key("metadata").key("name").to_string(),
                    problem: format!("missing: a {kind} needs a name"),
                });
            };
            let kv = key_values(file, doc, at, obj, kind)?;
            if kind == "ConfigMap" {
                inputs.config_maps.insert(n, kv);
            } else {
                inputs.secrets.insert(n, kv);
            }
            return Ok(());
        }
        k if NO_POD_KINDS.contains(&k) => return Ok(()),
        other => {
            let line = file.line(doc, &kind_field);
            let e = GenError::Kind {
                file: file.path.clone(),
                line,
                kind: other.to_string(),
            };
            return diag.unsupported(e);
        }
    };
    let (Some(tpath), Some(pattern)) = (template, pattern) else {
        return Err(GenError::Field {
            file: file.path.clone(),
            line: file.line(doc, &at.key("metadata")),
            field: at.key("metadata").key("name").to_string(),
            problem: format!("missing: a {kind} needs a name or generateName"),
        });
    };
    if !pods_wanted {
        return Err(GenError::Field {
            file: file.path.clone(),
            line: file.line(doc, &kind_field),
            field: kind_field.to_string(),
            problem: format!("{kind}: a -c file may hold only ConfigMaps and Secrets"),
        });
    }
    let pod_path = at.join(&tpath);
    let Some(pod) = tpath.get(obj).filter(|p| p.is_object()) else {
        return Err(GenError::Field {
            file: file.path.clone(),
            line: file.line(doc, &pod_path),
            field: pod_path.to_string(),
            problem: "missing or not a mapping".into(),
        });
    };
    inputs.pods.push(PodSource {
        doc,
        kind: kind.to_string(),
        name: display,
        path: pod_path,
        pod: pod.clone(),
        name_regex: format!("^{pattern}$"),
        fixed_name: if kind == "Pod" { name } else { None },
        namespace,
    });
    Ok(())
}

/// apimachinery's `SimpleNameGenerator`: the prefix is cut so that prefix + 5 characters fit
/// in 63.
fn generate_prefix(prefix: &str) -> String {
    prefix.chars().take(58).collect()
}

fn key_values(
    file: &File,
    doc: usize,
    at: &FieldPath,
    obj: &Value,
    kind: &str,
) -> Result<KeyValues, GenError> {
    let mut kv = KeyValues::default();
    let bad = |field: FieldPath, problem: String| GenError::Field {
        file: file.path.clone(),
        line: file.line(doc, &field),
        field: field.to_string(),
        problem,
    };
    let plain = if kind == "ConfigMap" {
        "data"
    } else {
        "stringData"
    };
    let encoded = if kind == "ConfigMap" {
        "binaryData"
    } else {
        "data"
    };
    if let Some(m) = obj.get(encoded).and_then(Value::as_object) {
        for (k, v) in m {
            let f = at.key(encoded).key(k);
            let s = v
                .as_str()
                .ok_or_else(|| bad(f.clone(), "not a string".into()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| bad(f.clone(), format!("not base64: {e}")))?;
            // Env values are text; a binary value can only be a file in a volume, whose
            // content the policy does not pin.
            kv.values
                .insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    if let Some(m) = obj.get(plain).and_then(Value::as_object) {
        for (k, v) in m {
            let s = v
                .as_str()
                .ok_or_else(|| bad(at.key(plain).key(k), "not a string".into()))?;
            kv.values.insert(k.clone(), s.to_string());
        }
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(text: &str) -> Result<(Inputs, Diagnostics), GenError> {
        let f = File::parse("m.yaml", text.to_string())?;
        let mut inputs = Inputs::default();
        let mut diag = Diagnostics::new(false);
        collect(&f, true, &mut inputs, &mut diag)?;
        Ok((inputs, diag))
    }

    fn matches(re: &str, s: &str) -> bool {
        regex::Regex::new(re).unwrap().is_match(s)
    }

    #[test]
    fn each_kind_names_its_pods_as_its_controller_does() {
        let text = "\
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {template: {spec: {containers: []}}}
---
kind: StatefulSet
metadata: {name: db}
spec: {template: {spec: {containers: []}}}
---
kind: Job
metadata: {name: j}
spec: {template: {spec: {containers: []}}}
---
kind: CronJob
metadata: {name: c}
spec: {jobTemplate: {spec: {template: {spec: {containers: []}}}}}
---
kind: List
items:
- kind: DaemonSet
  metadata: {name: d}
  spec: {template: {spec: {containers: []}}}
- kind: Pod
  metadata: {generateName: p-}
  spec: {containers: []}
---
kind: Service
metadata: {name: s}
---
kind: ConfigMap
metadata: {name: cm}
data: {a: b}
binaryData: {c: ZGVm}
---
kind: Secret
metadata: {name: s}
data: {pw: aHVudGVyMg==}
stringData: {user: admin}
";
        let (i, _) = pods(text).unwrap();
        let names: Vec<String> = i.pods.iter().map(PodSource::label).collect();
        assert_eq!(
            names,
            [
                "Deployment/web",
                "StatefulSet/db",
                "Job/j",
                "CronJob/c",
                "DaemonSet/d",
                "Pod/p-"
            ]
        );
        assert!(matches(&i.pods[0].name_regex, "web-7c9d8bb6f4-x2kqz"));
        assert!(!matches(&i.pods[0].name_regex, "web-x2kqz"));
        assert_eq!(i.pods[0].namespace.as_deref(), Some("shop"));
        assert_eq!(i.pods[0].path.to_string(), "spec.template");
        assert!(matches(&i.pods[1].name_regex, "db-0"));
        assert!(matches(&i.pods[2].name_regex, "j-x2kqz"));
        assert!(matches(&i.pods[2].name_regex, "j-3-x2kqz"));
        assert!(matches(&i.pods[3].name_regex, "c-28391040-x2kqz"));
        assert_eq!(i.pods[3].path.to_string(), "spec.jobTemplate.spec.template");
        assert!(matches(&i.pods[4].name_regex, "d-x2kqz"));
        assert_eq!(i.pods[4].path.to_string(), "items[0].spec.template");
        assert!(matches(&i.pods[5].name_regex, "p-x2kqz"));
        assert!(!matches(&i.pods[5].name_regex, "p-aaaaa"));
        assert_eq!(i.config_maps["cm"].values["a"], "b");
        assert_eq!(i.config_maps["cm"].values["c"], "def");
        assert_eq!(i.secrets["s"].values["pw"], "hunter2");
        assert_eq!(i.secrets["s"].values["user"], "admin");
    }

    #[test]
    fn an_unknown_kind_is_named_with_its_line() {
        let e = pods("kind: Pod\nmetadata: {name: a}\nspec: {}\n---\nkind: Frobnicator\nmetadata: {name: x}\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.yaml:5: kind Frobnicator: not supported (kinds with pods: Pod, Deployment, \
             StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List; \
             and ConfigMap, Secret)"
        );
        let f = File::parse("m.yaml", "kind: Frobnicator\n".into()).unwrap();
        let mut inputs = Inputs::default();
        let mut diag = Diagnostics::new(true);
        collect(&f, true, &mut inputs, &mut diag).unwrap();
        assert_eq!(diag.warnings.len(), 1, "{:?}", diag.warnings);
        let e = pods("metadata: {name: x}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.yaml:1: kind: missing: every document must name its kind"
        );
    }
}
