//! Read/write splitting: where a client's next transaction runs, decided
//! before it takes a server connection (transaction pool mode only: a
//! session-mode client keeps the primary).
//!
//! A request goes to a standby only when the whole of it is buffered (a
//! simple Query, or extended-protocol messages up to a Sync), every
//! statement in it may run on a standby ([`sql::Route::Standby`], or
//! [`sql::Route::AnyNode`] beside one), the session holds nothing only the
//! primary has (a temporary table, a session advisory lock, a cursor WITH
//! HOLD: [`sql::SessionState`]), and a standby is up, streaming and within
//! `max_replica_lag`. With `consistency = read_your_writes`, a client's
//! read after its own write goes to a standby only once that standby has
//! replayed the primary's WAL position read right after the write ended
//! (checked on the standby's connection, waiting up to
//! `read_your_writes_timeout`); otherwise to the primary.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::frame::split_message;

use crate::pick::Candidate;
use crate::relay::Relay;
use crate::topology::Topology;

/// How often a database's function catalog is read again.
const CATALOG_REFRESH: Duration = Duration::from_secs(60);

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// May run on a standby.
    Standby,
    /// Must run on the primary; `writes`: it may write (its WAL position
    /// counts for read-your-writes).
    Primary { writes: bool },
}

/// A client session's routing state (boxed in the session, made on the
/// first routed request).
#[derive(Debug, Default)]
pub struct SessionRoute {
    state: sql::SessionState,
    /// The primary's WAL position after this client's last write (0: none;
    /// `u64::MAX`: not known, reads go to the primary).
    pub min_lsn: u64,
    /// When this client's last write transaction ended.
    pub write_ended: Option<Instant>,
    /// When `min_lsn` was asked of the primary.
    pub lsn_at: Option<Instant>,
    /// The transaction under way runs on the primary and may write.
    pub wrote: bool,
    /// ...and changes the schema (the function catalog may change).
    pub ddl: bool,
    /// A write transaction of this session has ended (stickiness
    /// `session`).
    pub ever_wrote: bool,
    /// Where reads go when the session has not said (`SET
    /// pgwarden.route`): its startup option, or the config's default for
    /// its application, user or database.
    pub default_route: Option<sql::RouteOverride>,
    /// The node this connection reads from (`read_affinity =
    /// "connection"`), while it may serve reads.
    pub reads_from: Option<String>,
}

impl SessionRoute {
    /// What the session asked for, else its default.
    pub fn route_override(&self) -> Option<sql::RouteOverride> {
        self.state.route_override().or(self.default_route)
    }
}

/// A database's functions and their volatility, from the primary.
#[derive(Default)]
struct Catalog {
    procs: Arc<sql::ProcCatalog>,
    /// When it was read (None: never; a read is under way when `loading`).
    read_at: Option<Instant>,
    loading: bool,
    /// A read has ended once (fresh or not).
    ever_read: bool,
    /// Bumped when the catalog may have changed (DDL through the proxy): a
    /// read begun before does not count as fresh.
    generation: u64,
}

#[derive(Default)]
pub struct RouteStats {
    pub to_standby: AtomicU64,
    pub to_primary: AtomicU64,
    /// Reads after a write that found no standby caught up in time.
    pub ryw_fallbacks: AtomicU64,
    /// Reads whose standby connection was lost before it answered, run
    /// again on the primary.
    pub standby_retries: AtomicU64,
}

pub struct Router {
    cache: sql::Cache,
    catalogs: Mutex<HashMap<Arc<str>, Catalog>>,
    next: AtomicUsize,
    /// Replay positions last seen per standby address.
    replayed: Mutex<HashMap<String, u64>>,
    /// The primary's WAL position last read, and when it was asked for.
    primary_lsn: Mutex<Option<(Instant, u64)>>,
    /// Standbys left out for lag, until they are back within half of it.
    lagging: Mutex<std::collections::HashSet<String>>,
    /// When a write through this proxy last ended, per read-your-writes
    /// scope wider than a connection (database and user, or "" for all).
    scope_writes: Mutex<HashMap<String, Instant>>,
    pub stats: RouteStats,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            cache: sql::Cache::default(),
            catalogs: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            replayed: Mutex::new(HashMap::new()),
            primary_lsn: Mutex::new(None),
            lagging: Mutex::default(),
            scope_writes: Mutex::default(),
            stats: RouteStats::default(),
        }
    }
}

impl Router {
    pub fn cache_stats(&self) -> sql::CacheStats {
        self.cache.stats()
    }

    /// Classifies the request buffered in `input` (whole messages only).
    /// Also returns whether the database's catalog should be (re)read.
    pub fn classify(
        &self,
        input: &[u8],
        max_message: usize,
        relay: &Relay,
        session: &mut SessionRoute,
        database: &Arc<str>,
    ) -> (Want, bool) {
        let (procs, stale) = self.procs(database);
        let mut texts: Vec<std::borrow::Cow<'_, str>> = Vec::new();
        let mut rest = input;
        let mut complete = false;
        let mut unnamed_parsed = false;
        // runs a statement (not only prepares or describes one)
        let mut runs = false;
        while let Ok(Some((h, body))) = split_message(rest, max_message) {
            rest = &rest[h.total_len()..];
            // what runs on this connection: every whole message buffered,
            // the last of them ending a request
            complete = matches!(h.tag, b'Q' | b'S');
            runs |= matches!(h.tag, b'Q' | b'E');
            match h.tag {
                b'Q' => match wire::frontend::query_bytes(body) {
                    Ok(q) => texts.push(String::from_utf8_lossy(q)),
                    Err(_) => return (Want::Primary { writes: true }, stale),
                },
                b'P' => match wire::frontend::parse_name_and_query(body) {
                    Ok((name, q, _)) => {
                        unnamed_parsed |= name.is_empty();
                        texts.push(String::from_utf8_lossy(q))
                    }
                    Err(_) => return (Want::Primary { writes: true }, stale),
                },
                b'B' => match wire::frontend::bind_statement_name(body) {
                    // the unnamed statement, parsed earlier in this request
                    Ok((_, "", _)) if unnamed_parsed => {}
                    // ...or in an earlier one: its text is not known here
                    Ok((_, "", _)) => return (Want::Primary { writes: true }, stale),
                    Ok((_, name, _)) => match relay.statement_query(name) {
                        Some(q) => texts.push(q.into()),
                        None => return (Want::Primary { writes: true }, stale),
                    },
                    Err(_) => return (Want::Primary { writes: true }, stale),
                },
                b'S' | b'E' | b'D' | b'C' | b'H' => {}
                // function calls, COPY data: the primary
                _ => return (Want::Primary { writes: true }, stale),
            }
        }
        if !complete {
            // the rest is not here yet: it may write
            return (Want::Primary { writes: true }, stale);
        }
        if texts.is_empty() || !runs {
            // a Parse or Describe alone: the primary, where the statement's
            // execution will look for it if it is the unnamed one
            return (Want::Primary { writes: false }, stale);
        }
        let mut want = Want::Primary { writes: false };
        let mut ddl = false;
        for t in &texts {
            let class = self.cache.classify(
                t,
                procs.as_ref(),
                &session.state.view(sql::Strings::Standard),
            );
            session.state.apply(class.effects());

            match class.route {
                sql::Route::Standby => {
                    if want == (Want::Primary { writes: false }) {
                        want = Want::Standby;
                    }
                }
                sql::Route::AnyNode => {}
                sql::Route::Primary(reason) => {
                    ddl |= reason == sql::Reason::Ddl;
                    want = Want::Primary { writes: true };
                    break;
                }
            }
        }
        // a function may be created or changed: the catalog is read again
        // once this transaction has ended
        session.ddl |= ddl;
        let forced = session.state.pinned_to_primary()
            || session.route_override() == Some(sql::RouteOverride::Primary);
        if forced && want == Want::Standby {
            want = Want::Primary { writes: false };
        }
        (want, stale)
    }

    /// The node for a read (see [`crate::pick`]): `prefer` if it may serve
    /// reads now, else the strategy's choice; None: no node but the
    /// primary may serve reads now.
    pub fn pick(
        &self,
        topology: &Topology,
        bal: &config::Balance,
        prefer: Option<&str>,
        in_use: impl Fn(&Candidate) -> usize,
    ) -> Option<Candidate> {
        let mut cands = self.eligible(topology, bal);
        if let Some(i) = prefer.and_then(|p| cands.iter().position(|c| c.addr == p)) {
            return Some(cands.swap_remove(i));
        }
        if cands.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        crate::pick::choose(&cands, bal.strategy, turn, in_use).cloned()
    }
}

impl Router {
    /// The nodes that may serve reads now.
    pub fn eligible(&self, topology: &Topology, bal: &config::Balance) -> Vec<Candidate> {
        let primary = topology.primary().map(|t| t.addr.to_string());
        let mut lagging = self.lagging.lock().unwrap_or_else(|e| e.into_inner());
        topology.with_nodes(|nodes| {
            crate::pick::candidates(nodes, primary.as_deref(), bal, &mut lagging)
        })
    }

    /// The primary's position last read and when it was asked for, if
    /// that was after `since`.
    pub fn primary_lsn_since(&self, since: Instant) -> Option<(Instant, u64)> {
        let p = self.primary_lsn.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|(asked, _)| *asked >= since)
    }

    /// A write ended now in scope `key`.
    pub fn note_write(&self, key: String, at: Instant) {
        let mut w = self.scope_writes.lock().unwrap_or_else(|e| e.into_inner());
        let e = w.entry(key).or_insert(at);
        *e = (*e).max(at);
    }

    /// When a write in scope `key` last ended.
    pub fn last_write(&self, key: &str) -> Option<Instant> {
        let w = self.scope_writes.lock().unwrap_or_else(|e| e.into_inner());
        w.get(key).copied()
    }

    pub fn saw_primary_lsn(&self, asked: Instant, lsn: u64) {
        let mut p = self.primary_lsn.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|(t, _)| asked > t) {
            *p = Some((asked, lsn));
        }
    }

    /// The replay position last seen on the standby at `addr`.
    pub fn replayed(&self, addr: &str) -> u64 {
        let r = self.replayed.lock().unwrap_or_else(|e| e.into_inner());
        r.get(addr).copied().unwrap_or(0)
    }

    pub fn saw_replayed(&self, addr: &str, lsn: u64) {
        let mut r = self.replayed.lock().unwrap_or_else(|e| e.into_inner());
        let e = r.entry(addr.to_owned()).or_insert(0);
        *e = (*e).max(lsn);
    }

    fn procs(&self, database: &Arc<str>) -> (Arc<sql::ProcCatalog>, bool) {
        let mut c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        let cat = c.entry(database.clone()).or_default();
        let stale = !cat.loading && cat.read_at.is_none_or(|t| t.elapsed() >= CATALOG_REFRESH);
        (cat.procs.clone(), stale)
    }

    /// Whether `database`'s catalog has been read (or its read failed).
    pub fn catalog_read(&self, database: &Arc<str>) -> bool {
        let c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        c.get(database).is_some_and(|cat| cat.read_at.is_some())
    }

    /// Whether a read of `database`'s catalog has ended once.
    pub fn catalog_ever_read(&self, database: &Arc<str>) -> bool {
        let c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        c.get(database).is_some_and(|cat| cat.ever_read)
    }

    pub fn mark_stale(&self, database: &Arc<str>) {
        let mut c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cat) = c.get_mut(database) {
            cat.read_at = None;
            cat.generation += 1;
        }
    }

    /// Claims the (re)reading of `database`'s catalog, with the generation
    /// it reads: None when another task reads it already.
    pub fn start_loading(&self, database: &Arc<str>) -> Option<u64> {
        let mut c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        let cat = c.entry(database.clone()).or_default();
        (!std::mem::replace(&mut cat.loading, true)).then_some(cat.generation)
    }

    /// Stores a catalog read from the primary (None: the read failed; it
    /// is tried again at the next refresh). One read begun before the
    /// catalog last changed is kept but not counted as fresh.
    pub fn loaded(&self, database: &Arc<str>, generation: u64, procs: Option<sql::ProcCatalog>) {
        let mut c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        let cat = c.entry(database.clone()).or_default();
        cat.loading = false;
        cat.ever_read = true;
        if generation == cat.generation {
            cat.read_at = Some(Instant::now());
        }
        if let Some(p) = procs {
            cat.procs = Arc::new(p);
        }
    }
}

/// `0/16B3748` as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_as_postgresql_prints_them() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("junk"), None);
    }
}
