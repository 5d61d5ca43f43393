//! The client's own session parameters, as its transactions changed them.
use std::sync::atomic::{AtomicU64, Ordering};

use crate::params::{ParamChange, ParamSet};

/// The client's own session parameters.
#[derive(Debug, Default)]
pub struct ClientParams {
    /// Boxed, and only when not empty: most clients set nothing, and every
    /// idle client keeps its ClientParams.
    sets: Option<Box<ParamSets>>,
    /// Names this version of `set`, unique in the process (0: none): a
    /// server connection last synced with the same stamp needs no SETs.
    pub stamp: u64,
}

#[derive(Debug, Default)]
struct ParamSets {
    /// What the client's session has now.
    current: ParamSet,
    /// What its startup packet set: RESET goes back to these.
    startup: ParamSet,
}

static NO_PARAMS: ParamSet = ParamSet::EMPTY;

impl ClientParams {
    /// A client whose startup packet set `startup`.
    pub fn new(startup: ParamSet) -> Self {
        ClientParams {
            sets: (startup != ParamSet::EMPTY).then(|| {
                Box::new(ParamSets {
                    current: startup.clone(),
                    startup,
                })
            }),
            stamp: next_stamp(),
        }
    }

    pub fn set(&self) -> &ParamSet {
        self.sets.as_deref().map_or(&NO_PARAMS, |s| &s.current)
    }

    /// What the startup packet set.
    pub fn startup(&self) -> &ParamSet {
        self.sets.as_deref().map_or(&NO_PARAMS, |s| &s.startup)
    }

    pub(super) fn apply(&mut self, change: &ParamChange) {
        let sets = self.sets.get_or_insert_with(Default::default);
        sets.current.apply_with(change, &sets.startup);
    }
}

pub(super) fn next_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
