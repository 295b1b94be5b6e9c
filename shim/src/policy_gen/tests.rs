//! The generator end to end on manifests, with an in-memory image source: errors with their
//! lines, warnings, and the policy text loading in the agent's engine.

use super::testing::MemorySource;
use super::*;

pub const PAUSE: &str = "registry.k8s.io/pause:3.6";

pub fn source() -> MemorySource {
    MemorySource::default().with_pause(PAUSE).with_busybox(
        "busybox:1.36",
        "docker.io/library/busybox:1.36",
        "busybox",
    )
}

pub fn opts() -> Options {
    Options {
        pause_image: PAUSE.to_string(),
        ..Default::default()
    }
}

pub fn gen(text: &str) -> Result<Generated, GenError> {
    gen_with(text, &source(), &opts(), false)
}

pub fn gen_with(
    text: &str,
    src: &MemorySource,
    opts: &Options,
    ignore: bool,
) -> Result<Generated, GenError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(generate(
        "pod.yaml",
        text.to_string(),
        &[],
        src,
        opts,
        ignore,
    ))
}

pub const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: one
spec:
  containers:
  - name: app
    image: busybox:1.36
    command: [sh, -c, 'echo hi; sleep 3600']
";

#[test]
fn a_pods_policy_loads_in_the_agents_engine() {
    let g = gen(POD).unwrap();
    assert_eq!(g.policies.len(), 1);
    let rego = &g.policies[0].rego;
    let e = kata_cc_policy::PolicyEngine::new(rego);
    let e = match e {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    assert!(e.has_fast_path(), "the VM compiles the rules");
}

fn err(text: &str) -> String {
    match gen(text) {
        Ok(_) => panic!("generated"),
        Err(e) => e.to_string(),
    }
}

fn data_of(g: &Generated, i: usize) -> serde_json::Value {
    let rego = &g.policies[i].rego;
    let json = rego.split_once("policy_data := ").unwrap().1;
    serde_json::from_str(json).unwrap()
}

#[test]
fn errors_name_the_file_line_and_field() {
    let e = err(&POD.replace(
        "    command:",
        "    volumeDevices: [{name: d, devicePath: /dev/x}]\n    command:",
    ));
    assert_eq!(
        e,
        "pod.yaml:9: spec.containers[0].volumeDevices: not supported"
    );
    let e = err(&POD.replace("spec:\n", "spec:\n  hostNetwork: true\n"));
    assert_eq!(
        e,
        "pod.yaml:6: spec.hostNetwork: not supported: the pod's network is the VM's"
    );
    let e = err(&POD.replace("image: busybox:1.36", "image: nope:1"));
    assert_eq!(
        e,
        "pod.yaml:8: spec.containers[0].image: image nope:1: not found in the test's images"
    );
    let e = err("kind: Pod\nmetadata:\n  name: x\n spec: {}\n");
    assert!(e.starts_with("pod.yaml:4: not YAML: "), "{e}");
    let e = err(&format!("{POD}---\nkind: Frob\n"));
    assert!(
        e.starts_with("pod.yaml:11: kind Frob: not supported"),
        "{e}"
    );
    let e = err(&POD.replace("    command:", "    env:\n    - name: X\n      valueFrom: {configMapKeyRef: {name: cm, key: k}}\n    command:"));
    assert_eq!(
        e,
        "pod.yaml:11: spec.containers[0].env[0].valueFrom.configMapKeyRef: ConfigMap \"cm\" with key \"k\" is not in the manifest or a -c file"
    );
    let e = err(&POD.replace(
        "    command:",
        "    volumeMounts: [{name: v, mountPath: /v}]\n    command:",
    ));
    assert_eq!(
        e,
        "pod.yaml:9: spec.containers[0].volumeMounts[0].name: no volume \"v\" in spec.volumes"
    );
    let d = DEPLOYMENT.replace(
        "      - name: side\n        image: busybox:1.36",
        "      - name: side\n        image: nope:2",
    );
    let e = err(&format!("{d}---\n{CONFIGS}"));
    assert_eq!(
        e,
        "pod.yaml:29: spec.template.spec.containers[1].image: image nope:2: not found in the test's images"
    );
    let src =
        MemorySource::default().with_busybox("busybox:1.36", "docker.io/library/busybox:1.36", "b");
    let e = gen_with(POD, &src, &opts(), false).unwrap_err().to_string();
    assert_eq!(
        e,
        "pause image (--pause-image): image registry.k8s.io/pause:3.6: not found in the test's images"
    );
    let e = err("kind: Service\nmetadata: {name: s}\n");
    assert_eq!(e, "pod.yaml: no pod in the manifest (kinds with pods: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List)");
}

#[test]
fn ignore_unsupported_warns_and_goes_on() {
    let text = POD.replace(
        "    command:",
        "    volumeDevices: [{name: d, devicePath: /dev/x}]\n    command:",
    );
    let g = gen_with(&text, &source(), &opts(), true).unwrap();
    assert_eq!(
        g.warnings,
        ["pod.yaml:9: spec.containers[0].volumeDevices: not supported (ignored: the policy does not allow what it causes)"]
    );
}

#[test]
fn latest_and_untagged_images_are_warned_about() {
    let mut src = source();
    src.add(
        "busybox",
        "docker.io/library/busybox:latest",
        "bb",
        1,
        Default::default(),
        Default::default(),
    );
    src.add(
        "127.0.0.1:5000/x/busybox:latest",
        "127.0.0.1:5000/x/busybox:latest",
        "bb2",
        1,
        Default::default(),
        Default::default(),
    );
    let text = POD.replace("image: busybox:1.36", "image: busybox")
        + "  - name: two\n    image: 127.0.0.1:5000/x/busybox:latest\n    command: [sh]\n";
    let g = gen_with(&text, &src, &opts(), false).unwrap();
    assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
    assert!(g.warnings[0].starts_with("pod.yaml:8: spec.containers[0].image: container \"app\": image busybox has no tag (latest)"), "{:?}", g.warnings);
    assert!(
        g.warnings[1].contains(
            "container \"two\": image 127.0.0.1:5000/x/busybox:latest has the tag latest"
        ),
        "{:?}",
        g.warnings
    );
}

#[test]
fn a_named_user_reads_the_images_accounts_a_numeric_one_does_not() {
    let src = source();
    gen_with(POD, &src, &opts(), false).unwrap();
    assert!(src.accounts_read.lock().unwrap().is_empty());
    let src = source();
    let text = POD.replace(
        "    command:",
        "    securityContext: {runAsUser: 65534}\n    command:",
    );
    let g = gen_with(&text, &src, &opts(), false).unwrap();
    assert_eq!(*src.accounts_read.lock().unwrap(), ["busybox:1.36"]);
    let d = data_of(&g, 0);
    let user = &d["containers"][1]["OCI"]["Process"]["User"];
    assert_eq!(user["UID"], 65534);
    assert_eq!(user["GID"], 65534);
    assert_eq!(user["AdditionalGids"], serde_json::json!([65534]));
    assert_eq!(d["containers"][1]["kata_cc"]["additional_gids"], "exact");
    assert_eq!(d["containers"][0]["kata_cc"]["additional_gids"], "within");
    let src = source();
    let text = POD.replace(
        "    command:",
        "    securityContext: {runAsUser: 1000, runAsGroup: 3000}\n    command:",
    );
    gen_with(&text, &src, &opts(), false).unwrap();
    assert!(src.accounts_read.lock().unwrap().is_empty());
}

/// A Deployment with two containers, probes, a ConfigMap and a Secret (env and volumes).
const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'echo $(GREETING) from $(POD_NAME); sleep 3600']
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}
        - {name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token}}}
        - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
        resources: {limits: {memory: 64Mi}}
        livenessProbe: {exec: {command: [cat, /etc/config/greeting]}}
        readinessProbe: {exec: {command: ['true']}}
        volumeMounts:
        - {name: config, mountPath: /etc/config}
        - {name: secret, mountPath: /etc/secret}
        - {name: scratch, mountPath: /scratch}
      - name: side
        image: busybox:1.36
        command: [sleep, '3600']
        volumeMounts:
        - {name: scratch, mountPath: /data, readOnly: true}
      volumes:
      - {name: config, configMap: {name: cfg}}
      - {name: secret, secret: {secretName: creds}}
      - {name: scratch, emptyDir: {}}
";

const CONFIGS: &str = "\
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello}
---
kind: Secret
metadata: {name: creds}
data: {token: czNjcjN0}
";

#[test]
fn a_deployments_data_in_genpolicys_schema() {
    let src = source();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let g = rt
        .block_on(generate(
            "web.yaml",
            DEPLOYMENT.to_string(),
            &[("cm.yaml".to_string(), CONFIGS.to_string())],
            &src,
            &opts(),
            false,
        ))
        .unwrap();
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
    let d = data_of(&g, 0);
    let app = &d["containers"][1];
    assert_eq!(app["kata_cc"]["name"], "app");
    assert_eq!(
        app["OCI"]["Process"]["Args"],
        serde_json::json!(["sh", "-c", "echo hello from $(sandbox-name); sleep 3600"])
    );
    assert_eq!(
        app["kata_cc"]["args_regex"]["2"],
        "^echo hello from $(sandbox-name); sleep 3600$"
    );
    let env = app["OCI"]["Process"]["Env"].as_array().unwrap();
    let env: Vec<&str> = env.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=$(host-name)",
            "POD_NAME=$(sandbox-name)",
            "POD_IP=$(pod-ip)",
            "GREETING=hello",
            "TOKEN=s3cr3t",
            "MEM=64",
        ]
    );
    assert_eq!(
        app["kata_cc"]["env_regex"]["POD_IP=$(pod-ip)"],
        "^POD_IP=[0-9a-fA-F.:]+$"
    );
    assert_eq!(
        app["exec_commands"],
        serde_json::json!([["cat", "/etc/config/greeting"], ["true"]])
    );
    let mounts = app["OCI"]["Mounts"].as_array().unwrap();
    let src_of = |dest: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == dest)
            .map(|m| {
                (
                    m["source"].as_str().unwrap().to_string(),
                    m["options"].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(
        src_of("/etc/config"),
        (
            "$(sfprefix)config$".to_string(),
            serde_json::json!(["rbind", "rprivate", "ro"])
        )
    );
    assert_eq!(
        src_of("/scratch"),
        (
            "^$(cpath)/$(sandbox-id)-[0-9a-f]{16}-scratch$".to_string(),
            serde_json::json!(["rbind", "rprivate", "rw"])
        )
    );
    assert_eq!(src_of("/dev/shm").0, "/run/kata-containers/sandbox/shm");
    assert_eq!(
        src_of("/var/run/secrets/kubernetes.io/serviceaccount").0,
        "$(sfprefix)serviceaccount$"
    );
    let side = &d["containers"][2];
    assert_eq!(
        side["OCI"]["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()["options"],
        serde_json::json!(["rbind", "rprivate", "ro"])
    );
    let roots = d["request_defaults"]["CopyFileRequest"].as_array().unwrap();
    let roots: Vec<&str> = roots.iter().map(|v| v.as_str().unwrap()).collect();
    for name in [
        "config",
        "secret",
        "scratch",
        "serviceaccount",
        "hosts",
        "hostname",
        "resolv\\.conf",
        "termination\\-log",
        "layer",
    ] {
        assert!(
            roots.contains(&format!("^$(cpath)/[0-9a-f]{{64}}-[0-9a-f]{{16}}-{name}").as_str()),
            "{name}: {roots:?}"
        );
    }
    assert_eq!(
        d["sandbox"]["hostname"],
        "^web-[bcdfghjklmnpqrstvwxz2456789]{1,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$"
    );
    assert_eq!(
        app["storages"][0]["driver_options"][0],
        format!(
            "kata-cc.layer={},{},application/vnd.oci.image.layer.v1.tar+gzip",
            testing::digest("busybox/blob0"),
            testing::digest("busybox/diff0")
        )
    );
    assert_eq!(d["request_defaults"]["ReadStreamRequest"], false);
    assert_eq!(
        d["request_defaults"]["ExecProcessRequest"]["regex"],
        serde_json::json!([])
    );
}

/// A pod of five containers: what its policy weighs against the 256 KiB annotation limit.
#[test]
fn a_five_container_pods_policy_fits_an_annotation() {
    let mut text = POD.to_string();
    for i in 2..=5 {
        text.push_str(&format!(
            "  - name: c{i}\n    image: busybox:1.36\n    command: [sh, -c, 'sleep {i}']\n    env: [{{name: A, value: b}}, {{name: P, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]\n    livenessProbe: {{exec: {{command: [cat, /tmp/ok]}}}}\n"
        ));
    }
    let g = gen(&text).unwrap();
    let rego = &g.policies[0].rego;
    let plain = output::annotation_value(rego, output::Carrier::Policy).len();
    let initdata = output::annotation_value(rego, output::Carrier::InitData).len();
    eprintln!(
        "five containers: Rego {} bytes ({} of rules), annotation {} bytes, init-data annotation {} bytes",
        rego.len(),
        rules::RULES.len(),
        plain,
        initdata
    );
    assert!(plain < 256 * 1024);
    assert!(initdata < plain);
}

#[test]
fn jobs_cronjobs_and_lists() {
    let job = "kind: Job\nmetadata: {name: j}\nspec:\n  completionMode: Indexed\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {name: a, image: 'busybox:1.36', command: [sh, -c, exit 0]}\n";
    let g = gen(job).unwrap();
    let d = data_of(&g, 0);
    assert!(
        d["request_defaults"]["CreateContainerRequest"]["allow_env_regex"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("^JOB_COMPLETION_INDEX=[0-9]+$"))
    );
    let list = format!("kind: List\nitems:\n- {}\n- kind: CronJob\n  metadata: {{name: c}}\n  spec:\n    schedule: '* * * * *'\n    jobTemplate:\n      spec:\n        template:\n          spec:\n            containers: [{{name: a, image: 'busybox:1.36'}}]\n",
        "{kind: Pod, metadata: {name: p}, spec: {containers: [{name: a, image: 'busybox:1.36'}]}}");
    let g = gen(&list).unwrap();
    assert_eq!(g.policies.len(), 2);
    // No command: the image's (busybox: sh).
    assert_eq!(
        data_of(&g, 1)["containers"][1]["OCI"]["Process"]["Args"],
        serde_json::json!(["sh"])
    );
}

/// The network requests of a real Kata pod (the regorus corpus's `web`), as kata-cc's shim
/// sends them too (network::requests matches them): allowed; a loopback one refused.
#[test]
fn network_requests_as_genpolicys_defaults_allow_them() {
    let g = gen(POD).unwrap();
    let mut e = kata_cc_policy::PolicyEngine::new(&g.policies[0].rego).unwrap();
    let path = kata_cc_fixtures::package_file("regorus", "tests/kata/data/web/inputs.txt");
    let log = kata_cc_policy::log::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut seen = 0;
    for entry in &log {
        if matches!(
            entry.name.as_str(),
            "UpdateInterfaceRequest" | "UpdateRoutesRequest"
        ) {
            let d = e.evaluate(&entry.name, &entry.input).unwrap();
            assert!(d.allowed, "{}: {:?}", entry.name, d.prints);
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
    let lo = serde_json::json!({"interface": {"device": "lo", "name": "lo", "IPAddresses": [], "mtu": 65536, "hwAddr": "", "devicePath": "", "type_": "", "raw_flags": 0}});
    let d = e.evaluate("UpdateInterfaceRequest", &lo).unwrap();
    assert!(!d.allowed);
    assert!(
        d.denial_message("UpdateInterfaceRequest")
            .ends_with("UpdateInterfaceRequest: interface lo"),
        "{:?}",
        d.prints
    );
    let arp = |state: i32| serde_json::json!({"neighbors": {"ARPNeighbors": [{"toIPAddress": {"family": 0, "address": "10.244.0.9", "mask": ""}, "device": "eth0", "lladdr": "aa:bb:cc:00:01:02", "state": state, "flags": 0}]}});
    assert!(
        e.evaluate("AddARPNeighborsRequest", &arp(128))
            .unwrap()
            .allowed
    );
    assert!(
        !e.evaluate("AddARPNeighborsRequest", &arp(1))
            .unwrap()
            .allowed
    );
    // Requests the shim never sends for a pod.
    for name in [
        "ListInterfacesRequest",
        "GetMetricsRequest",
        "PauseContainerRequest",
        "SetGuestDateTimeRequest",
    ] {
        assert!(
            !e.evaluate(name, &serde_json::json!({})).unwrap().allowed,
            "{name}"
        );
    }
    for name in ["GetOOMEventRequest", "DestroySandboxRequest"] {
        assert!(
            e.evaluate(name, &serde_json::json!({})).unwrap().allowed,
            "{name}"
        );
    }
}
