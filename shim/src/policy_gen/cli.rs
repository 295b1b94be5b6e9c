//! `kata-cc policy gen`: the command line (genpolicy's flag names where it has the same
//! thing), and the run: read the files, generate, write the manifest or print.

use std::process::ExitCode;

use super::images::{ContainerdSource, ImageSource, RegistrySource};
use super::output::{self, Carrier, Edit};
use super::{generate, Options, DEFAULT_PAUSE_IMAGE};

pub const USAGE: &str = "  policy gen -y POD.yaml [-c CM_OR_SECRET.yaml]... [-r] [--initdata] [--print-digest]
             [--insecure-registry HOST:PORT]... [--containerd-socket PATH [--containerd-namespace NS]]
             [--allow-exec] [--allow-logs] [--allow-exec-command JSON]... [--pause-image REF] [-s]
                           generate each pod's policy and write it into the manifest (--help)
";

pub const HELP: &str = "\
kata-cc policy gen -y|--yaml-file FILE [options]
  Generates the security policy of each pod of a Kubernetes manifest (Pod, Deployment,
  StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List) and writes it
  into the pod (template) as the annotation io.katacontainers.config.agent.policy (base64 of
  the Rego), in place: the file's other lines and documents stay as they are.
  The policy allows the agent requests kata-cc's shim sends for that pod and nothing else:
  its containers' commands, env, mounts, users and capabilities; its image layers are pinned
  by their diff_ids. Exec, logs and stdin are off unless the options below turn them on.
  -c, --config-file FILE      ConfigMaps and Secrets that env and volumes read (repeatable;
                              those in the manifest itself are read too)
  -r, --raw                   print the policy (Rego) instead; write nothing
  --initdata                  write io.katacontainers.config.hypervisor.cc_init_data instead:
                              base64(gzip(init-data TOML whose data.\"policy.rego\" is the policy))
  --print-digest              print the HOST_DATA (hex) the shim derives from the annotation,
                              one line per pod (`<hex>  <Kind>/<name>` when there are several)
  --insecure-registry H:P     read images from this registry over plain HTTP (repeatable)
  --containerd-socket PATH    read images from containerd's content store instead of
                              registries (no pull: the images must be there)
  --containerd-namespace NS   containerd namespace of the images (default k8s.io)
  --pause-image REF           the node's CRI sandbox image (default registry.k8s.io/pause:3.6,
                              containerd 1.6's); its layers are pinned too
  --allow-exec                any exec command in any container, with its stdin and output
  --allow-exec-command JSON   one more exec command for every container, as a JSON array of
                              its arguments, e.g. '[\"sh\",\"-c\",\"date\"]' (repeatable)
  --allow-logs                reading the containers' output (kubectl logs)
  -s, --ignore-unsupported    warn about a field or kind this tool does not support, and go on
                              (the policy refuses what such a field causes)
  Errors name FILE:LINE and the field, kind or image; nothing is written then.
  Exit status: 0 done, 1 an input error, 2 a usage error. Warnings go to stderr.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub yaml: String,
    pub config_files: Vec<String>,
    pub raw: bool,
    pub initdata: bool,
    pub print_digest: bool,
    pub insecure_registries: Vec<String>,
    pub containerd_socket: Option<String>,
    pub containerd_namespace: String,
    pub ignore_unsupported: bool,
    pub options: Options,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("{HELP}")]
    Help,
    #[error("kata-cc policy gen: {0} needs a value\nusage:\n{USAGE}")]
    NoValue(String),
    #[error("kata-cc policy gen: unknown argument {0}\nusage:\n{USAGE}")]
    Unknown(String),
    #[error("kata-cc policy gen: -y/--yaml-file is required\nusage:\n{USAGE}")]
    NoYaml,
    #[error("kata-cc policy gen: --allow-exec-command {value}: {problem} (expected a JSON array of strings, e.g. '[\"sh\",\"-c\",\"date\"]')")]
    ExecCommand { value: String, problem: String },
    #[error("kata-cc policy gen: --containerd-namespace needs --containerd-socket")]
    NamespaceWithoutSocket,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, ArgsError> {
        let mut a = Args {
            yaml: String::new(),
            config_files: Vec::new(),
            raw: false,
            initdata: false,
            print_digest: false,
            insecure_registries: Vec::new(),
            containerd_socket: None,
            containerd_namespace: "k8s.io".to_string(),
            ignore_unsupported: false,
            options: Options {
                pause_image: DEFAULT_PAUSE_IMAGE.to_string(),
                ..Default::default()
            },
        };
        let mut namespace_given = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // `--flag=value` as well as `--flag value` (genpolicy users write both).
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| ArgsError::NoValue(flag.to_string())),
            };
            match flag {
                "-y" | "--yaml-file" => a.yaml = value()?,
                "-c" | "--config-file" => a.config_files.push(value()?),
                "-r" | "--raw" => a.raw = true,
                "--initdata" => a.initdata = true,
                "--print-digest" => a.print_digest = true,
                "--insecure-registry" => a.insecure_registries.push(value()?),
                "--containerd-socket" => a.containerd_socket = Some(value()?),
                "--containerd-namespace" => {
                    a.containerd_namespace = value()?;
                    namespace_given = true;
                }
                "--pause-image" => a.options.pause_image = value()?,
                "--allow-exec" => a.options.allow_exec = true,
                "--allow-logs" => a.options.allow_logs = true,
                "--allow-exec-command" => {
                    let v = value()?;
                    let cmd: Vec<String> =
                        serde_json::from_str(&v).map_err(|e| ArgsError::ExecCommand {
                            value: v.clone(),
                            problem: e.to_string(),
                        })?;
                    if cmd.is_empty() {
                        return Err(ArgsError::ExecCommand {
                            value: v,
                            problem: "empty".into(),
                        });
                    }
                    a.options.allow_exec_commands.push(cmd);
                }
                "-s" | "--ignore-unsupported" => a.ignore_unsupported = true,
                "-h" | "--help" => return Err(ArgsError::Help),
                other => return Err(ArgsError::Unknown(other.to_string())),
            }
        }
        if a.yaml.is_empty() {
            return Err(ArgsError::NoYaml);
        }
        if namespace_given && a.containerd_socket.is_none() {
            return Err(ArgsError::NamespaceWithoutSocket);
        }
        Ok(a)
    }
}

/// What a run prints and writes, decided without touching the terminal (for tests).
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub warnings: Vec<String>,
    /// The new manifest text, to be written over the file.
    pub rewrite: Option<String>,
}

/// Runs `policy gen` with an image source; reads the files, writes nothing.
pub async fn run(args: &Args, images: &dyn ImageSource) -> Result<Outcome, super::GenError> {
    let read = |p: &String| {
        std::fs::read_to_string(p).map_err(|source| super::GenError::Read {
            file: p.clone(),
            source,
        })
    };
    let text = read(&args.yaml)?;
    let mut configs = Vec::new();
    for c in &args.config_files {
        configs.push((c.clone(), read(c)?));
    }
    let g = generate(
        &args.yaml,
        text,
        &configs,
        images,
        &args.options,
        args.ignore_unsupported,
    )
    .await?;
    let carrier = if args.initdata {
        Carrier::InitData
    } else {
        Carrier::Policy
    };
    let mut out = Outcome {
        warnings: g.warnings,
        ..Default::default()
    };
    let several = g.policies.len() > 1;
    if args.raw {
        for p in &g.policies {
            if several {
                out.stdout
                    .push_str(&format!("# kata-cc policy gen: {}\n", p.source.label()));
            }
            out.stdout.push_str(&p.rego);
        }
    }
    let values: Vec<String> = g
        .policies
        .iter()
        .map(|p| output::annotation_value(&p.rego, carrier))
        .collect();
    for (p, v) in g.policies.iter().zip(&values) {
        // The annotation limit of the API server: 256 KiB for all of a pod's annotations.
        if v.len() > 256 * 1024 {
            out.warnings.push(format!(
                "{}: {}: the policy annotation is {} KiB, over Kubernetes' 256 KiB limit for a pod's annotations",
                g.file.path,
                p.source.label(),
                v.len() / 1024
            ));
        }
    }
    if args.print_digest {
        for (p, v) in g.policies.iter().zip(&values) {
            let hex =
                output::host_data_hex(carrier, v).map_err(|message| super::GenError::Output {
                    file: args.yaml.clone(),
                    message,
                })?;
            if several {
                out.stdout
                    .push_str(&format!("{hex}  {}\n", p.source.label()));
            } else {
                out.stdout.push_str(&format!("{hex}\n"));
            }
        }
    }
    if !args.raw {
        let edits: Vec<Edit> = g
            .policies
            .iter()
            .zip(values)
            .map(|(p, value)| Edit {
                pod: &p.source,
                value,
            })
            .collect();
        let (text, warnings) = output::annotate(&g.file, &edits, carrier)?;
        out.warnings.extend(warnings);
        out.rewrite = Some(text);
    }
    Ok(out)
}

/// Replaces `path` with `text` atomically (a file beside it, renamed over it), keeping its
/// permissions.
fn write_over(path: &str, text: &str) -> std::io::Result<()> {
    let p = std::path::Path::new(path);
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kata-cc-gen.tmp"));
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(p) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, p).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub fn main(argv: &[String]) -> ExitCode {
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(ArgsError::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kata-cc policy gen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let source: Box<dyn ImageSource> = match &args.containerd_socket {
            Some(socket) => Box::new(
                ContainerdSource::connect(socket, &args.containerd_namespace)
                    .await
                    .map_err(|e| format!("kata-cc policy gen: {e}"))?,
            ),
            None => {
                let r = RegistrySource::new(args.insecure_registries.clone());
                for w in r.warnings() {
                    eprintln!("warning: {w}");
                }
                Box::new(r)
            }
        };
        run(&args, source.as_ref())
            .await
            .map_err(|e| format!("kata-cc policy gen: {e}"))
    });
    match result {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(text) = &out.rewrite {
                if let Err(e) = write_over(&args.yaml, text) {
                    eprintln!("kata-cc policy gen: {}: {e}", args.yaml);
                    return ExitCode::FAILURE;
                }
            }
            print!("{}", out.stdout);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn genpolicy_flag_names_and_forms() {
        let a = args(&[
            "-y",
            "p.yaml",
            "-c",
            "cm.yaml",
            "--config-file=s.yaml",
            "-r",
            "--insecure-registry=127.0.0.1:5000",
            "--allow-exec-command",
            "[\"sh\",\"-c\",\"date\"]",
            "-s",
        ])
        .unwrap();
        assert_eq!(a.yaml, "p.yaml");
        assert_eq!(a.config_files, ["cm.yaml", "s.yaml"]);
        assert!(a.raw && a.ignore_unsupported && !a.initdata);
        assert_eq!(a.insecure_registries, ["127.0.0.1:5000"]);
        assert_eq!(a.options.allow_exec_commands, [vec!["sh", "-c", "date"]]);
        assert_eq!(a.options.pause_image, DEFAULT_PAUSE_IMAGE);
        assert_eq!(args(&["-r"]).unwrap_err(), ArgsError::NoYaml);
        assert_eq!(args(&["-y"]).unwrap_err(), ArgsError::NoValue("-y".into()));
        assert_eq!(
            args(&["-y", "x", "--frob"]).unwrap_err(),
            ArgsError::Unknown("--frob".into())
        );
        assert!(matches!(
            args(&["-y", "x", "--allow-exec-command", "sh -c date"]).unwrap_err(),
            ArgsError::ExecCommand { .. }
        ));
        assert_eq!(
            args(&["-y", "x", "--containerd-namespace", "default"]).unwrap_err(),
            ArgsError::NamespaceWithoutSocket
        );
        assert_eq!(args(&["--help"]).unwrap_err(), ArgsError::Help);
    }
}
