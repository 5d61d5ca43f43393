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
        let watchdog = spawn_watchdog(&p)?;
        p.run().await;
        if let Some(w) = watchdog {
            // It gave the virtual IP up when the shutdown began; now the
            // proxy's key goes too.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
        }
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

/// This proxy as the watchdog sees it.
struct Source {
    state: std::sync::Arc<proxy::State>,
    name: String,
}

impl watchdog::run::Source for Source {
    fn record(&self) -> ha::proxy::ProxyRecord {
        self.state.record(&self.name)
    }
    fn publish(&self, view: ha::proxy::Proxies) {
        self.state.peers.set(&self.name, view);
    }
}

/// With a DCS: the watchdog registers this proxy there and, with
/// `[proxy.vip]`, competes for the virtual IP.
pub(crate) fn spawn_watchdog(
    p: &proxy::Proxy,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let cfg = p.state.config();
    let Some((url, cluster)) = cfg.proxy_dcs.clone() else {
        return Ok(None);
    };
    let name = cfg.proxy.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "proxy".to_owned());
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{host}-{}", p.local_addr().port())
    });
    let exe = std::env::current_exe().context("cannot find the pgwarden executable")?;
    let settings = watchdog::run::Settings {
        dcs_url: url,
        cluster,
        name: name.clone(),
        vip: cfg.proxy.vip.clone(),
        guard_command: vec![exe.into_os_string(), "vip-guard".into()],
    };
    let source = std::sync::Arc::new(Source {
        state: p.state.clone(),
        name,
    });
    Ok(Some(tokio::spawn(watchdog::run::run(
        settings,
        source,
        p.state.shutdown_signal(),
    ))))
}
