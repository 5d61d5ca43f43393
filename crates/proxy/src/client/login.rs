//! From accept to ReadyForQuery: SSL/GSS negotiation, cancel requests,
//! the startup packet, access rules, authentication, the client limit, and
//! the parameters a client expects to see.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use config::HbaMethod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::backend::{BackendMessage, TxStatus};
use wire::fields::sqlstate;
use wire::startup::StartupPacket;

use super::session::Session;
use super::task::ClientTask;
use crate::auth::{self, Secret};
use crate::io::{send_fatal, send_fields};
use crate::params;
use crate::pool::{CheckoutError, PoolKey};
use crate::server::{ServerCredential, ServerError};
use crate::state::State;
use crate::stream::Stream;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_AUTH_MESSAGE: usize = 65_535;

/// The proxy's state, held by a client connection: counted in
/// `client_count` from accept until the connection ends, however it ends.
pub(crate) struct Counted(Arc<State>);

impl Counted {
    fn new(state: Arc<State>) -> Self {
        state.client_count.fetch_add(1, Ordering::Relaxed);
        Counted(state)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.client_count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Counted {
    type Target = Arc<State>;
    fn deref(&self) -> &Arc<State> {
        &self.0
    }
}

/// The task of one client connection (see [`ClientTask`]): the login,
/// then the session.
pub fn handle(state: Arc<State>, tcp: TcpStream, peer: SocketAddr) -> ClientTask {
    let _ = tcp.set_nodelay(true);
    ClientTask::new(Box::pin(login_phase(Counted::new(state), tcp, peer)))
}

async fn login_phase(counted: Counted, tcp: TcpStream, peer: SocketAddr) -> Option<Box<Session>> {
    let state = &*counted;
    let mut stream = Stream::Plain(tcp);
    // Room for a startup packet without regrowing; an idle session gives
    // it up.
    let mut buf = BytesMut::with_capacity(256);
    let (minor, params) = match tokio::time::timeout_at(
        crate::clock::deadline(STARTUP_TIMEOUT),
        startup(state, &mut stream, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "rejected startup");
            Box::pin(send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, e)).await;
            return None;
        }
        Err(_) => {
            Box::pin(send_fatal(
                &mut stream,
                sqlstate::PROTOCOL_VIOLATION,
                "no startup packet within 30s",
            ))
            .await;
            return None;
        }
    };
    match login(counted, stream, buf, peer, minor, params).await {
        Ok(s) => s,
        Err((code, msg)) => {
            tracing::info!(%peer, code, error = %msg, "login failed");
            None
        }
    }
}

/// Reads startup packets until a StartupMessage; handles SSL and GSS
/// negotiation and cancel requests. `None`: nothing more to do.
async fn startup(
    state: &Arc<State>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<(u16, Vec<(String, String)>)>, String> {
    let mut tls_done = false;
    loop {
        let pkt = loop {
            match StartupPacket::decode(buf).map_err(|e| e.to_string())? {
                Some((p, n)) => {
                    buf.advance(n);
                    break p;
                }
                None => {
                    if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                        return Ok(None);
                    }
                }
            }
        };
        match pkt {
            StartupPacket::SslRequest if !tls_done => {
                if !buf.is_empty() {
                    // Bytes sent before the handshake could be injected.
                    return Err("received unencrypted data after SSL request".into());
                }
                match state.tls() {
                    Some(cfg) => {
                        stream.write_all(b"S").await.map_err(|e| e.to_string())?;
                        let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Taken) else {
                            return Err("TLS negotiated twice".into());
                        };
                        // Boxed, as every rare step of the login: the login
                        // future is made for every connection.
                        let tls = Box::pin(tokio_rustls::TlsAcceptor::from(cfg).accept(tcp))
                            .await
                            .map_err(|e| format!("TLS handshake failed: {e}"))?;
                        *stream = Stream::ServerTls(Box::new(tls));
                        tls_done = true;
                    }
                    None => stream.write_all(b"N").await.map_err(|e| e.to_string())?,
                }
            }
            // GSSAPI encryption is not offered; libpq then goes on in plain text or TLS.
            StartupPacket::GssEncRequest if !tls_done => {
                stream.write_all(b"N").await.map_err(|e| e.to_string())?
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err("encryption requested twice".into());
            }
            StartupPacket::Cancel { pid, secret } => {
                Box::pin(cancel(state, pid, secret)).await;
                return Ok(None);
            }
            StartupPacket::Startup { minor, params } => return Ok(Some((minor, params))),
        }
    }
}

/// Forwards a cancel request to the server running the client's query.
async fn cancel(state: &Arc<State>, pid: i32, secret: i32) {
    let target = {
        let clients = state.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(&pid) {
            Some(c) if c.key.1 == secret => c.server.lock().ok().and_then(|s| s.clone()),
            _ => None,
        }
    };
    let Some(target) = target else {
        tracing::debug!(pid, "cancel request for no running query");
        return;
    };
    let ok = send_cancel(&target.addr, target.pid, target.secret).await;
    tracing::info!(pid, server = %target.addr, ok, "forwarded cancel request");
}

/// Sends a CancelRequest for backend `pid` to the server at `addr`.
pub(crate) async fn send_cancel(addr: &str, pid: i32, secret: i32) -> bool {
    let mut out = BytesMut::new();
    StartupPacket::Cancel { pid, secret }.encode(&mut out);
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&out).await?;
        // The server closes the connection when done.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok::<_, std::io::Error>(())
    })
    .await;
    matches!(r, Ok(Ok(())))
}

type LoginError = (&'static str, String);

fn fail<'a>(
    stream: &'a mut Stream,
    code: &'static str,
    msg: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = LoginError> + Send + 'a>> {
    Box::pin(async move {
        send_fatal(stream, code, msg.clone()).await;
        (code, msg)
    })
}

async fn login(
    counted: Counted,
    mut stream: Stream,
    mut buf: BytesMut,
    peer: SocketAddr,
    minor: u16,
    params: Vec<(String, String)>,
) -> Result<Option<Box<Session>>, LoginError> {
    let state = &*counted;
    let cfg = state.config();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return Err(fail(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await);
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(fail(&mut stream, sqlstate::FEATURE_NOT_SUPPORTED, "replication connections are not supported by the proxy; connect to PostgreSQL directly".into()).await);
    }
    let unknown: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        let mut out = BytesMut::new();
        BackendMessage::NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: unknown,
        }
        .encode(&mut out);
        let _ = stream.write_all(&out).await;
    }
    if state.is_shutting_down() {
        return Err(fail(
            &mut stream,
            sqlstate::CANNOT_CONNECT_NOW,
            "pgwarden is shutting down".into(),
        )
        .await);
    }
    let is_admin = cfg.proxy.admin_users.contains(&user);
    let count = state.client_count.load(Ordering::Relaxed);
    if count
        > cfg.proxy.max_client_conn
            + if is_admin {
                cfg.proxy.admin_reserved_conn
            } else {
                0
            }
    {
        return Err(fail(
            &mut stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (max_client_conn = {})",
                cfg.proxy.max_client_conn
            ),
        )
        .await);
    }
    let tls = stream.is_tls();
    let Some(rule) = cfg.proxy.hba.find(&database, &user, peer.ip(), tls) else {
        return Err(fail(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "no access rule for host \"{}\", user \"{user}\", database \"{database}\", {}",
                peer.ip(),
                if tls {
                    "SSL encryption"
                } else {
                    "no encryption"
                }
            ),
        )
        .await);
    };
    let method = rule.method;
    if method == HbaMethod::Reject {
        return Err(fail(&mut stream, sqlstate::INVALID_AUTHORIZATION, format!(
            "access rule rejects connection for host \"{}\", user \"{user}\", database \"{database}\"", peer.ip())).await);
    }
    let admin_db = database == cfg.proxy.admin_database;
    if admin_db && !is_admin {
        return Err(fail(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            format!("user \"{user}\" is not an admin user (admin_users)"),
        )
        .await);
    }

    // The user's secret: from the config, else from the auth query.
    let mut secret = cfg
        .user(&user)
        .and_then(|u| u.secret.as_deref())
        .map(Secret::parse);
    if secret.is_none() && method != HbaMethod::Trust && !admin_db {
        if cfg.auth_query.is_some() && state.topology.primary().is_none() {
            // Not a wrong password: the user cannot be looked up now.
            return Err(fail(
                &mut stream,
                sqlstate::CONNECTION_FAILURE,
                format!("cannot look up user \"{user}\": no primary server is available"),
            )
            .await);
        }
        if let (Some(aq), Some(primary)) = (&cfg.auth_query, state.topology.primary()) {
            match Box::pin(auth::query_secret(
                aq,
                &primary.addr,
                &user,
                cfg.proxy.server_tls,
                cfg.proxy.server_connect_timeout,
            ))
            .await
            {
                Ok(s) => secret = s,
                Err(e) => {
                    tracing::warn!(error = %e, "auth_query failed");
                    return Err(fail(
                        &mut stream,
                        sqlstate::CONNECTION_FAILURE,
                        format!("cannot look up user \"{user}\": {e}"),
                    )
                    .await);
                }
            }
        }
    }
    // PostgreSQL reads authentication messages with a 64 kB limit
    // (PG_MAX_AUTH_TOKEN_LENGTH): an unauthenticated peer gets no more.
    let max = cfg.proxy.max_message_size.min(MAX_AUTH_MESSAGE);
    let exchange = async {
        if method == HbaMethod::Trust {
            // Nothing to exchange: no future to make for it.
            return Ok(auth::trust_credential(secret.as_ref()));
        }
        Box::pin(auth::authenticate(
            &mut stream,
            &mut buf,
            method,
            &user,
            secret,
            max,
            &state.verifiers,
        ))
        .await
    };
    let cred = match exchange.await {
        Ok(c) => c,
        Err(f) => {
            state.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            return Err(fail(&mut stream, f.code, f.message).await);
        }
    };
    state.stats.logins.fetch_add(1, Ordering::Relaxed);
    if admin_db {
        let names = Arc::new(PoolKey {
            database: database.as_str().into(),
            user: user.as_str().into(),
        });
        let info = state.register_client(peer, names, tls, None);
        Box::pin(crate::admin::serve(
            state.clone(),
            stream,
            buf,
            info.clone(),
        ))
        .await;
        state.unregister_client(&info);
        return Ok(None);
    }

    let pool = state.pool(
        &PoolKey {
            database: database.as_str().into(),
            user: user.as_str().into(),
        },
        cred,
    );
    // What the servers of this pool report, learnt once per pool; this also
    // checks that the database exists and the user may log in.
    let reported = match pool.server_params() {
        Some(p) => p,
        None => match Box::pin(pool.checkout(cfg.proxy.query_wait_timeout)).await {
            Ok(co) => Arc::new(crate::pool::Reported::new(co.conn_ref().reported.clone())),
            Err(CheckoutError::Server(ServerError::Rejected(f))) => {
                state.pools.forget_unused(&pool);
                let msg = f.to_string();
                Box::pin(send_fields(&mut stream, f)).await;
                return Err((sqlstate::CONNECTION_FAILURE, msg));
            }
            Err(e) => {
                state.pools.forget_unused(&pool);
                return Err(fail(
                    &mut stream,
                    sqlstate::CONNECTION_FAILURE,
                    format!("cannot connect to the database: {e}"),
                )
                .await);
            }
        },
    };
    if method != HbaMethod::Trust && matches!(pool.credential(), ServerCredential::None) {
        tracing::debug!(%user, "no server credential known yet for this user");
    }
    let client_params = params::startup_params(&params);
    // Session mode: the client's server connection is taken now, so that
    // the client is told its process id.
    let held = if pool.mode() == config::PoolMode::Session {
        match Box::pin(super::session::checkout(state, &pool)).await {
            Ok(co) => Some(co),
            Err(e) => {
                return Err(fail(
                    &mut stream,
                    sqlstate::CONNECTION_FAILURE,
                    format!("cannot connect to the database: {e}"),
                )
                .await)
            }
        }
    } else {
        None
    };
    let server_pid = held.as_ref().map(|co| co.conn_ref().pid);
    let info = state.register_client(peer, pool.key.clone(), tls, server_pid);
    let mut out = BytesMut::with_capacity(1024);
    auth::encode_auth_ok(&mut out);
    // The client sees the values it asked for at startup.
    reported.encode_for(&params, &mut out);
    BackendMessage::BackendKeyData {
        pid: info.key.0,
        secret: info.key.1,
    }
    .encode(&mut out);
    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    if stream.write_all(&out).await.is_err() {
        state.unregister_client(&info);
        return Ok(None);
    }
    Ok(Some(Box::new(Session::new(
        counted,
        info,
        stream,
        buf,
        pool,
        client_params,
        held,
    ))))
}
