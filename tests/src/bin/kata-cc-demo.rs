//! `make demo`: a Pod manifest (default examples/demo-pod.yaml) run on this machine as a
//! Kubernetes node would run it, through containerd's CRI with kata-cc's runtime handler.
//! There is no kubelet here, so this program plays its part, with the end-to-end tests'
//! harness (kata_cc_tests::kubelet): it starts a loopback registry (serving the locally built
//! busybox image under the manifest's image names, as the node's registry mirror) and a private
//! containerd with CRI on, lays out the pod's volumes as the kubelet does, and calls
//! RunPodSandbox, PullImage, CreateContainer, StartContainer, ExecSync, StopPodSandbox and
//! RemovePodSandbox. It prints what it sees inside the VM (kernel, size, hostname, volumes),
//! the containers' CRI log files and execs' output (one of them refused by the pod's policy),
//! then removes everything and checks that nothing is left.
//!
//! Why a Rust program and not a shell script: CRI is gRPC (no crictl exists for this
//! machine), the manifest is YAML, and the streams, volumes and leak checks already exist in
//! the tests' harness, so the demo runs exactly what the tests prove.
//!
//! Usage: kata-cc-demo [MANIFEST] [--dir DIR]   (DIR default: build/demo)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_cc_tests::cri::{self, ContainerSpec, PodSpec};
use kata_cc_tests::kubelet::{self, ExecOutput, Node};
use kata_cc_tests::manifest::{Manifest, RUNTIME_CLASS};
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
    let m = match Manifest::load(&manifest_path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kata-cc-demo: {e}");
            std::process::exit(2);
        }
    };
    let class = m.spec().runtime_class_name.clone().unwrap_or_default();
    if class != RUNTIME_CLASS {
        eprintln!(
            "kata-cc-demo: {}: runtimeClassName is {class:?}: without {RUNTIME_CLASS:?} the \
             kubelet would not pick kata-cc's handler",
            manifest_path.display()
        );
        std::process::exit(2);
    }
    run(&m, &manifest_path, &dir);
}

fn run(m: &Manifest, manifest_path: &Path, dir: &Path) {
    let started = Instant::now();
    let pod_name = m.pod.metadata.name.clone();
    let namespace = m
        .pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = m.spec();
    println!(
        "== kata-cc demo: {} (Pod {namespace}/{pod_name}, RuntimeClass {RUNTIME_CLASS} -> CRI handler {HANDLER})",
        manifest_path.display()
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
    let uid = random_uuid();
    let pod_dir = node.pod_dir(&uid);
    let mut volume_dirs: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    for v in &spec.volumes {
        if let Some(src) = &v.config_map {
            let cm = &m.config_maps[&src.name];
            let files: Vec<(&str, &[u8])> = cm
                .data
                .iter()
                .map(|(k, d)| (k.as_str(), d.as_bytes()))
                .collect();
            let vol = pod_dir.config_map(&v.name, &files, src.default_mode.unwrap_or(0o644));
            volume_dirs.insert(v.name.clone(), (vol.dir, true));
        } else {
            volume_dirs.insert(v.name.clone(), (pod_dir.empty_dir(&v.name), false));
        }
    }

    let mut containers: Vec<ContainerSpec> = spec
        .containers
        .iter()
        .map(|c| {
            let mut cs =
                ContainerSpec::new(&c.name, &c.image, &[]).limits(c.memory_limit(), c.cpu_millis());
            // Empty: the image's entrypoint, as with a pod spec without command and args.
            cs.command = c.argv();
            cs.envs = c
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect();
            cs
        })
        .collect();
    let mut pod = PodSpec::new(&pod_name, &uid, &node.log_root);
    if namespace != "default" {
        pod.namespace = namespace.clone();
        pod.log_directory = node.log_root.join(format!("{namespace}_{pod_name}_{uid}"));
        std::fs::create_dir_all(&pod.log_directory)
            .unwrap_or_else(|e| panic!("{}: {e}", pod.log_directory.display()));
    }
    let refs: Vec<&ContainerSpec> = containers.iter().collect();
    let mut pod = pod.with_limits_of(&refs);
    pod.share_process_namespace = spec.share_process_namespace;
    pod.annotations = m
        .pod
        .metadata
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mem_mib = pod.memory_limit >> 20;
    let cpus = pod.cpu_quota as f64 / pod.cpu_period as f64;
    println!(
        "== RunPodSandbox: {} containers, limits {mem_mib} MiB and {cpus} CPUs, {} annotation(s){}",
        containers.len(),
        pod.annotations.len(),
        if pod
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
    let running = node.run_pod(&pod);
    let qemu = node.qemu_of(&running);
    println!(
        "   pod sandbox {} ready in {:.1}s: pod IP {}, QEMU pid {}",
        short(&running.id),
        t.elapsed().as_secs_f64(),
        running.ip,
        qemu.pid
    );

    let mut ids = Vec::new();
    for (c, y) in containers.iter_mut().zip(&spec.containers) {
        for vm in &y.volume_mounts {
            let (host, api_data) = &volume_dirs[&vm.name];
            c.mounts
                .push(cri::mount(&vm.mount_path, host, vm.read_only || *api_data));
        }
        c.mounts.extend(running.kubelet_mounts(&c.name));
        let t = Instant::now();
        let cid = node.run_container(&running, c);
        println!(
            "   container {} ({}) started in {:.1}s",
            c.name,
            c.image,
            t.elapsed().as_secs_f64()
        );
        ids.push(cid);
    }

    println!("== inside the VM (CRI ExecSync)");
    let first = &ids[0];
    let guest_kernel = exec_out(&node, first, &["uname", "-r"]);
    println!(
        "   guest kernel:  {guest_kernel} (host: {}; baked image: {})",
        paths::host_kernel_release(),
        paths::guest_kernel_release()
    );
    let meminfo = exec_out(&node, first, &["cat", "/proc/meminfo"]);
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
        exec_out(&node, first, &["nproc"]),
        (1.0 + cpus).ceil()
    );
    for (c, cid) in containers.iter().zip(&ids) {
        println!(
            "   hostname in {}: {}",
            c.name,
            exec_out(&node, cid, &["hostname"])
        );
    }
    for (y, cid) in spec.containers.iter().zip(&ids) {
        for vm in &y.volume_mounts {
            let (_, api_data) = &volume_dirs[&vm.name];
            let what = if *api_data {
                "ConfigMap volume"
            } else {
                "emptyDir"
            };
            let o = node.exec(cid, &["ls", &vm.mount_path]);
            if o.exit_code != 0 {
                println!(
                    "   {what} {} in {}: missing ({})",
                    vm.mount_path,
                    y.name,
                    o.stderr.trim()
                );
                continue;
            }
            let names: Vec<&str> = o.stdout.split_whitespace().collect();
            println!(
                "   {what} {} in {}: {}",
                vm.mount_path,
                y.name,
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
    for c in &containers {
        let file = running.log_file(c);
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
    for cmd in [
        &["cat", "/proc/version"][..],
        &["sh", "-c", "echo a shell in the pod"],
    ] {
        match node.try_exec_within(first, cmd, paths::run_timeout()) {
            Ok(o) => println!(
                "   {} $ {}\n{}      (exit {})",
                containers[0].name,
                shell_words(cmd),
                indent(&format!("{}{}", o.stdout, o.stderr)),
                o.exit_code
            ),
            Err(e) => println!(
                "   {} $ {}\n      refused: {}",
                containers[0].name,
                shell_words(cmd),
                e.message()
            ),
        }
    }

    println!("== StopPodSandbox, RemovePodSandbox");
    node.teardown(&running, Some(qemu.pid));
    node.finish();
    println!(
        "== done in {:.0}s: nothing left (no process, mount, netns, shm, state file or VM)",
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

/// A random (version 4) UUID, as the API server gives pods.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
    {
        panic!("/dev/urandom: {e}");
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
