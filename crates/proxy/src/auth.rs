//! Client authentication at the proxy: trust, password, md5 and
//! SCRAM-SHA-256 against secrets from the config or from the auth query.
//! A successful login also yields what the proxy needs to log in to the
//! servers as that user.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use config::HbaMethod;
use tokio::io::AsyncWriteExt;
use wire::backend::{Authentication, BackendMessage};
use wire::fields::sqlstate;
use wire::scram::{ScramServer, Verifier};

use crate::io::{read_message, ClientError};
use crate::server::{quote_literal, ConnectOptions, ServerConn, ServerCredential, ServerError};
use crate::stream::Stream;

const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a key derivation (PBKDF2, thousands of rounds) off the runtime's
/// thread, so logins in progress do not stall everyone's traffic.
async fn derive<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Verifiers the proxy makes itself, kept in the proxy's state.
pub struct Verifiers {
    /// Users whose configured password is plain text: a SCRAM verifier
    /// derived once per (user, password) with a fixed salt, as PostgreSQL
    /// stores one, instead of at every login.
    plain: std::sync::Mutex<std::collections::HashMap<(String, String), Verifier>>,
    /// Key for the mock verifiers of unknown users.
    mock_key: [u8; 32],
}

impl Default for Verifiers {
    fn default() -> Self {
        Verifiers {
            plain: Default::default(),
            mock_key: rand::random(),
        }
    }
}

impl Verifiers {
    async fn plain(&self, user: &str, password: &str) -> Verifier {
        let key = (user.to_owned(), password.to_owned());
        if let Some(v) = self
            .plain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return v.clone();
        }
        let pw = password.to_owned();
        let v = derive(move || Verifier::from_password(&pw)).await;
        let mut c = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        // Only configured users have plain passwords: a config reload that
        // changes many of them is the only way this grows.
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(key, v.clone());
        v
    }

    fn mock(&self, user: &str) -> Verifier {
        Verifier::mock(&self.mock_key, user)
    }
}

/// A stored secret.
#[derive(Debug, Clone)]
pub enum Secret {
    Plain(String),
    Md5(String),
    Scram(Verifier),
}

impl Secret {
    pub fn parse(s: &str) -> Secret {
        if wire::md5::is_stored_hash(s) {
            Secret::Md5(s.to_owned())
        } else if let Some(v) = Verifier::parse(s) {
            Secret::Scram(v)
        } else {
            Secret::Plain(s.to_owned())
        }
    }

    /// What the proxy can use to log in to a server without the client.
    pub fn server_credential(&self) -> ServerCredential {
        match self {
            Secret::Plain(p) => ServerCredential::Password(p.clone()),
            Secret::Md5(h) => ServerCredential::Md5Hash(h.clone()),
            Secret::Scram(_) => ServerCredential::None,
        }
    }
}

/// Why a login failed: sent to the client as FATAL with this SQLSTATE.
#[derive(Debug)]
pub struct AuthFailure {
    pub code: &'static str,
    pub message: String,
}

impl From<ClientError> for AuthFailure {
    fn from(e: ClientError) -> Self {
        AuthFailure {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: e.to_string(),
        }
    }
}

fn failed(user: &str, method: &str) -> AuthFailure {
    AuthFailure {
        code: sqlstate::INVALID_PASSWORD,
        message: format!("{method} authentication failed for user \"{user}\""),
    }
}

async fn send(s: &mut Stream, m: BackendMessage) -> Result<(), AuthFailure> {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    s.write_all(&out).await.map_err(|e| AuthFailure {
        code: sqlstate::CONNECTION_FAILURE,
        message: e.to_string(),
    })
}

/// Runs the exchange `method` asks for and returns the credential for
/// server connections. `secret` is `None` for an unknown user: the exchange
/// still runs and fails, so that user names cannot be probed.
pub async fn authenticate(
    s: &mut Stream,
    buf: &mut BytesMut,
    method: HbaMethod,
    user: &str,
    secret: Option<Secret>,
    max: usize,
    verifiers: &Verifiers,
) -> Result<ServerCredential, AuthFailure> {
    let method = match (method, &secret) {
        // As PostgreSQL: md5 in the rules with a SCRAM secret runs SCRAM.
        (HbaMethod::Md5, Some(Secret::Scram(_))) => HbaMethod::ScramSha256,
        (m, _) => m,
    };
    let cred = match method {
        HbaMethod::Trust => trust_credential(secret.as_ref()),
        HbaMethod::Reject => unreachable!("rejected before authentication"),
        HbaMethod::Password => {
            send(
                s,
                BackendMessage::Authentication(Authentication::CleartextPassword),
            )
            .await?;
            let (tag, body) = read_message(s, buf, max, AUTH_TIMEOUT).await?;
            let pw = password_body(tag, &body)?;
            let ok = match &secret {
                Some(Secret::Plain(p)) => wire::md5::verify(p, pw),
                Some(Secret::Md5(h)) => wire::md5::verify(h, &wire::md5::stored_hash(user, pw)),
                Some(Secret::Scram(v)) => {
                    let (pw, v) = (pw.to_owned(), v.clone());
                    derive(move || Verifier::with_salt(&pw, &v.salt, v.iterations) == v).await
                }
                None => false,
            };
            if !ok {
                return Err(failed(user, "password"));
            }
            ServerCredential::Password(pw.to_owned())
        }
        HbaMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            send(
                s,
                BackendMessage::Authentication(Authentication::Md5Password { salt }),
            )
            .await?;
            let (tag, body) = read_message(s, buf, max, AUTH_TIMEOUT).await?;
            let got = password_body(tag, &body)?;
            let stored = match &secret {
                Some(Secret::Plain(p)) => Some(wire::md5::stored_hash(user, p)),
                Some(Secret::Md5(h)) => Some(h.clone()),
                _ => None,
            };
            match stored {
                Some(st) if wire::md5::verify(&wire::md5::response_from_stored(&st, salt), got) => {
                }
                _ => return Err(failed(user, "password")),
            }
            secret
                .as_ref()
                .map(Secret::server_credential)
                .unwrap_or(ServerCredential::None)
        }
        HbaMethod::ScramSha256 => {
            let (verifier, known) = match &secret {
                Some(Secret::Plain(p)) => (verifiers.plain(user, p).await, true),
                Some(Secret::Scram(v)) => (v.clone(), true),
                // md5 secrets cannot do SCRAM; unknown users get a mock
                _ => (verifiers.mock(user), false),
            };
            send(
                s,
                BackendMessage::Authentication(Authentication::Sasl {
                    mechanisms: vec![wire::scram::MECHANISM.into()],
                }),
            )
            .await?;
            let mut server = ScramServer::new(verifier);
            let (tag, body) = read_message(s, buf, max, AUTH_TIMEOUT).await?;
            if tag != b'p' {
                return Err(AuthFailure {
                    code: sqlstate::PROTOCOL_VIOLATION,
                    message: "expected SASL response".into(),
                });
            }
            let (mech, data) =
                wire::frontend::sasl_initial_response(&body).map_err(ClientError::from)?;
            if mech != wire::scram::MECHANISM {
                return Err(AuthFailure {
                    code: sqlstate::PROTOCOL_VIOLATION,
                    message: format!(
                        "client selected an invalid SASL authentication mechanism {mech:?}"
                    ),
                });
            }
            let first = server.client_first(data).map_err(|e| AuthFailure {
                code: sqlstate::PROTOCOL_VIOLATION,
                message: e.to_string(),
            })?;
            send(
                s,
                BackendMessage::Authentication(Authentication::SaslContinue(Bytes::from(first))),
            )
            .await?;
            let (tag, body) = read_message(s, buf, max, AUTH_TIMEOUT).await?;
            if tag != b'p' {
                return Err(AuthFailure {
                    code: sqlstate::PROTOCOL_VIOLATION,
                    message: "expected SASL response".into(),
                });
            }
            let (fin, keys) = server
                .client_final(&body)
                .map_err(|_| failed(user, "password"))?;
            if !known {
                return Err(failed(user, "password"));
            }
            send(
                s,
                BackendMessage::Authentication(Authentication::SaslFinal(Bytes::from(fin))),
            )
            .await?;
            match secret {
                Some(Secret::Plain(p)) => ServerCredential::Password(p),
                _ => ServerCredential::Scram(keys),
            }
        }
    };
    // AuthenticationOk goes out with the rest of the greeting (one write).
    Ok(cred)
}

/// What a trusted client's login gives the proxy to log in to servers
/// with: the user's configured secret, if any.
pub fn trust_credential(secret: Option<&Secret>) -> ServerCredential {
    secret.map_or(ServerCredential::None, Secret::server_credential)
}

/// AuthenticationOk, for the caller to send with what follows it.
pub fn encode_auth_ok(out: &mut BytesMut) {
    BackendMessage::Authentication(Authentication::Ok).encode(out);
}

fn password_body(tag: u8, body: &[u8]) -> Result<&str, AuthFailure> {
    if tag != b'p' {
        return Err(AuthFailure {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: "expected a password message".into(),
        });
    }
    wire::frontend::password_text(body).map_err(|e| AuthFailure {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: e.to_string(),
    })
}

/// Looks a user's secret up with the configured auth query, on the primary.
pub async fn query_secret(
    aq: &config::AuthQuery,
    addr: &str,
    user: &str,
    tls: config::ServerTls,
    timeout: Duration,
) -> Result<Option<Secret>, ServerError> {
    let cred = match &aq.password {
        Some(p) => Secret::parse(p).server_credential(),
        None => ServerCredential::None,
    };
    let mut conn = ServerConn::connect(ConnectOptions {
        addr,
        user: &aq.user,
        database: &aq.database,
        credential: &cred,
        tls,
        timeout,
        epoch: 0,
        extra_params: &[("application_name", "pgwarden auth_query")],
    })
    .await?;
    let sql = aq.query.replace("$1", &quote_literal(user));
    let rows = tokio::time::timeout(timeout, conn.simple_query(&sql))
        .await
        .map_err(|_| ServerError::Timeout(addr.to_owned()))??;
    conn.terminate().await;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().nth(1).flatten())
        .map(|s| Secret::parse(&s)))
}
