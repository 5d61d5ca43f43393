//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL high availability in one binary"
)]
pub struct Cli {
    /// Log filter (as RUST_LOG), e.g. "info" or "proxy=debug".
    #[arg(long, global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the PostgreSQL proxy (pooling, routing to the primary, admin console).
    Proxy(ProxyArgs),
    /// Start a local cluster on this machine and a proxy in front of it.
    Up(UpArgs),
    /// Run the agent for one PostgreSQL node.
    Agent(ProxyArgs),
    /// The fence an agent starts beside a primary (not run by hand): stops
    /// PostgreSQL when the agent does not prove the lease in time.
    #[command(hide = true)]
    Fence {
        #[arg(long)]
        file: PathBuf,
    },
    /// The virtual IP's guard a proxy starts (not run by hand): holds the
    /// address on this host only while the proxy keeps renewing its lease.
    #[command(hide = true)]
    VipGuard {
        #[arg(long)]
        interface: String,
        /// address/prefix
        #[arg(long)]
        address: String,
        #[arg(long)]
        up_command: Option<String>,
        #[arg(long)]
        down_command: Option<String>,
    },
    /// Operate a running cluster through its agents' REST API (list,
    /// switchover, failover, restart, edit-config, pause, history...).
    Ctl(ctl::CtlArgs),
    /// Check a configuration file and report the first mistake with its line.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Args)]
pub struct ProxyArgs {
    /// Configuration file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Options of `up`. Those left out take their defaults on a fresh
/// directory and the recorded values on a resumed one; given again on a
/// resumed directory, each is applied (`--port`, more `--nodes`) or refused
/// with the reason.
#[derive(Args)]
pub struct UpArgs {
    /// Directory holding the cluster (created, or resumed when run again).
    #[arg(long, default_value = ".pgwarden")]
    pub dir: PathBuf,
    /// Port clients connect to (the proxy) [default: 6432].
    #[arg(long)]
    pub port: Option<u16>,
    /// First PostgreSQL port [default: free ports from 15432].
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// Number of PostgreSQL nodes [default: 3].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// DCS: the embedded local store [default] or etcd://host:port.
    #[arg(long)]
    pub dcs: Option<String>,
    /// OS user PostgreSQL runs as when pgwarden runs as root [default: postgres].
    #[arg(long)]
    pub os_user: Option<String>,
    /// Exit once the cluster is up and every node is running (for scripts
    /// and tests); default: run until Ctrl-C.
    #[arg(long)]
    pub until_ready: bool,
}
