//! Protocol conformance through the proxy against a real server: pipelines
//! whose requests fail (the server discards until Sync), Flush without
//! Sync, a lone Describe, COPY in a pipeline, errors in a batch; clients
//! that leave while their server works; the safety timeouts; session
//! mode's process ids.
mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::frontend::{Bind, FrontendMessage as F, Parse, Target};

/// Every wait on the proxy in these tests: a hang fails the test.
const LIMIT: Duration = Duration::from_secs(15);

fn msgs(m: &[F]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for x in m {
        x.encode(&mut b);
    }
    b.to_vec()
}

fn parse(q: &str) -> F {
    F::Parse(Parse {
        name: "".into(),
        query: q.into(),
        param_types: vec![],
    })
}

fn bind(params: &[&str]) -> F {
    F::Bind(Bind {
        portal: "".into(),
        statement: "".into(),
        param_formats: vec![],
        params: params
            .iter()
            .map(|p| Some(Bytes::copy_from_slice(p.as_bytes())))
            .collect(),
        result_formats: vec![],
    })
}

fn describe() -> F {
    F::Describe {
        target: Target::Portal,
        name: "".into(),
    }
}

fn exec() -> F {
    F::Execute {
        portal: "".into(),
        max_rows: 0,
    }
}

/// The tags of whole messages read until `stop` says so (given the tag
/// and body of the last one), within LIMIT.
async fn read_until(s: &mut TcpStream, mut stop: impl FnMut(u8, &[u8]) -> bool) -> String {
    let mut buf = Vec::new();
    let mut tags = String::new();
    let mut pos = 0;
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        while buf.len() >= pos + 5 {
            let len = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]])
                as usize;
            if buf.len() < pos + 1 + len {
                break;
            }
            let (tag, body) = (buf[pos], &buf[pos + 5..pos + 1 + len]);
            tags.push(char::from(tag));
            pos += 1 + len;
            if stop(tag, body) {
                return tags;
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer from the proxy; got {tags:?}"))
            .unwrap();
        assert!(n > 0, "closed; got {tags:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn until_tag(s: &mut TcpStream, want: u8) -> String {
    read_until(s, |t, _| t == want).await
}

async fn proxy(mode: &str, extra: &str, pg: &PgServer) -> TestProxy {
    start_proxy(
        &format!("{TRUST}pool_mode = \"{mode}\"\n{extra}"),
        &backends(&[pg]),
    )
    .await
}

/// libpq's pipeline mode as psycopg drives it: a query fails after a
/// Flush; the client (knowing the pipeline aborted) sends more, then a
/// Sync. The server discards all of it up to the Sync and answers nothing:
/// the proxy used to wait for those answers and never read the Sync (the
/// backend stayed `active` in ClientRead, the client waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_failed_is_answered_after_its_sync() {
    let pg = PgServer::primary();
    for mode in ["transaction", "session"] {
        let p = proxy(mode, "", &pg).await;
        let mut s = logged_in(&p).await;
        let q = |sql: &str| vec![parse(sql), bind(&[]), describe(), exec(), F::Flush];
        s.write_all(&msgs(&q("select 1"))).await.unwrap();
        s.write_all(&msgs(&q("select * from doesnotexist")))
            .await
            .unwrap();
        let got = until_tag(&mut s, b'E').await;
        assert_eq!(got, "12TDCE", "{mode}: the Parse fails");
        s.write_all(&msgs(&q("select 'aborted'"))).await.unwrap();
        s.write_all(&msgs(&[F::Sync])).await.unwrap();
        assert_eq!(
            until_tag(&mut s, b'Z').await,
            "Z",
            "{mode}: nothing but the Sync's answer"
        );
        // the connection is usable again
        s.write_all(&msgs(&[F::Query("select 2".into())]))
            .await
            .unwrap();
        assert_eq!(until_tag(&mut s, b'Z').await, "TDCZ", "{mode}");
    }
}

/// A JDBC-style batch (one Parse, many Bind/Execute, one Sync) whose third
/// insert fails: the rest is skipped up to the Sync, the batch rolls back,
/// and the proxy hands the server on clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_middle_of_a_batch() {
    let pg = PgServer::primary();
    pg.sql("app", "create table b (id int primary key)");
    let p = proxy("transaction", "default_pool_size = 1\n", &pg).await;
    let mut s = logged_in(&p).await;
    let mut batch = vec![F::Parse(Parse {
        name: "ins".into(),
        query: "insert into b values ($1)".into(),
        param_types: vec![],
    })];
    for id in ["1", "2", "1", "3", "4"] {
        batch.push(F::Bind(Bind {
            portal: "".into(),
            statement: "ins".into(),
            param_formats: vec![],
            params: vec![Some(Bytes::copy_from_slice(id.as_bytes()))],
            result_formats: vec![],
        }));
        batch.push(exec());
    }
    batch.push(F::Sync);
    s.write_all(&msgs(&batch)).await.unwrap();
    assert_eq!(until_tag(&mut s, b'Z').await, "12C2C2EZ");
    assert_eq!(pg.sql("app", "select count(*) from b"), "0");
    // and again, on the same (only) server connection, from another client
    let mut t = logged_in(&p).await;
    t.write_all(&msgs(&[F::Query("insert into b values (9)".into())]))
        .await
        .unwrap();
    assert_eq!(until_tag(&mut t, b'Z').await, "CZ");
}

/// Flush without Sync, a lone Describe, COPY inside a pipeline, and a COPY
/// whose Bind fails (`copy (select $1, $2) to stdout` takes no parameters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_describe_and_copy_in_pipelines() {
    let pg = PgServer::primary();
    let p = proxy("transaction", "default_pool_size = 1\n", &pg).await;
    let mut s = logged_in(&p).await;
    // Flush without Sync: answered, and the server stays with the client
    s.write_all(&msgs(&[parse("select 1"), bind(&[]), exec(), F::Flush]))
        .await
        .unwrap();
    assert_eq!(until_tag(&mut s, b'C').await, "12DC");
    s.write_all(&msgs(&[F::Sync])).await.unwrap();
    assert_eq!(until_tag(&mut s, b'Z').await, "Z");
    // a lone Describe of a named statement
    s.write_all(&msgs(&[
        F::Parse(Parse {
            name: "d".into(),
            query: "select $1::int".into(),
            param_types: vec![],
        }),
        F::Sync,
        F::Describe {
            target: Target::Statement,
            name: "d".into(),
        },
        F::Flush,
    ]))
    .await
    .unwrap();
    assert_eq!(until_tag(&mut s, b'T').await, "1ZtT");
    s.write_all(&msgs(&[F::Sync])).await.unwrap();
    assert_eq!(until_tag(&mut s, b'Z').await, "Z");
    // COPY TO STDOUT between two queries of one pipeline
    s.write_all(&msgs(&[
        parse("copy (select 1) to stdout"),
        bind(&[]),
        describe(),
        exec(),
        parse("select 2"),
        bind(&[]),
        exec(),
        F::Sync,
    ]))
    .await
    .unwrap();
    assert_eq!(until_tag(&mut s, b'Z').await, "12nHdcC12DCZ");
    // a COPY that cannot take its parameters, then more before the Sync
    s.write_all(&msgs(&[
        parse("copy (select $1, $2) to stdout"),
        bind(&["1", "2"]),
        exec(),
        F::Flush,
    ]))
    .await
    .unwrap();
    let got = until_tag(&mut s, b'E').await;
    assert!(got.ends_with('E'), "{got}");
    s.write_all(&msgs(&[parse("select 3"), bind(&[]), exec(), F::Sync]))
        .await
        .unwrap();
    assert_eq!(until_tag(&mut s, b'Z').await, "Z");
    // another client gets the (only) server connection, clean
    drop(s);
    let mut t = logged_in(&p).await;
    t.write_all(&msgs(&[F::Query("select 4".into())]))
        .await
        .unwrap();
    assert_eq!(until_tag(&mut t, b'Z').await, "TDCZ");
}

fn rows(r: &[tokio_postgres::SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    r.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// A client that goes away while its server works is noticed at once: its
/// server connection goes (the only one of the pool here) and the next
/// client gets one. The proxy used to read a client only when the server
/// waited for it, so the connection stayed held (CLOSE-WAIT) until the
/// server answered, or forever if the server waited for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_server_works_does_not_hold_it() {
    let pg = PgServer::primary();
    let p = proxy(
        "transaction",
        "default_pool_size = 1\nquery_wait_timeout = \"10s\"\n",
        &pg,
    )
    .await;
    let mut s = logged_in(&p).await;
    s.write_all(&msgs(&[F::Query("select pg_sleep(120)".into())]))
        .await
        .unwrap();
    let admin = p.connect("postgres", None, "pgwarden").await.unwrap();
    wait_for(LIMIT, || {
        pg.sql(
            "app",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(120)'",
        ) == "1"
    })
    .await;
    drop(s);
    // the next client gets the pool's only connection (a new one), well
    // before the sleep would have ended
    let c = p.connect("postgres", None, "app").await.unwrap();
    let n: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
    assert_eq!(rows(&clients).len(), 2, "this client and the admin");
}

/// `idle_transaction_timeout`: a client idle in a transaction is
/// disconnected (25P03) and its server's transaction does not stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_a_transaction_left_open() {
    let pg = PgServer::primary();
    let p = proxy("transaction", "idle_transaction_timeout = \"1s\"\n", &pg).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("begin; select 1").await.unwrap();
    wait_for(LIMIT, || {
        pg.sql(
            "app",
            "select count(*) from pg_stat_activity where state = 'idle in transaction'",
        ) == "0"
    })
    .await;
    let e = c.batch_execute("select 2").await.unwrap_err();
    assert!(
        code(&e).as_deref() == Some("25P03") || c.is_closed(),
        "{e:?}"
    );
}

/// `query_timeout`: a query that runs too long is cancelled on the server
/// and its client told (57014).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_long_query() {
    let pg = PgServer::primary();
    let p = proxy("transaction", "query_timeout = \"1s\"\n", &pg).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    let e = tokio::time::timeout(LIMIT, c.batch_execute("select pg_sleep(120)"))
        .await
        .expect("query_timeout ends the query")
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("57014"), "{e:?}");
    wait_for(LIMIT, || {
        pg.sql(
            "app",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(120)'",
        ) == "0"
    })
    .await;
}

/// `client_idle_timeout`: a client that holds no server and sends nothing
/// is disconnected (57P05); SHOW CLIENTS shows how long it has been idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_an_idle_client() {
    let pg = PgServer::primary();
    let p = proxy("transaction", "client_idle_timeout = \"2s\"\n", &pg).await;
    let admin = p.connect("postgres", None, "pgwarden").await.unwrap();
    let mut s = logged_in(&p).await;
    let r = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let idle: Vec<_> = rows(&r)
        .into_iter()
        .filter(|r| r.get("database") == Some("app"))
        .collect();
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0].get("state"), Some("idle"));
    assert!(idle[0].get("state_s").unwrap().parse::<f64>().is_ok());
    // the proxy closes the connection after a FATAL 57P05
    let got = read_until(&mut s, |t, body| {
        t == b'E' && body.windows(5).any(|w| w == b"57P05")
    })
    .await;
    assert_eq!(got, "E");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed after the error");
}

/// Session mode: a client is told its server process's pid (so
/// pg_backend_pid(), pg_terminate_backend() and notifications agree with
/// it), a later client gets a process of its own, and a startup
/// client_encoding is reported by PostgreSQL's name for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_see_their_own_server_process() {
    let pg = PgServer::primary();
    let p = proxy("session", "", &pg).await;
    let login = |enc: &'static str| {
        let addr = p.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&startup_with(&[
                (b"user", b"postgres"),
                (b"database", b"app"),
                (b"client_encoding", enc.as_bytes()),
            ]))
            .await
            .unwrap();
            let mut pid = 0;
            let mut encoding = String::new();
            read_until(&mut s, |t, body| {
                if t == b'K' {
                    pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                }
                if t == b'S' && body.starts_with(b"client_encoding\0") {
                    encoding = String::from_utf8_lossy(&body[16..body.len() - 1]).into();
                }
                t == b'Z'
            })
            .await;
            (s, pid, encoding)
        }
    };
    let (mut a, pid_a, enc) = login("utf-8").await;
    assert_eq!(enc, "UTF8");
    a.write_all(&msgs(&[F::Query("select pg_backend_pid()".into())]))
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut a, |t, body| {
        if t == b'D' {
            seen = String::from_utf8_lossy(&body[6..]).into();
        }
        t == b'Z'
    })
    .await;
    assert_eq!(
        seen,
        pid_a.to_string(),
        "BackendKeyData names the server process"
    );
    drop(a);
    let (_b, pid_b, _) = login("UTF8").await;
    assert_ne!(pid_b, pid_a, "a new session gets a process of its own");
    // pg_terminate_backend on the pid the client was told ends its session
    let (mut c, pid_c, _) = login("UTF8").await;
    pg.sql("app", &format!("select pg_terminate_backend({pid_c})"));
    c.write_all(&msgs(&[F::Query("select 1".into())]))
        .await
        .unwrap();
    let got = read_until(&mut c, |t, _| t == b'E' || t == b'Z').await;
    assert!(got.ends_with('E'), "{got}");
}
