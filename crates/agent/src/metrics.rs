//! The Prometheus exposition of one agent (`GET /metrics`), pure: its
//! member as the cluster shows it, the lease, maintenance mode, counts of
//! the History key's events, its loop's durations and its disk. Every
//! series carries `cluster`, and every per-member one `member`, so that a
//! dashboard needs no relabelling to tell clusters and nodes apart.
use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::Duration;

use ha::history::{Entry, Kind};
use ha::status::{ClusterStatus, MemberRole};

use crate::nodeinfo::NodeInfo;
use crate::telemetry::{LoopHistogram, BUCKETS};

/// Counts of the History key's entries, kept monotonic: entries that
/// fall off the key (it keeps the last 200) are not uncounted, entries
/// written since the last look are added. Starts from the key as first read.
#[derive(Debug, Default)]
pub struct HistoryCounts {
    seen: Option<BTreeSet<String>>,
    pub failovers: u64,
    pub manual_failovers: u64,
    pub switchovers: u64,
    pub restarts: u64,
    pub reinits: u64,
}

impl HistoryCounts {
    pub fn observe(&mut self, entries: &[Entry]) {
        let keys: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default())
            .collect();
        for (e, k) in entries.iter().zip(&keys) {
            if self.seen.as_ref().is_some_and(|s| s.contains(k)) {
                continue;
            }
            match e.kind {
                Kind::Failover => self.failovers += 1,
                Kind::ManualFailover => self.manual_failovers += 1,
                Kind::Switchover => self.switchovers += 1,
                Kind::Restart => self.restarts += 1,
                Kind::Reinit => self.reinits += 1,
            }
        }
        self.seen = Some(keys.into_iter().collect());
    }
}

/// What one exposition shows.
pub struct Input<'a> {
    /// The cluster's name (`cluster` in `[agent]`), a label of every series.
    pub cluster_name: &'a str,
    pub name: &'a str,
    pub cluster: &'a ClusterStatus,
    pub history: &'a HistoryCounts,
    pub loop_h: &'a LoopHistogram,
    pub node: &'a NodeInfo,
    /// This node's own lease, if it holds it.
    pub lease_remaining: Option<Duration>,
}

const ROLES: [(MemberRole, &str); 6] = [
    (MemberRole::Leader, "leader"),
    (MemberRole::SyncStandby, "sync_standby"),
    (MemberRole::Replica, "replica"),
    (MemberRole::Primary, "primary"),
    (MemberRole::Stopped, "stopped"),
    (MemberRole::Uninitialized, "uninitialized"),
];

/// A label value as the text format wants it.
pub fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }
    fn gauge(&mut self, name: &str, help: &str, labels: &str, v: impl std::fmt::Display) {
        self.head(name, "gauge", help);
        self.sample(name, labels, v);
    }
}

fn b(x: bool) -> u8 {
    u8::from(x)
}

pub fn render(i: &Input) -> String {
    let mut o = Out(String::with_capacity(4096));
    let c = format!("cluster=\"{}\"", escape(i.cluster_name));
    let m = format!("{c},member=\"{}\"", escape(i.name));
    let me = i.cluster.members.iter().find(|x| x.name == i.name);

    o.head(
        "pgwarden_member_role",
        "gauge",
        "1 for this member's role in the cluster, 0 for the others.",
    );
    for (r, label) in ROLES {
        let on = me.is_some_and(|x| x.role == r);
        o.sample(
            "pgwarden_member_role",
            &format!("{m},role=\"{label}\""),
            b(on),
        );
    }
    let leader = i.cluster.leader.as_deref();
    o.gauge(
        "pgwarden_is_leader",
        "1 while this member holds the leader lease.",
        &m,
        b(leader == Some(i.name)),
    );
    if let Some(x) = me {
        o.gauge(
            "pgwarden_running",
            "1 while PostgreSQL runs.",
            &m,
            b(
                x.state != ha::status::State::Stopped
                    && x.state != ha::status::State::Uninitialized,
            ),
        );
        o.gauge(
            "pgwarden_streaming",
            "1 while this standby streams from the leader.",
            &m,
            b(x.state == ha::status::State::Streaming),
        );
        o.gauge(
            "pgwarden_timeline",
            "PostgreSQL's timeline.",
            &m,
            x.timeline,
        );
        o.gauge(
            "pgwarden_wal_position_bytes",
            "Primary: current WAL position; standby: last received (bytes since 0/0).",
            &m,
            x.lsn,
        );
        let lag = if leader == Some(i.name) {
            Some(0)
        } else {
            x.lag
        };
        if let Some(l) = lag {
            o.gauge(
                "pgwarden_replication_lag_bytes",
                "Bytes this member is behind the leader's last published position.",
                &m,
                l,
            );
        }
        o.gauge(
            "pgwarden_pending_restart",
            "1 when a changed setting needs a restart.",
            &m,
            b(x.pending_restart),
        );
    }
    if let Some(s) = i.node.replay_delay_s {
        o.gauge(
            "pgwarden_replication_lag_seconds",
            "Standby: seconds its replay is behind (0 when it replayed all it received).",
            &m,
            s,
        );
    } else if leader == Some(i.name) {
        o.gauge(
            "pgwarden_replication_lag_seconds",
            "Standby: seconds its replay is behind (0 when it replayed all it received).",
            &m,
            0,
        );
    }
    o.head(
        "pgwarden_lease_holder",
        "gauge",
        "1, labelled with the member holding the leader lease (absent without one).",
    );
    if let Some(l) = leader {
        o.sample(
            "pgwarden_lease_holder",
            &format!("{c},holder=\"{}\"", escape(l)),
            1,
        );
    }
    if let Some(e) = i.cluster.epoch {
        o.gauge(
            "pgwarden_lease_epoch",
            "The lease epoch (it changes with every new leader).",
            &c,
            e,
        );
    }
    if let Some(r) = i.lease_remaining.filter(|_| leader == Some(i.name)) {
        o.gauge(
            "pgwarden_lease_remaining_seconds",
            "Holder only: seconds until its lease expires unless renewed (counted from the renewal's send).",
            &m,
            r.as_secs_f64(),
        );
    }
    o.gauge(
        "pgwarden_paused",
        "1 in maintenance mode (no automatic failover).",
        &c,
        b(i.cluster.paused),
    );
    o.gauge(
        "pgwarden_members",
        "Members with a live key in the DCS.",
        &c,
        i.cluster.members.len(),
    );
    let h = i.history;
    o.head(
        "pgwarden_failovers_total",
        "counter",
        "Failovers in the cluster's history since this agent started reading it.",
    );
    o.sample(
        "pgwarden_failovers_total",
        &format!("{c},kind=\"automatic\""),
        h.failovers,
    );
    o.sample(
        "pgwarden_failovers_total",
        &format!("{c},kind=\"manual\""),
        h.manual_failovers,
    );
    for (name, help, v) in [
        ("pgwarden_switchovers_total", "Switchovers in the cluster's history since this agent started reading it.", h.switchovers),
        ("pgwarden_restarts_total", "Restarts asked through the API, in the cluster's history since this agent started reading it.", h.restarts),
        ("pgwarden_reinits_total", "Reinitializations in the cluster's history since this agent started reading it.", h.reinits),
    ] {
        o.head(name, "counter", help);
        o.sample(name, &c, v);
    }
    let lh = i.loop_h;
    o.head(
        "pgwarden_loop_duration_seconds",
        "histogram",
        "Duration of the HA loop's passes (operation, decision, action, publication).",
    );
    for (k, c) in lh.cumulative.iter().enumerate() {
        let le = BUCKETS.get(k).map_or("+Inf".to_owned(), |x| x.to_string());
        o.sample(
            "pgwarden_loop_duration_seconds_bucket",
            &format!("{m},le=\"{le}\""),
            c,
        );
    }
    o.sample("pgwarden_loop_duration_seconds_sum", &m, lh.sum_s);
    o.sample("pgwarden_loop_duration_seconds_count", &m, lh.count);
    if let Some(d) = &i.node.disk {
        o.gauge(
            "pgwarden_data_directory_bytes",
            "Bytes on disk of the data directory (without a pg_wal linked elsewhere).",
            &m,
            d.data_dir_bytes,
        );
        o.gauge(
            "pgwarden_wal_directory_bytes",
            "Bytes on disk of pg_wal.",
            &m,
            d.wal_bytes,
        );
        o.gauge(
            "pgwarden_filesystem_free_bytes",
            "Bytes free to unprivileged users on the data directory's file system.",
            &m,
            d.fs_free_bytes,
        );
        o.gauge(
            "pgwarden_filesystem_size_bytes",
            "Size of the data directory's file system.",
            &m,
            d.fs_size_bytes,
        );
    }
    o.0
}

#[cfg(test)]
mod tests;
