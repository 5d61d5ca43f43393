//! The agent's REST API: health endpoints for load balancers (HAProxy
//! style: 200 or 503) and the cluster state as JSON.
//!
//! GET /health   200 when PostgreSQL runs
//! GET /primary  200 when this node is the running primary
//! GET /replica  200 when this node is a running standby
//! GET /cluster  leader and members
//! GET /         this member (with the last loop's sentence)
//! POST /failsafe?leader=NAME  200 when this node is a running standby of
//!               NAME (failsafe mode: the leader asks while the DCS is down)
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ha::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::driver::Shared;

pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let k = s.read(&mut buf[n..]).await?;
                        if k == 0 {
                            break;
                        }
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let mut parts = req.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
                let (code, body) = respond(method, path, &shared);
                let reason = match code {
                    200 => "OK",
                    404 => "Not Found",
                    400 => "Bad Request",
                    409 => "Conflict",
                    405 => "Method Not Allowed",
                    _ => "Service Unavailable",
                };
                let resp = format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(resp.as_bytes()))
                    .await;
            });
        }
    }))
}

fn respond(method: &str, path: &str, shared: &Shared) -> (u16, String) {
    if method == "POST" {
        return match path.split_once('?') {
            Some(("/failsafe", q)) => failsafe(q, shared),
            _ => (405, "{\"error\":\"only GET, and POST /failsafe\"}".into()),
        };
    }
    if method != "GET" && method != "HEAD" && method != "OPTIONS" {
        return (405, "{\"error\":\"only GET\"}".into());
    }
    let member = shared.member.lock().map(|m| m.clone()).unwrap_or(None);
    let leader = shared.leader.lock().map(|l| l.clone()).unwrap_or(None);
    let me = member.as_ref();
    let json = me.map(|m| m.to_json()).unwrap_or_else(|| "{}".into());
    let ok = |c: bool| if c { 200 } else { 503 };
    match path.split('?').next().unwrap_or("/") {
        "/" | "/member" | "/patroni" => (ok(me.is_some()), json),
        "/health" | "/liveness" | "/readiness" => (ok(me.is_some_and(|m| m.running)), json),
        "/primary" | "/leader" | "/master" | "/read-write" => {
            let is = me.is_some_and(|m| {
                m.running && m.role == Role::Primary && leader.as_deref() == Some(m.name.as_str())
            });
            (ok(is), json)
        }
        "/replica" | "/standby" | "/read-only" => (
            ok(me.is_some_and(|m| m.running && m.role == Role::Replica)),
            json,
        ),
        "/cluster" => {
            let members = shared.members.lock().map(|m| m.clone()).unwrap_or_default();
            let body = serde_json::json!({
                "leader": leader,
                "members": members.iter().map(|m| serde_json::from_str::<serde_json::Value>(&m.to_json()).unwrap_or_default()).collect::<Vec<_>>(),
            });
            (200, body.to_string())
        }
        _ => (404, "{\"error\":\"not found\"}".into()),
    }
}

/// A leader without the DCS asks whether this node still follows it.
fn failsafe(query: &str, shared: &Shared) -> (u16, String) {
    let Some(leader) = query.split('&').find_map(|kv| kv.strip_prefix("leader=")) else {
        return (400, "{\"error\":\"leader= missing\"}".into());
    };
    let member = shared.member.lock().map(|m| m.clone()).unwrap_or(None);
    let known_leader = shared.leader.lock().map(|l| l.clone()).unwrap_or(None);
    // Still a running standby, and the last leader seen in the DCS was it.
    let follows = member.is_some_and(|m| m.running && m.role == Role::Replica)
        && known_leader.as_deref() == Some(leader);
    if !follows {
        return (409, "{\"follows\":false}".into());
    }
    *shared
        .failsafe_ping
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((leader.to_owned(), std::time::Instant::now()));
    (200, "{\"follows\":true}".into())
}

/// Asks the member at `api_url` whether it follows `leader`.
pub async fn failsafe_confirm(api_url: &str, leader: &str) -> bool {
    let Some(addr) = api_url.strip_prefix("http://") else {
        return false;
    };
    let r = tokio::time::timeout(Duration::from_secs(1), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("POST /failsafe?leader={leader} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    })
    .await;
    matches!(r, Ok(Ok(true)))
}
