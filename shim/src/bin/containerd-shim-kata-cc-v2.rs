//! `containerd-shim-kata-cc-v2`: the containerd shim that runs each pod in its own utility VM.

use kata_cc_shim::service::{shim_config, KataShim, RUNTIME_ID};

// One thread: the shim relays I/O and waits on the VM, it computes nothing. Every extra worker
// thread (one per host CPU by default) adds a stack and a malloc arena to each pod's shim.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // One malloc arena for the few helper threads (process owners) as well.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    containerd_shim::asynchronous::run::<KataShim>(RUNTIME_ID, Some(shim_config())).await;
}
