//! Modal's protobuf messages, generated at build time (see `build.rs`).
#![allow(clippy::all, missing_docs, rustdoc::all, dead_code)]

/// `modal.client`: the control plane (`ModalClient`).
pub mod client {
    include!(concat!(env!("OUT_DIR"), "/modal.client.rs"));
}

/// `modal.task_command_router`: the per-worker exec service (`TaskCommandRouter`).
pub mod task_command_router {
    // The generated code reaches `modal.client` types as `super::client`.
    include!(concat!(env!("OUT_DIR"), "/modal.task_command_router.rs"));
}
