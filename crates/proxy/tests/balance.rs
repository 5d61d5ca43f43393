//! Read/write splitting against a real primary and two streaming standbys.
//! Where a statement ran is what the server that ran it says
//! (`inet_server_port()`), not the proxy's counters.
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// (reads spread per transaction, so that one connection's reads show
/// every node; `read_affinity = "connection"`, the default, has a test of
/// its own)
const BALANCE: &str =
    "pool_mode = \"transaction\"\nload_balance = true\nread_affinity = \"transaction\"\n";

/// The port of the server that ran `sql` (its first column), simple protocol.
async fn ran_on(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap().parse().unwrap();
        }
    }
    panic!("{sql}: no row");
}

/// The same, extended protocol (a prepared statement).
async fn ran_on_prepared(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, i32>(0) as u16
}

async fn three_nodes() -> (PgServer, PgServer, PgServer, TestProxy) {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let p = balanced_proxy("", &[&primary, &s1, &s2]).await;
    (primary, s1, s2, p)
}

/// A proxy with read balancing and `extra` settings over `servers` (a
/// primary, then two standbys), once it sees both standbys up.
async fn balanced_proxy(extra: &str, servers: &[&PgServer]) -> TestProxy {
    proxy_seeing_standbys(&format!("{TRUST}{BALANCE}{extra}"), servers).await
}

/// A proxy configured with `proxy_toml` over `servers`, once it sees both
/// standbys up.
async fn proxy_seeing_standbys(proxy_toml: &str, servers: &[&PgServer]) -> TestProxy {
    let p = start_proxy(proxy_toml, &backends(servers)).await;
    // both standbys seen up and streaming by the health checks
    wait_for(Duration::from_secs(20), || {
        p.state
            .topology
            .nodes()
            .iter()
            .filter(|n| {
                n.status == proxy::topology::NodeStatus::Up
                    && n.role == proxy::topology::Role::Standby
            })
            .count()
            == 2
    })
    .await;
    p
}

/// A connection through `p` to database `app` with extra connection
/// parameters (`application_name=...`, `options=...`).
async fn connect_with(p: &TestProxy, params: &str) -> tokio_postgres::Client {
    let url = format!("{} {params}", p.url("postgres", None, "app"));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Where `n` runs of `sql` ran: port -> count.
async fn spread(c: &tokio_postgres::Client, sql: &str, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(ran_on(c, sql).await).or_insert(0) += 1;
    }
    seen
}

/// The replay lag (bytes) of the standby on `port`, as the proxy's health
/// checks last measured it.
fn replication_delay(p: &TestProxy, port: u16) -> u64 {
    p.state
        .topology
        .nodes()
        .iter()
        .find(|n| n.port == port)
        .map_or(0, |n| n.replication_delay)
}

/// Runs `sql` until it lands on a standby (the function catalog is read
/// in the background, on first use and after DDL).
async fn until_on_standby(c: &tokio_postgres::Client, sql: &str, standbys: &HashSet<u16>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !standbys.contains(&ran_on(c, sql).await) {
        assert!(Instant::now() < deadline, "{sql} never ran on a standby");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_the_standbys_and_everything_else_the_primary() {
    let (primary, s1, s2, p) = three_nodes().await;
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE SEQUENCE sq;
         CREATE FUNCTION ins() RETURNS int LANGUAGE sql AS 'INSERT INTO t VALUES (7) RETURNING 1';",
    )
    .await
    .unwrap();
    s1.wait_caught_up(&primary);
    s2.wait_caught_up(&primary);
    until_on_standby(&c, "SELECT inet_server_port()", &standbys).await;

    // every read shape runs on a standby, and both standbys serve
    let reads = [
        "SELECT inet_server_port()",
        "SELECT inet_server_port() FROM t",
        "WITH x AS (SELECT 1) SELECT inet_server_port() FROM x",
        "SELECT inet_server_port() WHERE (SELECT count(*) FROM t) > 0",
        "SELECT inet_server_port() FROM t WHERE abs(id) = 1",
    ];
    let mut seen = HashSet::new();
    for q in reads {
        for _ in 0..4 {
            let port = ran_on(&c, q).await;
            if !standbys.contains(&port) {
                eprintln!(
                    "primary {} / s1 {} / s2 {}",
                    primary.sql("postgres", "SELECT pg_current_wal_lsn(), pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()"),
                    s1.sql("postgres", "SELECT pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()"),
                    s2.sql("postgres", "SELECT pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()")
                );
            }
            assert!(standbys.contains(&port), "{q} ran on {port}");
            seen.insert(port);
            let port = ran_on_prepared(&c, q).await;
            assert!(standbys.contains(&port), "{q} (prepared) ran on {port}");
            seen.insert(port);
        }
    }
    assert_eq!(seen, standbys, "reads did not use both standbys");
    // SHOW POOL_NODES: reads counted on the standbys, which take them
    let admin = p.connect("postgres", None, "pgwarden").await.unwrap();
    let mut rows = 0;
    for m in admin.simple_query("SHOW POOL_NODES").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let port: u16 = r.get("port").unwrap().parse().unwrap();
            let selects: u64 = r.get("select_cnt").unwrap().parse().unwrap();
            let lb = r.get("load_balance_node").unwrap();
            if standbys.contains(&port) {
                assert!(selects >= 20, "{port}: select_cnt {selects}");
                assert_eq!(lb, "true", "{port}");
            } else {
                assert_eq!(lb, "false", "the primary takes no reads while standbys do");
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 3);
    let ro = ran_on(&c, "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT").await;
    assert!(standbys.contains(&ro), "BEGIN READ ONLY ran on {ro}");

    // what must not run on a standby runs on the primary
    let primary_only = [
        "SELECT inet_server_port(), nextval('sq')",
        "SELECT inet_server_port(), ins()",
        "SELECT inet_server_port() FROM t FOR UPDATE",
        "/*NO LOAD BALANCE*/ SELECT inet_server_port()",
        "WITH w AS (INSERT INTO t VALUES (2) RETURNING id) SELECT inet_server_port() FROM w",
        "BEGIN; SELECT inet_server_port(); COMMIT",
        "SELECT inet_server_port() FROM t; INSERT INTO t VALUES (3)",
    ];
    for q in primary_only {
        for _ in 0..3 {
            assert_eq!(ran_on(&c, q).await, primary.port, "{q}");
        }
    }
    assert_eq!(
        ran_on_prepared(
            &c,
            "SELECT inet_server_port()::int + nextval('sq')::int * 0"
        )
        .await,
        primary.port
    );

    // a function created now is read from pg_proc after the DDL
    c.batch_execute(
        "CREATE FUNCTION plus(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 1'",
    )
    .await
    .unwrap();
    s1.wait_caught_up(&primary);
    s2.wait_caught_up(&primary);
    until_on_standby(&c, "SELECT inet_server_port() WHERE plus(1) = 2", &standbys).await;

    // an unlogged table (created now: the catalog is read again before
    // the next request) cannot be read on a standby
    c.batch_execute("CREATE UNLOGGED TABLE ul (x int)")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            ran_on(
                &c,
                "SELECT inet_server_port() FROM ul RIGHT JOIN (SELECT 1) o ON true"
            )
            .await,
            primary.port
        );
    }

    // SET pgwarden.route = 'primary' keeps the session on the primary
    let r = p.connect("postgres", None, "app").await.unwrap();
    r.batch_execute("SET pgwarden.route = 'primary'")
        .await
        .unwrap();
    assert_eq!(ran_on(&r, "SELECT inet_server_port()").await, primary.port);
    r.batch_execute("RESET pgwarden.route").await.unwrap();
    assert!(standbys.contains(&ran_on(&r, "SELECT inet_server_port()").await));

    // session state a standby lacks pins the session to the primary
    for pin in [
        "CREATE TEMP TABLE tmp (x int)",
        "SELECT pg_advisory_lock(42)",
        "BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    ] {
        let s = p.connect("postgres", None, "app").await.unwrap();
        assert!(standbys.contains(&ran_on(&s, "SELECT inet_server_port()").await));
        s.batch_execute(pin).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                ran_on(&s, "SELECT inet_server_port()").await,
                primary.port,
                "after {pin}"
            );
        }
    }
    // and the others are untouched
    assert!(standbys.contains(&ran_on(&c, "SELECT inet_server_port()").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_with_a_delayed_standby() {
    let (stale, on_standby) = writes_then_reads("", Reader::Same).await;
    assert_eq!(stale, 0, "reads that missed the client's own write");
    // the caught-up standby served reads after writes
    assert!(on_standby > 0, "no read after a write ran on a standby");
    eprintln!("{on_standby} of 60 reads after a write ran on the caught-up standby");
}

/// `read_your_writes_scope = "user"`: a read on another connection of the
/// same user and database sees the write just made on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_scope_reads_writes_made_on_another_connection() {
    let (stale, on_standby) =
        writes_then_reads("read_your_writes_scope = \"user\"\n", Reader::Other).await;
    assert_eq!(stale, 0, "reads that missed a write of the same user");
    assert!(on_standby > 0, "no read after a write ran on a standby");
}

/// The same with `consistency = eventual`: the delayed standby serves
/// reads too, and some miss the write just made (what the default avoids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_consistency_reads_stale_rows_from_a_delayed_standby() {
    let (stale, _) = writes_then_reads("consistency = \"eventual\"\n", Reader::Same).await;
    assert!(stale > 0, "no stale read with eventual consistency");
    eprintln!("{stale} of 60 reads after a write missed it");
}

/// Who reads what was just written.
#[derive(PartialEq)]
enum Reader {
    /// The connection that wrote.
    Same,
    /// Another connection of the same user and database.
    Other,
    /// A connection of another user (scope `cluster`).
    OtherUser,
    /// Another connection, given the writer's commit position (`SHOW
    /// pgwarden.commit_lsn`, answered by the proxy) with `SET
    /// pgwarden.min_lsn`.
    CarriesLsn,
}

/// `read_your_writes_scope = "cluster"`: a read by another user sees the
/// write just made (every write through the proxy before the read began).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_scope_reads_writes_made_by_another_user() {
    let (stale, on_standby) =
        writes_then_reads("read_your_writes_scope = \"cluster\"\n", Reader::OtherUser).await;
    assert_eq!(stale, 0, "reads that missed another user's write");
    assert!(on_standby > 0, "no read after a write ran on a standby");
}

/// `SET pgwarden.min_lsn`: an application carries the position read after
/// its commit to another connection (connection scope), which then reads
/// what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_carried_to_another_connection_is_waited_for() {
    let (stale, on_standby) = writes_then_reads("", Reader::CarriesLsn).await;
    assert_eq!(stale, 0, "reads that missed the carried position");
    assert!(on_standby > 0, "no read after a write ran on a standby");
}

/// 60 writes each read back at once (by `who`), with one standby applying
/// WAL 2 s late: (stale reads, reads run on a standby).
async fn writes_then_reads(extra: &str, who: Reader) -> (usize, usize) {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let p = balanced_proxy(extra, &[&primary, &s1, &s2]).await;
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let eventual = extra.contains("eventual");
    // one standby applies WAL 2 s late
    s2.sql(
        "postgres",
        "ALTER SYSTEM SET recovery_min_apply_delay = '2s'",
    );
    s2.sql("postgres", "SELECT pg_reload_conf()");
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute(
        "CREATE TABLE kv (k int primary key, v int); CREATE ROLE reader LOGIN; GRANT SELECT ON kv TO reader",
    )
        .await
        .unwrap();
    s1.wait_caught_up(&primary);
    until_on_standby(&c, "SELECT inet_server_port()", &standbys).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // write, then read it back at once, on the same connection (or, with
    // a wider scope, on another of the same user and database)
    let reader = match who {
        Reader::OtherUser => p.connect("reader", None, "app").await.unwrap(),
        _ => p.connect("postgres", None, "app").await.unwrap(),
    };
    let r = if who == Reader::Same { &c } else { &reader };
    let (mut stale, mut on_standby) = (0, 0);
    for k in 0..60 {
        c.batch_execute(&format!("INSERT INTO kv VALUES ({k}, {k})"))
            .await
            .unwrap();
        if who == Reader::CarriesLsn {
            // the position the proxy offers (a WAL position at or after
            // the commit, read from the primary when asked)
            let lsn = c
                .simple_query("SHOW pgwarden.commit_lsn")
                .await
                .unwrap()
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap();
            let on_primary: String = c
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .unwrap()
                .get(0);
            assert!(
                proxy::route::parse_lsn(&lsn) <= proxy::route::parse_lsn(&on_primary)
                    && proxy::route::parse_lsn(&lsn) > Some(0),
                "commit position {lsn}, primary at {on_primary}"
            );
            r.batch_execute(&format!("SET pgwarden.min_lsn = '{lsn}'"))
                .await
                .unwrap();
        }
        let msgs = r
            .simple_query(&format!(
                "SELECT inet_server_port(), count(*) FROM kv WHERE k = {k}"
            ))
            .await
            .unwrap();
        let row = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .unwrap();
        let port: u16 = row.get(0).unwrap().parse().unwrap();
        if row.get(1) != Some("1") {
            stale += 1;
        }
        if standbys.contains(&port) {
            on_standby += 1;
            // never the standby 2 s behind
            assert!(
                eventual || port == s1.port,
                "read {k} ran on the delayed standby"
            );
        }
    }
    (stale, on_standby)
}

/// Per-database and per-application defaults, the startup option
/// `pgwarden.route` (PGOPTIONS), `SET`/`RESET`, stickiness `session`,
/// backend weights and the strategies, each through its own proxy over
/// the same primary and standbys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_stickiness_weights_and_strategies() {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let servers = [&primary, &s1, &s2];
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let q = "SELECT inet_server_port()";

    // database app defaults to the primary, application dashboard may read
    // from standbys; a session's own choice wins over both
    let p = balanced_proxy(
        "route_by_database = { app = \"primary\" }\nroute_by_application = { dashboard = \"any\" }\n",
        &servers,
    )
    .await;
    let dash = connect_with(&p, "application_name=dashboard").await;
    until_on_standby(&dash, q, &standbys).await;
    let plain = connect_with(&p, "").await;
    assert_eq!(
        spread(&plain, q, 5).await.keys().collect::<Vec<_>>(),
        [&primary.port]
    );
    plain
        .batch_execute("SET pgwarden.route = 'any'")
        .await
        .unwrap();
    assert!(
        standbys.contains(&ran_on(&plain, q).await),
        "SET pgwarden.route = any"
    );
    plain.batch_execute("RESET pgwarden.route").await.unwrap();
    assert_eq!(
        ran_on(&plain, q).await,
        primary.port,
        "after RESET: the database's default"
    );
    let opt = connect_with(&p, "options='-c pgwarden.route=any'").await;
    assert!(
        standbys.contains(&ran_on(&opt, q).await),
        "startup option pgwarden.route=any"
    );
    let opt = connect_with(
        &p,
        "application_name=dashboard options='-c pgwarden.route=primary'",
    )
    .await;
    assert_eq!(
        ran_on(&opt, q).await,
        primary.port,
        "startup option pgwarden.route=primary"
    );
    p.shutdown();

    // stickiness session: after its first write, the session reads from
    // the primary; other sessions are not affected
    let p = balanced_proxy("disable_load_balance_on_write = \"session\"\n", &servers).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&c, q, &standbys).await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w VALUES (1)")
        .await
        .unwrap();
    s1.wait_caught_up(&primary);
    s2.wait_caught_up(&primary);
    assert_eq!(
        spread(&c, q, 10).await.keys().collect::<Vec<_>>(),
        [&primary.port]
    );
    let other = p.connect("postgres", None, "app").await.unwrap();
    assert!(standbys.contains(&ran_on(&other, q).await));
    p.shutdown();

    // weight 0: no reads
    let p = balanced_proxy(
        &format!("backend_weights = {{ \"127.0.0.1:{}\" = 0 }}\n", s2.port),
        &servers,
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&c, q, &standbys).await;
    assert_eq!(
        spread(&c, q, 20).await.keys().collect::<Vec<_>>(),
        [&s1.port]
    );
    p.shutdown();

    // weighted random, 1 to 3
    let p = balanced_proxy(
        &format!(
            "load_balance_strategy = \"weighted_random\"\nbackend_weights = {{ \"127.0.0.1:{}\" = 1, \"127.0.0.1:{}\" = 3 }}\n",
            s1.port, s2.port
        ),
        &servers,
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&c, q, &standbys).await;
    let seen = spread(&c, q, 200).await;
    let (n1, n2) = (
        seen.get(&s1.port).copied().unwrap_or(0),
        seen.get(&s2.port).copied().unwrap_or(0),
    );
    assert_eq!(n1 + n2, 200, "{seen:?}");
    assert!(n1 > 10 && n2 > 2 * n1, "weights 1:3 gave {n1}:{n2}");
    p.shutdown();

    // least connections, the primary serving reads too: one client at a
    // time leaves every node equally loaded, so all three take turns
    let p = balanced_proxy(
        "load_balance_strategy = \"least_connections\"\nprimary_serves_reads = true\n",
        &servers,
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&c, q, &standbys).await;
    let seen = spread(&c, q, 30).await;
    assert_eq!(
        seen.keys().copied().collect::<HashSet<u16>>(),
        [primary.port, s1.port, s2.port].into(),
        "{seen:?}"
    );
}

/// A standby further behind than max_replica_lag gets no reads, and gets
/// them again once it has caught up; with every standby behind, reads go
/// to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_gets_no_reads_until_it_catches_up() {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let p = balanced_proxy("max_replica_lag = 1048576\n", &[&primary, &s1, &s2]).await;
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let q = "SELECT inet_server_port()";
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE big (x int, pad text)")
        .await
        .unwrap();
    until_on_standby(&c, q, &standbys).await;
    let delay = |port: u16| replication_delay(&p, port);
    let wal = "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g";

    // s2 stops replaying: 4 MB of WAL later it is left out
    s2.sql("postgres", "SELECT pg_wal_replay_pause()");
    primary.sql("app", wal);
    s1.wait_caught_up(&primary);
    // (the health checks see s2 behind, and s1 replayed what it received)
    wait_for(Duration::from_secs(20), || {
        delay(s2.port) > 1 << 20 && delay(s1.port) < 1 << 19
    })
    .await;
    let seen = spread(&c, q, 20).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&s1.port],
        "s2 lags by {}",
        delay(s2.port)
    );

    // both behind: the primary
    s1.sql("postgres", "SELECT pg_wal_replay_pause()");
    primary.sql("app", wal);
    wait_for(Duration::from_secs(20), || delay(s1.port) > 1 << 20).await;
    let seen = spread(&c, q, 10).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), [&primary.port]);

    // replay resumes: both standbys serve reads again
    s1.sql("postgres", "SELECT pg_wal_replay_resume()");
    s2.sql("postgres", "SELECT pg_wal_replay_resume()");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut back = HashSet::new();
    while back != standbys {
        assert!(Instant::now() < deadline, "standbys back: {back:?}");
        let port = ran_on(&c, q).await;
        if standbys.contains(&port) {
            back.insert(port);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `read_affinity = "connection"` (the default): a connection keeps
/// reading from the standby it was given, the connections share the
/// standbys, and a connection whose standby lags behind moves to the other
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_reading_from_its_standby() {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let p = proxy_seeing_standbys(
        &format!(
            "{TRUST}pool_mode = \"transaction\"\nload_balance = true\nmax_replica_lag = 65536\n"
        ),
        &[&primary, &s1, &s2],
    )
    .await;
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let q = "SELECT inet_server_port()";
    let mut clients = Vec::new();
    let mut used = HashSet::new();
    for _ in 0..4 {
        let c = p.connect("postgres", None, "app").await.unwrap();
        until_on_standby(&c, q, &standbys).await;
        let seen = spread(&c, q, 20).await;
        assert_eq!(seen.len(), 1, "one connection's reads: {seen:?}");
        let port = *seen.keys().next().unwrap();
        assert!(standbys.contains(&port), "read on {port}");
        used.insert(port);
        clients.push((c, port));
    }
    assert_eq!(used, standbys, "the connections share the standbys");

    // the standby of the first connection falls behind: that connection
    // reads from the other one
    let (c, port) = &clients[0];
    let (behind, other) = if *port == s1.port {
        (&s1, &s2)
    } else {
        (&s2, &s1)
    };
    behind.sql("postgres", "SELECT pg_wal_replay_pause()");
    primary.sql(
        "postgres",
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    );
    let delay = |port: u16| replication_delay(&p, port);
    wait_for(Duration::from_secs(20), || delay(behind.port) > 65536).await;
    // (the other one replays the same WAL: it may be out for a moment
    // too, until it is back under half the limit)
    wait_for(Duration::from_secs(20), || delay(other.port) < 32768).await;
    let seen = spread(c, q, 10).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&other.port],
        "after the lag"
    );
    behind.sql("postgres", "SELECT pg_wal_replay_resume()");
}

/// kill -9 of a standby while clients read: no read fails. A read whose
/// standby connection is lost before it answers (under way when the
/// standby died, or sent on one of its pooled connections before its death
/// shows) runs again on the primary; every read begun later runs on the
/// other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_during_reads_fails_no_read() {
    let (primary, s1, s2, p) = three_nodes().await;
    let p = Arc::new(p);
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let q = "SELECT inet_server_port()";
    let warm = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&warm, q, &standbys).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            // (when it began, port or error)
            let mut out: Vec<(Instant, Result<u16, String>)> = Vec::new();
            let c = p.connect("postgres", None, "app").await.unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                let began = Instant::now();
                let r = c.simple_query("SELECT inet_server_port()").await;
                let r = r.map_err(|e| format!("{e:?}")).map(|m| {
                    m.iter()
                        .find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0)?.parse::<u16>().ok()
                            }
                            _ => None,
                        })
                        .unwrap_or(0)
                });
                let failed = r.is_err();
                out.push((began, r));
                if failed {
                    break;
                }
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s1.kill9();
    let killed = Instant::now();
    let mut before = 0;
    for t in tasks {
        let out = t.await.unwrap();
        for (began, r) in &out {
            match r {
                Err(e) => panic!(
                    "a read begun {:?} after the kill failed: {e}",
                    began.saturating_duration_since(killed)
                ),
                Ok(port) if *began > killed + Duration::from_millis(500) => {
                    assert!(
                        *port == s2.port || *port == primary.port,
                        "read ran on {port}"
                    );
                }
                Ok(port) => before += usize::from(*port == s1.port),
            }
        }
        let later = out
            .iter()
            .filter(|(b, _)| *b > killed + Duration::from_millis(500))
            .count();
        assert!(later > 10, "{later} reads after the kill");
    }
    assert!(
        before > 0,
        "no read ran on the standby before it was killed"
    );
    let retries = p
        .state
        .router
        .stats
        .standby_retries
        .load(std::sync::atomic::Ordering::Relaxed);
    // (how many were caught under way depends on timing: a dead pooled
    // connection is often noticed before it is given out)
    eprintln!("{retries} reads ran again on the primary when the standby was killed");
}

/// `GET /metrics` on `metrics_listen`: the text as Prometheus reads it.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The proxy's metrics follow what the servers saw: the reads each
/// standby ran (by inet_server_port()) are its reads_total, the
/// transactions each backend served add up, errors are counted by their
/// SQLSTATE class, the backends' roles are right, and promtool accepts
/// the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_servers_ran() {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let mport = testkit::free_port();
    let p = balanced_proxy(
        &format!("metrics_listen = \"127.0.0.1:{mport}\"\n"),
        &[&primary, &s1, &s2],
    )
    .await;
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let q = "SELECT inet_server_port()";
    let c = p.connect("postgres", None, "app").await.unwrap();
    until_on_standby(&c, q, &standbys).await;
    let before = scrape(mport).await;
    let seen = spread(&c, q, 20).await;
    let after = scrape(mport).await;
    // errors the servers send, by SQLSTATE class: 22 (data exception), 42
    // (syntax error or access rule violation)
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    assert!(c.simple_query("SELEC 1").await.is_err());
    assert!(c.simple_query("SELECT * FROM no_such_table").await.is_err());
    let errors = scrape(mport).await;
    for (class, n) in [("22", 1.0), ("42", 2.0)] {
        let s = format!("pgwarden_proxy_errors_total{{class=\"{class}\"}}");
        // a class appears with its first error
        let before = if after.contains(&s) {
            sample(&after, &s)
        } else {
            0.0
        };
        assert_eq!(sample(&errors, &s) - before, n, "{s}");
    }
    let mut total_served = 0.0;
    for (port, role) in [
        (primary.port, "primary"),
        (s1.port, "standby"),
        (s2.port, "standby"),
    ] {
        let node = format!("127.0.0.1:{port}");
        let reads = format!("pgwarden_proxy_reads_total{{node=\"{node}\"}}");
        assert_eq!(
            sample(&after, &reads) - sample(&before, &reads),
            seen.get(&port).copied().unwrap_or(0) as f64,
            "{node}: {seen:?}"
        );
        // every transaction a backend served (here: the reads), and after
        // them the three failed statements, on whichever nodes
        let xacts = format!("pgwarden_proxy_backend_transactions_total{{node=\"{node}\"}}");
        assert_eq!(
            sample(&after, &xacts) - sample(&before, &xacts),
            seen.get(&port).copied().unwrap_or(0) as f64,
            "{node}: {seen:?}"
        );
        total_served += sample(&errors, &xacts) - sample(&after, &xacts);
        let up = format!("pgwarden_proxy_backend_up{{node=\"{node}\",name=\"\",role=\"{role}\"}}");
        let up = after
            .lines()
            .find(|l| l.starts_with("pgwarden_proxy_backend_up{") && l.contains(&node))
            .unwrap_or_else(|| panic!("{up}"));
        assert!(
            up.contains(&format!("role=\"{role}\"")) && up.ends_with(" 1"),
            "{up}"
        );
    }
    assert_eq!(total_served, 3.0, "the 3 failed statements");
    let routed = "pgwarden_proxy_routed_transactions_total{to=\"standby\"}";
    assert_eq!(sample(&after, routed) - sample(&before, routed), 20.0);
    assert!(sample(&after, "pgwarden_proxy_clients{state=\"idle\"}") >= 1.0);
    let hits = "pgwarden_proxy_classifier_cache_lookups_total{result=\"hit\"}";
    assert!(sample(&after, hits) - sample(&before, hits) >= 20.0);
    // promtool, where installed (./x test installs it)
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(errors.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
}
