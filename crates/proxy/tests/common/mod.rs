//! Shared set-up for the proxy's integration tests: a real PostgreSQL and
//! an in-process proxy in front of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use testkit::PgServer;

pub struct TestProxy {
    pub addr: SocketAddr,
    pub state: Arc<proxy::State>,
}

impl TestProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A tokio-postgres connection string through the proxy.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let pw = password
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db}{pw} connect_timeout=10",
            self.port()
        )
    }

    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.url(user, password, db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub fn shutdown(&self) {
        self.state.begin_shutdown();
    }
}

/// `[[backends]]` entries for servers.
pub fn backends(servers: &[&PgServer]) -> String {
    servers
        .iter()
        .map(|s| format!("[[backends]]\nhost = \"127.0.0.1\"\nport = {}\n", s.port))
        .collect()
}

/// Starts a proxy with `[proxy]` settings `proxy_toml` (listen is added)
/// and the given extra sections, and waits until it knows a primary.
pub async fn start_proxy(proxy_toml: &str, rest: &str) -> TestProxy {
    start_proxy_at(proxy_toml, rest, None).await
}

pub async fn start_proxy_at(proxy_toml: &str, rest: &str, path: Option<&Path>) -> TestProxy {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nhealth_check_period = \"200ms\"\n{proxy_toml}\n{rest}"
    );
    if let Some(p) = path {
        std::fs::write(p, &text).unwrap();
    }
    let cfg =
        config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let p = proxy::Proxy::bind(cfg, path.map(Path::to_owned))
        .await
        .expect("bind proxy");
    let addr = p.local_addr();
    let state = p.state.clone();
    tokio::spawn(p.run());
    let tp = TestProxy { addr, state };
    wait_for(Duration::from_secs(10), || {
        tp.state.topology.primary().is_some()
    })
    .await;
    tp
}

pub async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

pub const TRUST: &str =
    "hba = [\"host all all 127.0.0.1/32 trust\"]\nadmin_users = [\"postgres\"]\n";

/// A self-signed certificate and key for `localhost` in `dir`, readable
/// by PostgreSQL (chowned to OS user postgres when running as root).
pub fn self_signed_cert(dir: &testkit::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    if let Some(u) = testkit::OsUser::for_postgres("postgres").unwrap() {
        u.chown(&crt).unwrap();
        u.chown(&key).unwrap();
    }
    (crt, key)
}

/// A protocol 3.0 startup packet.
pub fn startup(user: &str, db: &str) -> Vec<u8> {
    startup_with(&[(b"user", user.as_bytes()), (b"database", db.as_bytes())])
}

/// A protocol 3.0 startup packet with these parameters, as bytes (not
/// necessarily UTF-8).
pub fn startup_with(params: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

/// Logs in as postgres (trust) and reads up to ReadyForQuery.
pub async fn logged_in(p: &TestProxy) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup("postgres", "app")).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed during login");
        buf.extend_from_slice(&chunk[..n]);
        // ReadyForQuery is the last message of the login
        if buf.len() >= 6 && buf[buf.len() - 6] == b'Z' {
            return s;
        }
    }
}

/// Reads until `n` ReadyForQuery messages have come; returns what came.
pub async fn until_ready(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut seen = 0;
    let mut pos = 0;
    while seen < n {
        let got = s.read(&mut chunk).await.unwrap();
        assert!(got > 0, "closed");
        buf.extend_from_slice(&chunk[..got]);
        while buf.len() >= pos + 5 {
            let len = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]])
                as usize;
            if buf.len() < pos + 1 + len {
                break;
            }
            seen += usize::from(buf[pos] == b'Z');
            pos += 1 + len;
        }
    }
    buf
}

/// Fails unless `needle` occurs in `haystack` (both shown as text).
pub fn assert_has(haystack: &[u8], needle: &[u8]) {
    assert!(
        haystack.windows(needle.len()).any(|w| w == needle),
        "{:?} not in {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(haystack)
    );
}
