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
/// The runtime handler (containerd `runtimes.runc`) of baseline pods in the same containerd.
pub const RUNC_HANDLER: &str = "runc";

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
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// The pod's uid (a UUID, as the API server makes them).
    pub uid: String,
    /// The pod's log directory (kubelet: /var/log/pods/<ns>_<name>_<uid>).
    pub log_directory: PathBuf,
    /// The pod's memory limit (sum of its containers' limits), bytes; 0 = none.
    pub memory_limit: i64,
    /// CPU quota/period of the pod's CPU limit (0/100000 = none).
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// `shareProcessNamespace: true`: PID namespace mode POD for the sandbox and containers.
    pub share_process_namespace: bool,
    /// The pod's annotations (the policy's `io.katacontainers.config.agent.policy`, ...).
    pub annotations: Vec<(String, String)>,
    /// The containers' ports (`containerPort`, `hostPort` 0 unless set), TCP.
    pub ports: Vec<(i32, i32)>,
    /// The pod's hostname (`spec.hostname`, else its name; at most 63 characters).
    pub hostname: String,
    /// The pod's own labels (the kubelet adds `io.kubernetes.pod.*`).
    pub labels: Vec<(String, String)>,
    /// The pod's `securityContext` as the kubelet gives it to the sandbox.
    pub security: PodSecurity,
}

/// A pod's `securityContext`, as the kubelet passes it to the sandbox (and, for the groups,
/// to every container).
#[derive(Debug, Clone, Default)]
pub struct PodSecurity {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// `supplementalGroups`, then `fsGroup` (the kubelet adds it to every container's groups).
    pub supplemental_groups: Vec<i64>,
    /// `securityContext.sysctls`.
    pub sysctls: Vec<(String, String)>,
    /// A container of the pod is privileged (the sandbox is then privileged too).
    pub privileged: bool,
}

impl PodSpec {
    /// A pod in namespace `default` with no limits; its log directory is
    /// `<log_root>/default_<name>_<uid>` (created).
    pub fn new(name: &str, uid: &str, log_root: &Path) -> PodSpec {
        let log_directory = log_root.join(format!("default_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)
            .unwrap_or_else(|e| panic!("{}: {e}", log_directory.display()));
        Self::new_in(name, uid, log_directory)
    }

    /// A pod in namespace `default` with no limits, logging to `log_directory` (not created).
    pub fn new_in(name: &str, uid: &str, log_directory: PathBuf) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: uid.to_string(),
            log_directory,
            memory_limit: 0,
            cpu_quota: 0,
            cpu_period: 100_000,
            share_process_namespace: false,
            annotations: Vec::new(),
            ports: Vec::new(),
            hostname: name.chars().take(63).collect(),
            labels: Vec::new(),
            security: PodSecurity::default(),
        }
    }

    /// The pod's limits as the kubelet sums its containers' (`PodRequestsAndLimits`).
    pub fn with_limits_of(mut self, containers: &[&ContainerSpec]) -> PodSpec {
        self.memory_limit = containers.iter().map(|c| c.memory_limit).sum();
        self.cpu_period = 100_000;
        self.cpu_quota = containers
            .iter()
            .map(|c| {
                if c.cpu_period > 0 {
                    c.cpu_quota * 100_000 / c.cpu_period
                } else {
                    0
                }
            })
            .sum();
        self
    }

    fn pid_mode(&self) -> i32 {
        if self.share_process_namespace {
            api::NamespaceMode::Pod as i32
        } else {
            api::NamespaceMode::Container as i32
        }
    }
}

/// The PodSandboxConfig a kubelet sends for a pod (`generatePodSandboxConfig` and
/// `applySandboxResources`): metadata, hostname, log dir, DNS, port mappings, the Kubernetes
/// labels, annotations, cgroup parent, namespace options (network POD, pid CONTAINER or POD,
/// ipc POD) and the pod's resources.
pub fn pod_sandbox_config(p: &PodSpec) -> api::PodSandboxConfig {
    let mut labels: HashMap<String, String> = p.labels.iter().cloned().collect();
    labels.extend([
        ("io.kubernetes.pod.name".to_string(), p.name.clone()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            p.namespace.clone(),
        ),
        ("io.kubernetes.pod.uid".to_string(), p.uid.clone()),
    ]);
    let mut annotations =
        HashMap::from([("kubernetes.io/config.source".to_string(), "api".to_string())]);
    annotations.extend(p.annotations.iter().cloned());
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
            name: p.name.clone(),
            uid: p.uid.clone(),
            namespace: p.namespace.clone(),
            attempt: 0,
        }),
        hostname: p.hostname.clone(),
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
        port_mappings: p
            .ports
            .iter()
            .map(|(container_port, host_port)| api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: *container_port,
                host_port: *host_port,
                host_ip: String::new(),
            })
            .collect(),
        labels,
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/burstable/pod{}", p.uid),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: p.pid_mode(),
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Unconfined as i32,
                    ..Default::default()
                }),
                run_as_user: p
                    .security
                    .run_as_user
                    .map(|value| api::Int64Value { value }),
                run_as_group: p
                    .security
                    .run_as_group
                    .map(|value| api::Int64Value { value }),
                supplemental_groups: p.security.supplemental_groups.clone(),
                privileged: p.security.privileged,
                ..Default::default()
            }),
            sysctls: p.security.sysctls.iter().cloned().collect(),
            resources: Some(resources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the tests choose of a container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// The image as pulled (the reference or the image id).
    pub image: String,
    /// The image as the pod spec names it (CRI's `user_specified_image`; empty: `image`).
    pub user_image: String,
    /// CRI `command` (replaces the image's entrypoint when not empty).
    pub command: Vec<String>,
    /// CRI `args` (replace the image's Cmd when not empty).
    pub args: Vec<String>,
    /// `workingDir` (empty: the image's).
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    /// Relative to the pod's log directory (kubelet: <name>/<restart count>.log).
    pub log_path: String,
    pub memory_limit: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// The volume mounts, in the kubelet's order (volumes, then /etc/hosts, then the
    /// termination-log file): see [`mount`].
    pub mounts: Vec<api::Mount>,
    /// `stdin: true` and `tty: true` of the pod spec (`kubectl run -it`), for CRI Attach.
    pub stdin: bool,
    pub tty: bool,
    /// `terminationMessagePath` and `terminationMessagePolicy` (the kubelet's annotations).
    pub termination_message_path: String,
    pub termination_message_policy: String,
    /// The container's effective security context (pod's and container's merged).
    pub security: ContainerSecurity,
}

/// A container's security context as the kubelet sends it (`determineEffectiveSecurityContext`).
#[derive(Debug, Clone)]
pub struct ContainerSecurity {
    /// `runAsUser`, else the image's numeric user (the kubelet reads it with ImageStatus);
    /// None: not given (containerd takes the image's).
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// The image's user by name, when it is not numeric and `runAsUser` is not given.
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// `allowPrivilegeEscalation: false` (and not privileged).
    pub no_new_privs: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub supplemental_groups: Vec<i64>,
    /// The kubelet's default masked and read-only /proc and /sys paths (none when
    /// privileged).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

/// The kubelet's masked paths for a container with the default proc mount
/// (`securitycontext.ConvertToRuntimeMaskedPaths`).
pub const DEFAULT_MASKED_PATHS: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The kubelet's read-only paths for a container with the default proc mount.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

impl Default for ContainerSecurity {
    fn default() -> Self {
        ContainerSecurity {
            run_as_user: None,
            run_as_group: None,
            run_as_username: String::new(),
            readonly_rootfs: false,
            privileged: false,
            no_new_privs: false,
            add_capabilities: Vec::new(),
            drop_capabilities: Vec::new(),
            supplemental_groups: Vec::new(),
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// The service-link variables of the cluster's `kubernetes` service (ClusterIP 10.96.0.1, port
/// 443 named `https`), which the kubelet gives every container whatever `enableServiceLinks`
/// says (`getServiceEnvVarMap`: the master service of the default namespace).
pub const KUBERNETES_SERVICE_ENV: [(&str, &str); 8] = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ("KUBERNETES_PORT_443_TCP_PORT", "443"),
    ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
];

impl ContainerSpec {
    /// A container of `image` running `command`, logging to `<name>/0.log`, without limits.
    pub fn new(name: &str, image: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            user_image: String::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            working_dir: String::new(),
            envs: Vec::new(),
            log_path: format!("{name}/0.log"),
            memory_limit: 0,
            cpu_quota: 0,
            cpu_period: 100_000,
            mounts: Vec::new(),
            stdin: false,
            tty: false,
            termination_message_path: "/dev/termination-log".to_string(),
            termination_message_policy: "File".to_string(),
            security: ContainerSecurity::default(),
        }
    }

    /// Memory limit (bytes) and CPU limit (millicores, as `resources.limits.cpu`).
    pub fn limits(mut self, memory: i64, millicpus: i64) -> ContainerSpec {
        self.memory_limit = memory;
        self.cpu_period = 100_000;
        self.cpu_quota = millicpus * 100;
        self
    }
}

/// A ContainerConfig mount as the kubelet makes one (`makeMounts`): private propagation, no
/// SELinux relabel.
pub fn mount(container_path: &str, host_path: &Path, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: container_path.to_string(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        selinux_relabel: false,
        propagation: api::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

/// The ContainerConfig a kubelet sends (`generateContainerConfig`): the container's env
/// first, then the `kubernetes` service's variables it does not set itself.
pub fn container_config(c: &ContainerSpec, pod: &PodSpec) -> api::ContainerConfig {
    let labels = HashMap::from([
        ("io.kubernetes.container.name".to_string(), c.name.clone()),
        ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            pod.namespace.clone(),
        ),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
    ]);
    let annotations = HashMap::from([
        (
            "io.kubernetes.container.restartCount".to_string(),
            "0".to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            c.termination_message_path.clone(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".to_string(),
            c.termination_message_policy.clone(),
        ),
    ]);
    let mut envs: Vec<api::KeyValue> = c
        .envs
        .iter()
        .map(|(k, v)| api::KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    for (k, v) in KUBERNETES_SERVICE_ENV {
        if !c.envs.iter().any(|(name, _)| name == k) {
            envs.push(api::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
    }
    let sec = &c.security;
    let capabilities = (!sec.add_capabilities.is_empty() || !sec.drop_capabilities.is_empty())
        .then(|| api::Capability {
            add_capabilities: sec.add_capabilities.clone(),
            drop_capabilities: sec.drop_capabilities.clone(),
            ..Default::default()
        });
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: c.image.clone(),
            user_specified_image: c.user_image.clone(),
            ..Default::default()
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs,
        mounts: c.mounts.clone(),
        stdin: c.stdin,
        tty: c.tty,
        labels,
        annotations,
        log_path: c.log_path.clone(),
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
                capabilities,
                privileged: sec.privileged,
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: pod.pid_mode(),
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                run_as_user: sec.run_as_user.map(|value| api::Int64Value { value }),
                run_as_group: sec.run_as_group.map(|value| api::Int64Value { value }),
                run_as_username: sec.run_as_username.clone(),
                readonly_rootfs: sec.readonly_rootfs,
                supplemental_groups: sec.supplemental_groups.clone(),
                no_new_privs: sec.no_new_privs,
                seccomp: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Unconfined as i32,
                    ..Default::default()
                }),
                masked_paths: sec.masked_paths.clone(),
                readonly_paths: sec.readonly_paths.clone(),
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
        let root = tempfile::tempdir().unwrap();
        let mut pod = PodSpec::new("p", "u", root.path());
        pod.memory_limit = 256 << 20;
        pod.cpu_quota = 50000;
        pod.annotations.push((
            "io.katacontainers.config.agent.policy".into(),
            "cG9s".into(),
        ));
        pod.ports.push((8080, 0));
        let c = pod_sandbox_config(&pod);
        assert_eq!(
            c.log_directory,
            root.path().join("default_p_u").to_string_lossy()
        );
        assert!(root.path().join("default_p_u").is_dir());
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
        assert_eq!(
            c.annotations["io.katacontainers.config.agent.policy"],
            "cG9s"
        );
        assert_eq!(c.port_mappings[0].container_port, 8080);
    }

    #[test]
    fn container_config_as_the_kubelet() {
        let root = tempfile::tempdir().unwrap();
        let pod = PodSpec::new("p", "u", root.path());
        let mut c = ContainerSpec::new("c", "sha256:img", &["sh", "-c"]);
        c.args = vec!["echo hi".into()];
        c.envs = vec![("KUBERNETES_SERVICE_PORT".into(), "8443".into())];
        let cc = container_config(&c, &pod);
        assert_eq!((cc.command.len(), cc.args.len()), (2, 1));
        // The kubernetes service's variables, the pod's own value winning.
        assert_eq!(cc.envs.len(), KUBERNETES_SERVICE_ENV.len());
        let env = |k: &str| {
            cc.envs
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
                .unwrap_or("")
        };
        assert_eq!(env("KUBERNETES_SERVICE_PORT"), "8443");
        assert_eq!(env("KUBERNETES_PORT_443_TCP_ADDR"), "10.96.0.1");
        let sc = cc.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.masked_paths.len(), DEFAULT_MASKED_PATHS.len());
        assert_eq!(sc.readonly_paths, DEFAULT_READONLY_PATHS);
        assert!(sc.run_as_user.is_none() && sc.capabilities.is_none());
        assert_eq!(
            cc.annotations["io.kubernetes.container.terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn shared_pid_and_limits() {
        let root = tempfile::tempdir().unwrap();
        let a = ContainerSpec::new("a", "img", &["sh"]).limits(128 << 20, 500);
        let b = ContainerSpec::new("b", "img", &["sh"]).limits(64 << 20, 250);
        let mut pod = PodSpec::new("p", "u", root.path()).with_limits_of(&[&a, &b]);
        pod.share_process_namespace = true;
        assert_eq!((pod.memory_limit, pod.cpu_quota), (192 << 20, 75000));
        let sc = pod_sandbox_config(&pod);
        let pid = |o: Option<api::NamespaceOption>| o.expect("namespace options").pid;
        let want = api::NamespaceMode::Pod as i32;
        assert_eq!(
            pid(sc
                .linux
                .and_then(|l| l.security_context)
                .and_then(|s| s.namespace_options)),
            want
        );
        let mut a = a;
        a.mounts.push(mount("/etc/config", Path::new("/x"), true));
        let cc = container_config(&a, &pod);
        let linux = cc.linux.expect("linux");
        assert_eq!(
            pid(linux.security_context.and_then(|s| s.namespace_options)),
            want
        );
        assert_eq!(linux.resources.expect("resources").cpu_quota, 50000);
        assert_eq!(
            cc.mounts[0].propagation,
            api::MountPropagation::PropagationPrivate as i32
        );
        assert!(cc.mounts[0].readonly);
    }
}
