//! moe-edge: generative AI from a mixture of experts spread over the phone and
//! nearby edge servers.
//!
//! This crate holds every piece of logic that is not FFI: the candle model
//! runtime ([`model`]), and (as they land) the gate, the policy, edge offload and
//! the orchestrator behind `generate()`.

pub mod engine;
#[cfg(feature = "train")]
pub mod experts;
pub mod gate;
pub mod manifest;
pub mod model;
pub mod offload;
#[cfg(feature = "plot")]
pub mod plot;
pub mod policy;
#[cfg(feature = "server")]
pub mod server;
