//! The watchdog task in the proxy process: registers the proxy in the DCS
//! every round and, with a virtual IP configured, competes for its lease
//! and tells the guard process when to hold the address and when to let
//! it go.
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use dcs::Dcs;
use ha::proxy::{Proxies, ProxyRecord, ProxyState, VIP_LEASE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::watch;

use crate::decide::{self, Seen, Step};
use crate::guard::{Command, Event};
use crate::sys::monotonic_ms;

/// What the watchdog needs of the proxy, and where it reports.
pub trait Source: Send + Sync + 'static {
    /// This proxy as it is now (the watchdog sets `state`).
    fn record(&self) -> ProxyRecord;
    /// The proxies as the DCS shows them, after each round.
    fn publish(&self, view: Proxies);
}

pub struct Settings {
    pub dcs_url: String,
    pub cluster: String,
    pub name: String,
    pub vip: Option<config::Vip>,
    /// The guard's program and first arguments (`pgwarden vip-guard`); the
    /// address options are added.
    pub guard_command: Vec<OsString>,
}

/// A round every 200 ms: a free lease is seen within that.
const ROUND: Duration = Duration::from_millis(200);
/// The proxy's own key is rewritten this often, and lives three times as
/// long.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The guard process and what it last said.
struct Guard {
    child: Child,
    stdin: ChildStdin,
    /// The last `released <n>` the guard answered.
    released: watch::Receiver<u64>,
    next_release: u64,
}

impl Guard {
    fn spawn(cmd: &[OsString], vip: &config::Vip) -> Result<Guard, String> {
        let (program, args) = cmd.split_first().ok_or("no guard program")?;
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .arg("--interface")
            .arg(&vip.interface)
            .arg("--address")
            .arg(format!("{}/{}", vip.address, vip.prefix));
        if let (Some(u), Some(d)) = (&vip.up_command, &vip.down_command) {
            c.arg("--up-command").arg(u).arg("--down-command").arg(d);
        }
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(false);
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot start the guard: {e}"))?;
        let stdin = child.stdin.take().ok_or("guard without stdin")?;
        let stdout = child.stdout.take().ok_or("guard without stdout")?;
        let (tx, released) = watch::channel(0);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match Event::parse(&l) {
                    Some(Event::Released(n)) => {
                        let _ = tx.send(n);
                    }
                    Some(Event::Error(e)) => tracing::error!(error = %e, "vip guard"),
                    _ => {}
                }
            }
        });
        Ok(Guard {
            child,
            stdin,
            released,
            next_release: 1,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn send(&mut self, c: Command) -> bool {
        let line = c.line();
        let w = self.stdin.write_all(line.as_bytes());
        matches!(
            tokio::time::timeout(Duration::from_secs(1), w).await,
            Ok(Ok(()))
        )
    }

    /// Tells the guard to take the address down and waits (bounded) until
    /// it says it did (every command before it is handled by then).
    async fn release(&mut self) -> bool {
        let n = self.next_release;
        self.next_release += 1;
        if !self.send(Command::Release(n)).await {
            return false;
        }
        let mut r = self.released.clone();
        let down = tokio::time::timeout(Duration::from_secs(3), r.wait_for(|m| *m >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        down
    }
}

async fn within<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, dcs::DcsError>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the DCS did not answer in {d:?}")),
    }
}

/// Runs until `shutdown` turns true; then takes the address down, gives
/// the lease up and removes the proxy's key, so another proxy takes over
/// at once.
pub async fn run(s: Settings, source: Arc<dyn Source>, mut shutdown: watch::Receiver<bool>) {
    let dcs = loop {
        match dcs::open(&s.dcs_url, &s.cluster).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(error = %e, "watchdog: cannot open the DCS; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let ttl = s
        .vip
        .as_ref()
        .map(|v| v.ttl)
        .unwrap_or(Duration::from_secs(5));
    let call = ttl / 2;
    let mut guard: Option<Guard> = None;
    let mut holding = false;
    let mut last_sent = 0u64;
    let mut last_publish: Option<(u64, ProxyState)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if let Some(vip) = &s.vip {
            if !guard.as_mut().is_some_and(Guard::alive) {
                if guard.is_some() {
                    tracing::error!("watchdog: the guard process ended; starting another");
                }
                if holding {
                    // Its address state is not known: the new guard clears it.
                    let _ = within(call, dcs.release_lease(VIP_LEASE, &s.name)).await;
                    holding = false;
                }
                guard = match Guard::spawn(&s.guard_command, vip) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        tracing::error!(error = %e, "watchdog");
                        None
                    }
                };
            }
        }
        let snap = match within(call, dcs.snapshot()).await {
            Ok(snap) => snap,
            Err(e) => {
                // The guard's deadline takes the address down if this lasts.
                tracing::warn!(error = %e, "watchdog: cannot read the DCS");
                continue;
            }
        };
        let mut rec = source.record();
        let holder = snap.leases.get(VIP_LEASE).map(|l| l.name.clone());
        let view = Proxies::of(&snap.proxies, holder.as_deref());
        if let (Some(_), Some(g)) = (&s.vip, guard.as_mut()) {
            if holding && holder.as_deref() != Some(s.name.as_str()) {
                tracing::warn!(holder = ?holder, "watchdog: the virtual IP lease is not ours any more");
                g.release().await;
                holding = false;
            }
            let others_ok = decide::others_ok(&view.proxies, &s.name);
            let seen = Seen {
                me: &s.name,
                holder: holder.as_deref(),
                data_ok: rec.primary_reachable,
                others_ok,
            };
            match decide::step(seen) {
                Step::Take | Step::Renew
                    if !holding
                        || monotonic_ms().saturating_sub(last_sent)
                            >= decide::renew_every(ttl).as_millis() as u64 =>
                {
                    let sent = monotonic_ms();
                    let r = if holding {
                        within(call, dcs.renew_lease(VIP_LEASE, &s.name, ttl)).await
                    } else {
                        within(call, dcs.take_lease(VIP_LEASE, &s.name, ttl))
                            .await
                            .map(|l| l.is_some())
                    };
                    match r {
                        Ok(true) => {
                            if !holding {
                                tracing::info!(vip = ?s.vip.as_ref().map(|v| v.address), "watchdog: took the virtual IP lease");
                            }
                            holding = g.send(Command::Hold(decide::hold_until(sent, ttl))).await;
                            last_sent = sent;
                        }
                        Ok(false) if holding => {
                            tracing::warn!("watchdog: lost the virtual IP lease");
                            g.release().await;
                            holding = false;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "watchdog: cannot renew the virtual IP lease")
                        }
                    }
                }
                Step::Release => {
                    tracing::warn!("watchdog: this proxy cannot reach the primary while another can: giving the virtual IP up");
                    if g.release().await {
                        let _ = within(call, dcs.release_lease(VIP_LEASE, &s.name)).await;
                    }
                    holding = false;
                }
                _ => {}
            }
            rec.state = if holding {
                ProxyState::Holder
            } else if !rec.primary_reachable && others_ok {
                ProxyState::DataPathDown
            } else {
                ProxyState::Standby
            };
        } else {
            rec.state = ProxyState::Serving;
        }
        rec.vip = s
            .vip
            .as_ref()
            .map(|v| format!("{}/{}", v.address, v.prefix));
        let now = monotonic_ms();
        let due = last_publish.is_none_or(|(t, st)| {
            st != rec.state || now.saturating_sub(t) >= PUBLISH_EVERY.as_millis() as u64
        });
        if due {
            match within(
                call,
                dcs.put_proxy(&s.name, &rec.to_json(), PUBLISH_EVERY * 3),
            )
            .await
            {
                Ok(()) => last_publish = Some((now, rec.state)),
                Err(e) => tracing::warn!(error = %e, "watchdog: cannot register the proxy"),
            }
        }
        source.publish(view);
    }
    // Shutting down: the address first, then the lease, so the next
    // holder never overlaps with us.
    if let Some(mut g) = guard {
        if holding {
            if g.release().await {
                let _ = within(call, dcs.release_lease(VIP_LEASE, &s.name)).await;
            }
            tracing::info!("watchdog: gave the virtual IP up");
        }
        drop(g.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(3), g.child.wait()).await;
    }
    let _ = within(call, dcs.delete_proxy(&s.name)).await;
}
