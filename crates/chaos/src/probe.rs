//! The two-primaries probe: every 50 ms, a fresh direct connection to
//! every node asks `pg_is_in_recovery()`; a round in which two or more
//! nodes answer false is one moment with two writable primaries.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::{is_primary, Target};

const EVERY: Duration = Duration::from_millis(50);
/// A node that does not answer within this is counted as not answering.
const ANSWER_WITHIN: Duration = Duration::from_millis(300);

#[derive(Clone, Debug)]
pub struct Moment {
    pub at: Instant,
    /// The nodes that answered "not in recovery".
    pub primaries: Vec<String>,
}

#[derive(Default)]
pub struct Probe {
    pub rounds: Mutex<u64>,
    pub moments: Mutex<Vec<Moment>>,
    /// Answers from another cluster's server on a node's port.
    pub foreign: Mutex<u64>,
    pub stop: AtomicBool,
}

impl Probe {
    pub fn moments(&self) -> Vec<Moment> {
        self.moments.lock().map(|m| m.clone()).unwrap_or_default()
    }
    pub fn rounds(&self) -> u64 {
        self.rounds.lock().map(|r| *r).unwrap_or(0)
    }
}

/// Probes `nodes` (name, where to connect) until told to stop.
/// A server that answers on a node's port but is not that node (another
/// cluster's, see [`is_primary`]) is counted in `foreign`, not as a
/// primary.
pub async fn run(nodes: Vec<(String, Target, std::path::PathBuf)>, probe: Arc<Probe>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !probe.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let at = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (name, to, dir) in nodes.iter().cloned() {
            set.spawn(async move { (name, is_primary(&to, ANSWER_WITHIN, &dir).await) });
        }
        let mut primaries = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((name, Ok(true))) => primaries.push(name),
                Ok((_, Err(e))) if e.starts_with("another cluster") => {
                    if let Ok(mut f) = probe.foreign.lock() {
                        *f += 1;
                    }
                }
                _ => {}
            }
        }
        if let Ok(mut r) = probe.rounds.lock() {
            *r += 1;
        }
        if primaries.len() > 1 {
            primaries.sort();
            if let Ok(mut m) = probe.moments.lock() {
                m.push(Moment { at, primaries });
            }
        }
    }
}
