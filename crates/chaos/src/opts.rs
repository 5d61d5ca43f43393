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
                converge_within: Duration::from_secs(60),
            },
            Profile::Long => Plan {
                faults: 200,
                deadline: Duration::from_secs(4 * 3600),
                hang: Duration::from_secs(20),
                freeze: Duration::from_secs(15),
                dcs_outage: Duration::from_secs(10),
                converge_within: Duration::from_secs(60),
            },
        };
        Plan {
            faults: self.faults.unwrap_or(p.faults),
            ..p
        }
    }
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
