//! pgwarden's PostgreSQL wire-protocol proxy.
#![forbid(unsafe_code)]

pub mod params;
pub mod relay;
pub mod server;
pub mod stream;
pub mod tls;
