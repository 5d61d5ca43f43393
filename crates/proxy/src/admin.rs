//! The admin console: a virtual database on the proxy port
//! (`psql -p 6432 -U admin pgwarden`) answering SHOW POOLS, CLIENTS,
//! SERVERS, STATS, CONFIG, POOL_NODES, and RELOAD, PAUSE, RESUME.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use wire::backend::{BackendMessage, Column, TxStatus};
use wire::fields::sqlstate;
use wire::{ErrorFields, Severity};

use crate::io::read_message;
use crate::state::{ClientInfo, ClientState, State};
use crate::stream::Stream;
use crate::topology::{NodeStatus, Role};

/// A result set or a command tag, or an error.
pub enum Reply {
    Rows {
        columns: Vec<Column>,
        rows: Vec<Vec<Option<String>>>,
        tag: String,
    },
    Command(String),
    Error(ErrorFields),
}

fn text_rows(names: &[&str], rows: Vec<Vec<Option<String>>>, what: &str) -> Reply {
    let tag = format!("{what} {}", rows.len());
    Reply::Rows {
        columns: names.iter().map(|n| Column::text(n)).collect(),
        rows,
        tag,
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn ts(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    // UTC timestamp without a date library
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Runs one admin command.
pub async fn command(state: &Arc<State>, sql: &str) -> Reply {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "POOLS"] => show_pools(state),
        ["SHOW", "CLIENTS"] => show_clients(state),
        ["SHOW", "SERVERS"] => show_servers(state),
        ["SHOW", "STATS"] => show_stats(state),
        ["SHOW", "CONFIG"] => show_config(state),
        ["SHOW", "POOL_NODES"] => show_pool_nodes(state),
        ["SHOW", "WATCHDOG"] => show_watchdog(state),
        ["SHOW", "VERSION"] => text_rows(
            &["version"],
            vec![vec![s(concat!("pgwarden ", env!("CARGO_PKG_VERSION")))]],
            "SHOW",
        ),
        ["SHOW", "HELP"] | ["HELP"] => text_rows(
            &["command"],
            [
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW STATS",
                "SHOW CONFIG",
                "SHOW POOL_NODES",
                "SHOW WATCHDOG",
                "SHOW VERSION",
                "RELOAD",
                "PAUSE",
                "RESUME",
            ]
            .iter()
            .map(|c| vec![s(c)])
            .collect(),
            "SHOW",
        ),
        ["RELOAD"] => match state.reload() {
            Ok(()) => Reply::Command("RELOAD".into()),
            Err(e) => Reply::Error(ErrorFields::new(
                Severity::Error,
                "F0000",
                format!("configuration not reloaded: {e}"),
            )),
        },
        ["PAUSE"] => {
            state.set_paused(true);
            // Wait until every server connection is back in its pool.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while state
                .pools
                .all()
                .iter()
                .any(|p| p.active.load(Ordering::Relaxed) > 0)
            {
                if tokio::time::Instant::now() > deadline {
                    return Reply::Error(ErrorFields::new(
                        Severity::Error,
                        sqlstate::QUERY_CANCELED,
                        "PAUSE timed out waiting for active transactions; pool is paused",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Reply::Command("PAUSE".into())
        }
        ["RESUME"] => {
            state.set_paused(false);
            Reply::Command("RESUME".into())
        }
        _ => Reply::Error(
            ErrorFields::new(
                Severity::Error,
                sqlstate::SYNTAX_ERROR,
                format!("unknown admin command: {}", sql.trim()),
            )
            .with(b'H', "try SHOW HELP"),
        ),
    }
}

fn show_pools(state: &Arc<State>) -> Reply {
    let clients = state.clients();
    let rows = state
        .pools
        .all()
        .iter()
        .map(|p| {
            let mine = |st: ClientState| {
                clients
                    .iter()
                    .filter(|c| *c.names == *p.key && c.state() == st)
                    .count()
            };
            let st = p.settings();
            vec![
                s(&p.key.database),
                s(&p.key.user),
                s(mine(ClientState::Active)),
                s(p.waiting.load(Ordering::Relaxed)),
                s(mine(ClientState::Idle)),
                s(p.active.load(Ordering::Relaxed)),
                s(p.idle_count()),
                s(p.open.load(Ordering::Relaxed)),
                s(st.size),
                s(st.mode),
            ]
        })
        .collect();
    text_rows(
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_idle",
            "sv_active",
            "sv_idle",
            "sv_open",
            "pool_size",
            "pool_mode",
        ],
        rows,
        "SHOW",
    )
}

/// Seconds, to the tenth (how long a client or server has been in its
/// state, by the coarse clock).
fn secs(d: std::time::Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn show_clients(state: &Arc<State>) -> Reply {
    let rows = state
        .clients()
        .iter()
        .map(|c: &Arc<ClientInfo>| {
            let server = c.server.lock().ok().and_then(|s| s.clone());
            vec![
                s(c.id),
                s(c.user()),
                s(c.database()),
                s(format!("{:?}", c.state()).to_lowercase()),
                s(secs(c.state_age())),
                s(c.addr().ip()),
                s(c.addr().port()),
                s(c.tls),
                ts(c.connected_at()),
                server.map(|r| format!("{} pid {}", r.addr, r.pid)),
            ]
        })
        .collect();
    text_rows(
        &[
            "id",
            "user",
            "database",
            "state",
            "state_s",
            "addr",
            "port",
            "tls",
            "connect_time",
            "server",
        ],
        rows,
        "SHOW",
    )
}

fn show_servers(state: &Arc<State>) -> Reply {
    let mut rows = Vec::new();
    for c in state.clients() {
        if let Some(r) = c.server.lock().ok().and_then(|s| s.clone()) {
            rows.push(vec![
                s(r.id),
                s(c.user()),
                s(c.database()),
                s("active"),
                s(secs(c.state_age())),
                s(&r.addr),
                s(r.pid),
                None,
                s(c.id),
            ]);
        }
    }
    for p in state.pools.all() {
        for (id, addr, age, pid, idle) in p.idle_servers() {
            rows.push(vec![
                s(id),
                s(&p.key.user),
                s(&p.key.database),
                s("idle"),
                s(secs(idle)),
                s(addr),
                s(pid),
                s(age.as_secs()),
                None,
            ]);
        }
    }
    text_rows(
        &[
            "id",
            "user",
            "database",
            "state",
            "state_s",
            "addr",
            "pid",
            "age_s",
            "client_id",
        ],
        rows,
        "SHOW",
    )
}

fn show_stats(state: &Arc<State>) -> Reply {
    let st = &state.stats;
    let rows = vec![
        vec![s("total_xact_count"), s(st.xacts.load(Ordering::Relaxed))],
        vec![
            s("total_wait_time_us"),
            s(state
                .pools
                .all()
                .iter()
                .map(|p| p.wait_us.load(Ordering::Relaxed))
                .sum::<u64>()),
        ],
        vec![s("total_logins"), s(st.logins.load(Ordering::Relaxed))],
        vec![
            s("total_login_failures"),
            s(st.login_failures.load(Ordering::Relaxed)),
        ],
        vec![s("clients"), s(state.client_count.load(Ordering::Relaxed))],
        vec![s("prepared_statements"), s(state.registry.len())],
        vec![s("uptime_s"), s(state.started.elapsed().as_secs())],
    ];
    let r = &state.router.stats;
    let cache = state.router.cache_stats();
    let mut rows = rows;
    for (k, v) in [
        ("balanced_to_standby", r.to_standby.load(Ordering::Relaxed)),
        ("balanced_to_primary", r.to_primary.load(Ordering::Relaxed)),
        (
            "read_your_writes_fallbacks",
            r.ryw_fallbacks.load(Ordering::Relaxed),
        ),
        (
            "standby_read_retries",
            r.standby_retries.load(Ordering::Relaxed),
        ),
        ("classifier_cache_hits", cache.hits),
        ("classifier_cache_misses", cache.misses),
        ("classifier_cache_entries", cache.entries as u64),
    ] {
        rows.push(vec![s(k), s(v)]);
    }
    text_rows(&["stat", "value"], rows, "SHOW")
}

fn show_config(state: &Arc<State>) -> Reply {
    let c = state.config();
    let p = &c.proxy;
    let mut rows: Vec<Vec<Option<String>>> = [
        ("listen", p.listen.to_string()),
        ("pool_mode", p.pool_mode.to_string()),
        ("max_client_conn", p.max_client_conn.to_string()),
        ("admin_reserved_conn", p.admin_reserved_conn.to_string()),
        ("default_pool_size", p.default_pool_size.to_string()),
        ("min_pool_size", p.min_pool_size.to_string()),
        (
            "server_idle_timeout",
            format!("{:?}", p.server_idle_timeout),
        ),
        ("server_lifetime", format!("{:?}", p.server_lifetime)),
        ("query_wait_timeout", format!("{:?}", p.query_wait_timeout)),
        (
            "server_connect_timeout",
            format!("{:?}", p.server_connect_timeout),
        ),
        (
            "health_check_period",
            format!("{:?}", p.health_check_period),
        ),
        (
            "health_check_timeout",
            format!("{:?}", p.health_check_timeout),
        ),
        (
            "health_check_max_retries",
            p.health_check_max_retries.to_string(),
        ),
        ("shutdown_timeout", format!("{:?}", p.shutdown_timeout)),
        ("server_reset_query", p.server_reset_query.clone()),
        ("session_server_reuse", p.session_server_reuse.to_string()),
        (
            "idle_transaction_timeout",
            format!("{:?}", p.idle_transaction_timeout),
        ),
        ("query_timeout", format!("{:?}", p.query_timeout)),
        (
            "client_idle_timeout",
            format!("{:?}", p.client_idle_timeout),
        ),
        ("max_message_size", p.max_message_size.to_string()),
        ("workers", p.workers.to_string()),
        ("admin_users", p.admin_users.join(",")),
        ("tls", p.tls_cert_file.is_some().to_string()),
        ("server_tls", format!("{:?}", p.server_tls).to_lowercase()),
    ]
    .into_iter()
    .map(|(k, v)| vec![s(k), Some(v)])
    .collect();
    for r in &p.hba.0 {
        rows.push(vec![s("hba"), s(&r.text)]);
    }
    text_rows(&["key", "value"], rows, "SHOW")
}

/// Pgpool-II's columns, in its order: `status`/`role` are the proxy's
/// view (the node it uses as primary), `pg_status`/`pg_role` what the last
/// health check saw.
/// The proxies registered in the DCS (Pgpool-II's `pcp_watchdog_info`):
/// each one's state, whether it holds the virtual IP, and which is this
/// one. Empty without a DCS.
fn show_watchdog(state: &Arc<State>) -> Reply {
    let (me, view) = state.peers.get().unwrap_or_default();
    let rows = view
        .proxies
        .iter()
        .map(|p| {
            vec![
                s(&p.name),
                s(&p.listen),
                s(p.state),
                s(p.vip.as_deref().unwrap_or("")),
                s(view.vip_holder.as_deref() == Some(p.name.as_str())),
                s(p.clients),
                s(p.primary.as_deref().unwrap_or("")),
                s(p.primary_reachable),
                s(p.name == me),
            ]
        })
        .collect();
    text_rows(
        &[
            "name",
            "listen",
            "state",
            "vip",
            "holds_vip",
            "clients",
            "primary",
            "primary_reachable",
            "this_proxy",
        ],
        rows,
        "SHOW",
    )
}

fn show_pool_nodes(state: &Arc<State>) -> Reply {
    let primary = state.topology.primary();
    let nodes = state.topology.nodes();
    let primary_replication = primary
        .as_ref()
        .and_then(|p| nodes.get(p.node))
        .map(|n| n.replication.clone())
        .unwrap_or_default();
    let cfg = state.config();
    let bal = &cfg.proxy.balance;
    let weights: Vec<u32> = nodes
        .iter()
        .map(|n| bal.weight(&n.name, &n.addr()))
        .collect();
    let total = weights.iter().sum::<u32>().max(1) as f64;
    let balancing = cfg.proxy.balance.enabled
        && cfg.proxy.pool_mode == config::PoolMode::Transaction
        && cfg.proxy.balance.consistency != config::Consistency::Primary;
    let readers: Vec<usize> = if balancing {
        state
            .router
            .eligible(&state.topology, bal)
            .into_iter()
            .map(|c| c.node)
            .collect()
    } else {
        Vec::new()
    };
    let rows = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let status = match n.status {
                NodeStatus::Up => "up",
                NodeStatus::Down => "down",
                NodeStatus::Unknown => "waiting",
            };
            let is_primary = primary.as_ref().is_some_and(|p| p.node == i);
            let pg_role = match (n.status, n.role) {
                (NodeStatus::Up, Role::Primary) => "primary",
                (NodeStatus::Up, Role::Standby) => "standby",
                _ => "unknown",
            };
            let (replication_state, replication_sync_state) =
                crate::topology::replication_columns(&n.replication, &primary_replication);
            vec![
                s(i),
                s(&n.host),
                s(n.port),
                s(status),
                s(if n.status == NodeStatus::Up {
                    "up"
                } else {
                    "down"
                }),
                s(format!("{:.6}", f64::from(weights[i]) / total)),
                s(if is_primary { "primary" } else { "standby" }),
                s(pg_role),
                s(n.select_cnt),
                // where reads may go now: the eligible standbys, or the
                // primary when there is none (or balancing is off)
                s(readers.contains(&i) || (readers.is_empty() && is_primary)),
                s(n.replication_delay),
                s(replication_state),
                s(replication_sync_state),
                ts(n.last_status_change),
            ]
        })
        .collect();
    text_rows(
        &[
            "node_id",
            "hostname",
            "port",
            "status",
            "pg_status",
            "lb_weight",
            "role",
            "pg_role",
            "select_cnt",
            "load_balance_node",
            "replication_delay",
            "replication_state",
            "replication_sync_state",
            "last_status_change",
        ],
        rows,
        "SHOW",
    )
}

fn encode_reply(reply: Reply, out: &mut BytesMut) {
    match reply {
        Reply::Rows { columns, rows, tag } => {
            BackendMessage::RowDescription(columns).encode(out);
            for r in rows {
                BackendMessage::DataRow(r.into_iter().map(|v| v.map(Bytes::from)).collect())
                    .encode(out);
            }
            BackendMessage::CommandComplete(tag).encode(out);
        }
        Reply::Command(tag) => BackendMessage::CommandComplete(tag).encode(out),
        Reply::Error(f) => BackendMessage::ErrorResponse(f).encode(out),
    }
}

/// Serves one admin client until it leaves.
pub async fn serve(
    state: Arc<State>,
    mut stream: Stream,
    mut buf: BytesMut,
    info: Arc<ClientInfo>,
) {
    let mut out = BytesMut::new();
    crate::auth::encode_auth_ok(&mut out);
    for (k, v) in [
        ("server_version", "15.0 (pgwarden)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
    ] {
        BackendMessage::ParameterStatus {
            name: k.into(),
            value: v.into(),
        }
        .encode(&mut out);
    }
    BackendMessage::BackendKeyData {
        pid: info.key.0,
        secret: info.key.1,
    }
    .encode(&mut out);
    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    let max = state.config().proxy.max_message_size;
    let mut skip_to_sync = false;
    loop {
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        let next = tokio::select! {
            m = read_message(&mut stream, &mut buf, max, Duration::from_secs(86_400)) => m,
            _ = std::future::poll_fn(|cx| shutdown_signalled(&info, cx)) => {
                crate::io::send_fatal(&mut stream, sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down").await;
                return;
            }
        };
        let (tag, body) = match next {
            Ok(m) => m,
            Err(e) => {
                if !matches!(e, crate::io::ClientError::Closed) {
                    crate::io::send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, e.to_string())
                        .await;
                }
                return;
            }
        };
        match tag {
            b'Q' => {
                let reply = match wire::frontend::query_text(&body) {
                    Ok(q) if q.trim().is_empty() => {
                        BackendMessage::EmptyQueryResponse.encode(&mut out);
                        None
                    }
                    Ok(q) => Some(command(&state, q).await),
                    Err(e) => Some(Reply::Error(ErrorFields::new(
                        Severity::Error,
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ))),
                };
                if let Some(r) = reply {
                    encode_reply(r, &mut out);
                }
                BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
            }
            b'X' => return,
            b'S' => {
                skip_to_sync = false;
                BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
            }
            b'H' => {}
            _ if skip_to_sync => {}
            _ => {
                skip_to_sync = true;
                ErrorFields::new(
                    Severity::Error,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the admin console accepts only simple queries (e.g. psql)",
                )
                .encode_error(&mut out);
            }
        }
    }
}

/// Ready when a shutdown is signalled to this console (other signals, such
/// as a change of primary, do not concern it).
fn shutdown_signalled(info: &ClientInfo, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
    use crate::state::Control;
    loop {
        match info.control.poll(cx) {
            std::task::Poll::Ready(bits)
                if bits & (Control::SHUTDOWN | Control::TERMINATE) != 0 =>
            {
                return std::task::Poll::Ready(())
            }
            std::task::Poll::Ready(bits) => info.control.clear(bits),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    }
}
