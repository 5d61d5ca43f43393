//! The command line and the two profiles (how many faults, how long each
//! fault is held, the run's hard deadline).
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::faults::Kind;

#[derive(Parser, Debug)]
#[command(
    name = "pgwarden-chaos",
    about = "Fault injection against a real `pgwarden up` cluster: workloads through the proxy, \
             faults from a seeded schedule, checks of lost writes, two primaries, the bank \
             invariant, time until writes are back and convergence"
)]
pub struct Opts {
    /// short: at least 20 faults within 8 minutes (CI); long: at least 200 faults (by hand, with --dcs etcd).
    #[arg(long, value_enum, default_value = "short")]
    pub profile: Profile,
    /// Seed of the fault schedule [default: from the clock; printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// DCS: the embedded local store, or an etcd this suite starts.
    #[arg(long, value_enum, default_value = "local")]
    pub dcs: DcsKind,
    /// Synchronous mode: then any acknowledged write lost fails the run.
    #[arg(long)]
    pub sync: bool,
    /// Number of PostgreSQL nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=9))]
    pub nodes: u8,
    /// The pgwarden binary [default: next to this one].
    #[arg(long)]
    pub pgwarden: Option<PathBuf>,
    /// Number of faults [default: the profile's].
    #[arg(long)]
    pub faults: Option<usize>,
    /// Only these fault kinds, comma-separated [default: all that apply].
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    pub kinds: Vec<Kind>,
    /// Keep the cluster's directory (logs, data) after the run.
    #[arg(long)]
    pub keep: bool,
    /// How nodes are networked: loopback (`pgwarden up`), or netns (each
    /// node's agent and PostgreSQL in a network namespace of its own, on a
    /// dcs and a data bridge; needed by the partition kinds, with --dcs
    /// etcd). auto: netns when partitions are to be injected.
    #[arg(long, value_enum, default_value = "auto")]
    pub net: NetMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetMode {
    Auto,
    Loopback,
    Netns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    Short,
    Long,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DcsKind {
    Local,
    Etcd,
}

/// What a profile promises and how it holds its faults.
#[derive(Clone, Debug)]
pub struct Plan {
    pub faults: usize,
    /// The run's hard deadline, cluster start and stop included.
    pub deadline: Duration,
    /// How long a SIGSTOP (pg-hang, agent-freeze) or a DCS outage lasts.
    pub hang: Duration,
    pub freeze: Duration,
    pub dcs_outage: Duration,
    /// How long a network partition lasts.
    pub partition: Duration,
    /// How long the WAL tmpfs stays full.
    pub wal_full: Duration,
    /// After each fault is healed, the cluster must be converged within this.
    pub converge_within: Duration,
}

impl Opts {
    pub fn plan(&self) -> Plan {
        let p = match self.profile {
            Profile::Short => Plan {
                faults: 20,
                deadline: Duration::from_secs(8 * 60),
                hang: Duration::from_secs(8),
                freeze: Duration::from_secs(8),
                dcs_outage: Duration::from_secs(8),
                partition: Duration::from_secs(10),
                wal_full: Duration::from_secs(10),
                converge_within: Duration::from_secs(60),
            },
            Profile::Long => Plan {
                faults: 200,
                deadline: Duration::from_secs(4 * 3600),
                hang: Duration::from_secs(20),
                freeze: Duration::from_secs(15),
                dcs_outage: Duration::from_secs(10),
                partition: Duration::from_secs(20),
                wal_full: Duration::from_secs(20),
                converge_within: Duration::from_secs(60),
            },
        };
        Plan {
            faults: self.faults.unwrap_or(p.faults),
            ..p
        }
    }
}

/// The kinds a run injects, and whether its nodes run in namespaces.
#[derive(Clone, Debug)]
pub struct Selection {
    pub kinds: Vec<Kind>,
    pub netns: bool,
    /// Kinds left out, and why (said in the report).
    pub left_out: Vec<String>,
}

impl Opts {
    /// The kinds to inject: those asked with --kinds (each must apply, or
    /// the run stops with the reason), else every kind of the profile that
    /// applies to this DCS and network.
    pub fn select(&self) -> anyhow::Result<Selection> {
        let etcd = self.dcs == DcsKind::Etcd;
        anyhow::ensure!(
            etcd || self.net != NetMode::Netns,
            "--net netns needs --dcs etcd (the nodes' namespaces are cut from etcd by partitions)"
        );
        let root = is_root();
        if !self.kinds.is_empty() {
            let netns = match self.net {
                NetMode::Netns => true,
                NetMode::Loopback => false,
                NetMode::Auto => self.kinds.iter().any(|k| k.needs_netns()),
            };
            let mut kinds = self.kinds.clone();
            kinds.sort();
            kinds.dedup();
            for k in &kinds {
                if let Some(why) = k.unavailable(etcd, netns, root) {
                    anyhow::bail!("fault kind {} cannot run here: {why}", k.name());
                }
            }
            return Ok(Selection {
                kinds,
                netns,
                left_out: Vec::new(),
            });
        }
        let netns = match self.net {
            NetMode::Netns => true,
            NetMode::Loopback => false,
            NetMode::Auto => etcd && self.profile == Profile::Long,
        };
        let mut sel = Selection {
            kinds: Vec::new(),
            netns,
            left_out: Vec::new(),
        };
        for k in Kind::ALL {
            if self.profile == Profile::Short && !k.in_short_profile() {
                sel.left_out
                    .push(format!("{}: long profile (or --kinds) only", k.name()));
            } else if let Some(why) = k.unavailable(etcd, netns, root) {
                sel.left_out.push(format!("{}: {why}", k.name()));
            } else {
                sel.kinds.push(k);
            }
        }
        Ok(sel)
    }
}

/// Whether this process runs as root (mounts and namespaces need it).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault kind {s:?}; kinds: {}", names.join(", "))
        })
}
