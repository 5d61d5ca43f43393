//! A transaction's server connection when read balancing is on: the
//! router's decision ([`crate::route`]) carried out against the pools, and
//! the WAL position a client's write leaves for read-your-writes.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{Consistency, OnWrite, RouteTo, RywScope};

use super::session::checkout;
use crate::params::ParamSet;
use crate::pool::{Checkout, CheckoutError, Pool, PoolKey};
use crate::relay::ClientParams;
use crate::relay::Relay;
use crate::route::{parse_lsn, SessionRoute, Want};
use crate::state::State;

/// How long a database's first routed request, or a read after DDL, waits
/// for the catalog (without it a call of any function goes to the
/// primary, and an unlogged table is not known).
const CATALOG_WAIT: Duration = Duration::from_secs(2);

/// A connection for the request buffered in `input`: a standby's when the
/// request may run there and one can (read-your-writes included), else
/// the primary's.
pub(super) async fn routed_checkout(
    state: &Arc<State>,
    pool: &Arc<Pool>,
    input: &[u8],
    relay: &Relay,
    route: &mut Option<Box<SessionRoute>>,
    params: &ClientParams,
) -> Result<Checkout, CheckoutError> {
    let startup = params.startup();
    let database = &pool.key.database;
    let cfg = state.config();
    let bal = &cfg.proxy.balance;
    if !bal.enabled || bal.consistency == Consistency::Primary || !relay.transaction_mode() {
        return checkout(state, pool).await;
    }
    if !state.router.catalog_ever_read(database) {
        // A database's first request waits (a little) for its catalog, so
        // that where it runs does not depend on timing.
        wait_for_catalog(state, pool, database).await;
    }
    let r = route.get_or_insert_with(|| {
        let mut r = Box::<SessionRoute>::default();
        r.default_route = default_route(bal, startup, &pool.key);
        r
    });
    let (mut want, stale) =
        state
            .router
            .classify(input, cfg.proxy.max_message_size, relay, r, database);
    if let Some(g) = stale
        .then(|| state.router.start_loading(database))
        .flatten()
    {
        tokio::spawn(load_catalog(
            state.clone(),
            pool.clone(),
            database.clone(),
            g,
        ));
    }
    if want == Want::Standby && !state.router.catalog_read(database) {
        // A read after DDL through the proxy (a table may have become
        // unlogged) waits for the catalog read again, and is classified
        // with it (the effects of a read-only request, applied again in
        // the same order, leave the same session state). Writers do not
        // wait.
        wait_for_catalog(state, pool, database).await;
        want = state
            .router
            .classify(input, cfg.proxy.max_message_size, relay, r, database)
            .0;
    }
    r.wrote = matches!(want, Want::Primary { writes: true });
    let overridden = r.route_override();
    if want == Want::Standby && bal.on_write == OnWrite::Session && r.ever_wrote {
        // stickiness `session`: reads after the session's first write
        want = Want::Primary { writes: false };
    }
    tracing::debug!(?want, min_lsn = r.min_lsn, "route");
    if want == Want::Standby {
        // `SET pgwarden.route = standby`: reads go to a standby even right
        // after a write
        let ryw = bal.consistency == Consistency::ReadYourWrites
            && overridden != Some(sql::RouteOverride::Standby);
        // the last write this read must see: the client's own, or one in
        // its wider scope
        let shared =
            scope_key(bal.read_your_writes_scope, pool).and_then(|k| state.router.last_write(&k));
        let since = r.write_ended.max(shared).filter(|_| ryw);
        if let Some(since) = since.filter(|s| r.lsn_at.is_none_or(|at| at < *s)) {
            (r.lsn_at, r.min_lsn) = match primary_lsn_after(state, pool, since).await {
                Some((at, lsn)) => (Some(at), lsn),
                // not known: reads go to the primary until the next write
                None => (Some(Instant::now()), u64::MAX),
            };
        }
        let mut min_lsn = if ryw { r.min_lsn } else { 0 };
        // a position the application carried from another connection
        // (`SET pgwarden.min_lsn = '0/3000060'`)
        if let Some(asked) = params
            .set()
            .get(MIN_LSN_SETTING)
            .and_then(|v| parse_lsn(v.trim_matches('\'')))
        {
            min_lsn = min_lsn.max(asked);
        }
        if let Some(co) = standby(state, pool, min_lsn, bal, &mut r.reads_from).await {
            state
                .router
                .stats
                .to_standby
                .fetch_add(1, Ordering::Relaxed);
            return Ok(co);
        }
    }
    state
        .router
        .stats
        .to_primary
        .fetch_add(1, Ordering::Relaxed);
    if want == Want::Standby {
        // a read the primary serves
        if let Some(t) = state.topology.primary() {
            state.topology.count_select(t.node);
        }
    }
    checkout(state, pool).await
}

/// The session setting (or startup option) with a WAL position the
/// session's reads must see, e.g. one read with `pg_current_wal_lsn()`
/// after a commit on another connection.
pub const MIN_LSN_SETTING: &str = "pgwarden.min_lsn";

/// Waits up to [`CATALOG_WAIT`] for a fresh read of `database`'s catalog,
/// starting one if none is under way.
async fn wait_for_catalog(state: &Arc<State>, pool: &Arc<Pool>, database: &Arc<str>) {
    let deadline = Instant::now() + CATALOG_WAIT;
    while !state.router.catalog_read(database) && Instant::now() < deadline {
        if let Some(g) = state.router.start_loading(database) {
            tokio::spawn(load_catalog(
                state.clone(),
                pool.clone(),
                database.clone(),
                g,
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A standby's connection that has replayed `min_lsn`, or None. With
/// `read_affinity = "connection"`, the node in `reads_from` while it may
/// serve reads, and the node chosen is kept there.
async fn standby(
    state: &State,
    pool: &Arc<Pool>,
    min_lsn: u64,
    bal: &config::Balance,
    reads_from: &mut Option<String>,
) -> Option<Checkout> {
    if min_lsn == u64::MAX {
        return None;
    }
    let sticky = bal.affinity == config::Affinity::Connection;
    let prefer = reads_from.as_deref().filter(|_| sticky);
    let Some(pick) = state.router.pick(&state.topology, bal, prefer, |c| {
        let p = if c.primary {
            pool.clone()
        } else {
            pool.replica(&c.addr)
        };
        p.active.load(Ordering::Relaxed)
    }) else {
        tracing::debug!("no standby to read from");
        return None;
    };
    let (node, addr) = (pick.node, pick.addr);
    if sticky && reads_from.as_deref() != Some(addr.as_str()) {
        *reads_from = Some(addr.clone());
    }
    if pick.primary {
        // primary_serves_reads: it has every write
        let co = checkout(state, pool).await.ok()?;
        state.topology.count_select(node);
        return Some(co);
    }
    let replica = pool.replica(&addr);
    let mut co = match checkout(state, &replica).await {
        Ok(co) => co,
        Err(e) => {
            tracing::info!(standby = %addr, error = %e, "no connection to the standby: the read goes to the primary");
            return None;
        }
    };
    if min_lsn == 0 || state.router.replayed(&addr) >= min_lsn {
        state.topology.count_select(node);
        return Some(co);
    }
    let deadline = Instant::now() + bal.read_your_writes_timeout;
    loop {
        let conn = co.conn();
        let lsn = match conn.simple_query("SELECT pg_last_wal_replay_lsn()").await {
            Ok(rows) => rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|s| parse_lsn(&s))
                .unwrap_or(0),
            Err(_) => {
                conn.broken = true;
                return None;
            }
        };
        state.router.saw_replayed(&addr, lsn);
        if lsn >= min_lsn {
            state.topology.count_select(node);
            return Some(co);
        }
        tracing::debug!(standby = %addr, lsn, min_lsn, "not replayed yet");
        if Instant::now() >= deadline {
            state
                .router
                .stats
                .ryw_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// After a transaction that may have written ended on the primary: the
/// time, so that the client's next read (read-your-writes) waits on a
/// standby for the primary's WAL position read after it. Nothing is asked
/// of the server here: a client that only writes pays nothing.
pub(super) fn after_transaction(
    state: &State,
    pool: &Pool,
    route: &mut Option<Box<SessionRoute>>,
    database: &Arc<str>,
    ddl_seen: bool,
) {
    let Some(r) = route.as_mut().filter(|r| r.wrote) else {
        return;
    };
    r.wrote = false;
    r.ever_wrote = true;
    // DDL in the transaction (classified, or seen by its command tag
    // inside an explicit transaction): functions or unlogged tables may
    // have changed
    if std::mem::take(&mut r.ddl) || ddl_seen {
        state.router.mark_stale(database);
    }
    let cfg = state.config();
    if cfg.proxy.balance.on_write == OnWrite::Off {
        // reads are not held back for this write
        return;
    }
    let now = Instant::now();
    r.write_ended = Some(now);
    if let Some(k) = scope_key(cfg.proxy.balance.read_your_writes_scope, pool) {
        state.router.note_write(k, now);
    }
}

/// Where a session's reads go when it has not said: its startup option
/// `pgwarden.route` (`PGOPTIONS='-c pgwarden.route=primary'`), else the
/// config's default for its application, user or database.
fn default_route(
    bal: &config::Balance,
    startup: &ParamSet,
    key: &PoolKey,
) -> Option<sql::RouteOverride> {
    let unquoted = |v: &str| v.trim_matches('\'').to_ascii_lowercase();
    if let Some(v) = startup.get(sql::ROUTE_SETTING) {
        match unquoted(v).as_str() {
            "primary" => return Some(sql::RouteOverride::Primary),
            "standby" => return Some(sql::RouteOverride::Standby),
            "any" => return Some(sql::RouteOverride::Any),
            _ => {}
        }
    }
    let app = startup
        .get("application_name")
        .map(|v| v.trim_matches('\'').replace("''", "'"))
        .unwrap_or_default();
    bal.routes
        .for_session(&key.database, &key.user, &app)
        .map(|r| match r {
            RouteTo::Primary => sql::RouteOverride::Primary,
            RouteTo::Standby => sql::RouteOverride::Standby,
            RouteTo::Any => sql::RouteOverride::Any,
        })
}

/// The key of a read-your-writes scope wider than the connection.
fn scope_key(scope: RywScope, pool: &Pool) -> Option<String> {
    match scope {
        RywScope::Connection => None,
        RywScope::User => Some(format!("{}\0{}", pool.key.database, pool.key.user)),
        RywScope::Cluster => Some(String::new()),
    }
}

/// The primary's WAL position read after `since` (from the router's last
/// reading if it is recent enough, else asked of the primary now).
pub(super) async fn primary_lsn_after(
    state: &State,
    pool: &Arc<Pool>,
    since: Instant,
) -> Option<(Instant, u64)> {
    if let Some(seen) = state.router.primary_lsn_since(since) {
        return Some(seen);
    }
    let asked = Instant::now();
    let mut co = checkout(state, pool).await.ok()?;
    let conn = co.conn();
    let lsn = match conn.simple_query("SELECT pg_current_wal_lsn()").await {
        Ok(rows) => rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .and_then(|s| parse_lsn(&s))?,
        Err(_) => {
            conn.broken = true;
            return None;
        }
    };
    state.router.saw_primary_lsn(asked, lsn);
    Some((asked, lsn))
}

/// Reads `database`'s functions and their volatility from the primary.
async fn load_catalog(state: Arc<State>, pool: Arc<Pool>, database: Arc<str>, generation: u64) {
    let read = async {
        let mut co = checkout(&state, &pool).await.ok()?;
        let rows = co.conn().simple_query(sql::PG_PROC_QUERY).await.ok()?;
        Some(sql::ProcCatalog::from_rows(rows.into_iter().filter_map(
            |r| {
                let mut it = r.into_iter();
                Some((it.next()??, it.next()??, it.next()??))
            },
        )))
    };
    let procs = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten();
    if procs.is_none() {
        tracing::warn!(%database, "cannot read pg_proc: calls of functions go to the primary");
    }
    state.router.loaded(&database, generation, procs);
}
