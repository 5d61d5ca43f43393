//! Bad input from the network gets a clear error, and the proxy keeps
//! serving everyone else.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the proxy closes the connection; returns the SQLSTATE and
/// message of the first ErrorResponse seen.
async fn read_error(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("proxy closed the connection");
    let mut pos = 0;
    while pos + 5 <= buf.len() {
        let tag = buf[pos];
        let len =
            u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]) as usize;
        let body = &buf[pos + 5..(pos + 1 + len).min(buf.len())];
        if tag == b'E' {
            let (mut code, mut msg) = (String::new(), String::new());
            for f in body.split(|&b| b == 0) {
                match f.first() {
                    Some(b'C') => code = String::from_utf8_lossy(&f[1..]).into(),
                    Some(b'M') => msg = String::from_utf8_lossy(&f[1..]).into(),
                    _ => {}
                }
            }
            return (code, msg);
        }
        pos += 1 + len;
    }
    panic!("no ErrorResponse in {buf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_clear_error_and_others_keep_working() {
    let pg = PgServer::primary();
    let p = start_proxy(
        &format!("{TRUST}max_message_size = 65536\n"),
        &backends(&[&pg]),
    )
    .await;
    let good = p.connect("postgres", None, "app").await.unwrap();

    // garbage instead of a startup packet
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01", "{msg}");

    // protocol 2.0
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01");
    assert!(msg.contains("unsupported frontend protocol 2.0"), "{msg}");

    // no user name
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 9, 0, 3, 0, 0, 0]).await.unwrap();
    let (code, _) = read_error(&mut s).await;
    assert_eq!(code, "28000");

    // an oversized message after login
    let mut s = logged_in(&p).await;
    s.write_all(b"Q\x7f\xff\xff\xff").await.unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01");
    assert!(msg.contains("length"), "{msg}");

    // a malformed Query (no terminator)
    let mut s = logged_in(&p).await;
    s.write_all(b"Q\0\0\0\x08abcd").await.unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01");
    assert!(msg.contains("not terminated"), "{msg}");

    // an unknown message type
    let mut s = logged_in(&p).await;
    s.write_all(b"?\0\0\0\x04").await.unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01");
    assert!(msg.contains("unknown message type"), "{msg}");

    // a password message after login
    let mut s = logged_in(&p).await;
    s.write_all(b"p\0\0\0\x07pw\0").await.unwrap();
    let (code, _) = read_error(&mut s).await;
    assert_eq!(code, "08P01");

    // a client that connects and says nothing does not hurt anyone either
    let _silent = TcpStream::connect(p.addr).await.unwrap();

    // the well-behaved client never noticed
    assert_eq!(
        good.query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let again = p.connect("postgres", None, "app").await.unwrap();
    assert_eq!(
        again
            .query_one("select 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_a_clear_error_not_a_hang() {
    let port = testkit::free_port();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nhealth_check_period = \"200ms\"\nserver_connect_timeout = \"1s\"\nquery_wait_timeout = \"1s\"\n{TRUST}\n\
         [[backends]]\nhost = \"127.0.0.1\"\nport = {port}\n"
    );
    let cfg = config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let px = proxy::Proxy::bind(cfg, None).await.unwrap();
    let addr = px.local_addr();
    tokio::spawn(px.run());
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app connect_timeout=10",
        addr.port()
    );
    let start = std::time::Instant::now();
    let e = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("login must fail");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(code(&e).as_deref(), Some("08006"), "{e:?}");
    assert!(
        e.as_db_error().unwrap().message().contains("no primary"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_authentication_messages_are_refused_before_they_are_read() {
    let pg = PgServer::primary();
    let hba =
        "hba = [\"host all md5user 127.0.0.1/32 md5\", \"host all all 127.0.0.1/32 trust\"]\n";
    let users = "[[users]]\nname = \"md5user\"\npassword = \"md5pass\"\n";
    let p = start_proxy(hba, &format!("{}{users}", backends(&[&pg]))).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup("md5user", "app")).await.unwrap();
    // AuthenticationMD5Password: 'R', length 12, code 5, 4 salt bytes
    let mut req = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((req[0], req[8]), (b'R', 5), "{req:?}");
    // a password message claiming 60 MB (the proxy's max_message_size is
    // 64 MB by default); nothing more is sent
    s.write_all(&[b'p', 0x03, 0x93, 0x87, 0x00]).await.unwrap();
    let (code, msg) = read_error(&mut s).await;
    assert_eq!(code, "08P01", "{msg}");
    assert!(msg.contains("length"), "{msg}");
    // others still log in
    let c = p.connect("md5user", Some("md5pass"), "app").await.unwrap();
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_to_missing_databases_leave_no_pools_behind() {
    let pg = PgServer::primary();
    let p = start_proxy(TRUST, &backends(&[&pg])).await;
    let c = p.connect("postgres", None, "app").await.unwrap();
    c.simple_query("select 1").await.unwrap();
    let pools = p.state.pools.all().len();
    for i in 0..20 {
        let e = p
            .connect("postgres", None, &format!("no_such_db_{i}"))
            .await
            .expect_err("no such database");
        assert_eq!(code(&e).as_deref(), Some("3D000"), "{e}");
    }
    assert_eq!(p.state.pools.all().len(), pools);
    c.simple_query("select 1").await.unwrap();
}
