//! A logged-in client of a pooled database: waits for the client's next
//! request, takes a server connection for it, relays both ways, and gives
//! the connection back when the transaction (transaction mode) or the
//! session (session mode) ends.
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use wire::fields::sqlstate;

use super::timeouts::{Limit, Timeouts};
use crate::bufpool;
use crate::io::{send_fatal, send_fields};
use crate::params::ParamSet;
use crate::pool::{Checkout, CheckoutError, Pool};
use crate::relay::{ClientParams, Flow, Relay};
use crate::server::ServerError;
use crate::state::{ClientInfo, ClientState, Control, ServerRef, State};
use crate::stream::Stream;

const READ_RESERVE: usize = 4096;

/// Room to read into without regrowing for every read.
fn reserve(b: &mut BytesMut) {
    if b.capacity() - b.len() < READ_RESERVE {
        b.reserve(READ_RESERVE);
    }
}

/// Why a session ended.
pub(crate) enum End {
    /// The client closed or sent Terminate.
    Done,
    ClientIo,
    Protocol(wire::ProtocolError),
    ServerLost(String),
    ServerError(wire::ErrorFields),
    PrimaryChanged,
    Shutdown,
    Checkout(CheckoutError),
    /// A safety timeout (`query_timeout`, `idle_transaction_timeout`,
    /// `client_idle_timeout`) ran out.
    Timeout(Limit),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Done => "client left".into(),
            End::ClientIo => "client connection error".into(),
            End::Protocol(e) => format!("protocol violation: {e}"),
            End::ServerLost(e) => format!("server lost: {e}"),
            End::ServerError(f) => format!("server error: {f}"),
            End::PrimaryChanged => "primary changed".into(),
            End::Shutdown => "shutdown".into(),
            End::Checkout(e) => format!("no server: {e}"),
            End::Timeout(l) => format!("{l:?} timeout"),
        }
    }
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Control(u8),
}

pub struct Session {
    /// The proxy's state; dropping it ends the client's count.
    state: super::login::Counted,
    info: Arc<ClientInfo>,
    client: Stream,
    cbuf: BytesMut,
    pool: Arc<Pool>,
    relay: Relay,
    params: ClientParams,
    server: Option<Checkout>,
    /// Read balancing: this session's routing state, once it has one.
    route: Option<Box<crate::route::SessionRoute>>,
    /// A read sent to a standby, as it was before the relay took it, kept
    /// until the standby answers: lost with its connection before a byte
    /// of answer, it runs again on the primary.
    retry: Option<Box<Retry>>,
}

/// What a read sent to a standby needs to run again elsewhere.
struct Retry {
    cbuf: BytesMut,
    relay: Relay,
}

impl Session {
    pub fn new(
        state: super::login::Counted,
        info: Arc<ClientInfo>,
        client: Stream,
        cbuf: BytesMut,
        pool: Arc<Pool>,
        params: ParamSet,
        mut server: Option<Checkout>,
    ) -> Self {
        let cfg = state.config();
        let transaction_mode = pool.mode() == config::PoolMode::Transaction;
        if let Some(co) = &mut server {
            // (idle until its first request: client_idle_timeout applies)
            *info.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server_ref(co));
        }
        Session {
            relay: Relay::new(transaction_mode, cfg.proxy.max_message_size),
            params: ClientParams::new(params),
            state,
            info,
            client,
            cbuf,
            pool,
            server,
            route: None,
            retry: None,
        }
    }

    /// Runs the transaction for a buffered request, giving the session
    /// back with the outcome (the future owns the session: see
    /// [`super::task::ClientTask`]).
    pub(crate) async fn transaction_owned(mut self: Box<Self>) -> (Box<Self>, Result<(), End>) {
        let r = self.transaction().await;
        (self, r)
    }

    /// Ready once a whole request from the client is buffered. Holds no
    /// server connection and, while waiting, no buffer.
    pub(crate) fn poll_request(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        loop {
            match self.relay.first_tag(&self.cbuf) {
                Err(e) => return Poll::Ready(Err(End::Protocol(e))),
                Ok(Some(b'X')) => return Poll::Ready(Err(End::Done)),
                Ok(Some(_)) => return Poll::Ready(Ok(())),
                Ok(None) => {}
            }
            if self.state.is_shutting_down() {
                return Poll::Ready(Err(End::Shutdown));
            }
            if let Poll::Ready(bits) = self.info.control.poll(cx) {
                if bits & Control::IDLE_TIMEOUT != 0 {
                    let limit = self.state.config().proxy.client_idle_timeout;
                    if !limit.is_zero() && self.info.state_age() >= limit {
                        return Poll::Ready(Err(End::Timeout(Limit::ClientIdle)));
                    }
                }
                // not holding a server: a new primary concerns the next
                // transaction only (a shutdown was seen above)
                self.info
                    .control
                    .clear(bits & (Control::PRIMARY_CHANGED | Control::IDLE_TIMEOUT));
                if bits & (Control::PRIMARY_CHANGED | Control::IDLE_TIMEOUT) != 0 {
                    continue;
                }
            }
            bufpool::release_if_empty(&mut self.cbuf);
            if let Stream::Plain(tcp) = &self.client {
                // Wait for data before taking a buffer to read it into.
                match tcp.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(End::ClientIo)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            bufpool::ensure(&mut self.cbuf);
            self.cbuf.reserve(READ_RESERVE);
            // poll_read (not try_read) clears the readiness on a short
            // read: no extra recv() returning EAGAIN per request.
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cbuf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(End::Done)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(End::ClientIo)),
            }
        }
    }

    /// Ends the session at once when nothing is left to send or clean up
    /// (the client left while holding no server connection: the usual
    /// end); otherwise gives it back for [`Session::finish`].
    pub(crate) fn finish_now(self: Box<Self>, end: End) -> Option<(Box<Self>, End)> {
        if !matches!(end, End::Done | End::ClientIo) || self.server.is_some() {
            return Some((self, end));
        }
        self.log_end(&end);
        self.state.unregister_client(&self.info);
        None
    }

    fn log_end(&self, end: &End) {
        tracing::debug!(
            client = self.info.id,
            reason = end.describe(),
            "session ended"
        );
    }

    pub(crate) async fn finish(mut self: Box<Self>, end: End) {
        let clean = matches!(end, End::Done);
        // Ends after which a running statement must not go on.
        let shutdown = matches!(end, End::Shutdown | End::Timeout(Limit::Query));
        self.log_end(&end);
        let end = if self.relay.mid_message() {
            // Part of a large row went out: an error appended now would be
            // read as the rest of it. The client sees the connection close.
            tracing::info!(
                client = self.info.id,
                reason = end.describe(),
                "session ended in the middle of a message"
            );
            End::ClientIo
        } else {
            end
        };
        match end {
            End::Done | End::ClientIo => {}
            End::Protocol(e) => {
                send_fatal(
                    &mut self.client,
                    sqlstate::PROTOCOL_VIOLATION,
                    e.to_string(),
                )
                .await
            }
            End::ServerLost(e) => {
                send_fatal(
                    &mut self.client,
                    sqlstate::CONNECTION_FAILURE,
                    format!("server connection lost: {e}"),
                )
                .await
            }
            End::ServerError(f) => send_fields(&mut self.client, f).await,
            End::PrimaryChanged => {
                send_fatal(
                    &mut self.client,
                    sqlstate::CONNECTION_FAILURE,
                    "the primary changed while this transaction was open; it was not committed",
                )
                .await
            }
            End::Shutdown => {
                send_fatal(
                    &mut self.client,
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgwarden is shutting down",
                )
                .await
            }
            End::Timeout(limit) => {
                let (code, msg) = match limit {
                    Limit::Query => (
                        sqlstate::QUERY_CANCELED,
                        "query_timeout: the query ran too long",
                    ),
                    Limit::IdleTransaction => (
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "idle_transaction_timeout: the client was idle in a transaction too long",
                    ),
                    Limit::ClientIdle => (
                        sqlstate::IDLE_SESSION_TIMEOUT,
                        "client_idle_timeout: the client was idle too long",
                    ),
                };
                send_fatal(&mut self.client, code, msg).await
            }
            End::Checkout(e) => {
                let code = match e {
                    CheckoutError::Timeout(_) => sqlstate::TOO_MANY_CONNECTIONS,
                    _ => sqlstate::CONNECTION_FAILURE,
                };
                match e {
                    CheckoutError::Server(ServerError::Rejected(f)) => {
                        send_fields(&mut self.client, f).await
                    }
                    e => send_fatal(&mut self.client, code, e.to_string()).await,
                }
            }
        }
        if let Some(mut co) = self.server.take() {
            let reset = self.state.config().proxy.server_reset_query.clone();
            let conn = co.conn();
            if shutdown && self.relay.awaits_server() {
                // Ended at the shutdown deadline while a statement runs: the
                // client was told it is terminated, so the statement must
                // not go on (and commit) after the proxy closes.
                // (A client that leaves while a statement runs has its
                // server connection closed, not cancelled: what PostgreSQL
                // does with the statement is then what it does for a
                // client of its own that goes away.)
                let _ =
                    Box::pin(super::login::send_cancel(&conn.addr, conn.pid, conn.secret)).await;
            }
            if !clean || self.relay.in_transaction() || self.relay.is_listening() {
                conn.broken = true;
            } else if !self.relay.transaction_mode()
                && !self.state.config().proxy.session_server_reuse
            {
                // The client was told this server's pid: no later client
                // gets the same process (as with direct connections).
                conn.broken = true;
            } else if !self.relay.transaction_mode() && !reset.is_empty() {
                match tokio::time::timeout(Duration::from_secs(5), conn.simple_query(&reset)).await
                {
                    Ok(Ok(_)) => Relay::forget_server_state(&mut conn.session),
                    _ => conn.broken = true,
                }
            }
            self.detach_info();
        }
        self.state.unregister_client(&self.info);
    }

    /// Takes a server connection for the buffered request and relays both
    /// ways until the connection can go back to the pool (transaction
    /// mode) or the session ends (session mode).
    async fn transaction(&mut self) -> Result<(), End> {
        // read balancing: `SHOW pgwarden.commit_lsn` is the proxy's to answer
        if let Some((used, answer)) = super::commit_lsn::answer(
            &self.state,
            &self.pool,
            &self.cbuf,
            &self.relay,
            &self.route,
        )
        .await
        {
            self.cbuf.advance(used);
            return self
                .client
                .send_all(&answer)
                .await
                .map_err(|_| End::ClientIo);
        }
        self.attach(false).await?;
        self.keep_for_retry();
        let mut timeouts = Timeouts::new(&self.state.config().proxy);
        self.pump_client().await?;
        while self.server.is_some() {
            let deadline = timeouts.deadline(&self.relay);
            let event = std::future::poll_fn(|cx| self.poll_event(cx));
            let event = match deadline {
                None => event.await,
                Some((at, limit)) => tokio::time::timeout_at(at, event)
                    .await
                    .map_err(|_| End::Timeout(limit))?,
            };
            match event {
                Event::Server(Ok(0) | Err(_)) if self.retry.is_some() => {
                    self.retry_on_primary().await?
                }
                Event::Server(Ok(_)) if self.retry.is_some() => {
                    let conn = self.server.as_mut().expect("attached").conn();
                    match going_away(&conn.rbuf) {
                        // the rest of its first message comes next
                        None => {}
                        Some(true) => self.retry_on_primary().await?,
                        Some(false) => {
                            timeouts.server_read();
                            self.pump_server().await?
                        }
                    }
                }
                Event::Client(Ok(0)) => return Err(End::Done),
                Event::Client(Ok(_)) => {
                    // more from the client: the read is no longer alone
                    self.retry = None;
                    timeouts.client_read();
                    self.pump_client().await?
                }
                Event::Client(Err(_)) => return Err(End::ClientIo),
                Event::Server(Ok(0)) => {
                    return Err(End::ServerLost("server closed the connection".into()))
                }
                Event::Server(Err(e)) => return Err(End::ServerLost(e.to_string())),
                Event::Server(Ok(_)) => {
                    timeouts.server_read();
                    self.pump_server().await?
                }
                Event::Control(bits) => {
                    // Shutdown: the transaction may finish; the idle wait
                    // closes. At the shutdown deadline it may not.
                    if bits & Control::TERMINATE != 0 {
                        return Err(End::Shutdown);
                    }
                    self.info.control.clear(bits);
                    if bits & Control::PRIMARY_CHANGED != 0 {
                        let epoch = self.state.topology.primary().map(|t| t.epoch);
                        if epoch != Some(self.server.as_mut().expect("attached").conn().epoch) {
                            return Err(End::PrimaryChanged);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The next thing to do while holding a server connection. Writes
    /// pending bytes to the server as it can take them, without ever
    /// blocking on it: a server busy sending answers while the client
    /// pipelines more requests must still be read, or both would wait on
    /// each other. Reads the client whenever nothing is left to write to
    /// the server, also while the server works: a client that goes away
    /// is noticed at once, whatever its server is doing.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // Read balancing: a request was routed by what it holds, so what
        // the client sends after it, while the server still answers it
        // outside a transaction, waits for the next routing decision.
        let hold =
            self.route.is_some() && self.relay.awaits_server() && self.relay.tx_status() == b'I';
        let conn = self.server.as_mut().expect("attached").conn();
        let mut flush = false;
        while !conn.sout.is_empty() {
            match Pin::new(&mut conn.stream).poll_write(cx, &conn.sout) {
                Poll::Ready(Ok(0)) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Poll::Ready(Event::Server(Err(e)));
                }
                Poll::Ready(Ok(n)) => {
                    conn.sout.advance(n);
                    flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::Server(Err(e))),
                Poll::Pending => break,
            }
        }
        if flush && conn.sout.is_empty() {
            // TLS keeps records it could not send yet (a no-op on TCP).
            if let Poll::Ready(Err(e)) = Pin::new(&mut conn.stream).poll_flush(cx) {
                return Poll::Ready(Event::Server(Err(e)));
            }
        }
        reserve(&mut conn.rbuf);
        if let Poll::Ready(r) =
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf)
        {
            if matches!(r, Ok(n) if n > 0) {
                conn.note_heard();
            }
            return Poll::Ready(Event::Server(r));
        }
        // The client is read whenever nothing waits to go to the server,
        // also while the server works: a client that closes its
        // connection then is noticed at once (its server connection is
        // not held for nothing), and what it pipelines goes on.
        if conn.sout.is_empty() && !hold {
            reserve(&mut self.cbuf);
            if let Poll::Ready(r) =
                tokio_util::io::poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cbuf)
            {
                return Poll::Ready(Event::Client(r));
            }
        }
        match self.info.control.poll(cx) {
            Poll::Ready(bits) => Poll::Ready(Event::Control(bits)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Keeps what the request just routed to a standby needs to run again
    /// on the primary, if its server connection is lost before it answers
    /// (a standby killed or gone: a read has nothing to undo).
    fn keep_for_retry(&mut self) {
        let on_standby = self
            .server
            .as_ref()
            .is_some_and(|co| co.pool().fixed().is_some());
        self.retry = (on_standby && self.relay.tx_status() == b'I').then(|| {
            Box::new(Retry {
                cbuf: self.cbuf.clone(),
                relay: self.relay.clone(),
            })
        });
    }

    /// The standby's connection was lost before a byte of answer and
    /// before anything went to the client: the read runs on the primary,
    /// as if it had been sent there.
    async fn retry_on_primary(&mut self) -> Result<(), End> {
        let Retry { cbuf, relay } = *self.retry.take().expect("a read kept for retry");
        if let Some(mut co) = self.server.take() {
            let conn = co.conn();
            conn.broken = true;
            tracing::info!(standby = %conn.addr, "a standby's connection was lost before it answered: the read runs on the primary");
        }
        self.detach_info();
        (self.cbuf, self.relay) = (cbuf, relay);
        self.state
            .router
            .stats
            .standby_retries
            .fetch_add(1, Ordering::Relaxed);
        self.attach(true).await?;
        self.pump_client().await
    }

    /// Takes a server connection (the primary's if `to_primary`, else where
    /// the request is routed) and brings its session parameters in line
    /// with the client's.
    async fn attach(&mut self, to_primary: bool) -> Result<(), End> {
        self.info.set_state(ClientState::Waiting);
        // A change of primary seen from here on concerns this connection.
        self.info.control.clear(Control::PRIMARY_CHANGED);
        let primary = self.state.topology.primary().map(|t| t.epoch);
        let mut co = match self.server.take() {
            // taken at login (session mode), still on the primary
            Some(co) if Some(co.conn_ref().epoch) == primary => co,
            held => {
                if let Some(mut old) = held {
                    old.conn().broken = true;
                }
                if to_primary {
                    checkout(&self.state, &self.pool)
                        .await
                        .map_err(End::Checkout)?
                } else {
                    super::routing::routed_checkout(
                        &self.state,
                        &self.pool,
                        &self.cbuf,
                        &self.relay,
                        &mut self.route,
                        &self.params,
                    )
                    .await
                    .map_err(End::Checkout)?
                }
            }
        };
        if let Err(e) = self.sync_params(&mut co).await {
            co.conn().broken = true;
            match e {
                // (a backend whose postmaster died says so: class 57P)
                ServerError::Rejected(f) if !going_away_code(&f) => {
                    return Err(End::ServerError(f))
                }
                e if co.pool().fixed().is_none() => return Err(End::ServerLost(e.to_string())),
                e => {
                    // a standby's pooled connection, found dead: the
                    // request has not gone anywhere yet
                    tracing::info!(standby = %co.conn_ref().addr, error = %e, "a standby's connection was lost: the request runs on the primary");
                    co = checkout(&self.state, &self.pool)
                        .await
                        .map_err(End::Checkout)?;
                    if let Err(e) = self.sync_params(&mut co).await {
                        co.conn().broken = true;
                        return Err(match e {
                            ServerError::Rejected(f) => End::ServerError(f),
                            e => End::ServerLost(e.to_string()),
                        });
                    }
                }
            }
        }
        *self.info.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server_ref(&mut co));
        self.info.set_state(ClientState::Active);
        self.server = Some(co);
        Ok(())
    }

    /// Brings the server session's parameters in line with the client's.
    /// Usually the server already has the same values (clients of one
    /// application set the same ones): then nothing is sent.
    async fn sync_params(&self, co: &mut Checkout) -> Result<(), ServerError> {
        let conn = co.conn();
        if conn.session.synced_with != self.params.stamp {
            if let Some(sql) = self.params.set().diff_sql(&conn.session.applied) {
                Box::pin(conn.simple_query(&sql)).await?;
                conn.session.applied = self.params.set().clone();
            }
            conn.session.synced_with = self.params.stamp;
        }
        Ok(())
    }

    fn detach_info(&self) {
        *self.info.server.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.info.set_state(ClientState::Idle);
    }

    async fn maybe_detach(&mut self) -> Result<(), End> {
        if self.relay.transaction_mode() && self.relay.is_idle() {
            // Bytes that expect no answer (a lone Flush) still go out first.
            let conn = self.server.as_mut().expect("attached").conn();
            if !conn.sout.is_empty() {
                conn.stream
                    .send_all(&conn.sout)
                    .await
                    .map_err(|e| End::ServerLost(e.to_string()))?;
                conn.sout.clear();
            }
            if !conn.rbuf.is_empty() {
                // the server sent more than the transaction's answer: it
                // is going away (or out of step); no client gets it
                tracing::debug!(server = %conn.addr, bytes = conn.rbuf.len(), "unsolicited bytes after the transaction: the connection is closed");
                conn.broken = true;
            }
            conn.note_transaction();
            let ddl = self.relay.take_ddl_seen();
            if self.route.as_ref().is_some_and(|r| r.wrote) {
                super::routing::after_transaction(
                    &self.state,
                    &self.pool,
                    &mut self.route,
                    &self.info.names.database,
                    ddl,
                );
            }
            self.server = None;
            self.detach_info();
            self.state.stats.xacts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn pump_client(&mut self) -> Result<(), End> {
        let conn = self.server.as_mut().expect("attached").conn();
        let flow = self
            .relay
            .client_messages(
                &mut self.cbuf,
                &mut conn.sout,
                &mut conn.cout,
                &mut conn.session,
                &self.state.registry,
            )
            .map_err(End::Protocol)?;
        // Bytes for the server stay in conn.sout: poll_event writes them.
        if !conn.cout.is_empty() {
            // the proxy answered part of it itself: it cannot run again
            self.retry = None;
            self.client
                .send_all(&conn.cout)
                .await
                .map_err(|_| End::ClientIo)?;
            conn.cout.clear();
        }
        if flow == Flow::Terminate {
            return Err(End::Done);
        }
        self.maybe_detach().await?;
        Ok(())
    }

    async fn pump_server(&mut self) -> Result<(), End> {
        // the server answers: the read runs where it is
        self.retry = None;
        let conn = self.server.as_mut().expect("attached").conn();
        self.relay
            .server_messages(
                &mut conn.rbuf,
                &mut conn.cout,
                &mut conn.session,
                &mut self.params,
            )
            .map_err(|e| End::ServerLost(e.to_string()))?;
        for class in self.relay.take_error_classes() {
            self.state.stats.count_error(class);
        }
        if !conn.cout.is_empty() {
            tracing::trace!(bytes = ?&conn.cout[..], "to client");
            self.client
                .send_all(&conn.cout)
                .await
                .map_err(|_| End::ClientIo)?;
            conn.cout.clear();
        }
        self.maybe_detach().await?;
        Ok(())
    }
}

/// Whether a server's first answer says it is going away without running
/// the request: an ErrorResponse of class 57P (its postmaster died or
/// shuts down, as a backend whose postmaster was killed tells the client it
/// then hears from). None: that first message is not whole yet.
fn going_away(rbuf: &[u8]) -> Option<bool> {
    match rbuf {
        [] => None,
        [b'E', rest @ ..] => {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let body = rest.get(4..len.max(4))?;
            Some(matches!(
                wire::backend::BackendMessage::decode(b'E', body),
                Ok(wire::backend::BackendMessage::ErrorResponse(f)) if going_away_code(&f)
            ))
        }
        _ => Some(false),
    }
}

/// An error of class 57P: the server shuts down or its postmaster died.
fn going_away_code(f: &wire::ErrorFields) -> bool {
    f.code().is_some_and(|c| c.starts_with("57P"))
}

/// Takes a server connection from `pool`, waiting out a PAUSE (which
/// waits for every connection to be back, so one taken while it began is
/// given back).
pub(crate) async fn checkout(state: &State, pool: &Arc<Pool>) -> Result<Checkout, CheckoutError> {
    loop {
        if state.is_paused() {
            Box::pin(state.wait_resumed()).await;
        }
        let co = pool.checkout(state.query_wait()).await?;
        if !state.is_paused() {
            return Ok(co);
        }
    }
}

/// What other tasks see of the server connection a client holds.
fn server_ref(co: &mut Checkout) -> Arc<ServerRef> {
    let conn = co.conn();
    conn.shared
        .get_or_insert_with(|| {
            Arc::new(ServerRef {
                addr: conn.addr.clone(),
                pid: conn.pid,
                secret: conn.secret,
                id: conn.id,
            })
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    /// Every idle client keeps its task and its session in memory: both
    /// must stay small (10,000 idle clients should fit in a few MB).
    #[tokio::test]
    async fn idle_client_state_stays_small() {
        let cfg = config::parse(
            "[[backends]]\nhost = \"127.0.0.1\"\nport = 1\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let state = State::new(cfg, None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let task = crate::client::handle(state, tcp, addr);
        eprintln!(
            "task future {} B, Session {} B, Relay {} B, ClientInfo {} B",
            std::mem::size_of_val(&task),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Relay>(),
            std::mem::size_of::<ClientInfo>()
        );
        // tokio adds ~100 bytes to a task's future, in 128-byte steps.
        assert!(
            std::mem::size_of_val(&task) <= 24,
            "client task future: {} bytes",
            std::mem::size_of_val(&task)
        );
        // (208: the routing state and a read kept to run again are
        // pointers, made on first use)
        assert!(
            std::mem::size_of::<Session>() <= 208,
            "Session: {} bytes",
            std::mem::size_of::<Session>()
        );
        assert!(
            std::mem::size_of::<ClientInfo>() <= 96,
            "ClientInfo: {} bytes",
            std::mem::size_of::<ClientInfo>()
        );
    }
}
