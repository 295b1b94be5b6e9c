//! The tests' mini-kubelet: CRI `runtime.v1` clients (crate `k8s-cri`) over a private
//! containerd's unix socket, called synchronously with a deadline on every call, and the
//! requests a kubelet (>= 1.23) builds for a pod, so tests drive containerd's CRI plugin as a
//! node would.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The containerd namespace of CRI's containers, images and tasks.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The runtime handler (containerd `runtimes.kata-cc`) of kata-cc pods.
pub const HANDLER: &str = "kata-cc";

/// A connection to one containerd's CRI services, with its own (current-thread) tokio runtime.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    /// Connects to the CRI services on containerd's socket (within `timeout`).
    pub fn connect(socket: &Path, timeout: Duration) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let path: PathBuf = socket.to_path_buf();
        let connect = async move {
            // The URI is required by tonic and unused: the connector dials the socket.
            Endpoint::try_from("http://[::]:50051")
                .expect("a static endpoint")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
        };
        // (The timer is made inside block_on: it needs the runtime's reactor.)
        let channel = match rt.block_on(async { tokio::time::timeout(timeout, connect).await }) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("CRI connect {}: {e}", socket.display()),
            Err(_) => panic!("CRI connect {}: timed out", socket.display()),
        };
        Cri { rt, channel }
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one CRI call to completion within `timeout`; a timeout is a `DeadlineExceeded`
    /// status naming the call.
    pub fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "{what}: no answer within {}s",
                timeout.as_secs()
            ))),
        }
    }
}

/// What the tests choose of a pod; the rest is filled as a kubelet fills it.
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    /// The pod's log directory (kubelet: /var/log/pods/<ns>_<name>_<uid>).
    pub log_directory: &'a Path,
    /// The pod's memory limit (sum of its containers' limits), bytes; 0 = none.
    pub memory_limit: i64,
    /// CPU quota/period of the pod's CPU limit (0/100000 = none).
    pub cpu_quota: i64,
    pub cpu_period: i64,
}

/// The PodSandboxConfig a kubelet sends for a pod (`generatePodSandboxConfig` and
/// `applySandboxResources`): metadata, hostname, log dir, DNS, the Kubernetes labels, cgroup
/// parent, namespace options (network POD, pid CONTAINER, ipc POD) and the pod's resources.
pub fn pod_sandbox_config(p: &PodSpec<'_>) -> api::PodSandboxConfig {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), p.name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            p.namespace.to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), p.uid.to_string()),
    ]);
    let annotations =
        HashMap::from([("kubernetes.io/config.source".to_string(), "api".to_string())]);
    // Kubelet's cpu shares: from requests; 2 (the minimum) when there are none.
    let resources = api::LinuxContainerResources {
        cpu_period: p.cpu_period,
        cpu_quota: p.cpu_quota,
        cpu_shares: 2,
        memory_limit_in_bytes: p.memory_limit,
        ..Default::default()
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: p.name.to_string(),
            uid: p.uid.to_string(),
            namespace: p.namespace.to_string(),
            attempt: 0,
        }),
        hostname: p.name.to_string(),
        log_directory: p.log_directory.to_string_lossy().into_owned(),
        dns_config: Some(api::DnsConfig {
            servers: vec!["10.96.0.10".to_string()],
            searches: vec![
                format!("{}.svc.cluster.local", p.namespace),
                "svc.cluster.local".to_string(),
                "cluster.local".to_string(),
            ],
            options: vec!["ndots:5".to_string()],
        }),
        labels,
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/burstable/pod{}", p.uid),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Unconfined as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(resources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the tests choose of a container.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    /// The image as pulled (the reference or the image id).
    pub image: &'a str,
    pub command: &'a [&'a str],
    pub envs: &'a [(&'a str, &'a str)],
    /// Relative to the pod's log directory (kubelet: <name>/<restart count>.log).
    pub log_path: &'a str,
    pub memory_limit: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
}

/// The ContainerConfig a kubelet sends (`generateContainerConfig`), without mounts (kata-cc
/// has no volumes yet).
pub fn container_config(c: &ContainerSpec<'_>, pod: &PodSpec<'_>) -> api::ContainerConfig {
    let labels = HashMap::from([
        (
            "io.kubernetes.container.name".to_string(),
            c.name.to_string(),
        ),
        ("io.kubernetes.pod.name".to_string(), pod.name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            pod.namespace.to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.to_string()),
    ]);
    let annotations = HashMap::from([
        (
            "io.kubernetes.container.restartCount".to_string(),
            "0".to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            "/dev/termination-log".to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".to_string(),
            "File".to_string(),
        ),
    ]);
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: c.image.to_string(),
            ..Default::default()
        }),
        command: c.command.iter().map(|s| s.to_string()).collect(),
        envs: c
            .envs
            .iter()
            .map(|(k, v)| api::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        labels,
        annotations,
        log_path: c.log_path.to_string(),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: c.cpu_period,
                cpu_quota: c.cpu_quota,
                cpu_shares: 2,
                memory_limit_in_bytes: c.memory_limit,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Unconfined as i32,
                    ..Default::default()
                }),
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// One line of a CRI container log (`<RFC3339Nano> <stream> <P|F> <text>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

/// Parses a CRI log file's text; panics on a line not in the CRI format.
pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (Some(_ts), Some(stream), Some(tag), text) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                panic!("not a CRI log line: {l:?}");
            };
            assert!(
                matches!(stream, "stdout" | "stderr") && matches!(tag, "P" | "F"),
                "not a CRI log line: {l:?}"
            );
            LogLine {
                stream: stream.to_string(),
                partial: tag == "P",
                text: text.unwrap_or("").to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_log_lines() {
        let l = parse_log(
            "2024-01-01T00:00:00.000000001Z stdout F hello world\n\
             2024-01-01T00:00:00.000000002Z stderr P part\n\
             2024-01-01T00:00:00.000000003Z stdout F \n",
        );
        assert_eq!(
            l,
            vec![
                LogLine {
                    stream: "stdout".into(),
                    partial: false,
                    text: "hello world".into()
                },
                LogLine {
                    stream: "stderr".into(),
                    partial: true,
                    text: "part".into()
                },
                LogLine {
                    stream: "stdout".into(),
                    partial: false,
                    text: "".into()
                },
            ]
        );
    }

    #[test]
    #[should_panic(expected = "not a CRI log line")]
    fn rejects_other_lines() {
        parse_log("hello\n");
    }

    #[test]
    fn pod_config_carries_kubelet_fields() {
        let dir = PathBuf::from("/var/log/pods/ns_p_u");
        let c = pod_sandbox_config(&PodSpec {
            name: "p",
            namespace: "ns",
            uid: "u",
            log_directory: &dir,
            memory_limit: 256 << 20,
            cpu_quota: 50000,
            cpu_period: 100000,
        });
        let linux = c.linux.expect("linux");
        let r = linux.resources.expect("resources");
        assert_eq!(
            (r.memory_limit_in_bytes, r.cpu_quota, r.cpu_period),
            (256 << 20, 50000, 100000)
        );
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("namespace options");
        assert_eq!(ns.pid, api::NamespaceMode::Container as i32);
        assert_eq!(c.metadata.expect("metadata").uid, "u");
    }
}
