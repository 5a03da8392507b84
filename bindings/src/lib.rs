//! Kotlin and Swift bindings for moe-edge (uniffi, proc-macros). A thin layer:
//! [`MoeEngine`] built from an [`EngineConfig`], blocking and async `generate`
//! streaming to a [`GenerationListener`], a [`CancelHandle`], `set_device_state`
//! and `status`. Only errors an app can act on cross the boundary ([`MoeError`]);
//! no panic does.
//!
//! Generate the Kotlin and Swift sources from the built library with
//! `cargo run -p moe-edge-ffi --features cli --bin uniffi-bindgen -- generate
//! target/release/libmoe_edge_ffi.so -l kotlin -l swift -o OUT`.

mod engine;
mod error;
mod types;

pub use engine::{CancelHandle, MoeEngine};
pub use error::MoeError;
pub use types::{
    DeviceState, EdgeServerConfig, EdgeServerStatus, EngineConfig, EngineStatus, GenerateOptions, GenerationEvent,
    GenerationListener, GenerationResult, PolicyChoice, StopReason, SubtaskReport,
};

uniffi::setup_scaffolding!();
