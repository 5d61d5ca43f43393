//! Proxy-wide names for named prepared statements (transaction mode).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

use crate::params::{self, Effect, Strings};

/// A statement prepared under a proxy-wide name.
#[derive(Debug)]
pub struct Stmt {
    pub server_name: Arc<str>,
    /// The whole Parse message under the server name, ready to send.
    pub parse_msg: Bytes,
    pub effects: Vec<Effect>,
}

/// Registry size at which statements no client holds are dropped.
pub(super) const REGISTRY_SWEEP_AT: usize = 10_000;

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
    pub(super) fn get(
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
