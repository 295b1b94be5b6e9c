//! `Node`: one Kubernetes node as the CRI tests (and the demo) see it: a loopback registry
//! holding the busybox and pause images, a private containerd with CRI on (runtime handler
//! `kata-cc`), the kubelet's own root dir (`<containerd dir>/kubelet`, with `pods/<uid>/...`
//! as [`crate::podfs`] lays it out, and the pods' log dirs), and the kubelet's CRI calls, each
//! with a deadline, panicking with containerd's log tail when a call fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checks::Checks;
use crate::cri::{self, api, ContainerSpec, Cri, PodSpec, HANDLER};
use crate::leak::CriNetwork;
use crate::podfs::PodDir;
use crate::registry::{Pushed, Registry};
use crate::stream::Session;
use crate::{paths, procs, Containerd, CriSetup, Options, TestImage};

/// The repository and tag the busybox test image is pushed under.
pub const BUSYBOX_REPO: &str = "kata-cc-e2e/busybox";
/// The pause image's name in the registry (`sandbox_image` is `<registry>/<this>`).
pub const PAUSE_REPO: &str = "kata-cc/pause";

pub struct Node {
    // Field order is drop order: the CRI connection before containerd, the registry last.
    pub cri: Cri,
    pub cd: Containerd,
    pub reg: Registry,
    pub busybox: Pushed,
    pub pause: Pushed,
    /// The kubelet's root dir: `pods/<uid>/...`.
    pub root: PathBuf,
    /// Where the pods' log directories go (the kubelet's /var/log/pods).
    pub log_root: PathBuf,
}

/// A running pod sandbox.
pub struct Pod {
    pub id: String,
    /// The runtime handler it runs with (`kata-cc`, or `runc` for baselines).
    pub handler: String,
    pub spec: PodSpec,
    pub config: api::PodSandboxConfig,
    /// The kubelet's dir of this pod (volumes, etc-hosts, termination logs).
    pub dir: PodDir,
    /// The pod IP CNI gave it.
    pub ip: String,
    /// `<pod dir>/etc-hosts`, written once the IP is known (as the kubelet does).
    pub etc_hosts: PathBuf,
}

impl Pod {
    /// The mounts the kubelet adds after a container's volume mounts: /etc/hosts and the
    /// termination-log file (`containers/<name>/<random>` at /dev/termination-log).
    pub fn kubelet_mounts(&self, container: &str) -> Vec<api::Mount> {
        vec![
            cri::mount("/etc/hosts", &self.etc_hosts, false),
            cri::mount(
                "/dev/termination-log",
                &self.dir.termination_log(container),
                false,
            ),
        ]
    }

    /// The CRI log file of a container (`<log_directory>/<log_path>`).
    pub fn log_file(&self, c: &ContainerSpec) -> PathBuf {
        self.spec.log_directory.join(&c.log_path)
    }
}

/// What ExecSync gave.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl ExecOutput {
    /// Stdout with the trailing newline removed.
    pub fn out(&self) -> &str {
        self.stdout.trim_end_matches('\n')
    }
}

impl Node {
    /// A node for the test `test`: registry, images pushed, containerd with CRI, busybox pulled.
    pub fn start(test: &str) -> Node {
        let reg = Registry::start_for_test();
        Self::start_with_registry(reg, true, |opts| Containerd::start_with(test, opts))
    }

    /// A node whose pods run with the `runc` handler only (the harness's own tests): kata-cc's
    /// build products are not needed.
    pub fn start_runc_only(test: &str) -> Node {
        let reg = Registry::start_for_test();
        Self::start_with_registry(reg, false, |opts| Containerd::start_with(test, opts))
    }

    /// A node in `dir` (the demo's), its registry in `dir/registry`.
    pub fn start_in(dir: &Path) -> Node {
        let reg = Registry::start(&dir.join("registry"));
        Self::start_with_registry(reg, true, |opts| {
            Containerd::start_in(&dir.join("containerd"), "demo", opts)
        })
    }

    fn start_with_registry(
        reg: Registry,
        kata: bool,
        start: impl FnOnce(Options) -> Containerd,
    ) -> Node {
        let busybox = reg.push(&TestImage::busybox(), BUSYBOX_REPO, "gzip");
        let pause = reg.push(&TestImage::pause(), PAUSE_REPO, "3.6");
        let cd = start(Options {
            images: Vec::new(),
            kata,
            cri: Some(CriSetup {
                sandbox_image: pause.reference.clone(),
                plain_http_registry: Some(reg.addr.clone()),
            }),
        });
        let cri = cd.cri();
        let root = cd.dir.join("kubelet");
        let log_root = root.join("logs");
        for d in [&root, &log_root] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        let node = Node {
            cri,
            cd,
            reg,
            busybox,
            pause,
            root,
            log_root,
        };
        let pulled = node.pull(&node.busybox.reference);
        assert_eq!(pulled, node.busybox.config_digest, "pulled image id");
        node
    }

    /// Ends the test: the CRI connection closed, the leak check of containerd (nothing of any
    /// pod left), containerd stopped, the registry stopped.
    pub fn finish(self) {
        let Node { cri, cd, reg, .. } = self;
        drop(cri);
        cd.finish();
        drop(reg);
    }

    /// Ends a test that ran `checks` on its pods: as [`Node::finish`] (the leak check first),
    /// containerd's log kept beside the test dirs when a check failed, then the failed checks
    /// reported.
    pub fn finish_with(self, checks: Checks) {
        if !checks.ok() {
            let log = self.cd.dir.join("containerd.log");
            let kept = paths::e2e_dir().join(format!(
                "{}-containerd.log",
                self.cd
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            match std::fs::copy(&log, &kept) {
                Ok(_) => eprintln!(
                    "containerd's log (shim logs included) kept in {}",
                    kept.display()
                ),
                Err(e) => eprintln!("could not keep {}: {e}", log.display()),
            }
        }
        self.finish();
        checks.finish();
    }

    fn fail(&self, what: &str, e: &tonic::Status) -> ! {
        panic!("{what}: {e}\n{}", self.cd.log_tail())
    }

    /// CRI PullImage; the image id.
    pub fn pull(&self, image: &str) -> String {
        let mut img = self.cri.images();
        self.cri
            .call(
                "PullImage",
                paths::run_timeout(),
                img.pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("PullImage {image}"), &e))
            .image_ref
    }

    /// CRI ImageStatus: the image's id and user as CRI reports them (what the kubelet reads
    /// before it builds a container's security context); None when CRI has no such image.
    pub fn image_status(&self, image: &str) -> Option<crate::kube::ImageUser> {
        let mut img = self.cri.images();
        let r = self
            .cri
            .call(
                "ImageStatus",
                paths::ctr_timeout(),
                img.image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("ImageStatus {image}"), &e));
        r.image.map(|i| crate::kube::ImageUser {
            id: i.id,
            uid: i.uid.map(|u| u.value),
            username: i.username,
        })
    }

    /// RunPodSandbox as the kubelet calls it, then its IP from PodSandboxStatus and the
    /// kubelet's etc-hosts. Panics unless the pod is READY.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod {
        self.run_pod_with(spec, HANDLER)
    }

    /// [`Node::run_pod`] with another runtime handler (`runc` for a baseline pod).
    pub fn run_pod_with(&self, spec: &PodSpec, handler: &str) -> Pod {
        let id = self
            .try_run_pod_with(spec, handler)
            .unwrap_or_else(|e| self.fail("RunPodSandbox", &e));
        self.ready_pod(spec, handler, id)
    }

    /// What the kubelet does once RunPodSandbox gave sandbox `id`: PodSandboxStatus (READY, or a
    /// panic) for the pod IP, the pod's dir and its etc-hosts.
    pub fn ready_pod(&self, spec: &PodSpec, handler: &str, id: String) -> Pod {
        let status = self.sandbox_status(&id);
        assert_eq!(
            status.state,
            api::PodSandboxState::SandboxReady as i32,
            "pod {} not ready: {status:?}",
            spec.name
        );
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        let dir = PodDir::create(&self.root, &spec.uid);
        let etc_hosts = dir.etc_hosts(&spec.name, &ip);
        Pod {
            id,
            handler: handler.to_string(),
            spec: spec.clone(),
            config: cri::pod_sandbox_config(spec),
            dir,
            ip,
            etc_hosts,
        }
    }

    /// RunPodSandbox; the sandbox id (remembered for the leak check).
    pub fn try_run_pod(&self, spec: &PodSpec) -> Result<String, tonic::Status> {
        self.try_run_pod_with(spec, HANDLER)
    }

    pub fn try_run_pod_with(&self, spec: &PodSpec, handler: &str) -> Result<String, tonic::Status> {
        let mut rt = self.cri.runtime();
        let id = self
            .cri
            .call(
                "RunPodSandbox",
                paths::run_timeout(),
                rt.run_pod_sandbox(api::RunPodSandboxRequest {
                    config: Some(cri::pod_sandbox_config(spec)),
                    runtime_handler: handler.to_string(),
                }),
            )?
            .pod_sandbox_id;
        self.cd.track(&id);
        Ok(id)
    }

    /// CreateContainer + StartContainer; the container id.
    pub fn run_container(&self, pod: &Pod, c: &ContainerSpec) -> String {
        let cid = self.create_container(pod, c);
        self.start_container(&cid);
        cid
    }

    pub fn create_container(&self, pod: &Pod, c: &ContainerSpec) -> String {
        self.try_create_container(pod, c)
            .unwrap_or_else(|e| self.fail(&format!("CreateContainer {}", c.name), &e))
    }

    /// CreateContainer; the container id, or CRI's error (e.g. a policy's refusal).
    pub fn try_create_container(
        &self,
        pod: &Pod,
        c: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let mut rt = self.cri.runtime();
        let cid = self
            .cri
            .call(
                "CreateContainer",
                paths::ctr_timeout(),
                rt.create_container(api::CreateContainerRequest {
                    pod_sandbox_id: pod.id.clone(),
                    config: Some(cri::container_config(c, &pod.spec)),
                    sandbox_config: Some(pod.config.clone()),
                }),
            )?
            .container_id;
        self.cd.track(&cid);
        Ok(cid)
    }

    /// RemoveContainer (after StopContainer, as the kubelet's container GC does).
    pub fn remove_container(&self, cid: &str) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "RemoveContainer",
                paths::run_timeout(),
                rt.remove_container(api::RemoveContainerRequest {
                    container_id: cid.to_string(),
                }),
            )
            .map(|_| ())
    }

    /// StopContainer with the kubelet's grace period (seconds before SIGKILL).
    pub fn stop_container(&self, cid: &str, grace_secs: i64) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "StopContainer",
                paths::run_timeout(),
                rt.stop_container(api::StopContainerRequest {
                    container_id: cid.to_string(),
                    timeout: grace_secs,
                }),
            )
            .map(|_| ())
    }

    pub fn start_container(&self, cid: &str) {
        self.try_start_container(cid)
            .unwrap_or_else(|e| self.fail(&format!("StartContainer {cid}"), &e));
    }

    /// StartContainer: containerd creates the task then (the shim's Create, the agent's
    /// CreateContainer), so a policy's refusal of the container is StartContainer's error.
    pub fn try_start_container(&self, cid: &str) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "StartContainer",
                paths::run_timeout(),
                rt.start_container(api::StartContainerRequest {
                    container_id: cid.to_string(),
                }),
            )
            .map(|_| ())
    }

    /// ExecSync (no CRI timeout; the call's deadline is KATA_CC_E2E_CTR_TIMEOUT); panics if the
    /// call itself fails (a non-zero exit is an answer, not a failure).
    pub fn exec(&self, cid: &str, cmd: &[&str]) -> ExecOutput {
        self.try_exec(cid, cmd)
            .unwrap_or_else(|e| self.fail(&format!("ExecSync {cmd:?} in {cid}"), &e))
    }

    pub fn try_exec(&self, cid: &str, cmd: &[&str]) -> Result<ExecOutput, tonic::Status> {
        self.try_exec_within(cid, cmd, paths::ctr_timeout())
    }

    /// An exec probe as the kubelet runs one: ExecSync with the probe's `timeoutSeconds`.
    pub fn probe(
        &self,
        cid: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecOutput, tonic::Status> {
        let mut rt = self.cri.runtime();
        let r = self.cri.call(
            "ExecSync (probe)",
            paths::ctr_timeout(),
            rt.exec_sync(api::ExecSyncRequest {
                container_id: cid.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_secs,
            }),
        )?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            exit_code: r.exit_code,
        })
    }

    /// ExecSync with the call's own deadline.
    pub fn try_exec_within(
        &self,
        cid: &str,
        cmd: &[&str],
        deadline: Duration,
    ) -> Result<ExecOutput, tonic::Status> {
        let mut rt = self.cri.runtime();
        let r = self.cri.call(
            "ExecSync",
            deadline,
            rt.exec_sync(api::ExecSyncRequest {
                container_id: cid.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 0,
            }),
        )?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            exit_code: r.exit_code,
        })
    }

    /// `sh -c script` with ExecSync, panicking unless it exits 0; its stdout, trimmed.
    pub fn sh(&self, cid: &str, script: &str) -> String {
        let o = self.exec(cid, &["sh", "-c", script]);
        assert_eq!(
            o.exit_code, 0,
            "exec `{script}` in {cid}: exit {}\nstdout: {}\nstderr: {}",
            o.exit_code, o.stdout, o.stderr
        );
        o.out().to_string()
    }

    /// CRI Exec: the streaming URL, then the WebSocket session on it.
    pub fn exec_stream(&self, cid: &str, cmd: &[&str], tty: bool, stdin: bool) -> Session {
        let mut rt = self.cri.runtime();
        let url = self
            .cri
            .call(
                "Exec",
                paths::ctr_timeout(),
                rt.exec(api::ExecRequest {
                    container_id: cid.to_string(),
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    tty,
                    stdin,
                    stdout: true,
                    // The kubelet never asks for stderr with a TTY (it is the terminal).
                    stderr: !tty,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("Exec {cmd:?} in {cid}"), &e))
            .url;
        Session::connect(&url, paths::ctr_timeout())
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {cid}: {e}\n{}", self.cd.log_tail()))
    }

    /// CRI Attach to a container's init (`kubectl attach`, `kubectl run -it`): the streaming
    /// URL, then the WebSocket session on it.
    pub fn attach(&self, cid: &str, tty: bool) -> Session {
        let mut rt = self.cri.runtime();
        let url = self
            .cri
            .call(
                "Attach",
                paths::ctr_timeout(),
                rt.attach(api::AttachRequest {
                    container_id: cid.to_string(),
                    stdin: true,
                    tty,
                    stdout: true,
                    stderr: !tty,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("Attach {cid}"), &e))
            .url;
        Session::connect(&url, paths::ctr_timeout())
            .unwrap_or_else(|e| panic!("attach {cid}: {e}\n{}", self.cd.log_tail()))
    }

    pub fn container_status(&self, cid: &str) -> api::ContainerStatus {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "ContainerStatus",
                paths::ctr_timeout(),
                rt.container_status(api::ContainerStatusRequest {
                    container_id: cid.to_string(),
                    verbose: false,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("ContainerStatus {cid}"), &e))
            .status
            .unwrap_or_else(|| panic!("ContainerStatus {cid}: no status"))
    }

    /// Polls ContainerStatus (as the kubelet does) until the container has exited.
    pub fn wait_exited(&self, cid: &str, timeout: Duration) -> api::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(cid);
            if st.state == api::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {cid} still in state {} after {}s\n{}",
                st.state,
                timeout.as_secs(),
                self.cd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn sandbox_status(&self, id: &str) -> api::PodSandboxStatus {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "PodSandboxStatus",
                paths::ctr_timeout(),
                rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_string(),
                    verbose: false,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("PodSandboxStatus {id}"), &e))
            .status
            .unwrap_or_else(|| panic!("PodSandboxStatus {id}: no status"))
    }

    /// PodSandboxStatus' verbose `info` (containerd's sandbox info as JSON: `runtimeSpec`,
    /// `cniResult`, ...).
    pub fn sandbox_info(&self, id: &str) -> serde_json::Value {
        let mut rt = self.cri.runtime();
        let r = self
            .cri
            .call(
                "PodSandboxStatus (verbose)",
                paths::ctr_timeout(),
                rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_string(),
                    verbose: true,
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("PodSandboxStatus {id}"), &e));
        let info = r
            .info
            .get("info")
            .unwrap_or_else(|| panic!("PodSandboxStatus {id}: no verbose info: {:?}", r.info));
        serde_json::from_str(info)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: info is not JSON ({e}): {info}"))
    }

    /// The pod's network namespace on the host: the network namespace path of its sandbox's
    /// runtime spec (a bind mount under containerd's state dir).
    pub fn netns_path(&self, pod: &Pod) -> PathBuf {
        let info = self.sandbox_info(&pod.id);
        let path = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
            })
            .unwrap_or_else(|| {
                panic!(
                    "pod {}: no network namespace path in the sandbox's runtime spec: {}",
                    pod.spec.name, info["runtimeSpec"]["linux"]["namespaces"]
                )
            });
        PathBuf::from(path)
    }

    /// The node's CNI network (bridge, subnet, gateway).
    pub fn network(&self) -> &CriNetwork {
        self.cd.cri_network()
    }

    pub fn container_stats(&self, cid: &str) -> api::ContainerStats {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "ContainerStats",
                paths::ctr_timeout(),
                rt.container_stats(api::ContainerStatsRequest {
                    container_id: cid.to_string(),
                }),
            )
            .unwrap_or_else(|e| self.fail(&format!("ContainerStats {cid}"), &e))
            .stats
            .unwrap_or_else(|| panic!("ContainerStats {cid}: no stats"))
    }

    /// UpdateContainerResources with the container's whole resources, as the kubelet sends
    /// them (in-place resize, CPU manager).
    pub fn update_resources(
        &self,
        cid: &str,
        resources: api::LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "UpdateContainerResources",
                paths::ctr_timeout(),
                rt.update_container_resources(api::UpdateContainerResourcesRequest {
                    container_id: cid.to_string(),
                    linux: Some(resources),
                    ..Default::default()
                }),
            )
            .map(|_| ())
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "StopPodSandbox",
                paths::run_timeout(),
                rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                }),
            )
            .map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "RemovePodSandbox",
                paths::run_timeout(),
                rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                }),
            )
            .map(|_| ())
    }

    pub fn list_pods(&self) -> Vec<api::PodSandbox> {
        let mut rt = self.cri.runtime();
        self.cri
            .call(
                "ListPodSandbox",
                paths::ctr_timeout(),
                rt.list_pod_sandbox(api::ListPodSandboxRequest::default()),
            )
            .unwrap_or_else(|e| self.fail("ListPodSandbox", &e))
            .items
    }

    /// The kubelet's teardown of a pod: StopPodSandbox (its containers, the pause, CNI DEL,
    /// the netns), RemovePodSandbox; then CRI no longer lists it and `qemu_pid` (when given) has
    /// ended within the leak grace.
    pub fn teardown(&self, pod: &Pod, qemu_pid: Option<i32>) {
        self.stop_pod(&pod.id)
            .unwrap_or_else(|e| self.fail(&format!("StopPodSandbox {}", pod.spec.name), &e));
        self.remove_pod(&pod.id)
            .unwrap_or_else(|e| self.fail(&format!("RemovePodSandbox {}", pod.spec.name), &e));
        let left = self.list_pods();
        assert!(
            !left.iter().any(|p| p.id == pod.id),
            "pod {} still listed after RemovePodSandbox: {left:?}",
            pod.spec.name
        );
        remove_pod_cgroups(&pod.spec.uid);
        if let Some(pid) = qemu_pid {
            let deadline = Instant::now() + paths::leak_grace();
            while procs::alive(pid) {
                assert!(
                    Instant::now() < deadline,
                    "QEMU {pid} of pod {} still alive {}s after RemovePodSandbox",
                    pod.spec.name,
                    paths::leak_grace().as_secs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The QEMU process of a pod.
    pub fn qemu_of(&self, pod: &Pod) -> procs::Proc {
        self.cd.qemu_of(&pod.id)
    }

    /// Every QEMU process under this node's shims.
    pub fn qemus(&self) -> Vec<procs::Proc> {
        let all = procs::all();
        let shims = self.cd.shims().iter().map(|p| p.pid).collect();
        let under = procs::with_descendants(&all, &shims);
        all.into_iter()
            .filter(|p| under.contains(&p.pid) && p.argv0.contains("qemu-system"))
            .collect()
    }

    /// The kubelet's dir of pod `uid` (created; the volumes go there before RunPodSandbox, as
    /// the kubelet mounts volumes before it creates the sandbox).
    pub fn pod_dir(&self, uid: &str) -> PodDir {
        PodDir::create(&self.root, uid)
    }

    /// CRI's own per-sandbox files (`<cri root>/sandboxes/<id>/{hostname,resolv.conf,hosts}`),
    /// which CRI bind-mounts into every container of the pod.
    pub fn cri_sandbox_file(&self, pod: &Pod, name: &str) -> PathBuf {
        self.cd
            .dir
            .join("root/io.containerd.grpc.v1.cri/sandboxes")
            .join(&pod.id)
            .join(name)
    }
}

/// The kubelet removes a pod's cgroup (`<cgroup_parent>` of its PodSandboxConfig:
/// `kubepods/burstable/pod<uid>`) once the pod is gone; runc creates it on the host (kata-cc's
/// pods have theirs in the VM). Each hierarchy's (cgroup v1) or the unified one's, if empty.
pub fn remove_pod_cgroups(uid: &str) {
    let rel = format!("kubepods/burstable/pod{uid}");
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&rel)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join(&rel)));
    }
    for d in dirs {
        // rmdir of a cgroup fails while it has processes or children: then it is not ours to end.
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// A shell script printing the memory.max of the cgroup it runs in (an exec joins its
/// container's cgroup): through /proc/self/cgroup, so it works whether or not the container
/// has its own cgroup namespace.
pub const MEMORY_MAX_SCRIPT: &str = "p=$(sed -n 's/^0:://p' /proc/self/cgroup); \
    for f in \"/sys/fs/cgroup$p/memory.max\" /sys/fs/cgroup/memory.max; do \
    if [ -f \"$f\" ]; then cat \"$f\"; exit 0; fi; done; \
    echo \"no memory.max for cgroup $p\" >&2; exit 1";

/// One complete line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream: String,
    pub text: String,
}

/// The complete lines of a CRI log file (partial `P` records joined with what follows on the
/// same stream); an unfinished last line of a stream is left out.
pub fn log_lines(path: &Path) -> Vec<Line> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    // A record may be half-written while containerd writes: only whole lines are parsed.
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = Vec::new();
    let mut partial: std::collections::HashMap<String, String> = Default::default();
    for l in cri::parse_log(whole) {
        let cur = partial.entry(l.stream.clone()).or_default();
        cur.push_str(&l.text);
        if !l.partial {
            out.push(Line {
                stream: l.stream,
                text: std::mem::take(cur),
            });
        }
    }
    out
}

/// The texts of one stream's complete lines.
pub fn stream_lines(lines: &[Line], stream: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.text.clone())
        .collect()
}

/// Polls `f` every 200 ms until it gives `Ok`, or panics after `timeout` with `what` and the
/// last `Err` (a description of what was seen).
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {}s; last: {last}",
                    timeout.as_secs()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_join_partials_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "t stdout P hel\n\
             t stderr F err 1\n\
             t stdout F lo\n\
             t stdout F last\n\
             t stdout F half-writ",
        )
        .unwrap();
        let l = log_lines(&p);
        assert_eq!(stream_lines(&l, "stdout"), ["hello", "last"]);
        assert_eq!(stream_lines(&l, "stderr"), ["err 1"]);
        assert!(log_lines(&dir.path().join("none")).is_empty());
    }
}
