//! The fault schedule: which kind comes next, reproducible from a seed.
//! Kinds are dealt in shuffled rounds, so every kind comes up about as
//! often as the others in any prefix of the schedule.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::faults::Kind;

#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kind: Kind,
    /// Chooses a target among several (which standby).
    pub pick: usize,
}

pub fn make(seed: u64, kinds: &[Kind], n: usize) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n && !kinds.is_empty() {
        let mut round = kinds.to_vec();
        round.shuffle(&mut rng);
        for kind in round.into_iter().take(n - out.len()) {
            out.push(Step {
                kind,
                pick: rng.gen_range(0..1000),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_every_kind_comes_up() {
        let kinds = [Kind::PostmasterKill, Kind::AgentKill, Kind::PgHang];
        let a = make(7, &kinds, 20);
        let b = make(7, &kinds, 20);
        assert_eq!(a.len(), 20);
        let names = |s: &[Step]| s.iter().map(|s| (s.kind, s.pick)).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_ne!(names(&a), names(&make(8, &kinds, 20)));
        for k in kinds {
            let n = a.iter().filter(|s| s.kind == k).count();
            assert!((6..=7).contains(&n), "{k:?} came up {n} times");
        }
    }
}
