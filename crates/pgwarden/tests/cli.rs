//! The `pgwarden` binary: configuration errors, SIGTERM draining, SIGHUP
//! reload, `pgwarden up`.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, PgServer, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=app connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn wait_connect(port: u16) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match connect(port).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("proxy never accepted: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `pgwarden proxy --config cfg`, stopped when dropped.
fn spawn_proxy(cfg: &std::path::Path) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn write_config(dir: &TempDir, port: u16, pg: &PgServer, pool: usize) -> std::path::PathBuf {
    let p = dir.path().join("pgwarden.toml");
    std::fs::write(
        &p,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nhealth_check_period = \"200ms\"\ndefault_pool_size = {pool}\n\
             shutdown_timeout = \"20s\"\nhba = [\"host all all 127.0.0.1/32 trust\"]\nadmin_users = [\"postgres\"]\n\
             [[backends]]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        ),
    )
    .unwrap();
    p
}

#[test]
fn config_mistakes_name_file_and_line() {
    let dir = TempDir::new("cfg");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[proxy]\nlisten = \"127.0.0.1:6432\"\npool_mode = \"statement\"\n",
    )
    .unwrap();
    for sub in ["check-config", "proxy"] {
        let out = Command::new(BIN)
            .args([sub, "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}:3:", p.display())), "{sub}: {err}");
        assert!(err.contains("statement"), "{err}");
    }
    let out = Command::new(BIN)
        .args(["proxy", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml: cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_transactions_then_exits() {
    let pg = PgServer::primary();
    pg.sql("app", "CREATE TABLE d (id int)");
    let dir = TempDir::new("cfg");
    let port = free_port();
    let cfg = write_config(&dir, port, &pg, 4);
    let child = spawn_proxy(&cfg);
    let busy = wait_connect(port).await;
    let idle = wait_connect(port).await;
    idle.batch_execute("select 1").await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO d VALUES (1)")
        .await
        .unwrap();

    signal(&child.0, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // no new clients
    assert!(
        connect(port).await.is_err(),
        "accepted a client after SIGTERM"
    );
    // the idle client was told why
    let e = idle.batch_execute("select 1").await.unwrap_err();
    let db = e.as_db_error().map(|d| d.code().code().to_owned());
    assert!(db.as_deref() == Some("57P01") || e.is_closed(), "{e:?}");
    // the open transaction may finish
    busy.batch_execute("INSERT INTO d VALUES (2); COMMIT")
        .await
        .unwrap();
    assert_eq!(pg.sql("app", "select count(*) from d"), "2");
    // and then the proxy exits by itself
    let mut child = child;
    wait_exit(
        &mut child,
        Duration::from_secs(10),
        "after the last transaction",
    )
    .await;
}

/// Waits for the proxy to exit successfully on its own within `limit`.
async fn wait_exit(child: &mut Proc, limit: Duration, when: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            return;
        }
        assert!(Instant::now() < deadline, "proxy did not exit {when}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection's own end: the error that closed it, if any.
async fn connect_watched(
    port: u16,
    db: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={db} connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    (c, tokio::spawn(conn))
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deadline_ends_what_is_left_with_an_error() {
    let pg = PgServer::primary();
    pg.sql("app", "CREATE TABLE d (id int)");
    let dir = TempDir::new("cfg");
    let port = free_port();
    let cfg = write_config(&dir, port, &pg, 4);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("shutdown_timeout = \"20s\"", "shutdown_timeout = \"2s\""),
    )
    .unwrap();
    let mut child = spawn_proxy(&cfg);
    drop(wait_connect(port).await);
    let (busy, busy_end) = connect_watched(port, "app").await;
    busy.batch_execute("BEGIN; INSERT INTO d VALUES (1)")
        .await
        .unwrap();
    let (_admin, admin_end) = connect_watched(port, "pgwarden").await;
    // a statement still running at the deadline (it would commit at ~6 s)
    let (long, _long_end) = connect_watched(port, "app").await;
    let long_stmt = tokio::spawn(async move {
        long.batch_execute("INSERT INTO d SELECT 100 FROM pg_sleep(6)")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // a connection that never sends its startup packet
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();

    let t0 = Instant::now();
    signal(&child.0, "-TERM");
    // the admin console is closed at once, and told why
    let e = tokio::time::timeout(Duration::from_secs(1), admin_end)
        .await
        .expect("admin console closed at shutdown")
        .unwrap()
        .expect_err("closed with an error");
    assert_eq!(sqlstate(&e).as_deref(), Some("57P01"), "{e}");
    // the transaction still open at the 2 s deadline is ended with 57P01,
    // not dropped silently, and it was not committed
    let e = tokio::time::timeout(Duration::from_secs(5), busy_end)
        .await
        .expect("ended at the deadline")
        .unwrap()
        .expect_err("ended with an error");
    assert_eq!(sqlstate(&e).as_deref(), Some("57P01"), "{e}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(pg.sql("app", "select count(*) from d"), "0");
    assert!(
        long_stmt.await.unwrap().is_err(),
        "the running statement was ended"
    );
    // the silent connection does not keep the proxy alive
    wait_exit(&mut child, Duration::from_secs(3), "after the deadline").await;
    // the running statement was cancelled, not left to commit after the
    // client was told it was terminated
    tokio::time::sleep((t0 + Duration::from_secs(7)).saturating_duration_since(Instant::now()))
        .await;
    assert_eq!(pg.sql("app", "select count(*) from d where id = 100"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_clients() {
    let pg = PgServer::primary();
    let dir = TempDir::new("cfg");
    let port = free_port();
    let cfg = write_config(&dir, port, &pg, 4);
    let child = spawn_proxy(&cfg);
    let c = wait_connect(port).await;
    c.batch_execute("select 1").await.unwrap();
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("default_pool_size = 4", "default_pool_size = 7"),
    )
    .unwrap();
    signal(&child.0, "-HUP");
    let admin = |sql: &'static str| testkit::psql(port, "pgwarden", sql);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out, _) = admin("SHOW CONFIG");
        if out.contains("default_pool_size|7") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the client connected before the reload still works
    assert_eq!(
        c.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
}
