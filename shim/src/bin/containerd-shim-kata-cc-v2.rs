//! `containerd-shim-kata-cc-v2`: the containerd shim that runs each pod in its own utility VM.

use kata_cc_shim::service::{shim_config, KataShim, RUNTIME_ID};

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<KataShim>(RUNTIME_ID, Some(shim_config())).await;
}
