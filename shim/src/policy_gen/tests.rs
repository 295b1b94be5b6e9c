//! The generator end to end on manifests, with an in-memory image source: errors with their
//! lines, warnings, and the policy text loading in the agent's engine.

use super::testing::MemorySource;
use super::*;

pub const PAUSE: &str = "registry.k8s.io/pause:3.6";

pub fn source() -> MemorySource {
    MemorySource::default()
        .with_pause(PAUSE)
        .with_busybox("busybox:1.36", "docker.io/library/busybox:1.36", "busybox")
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
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(generate("pod.yaml", text.to_string(), &[], src, opts, ignore))
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
