//! State endpoints: this member, the cluster, its history and its dynamic
//! configuration, read from the DCS (or, while it does not answer, as the
//! HA loop last read them).
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcs::{Dcs, Key, Snapshot};
use ha::status::{ClusterStatus, MemberStatus};
use ha::Member;

use super::error::ApiError;
use super::St;

/// The DCS read now (so that a change just made shows), or, when it does
/// not answer within 2 s, as the loop last read it.
pub(super) async fn snapshot(api: &super::Api) -> Result<Snapshot, ApiError> {
    snapshot_fresh(api).await.map(|(s, _)| s)
}

/// The same, and whether it was read now.
pub(super) async fn snapshot_fresh(api: &super::Api) -> Result<(Snapshot, bool), ApiError> {
    let fresh = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        api.dcs().await?.snapshot().await.map_err(ApiError::from)
    })
    .await;
    if let Ok(Ok(s)) = fresh {
        return Ok((s, true));
    }
    api.shared
        .ops
        .snapshot()
        .map(|s| (s, false))
        .ok_or_else(|| ApiError::unavailable("the agent has not read the DCS yet: try again"))
}

pub fn cluster_status(snap: &Snapshot) -> ClusterStatus {
    let leader = snap.leader.as_ref().map(|l| l.name.as_str());
    let sync = snap
        .get(Key::Sync)
        .map(ha::status::sync_names)
        .unwrap_or_default();
    let members = snap
        .members
        .values()
        .filter_map(|v| Member::from_json(v))
        .map(|m| MemberStatus::of(&m, leader, &sync))
        .collect();
    ClusterStatus {
        leader: leader.map(str::to_owned),
        epoch: snap.leader.as_ref().map(|l| l.epoch),
        paused: snap.get(Key::Pause).is_some(),
        members,
        pending: snap
            .get(Key::Failover)
            .and_then(ha::switchover::Switchover::parse),
        proxies: ha::proxy::Proxies::of(
            &snap.proxies,
            snap.leases
                .get(ha::proxy::VIP_LEASE)
                .map(|l| l.name.as_str()),
        ),
    }
}

/// GET / : this member, with the sentence of its last loop.
pub async fn me(State(api): State<St>) -> Response {
    let me = api.shared.member.lock().map(|m| m.clone()).unwrap_or(None);
    match me {
        Some(m) => Json(m).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"state": "starting"})),
        )
            .into_response(),
    }
}

pub async fn cluster(State(api): State<St>) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(cluster_status(&snapshot(&api).await?)))
}

pub async fn history(State(api): State<St>) -> Result<Json<Vec<ha::history::Entry>>, ApiError> {
    let snap = snapshot(&api).await?;
    Ok(Json(
        snap.get(Key::History)
            .map(ha::history::parse)
            .unwrap_or_default(),
    ))
}

pub async fn config(State(api): State<St>) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = snapshot(&api).await?;
    let raw = snap.get(Key::Config).ok_or_else(|| {
        ApiError::unavailable("the cluster has no configuration yet (not bootstrapped)")
    })?;
    // as the agents read it: unknown keys dropped, defaults filled in
    let cc: ha::ClusterConfig = serde_json::from_str(raw)
        .map_err(|e| ApiError::unavailable(format!("the DCS config key is not valid: {e}")))?;
    Ok(Json(serde_json::to_value(cc).unwrap_or_default()))
}
