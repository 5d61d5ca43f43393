//! Requests from the client: queue entries, statement name rewriting,
//! answers the proxy gives itself.
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use wire::frame::split_message;
use wire::frontend::{self, Target};
use wire::ProtocolError;

use super::{
    Action, Flow, Kind, Pending, Registry, Relay, Stmt, BIND_COMPLETE, CLOSE_COMPLETE,
    DEALLOCATE_DONE, NO_DATA, NO_PARAMS_NO_DATA, PARSE_COMPLETE,
};
use crate::params;
use crate::server::ServerSession;

impl Relay {
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
                b'S' | b'X' => {}
                _ if self.discarding => {
                    // The server would ignore it (PostgreSQL reads and drops
                    // every message but Sync after an extended-protocol
                    // error): it is not sent, queued or answered, and has
                    // no effect here either.
                    pos += total;
                    to_server.extend_from_slice(&input[run..pos - total]);
                    run = pos;
                    continue;
                }
                _ => {}
            }
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
                    self.discarding = false;
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
}
