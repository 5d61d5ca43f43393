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
pub async fn run(nodes: Vec<(String, Target)>, probe: Arc<Probe>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !probe.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let at = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (name, to) in nodes.iter().cloned() {
            set.spawn(async move { (name, is_primary(&to, ANSWER_WITHIN).await) });
        }
        let mut primaries = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((name, Ok(true))) = r {
                primaries.push(name);
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
