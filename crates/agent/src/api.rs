//! The agent's REST API, served with axum (hyper): health endpoints with
//! Patroni's paths and codes for load balancers (`health.rs`), the
//! cluster's state (`state.rs`), operations behind a token (`ops.rs`,
//! `auth.rs`; `forward.rs` passes a member's operation on to it), what
//! watches the cluster (`observe.rs`: `/metrics`, `/node`, `/events`), the
//! dashboard (`dashboard.rs`, at `/dashboard`), and `POST
//! /failsafe?leader=NAME`, by which a leader cut off from the DCS asks
//! whether this node still follows it. Described in docs/openapi.yaml.
//!
//! Every connection is bounded: at most `MAX_CONNECTIONS` at once, its
//! request head within 5 s, the whole exchange within 2 minutes, one
//! request per connection, bodies up to 64 kB.
mod auth;
mod config_patch;
mod dashboard;
mod error;
mod forward;
mod health;
mod observe;
mod ops;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use config::AgentConfig;
use ha::Role;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;

use crate::driver::Shared;
pub use error::ApiError;
pub use health::{parse_lag, Lag};

const MAX_CONNECTIONS: usize = 64;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
pub(crate) struct Api {
    cfg: AgentConfig,
    shared: Arc<Shared>,
    /// The API's own DCS connection, for the operations (opened at the
    /// first, so that the API answers while the DCS is down).
    dcs: OnceCell<dcs::AnyDcs>,
    /// This node's disk figures and replay delay, kept a few seconds.
    node_cache: crate::nodeinfo::SharedCache,
    /// Counts of the History key's events, for /metrics.
    history_counts: std::sync::Mutex<crate::metrics::HistoryCounts>,
    /// Every member's `/node` as last fetched (for /events).
    peers: std::sync::Mutex<PeerMap>,
    peers_refreshing: std::sync::atomic::AtomicBool,
}

type PeerMap =
    std::collections::HashMap<String, (Instant, Result<crate::nodeinfo::NodeInfo, String>)>;

type St = Arc<Api>;

impl Api {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        auth::check(headers, self.cfg.api_token.as_deref())
    }

    async fn dcs(&self) -> Result<&dcs::AnyDcs, ApiError> {
        self.dcs
            .get_or_try_init(|| async {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    dcs::open(&self.cfg.dcs, &self.cfg.cluster),
                )
                .await
                {
                    Ok(r) => r.map_err(ApiError::from),
                    Err(_) => Err(ApiError::unavailable("the DCS does not answer")),
                }
            })
            .await
    }
}

fn router(api: St) -> Router {
    use health as h;
    Router::new()
        .route("/", get(state::me))
        .route("/patroni", get(state::me))
        .route("/member", get(state::me))
        .route("/cluster", get(state::cluster))
        .route("/history", get(state::history))
        .route("/config", get(state::config).patch(ops::patch_config))
        .route("/primary", get(h::primary).options(h::primary))
        .route("/leader", get(h::primary).options(h::primary))
        .route("/master", get(h::primary).options(h::primary))
        .route("/read-write", get(h::primary).options(h::primary))
        .route("/replica", get(h::replica).options(h::replica))
        .route("/standby", get(h::replica).options(h::replica))
        .route("/read-only", get(h::read_only).options(h::read_only))
        .route("/sync", get(h::sync).options(h::sync))
        .route("/synchronous", get(h::sync).options(h::sync))
        .route("/async", get(h::asynchronous).options(h::asynchronous))
        .route(
            "/asynchronous",
            get(h::asynchronous).options(h::asynchronous),
        )
        .route("/health", get(h::health).options(h::health))
        .route("/liveness", get(h::liveness).options(h::liveness))
        .route("/readiness", get(h::readiness).options(h::readiness))
        .route("/switchover", post(ops::switchover))
        .route("/failover", post(ops::failover))
        .route("/restart", post(ops::restart))
        .route("/reload", post(ops::reload))
        .route(
            "/reinitialize",
            post(ops::reinitialize).get(ops::reinit_progress),
        )
        .route("/pause", post(ops::pause))
        .route("/resume", post(ops::resume))
        .route("/failsafe", post(failsafe))
        .route("/metrics", get(observe::metrics))
        .route("/node", get(observe::node))
        .route("/events", get(observe::events))
        .route("/members/:name/:op", post(forward::member_op))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {}: see docs/openapi.yaml", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Binds `cfg.api_listen` and serves until the task is aborted.
pub async fn serve(
    cfg: &AgentConfig,
    shared: Arc<Shared>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(cfg.api_listen).await?;
    let app = router(Arc::new(Api {
        cfg: cfg.clone(),
        shared,
        dcs: OnceCell::new(),
        node_cache: Default::default(),
        history_counts: Default::default(),
        peers: Default::default(),
        peers_refreshing: Default::default(),
    }));
    let tls = match &cfg.api_tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            tls::server_config(&t.cert, &t.key).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // over the limit: the connection is closed at once
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let app = app.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                    match tls {
                        None => exchange(stream, app).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                exchange(s, app).await
                            }
                        }
                    }
                })
                .await;
                drop(permit);
            });
        }
    }))
}

/// One request and its answer (keep-alive off), over TCP or TLS.
async fn exchange<S>(io: S, app: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |req| tower::ServiceExt::oneshot(app.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// A leader without the DCS asks whether this node still follows it.
async fn failsafe(
    State(api): State<St>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(leader) = q.get("leader") else {
        return ApiError::bad("leader= missing")
            .field("leader")
            .into_response();
    };
    let member = api.shared.member.lock().map(|m| m.clone()).unwrap_or(None);
    let known_leader = api.shared.leader.lock().map(|l| l.clone()).unwrap_or(None);
    // Still a running standby, and the last leader seen in the DCS was it.
    let follows = member.is_some_and(|m| m.running && m.role == Role::Replica)
        && known_leader.as_deref() == Some(leader.as_str());
    if !follows {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"follows": false})),
        )
            .into_response();
    }
    *api.shared
        .failsafe_ping
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((leader.clone(), Instant::now()));
    Json(serde_json::json!({"follows": true})).into_response()
}

/// A client of another member's API at `api_url`: over https, its
/// certificate is verified against `api_tls_ca` if given.
pub(crate) fn peer_client(
    cfg: &AgentConfig,
    api_url: &str,
    token: Option<String>,
    limit: Duration,
) -> Result<ctl::Client, String> {
    let tls = match cfg.api_tls.as_ref().and_then(|t| t.ca.as_deref()) {
        Some(ca) => tls::client_config_ca(ca).map_err(|e| format!("api_tls_ca: {e}"))?,
        None => tls::client_config(),
    };
    Ok(ctl::Client::new(api_url, token, limit).with_tls(Some(tls)))
}

/// Asks the member at `api_url` whether it follows `leader` (within 1 s).
pub async fn failsafe_confirm(cfg: &AgentConfig, api_url: &str, leader: &str) -> bool {
    let client = match peer_client(cfg, api_url, None, Duration::from_secs(1)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "api_tls_ca");
            return false;
        }
    };
    let path = format!("/failsafe?leader={leader}");
    matches!(client.send("POST", &path, None).await, Ok(r) if r.status == 200)
}
