//! Client connections with deadlines: every connect and every statement
//! is bounded, and a dropped connection's task is aborted (a server that is
//! SIGSTOPped never answers the goodbye).
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Where a PostgreSQL server is: an IP address, or a directory holding
/// its Unix socket (a path starting with '/'), and its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// 127.0.0.1:`port`.
    pub fn local(port: u16) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.starts_with('/') {
            write!(f, "{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Connects to `to` as postgres (trust), within `timeout`; each
    /// statement later gets the same deadline.
    pub async fn connect(to: &Target, timeout: Duration) -> anyhow::Result<Conn> {
        let mut cfg = tokio_postgres::Config::new();
        // A host starting with '/' is a socket directory to tokio-postgres.
        cfg.host(&to.host)
            .port(to.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("pgwarden-chaos")
            .connect_timeout(timeout);
        let (client, connection) = tokio::time::timeout(timeout, cfg.connect(NoTls))
            .await
            .with_context(|| format!("connect to {to}: no answer within {timeout:?}"))?
            .with_context(|| format!("connect to {to}"))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            client,
            task,
            timeout,
        })
    }

    /// Runs `sql` (simple protocol; several statements run as one implicit
    /// transaction) and returns the rows' columns as text.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let msgs = tokio::time::timeout(self.timeout, self.client.simple_query(sql))
            .await
            .with_context(|| format!("no answer within {:?}", self.timeout))??;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row.
    pub async fn value(&self, sql: &str) -> anyhow::Result<String> {
        self.query(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .with_context(|| format!("{sql}: no value"))
    }
}

/// Asks a node directly whether it is a primary (`pg_is_in_recovery()` is
/// false); Err(why) when it does not answer within `timeout`.
///
/// The server must be this node's: its data directory is `data_dir`. A
/// server of another cluster on the same port (another run on this
/// machine took the port while this node was down) is an error, never a
/// second primary of this cluster.
pub async fn is_primary(
    to: &Target,
    timeout: Duration,
    data_dir: &std::path::Path,
) -> Result<bool, String> {
    // One line: the reason goes into one-line reports.
    let line = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let c = Conn::connect(to, timeout)
        .await
        .map_err(|e| line(format!("{:#}", e.root_cause())))?;
    let dir = c
        .value("SELECT current_setting('data_directory')")
        .await
        .map_err(|e| line(format!("{e:#}")))?;
    let same = std::path::Path::new(&dir) == data_dir
        || std::fs::canonicalize(&dir).ok() == std::fs::canonicalize(data_dir).ok();
    if !same {
        return Err(format!(
            "another cluster's server answers on {}:{} (data directory {dir})",
            to.host, to.port
        ));
    }
    match c
        .value("SELECT pg_is_in_recovery()")
        .await
        .map_err(|e| line(format!("{e:#}")))?
        .as_str()
    {
        "f" => Ok(true),
        "t" => Ok(false),
        other => Err(format!("pg_is_in_recovery() answered {other:?}")),
    }
}
