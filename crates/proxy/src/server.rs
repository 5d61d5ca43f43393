//! One connection from the proxy to a PostgreSQL server: connect, optional
//! TLS, authentication (trust, cleartext, md5, SCRAM-SHA-256 with a password
//! or with keys passed through from a client), and a small simple-query
//! client for health checks, the auth query and state resets.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::backend::{Authentication, BackendMessage, TxStatus};
use wire::frame::split_message;
use wire::scram::{ClientKeys, Credential, ScramClient};
use wire::startup::StartupPacket;
use wire::ErrorFields;

use crate::params::{ParamSet, Strings};
use crate::stream::Stream;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the proxy knows to log in to a server as a user.
#[derive(Debug, Clone)]
pub enum ServerCredential {
    /// No secret: the server must trust the proxy.
    None,
    Password(String),
    /// `md5...` as stored in pg_authid: enough for md5 authentication.
    Md5Hash(String),
    /// Keys recovered from a client's SCRAM exchange.
    Scram(ClientKeys),
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("server {0} did not answer in time")]
    Timeout(String),
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server sent an invalid message: {0}")]
    Protocol(#[from] wire::ProtocolError),
    /// The server answered with an error; its fields are passed to clients.
    #[error("server error: {0}")]
    Rejected(ErrorFields),
    #[error("cannot authenticate to the server: {0}")]
    Auth(String),
}

pub struct ConnectOptions<'a> {
    pub addr: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    pub credential: &'a ServerCredential,
    pub tls: config::ServerTls,
    pub timeout: Duration,
    pub epoch: u64,
    pub extra_params: &'a [(&'a str, &'a str)],
}

/// What the proxy has done to a server connection's session.
#[derive(Debug, Default)]
pub struct ServerSession {
    /// Session parameters the proxy has set on this connection.
    pub applied: ParamSet,
    /// Server-side names of statements prepared on this connection.
    pub prepared: HashSet<Arc<str>>,
    /// The [`crate::relay::ClientParams`] stamp this connection was last
    /// synced with (0: none).
    pub synced_with: u64,
    /// How the server reads string literals now (the
    /// `standard_conforming_strings` it last reported).
    pub strings: Strings,
    /// The client encoding (as last reported) is one where a backslash
    /// byte can be the second byte of a character (SJIS, BIG5, GBK...).
    pub multibyte_backslash: bool,
    /// The proxy cannot tell what this session holds (a statement it could
    /// not model): the connection is closed when it comes back.
    pub unknowable: bool,
}

impl ServerSession {
    /// Notes a ParameterStatus (name and value in the client's encoding)
    /// the proxy reads statements by.
    pub fn reported(&mut self, name: &[u8], value: &[u8]) {
        let value = String::from_utf8_lossy(value);
        match name {
            b"standard_conforming_strings" => self.strings = Strings::of_setting(&value),
            b"client_encoding" => {
                self.multibyte_backslash =
                    ["SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030", "JOHAB"]
                        .iter()
                        .any(|e| value.eq_ignore_ascii_case(e))
            }
            _ => {}
        }
    }
}

pub struct ServerConn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub id: u64,
    pub addr: Arc<str>,
    pub epoch: u64,
    /// The server's BackendKeyData, for cancel requests.
    pub pid: i32,
    pub secret: i32,
    pub created: Instant,
    /// [`crate::clock`] times: opened, and last given back to its pool.
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// Bytes for the server and for the client of the session holding this
    /// connection: the buffers live with the (few) server connections, not
    /// with the (many) clients.
    pub sout: BytesMut,
    pub cout: BytesMut,
    /// What a client holding this connection shows (cancel, SHOW), made on
    /// first use.
    pub shared: Option<Arc<crate::state::ServerRef>>,
    /// ParameterStatus values the server reported at startup.
    pub reported: Vec<(String, String)>,
    /// Session state the relay keeps in step with the server.
    pub session: ServerSession,
    /// Set when the connection must not go back to a pool.
    pub broken: bool,
    /// The backend's lock-free counters, for pooled connections: when it
    /// was last heard from ([`crate::topology::Topology::heard_since`]),
    /// transactions served.
    pub cells: Option<Arc<crate::topology::NodeCells>>,
}

impl ServerConn {
    pub async fn connect(o: ConnectOptions<'_>) -> Result<ServerConn, ServerError> {
        tokio::time::timeout(o.timeout, Self::connect_inner(&o))
            .await
            .map_err(|_| ServerError::Timeout(o.addr.to_owned()))?
    }

    async fn connect_inner(o: &ConnectOptions<'_>) -> Result<ServerConn, ServerError> {
        let tcp = TcpStream::connect(o.addr)
            .await
            .map_err(|source| ServerError::Connect {
                addr: o.addr.to_owned(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let stream = match o.tls {
            config::ServerTls::Disable => Stream::Plain(tcp),
            mode => negotiate_tls(tcp, o.addr, mode == config::ServerTls::Require).await?,
        };
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr: o.addr.into(),
            epoch: o.epoch,
            pid: 0,
            secret: 0,
            created: Instant::now(),
            created_ms: crate::clock::now_ms(),
            last_used_ms: crate::clock::now_ms(),
            sout: BytesMut::new(),
            cout: BytesMut::new(),
            shared: None,
            reported: Vec::new(),
            session: ServerSession::default(),
            broken: false,
            cells: None,
        };
        let mut params = vec![
            ("user".to_owned(), o.user.to_owned()),
            ("database".to_owned(), o.database.to_owned()),
        ];
        params.extend(
            o.extra_params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut out = BytesMut::new();
        StartupPacket::Startup { minor: 0, params }.encode(&mut out);
        conn.stream.write_all(&out).await?;
        conn.authenticate(o.user, o.credential).await?;
        // Parameters and key data until ReadyForQuery.
        loop {
            match conn.read_message().await? {
                BackendMessage::ParameterStatus { name, value } => {
                    conn.reported.push((name, value))
                }
                BackendMessage::BackendKeyData { pid, secret } => {
                    conn.pid = pid;
                    conn.secret = secret;
                }
                BackendMessage::ReadyForQuery(_) => {
                    for (n, v) in &conn.reported {
                        conn.session.reported(n.as_bytes(), v.as_bytes());
                    }
                    return Ok(conn);
                }
                BackendMessage::ErrorResponse(f) => return Err(ServerError::Rejected(f)),
                BackendMessage::NoticeResponse(_)
                | BackendMessage::NegotiateProtocolVersion { .. } => {}
                other => {
                    return Err(ServerError::Auth(format!(
                        "unexpected message during startup: {other:?}"
                    )))
                }
            }
        }
    }

    async fn authenticate(
        &mut self,
        user: &str,
        cred: &ServerCredential,
    ) -> Result<(), ServerError> {
        let mut scram: Option<ScramClient> = None;
        let mut server_proved = false;
        loop {
            let msg = self.read_message().await?;
            let mut out = BytesMut::new();
            match msg {
                // Once SCRAM started, only a server that proved it knows
                // the password (SASLFinal) may say the login succeeded.
                BackendMessage::Authentication(Authentication::Ok)
                    if scram.is_some() && !server_proved =>
                {
                    return Err(ServerError::Auth(
                        "server ended SCRAM authentication without proving it knows the password"
                            .into(),
                    ))
                }
                BackendMessage::Authentication(Authentication::Ok) => return Ok(()),
                BackendMessage::Authentication(Authentication::CleartextPassword) => {
                    match cred {
                        ServerCredential::Password(p) => password_message(&mut out, p),
                        _ => return Err(ServerError::Auth(
                            "server asks for a cleartext password, which the proxy does not know"
                                .into(),
                        )),
                    }
                }
                BackendMessage::Authentication(Authentication::Md5Password { salt }) => {
                    let resp = match cred {
                        ServerCredential::Password(p) => wire::md5::response(user, p, salt),
                        ServerCredential::Md5Hash(h) => wire::md5::response_from_stored(h, salt),
                        _ => return Err(ServerError::Auth("server asks for md5, but the proxy knows no password or md5 hash for this user".into())),
                    };
                    password_message(&mut out, &resp);
                }
                BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                    if !mechanisms.iter().any(|m| m == wire::scram::MECHANISM) {
                        return Err(ServerError::Auth(format!(
                            "server offers no supported SASL mechanism: {mechanisms:?}"
                        )));
                    }
                    let c = match cred {
                        ServerCredential::Password(p) => Credential::Password(p.clone()),
                        ServerCredential::Scram(k) => Credential::Keys(k.clone()),
                        _ => return Err(ServerError::Auth("server asks for SCRAM, but the proxy knows no password or SCRAM keys for this user (log in once with SCRAM, or configure the password)".into())),
                    };
                    let mut s = ScramClient::new(c);
                    wire::frontend::encode_sasl_initial(
                        &mut out,
                        wire::scram::MECHANISM,
                        s.client_first().as_bytes(),
                    );
                    scram = Some(s);
                }
                BackendMessage::Authentication(Authentication::SaslContinue(data)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Auth("unexpected SASL continue".into()))?;
                    let fin = s
                        .server_first(&data)
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
                    wire::frontend::FrontendMessage::Password(Bytes::from(fin)).encode(&mut out);
                }
                BackendMessage::Authentication(Authentication::SaslFinal(data)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Auth("unexpected SASL final".into()))?;
                    s.server_final(&data)
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
                    server_proved = true;
                    continue;
                }
                BackendMessage::Authentication(other) => {
                    return Err(ServerError::Auth(format!(
                        "unsupported authentication method {other:?}"
                    )))
                }
                BackendMessage::ErrorResponse(f) => return Err(ServerError::Rejected(f)),
                BackendMessage::NegotiateProtocolVersion { .. }
                | BackendMessage::NoticeResponse(_) => continue,
                other => {
                    return Err(ServerError::Auth(format!(
                        "unexpected message during authentication: {other:?}"
                    )))
                }
            }
            self.stream.write_all(&out).await?;
        }
    }

    /// Reads one whole message (not the data path: it decodes and copies).
    pub async fn read_message(&mut self) -> Result<BackendMessage, ServerError> {
        loop {
            if let Some((h, body)) = split_message(&self.rbuf, 1 << 30)? {
                let msg = BackendMessage::decode(h.tag, body)?;
                self.rbuf.advance(h.total_len());
                return Ok(msg);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Notes that the data path read bytes from this server: it is alive,
    /// whatever a health check waiting for its answer may think.
    #[inline]
    pub fn note_heard(&self) {
        if let Some(c) = &self.cells {
            // written once per clock tick, not on every read
            let now = crate::clock::now_ms();
            if c.heard.load(Ordering::Relaxed) != now {
                c.heard.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Counts a transaction this server served, for its backend.
    #[inline]
    pub fn note_transaction(&self) {
        if let Some(c) = &self.cells {
            c.xacts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs a simple query and returns its rows as text; an error response
    /// becomes `ServerError::Rejected` after the server is ready again.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        wire::frontend::FrontendMessage::Query(sql.to_owned()).encode(&mut out);
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::DataRow(cols) => rows.push(
                    cols.into_iter()
                        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                ),
                BackendMessage::ErrorResponse(f) => error = Some(f),
                BackendMessage::ParameterStatus { name, value } => {
                    self.session.reported(name.as_bytes(), value.as_bytes())
                }
                BackendMessage::ReadyForQuery(s) => {
                    if s != TxStatus::Idle && error.is_none() {
                        self.broken = true;
                    }
                    return match error {
                        Some(f) => Err(ServerError::Rejected(f)),
                        None => Ok(rows),
                    };
                }
                BackendMessage::CopyInResponse { .. } | BackendMessage::CopyBothResponse { .. } => {
                    self.broken = true;
                    return Err(ServerError::Auth(
                        "unexpected COPY in an internal query".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Sends Terminate and drops the connection.
    pub async fn terminate(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            self.stream.write_all(b"X\0\0\0\x04"),
        )
        .await;
    }
}

fn password_message(out: &mut BytesMut, p: &str) {
    let mut body = Vec::with_capacity(p.len() + 1);
    body.extend_from_slice(p.as_bytes());
    body.push(0);
    wire::frontend::FrontendMessage::Password(Bytes::from(body)).encode(out);
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    addr: &str,
    required: bool,
) -> Result<Stream, ServerError> {
    let mut out = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut out);
    tcp.write_all(&out).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(tls::client_config());
            let host = addr
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(addr)
                .trim_matches(['[', ']']);
            let name =
                rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
                    rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
                });
            let tls = connector.connect(name, tcp).await?;
            Ok(Stream::ClientTls(Box::new(tls)))
        }
        _ if required => Err(ServerError::Auth(format!(
            "server {addr} does not accept TLS, and server_tls = require"
        ))),
        _ => Ok(Stream::Plain(tcp)),
    }
}

impl ServerConn {
    /// Whether the server closed this idle connection (or sent something
    /// unasked, which an idle connection never does): read from the
    /// readiness the runtime already holds, so a live connection usually
    /// costs no system call.
    pub fn closed_while_idle(&self) -> bool {
        let tcp = match &self.stream {
            Stream::Plain(t) => t,
            Stream::ClientTls(t) => t.get_ref().0,
            Stream::ServerTls(_) | Stream::Taken => return true,
        };
        let mut byte = [0u8; 1];
        !matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Quotes a string as an SQL literal.
pub fn quote_literal(s: &str) -> String {
    // Made for every startup parameter of every login: one allocation of
    // the right size, no formatting machinery.
    let escape = s.contains('\\');
    let mut out = String::with_capacity(s.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    // Quotes and backslashes are doubled; both are ASCII, so the string is
    // cut at character boundaries.
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        if b == b'\'' || b == b'\\' {
            out.push_str(&s[from..=i]);
            out.push(char::from(b));
            from = i + 1;
        }
    }
    out.push_str(&s[from..]);
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::quote_literal;

    #[test]
    fn literals_are_quoted_as_postgresql_reads_them() {
        assert_eq!(quote_literal("pgbench"), "'pgbench'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"C:\dir"), r"E'C:\\dir'");
        assert_eq!(quote_literal(r"a'\b"), r"E'a''\\b'");
        assert_eq!(quote_literal("ünï"), "'ünï'");
    }
}
