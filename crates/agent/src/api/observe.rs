//! What watches the cluster: `GET /metrics` (Prometheus), `GET /node`
//! (this node's disk, replay delay, loop and lease) and `GET /events`
//! (server-sent events: the dashboard's view, sent when it changes and at
//! least every second).
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcs::Key;
use serde::Serialize;

use super::error::ApiError;
use super::St;
use crate::nodeinfo::NodeInfo;

/// How often the stream looks at the DCS.
const TICK: Duration = Duration::from_millis(200);
/// A view is sent at least this often, changed or not.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The stream ends after this (below the API's exchange limit); the
/// browser's EventSource reconnects after `RETRY`.
const STREAM_LIFE: Duration = Duration::from_secs(90);
const RETRY: Duration = Duration::from_millis(300);
/// Other members' `/node` is asked this often, each within `PEER_DEADLINE`.
const PEERS_EVERY: Duration = Duration::from_secs(2);
const PEER_DEADLINE: Duration = Duration::from_secs(1);
/// History entries the view carries (the newest).
const HISTORY_SHOWN: usize = 30;

pub async fn node(State(api): State<St>) -> Json<NodeInfo> {
    Json(crate::nodeinfo::collect(&api.cfg, &api.shared, &api.node_cache).await)
}

pub async fn metrics(State(api): State<St>) -> Result<Response, ApiError> {
    let snap = super::state::snapshot(&api).await?;
    let cluster = super::state::cluster_status(&snap);
    let history = snap
        .get(Key::History)
        .map(ha::history::parse)
        .unwrap_or_default();
    let node = crate::nodeinfo::collect(&api.cfg, &api.shared, &api.node_cache).await;
    let mut counts = api.history_counts.lock().unwrap_or_else(|e| e.into_inner());
    counts.observe(&history);
    let text = crate::metrics::render(&crate::metrics::Input {
        cluster_name: &api.cfg.cluster,
        name: &api.cfg.name,
        cluster: &cluster,
        history: &counts,
        loop_h: &api.shared.telemetry.loop_histogram(),
        node: &node,
        lease_remaining: api.shared.telemetry.lease_remaining(Instant::now()),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Another member's `/node` as last fetched.
#[derive(Debug, Clone, Serialize)]
pub struct PeerNode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<NodeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub age_ms: u64,
}

/// What the dashboard shows, one event.
#[derive(Debug, Serialize)]
pub struct View {
    pub served_by: String,
    /// False: the DCS did not answer; this is the loop's last reading.
    pub fresh: bool,
    pub cluster: ha::status::ClusterStatus,
    /// off, on or quorum.
    pub sync_mode: String,
    pub ttl_ms: Option<u64>,
    /// Newest first.
    pub history: Vec<ha::history::Entry>,
    pub nodes: BTreeMap<String, PeerNode>,
}

async fn view(api: &super::Api) -> Result<View, ApiError> {
    let (snap, fresh) = super::state::snapshot_fresh(api).await?;
    let cluster = super::state::cluster_status(&snap);
    let cc: Option<ha::ClusterConfig> = snap
        .get(Key::Config)
        .and_then(|c| serde_json::from_str(c).ok());
    let mut history = snap
        .get(Key::History)
        .map(ha::history::parse)
        .unwrap_or_default();
    history.reverse();
    history.truncate(HISTORY_SHOWN);
    let now = Instant::now();
    let known = api.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let nodes = cluster
        .members
        .iter()
        .filter_map(|m| {
            let (at, r) = known.get(&m.name)?;
            Some((
                m.name.clone(),
                PeerNode {
                    info: r.as_ref().ok().cloned(),
                    error: r.as_ref().err().cloned(),
                    age_ms: now.saturating_duration_since(*at).as_millis() as u64,
                },
            ))
        })
        .collect();
    Ok(View {
        served_by: api.cfg.name.clone(),
        fresh,
        sync_mode: match cc.as_ref().map(|c| c.synchronous_mode) {
            Some(ha::SyncMode::On) => "on",
            Some(ha::SyncMode::Quorum) => "quorum",
            _ => "off",
        }
        .into(),
        ttl_ms: cc.map(|c| c.ttl_ms),
        cluster,
        history,
        nodes,
    })
}

/// Asks every member for its `/node` (this one directly), in parallel,
/// unless a refresh is under way.
fn refresh_peers(api: St, members: Vec<(String, String)>) {
    if api.peers_refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for (name, url) in members {
            let api = api.clone();
            set.spawn(async move {
                let r = if name == api.cfg.name {
                    Ok(crate::nodeinfo::collect(&api.cfg, &api.shared, &api.node_cache).await)
                } else {
                    fetch_node(&api, &url).await
                };
                (name, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((name, r)) = joined else { continue };
            api.peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, (Instant::now(), r));
        }
        api.peers_refreshing.store(false, Ordering::Release);
    });
}

async fn fetch_node(api: &super::Api, url: &str) -> Result<NodeInfo, String> {
    let client = super::peer_client(&api.cfg, url, None, PEER_DEADLINE)?;
    let body = client.get("/node").await.map_err(|e| e.to_string())?;
    serde_json::from_value(body).map_err(|e| format!("{url}/node: {e}"))
}

/// GET /events: the view as server-sent events named `view`.
pub async fn events(
    State(api): State<St>,
) -> Sse<tokio_stream::wrappers::ReceiverStream<Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = String::new();
        let mut sent_at: Option<Instant> = None;
        let mut peers_at: Option<Instant> = None;
        let mut first = true;
        while start.elapsed() < STREAM_LIFE {
            let data = match view(&api).await {
                Ok(v) => {
                    if peers_at.is_none_or(|t| t.elapsed() >= PEERS_EVERY) {
                        peers_at = Some(Instant::now());
                        let members = v
                            .cluster
                            .members
                            .iter()
                            .map(|m| (m.name.clone(), m.api_url.clone()))
                            .collect();
                        refresh_peers(api.clone(), members);
                    }
                    serde_json::to_string(&v).unwrap_or_default()
                }
                Err(e) => serde_json::json!({ "error": e.message }).to_string(),
            };
            if data != last || sent_at.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                let mut ev = Event::default().event("view").data(&data);
                if first {
                    ev = ev.retry(RETRY);
                    first = false;
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return; // the page went away
                }
                last = data;
                sent_at = Some(Instant::now());
            }
            tokio::time::sleep(TICK).await;
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
}
