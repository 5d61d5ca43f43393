//! The configuration model: the raw TOML shape (with spans for error
//! reporting) and the validated types the rest of pgwarden uses.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::balance::*;
use crate::duration::{duration, positive_duration};
use crate::hba::{HbaRule, HbaRules};
use crate::Invalid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerTls {
    Disable,
    Prefer,
    Require,
}

/// A PostgreSQL server the proxy may route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Backend {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A user the proxy knows. `secret` is a cleartext password, an md5 hash
/// (`md5...`) or a SCRAM verifier (`SCRAM-SHA-256$...`); absent for users
/// authenticated by `trust` only or looked up with the auth query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub secret: Option<String>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
}

/// PgBouncer-style lookup of unknown users' password hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuery {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub query: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Prometheus metrics over HTTP (`GET /metrics`), when set.
    pub metrics_listen: Option<SocketAddr>,
    pub pool_mode: PoolMode,
    pub max_client_conn: usize,
    pub admin_reserved_conn: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub health_check_period: Duration,
    pub health_check_timeout: Duration,
    /// Failed health checks in a row tolerated before a backend is marked
    /// down (Pgpool-II's health_check_max_retries): one slow or lost
    /// probe does not take the primary away from every client.
    pub health_check_max_retries: u32,
    pub shutdown_timeout: Duration,
    pub server_reset_query: String,
    /// Session mode: give a client's server connection to later clients
    /// (after `server_reset_query`). Off: each client session has a server
    /// process of its own, whose pid it is told, as with a direct
    /// connection.
    pub session_server_reuse: bool,
    /// A client idle in a transaction (the proxy waits for it while its
    /// server holds the transaction) longer than this is disconnected and
    /// its server connection closed. Zero: no limit (PgBouncer's default).
    pub idle_transaction_timeout: Duration,
    /// A query that runs longer than this (since the client's last request,
    /// the server owing an answer) is cancelled and its client disconnected.
    /// Zero: no limit.
    pub query_timeout: Duration,
    /// A client that holds no server connection and sends nothing for this
    /// long is disconnected. Zero: no limit.
    pub client_idle_timeout: Duration,
    pub max_message_size: usize,
    pub workers: usize,
    pub admin_users: Vec<String>,
    pub admin_database: String,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub server_tls: ServerTls,
    pub hba: HbaRules,
    pub health_check_user: String,
    pub health_check_password: Option<String>,
    pub health_check_database: String,
    /// Read/write splitting over the standbys.
    pub balance: Balance,
    /// This proxy's name in the DCS (None: from the host and listen address).
    pub name: Option<String>,
    /// The virtual IP the proxies' watchdog moves (with a DCS).
    pub vip: Option<crate::Vip>,
}

/// One agent: the node it manages and how it reaches the DCS.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub name: String,
    pub cluster: String,
    /// `local:///dir` or `etcd://host:port[,host:port]`.
    pub dcs: String,
    pub data_dir: std::path::PathBuf,
    /// Unix socket directory and PostgreSQL's log.
    pub run_dir: std::path::PathBuf,
    /// Address PostgreSQL listens on and other nodes reach it by.
    pub host: String,
    pub pg_port: u16,
    /// The agent's REST API.
    pub api_listen: SocketAddr,
    /// The token the REST API's mutating endpoints require (`Authorization:
    /// Bearer TOKEN`, or basic auth with it as the password): from
    /// `api_token`, or the first line of `api_token_file`. None: they are
    /// refused.
    pub api_token: Option<String>,
    /// The REST API over TLS (`api_tls_cert` and `api_tls_key`), and the CA
    /// this agent verifies other agents' certificates with (`api_tls_ca`).
    pub api_tls: Option<ApiTls>,
    pub os_user: String,
    pub superuser: String,
    pub replication_user: String,
    /// A non-superuser role for operators, created at bootstrap.
    pub admin_user: String,
    /// Crashes restarted in place (within 10 s of the last restart) before
    /// the lease is released for a failover; 0: always fail over.
    pub max_crash_restarts: u32,
    /// The agent's check of its own PostgreSQL must answer within this...
    pub pg_check_timeout: Duration,
    /// ...and a node whose PostgreSQL misses this many checks in a row is
    /// hung: it gives up the lease and is stopped with SIGKILL (fenced).
    pub pg_check_misses: u32,
    pub loop_wait: Duration,
    pub ttl: Duration,
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    /// Quorum mode: standbys that must acknowledge each commit.
    pub synchronous_node_count: u32,
    pub failsafe_mode: bool,
    pub nofailover: bool,
    pub priority: i32,
    /// pg_hba.conf lines the agent writes.
    pub pg_hba: Vec<String>,
    /// PostgreSQL parameters: cluster-wide at bootstrap, then per node.
    pub parameters: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: Option<AgentConfig>,
    /// The proxy follows this DCS's leader instead of health checks.
    pub proxy_dcs: Option<(String, String)>,
    pub proxy: ProxyConfig,
    pub backends: Vec<Backend>,
    pub users: Vec<User>,
    pub auth_query: Option<AuthQuery>,
}

impl Config {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

// ---- raw TOML shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    agent: Option<RawAgent>,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    users: Vec<Spanned<RawUser>>,
    auth_query: Option<RawAuthQuery>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    pool_mode: Option<PoolMode>,
    max_client_conn: Option<usize>,
    admin_reserved_conn: Option<usize>,
    default_pool_size: Option<Spanned<usize>>,
    min_pool_size: Option<usize>,
    server_idle_timeout: Option<Spanned<String>>,
    server_lifetime: Option<Spanned<String>>,
    query_wait_timeout: Option<Spanned<String>>,
    server_connect_timeout: Option<Spanned<String>>,
    health_check_period: Option<Spanned<String>>,
    health_check_timeout: Option<Spanned<String>>,
    health_check_max_retries: Option<u32>,
    shutdown_timeout: Option<Spanned<String>>,
    server_reset_query: Option<String>,
    session_server_reuse: Option<bool>,
    idle_transaction_timeout: Option<Spanned<String>>,
    query_timeout: Option<Spanned<String>>,
    client_idle_timeout: Option<Spanned<String>>,
    max_message_size: Option<Spanned<usize>>,
    workers: Option<Spanned<usize>>,
    admin_users: Option<Vec<String>>,
    admin_database: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    server_tls: Option<ServerTls>,
    hba: Option<Vec<Spanned<String>>>,
    health_check_user: Option<String>,
    health_check_password: Option<String>,
    health_check_database: Option<String>,
    load_balance: Option<bool>,
    consistency: Option<Consistency>,
    max_replica_lag: Option<u64>,
    read_your_writes_timeout: Option<Spanned<String>>,
    read_your_writes_scope: Option<RywScope>,
    disable_load_balance_on_write: Option<OnWrite>,
    load_balance_strategy: Option<Strategy>,
    read_affinity: Option<Affinity>,
    backend_weights: Option<BTreeMap<String, u32>>,
    primary_serves_reads: Option<bool>,
    route_by_database: Option<BTreeMap<String, RouteTo>>,
    route_by_user: Option<BTreeMap<String, RouteTo>>,
    route_by_application: Option<BTreeMap<String, RouteTo>>,
    /// Follow this DCS's leader (with `cluster`).
    dcs: Option<String>,
    cluster: Option<String>,
    name: Option<Spanned<String>>,
    vip: Option<crate::vip::RawVip>,
}

/// PEM files for the REST API's TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTls {
    pub cert: String,
    pub key: String,
    /// Without it, other agents' API (failsafe questions) is reached
    /// encrypted but unverified.
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    cluster: Option<String>,
    dcs: Option<String>,
    data_dir: String,
    run_dir: Option<String>,
    host: Option<String>,
    pg_port: Spanned<u32>,
    api_listen: Option<Spanned<String>>,
    api_token: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    api_tls_cert: Option<Spanned<String>>,
    api_tls_key: Option<Spanned<String>>,
    api_tls_ca: Option<String>,
    os_user: Option<String>,
    superuser: Option<String>,
    replication_user: Option<String>,
    admin_user: Option<String>,
    max_crash_restarts: Option<u32>,
    pg_check_timeout: Option<Spanned<String>>,
    pg_check_misses: Option<u32>,
    loop_wait: Option<Spanned<String>>,
    ttl: Option<Spanned<String>>,
    maximum_lag_on_failover: Option<u64>,
    synchronous_mode: Option<Spanned<toml::Value>>,
    synchronous_mode_strict: Option<bool>,
    synchronous_node_count: Option<Spanned<u32>>,
    failsafe_mode: Option<bool>,
    nofailover: Option<bool>,
    priority: Option<i32>,
    pg_hba: Option<Vec<String>>,
    parameters: Option<std::collections::BTreeMap<String, toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Option<String>,
    host: String,
    port: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password: Option<String>,
    pool_size: Option<usize>,
    pool_mode: Option<PoolMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthQuery {
    user: String,
    password: Option<String>,
    database: Option<String>,
    query: Option<String>,
}

/// More server connections than PostgreSQL's own max_connections limit
/// (262143) can only be a mistake.
const MAX_POOL_SIZE: usize = 262_143;

/// A duration that must not be zero (a zero timeout fails everything).
impl RawConfig {
    pub(crate) fn validate(self) -> Result<Config, Invalid> {
        let mut p = self.proxy;
        let (p_dcs, p_cluster) = (p.dcs.take(), p.cluster.take());
        let listen = match &p.listen {
            None => "127.0.0.1:6432".parse().expect("valid literal"),
            Some(s) => s.get_ref().parse().map_err(|_| {
                Invalid::at(
                    s.span(),
                    format!("listen address {:?} must be IP:port", s.get_ref()),
                )
            })?,
        };
        let metrics_listen = match &p.metrics_listen {
            None => None,
            Some(s) => Some(s.get_ref().parse().map_err(|_| {
                Invalid::at(
                    s.span(),
                    format!("metrics_listen {:?} must be IP:port", s.get_ref()),
                )
            })?),
        };
        let default_pool_size = match &p.default_pool_size {
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > MAX_POOL_SIZE => {
                return Err(Invalid::at(
                    s.span(),
                    format!("default_pool_size must be between 1 and {MAX_POOL_SIZE}"),
                ))
            }
            Some(s) => *s.get_ref(),
            None => 20,
        };
        let workers = match &p.workers {
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > 64 => {
                return Err(Invalid::at(s.span(), "workers must be between 1 and 64"))
            }
            Some(s) => *s.get_ref(),
            None => 1,
        };
        let max_message_size = match &p.max_message_size {
            Some(s) if *s.get_ref() < 1024 || *s.get_ref() > (1 << 30) => {
                return Err(Invalid::at(
                    s.span(),
                    "max_message_size must be between 1024 and 1073741824 bytes",
                ))
            }
            Some(s) => *s.get_ref(),
            None => 64 << 20,
        };
        let hba = match &p.hba {
            None => HbaRules(vec![
                HbaRule::parse("host all all all scram-sha-256").expect("valid literal")
            ]),
            Some(lines) => HbaRules(
                lines
                    .iter()
                    .map(|l| HbaRule::parse(l.get_ref()).map_err(|m| Invalid::at(l.span(), m)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        if p.tls_cert_file.is_some() != p.tls_key_file.is_some() {
            return Err(Invalid::general(
                "[proxy] tls_cert_file and tls_key_file must be given together",
            ));
        }
        let min_pool_size = p.min_pool_size.unwrap_or(0);
        if min_pool_size > default_pool_size {
            return Err(Invalid::general(format!(
                "[proxy] min_pool_size ({min_pool_size}) must not exceed default_pool_size ({default_pool_size})"
            )));
        }
        let proxy = ProxyConfig {
            listen,
            metrics_listen,
            pool_mode: p.pool_mode.unwrap_or(PoolMode::Transaction),
            max_client_conn: p.max_client_conn.unwrap_or(10_000),
            admin_reserved_conn: p.admin_reserved_conn.unwrap_or(5),
            default_pool_size,
            min_pool_size,
            server_idle_timeout: duration(&p.server_idle_timeout, Duration::from_secs(600))?,
            server_lifetime: duration(&p.server_lifetime, Duration::from_secs(3600))?,
            query_wait_timeout: duration(&p.query_wait_timeout, Duration::from_secs(30))?,
            server_connect_timeout: positive_duration(
                &p.server_connect_timeout,
                "server_connect_timeout",
                Duration::from_secs(3),
            )?,
            health_check_period: positive_duration(
                &p.health_check_period,
                "health_check_period",
                Duration::from_millis(500),
            )?,
            health_check_timeout: positive_duration(
                &p.health_check_timeout,
                "health_check_timeout",
                Duration::from_secs(1),
            )?,
            health_check_max_retries: p.health_check_max_retries.unwrap_or(2),
            shutdown_timeout: duration(&p.shutdown_timeout, Duration::from_secs(30))?,
            server_reset_query: p
                .server_reset_query
                .unwrap_or_else(|| "DISCARD ALL".to_owned()),
            session_server_reuse: p.session_server_reuse.unwrap_or(false),
            idle_transaction_timeout: duration(&p.idle_transaction_timeout, Duration::ZERO)?,
            query_timeout: duration(&p.query_timeout, Duration::ZERO)?,
            client_idle_timeout: duration(&p.client_idle_timeout, Duration::ZERO)?,
            max_message_size,
            workers,
            admin_users: p.admin_users.unwrap_or_default(),
            admin_database: p.admin_database.unwrap_or_else(|| "pgwarden".to_owned()),
            tls_cert_file: p.tls_cert_file,
            tls_key_file: p.tls_key_file,
            server_tls: p.server_tls.unwrap_or(ServerTls::Disable),
            hba,
            health_check_user: p.health_check_user.unwrap_or_else(|| "postgres".to_owned()),
            health_check_password: p.health_check_password,
            health_check_database: p
                .health_check_database
                .unwrap_or_else(|| "postgres".to_owned()),
            balance: Balance {
                enabled: p.load_balance.unwrap_or(false),
                consistency: p.consistency.unwrap_or(Consistency::ReadYourWrites),
                max_replica_lag: p.max_replica_lag.unwrap_or(16 << 20),
                read_your_writes_timeout: duration(
                    &p.read_your_writes_timeout,
                    Duration::from_millis(200),
                )?,
                read_your_writes_scope: p.read_your_writes_scope.unwrap_or(RywScope::Connection),
                on_write: p
                    .disable_load_balance_on_write
                    .unwrap_or(OnWrite::Transaction),
                strategy: p.load_balance_strategy.unwrap_or(Strategy::RoundRobin),
                weights: p.backend_weights.unwrap_or_default(),
                primary_serves_reads: p.primary_serves_reads.unwrap_or(false),
                affinity: p.read_affinity.unwrap_or(Affinity::Connection),
                routes: RouteDefaults {
                    by_database: p.route_by_database.unwrap_or_default(),
                    by_user: p.route_by_user.unwrap_or_default(),
                    by_application: p.route_by_application.unwrap_or_default(),
                },
            },
            name: p
                .name
                .as_ref()
                .map(crate::vip::valid_proxy_name)
                .transpose()?,
            vip: p.vip.map(|v| v.validate()).transpose()?,
        };

        let mut backends = Vec::new();
        for (i, b) in self.backends.into_iter().enumerate() {
            let span = b.span();
            let b = b.into_inner();
            let port = u16::try_from(*b.port.get_ref())
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    Invalid::at(
                        b.port.span(),
                        format!("port {} is not a valid TCP port", b.port.get_ref()),
                    )
                })?;
            if b.host.is_empty() {
                return Err(Invalid::at(span, "backend host must not be empty"));
            }
            backends.push(Backend {
                name: b.name.unwrap_or_else(|| format!("node{i}")),
                host: b.host,
                port,
            });
        }

        let mut users: Vec<User> = Vec::new();
        for u in self.users {
            let u = u.into_inner();
            if u.name.get_ref().is_empty() {
                return Err(Invalid::at(u.name.span(), "user name must not be empty"));
            }
            if users.iter().any(|x| &x.name == u.name.get_ref()) {
                return Err(Invalid::at(
                    u.name.span(),
                    format!("user {:?} is defined twice", u.name.get_ref()),
                ));
            }
            if let Some(n) = u.pool_size.filter(|&n| n == 0 || n > MAX_POOL_SIZE) {
                return Err(Invalid::at(
                    u.name.span(),
                    format!(
                        "user {:?}: pool_size {n} must be between 1 and {MAX_POOL_SIZE}",
                        u.name.get_ref()
                    ),
                ));
            }
            if let Some(pw) = u.password.as_deref() {
                if pw.starts_with("SCRAM-SHA-256$") && !scram_verifier_shape(pw) {
                    return Err(Invalid::at(
                        u.name.span(),
                        format!(
                            "user {:?}: password looks like a SCRAM verifier but is not one \
                             (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
                            u.name.get_ref()
                        ),
                    ));
                }
            }
            users.push(User {
                name: u.name.into_inner(),
                secret: u.password,
                pool_size: u.pool_size,
                pool_mode: u.pool_mode,
            });
        }

        let auth_query = self.auth_query.map(|a| AuthQuery {
            user: a.user,
            password: a.password,
            database: a.database.unwrap_or_else(|| "postgres".to_owned()),
            query: a.query.unwrap_or_else(|| {
                "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1".to_owned()
            }),
        });

        let agent = self.agent.map(validate_agent).transpose()?;
        if proxy.vip.is_some() && p_dcs.is_none() {
            return Err(Invalid::general(
                "[proxy.vip] needs [proxy] dcs: the proxies share the address by a lease there",
            ));
        }
        let proxy_dcs = p_dcs.map(|d| (d, p_cluster.unwrap_or_else(|| "pgwarden".to_owned())));
        Ok(Config {
            agent,
            proxy_dcs,
            proxy,
            backends,
            users,
            auth_query,
        })
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, by shape.
fn scram_verifier_shape(s: &str) -> bool {
    let b64 = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    let Some((iter_salt, keys)) = s
        .strip_prefix("SCRAM-SHA-256$")
        .and_then(|r| r.split_once('$'))
    else {
        return false;
    };
    match (iter_salt.split_once(':'), keys.split_once(':')) {
        (Some((iter, salt)), Some((stored, server))) => {
            iter.parse::<u32>().is_ok_and(|i| i > 0) && b64(salt) && b64(stored) && b64(server)
        }
        _ => false,
    }
}

/// The API token, given inline or in a file (its first line); at least
/// 16 characters, a shorter one is easy to guess.
fn api_token(
    inline: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
) -> Result<Option<String>, Invalid> {
    let (token, span) = match (inline, file) {
        (Some(t), Some(_)) => {
            return Err(Invalid::at(
                t.span(),
                "give api_token or api_token_file, not both",
            ))
        }
        (Some(t), None) => (t.get_ref().trim().to_owned(), t.span()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f.get_ref()).map_err(|e| {
                Invalid::at(
                    f.span(),
                    format!("api_token_file {:?} cannot be read: {e}", f.get_ref()),
                )
            })?;
            let line = text.lines().next().unwrap_or("").trim().to_owned();
            (line, f.span())
        }
        (None, None) => return Ok(None),
    };
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::at(
            span,
            "the API token must be at least 16 characters without spaces",
        ));
    }
    Ok(Some(token))
}

fn validate_agent(a: RawAgent) -> Result<AgentConfig, Invalid> {
    let name = a.name.get_ref().clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Invalid::at(
            a.name.span(),
            "agent name must be letters, digits, '-' or '_'",
        ));
    }
    let pg_port = u16::try_from(*a.pg_port.get_ref())
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            Invalid::at(
                a.pg_port.span(),
                format!("pg_port {} is not a valid TCP port", a.pg_port.get_ref()),
            )
        })?;
    let api_listen = match &a.api_listen {
        None => SocketAddr::from(([127, 0, 0, 1], 8008)),
        Some(s) => s.get_ref().parse().map_err(|_| {
            Invalid::at(
                s.span(),
                format!("api_listen {:?} must be IP:port", s.get_ref()),
            )
        })?,
    };
    let api_token = api_token(&a.api_token, &a.api_token_file)?;
    let api_tls = match (&a.api_tls_cert, &a.api_tls_key) {
        (Some(c), Some(k)) => Some(ApiTls {
            cert: c.get_ref().clone(),
            key: k.get_ref().clone(),
            ca: a.api_tls_ca.clone(),
        }),
        (None, None) if a.api_tls_ca.is_none() => None,
        (Some(c), None) => {
            return Err(Invalid::at(c.span(), "api_tls_cert needs api_tls_key"));
        }
        (None, Some(k)) => {
            return Err(Invalid::at(k.span(), "api_tls_key needs api_tls_cert"));
        }
        (None, None) => {
            return Err(Invalid::general(
                "api_tls_ca needs api_tls_cert and api_tls_key (the API over TLS)",
            ));
        }
    };
    let loop_wait = duration(&a.loop_wait, Duration::from_secs(1))?;
    let ttl = duration(&a.ttl, Duration::from_secs(5))?;
    let pg_check_timeout = duration(&a.pg_check_timeout, Duration::from_secs(2))?;
    if ttl < loop_wait * 2 {
        let span = a.ttl.as_ref().map(|t| t.span()).unwrap_or(0..0);
        return Err(Invalid::at(
            span,
            format!("ttl ({ttl:?}) must be at least twice loop_wait ({loop_wait:?})"),
        ));
    }
    let synchronous_mode = match &a.synchronous_mode {
        None => SyncMode::Off,
        Some(v) => SyncMode::from_toml(v.get_ref()).ok_or_else(|| {
            Invalid::at(
                v.span(),
                "synchronous_mode must be true, false, \"on\", \"off\" or \"quorum\"".to_owned(),
            )
        })?,
    };
    let synchronous_node_count = match &a.synchronous_node_count {
        None => 1,
        Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
        Some(n) => {
            return Err(Invalid::at(
                n.span(),
                "synchronous_node_count must be at least 1".to_owned(),
            ))
        }
    };
    let data_dir = std::path::PathBuf::from(&a.data_dir);
    let mut parameters = std::collections::BTreeMap::new();
    for (k, v) in a.parameters.unwrap_or_default() {
        let v = match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        parameters.insert(k, v);
    }
    Ok(AgentConfig {
        run_dir: a
            .run_dir
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| data_dir.with_extension("run")),
        data_dir,
        name,
        cluster: a.cluster.unwrap_or_else(|| "pgwarden".to_owned()),
        dcs: a
            .dcs
            .unwrap_or_else(|| "local:///var/lib/pgwarden/dcs".to_owned()),
        host: a.host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        pg_port,
        api_listen,
        api_token,
        api_tls,
        os_user: a.os_user.unwrap_or_else(|| "postgres".to_owned()),
        superuser: a.superuser.unwrap_or_else(|| "postgres".to_owned()),
        replication_user: a
            .replication_user
            .unwrap_or_else(|| "replicator".to_owned()),
        admin_user: a.admin_user.unwrap_or_else(|| "pgwarden_admin".to_owned()),
        max_crash_restarts: a.max_crash_restarts.unwrap_or(3),
        pg_check_timeout,
        pg_check_misses: a.pg_check_misses.unwrap_or(2).max(1),
        loop_wait,
        ttl,
        maximum_lag_on_failover: a.maximum_lag_on_failover.unwrap_or(1 << 20),
        synchronous_mode,
        synchronous_mode_strict: a.synchronous_mode_strict.unwrap_or(false),
        synchronous_node_count,
        failsafe_mode: a.failsafe_mode.unwrap_or(false),
        nofailover: a.nofailover.unwrap_or(false),
        priority: a.priority.unwrap_or(0),
        pg_hba: a.pg_hba.unwrap_or_else(|| {
            vec![
                "local all all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "local replication all trust".into(),
                "host replication all 127.0.0.1/32 trust".into(),
            ]
        }),
        parameters,
    })
}

/// `synchronous_mode`: off, on (one synchronous standby) or quorum
/// (`ANY k`, Patroni 4's quorum commit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Quorum,
}

impl SyncMode {
    fn from_toml(v: &toml::Value) -> Option<SyncMode> {
        match v {
            toml::Value::Boolean(false) => Some(SyncMode::Off),
            toml::Value::Boolean(true) => Some(SyncMode::On),
            toml::Value::String(s) => match s.as_str() {
                "off" => Some(SyncMode::Off),
                "on" => Some(SyncMode::On),
                "quorum" => Some(SyncMode::Quorum),
                _ => None,
            },
            _ => None,
        }
    }
}
