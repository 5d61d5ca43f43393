//! The data path between one client and the server connection it holds,
//! without I/O: client bytes in, bytes for the server (and direct answers
//! for the client) out; server bytes in, bytes for the client out.
//!
//! It keeps a queue of the responses the server owes, one entry per request
//! message, so that it can
//! - tell when the server is idle and may go back to the pool,
//! - answer a Parse or Close itself and swallow the answer to a Parse it
//!   injected, at the right place in the stream (named prepared statements
//!   in transaction mode live under proxy-wide names on every server),
//! - see which SET / LISTEN / DISCARD statements took effect.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use wire::frame::peek_header;
use wire::ProtocolError;

use crate::params::{Effect, ParamChange};

/// Server messages longer than this (DataRow, CopyData) are streamed.
const STREAM_ABOVE: usize = 64 * 1024;

mod client_params;
mod from_client;
mod from_server;
mod registry;

use client_params::next_stamp;
pub use client_params::ClientParams;
pub use registry::{Registry, Stmt, MAX_SERVER_PREPARED};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    /// The proxy injected the request: its answer is not the client's.
    Swallow,
    /// The proxy answers the client itself with these whole messages.
    Reply(&'static [u8]),
    /// The proxy answers a `DEALLOCATE name` query itself (the name is the
    /// client's; the statement stays prepared for others): CommandComplete
    /// and ReadyForQuery with the transaction status of that moment.
    Deallocated,
}

/// Answers the proxy gives itself (Parse and Close of the client's named
/// statements, and an extended-protocol `DEALLOCATE name`).
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
const NO_DATA: &[u8] = b"n\0\0\0\x04";
const NO_PARAMS_NO_DATA: &[u8] = b"t\0\0\0\x06\0\0n\0\0\0\x04";
const DEALLOCATE_DONE: &[u8] = b"C\0\0\0\x0fDEALLOCATE\0";

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    action: Action,
    /// A statement marked prepared when this Parse was sent; unmarked if
    /// the Parse fails.
    prepared: Option<Arc<str>>,
    effects: Vec<Effect>,
}

impl Pending {
    fn new(kind: Kind) -> Self {
        Pending {
            kind,
            action: Action::Forward,
            prepared: None,
            effects: Vec::new(),
        }
    }
}
/// What the session should do after the client's bytes were handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Terminate,
}

/// Clone: a read sent to a standby keeps the state from before it, to run
/// again on the primary if the standby is lost before it answers.
#[derive(Clone)]
pub struct Relay {
    /// Rewrite named statements to proxy-wide names (transaction mode).
    rewrite: bool,
    max_message: usize,
    queue: VecDeque<Pending>,
    unsynced: bool,
    /// The last request was a Query, Sync, Flush or function call: the
    /// server answers everything queued without more from the client.
    flushed: bool,
    tx_status: u8,
    rollback_seen: bool,
    /// An error since the last idle ReadyForQuery: part of the work rolled back.
    error_seen: bool,
    /// A statement changed session state the proxy does not model.
    unmodelled_seen: bool,
    /// A CREATE, ALTER or DROP completed (read balancing reads the
    /// function catalog again).
    ddl_seen: bool,
    /// The server is in COPY IN mode: it ignores the client's Syncs.
    copy_in: bool,
    /// An extended-protocol request failed and nothing queued after it is
    /// a Sync: the server discards every message up to the client's next
    /// Sync and answers none of them (nor does the proxy).
    discarding: bool,
    /// Bytes of a large DataRow or CopyData still to pass on as they come
    /// (such messages are streamed, not held whole).
    streaming: u32,
    /// What only some clients need, allocated on first use: every idle
    /// client keeps a Relay.
    x: Option<Box<Extra>>,
}

#[derive(Default, Clone)]
struct Extra {
    stmts: HashMap<String, Arc<Stmt>>,
    unnamed_effects: Vec<Effect>,
    portal_effects: Vec<Effect>,
    pending_changes: Vec<ParamChange>,
    listening: Vec<String>,
    /// The unnamed statement (portal) is a `DEALLOCATE` of the client's
    /// own statement that the proxy answers (extended protocol, as psycopg
    /// sends it in pipeline mode before libpq 17).
    fake_unnamed: bool,
    fake_portal: bool,
    /// The SQLSTATE classes (first two characters) of the errors the
    /// server sent since they were last taken, for the metrics.
    error_classes: Vec<[u8; 2]>,
}

impl Relay {
    pub fn new(rewrite: bool, max_message: usize) -> Self {
        Relay {
            rewrite,
            max_message,
            queue: VecDeque::new(),
            unsynced: false,
            flushed: true,
            tx_status: b'I',
            rollback_seen: false,
            error_seen: false,
            unmodelled_seen: false,
            ddl_seen: false,
            streaming: 0,
            copy_in: false,
            discarding: false,
            x: None,
        }
    }

    fn x(&mut self) -> &mut Extra {
        self.x.get_or_insert_with(Default::default)
    }

    fn stmt(&self, name: &str) -> Option<Arc<Stmt>> {
        self.x.as_ref().and_then(|x| x.stmts.get(name).cloned())
    }

    /// The query text of the client's prepared statement `name`.
    pub fn statement_query(&self, name: &str) -> Option<String> {
        let st = self.x.as_ref()?.stmts.get(name)?;
        let body = st.parse_msg.get(5..)?;
        let (_, q, _) = wire::frontend::parse_name_and_query(body).ok()?;
        Some(String::from_utf8_lossy(q).into_owned())
    }

    /// Transaction pool mode: statement names are rewritten and the
    /// server goes back to the pool after each transaction.
    pub fn transaction_mode(&self) -> bool {
        self.rewrite
    }

    /// No response owed, no transaction open, nothing that pins the client
    /// to this server: the server may go back to the pool.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unsynced && self.tx_status == b'I' && !self.is_listening()
    }

    /// The server owes answers it will send without more client input: the
    /// session need not read the client until they arrive (a client that
    /// pipelines more waits in its socket buffer). Not in COPY IN, and not
    /// after extended-protocol messages without a Sync or Flush.
    pub fn awaits_server(&self) -> bool {
        !self.queue.is_empty() && self.flushed && !self.copy_in
    }

    /// In a transaction (or a pipeline not yet synced).
    pub fn in_transaction(&self) -> bool {
        !self.queue.is_empty() || self.unsynced || self.tx_status != b'I'
    }

    /// The server has LISTEN registrations for this client.
    pub fn is_listening(&self) -> bool {
        self.x.as_ref().is_some_and(|x| !x.listening.is_empty())
    }

    /// Part of a streamed message has gone to the client, not all of it.
    pub fn mid_message(&self) -> bool {
        self.streaming > 0
    }

    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    /// Whether a CREATE, ALTER or DROP completed since the last call.
    /// The SQLSTATE classes of the errors since the last call.
    pub fn take_error_classes(&mut self) -> Vec<[u8; 2]> {
        match self.x.as_mut() {
            Some(x) if !x.error_classes.is_empty() => std::mem::take(&mut x.error_classes),
            _ => Vec::new(),
        }
    }

    pub fn take_ddl_seen(&mut self) -> bool {
        std::mem::take(&mut self.ddl_seen)
    }

    pub fn prepared_count(&self) -> usize {
        self.x.as_ref().map_or(0, |x| x.stmts.len())
    }

    /// Whether the first complete message in `input` is Terminate, or
    /// `None` when no complete message is buffered.
    pub fn first_tag(&self, input: &[u8]) -> Result<Option<u8>, ProtocolError> {
        Ok(match peek_header(input, self.max_message)? {
            Some(h) if input.len() >= h.total_len() => Some(h.tag),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
