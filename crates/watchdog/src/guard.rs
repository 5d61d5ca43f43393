//! The guard: a small process of its own (`pgwarden vip-guard`, started by
//! the proxy) that owns the virtual IP on this host. The proxy tells it,
//! on its standard input, "hold until T" after each renewal of the lease
//! (T on the machine's boot-time clock, safely before the lease can
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

/// Runs `cmd` with `sh -c` in a process group of its own, without the
/// guard's input (the proxy's commands), killed with its group at the
/// deadline.
async fn sh(cmd: &str, spec: &GuardSpec) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("PGWARDEN_VIP", format!("{}/{}", spec.address, spec.prefix))
        .env("PGWARDEN_VIP_INTERFACE", &spec.interface)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pgid = child.id();
    match tokio::time::timeout(COMMAND_DEADLINE, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("{cmd:?} failed: {s}")),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => {
            if let Some(g) = pgid {
                crate::sys::kill_group(g);
            }
            Err(format!("{cmd:?} did not finish in {COMMAND_DEADLINE:?}"))
        }
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

    /// While holding: puts the address back if something took it away
    /// (netlink only; commands are trusted).
    async fn check(&self, spec: &GuardSpec) {
        if let Mover::Netlink { nl, link } = self {
            if let Ok(false) = nl.has(link.index, spec.address).await {
                tracing::warn!(vip = %spec.address, "vip-guard: the address was removed by someone else: adding it again");
                if let Err(e) = self.up(spec).await {
                    tracing::error!(error = %e, "vip-guard");
                }
            }
        }
    }
}

/// How often a held address is checked, and the longest sleep between
/// looks at the clock (a machine that was suspended finds its deadline
/// passed within this).
const CHECK_EVERY: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

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
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        // a hangup (a reload sent to every pgwarden process) must not
        // end the guard with the address up
        signal(SignalKind::hangup()),
    ) else {
        return 1;
    };
    let mut g = Guard {
        mover,
        spec,
        up: false,
    };
    // An address left by an earlier guard that ended without taking it
    // down: cleared before anything else.
    g.up = true;
    if !g.take_down().await {
        return 1;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut until: Option<u64> = None;
    let mut checked = tokio::time::Instant::now();
    loop {
        let cmd = tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) => Command::parse(&l),
                // The proxy is gone.
                _ => {
                    g.take_down().await;
                    return 0;
                }
            },
            _ = tokio::time::sleep(TICK) => {
                if until.is_some_and(|u| crate::sys::monotonic_ms() >= u) {
                    tracing::warn!(vip = %g.spec.address, "vip-guard: the lease was not renewed in time: taking the address down");
                    // kept (and tried again next tick) until it is down
                    if g.take_down().await {
                        until = None;
                    }
                } else if g.up && checked.elapsed() >= CHECK_EVERY {
                    checked = tokio::time::Instant::now();
                    g.mover.check(&g.spec).await;
                }
                continue;
            }
            _ = hup.recv() => continue,
            _ = term.recv() => { g.take_down().await; return 0; }
            _ = int.recv() => { g.take_down().await; return 0; }
        };
        match cmd {
            Some(Command::Hold(t)) if t > crate::sys::monotonic_ms() => {
                until = Some(t);
                if !g.up {
                    g.up = true;
                    match g.mover.up(&g.spec).await {
                        Ok(()) => {
                            tracing::info!(vip = %g.spec.address, interface = %g.spec.interface, "vip-guard: address up");
                            say(Event::Up).await;
                        }
                        Err(e) => {
                            // not held after all: down again, and the
                            // proxy gives the lease up
                            until = None;
                            g.take_down().await;
                            say(Event::Error(format!("cannot bring the address up: {e}"))).await;
                        }
                    }
                }
            }
            // A deadline already past: the proxy was stalled; ignore it.
            Some(Command::Hold(_)) => {}
            Some(Command::Release(n)) => {
                until = None;
                if g.take_down().await {
                    say(Event::Released(n)).await;
                }
            }
            None => tracing::warn!("vip-guard: unknown command ignored"),
        }
    }
}

struct Guard {
    mover: Mover,
    spec: GuardSpec,
    /// The address may be up.
    up: bool,
}

impl Guard {
    /// Takes the address down; false (and an error said) when it could not
    /// be: then it still counts as up, and the proxy does not release the
    /// lease on its word.
    async fn take_down(&mut self) -> bool {
        if !self.up {
            return true;
        }
        for attempt in 0..5 {
            match self.mover.down(&self.spec).await {
                Ok(()) => {
                    self.up = false;
                    tracing::info!(vip = %self.spec.address, "vip-guard: address down");
                    say(Event::Down).await;
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "vip-guard: cannot take the address down");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        say(Event::Error("cannot take the address down".into())).await;
        false
    }
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
