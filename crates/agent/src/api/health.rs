//! Health endpoints with Patroni's paths and status codes (200 or 503),
//! for load balancers: GET, HEAD and OPTIONS (HAProxy's `option httpchk
//! OPTIONS /primary`). Each answers with this member's state as JSON.
use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ha::{Member, Role};

use super::error::ApiError;
use super::St;

/// A `?lag=` limit: bytes (`1048576`, `16kB`, `1MB`, `1GB`, 1024-based as
/// PostgreSQL's units) or time (`500ms`, `10s`, `1min`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    Bytes(u64),
    Time(Duration),
}

pub fn parse_lag(s: &str) -> Result<Lag, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("lag {s:?}: expected a number with an optional unit, e.g. 1MB or 10s")
    })?;
    let mul = |m: u64| {
        n.checked_mul(m)
            .ok_or_else(|| format!("lag {s:?} is too large"))
    };
    Ok(match unit.trim() {
        "" | "B" => Lag::Bytes(n),
        "kB" | "KB" | "k" => Lag::Bytes(mul(1 << 10)?),
        "MB" | "M" => Lag::Bytes(mul(1 << 20)?),
        "GB" | "G" => Lag::Bytes(mul(1 << 30)?),
        "TB" => Lag::Bytes(mul(1 << 40)?),
        "ms" => Lag::Time(Duration::from_millis(n)),
        "s" => Lag::Time(Duration::from_secs(n)),
        "min" => Lag::Time(Duration::from_secs(mul(60)?)),
        "h" => Lag::Time(Duration::from_secs(mul(3600)?)),
        u => {
            return Err(format!(
                "lag {s:?}: unknown unit {u:?} (bytes: B, kB, MB, GB, TB; time: ms, s, min, h)"
            ))
        }
    })
}

/// What the health endpoints look at, taken once per request.
pub(crate) struct Seen {
    pub me: Option<Member>,
    pub leader: Option<String>,
    pub sync: bool,
}

impl Seen {
    pub fn of(api: &super::Api) -> Seen {
        let me = api.shared.member.lock().map(|m| m.clone()).unwrap_or(None);
        let leader = api.shared.leader.lock().map(|l| l.clone()).unwrap_or(None);
        let sync = me.as_ref().is_some_and(|m| {
            api.shared
                .ops
                .snapshot()
                .and_then(|s| {
                    s.get(dcs::Key::Sync)
                        .map(|v| ha::status::sync_names(v).contains(&m.name))
                })
                .unwrap_or(false)
        });
        Seen { me, leader, sync }
    }
    pub fn running(&self) -> bool {
        self.me.as_ref().is_some_and(|m| m.running)
    }
    /// The lease holder running as primary.
    pub fn primary(&self) -> bool {
        self.me.as_ref().is_some_and(|m| {
            m.running && m.role == Role::Primary && self.leader.as_deref() == Some(m.name.as_str())
        })
    }
    /// A running standby streaming from the leader.
    pub fn streaming_replica(&self) -> bool {
        self.me
            .as_ref()
            .is_some_and(|m| m.running && m.role == Role::Replica && m.streaming)
    }
}

fn answer(ok: bool, seen: &Seen) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = seen
        .me
        .as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or_else(|| serde_json::json!({"state": "starting"}));
    (code, Json(body)).into_response()
}

type Q = Query<HashMap<String, String>>;

/// Within `?lag=`: bytes behind the leader's last published position, or
/// the age of the last replayed transaction while WAL waits to be received
/// or replayed.
async fn lag_ok(api: &super::Api, seen: &Seen, q: &Q) -> Result<bool, ApiError> {
    let Some(limit) = q.get("lag") else {
        return Ok(true);
    };
    let limit = parse_lag(limit).map_err(|e| ApiError::bad(e).field("lag"))?;
    let Some(me) = seen.me.as_ref() else {
        return Ok(false);
    };
    // Unknown only before the leader has published its position (just
    // after bootstrap): a streaming standby passes, as with Patroni.
    let bytes = me.lag.unwrap_or(0);
    // received but not replayed (replay paused, or slow): behind in time
    let unreplayed = me.replayed_lsn < me.lsn;
    Ok(match limit {
        Lag::Bytes(b) => bytes <= b,
        Lag::Time(_) if bytes == 0 && !unreplayed => true,
        Lag::Time(t) => replay_age(&api.cfg).await.is_some_and(|age| age <= t),
    })
}

/// now() - pg_last_xact_replay_timestamp() on this node (a deadline of 1 s).
async fn replay_age(cfg: &config::AgentConfig) -> Option<Duration> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(&cfg.run_dir)
        .port(cfg.pg_port)
        .user(&cfg.superuser)
        .dbname("postgres")
        .application_name("pgwarden-api")
        .connect_timeout(Duration::from_secs(1));
    let work = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let row = client
            .query_one(
                "SELECT COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0)::float8",
                &[],
            )
            .await
            .ok()?;
        Some(Duration::from_millis(row.get::<_, f64>(0).max(0.0) as u64))
    };
    tokio::time::timeout(Duration::from_secs(1), work)
        .await
        .ok()
        .flatten()
}

pub async fn primary(State(api): State<St>) -> Response {
    let seen = Seen::of(&api);
    answer(seen.primary(), &seen)
}

pub async fn replica(State(api): State<St>, q: Q) -> Result<Response, ApiError> {
    let seen = Seen::of(&api);
    let ok = seen.streaming_replica() && lag_ok(&api, &seen, &q).await?;
    Ok(answer(ok, &seen))
}

pub async fn read_only(State(api): State<St>, q: Q) -> Result<Response, ApiError> {
    let seen = Seen::of(&api);
    let ok = seen.primary() || (seen.streaming_replica() && lag_ok(&api, &seen, &q).await?);
    Ok(answer(ok, &seen))
}

pub async fn sync(State(api): State<St>) -> Response {
    let seen = Seen::of(&api);
    answer(seen.streaming_replica() && seen.sync, &seen)
}

pub async fn asynchronous(State(api): State<St>, q: Q) -> Result<Response, ApiError> {
    let seen = Seen::of(&api);
    let ok = seen.streaming_replica() && !seen.sync && lag_ok(&api, &seen, &q).await?;
    Ok(answer(ok, &seen))
}

pub async fn health(State(api): State<St>) -> Response {
    let seen = Seen::of(&api);
    answer(seen.running(), &seen)
}

/// The HA loop passes: it started one within three loop_waits (or the TTL).
pub async fn liveness(State(api): State<St>) -> Response {
    let limit = (api.cfg.loop_wait * 3).max(api.cfg.ttl);
    let ok = api
        .shared
        .ops
        .last_pass()
        .is_some_and(|t| t.elapsed() <= limit);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(serde_json::json!({ "loop_alive": ok }))).into_response()
}

/// Ready for clients: the running primary holding the lease, or a
/// streaming standby.
pub async fn readiness(State(api): State<St>) -> Response {
    let seen = Seen::of(&api);
    answer(seen.primary() || seen.streaming_replica(), &seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_units() {
        assert_eq!(parse_lag("1048576"), Ok(Lag::Bytes(1 << 20)));
        assert_eq!(parse_lag("1MB"), Ok(Lag::Bytes(1 << 20)));
        assert_eq!(parse_lag("16kB"), Ok(Lag::Bytes(16 << 10)));
        assert_eq!(parse_lag("10s"), Ok(Lag::Time(Duration::from_secs(10))));
        assert_eq!(
            parse_lag("250ms"),
            Ok(Lag::Time(Duration::from_millis(250)))
        );
        assert_eq!(parse_lag("2min"), Ok(Lag::Time(Duration::from_secs(120))));
        assert!(parse_lag("1parsec").unwrap_err().contains("unknown unit"));
        assert!(parse_lag("MB").is_err());
        assert!(parse_lag("99999999999999999999GB").is_err());
        assert!(parse_lag("18446744073709551615TB")
            .unwrap_err()
            .contains("too large"));
    }
}
