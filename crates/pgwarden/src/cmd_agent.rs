//! `pgwarden agent`: the HA agent for one node, until SIGTERM/SIGINT.
use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ProxyArgs;

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let cfg = config::load(&args.config)?;
    let agent_cfg = cfg
        .agent
        .with_context(|| format!("{}: no [agent] section", args.config.display()))?;
    let rt = crate::runtime::build(1)?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("signal received: stopping");
            let _ = tx.send(true);
        });
        let agent = agent::Agent::new(agent_cfg).await?;
        agent.run(rx).await?;
        anyhow::Ok(())
    })
}
