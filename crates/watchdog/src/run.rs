//! The watchdog task in the proxy process: registers the proxy in the DCS
//! every second and, with a virtual IP configured, competes for its lease
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
/// After its guard failed to bring the address up, a proxy leaves the
/// lease to the others this long.
const BACK_OFF: Duration = Duration::from_secs(10);

/// The guard process and what it last said.
struct Guard {
    child: Child,
    stdin: ChildStdin,
    /// The last `released <n>` the guard answered.
    released: watch::Receiver<u64>,
    /// How many errors it reported (bringing the address up or down).
    errors: watch::Receiver<u64>,
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
        let (released_tx, released) = watch::channel(0);
        let (errors_tx, errors) = watch::channel(0);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match Event::parse(&l) {
                    Some(Event::Released(n)) => {
                        let _ = released_tx.send(n);
                    }
                    Some(Event::Error(e)) => {
                        tracing::error!(error = %e, "vip guard");
                        errors_tx.send_modify(|n| *n += 1);
                    }
                    _ => {}
                }
            }
        });
        Ok(Guard {
            child,
            stdin,
            released,
            errors,
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
    /// it says it did (every command before it is handled by then). Only
    /// then may the lease go to another proxy.
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

/// A number drawn once per process, from the clock and the process id:
/// enough to tell two processes with the same name apart.
fn instance() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!("{:x}", t ^ (u64::from(std::process::id()) << 40))
}

/// The virtual IP side of the watchdog: the guard, and whether we hold
/// the lease.
struct VipHolder<'a> {
    vip: &'a config::Vip,
    me: &'a str,
    holder_id: String,
    guard: Option<Guard>,
    holding: bool,
    /// When the last successful take or renewal was sent (monotonic ms).
    last_sent: u64,
    /// Guard errors seen so far, and no competing until this instant.
    errors_seen: u64,
    back_off_until: u64,
}

impl VipHolder<'_> {
    fn call(&self) -> Duration {
        self.vip.ttl / 2
    }

    /// A guard that is running; a dead one is replaced, and the lease is
    /// given up only once the new guard says the address is down.
    async fn ensure_guard(&mut self, dcs: &impl Dcs, cmd: &[OsString]) {
        if self.guard.as_mut().is_some_and(Guard::alive) {
            return;
        }
        if self.guard.is_some() {
            tracing::error!("watchdog: the guard process ended; starting another");
        }
        self.guard = match Guard::spawn(cmd, self.vip) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, "watchdog");
                None
            }
        };
        if self.holding {
            self.holding = false;
            // the new guard clears a left address before anything else
            let down = match self.guard.as_mut() {
                Some(g) => g.release().await,
                None => false,
            };
            if down {
                let _ = within(self.call(), dcs.release_lease(VIP_LEASE, &self.holder_id)).await;
            }
            // else the lease expires on its own
        }
    }

    /// Renews the lease if it is time; false when it is lost.
    async fn renew(&mut self, dcs: &impl Dcs) {
        let every = decide::renew_every(self.vip.ttl).as_millis() as u64;
        if !self.holding || monotonic_ms().saturating_sub(self.last_sent) < every {
            return;
        }
        let sent = monotonic_ms();
        let r = within(
            self.call(),
            dcs.renew_lease(VIP_LEASE, &self.holder_id, self.vip.ttl),
        )
        .await;
        match r {
            Ok(true) => self.hold(sent).await,
            Ok(false) => {
                tracing::warn!("watchdog: lost the virtual IP lease");
                self.let_go(dcs, false).await;
            }
            // the guard's deadline takes the address down if this lasts
            Err(e) => tracing::warn!(error = %e, "watchdog: cannot renew the virtual IP lease"),
        }
    }

    async fn take(&mut self, dcs: &impl Dcs) {
        if monotonic_ms() < self.back_off_until || self.guard.is_none() {
            return;
        }
        let sent = monotonic_ms();
        let r = within(
            self.call(),
            dcs.take_lease(VIP_LEASE, &self.holder_id, self.vip.ttl),
        )
        .await;
        match r {
            Ok(Some(_)) => {
                tracing::info!(vip = %self.vip.address, "watchdog: took the virtual IP lease");
                self.holding = true;
                self.hold(sent).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "watchdog: cannot take the virtual IP lease"),
        }
    }

    /// Tells the guard the lease is ours until shortly before it could
    /// expire.
    async fn hold(&mut self, sent: u64) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        if g.send(Command::Hold(decide::hold_until(sent, self.vip.ttl)))
            .await
        {
            self.last_sent = sent;
        }
    }

    /// Takes the address down, then (if `release`, and once it is down)
    /// gives the lease up.
    async fn let_go(&mut self, dcs: &impl Dcs, release: bool) {
        let down = match self.guard.as_mut() {
            Some(g) => g.release().await,
            None => false,
        };
        if down && release {
            let _ = within(self.call(), dcs.release_lease(VIP_LEASE, &self.holder_id)).await;
        }
        self.holding = false;
    }

    /// A guard that failed to bring the address up (or down): the lease
    /// goes to another proxy, and this one stays out for a while.
    async fn on_guard_errors(&mut self, dcs: &impl Dcs) {
        let errors = self.guard.as_ref().map(|g| *g.errors.borrow()).unwrap_or(0);
        if errors == self.errors_seen {
            return;
        }
        self.errors_seen = errors;
        self.back_off_until = monotonic_ms() + BACK_OFF.as_millis() as u64;
        if self.holding {
            tracing::warn!("watchdog: the guard failed: giving the virtual IP up");
            self.let_go(dcs, true).await;
        }
    }

    /// One round: what to do given the DCS's view; the state to publish.
    async fn round(
        &mut self,
        dcs: &impl Dcs,
        view: &Proxies,
        holder: Option<&str>,
        data_ok: bool,
        duplicate: bool,
    ) -> ProxyState {
        if self.holding && holder != Some(self.holder_id.as_str()) {
            tracing::warn!(holder = ?holder, "watchdog: the virtual IP lease is not ours any more");
            self.let_go(dcs, false).await;
        }
        let others_ok = decide::others_ok(&view.proxies, self.me);
        let seen = Seen {
            me: &self.holder_id,
            holder,
            data_ok,
            others_ok,
        };
        match decide::step(seen) {
            _ if duplicate => {
                if self.holding {
                    self.let_go(dcs, true).await;
                }
            }
            Step::Take => self.take(dcs).await,
            Step::Release => {
                tracing::warn!("watchdog: this proxy cannot reach the primary while another can: giving the virtual IP up");
                self.let_go(dcs, true).await;
            }
            Step::Renew | Step::Wait => {}
        }
        if self.holding {
            ProxyState::Holder
        } else if !data_ok && others_ok {
            ProxyState::DataPathDown
        } else {
            ProxyState::Standby
        }
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
    let holder_id = format!("{}.{}", s.name, instance());
    let call = s
        .vip
        .as_ref()
        .map(|v| v.ttl / 2)
        .unwrap_or(Duration::from_secs(2));
    let mut vip = s.vip.as_ref().map(|v| VipHolder {
        vip: v,
        me: &s.name,
        holder_id: holder_id.clone(),
        guard: None,
        holding: false,
        last_sent: 0,
        errors_seen: 0,
        back_off_until: 0,
    });
    let mut last_publish: Option<(u64, ProxyState)> = None;
    let mut warned_duplicate = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if let Some(v) = vip.as_mut() {
            v.ensure_guard(&dcs, &s.guard_command).await;
            v.on_guard_errors(&dcs).await;
            // renewal first, whatever the snapshot below does
            v.renew(&dcs).await;
        }
        let snap = match within(call, dcs.snapshot()).await {
            Ok(snap) => snap,
            Err(e) => {
                tracing::warn!(error = %e, "watchdog: cannot read the DCS");
                continue;
            }
        };
        let mut rec = source.record();
        rec.holder_id = holder_id.clone();
        let holder = snap.leases.get(VIP_LEASE).map(|l| l.name.clone());
        let view = Proxies::of(&snap.proxies, holder.as_deref());
        // another process registered under our name
        let duplicate = view
            .proxies
            .iter()
            .any(|p| p.name == s.name && !p.holder_id.is_empty() && p.holder_id != holder_id);
        if duplicate && !warned_duplicate {
            tracing::error!(name = %s.name, "watchdog: another proxy runs under this name: give each proxy its own [proxy] name; this one does not compete for the virtual IP meanwhile");
        }
        warned_duplicate = duplicate;
        rec.state = match vip.as_mut() {
            Some(v) => {
                v.round(
                    &dcs,
                    &view,
                    holder.as_deref(),
                    rec.primary_reachable,
                    duplicate,
                )
                .await
            }
            None => ProxyState::Serving,
        };
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
    if let Some(mut v) = vip {
        if v.holding {
            v.let_go(&dcs, true).await;
            tracing::info!("watchdog: gave the virtual IP up");
        }
        if let Some(g) = v.guard.take() {
            drop(g.stdin);
            let mut child = g.child;
            let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
        }
    }
    let _ = within(call, dcs.delete_proxy(&s.name)).await;
}
