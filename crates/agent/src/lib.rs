//! The agent: one per PostgreSQL node. Every `loop_wait` (or at once when
//! the postmaster dies or the leader changes) it reads the DCS and its
//! PostgreSQL, asks [`ha::decide`] what to do, does it, and publishes its
//! member state with the sentence describing the pass.
#![forbid(unsafe_code)]

mod actions;
pub mod api;
pub mod driver;
pub mod fence;
mod leader;
pub mod metrics;
pub mod node;
pub mod nodeinfo;
pub mod ops;
mod peers;
pub mod preflight;
mod sentences;
mod switchover;
pub mod telemetry;
#[cfg(test)]
mod timing;
pub mod traits;

pub use driver::Agent;
