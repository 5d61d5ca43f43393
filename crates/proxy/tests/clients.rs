//! Real client programs through the proxy: psql, pgbench, psycopg 3; the
//! admin console; PAUSE/RESUME and RELOAD.
mod common;

use std::time::Duration;

use common::*;
use proxy::topology::Replication;
use testkit::{psql, run_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_transaction_mode_all_protocols() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 3\n"),
        &backends(&[&pg]),
    )
    .await;
    let port = p.port().to_string();
    let (ok, _, err) = run_client(
        "pgbench",
        &[
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "app",
        ],
        &[],
    );
    assert!(ok, "pgbench -i: {err}");
    // One client per pgbench thread: PostgreSQL 15's pgbench prepares with a
    // blocking PQprepare, so a thread whose other clients hold every pooled
    // server mid-transaction would wait on itself (with any pooler).
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run_client(
            "pgbench",
            &[
                "-n",
                "-c",
                "8",
                "-j",
                "8",
                "-t",
                "40",
                "-M",
                mode,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "app",
            ],
            &[],
        );
        assert!(ok, "pgbench -M {mode}: {err}\n{out}");
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
    // every TPC-B transaction wrote its history row, on the real server
    assert_eq!(pg.sql("app", "select count(*) from pgbench_history"), "960");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_server_side_prepared_statements() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 2\n"),
        &backends(&[&pg]),
    )
    .await;
    pg.sql("app", "CREATE TABLE items (id int primary key, name text)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/psycopg_clients.py");
    // psycopg-binary (its own recent libpq: statements dropped with a
    // protocol Close), then psycopg on the system's libpq 15 (dropped with
    // SQL DEALLOCATE, which the proxy must answer itself)
    for (impl_, table_rows) in [("binary", "400"), ("python", "800")] {
        let out = tokio::task::spawn_blocking({
            let port = p.port();
            move || {
                std::process::Command::new("python3")
                    .arg(script)
                    .arg(port.to_string())
                    .env("PSYCOPG_IMPL", impl_)
                    .output()
                    .expect("python3")
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "psycopg ({impl_}) clients failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("prepared statements used: yes"), "{stdout}");
        assert_eq!(pg.sql("app", "select count(*) from items"), table_rows);
    }
    // the servers hold the statements under the proxy's shared names, and
    // the 8 clients used at most the 2 server connections of the pool
    let c = p.connect("postgres", None, "app").await.unwrap();
    let shared: i64 = c
        .query_one(
            "select count(*) from pg_prepared_statements where name like 'pgw\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(shared >= 3, "{shared} shared statements on the server");
    let servers: i64 = pg
        .sql(
            "postgres",
            "select count(*) from pg_stat_activity where datname = 'app' and backend_type = 'client backend'",
        )
        .parse()
        .unwrap();
    assert!((1..=2).contains(&servers), "{servers} server connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_and_controls() {
    let pg = PgServer::primary();
    let standby = PgServer::standby_of(&pg);
    let dir = testkit::TempDir::new("cfg");
    let cfg_path = dir.path().join("pgwarden.toml");
    let p = start_proxy_at(
        &format!("{TRUST}default_pool_size = 4\n"),
        &backends(&[&pg, &standby]),
        Some(&cfg_path),
    )
    .await;
    let port = p.port();
    wait_for(Duration::from_secs(5), || {
        p.state
            .topology
            .nodes()
            .iter()
            .all(|n| n.status == proxy::topology::NodeStatus::Up)
    })
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("select 1").await.unwrap();
    // the health checks have seen the standby stream from the primary
    wait_for(Duration::from_secs(5), || {
        let nodes = p.state.topology.nodes();
        matches!(&nodes[0].replication, Replication::Senders(s) if !s.is_empty())
            && matches!(&nodes[1].replication, Replication::Receiver { status, .. } if status == "streaming")
    })
    .await;

    let out = tokio::task::spawn_blocking(move || {
        let show = |what: &str| {
            let (ok, out, err) = psql(port, "pgwarden", &format!("SHOW {what}"));
            assert!(ok, "SHOW {what}: {err}");
            out
        };
        (
            show("POOL_NODES"),
            show("POOLS"),
            show("CLIENTS"),
            show("SERVERS"),
            show("STATS"),
            show("CONFIG"),
        )
    })
    .await
    .unwrap();
    let (nodes, pools, clients, servers, stats, config) = out;
    let node_lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(node_lines.len(), 2, "{nodes}");
    assert!(
        node_lines[0].starts_with(&format!(
            "0|127.0.0.1|{}|up|up|0.500000|primary|primary|",
            pg.port
        )),
        "{nodes}"
    );
    assert!(
        node_lines[1].starts_with(&format!(
            "1|127.0.0.1|{}|up|up|0.500000|standby|standby|",
            standby.port
        )),
        "{nodes}"
    );
    // replication_state and replication_sync_state: the primary's WAL
    // sender for the standby (a primary has none)
    let replication = |line: &str| {
        line.split('|')
            .skip(11)
            .take(2)
            .collect::<Vec<_>>()
            .join("|")
    };
    assert_eq!(replication(node_lines[0]), "|", "{nodes}");
    assert_eq!(replication(node_lines[1]), "streaming|async", "{nodes}");
    assert!(pools.contains("app|postgres|"), "{pools}");
    assert!(pools.contains("|4|transaction"), "{pools}");
    assert!(clients.contains("|postgres|app|"), "{clients}");
    assert!(servers.contains("|idle|"), "{servers}");
    assert!(stats.contains("total_xact_count|"), "{stats}");
    assert!(config.contains("default_pool_size|4"), "{config}");

    // RELOAD picks up a changed file without dropping clients
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("default_pool_size = 4", "default_pool_size = 6");
    std::fs::write(&cfg_path, text).unwrap();
    let (ok, _, err) = tokio::task::spawn_blocking(move || psql(port, "pgwarden", "RELOAD"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(p.state.config().proxy.default_pool_size, 6);
    c.batch_execute("select 1").await.unwrap();
    // a broken file is refused with its line, and the old config stays
    std::fs::write(
        &cfg_path,
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = \"many\"\n",
    )
    .unwrap();
    let (ok, _, err) = tokio::task::spawn_blocking(move || psql(port, "pgwarden", "RELOAD"))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("pgwarden.toml:3:"), "{err}");
    assert_eq!(p.state.config().proxy.default_pool_size, 6);

    // PAUSE holds new transactions until RESUME
    let (ok, _, err) = tokio::task::spawn_blocking(move || psql(port, "pgwarden", "PAUSE"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    let q = tokio::spawn(async move {
        c.query_one("select 5", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!q.is_finished(), "query ran while paused");
    let (ok, _, err) = tokio::task::spawn_blocking(move || psql(port, "pgwarden", "RESUME"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), q)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        5
    );

    // unknown commands are errors; non-admins are refused
    let (ok, _, err) = tokio::task::spawn_blocking(move || psql(port, "pgwarden", "SHOW NONSENSE"))
        .await
        .unwrap();
    assert!(!ok && err.contains("unknown admin command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_and_hostssl_rules() {
    let pg = PgServer::primary();
    let dir = testkit::TempDir::new("tls");
    let (crt, key) = self_signed_cert(&dir);
    let p = start_proxy(
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nadmin_users = [\"postgres\"]\n\
             hba = [\"hostssl all all 127.0.0.1/32 trust\", \"host all all 127.0.0.1/32 reject\"]\n",
            crt.display(),
            key.display()
        ),
        &backends(&[&pg]),
    )
    .await;
    let port = p.port().to_string();
    let run = move |mode: &'static str| {
        let port = port.clone();
        move || {
            run_client(
                "psql",
                &[
                    "-X",
                    "-A",
                    "-t",
                    "-c",
                    "select 1",
                    &format!("host=127.0.0.1 port={port} user=postgres dbname=app sslmode={mode}"),
                ],
                &[],
            )
        }
    };
    // TLS is accepted and required by the hostssl rule
    let (ok, out, err) = tokio::task::spawn_blocking(run("require")).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1");
    let (ok, _, err) = tokio::task::spawn_blocking(run("disable")).await.unwrap();
    assert!(!ok);
    assert!(err.contains("rejects connection"), "{err}");
    // the admin console shows the client's TLS
    let port2 = p.port();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run_client(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-c",
                "SHOW CLIENTS",
                &format!(
                    "host=127.0.0.1 port={port2} user=postgres dbname=pgwarden sslmode=require"
                ),
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("|true|"), "{out}");
}
