//! The proxy against real PostgreSQL servers and real clients.
mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_transactions_reach_the_primary() {
    let pg = PgServer::primary();
    let p = start_proxy(TRUST, &backends(&[&pg])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    c.execute("INSERT INTO t VALUES ($1, $2)", &[&1i32, &"one"])
        .await
        .unwrap();
    let row = c
        .query_one("SELECT v FROM t WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "one");
    // the row is really in PostgreSQL
    assert_eq!(pg.sql("app", "select v from t"), "one");
    // server-side error keeps the client usable
    let e = c
        .batch_execute("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("42P01"));
    assert_eq!(
        c.query_one("SELECT 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_methods() {
    let pg = PgServer::primary();
    let hba = "hba = [\"host all md5user 127.0.0.1/32 md5\", \"host all scramuser 127.0.0.1/32 scram-sha-256\", \
               \"host all clear 127.0.0.1/32 password\", \"host all nobody 0.0.0.0/0 reject\", \
               \"host all postgres 127.0.0.1/32 trust\", \"host all all 127.0.0.1/32 scram-sha-256\"]\n";
    let users = "[[users]]\nname = \"md5user\"\npassword = \"md5pass\"\n\
                 [[users]]\nname = \"scramuser\"\npassword = \"scrampass\"\n\
                 [[users]]\nname = \"clear\"\npassword = \"md5pass\"\n";
    let p = start_proxy(hba, &format!("{}{users}", backends(&[&pg]))).await;
    // md5 client to proxy, md5 proxy to server
    let c = p.connect("md5user", Some("md5pass"), "app").await.unwrap();
    assert_eq!(current_user(&c).await, "md5user");
    // SCRAM both ways
    let c = p
        .connect("scramuser", Some("scrampass"), "app")
        .await
        .unwrap();
    assert_eq!(current_user(&c).await, "scramuser");
    // trust
    p.connect("postgres", None, "app").await.unwrap();
    // wrong passwords
    for (u, pw) in [
        ("md5user", "nope"),
        ("scramuser", "nope"),
        ("clear", "nope"),
    ] {
        let e = p.connect(u, Some(pw), "app").await.unwrap_err();
        assert_eq!(code(&e).as_deref(), Some("28P01"), "{u}: {e}");
    }
    // cleartext password method (server side uses the user's md5 rule? no: 'clear' is unknown to PG)
    let e = p
        .connect("clear", Some("md5pass"), "app")
        .await
        .unwrap_err();
    assert_ne!(
        code(&e).as_deref(),
        Some("28P01"),
        "proxy accepted the password; the server does not know the role: {e}"
    );
    // reject rule and unknown users
    let e = p.connect("nobody", Some("x"), "app").await.unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("28000"));
    let e = p.connect("ghost", Some("x"), "app").await.unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("28P01"));
    // a database that does not exist: the server's error reaches the client
    let e = p.connect("postgres", None, "nosuchdb").await.unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("3D000"));
}

/// A SCRAM password with characters SASLprep changes (U+2168 ROMAN
/// NUMERAL NINE becomes "IX", a no-break space a space): libpq and
/// PostgreSQL hash the normalised form, so must the proxy, when it checks
/// the client (psql) and when it logs in to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_are_normalised_as_postgresql_does() {
    let pg = PgServer::primary();
    let hba = "hba = [\"host all all 127.0.0.1/32 scram-sha-256\"]\n";
    // The server's and the proxy's password for scramuser; psql logs in
    // through the proxy with each of `tries`.
    let login_with = |password: &str, tries: &[&str]| {
        pg.sql(
            "postgres",
            &format!("SET password_encryption = 'scram-sha-256'; ALTER ROLE scramuser PASSWORD '{password}'"),
        );
        let users = format!("[[users]]\nname = \"scramuser\"\npassword = \"{password}\"\n");
        let rest = format!("{}{users}", backends(&[&pg]));
        let tries: Vec<String> = tries.iter().map(|t| t.to_string()).collect();
        async move {
            let p = start_proxy(hba, &rest).await;
            let port = p.port().to_string();
            tries
                .iter()
                .map(|pw| {
                    testkit::run_client(
                        "psql",
                        &[
                            "-h",
                            "127.0.0.1",
                            "-p",
                            &port,
                            "-U",
                            "scramuser",
                            "-d",
                            "app",
                            "-XAtc",
                            "select current_user",
                        ],
                        &[("PGPASSWORD", pw), ("PGCONNECT_TIMEOUT", "5")],
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let password = "\u{2168}\u{a0}pass";
    // the normalised form is the same password; without the no-break
    // space it is another
    let r = login_with(password, &[password, "IX pass", "\u{2168}pass"]).await;
    assert!(r[0].0, "{}", r[0].2);
    assert_eq!(r[0].1.trim(), "scramuser");
    assert!(r[1].0, "{}", r[1].2);
    assert!(!r[2].0);
    assert!(
        r[2].2.contains("password authentication failed"),
        "{}",
        r[2].2
    );

    // PostgreSQL checks for prohibited characters before normalising:
    // U+0340 (deprecated; NFKC makes it U+0300) keeps the password as it is.
    let password = "a\u{340}b";
    let r = login_with(password, &[password]).await;
    assert!(r[0].0, "{}", r[0].2);
    assert_eq!(r[0].1.trim(), "scramuser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_looks_up_unknown_users() {
    let pg = PgServer::primary();
    let hba = "hba = [\"host all all 127.0.0.1/32 scram-sha-256\"]\n";
    let aq = "[auth_query]\nuser = \"postgres\"\n";
    let p = start_proxy(hba, &format!("{}{aq}", backends(&[&pg]))).await;
    // scramuser's SCRAM secret comes from pg_shadow; the proxy passes the
    // client's proof through to the server
    let c = p
        .connect("scramuser", Some("scrampass"), "app")
        .await
        .unwrap();
    assert_eq!(current_user(&c).await, "scramuser");
    let e = p
        .connect("scramuser", Some("wrong"), "app")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("28P01"));
    // md5 secret from pg_shadow, md5 hba at the proxy
    drop(p);
    let p = start_proxy(
        "hba = [\"host all all 127.0.0.1/32 md5\"]\n",
        &format!("{}{aq}", backends(&[&pg])),
    )
    .await;
    let c = p.connect("md5user", Some("md5pass"), "app").await.unwrap();
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // with no primary to ask, the answer is "cannot connect", not "wrong
    // password"
    pg.stop();
    wait_for(Duration::from_secs(10), || {
        p.state.topology.primary().is_none()
    })
    .await;
    let e = p
        .connect("md5user", Some("md5pass"), "app")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("08006"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_in_transaction_mode_across_shared_servers() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 2\n"),
        &backends(&[&pg]),
    )
    .await;
    let setup = p.connect("postgres", None, "app").await.unwrap();
    setup
        .batch_execute("CREATE TABLE kv (k int primary key, v int)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16i32 {
        let url = p.url("postgres", None, "app");
        tasks.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // tokio-postgres prepares named statements (s0, s1, ...) and reuses them
            let ins = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
            let sel = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
            for j in 0..25i32 {
                let k = i * 1000 + j;
                c.execute(&ins, &[&k, &(k * 2)]).await.unwrap();
                let v: i32 = c.query_one(&sel, &[&k]).await.unwrap().get(0);
                assert_eq!(v, k * 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(pg.sql("app", "select count(*) from kv"), "400");
    // 16 clients shared at most 2 server connections
    let n: i64 = setup
        .query_one("select count(*) from pg_stat_activity where datname = 'app' and backend_type = 'client backend'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n <= 2, "{n} server connections");
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn show(c: &tokio_postgres::Client, what: &str) -> String {
    c.simple_query(&format!("SHOW {what}"))
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .unwrap()
}

/// Clients a and b of a transaction-mode pool of one server connection.
async fn two_clients_one_server() -> (
    PgServer,
    TestProxy,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    two_clients_one_server_with("").await
}

/// The same, on a server with extra postgresql.conf lines.
async fn two_clients_one_server_with(
    conf: &str,
) -> (
    PgServer,
    TestProxy,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    let pg = PgServer::primary_with(conf);
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 1\n"),
        &backends(&[&pg]),
    )
    .await;
    let a = p.connect("postgres", None, "app").await.unwrap();
    let b = p.connect("postgres", None, "app").await.unwrap();
    (pg, p, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_is_isolated_between_clients_in_transaction_mode() {
    let (_pg, _p, a, b) = two_clients_one_server().await;
    a.batch_execute("SET search_path TO a_schema, public; SET statement_timeout = '4s'; SET application_name = 'client_a'")
        .await
        .unwrap();
    // b shares the single server connection but sees defaults
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&b, "application_name").await, "");
    // a keeps its settings
    assert_eq!(show(&a, "search_path").await, "a_schema, public");
    assert_eq!(show(&a, "statement_timeout").await, "4s");
    assert_eq!(show(&a, "application_name").await, "client_a");
    let a_zone = show(&a, "TimeZone").await;
    assert_ne!(a_zone, "Asia/Tokyo");
    b.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(show(&a, "TimeZone").await, a_zone);
    assert_eq!(show(&b, "TimeZone").await, "Asia/Tokyo");
    // RESET goes back to the default
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "0");
    // a SET rolled back is not kept
    a.batch_execute("BEGIN; SET work_mem = '77MB'; ROLLBACK")
        .await
        .unwrap();
    b.batch_execute("SELECT 1").await.unwrap();
    assert_ne!(show(&a, "work_mem").await, "77MB");
}

/// SETs are found the way the server reads a query: a ';' or a SET inside
/// a DO block or an E'' string is not a statement of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tracking_reads_statements_as_the_server_does() {
    let (_pg, _p, a, b) = two_clients_one_server().await;
    let default = show(&b, "work_mem").await;
    a.batch_execute(
        "DO $$ BEGIN PERFORM 1; SET LOCAL work_mem = '3MB'; END $$; SET work_mem = '5MB'",
    )
    .await
    .unwrap();
    // b, on the same server connection, does not get a's setting
    assert_eq!(show(&b, "work_mem").await, default);
    assert_eq!(show(&a, "work_mem").await, "5MB");
    a.batch_execute("SELECT E'it\\'s; SET work_mem = ''7MB'''; SET statement_timeout = '6s'")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "6s");
    assert_eq!(show(&a, "work_mem").await, "5MB");
    // a comment before the SET (as ORMs add them)
    a.batch_execute("/* app:web */ SET lock_timeout = '8s'")
        .await
        .unwrap();
    assert_eq!(show(&b, "lock_timeout").await, "0");
    assert_eq!(show(&a, "lock_timeout").await, "8s");
    // With standard_conforming_strings = off a backslash escapes a quote
    // in any string: here the SET is a statement of its own.
    a.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    backslash_hidden_set(&a, &b, "idle_in_transaction_session_timeout", "7s").await;
    assert_eq!(show(&b, "standard_conforming_strings").await, "on");
    assert_eq!(show(&a, "standard_conforming_strings").await, "off");
}

/// `a` runs a SET that only a reader taking backslash escapes in every
/// string sees (with standard strings it is inside a literal): `b`, on the
/// same server connection, must not get it, and `a` must keep it.
async fn backslash_hidden_set(
    a: &tokio_postgres::Client,
    b: &tokio_postgres::Client,
    name: &str,
    value: &str,
) {
    let default = show(b, name).await;
    a.batch_execute(&format!("SELECT 'x\\'';SET {name} = '{value}';--'"))
        .await
        .unwrap();
    assert_eq!(show(b, name).await, default);
    assert_eq!(show(a, name).await, value);
}

/// A server configured with `standard_conforming_strings = off` (as old
/// applications need) reads a backslash in any string as an escape; the
/// proxy reads the client's queries the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tracking_follows_a_server_without_standard_strings() {
    let (_pg, _p, a, b) = two_clients_one_server_with("standard_conforming_strings = off").await;
    assert_eq!(show(&b, "standard_conforming_strings").await, "off");
    backslash_hidden_set(&a, &b, "lock_timeout", "7s").await;
}

/// The string mode changes in ways the proxy does not parse (SET LOCAL
/// here); it follows what the server reports. A value read with backslash
/// escapes is replayed on other server connections so that it means the
/// same there (it used to be replayed as SQL that ran a hidden SET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tracking_follows_the_reported_string_mode() {
    let (_pg, _p, a, b) = two_clients_one_server().await;
    a.batch_execute("BEGIN; SET LOCAL standard_conforming_strings = off")
        .await
        .unwrap();
    a.batch_execute("SELECT 'x\\'';SET lock_timeout = '9s';--'")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(show(&b, "lock_timeout").await, "0");
    assert_eq!(show(&a, "lock_timeout").await, "9s");

    a.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    a.batch_execute("SET application_name = 'x\\'; SET statement_timeout = 7000; --'")
        .await
        .unwrap();
    // b, then a again (its SETs replayed), then b
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(
        show(&a, "application_name").await,
        "x'; SET statement_timeout = 7000; --"
    );
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "statement_timeout").await, "0");
}

/// Parse, Bind (with `params`) and Execute of `sql` as the unnamed
/// statement (no Sync).
fn unnamed_statement(out: &mut bytes::BytesMut, sql: &str, params: Vec<Option<bytes::Bytes>>) {
    use wire::frontend::{Bind, FrontendMessage as F, Parse};
    F::Parse(Parse {
        name: String::new(),
        query: sql.into(),
        param_types: vec![],
    })
    .encode(out);
    F::Bind(Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: vec![],
        params,
        result_formats: vec![],
    })
    .encode(out);
    F::Execute {
        portal: String::new(),
        max_rows: 0,
    }
    .encode(out);
}

/// Requests sent together: the string mode may change between them, and
/// PostgreSQL (14 and later) reports it only before ReadyForQuery, after
/// the requests behind have run. Here a Parse/Bind/Execute turns standard
/// strings back on, and a Query behind it (read by the server in standard
/// mode) runs a SET that a reading in the old mode puts inside a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_mode_change_inside_a_pipeline_hides_no_set() {
    use tokio::io::AsyncWriteExt;
    use wire::frontend::FrontendMessage as F;
    let (_pg, p, _a, b) = two_clients_one_server().await;
    let mut s = logged_in(&p).await;
    let mut out = bytes::BytesMut::new();
    F::Query("SET standard_conforming_strings = off".into()).encode(&mut out);
    s.write_all(&out).await.unwrap();
    until_ready(&mut s, 1).await;
    out.clear();
    unnamed_statement(&mut out, "SET standard_conforming_strings = on", vec![]);
    F::Query("SELECT 'x\\'; SET lock_timeout = '5s'; --'".into()).encode(&mut out);
    F::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let answer = until_ready(&mut s, 2).await;
    // the server ran the SET (two SET tags: the Execute's and the Query's)
    let tags = answer
        .windows(5)
        .filter(|w| w == b"SET\0S" || w == b"SET\0T")
        .count();
    assert!(tags >= 1, "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(show(&b, "lock_timeout").await, "0");
}

/// The same with the change answered but not yet synced: an Execute that
/// turns standard strings off, a Flush, its answer (PostgreSQL reports the
/// new mode only at the next ReadyForQuery), then a Query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_mode_change_before_a_sync_hides_no_set() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wire::frontend::FrontendMessage as F;
    let (_pg, p, _a, b) = two_clients_one_server().await;
    let mut s = logged_in(&p).await;
    let mut out = bytes::BytesMut::new();
    unnamed_statement(&mut out, "SET standard_conforming_strings = off", vec![]);
    F::Flush.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"SET\0") {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    out.clear();
    F::Query("SELECT 'x\\''; SET lock_timeout = '4s'; --'".into()).encode(&mut out);
    F::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let answer = until_ready(&mut s, 2).await;
    assert_has(&answer, b"SET\0");
    assert_eq!(show(&b, "lock_timeout").await, "0");
}

/// A client in another encoding than UTF-8 (LATIN1, psycopg): its
/// extended-protocol queries pass (the proxy used to end the session on
/// them), and a SET after a LATIN1 string is seen (it leaked to the next
/// client: a query that was not UTF-8 was not read at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_other_encodings_than_utf8() {
    let (_pg, p, _a, b) = two_clients_one_server().await;
    let script = r#"
import sys, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
c.execute("SET client_encoding = 'LATIN1'")
print(c.execute("SELECT %s::text || '\u00e9'", ["x"], prepare=True).fetchone()[0] == "x\u00e9")
r = c.pgconn.exec_(b"SELECT '\xe9'; SET lock_timeout = '6s'")
print(r.status == psycopg.pq.ExecStatus.COMMAND_OK)
print(c.execute("SHOW lock_timeout").fetchone()[0])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &p.url("postgres", None, "app")])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "True\nTrue\n6s",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(show(&b, "lock_timeout").await, "0");
}

/// An application name in the client's own encoding (a LATIN1
/// PGAPPNAME): PostgreSQL lets the client in, with '?' for the bytes that
/// are not printable ASCII. The proxy refused the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_in_latin1_logs_in() {
    use tokio::io::AsyncWriteExt;
    let (_pg, p, _a, b) = two_clients_one_server().await;
    let packet = startup_with(&[
        (b"user", b"postgres"),
        (b"database", b"app"),
        (b"application_name", b"caf\xe9"),
    ]);
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&packet).await.unwrap();
    let login = until_ready(&mut s, 1).await;
    assert_has(&login, b"caf?\0");
    // the server has the name as PostgreSQL keeps it
    s.write_all(b"Q\0\0\0\x1aSHOW application_name\0")
        .await
        .unwrap();
    let answer = until_ready(&mut s, 1).await;
    assert_has(&answer, b"caf?");
    // and another client of the same server connection does not
    assert_eq!(show(&b, "application_name").await, "");
}

/// `current_user, session_user` of a client.
async fn whoami(c: &tokio_postgres::Client) -> String {
    let r = c
        .query_one("SELECT current_user || ',' || session_user", &[])
        .await
        .unwrap();
    r.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_do_not_leak_and_reset_keeps_startup_values() {
    let pg = PgServer::primary();
    pg.sql(
        "postgres",
        "CREATE ROLE app_admin NOLOGIN; GRANT app_admin TO postgres; CREATE ROLE other_user LOGIN",
    );
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 1\n"),
        &backends(&[&pg]),
    )
    .await;
    let a = p.connect("postgres", None, "app").await.unwrap();
    let b = p.connect("postgres", None, "app").await.unwrap();
    // RESET ALL keeps a role (PostgreSQL's rule): a keeps it, b, on the
    // same single server connection, must not get it.
    a.batch_execute("SET ROLE app_admin").await.unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(whoami(&a).await, "app_admin,postgres");
    assert_eq!(whoami(&b).await, "postgres,postgres");
    assert_eq!(whoami(&a).await, "app_admin,postgres");
    // A role set in a transaction whose other SET rolled back.
    a.batch_execute("BEGIN; SET work_mem = '3MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(whoami(&b).await, "postgres,postgres");
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(whoami(&a).await, "postgres,postgres");
    // SET SESSION AUTHORIZATION is not carried between transactions, and
    // never reaches another client.
    a.batch_execute("SET SESSION AUTHORIZATION other_user")
        .await
        .unwrap();
    assert_eq!(whoami(&b).await, "postgres,postgres");
    // SET SESSION CHARACTERISTICS neither.
    a.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    assert_eq!(
        show(&b, "default_transaction_isolation").await,
        "read committed"
    );

    // RESET and DISCARD ALL go back to what the client asked for at startup.
    let url = format!(
        "{} options='-c search_path=tenant1'",
        p.url("postgres", None, "app")
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(show(&c, "search_path").await, "tenant1");
    c.batch_execute("SET search_path = other").await.unwrap();
    c.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(show(&c, "search_path").await, "tenant1");
    c.batch_execute("SET search_path = other").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(&c, "search_path").await, "tenant1");
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let pg = PgServer::primary();
    let p = start_proxy(TRUST, &backends(&[&pg])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    let token = c.cancel_token();
    let start = std::time::Instant::now();
    let q = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("57014"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let pg = PgServer::primary();
    let p = start_proxy(TRUST, &backends(&[&pg])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE c (a int, b text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    assert_eq!(pg.sql("app", "select count(*) from c"), "5000");
    let stream = c.copy_out("COPY c TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);
    // a COPY that fails half-way leaves the session usable (psql, simple protocol)
    let dir = testkit::TempDir::new("copy");
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "1\tok\nnot-a-number\tbad\n").unwrap();
    let (ok, out, err) = testkit::run_client(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &p.port().to_string(),
            "-U",
            "postgres",
            "app",
            "-c",
            &format!("\\copy c from '{}'", bad.display()),
            "-c",
            "select count(*) from c",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("invalid input syntax for type integer"),
        "{err}"
    );
    assert_eq!(
        out.trim(),
        "5000",
        "the failed COPY added no row and psql went on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_queue_beyond_the_pool_then_time_out() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 1\nquery_wait_timeout = \"1500ms\"\n"),
        &backends(&[&pg]),
    )
    .await;
    let a = p.connect("postgres", None, "app").await.unwrap();
    let b = p.connect("postgres", None, "app").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // b waits for a's server connection and gets it when a commits
    let waiter = tokio::spawn(async move {
        let r = b
            .query_one("select 7", &[])
            .await
            .map(|r| r.get::<_, i32>(0));
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "b did not wait for the pool");
    a.batch_execute("COMMIT").await.unwrap();
    let (r, _b) = waiter.await.unwrap();
    assert_eq!(r.unwrap(), 7);
    // a holds the connection past the wait timeout: a third client gets a clear error
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let c = p.connect("postgres", None, "app").await.unwrap();
    let e = c.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("53300"), "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("query_wait_timeout"), "{msg}");
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_promoted_standby() {
    let primary = PgServer::primary();
    let standby = PgServer::standby_of(&primary);
    let p = start_proxy(TRUST, &backends(&[&primary, &standby])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE f (id int)").await.unwrap();
    c.batch_execute("INSERT INTO f VALUES (1)").await.unwrap();
    standby.wait_caught_up(&primary);
    assert_eq!(p.state.topology.primary().unwrap().node, 0);

    // a client in a transaction on the old primary when it goes away
    let (tx, conn) =
        tokio_postgres::connect(&p.url("postgres", None, "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    tx.batch_execute("BEGIN; INSERT INTO f VALUES (99)")
        .await
        .unwrap();

    primary.stop();
    promote_and_find(&p, &standby, 1).await;
    // the client of the dead server gets an error, not a hang
    let e = tokio::time::timeout(Duration::from_secs(5), tx.batch_execute("COMMIT"))
        .await
        .expect("no hang");
    assert!(e.is_err());
    // ... and the error says why (tokio-postgres reports an error that
    // arrives between requests as the connection's end).
    let end = conn
        .await
        .unwrap()
        .expect_err("an error, not a silent close");
    let code = code(&end);
    assert!(
        matches!(code.as_deref(), Some("08006" | "57P01")),
        "{code:?}: {end}"
    );
    // the same client connection writes to the new primary, no proxy restart
    c.batch_execute("INSERT INTO f VALUES (2)").await.unwrap();
    assert_eq!(
        standby.sql("app", "select string_agg(id::text, ',' order by id) from f"),
        "1,2"
    );

    // The old primary is started again, still a primary on its old
    // timeline: writes must stay on the new primary (no split brain).
    primary.start();
    for i in 3..15 {
        c.batch_execute(&format!("INSERT INTO f VALUES ({i})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(p.state.topology.primary().unwrap().node, 1);
    assert_eq!(standby.sql("app", "select count(*) from f"), "14");
    assert_eq!(
        primary.sql("app", "select count(*) from f where id > 2"),
        "0"
    );
}

/// Promotes `standby` (backend `node`) and checks that the proxy takes it
/// for the primary within 2 s, as the issue asks.
async fn promote_and_find(p: &TestProxy, standby: &PgServer, node: usize) {
    let t0 = std::time::Instant::now();
    standby.promote();
    wait_for(Duration::from_secs(2), || {
        p.state.topology.primary().is_some_and(|t| t.node == node)
    })
    .await;
    let found = t0.elapsed();
    assert!(
        found < Duration::from_secs(2),
        "new primary found after {found:?}"
    );
}

/// A backend that hangs (the kernel accepts connections, nothing answers)
/// must not hold up the checks of the others: the promoted standby is
/// found within 2 s, long before the hung node's check times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_does_not_delay_finding_the_new_primary() {
    let primary = PgServer::primary();
    let standby = PgServer::standby_of(&primary);
    let hung = PgServer::standby_of(&primary);
    let p = start_proxy(
        &format!("{TRUST}health_check_timeout = \"30s\"\n"),
        &backends(&[&primary, &standby, &hung]),
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE hb (id int)").await.unwrap();
    standby.wait_caught_up(&primary);

    primary.stop();
    hung.freeze();
    // Checks of the hung node are now waiting for an answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    promote_and_find(&p, &standby, 1).await;
    c.batch_execute("INSERT INTO hb VALUES (1)").await.unwrap();
    assert_eq!(standby.sql("app", "select count(*) from hb"), "1");
    hung.thaw();
}

/// On a saturated machine a health check can go unanswered for over a
/// second while the primary serves its clients (the scheduler starves the
/// check's backend). Such a primary must not be marked down, which would
/// end every open transaction; one that nobody hears from still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_serving_clients_is_not_marked_down_for_slow_health_checks() {
    let pg = PgServer::primary();
    // The health-check user's pg_is_in_recovery() sleeps while slow.flag
    // has a row (its search_path puts a schema before pg_catalog).
    pg.sql(
        "postgres",
        "CREATE ROLE hc LOGIN; CREATE SCHEMA slow; CREATE TABLE slow.flag (x int); \
         CREATE FUNCTION slow.pg_is_in_recovery() RETURNS bool LANGUAGE sql AS \
         $$ SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM slow.flag) THEN 3 ELSE 0 END); \
            SELECT pg_catalog.pg_is_in_recovery() $$; \
         GRANT USAGE ON SCHEMA slow TO hc; GRANT SELECT ON slow.flag TO hc; \
         ALTER ROLE hc SET search_path = slow, pg_catalog",
    );
    let p = start_proxy(
        &format!("{TRUST}health_check_user = \"hc\"\nhealth_check_timeout = \"500ms\"\n"),
        &backends(&[&pg]),
    )
    .await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    let epoch = p.state.topology.current_epoch();
    pg.sql("postgres", "INSERT INTO slow.flag VALUES (1)");
    // 4 s of client traffic: six or more unanswered checks
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        c.batch_execute("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.state.topology.current_epoch(), epoch);
    assert!(p.state.topology.primary().is_some());
    // Without clients, the silence counts: the node is marked down.
    wait_for(Duration::from_secs(10), || {
        p.state.topology.primary().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_health_check_connection_does_not_end_transactions() {
    let pg = PgServer::primary();
    let p = start_proxy(TRUST, &backends(&[&pg])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.batch_execute("CREATE TABLE h (id int)").await.unwrap();
    let epoch = p.state.topology.current_epoch();
    c.batch_execute("BEGIN; INSERT INTO h VALUES (1)")
        .await
        .unwrap();
    // The proxy's health-check backend is terminated (as an operator or
    // idle_session_timeout could), several times over a few checks.
    for _ in 0..3 {
        wait_for(Duration::from_secs(5), || {
            pg.sql(
                "postgres",
                "select count(*) from pg_stat_activity where application_name = 'pgwarden health check'",
            ) == "1"
        })
        .await;
        pg.sql(
            "postgres",
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pgwarden health check'",
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    c.batch_execute("INSERT INTO h VALUES (2); COMMIT")
        .await
        .unwrap();
    assert_eq!(pg.sql("app", "select count(*) from h"), "2");
    assert_eq!(
        p.state.topology.current_epoch(),
        epoch,
        "the primary never changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_pins_the_connection() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}default_pool_size = 2\n"),
        &backends(&[&pg]),
    )
    .await;
    let (listener, mut conn) =
        tokio_postgres::connect(&p.url("postgres", None, "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = s.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let other = p.connect("postgres", None, "app").await.unwrap();
    for i in 0..3 {
        other
            .batch_execute(&format!("NOTIFY jobs, 'n{i}'"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, format!("n{i}"));
    }
}

/// A client pipelining megabytes of requests while the server sends back
/// megabytes of answers: the proxy must read the server while it still
/// has requests to write to it, or the two wait on each other forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_pipelines_do_not_deadlock() {
    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wire::frontend::FrontendMessage as F;

    const N: usize = 4000;
    const SIZE: usize = 10_000;
    const BIG: usize = 64 << 20;
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}pool_mode = \"transaction\"\n"),
        &backends(&[&pg]),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let mut out = BytesMut::new();
    wire::startup::StartupPacket::Startup {
        minor: 0,
        params: vec![
            ("user".into(), "postgres".into()),
            ("database".into(), "app".into()),
        ],
    }
    .encode(&mut out);
    wr.write_all(&out).await.unwrap();
    // Reads backend messages until `want` ReadyForQuery; counts DataRows.
    async fn read_until_ready(
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut Vec<u8>,
    ) -> (usize, usize) {
        let (mut rows, mut bytes) = (0, 0);
        loop {
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 1 + len {
                    break;
                }
                let tag = buf[0];
                assert_ne!(
                    tag,
                    b'E',
                    "error: {:?}",
                    String::from_utf8_lossy(&buf[..1 + len])
                );
                if tag == b'D' {
                    rows += 1;
                    bytes += len;
                }
                buf.drain(..1 + len);
                if tag == b'Z' {
                    return (rows, bytes);
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let mut buf = Vec::new();
    read_until_ready(&mut rd, &mut buf).await;

    // A statement whose answer is bigger than every socket buffer on the
    // way, with no Sync yet (the server answers as it goes); then, in the
    // same pipeline, N x (Parse, Bind with a SIZE-byte parameter, Execute)
    // and one Sync. The server is busy writing the first answer while the
    // proxy has megabytes of requests to write to it.
    let value = Bytes::from(vec![b'x'; SIZE]);
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::new();
        unnamed_statement(&mut out, &format!("SELECT repeat('y', {BIG})"), vec![]);
        for _ in 0..N {
            unnamed_statement(&mut out, "SELECT $1::text", vec![Some(value.clone())]);
            if out.len() > 1 << 20 {
                wr.write_all(&out).await.unwrap();
                out.clear();
            }
        }
        F::Sync.encode(&mut out);
        wr.write_all(&out).await.unwrap();
        wr
    });
    let (rows, bytes) =
        tokio::time::timeout(Duration::from_secs(60), read_until_ready(&mut rd, &mut buf))
            .await
            .expect("the pipeline stalled");
    assert_eq!(rows, N + 1);
    assert!(bytes >= N * SIZE + BIG);
    writer.await.unwrap();
}
