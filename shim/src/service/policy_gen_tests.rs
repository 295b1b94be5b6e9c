//! `kata-cc policy gen`'s policies against the requests the shim really sends: the real CRI
//! config.json files of `conformance_tests` (containerd 1.6's, of Kata's `pod-lifecycle` pod)
//! go through the shim's own code (shape, volumes, sandbox setup, image storage) and each
//! request is checked by the agent's engine with the policy generated for that pod's
//! manifest. The generated policy allows the pod's life and denies each change the issue
//! names with a message naming the field.

use agent_proto::agent::{
    CopyFileRequest, CreateContainerRequest, ExecProcessRequest, ReadStreamRequest,
    RemoveContainerRequest, StartContainerRequest, WaitProcessRequest, WriteStreamRequest,
};
use agent_proto::oci;
use kata_cc_policy::PolicyEngine;
use protobuf::{MessageDyn, MessageField};
use serde_json::{json, Value};

use super::conformance_tests::{
    kata_requests, nth, shape_for_guest, Host, APP_CONFIG, APP_ID, PAUSE_CONFIG, SANDBOX_ID,
};
use super::sandbox::{image_storage, layer_ref, SandboxSetup};
use super::shape::shape_exec;
use super::spec::{exec_process_to_agent, BundleSpec};
use super::volumes::tests::Recorder;
use super::volumes::DIR_MODE;
use crate::image::Layer;
use crate::policy_gen::images::{Accounts, ImageConfig, ImageFacts};
use crate::policy_gen::testing::MemorySource;
use crate::policy_gen::{generate, Options};

const PAUSE_IMAGE: &str = "mcr.microsoft.com/oss/kubernetes/pause:3.6";
const BUSYBOX: &str = "mcr.microsoft.com/aks/e2e/library-busybox:master.220314.1-linux-amd64";

/// The manifest of Kata's `pod-lifecycle` pod (its genpolicy data says what it had).
const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: pod-lifecycle
spec:
  containers:
  - name: busybox
    image: mcr.microsoft.com/aks/e2e/library-busybox:master.220314.1-linux-amd64
    command: ["/bin/sh", "-c", "while true; do echo $(POD_NAME); sleep 10; done"]
    securityContext:
      privileged: true
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: SERVICE_ACCOUNT
      valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
    - name: ISTIO_META_CLUSTER_ID
      value: Kubernetes
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: PROXY_CONFIG
      value: "{}\n"
    - name: ISTIO_META_POD_PORTS
      value: "[\n]"
    - name: ISTIO_META_APP_CONTAINERS
      value: serviceaclient
    - name: ISTIO_META_NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    lifecycle:
      postStart:
        exec:
          command: ["echo", "hello from postStart hook"]
"#;

fn source() -> MemorySource {
    let mut s = MemorySource::default();
    s.add(
        PAUSE_IMAGE,
        PAUSE_IMAGE,
        "pause",
        1,
        ImageConfig {
            user: "65535:65535".into(),
            env: vec![crate::policy_gen::model::DEFAULT_PATH.into()],
            entrypoint: vec!["/pause".into()],
            cmd: vec![],
            working_dir: "/".into(),
        },
        Accounts::default(),
    );
    s.add(
        BUSYBOX,
        BUSYBOX,
        "busybox",
        2,
        ImageConfig {
            user: String::new(),
            env: vec![crate::policy_gen::model::DEFAULT_PATH.into()],
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            working_dir: String::new(),
        },
        Accounts::default(),
    );
    s
}

fn generated(opts: Options) -> (String, MemorySource) {
    generated_from(MANIFEST, opts)
}

fn generated_from(manifest: &str, opts: Options) -> (String, MemorySource) {
    let src = source();
    let g = futures::executor::block_on(generate(
        "pod-lifecycle.yaml",
        manifest.to_string(),
        &[],
        &src,
        &Options {
            pause_image: PAUSE_IMAGE.into(),
            ..opts
        },
        false,
    ))
    .unwrap();
    assert!(
        g.warnings.iter().all(|w| w.contains("privileged")),
        "{:?}",
        g.warnings
    );
    (g.policies[0].rego.clone(), src)
}

fn layers_of(f: &ImageFacts) -> Vec<Layer> {
    f.layers
        .iter()
        .map(|l| Layer {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            media_type: l.media_type.clone(),
            size: l.size as i64,
        })
        .collect()
}

/// The agent's engine with a request log kept for messages.
struct Agent {
    engine: PolicyEngine,
}

impl Agent {
    fn check(&mut self, name: &str, m: &dyn MessageDyn) -> Result<(), String> {
        let input = kata_cc_policy::input::to_json(m);
        self.check_json(name, &input)
    }

    fn check_json(&mut self, name: &str, input: &Value) -> Result<(), String> {
        let d = self
            .engine
            .evaluate(name, input)
            .map_err(|e| e.to_string())?;
        if d.allowed {
            Ok(())
        } else {
            // Regorus puts the print's place first (`policy.rego:<line>: `).
            let m = d.denial_message(name);
            let re = regex::Regex::new(r"policy\.rego:[0-9]+: ").unwrap();
            Err(re.replace_all(&m, "").into_owned())
        }
    }

    fn allow(&mut self, name: &str, m: &dyn MessageDyn) {
        if let Err(e) = self.check(name, m) {
            panic!("{e}");
        }
    }

    fn deny(&mut self, name: &str, m: &dyn MessageDyn) -> String {
        match self.check(name, m) {
            Ok(()) => panic!("{name} allowed: {}", kata_cc_policy::input::to_json(m)),
            Err(e) => e,
        }
    }
}

/// The layer copies and the CreateContainerRequest of a container, as the shim builds them.
fn layer_copies(cid: &str, layers: &[Layer]) -> Vec<CopyFileRequest> {
    layers
        .iter()
        .map(|l| CopyFileRequest {
            path: layer_ref(l).blob_path(cid),
            file_size: l.size,
            file_mode: libc::S_IFREG | 0o644,
            dir_mode: DIR_MODE,
            data: vec![0; 16],
            ..Default::default()
        })
        .collect()
}

fn create(
    cid: &str,
    spec: oci::Spec,
    pidns: bool,
    image: &str,
    layers: &[Layer],
) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: cid.to_string(),
        exec_id: cid.to_string(),
        storages: vec![image_storage(cid, image, layers)],
        OCI: MessageField::some(spec),
        sandbox_pidns: pidns,
        ..Default::default()
    }
}

/// A pod started through the shim's code: CreateSandbox, the pause's copies and creation,
/// the app's copies; returns the agent, the app's CreateContainerRequest (not yet sent) and
/// the app's config.json.
struct Started {
    agent: Agent,
    app: CreateContainerRequest,
    app_config: String,
    busybox: ImageFacts,
    _host: Host,
}

async fn start(rego: &str, src: &MemorySource) -> Started {
    start_as(rego, src, "pod-lifecycle").await
}

/// As [`start`], the pod named `pod` (the configs' "pod-lifecycle" replaced).
async fn start_as(rego: &str, src: &MemorySource, pod: &str) -> Started {
    let mut agent = Agent {
        engine: PolicyEngine::new(rego).unwrap(),
    };
    let kata = kata_requests();
    let host = Host::new();
    let rec = Recorder::default();
    let empty_dirs = Default::default();
    let pause_caps =
        &nth(&kata, "CreateContainerRequest", 0)["OCI"]["Process"]["Capabilities"]["Bounding"];
    let pause_config = host
        .fill(PAUSE_CONFIG, pause_caps)
        .replace("pod-lifecycle", pod);
    let pause_spec = BundleSpec::parse(pause_config.as_bytes(), "config.json")
        .unwrap()
        .to_agent()
        .unwrap();
    let mut setup = SandboxSetup::from_spec(&pause_spec).unwrap();
    // CRI's shm is a 64 MiB tmpfs; here it is a temp dir.
    setup.shm_size = agent_proto::contract::DEFAULT_SHM_SIZE;
    agent.allow("CreateSandboxRequest", &setup.request(SANDBOX_ID));

    let pause_facts = src.images[PAUSE_IMAGE].0.clone();
    let (pause, pidns) = shape_for_guest(&pause_config, SANDBOX_ID, &rec, &empty_dirs).await;
    for c in rec.take() {
        agent.allow("CopyFileRequest", &c);
    }
    let pause_layers = layers_of(&pause_facts);
    for c in layer_copies(SANDBOX_ID, &pause_layers) {
        agent.allow("CopyFileRequest", &c);
    }
    agent.allow(
        "CreateContainerRequest",
        &create(SANDBOX_ID, pause, pidns, PAUSE_IMAGE, &pause_layers),
    );
    agent.allow(
        "StartContainerRequest",
        &StartContainerRequest {
            container_id: SANDBOX_ID.into(),
            ..Default::default()
        },
    );

    let app_caps =
        &nth(&kata, "CreateContainerRequest", 1)["OCI"]["Process"]["Capabilities"]["Bounding"];
    let app_config = host
        .fill(APP_CONFIG, app_caps)
        .replace("pod-lifecycle", pod);
    let (app, pidns) = shape_for_guest(&app_config, APP_ID, &rec, &empty_dirs).await;
    let copies = rec.take();
    assert_eq!(copies.len(), 13);
    for c in copies {
        agent.allow("CopyFileRequest", &c);
    }
    let busybox = src.images[BUSYBOX].0.clone();
    let layers = layers_of(&busybox);
    for c in layer_copies(APP_ID, &layers) {
        agent.allow("CopyFileRequest", &c);
    }
    Started {
        agent,
        app: create(APP_ID, app, pidns, BUSYBOX, &layers),
        app_config,
        busybox,
        _host: host,
    }
}

fn exec(config: &str, args: &[&str]) -> ExecProcessRequest {
    let pspec: Value = serde_json::from_str(config).unwrap();
    let mut process = pspec["process"].clone();
    process["args"] = json!(args);
    let mut p = exec_process_to_agent(process.to_string().as_bytes(), "exec").unwrap();
    shape_exec(&mut p);
    ExecProcessRequest {
        container_id: APP_ID.into(),
        exec_id: "e1".into(),
        process: MessageField::some(p),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_generated_policy_allows_the_pods_life_and_nothing_else() {
    let (rego, src) = generated(Options::default());
    let mut s = start(&rego, &src).await;
    let a = &mut s.agent;
    a.allow("CreateContainerRequest", &s.app);
    let id = |cid: &str| StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    a.allow("StartContainerRequest", &id(APP_ID));
    a.allow(
        "WaitProcessRequest",
        &WaitProcessRequest {
            container_id: APP_ID.into(),
            ..Default::default()
        },
    );
    // The hook's exec command; another command is refused, naming the container's.
    a.allow(
        "ExecProcessRequest",
        &exec(&s.app_config, &["echo", "hello from postStart hook"]),
    );
    let e = a.deny(
        "ExecProcessRequest",
        &exec(&s.app_config, &["cat", "/etc/shadow"]),
    );
    assert!(
        e.starts_with("ExecProcessRequest is blocked by policy: ExecProcessRequest: container \"busybox\": command [\"cat\", \"/etc/shadow\"] is not one of the policy's exec commands"),
        "{e}"
    );
    // Logs and stdin are off.
    let read = ReadStreamRequest {
        container_id: APP_ID.into(),
        len: 4096,
        ..Default::default()
    };
    let e = a.deny("ReadStreamRequest", &read);
    assert_eq!(
        e,
        "ReadStreamRequest is blocked by policy: ReadStreamRequest: container \"busybox\": reading its output (logs) is off: kata-cc policy gen --allow-logs allows it"
    );
    let write = WriteStreamRequest {
        container_id: APP_ID.into(),
        data: b"x".to_vec(),
        ..Default::default()
    };
    let e = a.deny("WriteStreamRequest", &write);
    assert!(e.contains("its stdin is off"), "{e}");
    // A second sandbox, a policy change: refused.
    let e = a.deny(
        "SetPolicyRequest",
        &agent_proto::agent::SetPolicyRequest::default(),
    );
    assert!(e.contains("cannot be replaced"), "{e}");
    a.allow(
        "RemoveContainerRequest",
        &RemoveContainerRequest {
            container_id: APP_ID.into(),
            ..Default::default()
        },
    );
    let e = a.deny("StartContainerRequest", &id(APP_ID));
    assert!(e.contains("not created under this policy"), "{e}");
}

#[tokio::test]
async fn changes_after_generation_are_denied_naming_the_field() {
    let (rego, src) = generated(Options::default());

    // The command changed.
    let mut s = start(&rego, &src).await;
    let p = s.app.OCI.as_mut().unwrap().Process.as_mut().unwrap();
    p.Args[2] = "while true; do echo pwned; sleep 10; done".into();
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert_eq!(
        e,
        "CreateContainerRequest is blocked by policy: CreateContainerRequest: container \"busybox\": \
         process.Args [\"/bin/sh\", \"-c\", \"while true; do echo pwned; sleep 10; done\"] are not the \
         policy's [\"/bin/sh\", \"-c\", \"while true; do echo pod-lifecycle; sleep 10; done\"]"
    );

    // An env var added.
    let mut s = start(&rego, &src).await;
    let p = s.app.OCI.as_mut().unwrap().Process.as_mut().unwrap();
    p.Env.push("LD_PRELOAD=/tmp/evil.so".into());
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert_eq!(
        e,
        "CreateContainerRequest is blocked by policy: CreateContainerRequest: container \"busybox\": \
         process.Env \"LD_PRELOAD=/tmp/evil.so\" is not allowed by the policy"
    );

    // The kubelet's values have their patterns: a service link must be an address, the pod's
    // IP an IP.
    for (from, to) in [
        (
            "KUBERNETES_SERVICE_HOST=10.0.0.1",
            "KUBERNETES_SERVICE_HOST=evil.example",
        ),
        ("POD_IP=10.244.0.17", "POD_IP=$(rm -rf /)"),
        ("HOSTNAME=pod-lifecycle", "HOSTNAME=other"),
    ] {
        let mut s = start(&rego, &src).await;
        let p = s.app.OCI.as_mut().unwrap().Process.as_mut().unwrap();
        let i = p.Env.iter().position(|e| e == from).unwrap();
        p.Env[i] = to.into();
        let e = s.agent.deny("CreateContainerRequest", &s.app);
        assert!(
            e.contains(&format!(
                "process.Env \"{to}\" is not allowed by the policy"
            )),
            "{e}"
        );
    }

    // Another image under the same name: its second layer differs.
    let mut s = start(&rego, &src).await;
    let mut other = layers_of(&s.busybox);
    other[1].diff_id = crate::policy_gen::testing::digest("evil");
    s.app.storages = vec![image_storage(APP_ID, BUSYBOX, &other)];
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert_eq!(
        e,
        format!(
            "CreateContainerRequest is blocked by policy: CreateContainerRequest: container \"busybox\": \
             image layer 2 of 2: diff_id {} is not the policy's {} (image {BUSYBOX})",
            other[1].diff_id, s.busybox.layers[1].diff_id
        )
    );
    // One layer more.
    let mut s = start(&rego, &src).await;
    let mut more = layers_of(&s.busybox);
    more.push(more[0].clone());
    s.app.storages = vec![image_storage(APP_ID, BUSYBOX, &more)];
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert!(e.contains("has 3 layers, the policy's image"), "{e}");

    // A mount added, a capability, a user.
    let mut s = start(&rego, &src).await;
    let spec = s.app.OCI.as_mut().unwrap();
    spec.Mounts.push(oci::Mount {
        destination: "/host".into(),
        source: "/run/kata-containers/shared/containers/x".into(),
        type_: "bind".into(),
        options: vec!["rbind".into()],
        ..Default::default()
    });
    spec.Process.as_mut().unwrap().User.as_mut().unwrap().UID = 1000;
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert!(
        e.contains("mount /host (bind from /run/kata-containers/shared/containers/x"),
        "{e}"
    );
    assert!(
        e.contains("process.User.UID 1000 is not the policy's 0"),
        "{e}"
    );

    // A copy outside the pod's volumes.
    let mut s = start(&rego, &src).await;
    let bad = CopyFileRequest {
        path: format!("/run/kata-containers/shared/containers/{APP_ID}-0123456789abcdef-shadow"),
        file_mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let e = s.agent.deny("CopyFileRequest", &bad);
    assert!(
        e.contains("not a copy of one of the pod's volumes or image layers"),
        "{e}"
    );
}

#[tokio::test]
async fn exec_and_logs_when_asked() {
    let (rego, src) = generated(Options {
        allow_logs: true,
        allow_exec_commands: vec![vec!["date".into()]],
        ..Default::default()
    });
    let mut s = start(&rego, &src).await;
    let a = &mut s.agent;
    a.allow("CreateContainerRequest", &s.app);
    a.allow("ExecProcessRequest", &exec(&s.app_config, &["date"]));
    a.deny("ExecProcessRequest", &exec(&s.app_config, &["sh"]));
    let read = |exec_id: &str| ReadStreamRequest {
        container_id: APP_ID.into(),
        exec_id: exec_id.into(),
        len: 4096,
        ..Default::default()
    };
    a.allow("ReadStreamRequest", &read(""));
    a.allow("ReadStreamRequest", &read("e1"));

    let (rego, src) = generated(Options {
        allow_exec: true,
        ..Default::default()
    });
    let mut s = start(&rego, &src).await;
    let a = &mut s.agent;
    a.allow("CreateContainerRequest", &s.app);
    a.allow("ExecProcessRequest", &exec(&s.app_config, &["sh"]));
    a.allow(
        "ExecProcessRequest",
        &exec(&s.app_config, &["sh", "-c", "a\nb"]),
    );
    // An exec's output and stdin go with exec; the container's log does not.
    a.allow("ReadStreamRequest", &read("e1"));
    a.deny("ReadStreamRequest", &read(""));
    a.allow(
        "WriteStreamRequest",
        &WriteStreamRequest {
            container_id: APP_ID.into(),
            exec_id: "e1".into(),
            ..Default::default()
        },
    );
}

fn deployment_manifest() -> String {
    let template: String = MANIFEST
        .split_once("spec:\n")
        .unwrap()
        .1
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: lifecycle\n  namespace: default\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: lc}}}}\n  template:\n    \
         metadata:\n      labels: {{app: lc}}\n    spec:\n{template}"
    )
}

/// The same pod from a Deployment: its name (and hostname, HOSTNAME, POD_NAME, the command's
/// echo) is the generated `<deployment>-<hash>-<5>`, its namespace pinned by the manifest.
#[tokio::test]
async fn a_deployments_generated_pod_names_are_allowed() {
    let (rego, src) = generated_from(&deployment_manifest(), Options::default());
    let mut s = start_as(&rego, &src, "lifecycle-7c9d8bb6f4-x2kqz").await;
    s.agent.allow("CreateContainerRequest", &s.app);
    s.agent.allow(
        "ExecProcessRequest",
        &exec(&s.app_config, &["echo", "hello from postStart hook"]),
    );

    // A name its controller would not give, another namespace.
    let mut agent = Agent {
        engine: PolicyEngine::new(&rego).unwrap(),
    };
    let host = Host::new();
    let config = host
        .fill(PAUSE_CONFIG, &json!([]))
        .replace("pod-lifecycle", "lifecycle-x2kqz");
    let spec = BundleSpec::parse(config.as_bytes(), "config.json")
        .unwrap()
        .to_agent()
        .unwrap();
    let mut setup = SandboxSetup::from_spec(&spec).unwrap();
    setup.shm_size = agent_proto::contract::DEFAULT_SHM_SIZE;
    let e = agent.deny("CreateSandboxRequest", &setup.request(SANDBOX_ID));
    assert!(
        e.ends_with("CreateSandboxRequest: hostname \"lifecycle-x2kqz\" is not the pod's (^lifecycle-[bcdfghjklmnpqrstvwxz2456789]{1,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$)"),
        "{e}"
    );
    let mut s = start_as(&rego, &src, "lifecycle-7c9d8bb6f4-x2kqz").await;
    s.app.OCI.as_mut().unwrap().Annotations.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        "kube-system".into(),
    );
    let e = s.agent.deny("CreateContainerRequest", &s.app);
    assert!(e.contains("annotation io.kubernetes.cri.sandbox-namespace=\"kube-system\" is not allowed by the policy"), "{e}");
    assert!(
        e.contains("namespace \"kube-system\" is not the sandbox's \"default\""),
        "{e}"
    );
}
