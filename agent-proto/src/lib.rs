//! Kata agent protocol: messages and async ttrpc client/server code generated at build time from
//! `protos/` (wire-compatible with Kata's `grpc.AgentService` and `grpc.Health`).

// Generated code: lints are relaxed for these modules only.
macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused_imports,
            unused_mut,
            unused_attributes,
            trivial_casts,
            unsafe_code,
            unknown_lints,
            unused_qualifications,
            unused_results,
            dead_code,
            missing_docs,
            rustdoc::all
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(agent, "agent.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");
generated!(oci, "oci.rs");
generated!(types, "types.rs");
generated!(health, "health.rs");
generated!(health_ttrpc, "health_ttrpc.rs");
generated!(csi, "csi.rs");

/// `google.protobuf.Empty`, named the way the generated ttrpc code refers to it.
pub mod empty {
    pub use protobuf::well_known_types::empty::*;
}
