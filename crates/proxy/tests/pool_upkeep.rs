//! Pool upkeep and limits against a real PostgreSQL: min_pool_size,
//! server_idle_timeout, server_lifetime, the administrators' reserve of
//! client slots, and TLS from the proxy to the servers.
mod common;

use std::time::Duration;

use common::*;

/// Server connections of `user` that PostgreSQL sees.
fn backends_of(pg: &PgServer, user: &str) -> usize {
    pg.sql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = '{user}' AND backend_type = 'client backend'"
        ),
    )
    .trim()
    .parse()
    .unwrap()
}

async fn wait_backends(pg: &PgServer, user: &str, want: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = backends_of(pg, user);
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} has {n} server connections, expected {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_is_kept_and_idle_surplus_is_closed() {
    let pg = PgServer::primary();
    pg.sql("postgres", "CREATE ROLE upkeep LOGIN");
    let p = start_proxy(
        &format!(
            "{TRUST}pool_mode = \"transaction\"\ndefault_pool_size = 5\nmin_pool_size = 2\n\
             server_idle_timeout = \"1s\"\n"
        ),
        &backends(&[&pg]),
    )
    .await;
    // The first client creates the pool; upkeep then opens min_pool_size.
    let c = p.connect("upkeep", None, "app").await.unwrap();
    wait_backends(&pg, "upkeep", 2, Duration::from_secs(10)).await;

    // Five clients in open transactions need five server connections.
    let mut clients = vec![c];
    for _ in 0..4 {
        clients.push(p.connect("upkeep", None, "app").await.unwrap());
    }
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    assert_eq!(backends_of(&pg, "upkeep"), 5);
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    // Idle past server_idle_timeout: closed down to min_pool_size, not below.
    wait_backends(&pg, "upkeep", 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backends_of(&pg, "upkeep"), 2);
    // and the clients still work
    for c in &clients {
        let r = c.query_one("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), 42);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_replaced_after_their_lifetime() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}pool_mode = \"transaction\"\nserver_lifetime = \"1s\"\n"),
        &backends(&[&pg]),
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    let first = pid(&c).await;
    assert_eq!(pid(&c).await, first, "one client, one pooled connection");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = pid(&c).await;
    assert_ne!(later, first, "the connection outlived server_lifetime");
    // the old backend is gone from the server
    let alive = pg.sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first}"),
    );
    assert_eq!(alive.trim(), "0");
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_keep_reserved_slots_when_clients_are_full() {
    let pg = PgServer::primary();
    pg.sql("postgres", "CREATE ROLE regular LOGIN");
    let p = start_proxy(
        &format!("{TRUST}max_client_conn = 2\nadmin_reserved_conn = 1\n"),
        &backends(&[&pg]),
    )
    .await;
    let a = p.connect("regular", None, "app").await.unwrap();
    let b = p.connect("regular", None, "app").await.unwrap();
    // A third ordinary client is refused with a clear error ...
    let Err(e) = p.connect("regular", None, "app").await else {
        panic!("a client beyond max_client_conn was let in")
    };
    assert_eq!(code(&e).as_deref(), Some("53300"), "{e}");
    let msg = e.as_db_error().map(|d| d.message().to_owned());
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("too many clients")),
        "{e:?}"
    );
    // ... an administrator still gets in, to the console and to a database.
    let admin = p.connect("postgres", None, "pgwarden").await.unwrap();
    let rows = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let n = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 3, "two clients and the admin");
    // The reserve is for administrators only: still full for others.
    let Err(e) = p.connect("regular", None, "app").await else {
        panic!("a client beyond max_client_conn was let in")
    };
    assert_eq!(code(&e).as_deref(), Some("53300"), "{e}");
    // Slots freed are slots for the next client (the administrator's
    // connection counts among the clients too).
    drop(b);
    drop(admin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let c = loop {
        match p.connect("regular", None, "app").await {
            Ok(c) => break c,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for c in [&a, &c] {
        let r = c.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_servers() {
    let dir = testkit::TempDir::new("server-tls");
    let (crt, key) = self_signed_cert(&dir);
    let pg = PgServer::primary_with(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        crt.display(),
        key.display()
    ));
    let p = start_proxy(
        &format!("{TRUST}server_tls = \"require\"\n"),
        &backends(&[&pg]),
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    // The server sees its connection from the proxy encrypted.
    let r = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    assert_eq!(pg.sql("app", "SELECT x FROM t").trim(), "7");

    // server_tls = prefer falls back to plain text with a server without TLS.
    let plain = PgServer::primary();
    let p2 = start_proxy(
        &format!("{TRUST}server_tls = \"prefer\"\n"),
        &backends(&[&plain]),
    )
    .await;
    let c2 = p2.connect("postgres", None, "app").await.unwrap();
    let r = c2
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(!r.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closed_by_the_server_is_not_handed_out() {
    let pg = PgServer::primary();
    pg.sql("postgres", "CREATE ROLE idler LOGIN");
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 2\n"),
        &backends(&[&pg]),
    )
    .await;
    let c = p.connect("idler", None, "app").await.unwrap();
    let first = pid(&c).await;
    // An operator (or idle_session_timeout) ends the pooled backend.
    pg.sql("postgres", &format!("SELECT pg_terminate_backend({first})"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The client's next transaction gets a working connection, not the
    // dead one's FATAL.
    let second = pid(&c).await;
    assert_ne!(first, second);
    assert_eq!(
        c.query_one("select 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_with_too_many_prepared_statements_is_replaced() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 1\n"),
        &backends(&[&pg]),
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    let first = pid(&c).await;
    // Ever new statement texts, each prepared and closed again.
    for i in 0..(proxy::relay::MAX_SERVER_PREPARED + 10) {
        let s = c.prepare(&format!("select {i}::int")).await.unwrap();
        drop(s);
    }
    c.simple_query("select 1").await.unwrap();
    // The connection went when it came back; its successor starts empty.
    let second = pid(&c).await;
    assert_ne!(first, second);
    let n: i64 = c
        .query_one("select count(*) from pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    // (tokio-postgres keeps a few of its own: far fewer than the 2,000+)
    assert!(n < 50, "{n} statements on the new connection");
}
