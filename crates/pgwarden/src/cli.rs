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

#[derive(Args)]
pub struct UpArgs {
    /// Directory holding the cluster's data (created, or resumed when run again).
    #[arg(long, default_value = ".pgwarden")]
    pub dir: PathBuf,
    /// Port clients connect to (the proxy).
    #[arg(long, default_value_t = 6432)]
    pub port: u16,
    /// First PostgreSQL port (0: pick free ports).
    #[arg(long, default_value_t = 0)]
    pub pg_port: u16,
    /// Number of PostgreSQL nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// DCS: the embedded local store (default) or etcd://host:port.
    #[arg(long)]
    pub dcs: Option<String>,
    /// OS user PostgreSQL runs as when pgwarden runs as root.
    #[arg(long, default_value = "postgres")]
    pub os_user: String,
    /// Exit once the cluster is up and every node is running (for scripts
    /// and tests); default: run until Ctrl-C.
    #[arg(long)]
    pub until_ready: bool,
}
