//! `pgwarden proxy`: runs the proxy until SIGTERM/SIGINT; SIGHUP reloads.
use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ProxyArgs;

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let cfg = config::load(&args.config)?;
    let rt = crate::runtime::build(cfg.proxy.workers).context("cannot start the runtime")?;
    rt.block_on(async move {
        let p = proxy::Proxy::bind(cfg, Some(args.config.clone()))
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(listen = %p.local_addr(), "proxy listening");
        spawn_signal_handlers(p.state.clone())?;
        p.run().await;
        Ok(())
    })
}

pub fn spawn_signal_handlers(state: std::sync::Arc<proxy::State>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); state.begin_shutdown(); }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); state.begin_shutdown(); }
                _ = hup.recv() => match state.reload() {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                },
            }
        }
    });
    Ok(())
}
