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
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use wire::backend::{BackendMessage, TxStatus};
use wire::frame::{peek_header, split_message};
use wire::frontend::{self, Target};
use wire::ProtocolError;

use crate::params::{self, Effect, ParamChange, ParamSet, Strings, Verb};
use crate::server::ServerSession;

/// A statement prepared under a proxy-wide name.
#[derive(Debug)]
pub struct Stmt {
    pub server_name: Arc<str>,
    /// The whole Parse message under the server name, ready to send.
    pub parse_msg: Bytes,
    pub effects: Vec<Effect>,
}

/// Server messages longer than this (DataRow, CopyData) are streamed.
const STREAM_ABOVE: usize = 64 * 1024;

/// Registry size at which statements no client holds are dropped.
const REGISTRY_SWEEP_AT: usize = 10_000;

/// Statements a server connection may have prepared: one with more goes
/// when it is given back (a fresh connection replaces it), so ever new
/// statement texts cannot grow a server's memory without bound.
pub const MAX_SERVER_PREPARED: usize = 2_000;

/// Proxy-wide statement names: the same query text and parameter types get
/// the same name, so a statement prepared on a server serves every client.
#[derive(Default)]
pub struct Registry {
    by_body: Mutex<HashMap<Box<[u8]>, Arc<Stmt>>>,
    next: AtomicU64,
    sweep_at: std::sync::atomic::AtomicUsize,
}

impl Registry {
    /// `rest` is the Parse body after the statement name.
    /// `strings`: how the server reads it. A text whose meaning depends on
    /// that (it has a backslash) is shared only among clients reading
    /// strings the same way.
    fn get(
        &self,
        rest: &[u8],
        query: &[u8],
        strings: Strings,
        multibyte_backslash: bool,
    ) -> Arc<Stmt> {
        let keyed;
        let key = if strings != Strings::Standard && query.contains(&b'\\') {
            keyed = [rest, &[0xff, strings as u8]].concat();
            &keyed[..]
        } else {
            rest
        };
        let mut map = self.by_body.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        let server_name: Arc<str> =
            format!("pgw_{}", self.next.fetch_add(1, Ordering::Relaxed)).into();
        let mut msg = BytesMut::with_capacity(rest.len() + server_name.len() + 6);
        wire::frame::write_message(&mut msg, b'P', |b| {
            b.put_slice(server_name.as_bytes());
            b.put_u8(0);
            b.put_slice(rest);
        });
        let effects = if params::may_have_effects(query) {
            params::parse_effects_bytes(query, strings, multibyte_backslash)
        } else {
            Vec::new()
        };
        let stmt = Arc::new(Stmt {
            server_name,
            parse_msg: msg.freeze(),
            effects,
        });
        let sweep_at = self.sweep_at.load(Ordering::Relaxed).max(REGISTRY_SWEEP_AT);
        if map.len() >= sweep_at {
            // Statements no client holds any more go: clients that prepare
            // ever new texts (and close them) must not grow the proxy. The
            // next sweep waits for the map to double, so sweeps stay rare
            // when clients do hold that many.
            map.retain(|_, s| Arc::strong_count(s) > 1);
            self.sweep_at.store(map.len() * 2, Ordering::Relaxed);
        }
        map.insert(key.into(), stmt.clone());
        stmt
    }

    pub fn len(&self) -> usize {
        self.by_body.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

#[derive(Debug)]
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

/// The client's own session parameters.
#[derive(Debug, Default)]
pub struct ClientParams {
    /// Boxed, and only when not empty: most clients set nothing, and every
    /// idle client keeps its ClientParams.
    sets: Option<Box<ParamSets>>,
    /// Names this version of `set`, unique in the process (0: none): a
    /// server connection last synced with the same stamp needs no SETs.
    pub stamp: u64,
}

#[derive(Debug, Default)]
struct ParamSets {
    /// What the client's session has now.
    current: ParamSet,
    /// What its startup packet set: RESET goes back to these.
    startup: ParamSet,
}

static NO_PARAMS: ParamSet = ParamSet::EMPTY;

impl ClientParams {
    /// A client whose startup packet set `startup`.
    pub fn new(startup: ParamSet) -> Self {
        ClientParams {
            sets: (startup != ParamSet::EMPTY).then(|| {
                Box::new(ParamSets {
                    current: startup.clone(),
                    startup,
                })
            }),
            stamp: next_stamp(),
        }
    }

    pub fn set(&self) -> &ParamSet {
        self.sets.as_deref().map_or(&NO_PARAMS, |s| &s.current)
    }

    fn apply(&mut self, change: &ParamChange) {
        let sets = self.sets.get_or_insert_with(Default::default);
        sets.current.apply_with(change, &sets.startup);
    }
}

fn next_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the session should do after the client's bytes were handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Terminate,
}

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
    /// The server is in COPY IN mode: it ignores the client's Syncs.
    copy_in: bool,
    /// Bytes of a large DataRow or CopyData still to pass on as they come
    /// (such messages are streamed, not held whole).
    streaming: u32,
    /// What only some clients need, allocated on first use: every idle
    /// client keeps a Relay.
    x: Option<Box<Extra>>,
}

#[derive(Default)]
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
            streaming: 0,
            copy_in: false,
            x: None,
        }
    }

    fn x(&mut self) -> &mut Extra {
        self.x.get_or_insert_with(Default::default)
    }

    fn stmt(&self, name: &str) -> Option<Arc<Stmt>> {
        self.x.as_ref().and_then(|x| x.stmts.get(name).cloned())
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

    /// Consumes every complete client message in `input`.
    pub fn client_messages(
        &mut self,
        input: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
        srv: &mut ServerSession,
        registry: &Registry,
    ) -> Result<Flow, ProtocolError> {
        let mut pos = 0;
        let mut run = 0; // start of bytes to forward unchanged
        let mut flow = Flow::Continue;
        while let Some((h, body)) = split_message(&input[pos..], self.max_message)? {
            let total = h.total_len();
            let mut forward = true;
            match h.tag {
                b'Q' if self.rewrite
                    && self.has_own_statements()
                    && self.deallocates_own(frontend::query_bytes(body)?) =>
                {
                    self.flushed = true;
                    forward = false;
                    to_server.extend_from_slice(&input[run..pos]);
                    self.queue.push_back(Pending {
                        action: Action::Deallocated,
                        ..Pending::new(Kind::Query)
                    });
                }
                b'Q' => {
                    self.flushed = true;
                    let sql = frontend::query_bytes(body)?;
                    let effects = if params::may_have_effects(sql) {
                        params::parse_effects_bytes(sql, self.strings(srv), srv.multibyte_backslash)
                    } else {
                        Vec::new()
                    };
                    self.queue.push_back(Pending {
                        effects,
                        ..Pending::new(Kind::Query)
                    });
                }
                b'P' | b'B' | b'D' | b'E'
                    if self.rewrite && self.answers_itself(h.tag, body)? =>
                {
                    forward = false;
                    to_server.extend_from_slice(&input[run..pos]);
                    let (kind, reply) = match h.tag {
                        b'P' => (Kind::Parse, PARSE_COMPLETE),
                        b'B' => (Kind::Bind, BIND_COMPLETE),
                        b'D' if body.first() == Some(&b'S') => (Kind::Describe, NO_PARAMS_NO_DATA),
                        b'D' => (Kind::Describe, NO_DATA),
                        _ => (Kind::Execute, DEALLOCATE_DONE),
                    };
                    self.queue.push_back(Pending {
                        action: Action::Reply(reply),
                        ..Pending::new(kind)
                    });
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'P' => {
                    let (name, query, _) = frontend::parse_name_and_query(body)?;
                    if self.rewrite && !name.is_empty() {
                        // keyed by the mode the server reported: a client in
                        // a pipeline is in that mode but for rare changes
                        let stmt = registry.get(
                            &body[name.len() + 1..],
                            query,
                            srv.strings,
                            srv.multibyte_backslash,
                        );
                        self.x().stmts.insert(name.to_owned(), stmt.clone());
                        forward = false;
                        to_server.extend_from_slice(&input[run..pos]);
                        self.ensure_prepared(&stmt, srv, to_server, false);
                    } else {
                        if name.is_empty() {
                            let effects = if params::may_have_effects(query) {
                                params::parse_effects_bytes(
                                    query,
                                    self.strings(srv),
                                    srv.multibyte_backslash,
                                )
                            } else {
                                Vec::new()
                            };
                            if !effects.is_empty() || self.x.is_some() {
                                self.x().unnamed_effects = effects;
                            }
                        }
                        self.queue.push_back(Pending::new(Kind::Parse));
                    }
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'B' => {
                    let (portal, name, used) = frontend::bind_statement_name(body)?;
                    let stmt = if self.rewrite && !name.is_empty() {
                        self.stmt(name)
                    } else {
                        None
                    };
                    if let Some(stmt) = stmt {
                        forward = false;
                        to_server.extend_from_slice(&input[run..pos]);
                        self.ensure_prepared(&stmt, srv, to_server, true);
                        let rest = &body[used..];
                        wire::frame::write_message(to_server, b'B', |b| {
                            b.put_slice(portal.as_bytes());
                            b.put_u8(0);
                            b.put_slice(stmt.server_name.as_bytes());
                            b.put_u8(0);
                            b.put_slice(rest);
                        });
                        if portal.is_empty() && (!stmt.effects.is_empty() || self.x.is_some()) {
                            self.x().portal_effects.clone_from(&stmt.effects);
                        }
                    } else if portal.is_empty() {
                        if let Some(x) = self.x.as_deref_mut() {
                            if name.is_empty() {
                                x.portal_effects.clone_from(&x.unnamed_effects);
                            } else {
                                x.portal_effects.clear();
                            }
                        }
                    }
                    self.queue.push_back(Pending::new(Kind::Bind));
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'D' => {
                    let (target, name) = frontend::target_and_name(b'D', body)?;
                    let stmt = if self.rewrite && target == Target::Statement && !name.is_empty() {
                        self.stmt(name)
                    } else {
                        None
                    };
                    if let Some(stmt) = stmt {
                        forward = false;
                        to_server.extend_from_slice(&input[run..pos]);
                        self.ensure_prepared(&stmt, srv, to_server, true);
                        frontend::FrontendMessage::Describe {
                            target,
                            name: stmt.server_name.to_string(),
                        }
                        .encode(to_server);
                    }
                    self.queue.push_back(Pending::new(Kind::Describe));
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'C' => {
                    let (target, name) = frontend::target_and_name(b'C', body)?;
                    if self.rewrite && target == Target::Statement && !name.is_empty() {
                        // The statement stays prepared on the servers for
                        // other clients; only this client's name goes.
                        if let Some(x) = self.x.as_mut() {
                            x.stmts.remove(name);
                        }
                        forward = false;
                        to_server.extend_from_slice(&input[run..pos]);
                        self.queue.push_back(Pending {
                            action: Action::Reply(CLOSE_COMPLETE),
                            ..Pending::new(Kind::Close)
                        });
                    } else {
                        self.queue.push_back(Pending::new(Kind::Close));
                    }
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'E' => {
                    let effects = self
                        .x
                        .as_mut()
                        .map(|x| std::mem::take(&mut x.portal_effects))
                        .unwrap_or_default();
                    self.queue.push_back(Pending {
                        effects,
                        ..Pending::new(Kind::Execute)
                    });
                    self.unsynced = true;
                    self.flushed = false;
                }
                b'S' if self.copy_in => {}
                b'S' => {
                    self.queue.push_back(Pending::new(Kind::Sync));
                    self.unsynced = false;
                    self.flushed = true;
                }
                b'F' => {
                    self.queue.push_back(Pending::new(Kind::Function));
                    self.flushed = true;
                }
                b'c' | b'f' => self.copy_in = false,
                b'H' => self.flushed = true,
                b'd' => {}
                b'X' => {
                    forward = false;
                    to_server.extend_from_slice(&input[run..pos]);
                    flow = Flow::Terminate;
                }
                b'p' => {
                    return Err(ProtocolError::BadValue {
                        tag: 'p',
                        what: "password message after authentication",
                    })
                }
                other => return Err(ProtocolError::UnknownTag(other)),
            }
            pos += total;
            if !forward {
                run = pos;
            }
            if flow == Flow::Terminate {
                break;
            }
        }
        to_server.extend_from_slice(&input[run..pos]);
        input.advance(pos);
        self.emit_synthetic(to_client);
        Ok(flow)
    }

    /// Sends a Parse for `stmt` unless the server has it. `inject`: the
    /// client did not ask for this Parse, so its answer is swallowed;
    /// otherwise the client's own Parse is answered by the proxy when the
    /// server has the statement already.
    fn ensure_prepared(
        &mut self,
        stmt: &Arc<Stmt>,
        srv: &mut ServerSession,
        to_server: &mut BytesMut,
        inject: bool,
    ) {
        if srv.prepared.contains(&stmt.server_name) {
            if !inject {
                self.queue.push_back(Pending {
                    action: Action::Reply(PARSE_COMPLETE),
                    ..Pending::new(Kind::Parse)
                });
            }
            return;
        }
        to_server.extend_from_slice(&stmt.parse_msg);
        srv.prepared.insert(stmt.server_name.clone());
        self.queue.push_back(Pending {
            action: if inject {
                Action::Swallow
            } else {
                Action::Forward
            },
            prepared: Some(stmt.server_name.clone()),
            ..Pending::new(Kind::Parse)
        });
    }

    /// `DEALLOCATE name` of a statement this client prepared under a
    /// proxy-wide name: the client's name is forgotten here.
    fn deallocates_own(&mut self, sql: &[u8]) -> bool {
        // In a failed transaction PostgreSQL refuses it (25P02) and the
        // name stays: the server gives that answer.
        if !self.has_own_statements() || self.tx_status == b'E' || !params::may_have_effects(sql) {
            return false;
        }
        let Some(name) = std::str::from_utf8(sql)
            .ok()
            .and_then(params::deallocate_name)
        else {
            return false;
        };
        self.x
            .as_mut()
            .is_some_and(|x| x.stmts.remove(&name).is_some())
    }

    /// Whether the proxy answers this extended-protocol message itself:
    /// an unnamed Parse of `DEALLOCATE <the client's statement>`, and the
    /// Bind, Describe and Execute of that unnamed statement and portal.
    fn answers_itself(&mut self, tag: u8, body: &[u8]) -> Result<bool, ProtocolError> {
        let unnamed = |b: &[u8]| b.first() == Some(&0);
        let faking = self
            .x
            .as_ref()
            .is_some_and(|x| x.fake_unnamed || x.fake_portal);
        if tag != b'P' && !faking {
            // the common case: one load and out
            return Ok(false);
        }
        Ok(match tag {
            b'P' => {
                let (name, query, _) = frontend::parse_name_and_query(body)?;
                if !name.is_empty() {
                    return Ok(false);
                }
                // every unnamed Parse replaces the unnamed statement
                let fake = self.deallocates_own(query);
                if fake || faking {
                    self.x().fake_unnamed = fake;
                }
                fake
            }
            b'B' => {
                let (portal, name, _) = frontend::bind_statement_name(body)?;
                if !portal.is_empty() {
                    return Ok(false);
                }
                // every Bind to the unnamed portal replaces it
                let x = self.x();
                let fake = name.is_empty() && x.fake_unnamed;
                x.fake_portal = fake;
                fake
            }
            b'D' => {
                let (target, name) = frontend::target_and_name(b'D', body)?;
                name.is_empty()
                    && self.x.as_ref().is_some_and(|x| match target {
                        Target::Statement => x.fake_unnamed,
                        Target::Portal => x.fake_portal,
                    })
            }
            b'E' => unnamed(body) && self.x.as_ref().is_some_and(|x| x.fake_portal),
            _ => false,
        })
    }

    fn has_own_statements(&self) -> bool {
        self.x.as_ref().is_some_and(|x| !x.stmts.is_empty())
    }

    fn synthetic_next(&self) -> bool {
        matches!(
            self.queue.front().map(|p| p.action),
            Some(Action::Reply(_) | Action::Deallocated)
        )
    }

    fn emit_synthetic(&mut self, to_client: &mut BytesMut) {
        while let Some(p) = self.queue.front() {
            match p.action {
                Action::Reply(bytes) => to_client.extend_from_slice(bytes),
                Action::Deallocated => {
                    to_client.extend_from_slice(DEALLOCATE_DONE);
                    let status = TxStatus::from_byte(self.tx_status).unwrap_or(TxStatus::Idle);
                    BackendMessage::ReadyForQuery(status).encode(to_client);
                }
                _ => break,
            }
            self.queue.pop_front();
        }
    }

    /// Consumes every complete server message in `input`.
    pub fn server_messages(
        &mut self,
        input: &mut BytesMut,
        to_client: &mut BytesMut,
        srv: &mut ServerSession,
        params: &mut ClientParams,
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        let mut run = 0;
        loop {
            if self.streaming > 0 {
                // the rest of a streamed message, as far as it has come
                let n = (self.streaming as usize).min(input.len() - pos);
                pos += n;
                self.streaming -= n as u32;
                if self.streaming > 0 {
                    break;
                }
            }
            if self.synthetic_next() {
                to_client.extend_from_slice(&input[run..pos]);
                run = pos;
                self.emit_synthetic(to_client);
            }
            let Some((h, body)) = split_message(&input[pos..], usize::MAX >> 1)? else {
                // A large row or COPY chunk is passed on as it arrives: the
                // proxy never needs to hold all of it (nothing in it is
                // looked at).
                if let Some(h) = wire::peek_header(&input[pos..], usize::MAX >> 1)? {
                    if matches!(h.tag, b'D' | b'd') && h.total_len() > STREAM_ABOVE {
                        let have = input.len() - pos;
                        self.streaming = u32::try_from(h.total_len() - have).map_err(|_| {
                            ProtocolError::BadLength {
                                len: h.total_len() as i64,
                                max: u32::MAX as usize,
                            }
                        })?;
                        pos = input.len();
                    }
                }
                break;
            };
            let total = h.total_len();
            let mut forward = true;
            match h.tag {
                b'Z' => {
                    let status = *body.first().ok_or(ProtocolError::Truncated {
                        tag: 'Z',
                        what: "status",
                    })?;
                    self.tx_status = status;
                    if matches!(
                        self.queue.front().map(|p| p.kind),
                        Some(Kind::Sync | Kind::Query | Kind::Function)
                    ) {
                        self.queue.pop_front();
                    }
                    if status == b'I' {
                        self.commit_changes(srv, params);
                    }
                }
                b'E' => {
                    self.error_seen = true;
                    self.copy_in = false;
                    match self.queue.front().map(|p| p.kind) {
                        Some(Kind::Query | Kind::Function | Kind::Sync) | None => {}
                        Some(_) => {
                            // The server skips everything up to the next Sync.
                            while let Some(p) = self.queue.front() {
                                if p.kind == Kind::Sync {
                                    break;
                                }
                                if let Some(name) = &p.prepared {
                                    srv.prepared.remove(name);
                                }
                                self.queue.pop_front();
                            }
                        }
                    }
                }
                b'G' => {
                    // PostgreSQL ignores Syncs that reach it during COPY IN,
                    // including those a client pipelined behind the Execute
                    // before it knew the statement was a COPY.
                    self.copy_in = true;
                    let head = self.queue.pop_front();
                    self.queue.retain(|p| p.kind != Kind::Sync);
                    if let Some(h) = head {
                        self.queue.push_front(h);
                    }
                }
                b'1' | b'2' | b'3' => {
                    if let Some(p) = self.queue.pop_front() {
                        forward = p.action != Action::Swallow;
                    }
                }
                b'T' | b'n' if self.queue.front().map(|p| p.kind) == Some(Kind::Describe) => {
                    self.queue.pop_front();
                }
                b'C' => {
                    let tag = wire::backend::command_tag_bytes(body)?;
                    if tag == b"ROLLBACK" {
                        self.rollback_seen = true;
                    } else if let Some(verb) = Verb::of_tag(tag) {
                        self.on_tag(verb, srv);
                    }
                    if self.queue.front().map(|p| p.kind) == Some(Kind::Execute) {
                        self.queue.pop_front();
                    }
                }
                b'S' => {
                    // (as bytes: they are in the client's encoding)
                    let mut parts = body.split(|&b| b == 0);
                    if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
                        srv.reported(name, value);
                    }
                }
                b'I' | b's' if self.queue.front().map(|p| p.kind) == Some(Kind::Execute) => {
                    self.queue.pop_front();
                }
                _ => {}
            }
            pos += total;
            if !forward {
                to_client.extend_from_slice(&input[run..pos - total]);
                run = pos;
            }
        }
        to_client.extend_from_slice(&input[run..pos]);
        input.advance(pos);
        Ok(())
    }

    /// How the server will read the strings of the request being read
    /// now. When it has answered everything up to a ReadyForQuery its mode
    /// is the one it last reported (since PostgreSQL 14 a change is
    /// reported just before ReadyForQuery). Otherwise it is not known: a
    /// request before this one (unanswered, or answered but not yet
    /// synced) may have changed it (`SET LOCAL`, `set_config()`), so this
    /// one is read both ways.
    fn strings(&self, srv: &ServerSession) -> Strings {
        if self.queue.is_empty() && !self.unsynced {
            srv.strings
        } else {
            Strings::Either
        }
    }

    fn on_tag(&mut self, verb: Verb, srv: &mut ServerSession) {
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        let Some(i) = head.effects.iter().position(|e| e.verb() == verb) else {
            return;
        };
        match head.effects.remove(i) {
            Effect::Param(c) => self.x().pending_changes.push(c),
            Effect::Listen(ch) => {
                let x = self.x();
                if !x.listening.contains(&ch) {
                    x.listening.push(ch);
                }
            }
            Effect::Unlisten(None) => self.x().listening.clear(),
            Effect::Unlisten(Some(ch)) => self.x().listening.retain(|c| *c != ch),
            Effect::DiscardAll => {
                let x = self.x();
                x.pending_changes.push(ParamChange::ResetSession);
                x.listening.clear();
                x.stmts.clear();
                srv.prepared.clear();
            }
            Effect::DeallocateAll => {
                srv.prepared.clear();
                self.x().stmts.clear();
            }
            Effect::Unmodelled(v) => {
                self.unmodelled_seen = true;
                // A cleanup (RESET ALL) undoes parameters, not a LISTEN or
                // a DEALLOCATE: such a connection is closed instead.
                srv.unknowable |= !matches!(v, Verb::Set | Verb::Reset);
            }
            Effect::Untracked(_) => {}
        }
    }

    /// At the end of a transaction, the SETs it ran are now the client's
    /// and the server's (unless it rolled back).
    fn commit_changes(&mut self, srv: &mut ServerSession, params: &mut ClientParams) {
        let rolled_back =
            std::mem::take(&mut self.rollback_seen) | std::mem::take(&mut self.error_seen);
        if std::mem::take(&mut self.unmodelled_seen) {
            // Whatever else it did, this server's session is not known:
            // the next client gets it cleaned up first.
            srv.applied.mark_unknown();
            srv.synced_with = 0;
        }
        let Some(x) = self.x.as_deref_mut() else {
            return;
        };
        if x.pending_changes.is_empty() {
            return;
        }
        if rolled_back {
            // A ROLLBACK (perhaps only to a savepoint) or an error undid an
            // unknown part of what this transaction SET: drop the changes,
            // and have the next client of this server start from RESET ALL,
            // so no setting can leak from one client to another.
            x.pending_changes.clear();
            srv.applied.mark_unknown();
            srv.synced_with = 0;
            return;
        }
        let in_sync = srv.synced_with == params.stamp;
        for c in x.pending_changes.drain(..) {
            params.apply(&c);
            srv.applied.apply(&c);
        }
        params.stamp = next_stamp();
        // A RESET on the server goes back to its defaults, on the client to
        // its startup values: then the next transaction needs SETs.
        if in_sync && srv.applied == *params.set() {
            srv.synced_with = params.stamp;
        }
    }

    /// Statement names a server must know before `prepared` is dropped:
    /// used when a connection comes back with a reset.
    pub fn forget_server_state(srv: &mut ServerSession) {
        srv.prepared = HashSet::new();
        srv.applied = ParamSet::default();
        srv.synced_with = 0;
    }
}

#[cfg(test)]
mod tests;
