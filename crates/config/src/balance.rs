//! Read/write splitting settings (`[proxy]` keys `load_balance`,
//! `consistency`, `max_replica_lag`, `read_your_writes_*`,
//! `disable_load_balance_on_write`, `load_balance_strategy`,
//! `backend_weights`, `primary_serves_reads`, `read_affinity`,
//! `route_by_*`).
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// Send read-only transactions to streaming standbys (transaction
    /// pool mode).
    pub enabled: bool,
    pub consistency: Consistency,
    /// A standby further behind than this (bytes of WAL, as the health
    /// checks measure it) gets no reads.
    pub max_replica_lag: u64,
    /// How long a read after the client's own write waits for a standby to
    /// replay it before it goes to the primary.
    pub read_your_writes_timeout: Duration,
    /// Whose writes a read must see (read_your_writes).
    pub read_your_writes_scope: RywScope,
    /// What a client's write changes for its later reads.
    pub on_write: OnWrite,
    pub strategy: Strategy,
    /// Share of reads per backend (by name or `host:port`; default 1, 0:
    /// no reads).
    pub weights: BTreeMap<String, u32>,
    /// The primary takes reads too (with its weight).
    pub primary_serves_reads: bool,
    pub affinity: Affinity,
    pub routes: RouteDefaults,
}

impl Balance {
    /// The weight of the backend called `name` at `addr`.
    pub fn weight(&self, name: &str, addr: &str) -> u32 {
        self.weights
            .get(name)
            .or_else(|| self.weights.get(addr))
            .copied()
            .unwrap_or(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RywScope {
    /// The client connection's own writes.
    Connection,
    /// Those of every connection of the same user and database.
    User,
    /// Every write committed through this proxy before the read began.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// A client's reads see its own committed writes.
    ReadYourWrites,
    /// Reads go to any standby within max_replica_lag.
    Eventual,
    /// Every statement goes to the primary.
    Primary,
}

/// Pgpool-II's `disable_load_balance_on_write`, for a transaction pooler
/// that routes whole transactions: a transaction that writes runs on the
/// primary whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnWrite {
    /// Later transactions are balanced again (with read-your-writes).
    Transaction,
    /// After its first write, the session reads from the primary.
    Session,
    /// Later reads are balanced without waiting for the write to be
    /// replayed (read-your-writes off for this client's own writes).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn, each node as often as its weight.
    RoundRobin,
    /// The node with the fewest server connections in use per weight.
    LeastConnections,
    /// At random, in proportion to the weights.
    WeightedRandom,
}

/// Whether a client connection keeps reading from the node it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// The strategy chooses a node at a connection's first read; its later
    /// reads go there while it may serve them (as Pgpool-II's load balance
    /// node per session): while they stay there a connection's reads never
    /// go back in time, and each node serves fewer clients with fewer
    /// server connections.
    Connection,
    /// The strategy chooses anew for every read.
    Transaction,
}

/// Where a session's reads go unless it says otherwise
/// (`SET pgwarden.route`, or the startup option of that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTo {
    Primary,
    Standby,
    Any,
}

/// Per-database, per-user and per-application defaults (Pgpool-II's
/// redirect preference lists); the most specific wins: application, then
/// user, then database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDefaults {
    pub by_database: BTreeMap<String, RouteTo>,
    pub by_user: BTreeMap<String, RouteTo>,
    pub by_application: BTreeMap<String, RouteTo>,
}

impl RouteDefaults {
    pub fn for_session(&self, database: &str, user: &str, application: &str) -> Option<RouteTo> {
        self.by_application
            .get(application)
            .or_else(|| self.by_user.get(user))
            .or_else(|| self.by_database.get(database))
            .copied()
    }
}
