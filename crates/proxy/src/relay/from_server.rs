//! Answers from the server: which request each completes, what took
//! effect, the proxy's own answers in their place in the stream.
use std::collections::HashSet;

use bytes::{Buf, BytesMut};
use wire::backend::{BackendMessage, TxStatus};
use wire::frame::split_message;
use wire::ProtocolError;

use super::{next_stamp, Action, ClientParams, Kind, Relay, DEALLOCATE_DONE, STREAM_ABOVE};
use crate::params::{Effect, ParamChange, ParamSet, Strings, Verb};
use crate::server::ServerSession;

impl Relay {
    pub(super) fn synthetic_next(&self) -> bool {
        matches!(
            self.queue.front().map(|p| p.action),
            Some(Action::Reply(_) | Action::Deallocated)
        )
    }

    pub(super) fn emit_synthetic(&mut self, to_client: &mut BytesMut) {
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
        let mut last = false;
        while !last {
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
                    // Transaction mode: with this the client's transaction
                    // is over. What the server sends after it (a dying
                    // backend's FATAL) is no client's: it stays in `input`.
                    last = self.rewrite && self.is_idle();
                }
                b'E' => {
                    self.error_seen = true;
                    self.x().error_classes.push(sqlstate_class(body));
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
                            // No Sync sent yet: what the client sends until
                            // its Sync is discarded too.
                            self.discarding = self.queue.is_empty();
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
                    } else if tag.starts_with(b"CREATE ")
                        || tag.starts_with(b"ALTER ")
                        || tag.starts_with(b"DROP ")
                    {
                        self.ddl_seen = true;
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
    pub(super) fn strings(&self, srv: &ServerSession) -> Strings {
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

/// The class (first two characters) of an ErrorResponse's SQLSTATE, `??`
/// when it has none.
fn sqlstate_class(body: &[u8]) -> [u8; 2] {
    let mut fields = body;
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if kind == b'C' && end >= 2 {
            return [rest[0], rest[1]];
        }
        fields = rest.get(end + 1..).unwrap_or(&[]);
    }
    *b"??"
}
