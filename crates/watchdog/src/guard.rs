//! The guard: a small process of its own (`pgwarden vip-guard`, started by
//! the proxy) that owns the virtual IP on this host. The proxy tells it,
//! on its standard input, "hold until T" after each renewal of the lease
//! (T on the machine's monotonic clock, safely before the lease can
//! expire) or "release". The guard takes the address down when T passes
//! without a newer one, when told to, and when its input ends: a proxy
//! that is frozen (SIGSTOP, a stalled machine) or killed cannot keep the
//! address past its lease, because the process that holds it is not the
//! one that stopped.
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use crate::net::{Link, Netlink};
use crate::sys::monotonic_ms;

/// What the guard is to hold, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSpec {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Commands instead of netlink and ARP (both or neither).
    pub up_command: Option<String>,
    pub down_command: Option<String>,
}

/// The proxy's words to its guard, a line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Hold the address until this instant (monotonic ms).
    Hold(u64),
    /// Take it down now; answered by `released <n>` once it is down.
    Release(u64),
}

impl Command {
    pub fn line(self) -> String {
        match self {
            Command::Hold(t) => format!("hold {t}\n"),
            Command::Release(n) => format!("release {n}\n"),
        }
    }
    pub fn parse(l: &str) -> Option<Command> {
        match l.trim().split_once(' ') {
            Some(("hold", t)) => t.parse().ok().map(Command::Hold),
            Some(("release", n)) => n.parse().ok().map(Command::Release),
            _ => None,
        }
    }
}

/// The guard's answers: `up`, `down`, `released <n>`, `error <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Up,
    Down,
    /// The address is down after `release <n>`.
    Released(u64),
    Error(String),
}

impl Event {
    fn line(&self) -> String {
        match self {
            Event::Up => "up\n".to_owned(),
            Event::Down => "down\n".to_owned(),
            Event::Released(n) => format!("released {n}\n"),
            Event::Error(e) => format!("error {}\n", e.replace('\n', " ")),
        }
    }
    pub fn parse(l: &str) -> Option<Event> {
        let l = l.trim_end();
        match l {
            "up" => Some(Event::Up),
            "down" => Some(Event::Down),
            _ => match l.split_once(' ') {
                Some(("released", n)) => n.parse().ok().map(Event::Released),
                Some(("error", e)) => Some(Event::Error(e.to_owned())),
                _ => None,
            },
        }
    }
}

/// How the address is brought up and down.
enum Mover {
    Netlink { nl: Netlink, link: Link },
    Commands { up: String, down: String },
}

const COMMAND_DEADLINE: Duration = Duration::from_secs(5);

async fn sh(cmd: &str, spec: &GuardSpec) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("PGWARDEN_VIP", format!("{}/{}", spec.address, spec.prefix))
        .env("PGWARDEN_VIP_INTERFACE", &spec.interface)
        .kill_on_drop(true);
    match tokio::time::timeout(COMMAND_DEADLINE, c.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("{cmd:?} failed: {s}")),
        Ok(Err(e)) => Err(format!("cannot run {cmd:?}: {e}")),
        Err(_) => Err(format!("{cmd:?} did not finish in {COMMAND_DEADLINE:?}")),
    }
}

impl Mover {
    async fn open(spec: &GuardSpec) -> Result<Mover, String> {
        if let (Some(up), Some(down)) = (&spec.up_command, &spec.down_command) {
            return Ok(Mover::Commands {
                up: up.clone(),
                down: down.clone(),
            });
        }
        let nl = Netlink::open()?;
        let link = nl.link(&spec.interface).await?;
        Ok(Mover::Netlink { nl, link })
    }

    async fn up(&self, spec: &GuardSpec) -> Result<(), String> {
        match self {
            Mover::Commands { up, .. } => sh(up, spec).await,
            Mover::Netlink { nl, link } => {
                nl.add(link.index, spec.address, spec.prefix).await?;
                let (index, mac, ip) = (link.index, link.mac, spec.address);
                // Neighbours learn the new place at once (three times, as
                // one frame may be lost).
                tokio::task::spawn_blocking(move || crate::arp::announce(index, mac, ip, 3))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("gratuitous ARP for {ip}: {e}"))
            }
        }
    }

    async fn down(&self, spec: &GuardSpec) -> Result<(), String> {
        match self {
            Mover::Commands { down, .. } => sh(down, spec).await,
            Mover::Netlink { nl, link } => nl.remove(link.index, spec.address).await,
        }
    }
}

async fn say(e: Event) {
    let mut out = tokio::io::stdout();
    let _ = out.write_all(e.line().as_bytes()).await;
    let _ = out.flush().await;
}

/// Runs the guard until its input ends or it is told to stop by a signal;
/// the address is down when it returns. The exit code.
pub fn main(spec: GuardSpec) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vip-guard: cannot start: {e}");
            return 1;
        }
    };
    rt.block_on(run(spec))
}

async fn run(spec: GuardSpec) -> i32 {
    let mover = match Mover::open(&spec).await {
        Ok(m) => m,
        Err(e) => {
            say(Event::Error(e.clone())).await;
            tracing::error!(error = %e, "vip-guard: cannot manage the address");
            return 1;
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return 1;
    };
    // An address left by an earlier run that ended without taking it down.
    if let Err(e) = mover.down(&spec).await {
        tracing::warn!(error = %e, "vip-guard: cannot clear the address at start");
    }
    say(Event::Down).await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut until: Option<u64> = None;
    let mut up = false;
    loop {
        let left = until.map(|u| Duration::from_millis(u.saturating_sub(monotonic_ms())));
        let expired = async {
            match left {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let cmd = tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) => Command::parse(&l),
                // The proxy is gone.
                _ => {
                    take_down(&mover, &spec, &mut up).await;
                    return 0;
                }
            },
            _ = expired => {
                tracing::warn!(vip = %spec.address, "vip-guard: the lease was not renewed in time: taking the address down");
                until = None;
                take_down(&mover, &spec, &mut up).await;
                continue;
            }
            _ = term.recv() => { take_down(&mover, &spec, &mut up).await; return 0; }
            _ = int.recv() => { take_down(&mover, &spec, &mut up).await; return 0; }
        };
        match cmd {
            Some(Command::Hold(t)) if t > monotonic_ms() => {
                until = Some(t);
                if !up {
                    match mover.up(&spec).await {
                        Ok(()) => {
                            up = true;
                            tracing::info!(vip = %spec.address, interface = %spec.interface, "vip-guard: address up");
                            say(Event::Up).await;
                        }
                        Err(e) => {
                            // half up (added, not announced) counts as up: it comes down below
                            up = true;
                            say(Event::Error(e)).await;
                        }
                    }
                }
            }
            // A deadline already past: the proxy was stalled; ignore it.
            Some(Command::Hold(_)) => {}
            Some(Command::Release(n)) => {
                until = None;
                take_down(&mover, &spec, &mut up).await;
                say(Event::Released(n)).await;
            }
            None => tracing::warn!("vip-guard: unknown command ignored"),
        }
    }
}

async fn take_down(mover: &Mover, spec: &GuardSpec, up: &mut bool) {
    if !*up {
        say(Event::Down).await;
        return;
    }
    // Retried: an address left up is the one thing the guard must not do.
    for attempt in 0..5 {
        match mover.down(spec).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, attempt, "vip-guard: cannot take the address down");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    *up = false;
    tracing::info!(vip = %spec.address, "vip-guard: address down");
    say(Event::Down).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_round_trip() {
        for c in [Command::Hold(123_456), Command::Release(7)] {
            assert_eq!(Command::parse(&c.line()), Some(c));
        }
        assert_eq!(Command::parse("hold x"), None);
        assert_eq!(Command::parse("drop everything"), None);
        for e in [
            Event::Up,
            Event::Down,
            Event::Error("no such device".into()),
        ] {
            assert_eq!(Event::parse(&e.line()), Some(e));
        }
        assert_eq!(Event::parse("bogus"), None);
    }
}
