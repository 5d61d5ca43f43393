//! `pgwarden ctl`: the operator's client of the agents' REST API. The
//! binary's `ctl` subcommand only parses its arguments ([`CtlArgs`]) and
//! calls [`run`]; exit codes are [`CtlError::exit_code`].
#![forbid(unsafe_code)]

pub mod client;
mod commands;
mod discover;
mod edit;
mod reinit;
pub mod table;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use client::{Client, CtlError, Reply};

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Agents' REST API, host:port[,host:port...] [env: PGWARDEN_API]; by
    /// default those of the `pgwarden up` directory.
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// A `pgwarden up` directory to find the agents and the token in
    /// [default: the current directory, or ./.pgwarden].
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// A file holding the API token [env: PGWARDEN_API_TOKEN holds the token itself].
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// For https:// agents: the CA that signed their certificates [env:
    /// PGWARDEN_API_CACERT; in a `pgwarden up` directory, the nodes' api_tls_ca].
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// For https:// agents: encrypt without verifying their certificates.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Print JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each agent's answer.
    #[arg(long, global = true, default_value_t = 100)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// The members: role, state, timeline, lag, pending restart, tags.
    List {
        /// Refresh every 2 seconds (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// Hand the leader role to another member, cleanly.
    Switchover {
        /// The current leader [default: whoever leads].
        #[arg(long)]
        from: Option<String>,
        /// The member to take over [default: the leader picks the best standby].
        #[arg(long)]
        to: Option<String>,
        /// When, as an RFC 3339 time (2025-03-01T02:00:00Z) [default: now].
        #[arg(long)]
        at: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Make a member the leader, whether or not the leader is healthy.
    Failover {
        #[arg(long)]
        to: String,
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a standby from the leader (pg_basebackup).
    Reinit {
        member: String,
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on a member, or on every member (standbys first).
    Restart {
        member: Option<String>,
        /// Only members whose settings need a restart.
        #[arg(long)]
        pending: bool,
        /// One member at a time, each streaming again before the next; the
        /// leader hands over (a switchover) and is restarted as a standby.
        #[arg(long)]
        rolling: bool,
        #[arg(long)]
        force: bool,
    },
    /// Make PostgreSQL re-read its configuration on a member or on all.
    Reload { member: Option<String> },
    /// The cluster's dynamic configuration.
    ShowConfig,
    /// Change the dynamic configuration: `--set key=value` (e.g.
    /// `ttl_ms=8000`, `parameters.work_mem=64MB`, `key=null` to reset), or
    /// in $EDITOR without --set. Shows the change and asks first.
    EditConfig {
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Maintenance mode on: no automatic failover.
    Pause,
    /// Maintenance mode off.
    Resume,
    /// Failovers, switchovers, restarts and reinitializations.
    History,
    /// The members as a tree under the leader.
    Topology,
}

/// What a command prints, and the error it ends with, if any.
pub struct Ctx {
    pub client: Client,
    /// Every agent to try, in order.
    pub apis: Vec<String>,
    pub json: bool,
}

pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let target = discover::find(
        args.api.as_deref(),
        args.dir.as_deref(),
        args.token_file.as_deref(),
    )?;
    let cacert = args
        .cacert
        .map(|p| p.display().to_string())
        .or_else(|| {
            std::env::var("PGWARDEN_API_CACERT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or(target.cacert.clone());
    let tls = match (cacert, args.insecure) {
        (Some(ca), false) => Some(tls::client_config_ca(&ca).map_err(CtlError::Usage)?),
        (_, true) => Some(tls::client_config()),
        (None, false) => None,
    };
    let client = Client::new(
        &target.apis[0],
        target.token.clone(),
        Duration::from_secs(args.timeout.max(1)),
    )
    .with_tls(tls);
    let ctx = Ctx {
        client,
        apis: target.apis,
        json: args.json,
    };
    commands::run(&ctx, args.command).await
}
