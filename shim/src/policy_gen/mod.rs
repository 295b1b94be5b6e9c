//! `kata-cc policy gen`: a pod's security policy from its Kubernetes manifest.
//!
//! The policy allows exactly the agent requests kata-cc's shim sends for that pod on a node
//! (containerd's CRI, docs/kubernetes.md), and nothing else; each container's image layers
//! are pinned by their diff_ids. Steps, a module each:
//! - [`workload`]: the manifest's pods (Pod, Deployment, ..., List) with their name patterns,
//!   and the ConfigMaps/Secrets env and volumes read; [`yaml`] finds any field's line;
//! - [`model`]: what the kubelet and containerd's CRI make of each pod and container (args,
//!   env, user, mounts, capabilities, annotations), every pod field understood or refused;
//! - [`images`]: image facts (layers, config, accounts) from a registry or containerd;
//! - [`data`]: `policy_data` in genpolicy's schema; [`rules`]: kata-cc's own Rego over it;
//! - [`output`]: the annotation (plain or init-data), its digest, the manifest rewritten.

pub mod cli;
pub mod data;
pub mod images;
pub mod model;
pub mod output;
pub mod rules;
pub mod text;
pub mod user;
pub mod workload;
pub mod yaml;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};

use images::{Accounts, ImageFacts, ImageSource};

/// The node's sandbox (pause) image when none is given: containerd 1.6's `sandbox_image`.
pub const DEFAULT_PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";

/// Why a policy cannot be generated: one line naming the file, line and field (or kind, or
/// image).
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: not YAML: {message}")]
    Yaml {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: kind {kind}: not supported (kinds with pods: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List; and ConfigMap, Secret)")]
    Kind {
        file: String,
        line: usize,
        kind: String,
    },
    #[error("{file}:{line}: {field}: not supported{why}")]
    Unsupported {
        file: String,
        line: usize,
        field: String,
        /// Empty, or `: <why>` / ` (<detail>)`.
        why: String,
    },
    #[error("{file}:{line}: {field}: {problem}")]
    Field {
        file: String,
        line: usize,
        field: String,
        problem: String,
    },
    #[error("{file}:{line}: {field}: {source}")]
    Image {
        file: String,
        line: usize,
        field: String,
        #[source]
        source: Box<images::ImageFactsError>,
    },
    /// The node's sandbox image (not in the manifest).
    #[error("pause image (--pause-image): {source}")]
    PauseImage {
        #[source]
        source: Box<images::ImageFactsError>,
    },
    #[error("{file}: no pod in the manifest (kinds with pods: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List)")]
    NoPods { file: String },
    #[error("{file}: {message}")]
    Output { file: String, message: String },
}

/// Warnings, and whether an unsupported field is an error or a warning.
#[derive(Debug, Default)]
pub struct Diagnostics {
    ignore_unsupported: bool,
    pub warnings: Vec<String>,
}

impl Diagnostics {
    pub fn new(ignore_unsupported: bool) -> Self {
        Diagnostics {
            ignore_unsupported,
            warnings: Vec::new(),
        }
    }

    /// An unsupported field or kind: the error, or (`--ignore-unsupported`) a warning.
    pub fn unsupported(&mut self, e: GenError) -> Result<(), GenError> {
        if self.ignore_unsupported {
            self.warnings.push(format!(
                "{e} (ignored: the policy does not allow what it causes)"
            ));
            Ok(())
        } else {
            Err(e)
        }
    }

    pub fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }
}

/// What the policy allows beyond the pod's own requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Any exec command in any container (`--allow-exec`), with stdin and output.
    pub allow_exec: bool,
    /// Reading containers' output: `kubectl logs` (`--allow-logs`).
    pub allow_logs: bool,
    /// Exec commands allowed in every container besides the probes' and hooks'
    /// (`--allow-exec-command`), with stdin and output.
    pub allow_exec_commands: Vec<Vec<String>>,
    /// The node's sandbox image (`--pause-image`).
    pub pause_image: String,
}

/// One generated policy: a pod of the manifest and its Rego text.
#[derive(Debug, Clone)]
pub struct PodPolicy {
    pub source: workload::PodSource,
    pub rego: String,
}

/// The generation's result: a policy per pod, warnings.
#[derive(Debug)]
pub struct Generated {
    pub file: workload::File,
    pub policies: Vec<PodPolicy>,
    pub warnings: Vec<String>,
}

/// An image that cannot be read: named with the manifest's line (the pause image has none).
fn image_error(
    file: &workload::File,
    doc: usize,
    field: &yaml::FieldPath,
    source: images::ImageFactsError,
) -> GenError {
    let source = Box::new(source);
    if field.0.is_empty() {
        return GenError::PauseImage { source };
    }
    GenError::Image {
        file: file.path.clone(),
        line: file.line(doc, field),
        field: field.to_string(),
        source,
    }
}

/// Generates the policies of every pod of `manifest` (its text), reading ConfigMaps/Secrets
/// from `config_files` ((path, text)) and image facts from `images`. Every input error comes
/// before any image is fetched.
pub async fn generate(
    manifest_path: &str,
    manifest_text: String,
    config_files: &[(String, String)],
    images: &dyn ImageSource,
    opts: &Options,
    ignore_unsupported: bool,
) -> Result<Generated, GenError> {
    let mut diag = Diagnostics::new(ignore_unsupported);
    let file = workload::File::parse(manifest_path, manifest_text)?;
    let mut inputs = workload::Inputs::default();
    for (path, text) in config_files {
        let f = workload::File::parse(path, text.clone())?;
        workload::collect(&f, false, &mut inputs, &mut diag)?;
    }
    workload::collect(&file, true, &mut inputs, &mut diag)?;
    if inputs.pods.is_empty() {
        return Err(GenError::NoPods {
            file: manifest_path.to_string(),
        });
    }
    let mut plans = Vec::new();
    for p in &inputs.pods {
        plans.push(model::plan(&file, p, &inputs, opts, &mut diag)?);
    }

    // Image facts, each reference once, all at the same time.
    let mut refs: BTreeMap<String, (usize, yaml::FieldPath)> = BTreeMap::new();
    for plan in &plans {
        for c in &plan.containers {
            // The pause's image is not in the manifest: its field stays empty.
            let field = if c.image_field.0.is_empty() {
                yaml::FieldPath::default()
            } else {
                plan.source.field(&c.image_field)
            };
            refs.entry(c.image.clone())
                .or_insert_with(|| (plan.source.doc, field));
        }
    }
    let fetched = futures::future::join_all(refs.keys().map(|r| images.image(r))).await;
    let mut facts: BTreeMap<String, ImageFacts> = BTreeMap::new();
    for ((r, (doc, field)), f) in refs.iter().zip(fetched) {
        let f = f.map_err(|source| image_error(&file, *doc, field, source))?;
        facts.insert(r.clone(), f);
    }
    // Accounts only for the images whose user needs them.
    let mut need: BTreeSet<String> = BTreeSet::new();
    for plan in &plans {
        for c in &plan.containers {
            let f = &facts[&c.image];
            if let Some(u) = plan.user_string(c, &f.config.user) {
                if user::needs_accounts(&u) {
                    need.insert(c.image.clone());
                }
            }
        }
    }
    let need: Vec<String> = need.into_iter().collect();
    let read = futures::future::join_all(need.iter().map(|r| images.accounts(&facts[r]))).await;
    let mut accounts: BTreeMap<String, Accounts> = BTreeMap::new();
    for (r, a) in need.iter().zip(read) {
        let (doc, field) = &refs[r];
        let a = a.map_err(|source| image_error(&file, *doc, field, source))?;
        accounts.insert(r.clone(), a);
    }

    let mut policies = Vec::new();
    for plan in &plans {
        let pod = model::build(&file, plan, &facts, &accounts, &mut diag)?;
        let data = data::policy_data(&pod, opts);
        policies.push(PodPolicy {
            source: plan.source.clone(),
            rego: rules::policy(&data),
        });
    }
    Ok(Generated {
        file,
        policies,
        warnings: diag.warnings,
    })
}
