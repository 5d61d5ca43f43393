//! `pgwarden ctl`: the operator's client of the agents' REST API. The
//! binary's `ctl` subcommand only parses its arguments and calls [`run`].
#![forbid(unsafe_code)]

pub mod client;

pub use client::{Client, CtlError, Reply};
