//! `make demo`: a Pod manifest (default examples/demo-pod.yaml) run on this machine as a
//! Kubernetes node would run it, through containerd's CRI with kata-cc's runtime handler.
//! There is no kubelet here, so this program plays its part, with the end-to-end tests'
//! harness (kata_cc_tests::kubelet, and kata_cc_tests::kube for the kubelet's translation of the
//! manifest): it starts a loopback registry (serving the locally built busybox image under the
//! manifest's image names, as the node's registry mirror) and a private containerd with CRI on,
//! lays out the pod's volumes as the kubelet does, and calls
//! RunPodSandbox, PullImage, CreateContainer, StartContainer, ExecSync, StopContainer,
//! StopPodSandbox and RemovePodSandbox. It prints what it sees inside the VM (kernel, size, hostname, volumes),
//! the containers' CRI log files and execs' output (one of them refused by the pod's policy),
//! then removes everything and checks that nothing is left.
//!
//! Why a Rust program and not a shell script: CRI is gRPC (no crictl exists for this
//! machine), the manifest is YAML, and the streams, volumes and leak checks already exist in
//! the tests' harness, so the demo runs exactly what the tests prove.
//!
//! Usage: kata-cc-demo [MANIFEST] [--dir DIR]   (DIR default: build/demo)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_cc_tests::cri;
use kata_cc_tests::kube::{HandlerKind, KubePod, Objects, RunningPod};
use kata_cc_tests::kubelet::{self, ExecOutput, Node};
use kata_cc_tests::manifest::RUNTIME_CLASS;
use kata_cc_tests::{paths, TestImage};

/// The CRI runtime handler the RuntimeClass names (`kata-cc install` prints the RuntimeClass).
const HANDLER: &str = cri::HANDLER;

fn usage() -> ! {
    eprintln!("usage: kata-cc-demo [MANIFEST] [--dir DIR]");
    std::process::exit(2)
}

fn main() {
    let mut manifest_path = paths::repo().join("examples/demo-pod.yaml");
    let mut dir = paths::repo().join("build/demo");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ if a.starts_with('-') => usage(),
            _ => manifest_path = PathBuf::from(a),
        }
    }
    // The kubelet's translation of the manifest (kata_cc_tests::kube): its one workload and
    // the ConfigMaps and Secrets in the same file.
    let objs = match Objects::load(&manifest_path, &[]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kata-cc-demo: {e}");
            std::process::exit(2);
        }
    };
    let class = objs
        .workload
        .template
        .spec
        .runtime_class_name
        .clone()
        .unwrap_or_default();
    if class != RUNTIME_CLASS {
        eprintln!(
            "kata-cc-demo: {}: runtimeClassName is {class:?}: without {RUNTIME_CLASS:?} the \
             kubelet would not pick kata-cc's handler",
            manifest_path.display()
        );
        std::process::exit(2);
    }
    run(&objs, &manifest_path, &dir);
}

fn run(objs: &Objects, manifest_path: &Path, dir: &Path) {
    let started = Instant::now();
    let spec = &objs.workload.template.spec;
    println!(
        "== kata-cc demo: {} ({} {}/{}, RuntimeClass {RUNTIME_CLASS} -> CRI handler {HANDLER})",
        manifest_path.display(),
        objs.workload.kind,
        objs.workload.namespace(),
        objs.workload.metadata.name,
    );

    // The node: registry, containerd with CRI, the pause image as CRI's sandbox_image.
    let node = Node::start_in(dir);
    println!(
        "== node: containerd {} with CRI (log {}), loopback registry {}",
        node.cd.socket.display(),
        node.cd.dir.join("containerd.log").display(),
        node.reg.addr
    );
    serve_images(&node, spec.containers.iter().map(|c| c.image.as_str()));

    // The kubelet mounts the volumes before it creates the sandbox.
    let kp = KubePod::prepare(&node, objs).unwrap_or_else(|e| {
        eprintln!("kata-cc-demo: {e}");
        std::process::exit(2)
    });
    let mem_mib = kp.sandbox.memory_limit >> 20;
    let cpus = kp.sandbox.cpu_quota as f64 / kp.sandbox.cpu_period as f64;
    println!(
        "== RunPodSandbox: pod {}, {} containers, limits {mem_mib} MiB and {cpus} CPUs, {} annotation(s){}",
        kp.sandbox.name,
        kp.containers.len(),
        kp.sandbox.annotations.len(),
        if kp
            .sandbox
            .annotations
            .iter()
            .any(|(k, _)| k == kata_cc_tests::policy::POLICY_ANNOTATION)
        {
            " (with the agent policy)"
        } else {
            ""
        }
    );
    let t = Instant::now();
    let pod = node.run_pod(&kp.sandbox);
    let qemu = node.qemu_of(&pod);
    println!(
        "   pod sandbox {} ready in {:.1}s: pod IP {}, QEMU pid {}",
        short(&pod.id),
        t.elapsed().as_secs_f64(),
        pod.ip,
        qemu.pid
    );

    let mut containers = Vec::new();
    for (i, k) in kp.containers.iter().enumerate() {
        let c = kp
            .container_spec(&node, &pod, i)
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let cid = node.run_container(&pod, &c);
        for h in k.handlers_of(HandlerKind::PostStart) {
            let cmd: Vec<&str> = h.command.iter().map(|s| s.as_str()).collect();
            let o = node
                .probe(&cid, &cmd, h.timeout_secs)
                .unwrap_or_else(|e| panic!("postStart of {}: {e}", c.name));
            assert_eq!(o.exit_code, 0, "postStart of {}: {o:?}", c.name);
        }
        println!(
            "   container {} ({}) started in {:.1}s",
            c.name,
            k.yaml.image,
            t.elapsed().as_secs_f64()
        );
        containers.push((c, cid));
    }
    let running = RunningPod {
        kube: kp,
        pod,
        containers,
    };

    println!("== inside the VM (CRI ExecSync)");
    let first = running.containers[0].1.clone();
    let guest_kernel = exec_out(&node, &first, &["uname", "-r"]);
    println!(
        "   guest kernel:  {guest_kernel} (host: {}; baked image: {})",
        paths::host_kernel_release(),
        paths::guest_kernel_release()
    );
    let meminfo = exec_out(&node, &first, &["cat", "/proc/meminfo"]);
    let mem_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| format!("{} MiB", kb / 1024))
        .unwrap_or_else(|| "?".into());
    println!(
        "   VM memory:     MemTotal {mem_total} (VM sized 2048 + {mem_mib} = {} MiB; the kernel keeps some)",
        2048 + mem_mib
    );
    println!(
        "   vCPUs:         {} (ceil(1 + {cpus}) = {})",
        exec_out(&node, &first, &["nproc"]),
        (1.0 + cpus).ceil()
    );
    for (c, cid) in &running.containers {
        println!(
            "   hostname in {}: {}",
            c.name,
            exec_out(&node, cid, &["hostname"])
        );
    }
    for (k, (_, cid)) in running.kube.containers.iter().zip(&running.containers) {
        for vm in &k.yaml.volume_mounts {
            let Some(v) = spec.volumes.iter().find(|v| v.name == vm.name) else {
                // The service-account token the API server's admission adds.
                continue;
            };
            let what = if v.config_map.is_some() {
                "ConfigMap volume"
            } else if v.secret.is_some() {
                "Secret volume"
            } else if v.empty_dir.is_some() {
                "emptyDir"
            } else {
                "hostPath volume"
            };
            let o = node.exec(cid, &["ls", &vm.mount_path]);
            if o.exit_code != 0 {
                println!(
                    "   {what} {} in {}: missing ({})",
                    vm.mount_path,
                    k.yaml.name,
                    o.stderr.trim()
                );
                continue;
            }
            let names: Vec<&str> = o.stdout.split_whitespace().collect();
            println!(
                "   {what} {} in {}: {}",
                vm.mount_path,
                k.yaml.name,
                if names.is_empty() {
                    "(empty)".to_string()
                } else {
                    names.join(" ")
                }
            );
            for n in names {
                let p = format!("{}/{n}", vm.mount_path);
                for line in exec_out(&node, cid, &["cat", &p]).lines() {
                    println!("      {n}: {line}");
                }
            }
        }
    }

    println!("== the containers' CRI log files (written by containerd from the guest's output)");
    for (c, _) in &running.containers {
        let file = running.pod.log_file(c);
        // The containers print at start; give their output a moment to arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = kubelet::log_lines(&file);
        while lines.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            lines = kubelet::log_lines(&file);
        }
        println!("   {} ({}):", c.name, file.display());
        for l in lines {
            println!("      {:6} {}", l.stream, l.text);
        }
    }

    println!("== exec through CRI, checked by the pod's policy in the VM");
    let first_name = running.containers[0].0.name.clone();
    for cmd in [
        &["cat", "/proc/version"][..],
        &["sh", "-c", "echo a shell in the pod"],
    ] {
        match node.try_exec_within(&first, cmd, paths::run_timeout()) {
            Ok(o) => println!(
                "   {first_name} $ {}\n{}      (exit {})",
                shell_words(cmd),
                indent(&format!("{}{}", o.stdout, o.stderr)),
                o.exit_code
            ),
            Err(e) => println!(
                "   {first_name} $ {}\n      refused: {}",
                shell_words(cmd),
                e.message()
            ),
        }
    }

    println!("== StopContainer, StopPodSandbox, RemovePodSandbox");
    running.teardown(&node);
    node.finish();
    println!(
        "== done in {:.0}s: nothing left (no process, mount, netns, shm, state file, VM or pod log dir)",
        started.elapsed().as_secs_f64()
    );
}

/// Pushes the busybox image under every name the manifest uses (`HOST/REPO:TAG`) and makes the
/// registry the node's mirror for HOST (containerd's certs.d hosts.toml), then pulls each
/// through CRI as the kubelet does.
fn serve_images<'a>(node: &Node, images: impl Iterator<Item = &'a str>) {
    let busybox = TestImage::busybox();
    let mut done = Vec::new();
    for image in images {
        if done.contains(&image) {
            continue;
        }
        done.push(image);
        let Some((host, rest)) = image.split_once('/') else {
            panic!("image {image}: the demo serves only images named HOST/REPO:TAG");
        };
        let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
        node.reg.push(&busybox, repo, tag);
        let hosts = node.cd.dir.join("certs.d").join(host);
        std::fs::create_dir_all(&hosts).unwrap_or_else(|e| panic!("{}: {e}", hosts.display()));
        let server = format!("http://{}", node.reg.addr);
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"{server}\"\n\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", hosts.display()));
        let id = node.pull(image);
        println!(
            "   PullImage {image}: {} (busybox-static, from the loopback registry as {host}'s mirror)",
            short(&id)
        );
    }
}

fn exec_out(node: &Node, cid: &str, cmd: &[&str]) -> String {
    let o: ExecOutput = node.exec(cid, cmd);
    if o.exit_code != 0 {
        return format!("(exit {}: {})", o.exit_code, o.stderr.trim());
    }
    o.out().to_string()
}

/// A command line as a shell would take it back (words with spaces quoted).
fn shell_words(cmd: &[&str]) -> String {
    cmd.iter()
        .map(|w| {
            if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
                format!("'{}'", w.replace('\'', "'\\''"))
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}
