//! `POST /members/{name}/{operation}`: an operation on one member
//! (restart, reload, reinitialize) asked of any agent, which checks the
//! token and passes the request on to that member's API. The dashboard
//! uses it, so that a page served by one agent acts on every node
//! without cross-origin requests.
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, Body};
use super::St;

/// Longer than the member's own wait for a restart (90 s).
const FORWARD_DEADLINE: Duration = Duration::from_secs(100);

pub async fn member_op(
    State(api): State<St>,
    headers: HeaderMap,
    Path((name, op)): Path<(String, String)>,
    Body(body): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    let path = match op.as_str() {
        "restart" | "reload" | "reinitialize" => format!("/{op}"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no operation {op:?} on a member: restart, reload or reinitialize"),
            ))
        }
    };
    let snap = super::state::snapshot(&api).await?;
    let member = super::state::cluster_status(&snap)
        .members
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ApiError::bad(format!("{name} is not a member")).field("name"))?;
    let client = super::peer_client(
        &api.cfg,
        &member.api_url,
        api.cfg.api_token.clone(),
        FORWARD_DEADLINE,
    )
    .map_err(ApiError::unavailable)?;
    let r = client
        .send("POST", &path, Some(&body))
        .await
        .map_err(|e| ApiError::unavailable(format!("{name} did not answer: {e}")))?;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, Json(r.body)).into_response())
}
