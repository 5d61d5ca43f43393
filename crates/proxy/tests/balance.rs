//! Read/write splitting against a real primary and two streaming standbys.
//! Where a statement ran is what the server that ran it says
//! (`inet_server_port()`), not the proxy's counters.
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

const BALANCE: &str = "pool_mode = \"transaction\"\nload_balance = true\n";

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
    let p = start_proxy(
        &format!("{TRUST}{BALANCE}"),
        &backends(&[&primary, &s1, &s2]),
    )
    .await;
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
    (primary, s1, s2, p)
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
    let (stale, on_standby) = writes_then_reads("").await;
    assert_eq!(stale, 0, "reads that missed the client's own write");
    // the caught-up standby served reads after writes
    assert!(on_standby > 0, "no read after a write ran on a standby");
    eprintln!("{on_standby} of 60 reads after a write ran on the caught-up standby");
}

/// `read_your_writes_scope = "user"`: a read on another connection of the
/// same user and database sees the write just made on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_scope_reads_writes_made_on_another_connection() {
    let (stale, on_standby) = writes_then_reads("read_your_writes_scope = \"user\"\n").await;
    assert_eq!(stale, 0, "reads that missed a write of the same user");
    assert!(on_standby > 0, "no read after a write ran on a standby");
}

/// The same with `consistency = eventual`: the delayed standby serves
/// reads too, and some miss the write just made (what the default avoids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_consistency_reads_stale_rows_from_a_delayed_standby() {
    let (stale, _) = writes_then_reads("consistency = \"eventual\"\n").await;
    assert!(stale > 0, "no stale read with eventual consistency");
    eprintln!("{stale} of 60 reads after a write missed it");
}

/// 60 writes each read back at once on the same connection, with one
/// standby applying WAL 2 s late: (stale reads, reads run on a standby).
async fn writes_then_reads(extra: &str) -> (usize, usize) {
    let primary = PgServer::primary();
    let s1 = PgServer::standby_of(&primary);
    let s2 = PgServer::standby_of(&primary);
    let p = start_proxy(
        &format!("{TRUST}{BALANCE}{extra}"),
        &backends(&[&primary, &s1, &s2]),
    )
    .await;
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
    let standbys: HashSet<u16> = [s1.port, s2.port].into();
    let eventual = extra.contains("eventual");
    // one standby applies WAL 2 s late
    s2.sql(
        "postgres",
        "ALTER SYSTEM SET recovery_min_apply_delay = '2s'",
    );
    s2.sql("postgres", "SELECT pg_reload_conf()");
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE kv (k int primary key, v int)")
        .await
        .unwrap();
    s1.wait_caught_up(&primary);
    until_on_standby(&c, "SELECT inet_server_port()", &standbys).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // write, then read it back at once, on the same connection (or, with
    // a wider scope, on another of the same user and database)
    let reader = p.connect("postgres", None, "app").await.unwrap();
    let r = if extra.contains("scope") { &reader } else { &c };
    let (mut stale, mut on_standby) = (0, 0);
    for k in 0..60 {
        c.batch_execute(&format!("INSERT INTO kv VALUES ({k}, {k})"))
            .await
            .unwrap();
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
