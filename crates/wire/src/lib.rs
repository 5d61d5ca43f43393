//! PostgreSQL wire protocol 3.0, sans-IO.
//!
//! Decoders take a byte buffer and return `Ok(None)` when more bytes are
//! needed, `Ok(Some(..))` for a whole message and `Err(..)` for a malformed
//! one. Every length is checked before it is used; no input makes them panic.
//! Frontend (client to server) and backend (server to client) messages are
//! separate types because their tags collide.
#![forbid(unsafe_code)]

pub mod backend;
mod cursor;
pub mod error;
pub mod fields;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod startup;

pub use error::ProtocolError;
pub use fields::{ErrorFields, Severity};
pub use frame::{peek_header, Header, MAX_STARTUP_LEN};
