//! Generates the protobuf messages and async ttrpc client/server code from `protos/` at build time
//! with the pure-Rust parser (no protoc on the build machine).

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let protos = [
        "protos/agent.proto",
        "protos/oci.proto",
        "protos/types.proto",
        "protos/health.proto",
        "protos/csi.proto",
    ];
    for p in protos
        .iter()
        .chain(["protos/google/protobuf/empty.proto"].iter())
    {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    Codegen::new()
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the agent protocol code from protos/ failed");

    // The generated files carry inner attributes (`#![...]`), which `include!` cannot take; the
    // including module in lib.rs sets the same allowances instead.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    for name in [
        "agent.rs",
        "agent_ttrpc.rs",
        "oci.rs",
        "types.rs",
        "health.rs",
        "health_ttrpc.rs",
        "csi.rs",
    ] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading generated {}: {e}", path.display()));
        let kept: String = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.starts_with("#![") && !t.starts_with("//!")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept)
            .unwrap_or_else(|e| panic!("writing generated {}: {e}", path.display()));
    }
}
