//! An HTTP/1.1 client of one agent's REST API (hyper), every request under
//! a deadline: connect, send, and read the whole answer.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the agent at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the agent at {addr} did not answer within {limit:?}")]
    Timeout { addr: String, limit: Duration },
    #[error("talking to the agent at {addr}: {message}")]
    Http { addr: String, message: String },
    /// The agent refused: its status and message.
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        field: Option<String>,
    },
    /// The operator's mistake, found before asking any agent.
    #[error("{0}")]
    Usage(String),
    /// The cluster did not get where the command waited for it to go.
    #[error("{0}")]
    NotDone(String),
}

impl CtlError {
    /// The exit code `pgwarden ctl` ends with (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect { .. } | CtlError::Timeout { .. } | CtlError::Http { .. } => 3,
            CtlError::Api {
                status: 401 | 403, ..
            } => 4,
            CtlError::Api { .. } => 5,
            CtlError::NotDone(_) => 6,
        }
    }
}

/// An agent's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Client {
    /// host:port
    pub addr: String,
    /// `https://` was given: TLS with `tls`.
    https: bool,
    token: Option<String>,
    timeout: Duration,
    /// For https: verifying against a CA (`--cacert`), or not (`--insecure`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// `api` is `host:port`, `http://host:port` or `https://host:port`.
    pub fn new(api: &str, token: Option<String>, timeout: Duration) -> Client {
        let api = api.trim().trim_end_matches('/');
        let (https, addr) = match api.strip_prefix("https://") {
            Some(a) => (true, a),
            None => (false, api.trim_start_matches("http://")),
        };
        Client {
            addr: addr.to_owned(),
            https,
            token,
            timeout,
            tls: None,
        }
    }

    /// How `https://` agents are reached.
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Client {
        self.tls = tls;
        self
    }

    /// The same token, deadline and TLS, another agent.
    pub fn at(&self, api: &str) -> Client {
        Client::new(api, self.token.clone(), self.timeout).with_tls(self.tls.clone())
    }

    /// Any answer, whatever its status.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, CtlError> {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(CtlError::Timeout {
                addr: self.addr.clone(),
                limit,
            }),
        }
    }

    /// A 2xx answer's body, or the agent's refusal as an error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, CtlError> {
        let r = self.send(method, path, body).await?;
        if (200..300).contains(&r.status) {
            return Ok(r);
        }
        Err(CtlError::Api {
            status: r.status,
            message: r.body["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {}: {}", r.status, r.body)),
            field: r.body["field"].as_str().map(str::to_owned),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, CtlError> {
        Ok(self.call("GET", path, None).await?.body)
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, CtlError> {
        let http = |message: String| CtlError::Http {
            addr: self.addr.clone(),
            message,
        };
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|source| CtlError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        if !self.https {
            return self.over(tcp, method, path, body).await;
        }
        let Some(tls) = self.tls.clone() else {
            return Err(CtlError::Usage(format!(
                "https://{}: give --cacert FILE (the CA that signed the agents' certificates) or --insecure",
                self.addr
            )));
        };
        let host = self
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&self.addr);
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| http(format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| http(format!("TLS: {e}")))?;
        self.over(stream, method, path, body).await
    }

    /// One request and its answer over `io` (TCP or TLS).
    async fn over<S>(
        &self,
        io: S,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, CtlError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let http = |message: String| CtlError::Http {
            addr: self.addr.clone(),
            message,
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(data)))
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        Ok(Reply { status, body })
    }
}
