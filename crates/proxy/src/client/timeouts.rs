//! PgBouncer's safety timeouts for a client that holds a server
//! connection: `query_timeout` (the server owes an answer for too long),
//! `idle_transaction_timeout` (the proxy waits for the client inside a
//! transaction for too long) and `client_idle_timeout` (a session-mode
//! client idle outside a transaction; idle clients without a server are
//! ended by the pool upkeep, `end_idle_clients`). All off by default: then
//! no timer is set at all.
use std::time::Duration;

use tokio::time::Instant;

use crate::clock;
use crate::relay::Relay;

/// Which limit a wait ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Query,
    IdleTransaction,
    ClientIdle,
}

pub(super) struct Timeouts {
    query: Duration,
    idle_transaction: Duration,
    client_idle: Duration,
    /// The client's last request.
    last_request: Instant,
    /// The last bytes either way.
    last_activity: Instant,
}

impl Timeouts {
    pub(super) fn new(cfg: &config::ProxyConfig) -> Self {
        let now = clock::deadline(Duration::ZERO);
        Timeouts {
            query: cfg.query_timeout,
            idle_transaction: cfg.idle_transaction_timeout,
            client_idle: cfg.client_idle_timeout,
            last_request: now,
            last_activity: now,
        }
    }

    pub(super) fn any(&self) -> bool {
        !(self.query.is_zero() && self.idle_transaction.is_zero() && self.client_idle.is_zero())
    }

    pub(super) fn client_read(&mut self) {
        if self.any() {
            self.last_request = clock::deadline(Duration::ZERO);
            self.last_activity = self.last_request;
        }
    }

    pub(super) fn server_read(&mut self) {
        if self.any() {
            self.last_activity = clock::deadline(Duration::ZERO);
        }
    }

    /// The limit that applies to the wait that starts now, if any.
    pub(super) fn deadline(&self, relay: &Relay) -> Option<(Instant, Limit)> {
        let (limit, since, which) = if relay.awaits_server() {
            (self.query, self.last_request, Limit::Query)
        } else if relay.in_transaction() {
            (
                self.idle_transaction,
                self.last_activity,
                Limit::IdleTransaction,
            )
        } else {
            (self.client_idle, self.last_activity, Limit::ClientIdle)
        };
        (!limit.is_zero()).then(|| (since + limit, which))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(q: u64, it: u64, ci: u64) -> config::ProxyConfig {
        let mut c = config::parse(
            "[[backends]]\nhost = \"127.0.0.1\"\nport = 1\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
        .proxy;
        c.query_timeout = Duration::from_secs(q);
        c.idle_transaction_timeout = Duration::from_secs(it);
        c.client_idle_timeout = Duration::from_secs(ci);
        c
    }

    #[test]
    fn the_limit_follows_what_the_session_waits_for() {
        use wire::frontend::FrontendMessage as F;
        let reg = crate::relay::Registry::default();
        let mut srv = crate::server::ServerSession::default();
        let mut relay = Relay::new(true, 1 << 20);
        let off = Timeouts::new(&cfg(0, 0, 0));
        assert!(off.deadline(&relay).is_none(), "off by default");
        let t = Timeouts::new(&cfg(1, 2, 3));
        assert_eq!(t.deadline(&relay).unwrap().1, Limit::ClientIdle);
        let send = |relay: &mut Relay, srv: &mut _, m: F| {
            let mut b = bytes::BytesMut::new();
            m.encode(&mut b);
            let (mut s, mut c) = (bytes::BytesMut::new(), bytes::BytesMut::new());
            relay
                .client_messages(&mut b, &mut s, &mut c, srv, &reg)
                .unwrap();
        };
        send(&mut relay, &mut srv, F::Query("begin".into()));
        assert_eq!(t.deadline(&relay).unwrap().1, Limit::Query);
        let mut answer = bytes::BytesMut::new();
        wire::backend::BackendMessage::CommandComplete("BEGIN".into()).encode(&mut answer);
        wire::backend::BackendMessage::ReadyForQuery(wire::backend::TxStatus::InTransaction)
            .encode(&mut answer);
        let mut params = crate::relay::ClientParams::default();
        relay
            .server_messages(
                &mut answer,
                &mut bytes::BytesMut::new(),
                &mut srv,
                &mut params,
            )
            .unwrap();
        let (at, which) = t.deadline(&relay).unwrap();
        assert_eq!(which, Limit::IdleTransaction);
        assert_eq!(at, t.last_activity + Duration::from_secs(2));
        // only the limit that applies counts
        let only_query = Timeouts::new(&cfg(1, 0, 0));
        assert!(only_query.deadline(&relay).is_none());
    }
}
