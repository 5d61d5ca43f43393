//! The mutating endpoints (token required): the dynamic configuration,
//! switchover and failover requests (written to the DCS Failover key for
//! the HA loops to carry out), this node's restart, reload and
//! reinitialization (done by its loop), maintenance mode. Refusals say why
//! and what to change.
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcs::{Dcs, Key, Snapshot};
use ha::switchover::Switchover;
use ha::Member;
use serde::Deserialize;

use super::error::{ApiError, Body};
use super::St;
use crate::ops::{now_ms, Op};

fn members(snap: &Snapshot) -> Vec<Member> {
    snap.members
        .values()
        .filter_map(|v| Member::from_json(v))
        .collect()
}

fn cluster_config(snap: &Snapshot) -> ha::ClusterConfig {
    snap.get(Key::Config)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

fn ok(message: String) -> Response {
    Json(serde_json::json!({ "message": message })).into_response()
}

fn accepted(message: String) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

pub async fn patch_config(
    State(api): State<St>,
    headers: HeaderMap,
    Body(patch): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    let dcs = api.dcs().await?;
    let snap = dcs.snapshot().await?;
    let current = snap.get(Key::Config).ok_or_else(|| {
        ApiError::unavailable("the cluster has no configuration yet (not bootstrapped)")
    })?;
    let (cc, changed) = super::config_patch::merge(current, &patch)?;
    validate_parameters(&api.cfg, &changed).await?;
    let json = serde_json::to_string(&cc).expect("serializable");
    if !dcs
        .compare_and_set(Key::Config, Some(current), &json)
        .await?
    {
        return Err(ApiError::conflict(
            "the configuration changed meanwhile: read it again and repeat the change",
        ));
    }
    Ok(Json(serde_json::to_value(&cc).unwrap_or_default()).into_response())
}

/// Asks PostgreSQL itself whether the values are valid (`postgres -C`
/// with them on the command line, on this node's data directory), so
/// that a bad value is refused with PostgreSQL's own message before any
/// node gets it. Skipped on a node without data yet.
async fn validate_parameters(
    cfg: &config::AgentConfig,
    changed: &[(String, String)],
) -> Result<(), ApiError> {
    if changed.is_empty() || !cfg.data_dir.join("PG_VERSION").exists() {
        return Ok(());
    }
    let user = pg::OsUser::for_postgres(&cfg.os_user)
        .map_err(|e| ApiError::unavailable(format!("cannot check the parameters: {e}")))?;
    let inst = pg::Instance::new(pg::InstanceConfig {
        data_dir: cfg.data_dir.clone(),
        run_dir: cfg.run_dir.clone(),
        port: cfg.pg_port,
        listen: cfg.host.clone(),
        user,
        superuser: cfg.superuser.clone(),
    })
    .map_err(|e| ApiError::unavailable(format!("cannot check the parameters: {e}")))?;
    let mut cmd = inst.command("postgres");
    cmd.arg("-D")
        .arg(&cfg.data_dir)
        .arg("-C")
        .arg(&changed[0].0);
    for (k, v) in changed {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    cmd.env("LC_MESSAGES", "C");
    let r = tokio::task::spawn_blocking(move || {
        pg::command::run_output(cmd, Duration::from_secs(10), None)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let msg = text
                .lines()
                .find_map(|l| l.split_once("FATAL:").map(|(_, m)| m.trim().to_owned()))
                .unwrap_or(text);
            let field = changed
                .iter()
                .find(|(k, _)| msg.contains(&format!("\"{k}\"")))
                .map(|(k, _)| format!("parameters.{k}"));
            let mut err = ApiError::bad(format!("PostgreSQL refuses it: {msg}"));
            err.field = field;
            Err(err)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverBody {
    leader: Option<String>,
    candidate: Option<String>,
    /// RFC 3339.
    scheduled_at: Option<String>,
}

pub async fn switchover(
    State(api): State<St>,
    headers: HeaderMap,
    Body(b): Body<SwitchoverBody>,
) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    let leader = b.leader.ok_or_else(|| {
        ApiError::bad(
            "name the current leader in \"leader\" (a failover needs none: POST /failover)",
        )
        .field("leader")
    })?;
    let scheduled_at_ms = match b.scheduled_at.as_deref() {
        None => None,
        Some(t) => {
            let ms =
                ha::time::parse_rfc3339(t).map_err(|e| ApiError::bad(e).field("scheduled_at"))?;
            if ms + 1000 < now_ms() {
                return Err(
                    ApiError::bad(format!("scheduled_at {t} is in the past")).field("scheduled_at")
                );
            }
            Some(ms)
        }
    };
    let req = Switchover {
        leader: Some(leader),
        candidate: b.candidate,
        scheduled_at_ms,
        requested_at_ms: now_ms(),
        chosen: None,
    };
    request(&api, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverBody {
    candidate: Option<String>,
    /// Patroni's clients may send it; it must name the leader if given.
    leader: Option<String>,
}

pub async fn failover(
    State(api): State<St>,
    headers: HeaderMap,
    Body(b): Body<FailoverBody>,
) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    let candidate = b.candidate.ok_or_else(|| {
        ApiError::bad("name the member to take over in \"candidate\"").field("candidate")
    })?;
    let req = Switchover {
        leader: b.leader,
        candidate: Some(candidate),
        scheduled_at_ms: None,
        requested_at_ms: now_ms(),
        chosen: None,
    };
    request(&api, req).await
}

/// Checks a request against the cluster as it is now and writes it.
async fn request(api: &super::Api, req: Switchover) -> Result<Response, ApiError> {
    let dcs = api.dcs().await?;
    let snap = dcs.snapshot().await?;
    let kind = req.kind();
    if let Some(p) = snap.get(Key::Failover).and_then(Switchover::parse) {
        if !p.expired(now_ms()) {
            return Err(ApiError::conflict(format!(
                "a {} is already pending ({}): wait for it, or for it to expire",
                p.kind(),
                p.to_json()
            )));
        }
    }
    let leader = snap.leader.as_ref().map(|l| l.name.clone());
    let members = members(&snap);
    let cc = cluster_config(&snap);
    if let Some(l) = req.leader.as_deref() {
        if leader.as_deref() != Some(l) {
            return Err(ApiError::refused(match &leader {
                Some(now) => format!("{l} is not the leader; {now} is"),
                None => {
                    format!("{l} is not the leader; the cluster has no leader now (use a failover)")
                }
            })
            .field("leader"));
        }
    }
    let leader_lsn = leader
        .as_deref()
        .and_then(|l| members.iter().find(|m| m.name == l))
        .map(|m| m.lsn);
    let sync = snap
        .get(Key::Sync)
        .map(ha::status::sync_names)
        .unwrap_or_default();
    let check = |m: &Member| -> Result<(), String> {
        if leader.as_deref() == Some(m.name.as_str()) {
            return Err(format!("{} is the leader already", m.name));
        }
        if !(m.running && m.role == ha::Role::Replica) {
            return Err(format!("{} is not a running standby", m.name));
        }
        if m.nofailover {
            return Err(format!("{} is tagged nofailover", m.name));
        }
        let lag = match leader_lsn {
            Some(l) => l.saturating_sub(m.lsn),
            None => m.lag.unwrap_or(0),
        };
        // A streaming standby's published position can be a pass old
        // (megabytes under load): the leader checks it again against what
        // it sends, and waits for it to come within the limit.
        if lag > cc.maximum_lag_on_failover && !(leader.is_some() && m.streaming) {
            return Err(format!(
                "{} lags {lag} bytes behind the leader (maximum_lag_on_failover is {})",
                m.name, cc.maximum_lag_on_failover
            ));
        }
        if leader.is_some() && !m.streaming {
            return Err(format!("{} is not streaming from the leader", m.name));
        }
        if !sync.is_empty() && !sync.contains(&m.name) && synchronous(&cc) {
            return Err(format!(
                "{} is not a synchronous standby (synchronous mode: {})",
                m.name,
                sync.join(", ")
            ));
        }
        Ok(())
    };
    match req.candidate.as_deref() {
        Some(c) => {
            let m = members.iter().find(|m| m.name == c).ok_or_else(|| {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                ApiError::refused(format!(
                    "{c} is not a member; the members are: {}",
                    names.join(", ")
                ))
                .field("candidate")
            })?;
            check(m).map_err(|e| ApiError::refused(e).field("candidate"))?;
        }
        None => {
            let others: Vec<&Member> = members
                .iter()
                .filter(|m| leader.as_deref() != Some(m.name.as_str()))
                .collect();
            let reasons: Vec<String> = others.iter().filter_map(|m| check(m).err()).collect();
            if reasons.len() == others.len() {
                return Err(ApiError::refused(format!(
                    "no member can take over: {}",
                    if reasons.is_empty() {
                        "there are no standbys".to_owned()
                    } else {
                        reasons.join("; ")
                    }
                )));
            }
        }
    }
    if !dcs
        .compare_and_set(Key::Failover, snap.get(Key::Failover), &req.to_json())
        .await?
    {
        return Err(ApiError::conflict(
            "another request was written meanwhile: look at GET /cluster",
        ));
    }
    let to = req
        .candidate
        .clone()
        .unwrap_or_else(|| "the best standby".into());
    let when = req
        .scheduled_at_ms
        .map(|t| format!(" at {}", ha::time::format_rfc3339(t)))
        .unwrap_or_default();
    Ok(accepted(match &req.leader {
        Some(l) => format!("{kind} from {l} to {to} requested{when}"),
        None => format!("{kind} to {to} requested"),
    }))
}

/// Synchronous mode is on (one standby or a quorum).
fn synchronous(cc: &ha::ClusterConfig) -> bool {
    cc.synchronous_mode.is_on()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    /// Restart only if PostgreSQL says a changed setting needs it.
    #[serde(default)]
    restart_pending: bool,
}

pub async fn restart(
    State(api): State<St>,
    headers: HeaderMap,
    Body(b): Body<RestartBody>,
) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    if b.restart_pending {
        let pending = api
            .shared
            .member
            .lock()
            .map(|m| m.as_ref().is_some_and(|m| m.pending_restart))
            .unwrap_or(false);
        if !pending {
            return Ok(ok("no restart pending on this member: not restarted".into()));
        }
    }
    run_op(&api, Op::Restart, Duration::from_secs(90)).await
}

pub async fn reload(State(api): State<St>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    run_op(&api, Op::Reload, Duration::from_secs(15)).await
}

pub async fn reinitialize(State(api): State<St>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.authorize(&headers)?;
    let me = &api.cfg.name;
    let leader = api.shared.leader.lock().map(|l| l.clone()).unwrap_or(None);
    if leader.as_deref() == Some(me.as_str()) {
        return Err(ApiError::refused(format!(
            "{me} is the leader: a primary cannot be reinitialized from itself; switch over first"
        )));
    }
    if leader.is_none() {
        return Err(ApiError::refused("the cluster has no leader to copy from"));
    }
    run_op(&api, Op::Reinit, Duration::from_secs(30)).await
}

/// A reinitialization of this node: queued or copying (with
/// pg_basebackup's progress), and how the last one ended.
pub async fn reinit_progress(State(api): State<St>) -> Response {
    let copy = api.shared.copy.get();
    let (queued, last) = api.shared.ops.reinit_state();
    let (ok, message) = match last {
        Some(Ok(m)) => (Some(true), Some(m)),
        Some(Err(e)) => (Some(false), Some(e)),
        None => (None, None),
    };
    Json(serde_json::json!({
        "queued": queued,
        "copying": copy.running,
        "done_kb": copy.done_kb,
        "total_kb": copy.total_kb,
        "last_ok": ok,
        "last_message": message,
    }))
    .into_response()
}

/// Queues `op` for this node's loop and waits for it up to `wait`; an
/// operation still under way then is answered 202.
async fn run_op(api: &super::Api, op: Op, wait: Duration) -> Result<Response, ApiError> {
    let rx = api.shared.ops.submit(op).map_err(ApiError::conflict)?;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(m))) => Ok(ok(m)),
        Ok(Ok(Err(e))) => Err(ApiError::unavailable(e)),
        Ok(Err(_)) => Err(ApiError::unavailable("the agent is stopping")),
        Err(_) => Ok(accepted(format!(
            "still under way after {}s: see GET /cluster for this member's state",
            wait.as_secs()
        ))),
    }
}

pub async fn pause(State(api): State<St>, headers: HeaderMap) -> Result<Response, ApiError> {
    set_pause(&api, &headers, true).await
}

pub async fn resume(State(api): State<St>, headers: HeaderMap) -> Result<Response, ApiError> {
    set_pause(&api, &headers, false).await
}

async fn set_pause(api: &super::Api, headers: &HeaderMap, on: bool) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    let dcs = api.dcs().await?;
    let was = dcs.snapshot().await?.get(Key::Pause).is_some();
    let v = on.then(|| format!("{{\"since_ms\":{}}}", now_ms()));
    dcs.put(Key::Pause, v.as_deref()).await?;
    Ok(ok(match (on, was) {
        (true, true) => "maintenance mode was already on".into(),
        (true, false) => "maintenance mode on: no automatic failover until resume".into(),
        (false, false) => "maintenance mode was not on".into(),
        (false, true) => "maintenance mode off: automatic failover resumes".into(),
    }))
}
