//! What a run found: each fault's result, the totals, the verdict, and
//! their rendering (one summary line, then a table per fault kind).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::faults::{Injected, Kind};
use crate::opts::{DcsKind, Opts, Profile};
use crate::probe::Moment;

pub struct FaultResult {
    /// Its number in the schedule, from 1.
    pub n: usize,
    pub kind: Kind,
    pub at: Instant,
    pub node: String,
    pub what: String,
    /// From injection to the first write sent after it and acknowledged.
    pub writes_back: Option<Duration>,
    /// The longest time without an acknowledged write from injection to
    /// the end of the fault (a failover that comes later, e.g. once a
    /// paused DCS resumes, shows here and not in `writes_back`).
    pub longest_gap: Duration,
    /// From healing to converged, or why not.
    pub converged: Result<Duration, String>,
    pub primary_after: Option<String>,
    pub lost: u64,
    pub two_primaries: u64,
    /// When not converged: the agents' last log lines.
    pub log_tail: Vec<String>,
}

impl FaultResult {
    pub fn new(n: usize, f: &Injected, node: &str) -> FaultResult {
        FaultResult {
            n,
            kind: f.kind,
            at: f.at,
            node: node.to_owned(),
            what: f.what.clone(),
            writes_back: None,
            longest_gap: Duration::ZERO,
            converged: Err("not checked".into()),
            primary_after: None,
            lost: 0,
            two_primaries: 0,
            log_tail: Vec::new(),
        }
    }

    /// The progress line printed when the fault is done.
    pub fn line(&self, n: usize, of: usize) -> String {
        let back = self.writes_back.map_or("not back".to_owned(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        });
        let conv = match &self.converged {
            Ok(d) => format!("converged {:.1} s after healing", d.as_secs_f64()),
            Err(why) => format!("NOT CONVERGED ({why})"),
        };
        format!(
            "fault {n}/{of} {}: {} | writes back {back}, longest gap {:.1} s | {conv} | primary {}",
            self.kind.name(),
            self.what,
            self.longest_gap.as_secs_f64(),
            self.primary_after.as_deref().unwrap_or("?")
        )
    }
}

pub struct Outcome {
    pub profile: Profile,
    pub dcs: DcsKind,
    pub sync: bool,
    pub seed: u64,
    pub planned: usize,
    pub faults: Vec<FaultResult>,
    pub acknowledged: u64,
    pub transfers: u64,
    pub log_errors: u64,
    pub bank_errors: u64,
    pub lost_before_faults: u64,
    /// Acknowledged ids missing from the final primary's log.
    pub lost_final: Option<u64>,
    pub probe_rounds: u64,
    pub moments: Vec<Moment>,
    pub bank_checks: u64,
    pub bank_violations: Vec<String>,
    pub notes: Vec<String>,
    /// Fault kinds not in this run's schedule, and why.
    pub left_out: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn new(o: &Opts, planned: usize, seed: u64) -> Outcome {
        Outcome {
            profile: o.profile,
            dcs: o.dcs,
            sync: o.sync,
            seed,
            planned,
            faults: Vec::new(),
            acknowledged: 0,
            transfers: 0,
            log_errors: 0,
            bank_errors: 0,
            lost_before_faults: 0,
            lost_final: None,
            probe_rounds: 0,
            moments: Vec::new(),
            bank_checks: 0,
            bank_violations: Vec::new(),
            notes: Vec::new(),
            left_out: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn lost(&self) -> u64 {
        let per_fault = self.lost_before_faults + self.faults.iter().map(|f| f.lost).sum::<u64>();
        self.lost_final.unwrap_or(0).max(per_fault)
    }

    fn not_converged(&self) -> usize {
        self.faults.iter().filter(|f| f.converged.is_err()).count()
    }

    /// Why the run fails; empty when it passes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.moments.is_empty() {
            out.push(format!(
                "{} moments with two writable primaries",
                self.moments.len()
            ));
        }
        if !self.bank_violations.is_empty() {
            out.push(format!(
                "bank total changed: {}",
                self.bank_violations.join("; ")
            ));
        }
        if self.sync && self.lost() > 0 {
            out.push(format!(
                "{} acknowledged writes lost in synchronous mode",
                self.lost()
            ));
        }
        if self.faults.len() < self.planned {
            out.push(format!(
                "incomplete: {} of {} faults injected",
                self.faults.len(),
                self.planned
            ));
        }
        if self.lost_final.is_none() {
            out.push("the final state could not be read".into());
        }
        out
    }

    /// Each two-primaries moment counted against the last fault injected
    /// before it.
    fn attribute_moments(&mut self) {
        for f in self.faults.iter_mut() {
            f.two_primaries = 0;
        }
        for m in &self.moments {
            if let Some(f) = self.faults.iter_mut().rev().find(|f| f.at <= m.at) {
                f.two_primaries += 1;
            }
        }
    }

    /// Consecutive moments with the same primaries after the same fault,
    /// as one line each.
    fn episodes(&self) -> Vec<String> {
        // (fault index, primaries, first, last, rounds)
        type Episode = (Option<usize>, Vec<String>, Instant, Instant, u64);
        let mut out: Vec<Episode> = Vec::new();
        for m in &self.moments {
            let f = self.faults.iter().rposition(|f| f.at <= m.at);
            match out.last_mut() {
                Some(e) if e.0 == f && e.1 == m.primaries => {
                    e.3 = m.at;
                    e.4 += 1;
                }
                _ => out.push((f, m.primaries.clone(), m.at, m.at, 1)),
            }
        }
        out.into_iter()
            .map(|(f, who, first, last, n)| {
                let when = match f.map(|i| &self.faults[i]) {
                    Some(f) => format!(
                        "from {:.1} s to {:.1} s after fault {} {} ({})",
                        first.duration_since(f.at).as_secs_f64(),
                        last.duration_since(f.at).as_secs_f64(),
                        f.n,
                        f.kind.name(),
                        f.what
                    ),
                    None => "before the first fault".into(),
                };
                format!("{} in {n} probe rounds, {when}", who.join(" + "))
            })
            .collect()
    }

    pub fn render(mut self) -> String {
        self.attribute_moments();
        let mut s = String::new();
        let failures = self.failures();
        let bank = if self.bank_violations.is_empty() {
            format!("bank ok ({} checks)", self.bank_checks)
        } else {
            format!(
                "bank VIOLATED ({} of {} checks)",
                self.bank_violations.len(),
                self.bank_checks
            )
        };
        let lost = match self.lost_final {
            Some(_) => self.lost().to_string(),
            None => format!("{} (final state not read)", self.lost()),
        };
        let _ = writeln!(
            s,
            "\nchaos {} seed {} dcs {} {} | faults {}/{} | acknowledged writes {} (transfers {}) | lost {lost} | two-primary moments {} ({} probe rounds) | {bank} | not converged {} | {:.0} s | {}",
            format!("{:?}", self.profile).to_lowercase(),
            self.seed,
            format!("{:?}", self.dcs).to_lowercase(),
            if self.sync { "sync" } else { "async" },
            self.faults.len(),
            self.planned,
            self.acknowledged,
            self.transfers,
            self.moments.len(),
            self.probe_rounds,
            self.not_converged(),
            self.elapsed.as_secs_f64(),
            if failures.is_empty() { "PASS".to_owned() } else { format!("FAIL: {}", failures.join("; ")) }
        );
        let _ = writeln!(
            s,
            "\n{:<21} {:>5} {:>15} {:>10} {:>12} {:>6} {:>12} {:>14}",
            "kind",
            "count",
            "writes back p50",
            "max",
            "longest gap",
            "lost",
            "two-primary",
            "not converged"
        );
        let mut by_kind: BTreeMap<Kind, Vec<&FaultResult>> = BTreeMap::new();
        for f in &self.faults {
            by_kind.entry(f.kind).or_default().push(f);
        }
        for (k, fs) in &by_kind {
            let mut backs: Vec<Duration> = fs.iter().filter_map(|f| f.writes_back).collect();
            backs.sort();
            let never = fs.len() - backs.len();
            let secs = |d: Option<&Duration>| {
                d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
            };
            let p50 = secs(backs.get(backs.len().saturating_sub(1) / 2));
            let max = if never > 0 {
                format!("never x{never}")
            } else {
                secs(backs.last())
            };
            let _ = writeln!(
                s,
                "{:<21} {:>5} {:>15} {:>10} {:>12} {:>6} {:>12} {:>14}",
                k.name(),
                fs.len(),
                p50,
                max,
                secs(fs.iter().map(|f| f.longest_gap).max().as_ref()),
                fs.iter().map(|f| f.lost).sum::<u64>(),
                fs.iter().map(|f| f.two_primaries).sum::<u64>(),
                fs.iter().filter(|f| f.converged.is_err()).count()
            );
        }
        if self.lost_before_faults > 0 {
            let _ = writeln!(
                s,
                "lost before the first fault: {}",
                self.lost_before_faults
            );
        }
        let _ = writeln!(
            s,
            "\nclient errors: log {} , bank {} (each followed by a reconnect)",
            self.log_errors, self.bank_errors
        );
        for e in self.episodes() {
            let _ = writeln!(s, "two primaries: {e}");
        }
        for f in self.faults.iter().filter(|f| f.converged.is_err()) {
            let _ = writeln!(
                s,
                "not converged: fault {} {} on {} ({}): {}",
                f.n,
                f.kind.name(),
                f.node,
                f.what,
                f.converged.as_ref().err().map_or("", |e| e.as_str())
            );
            for l in &f.log_tail {
                let _ = writeln!(s, "    {l}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for k in &self.left_out {
            let _ = writeln!(s, "not run: {k}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn outcome(args: &[&str]) -> Outcome {
        let o = Opts::parse_from([&["pgwarden-chaos"], args].concat());
        let mut out = Outcome::new(&o, 0, 1);
        out.lost_final = Some(0);
        out
    }

    #[test]
    fn a_clean_run_passes() {
        assert!(outcome(&[]).failures().is_empty());
    }

    #[test]
    fn two_primaries_and_a_changed_bank_fail_the_run() {
        let mut o = outcome(&[]);
        o.moments.push(Moment {
            at: Instant::now(),
            primaries: vec!["node0".into(), "node1".into()],
        });
        o.bank_violations.push("10 accounts holding 9990".into());
        let f = o.failures();
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[test]
    fn lost_writes_fail_only_in_synchronous_mode() {
        let mut o = outcome(&[]);
        o.lost_final = Some(3);
        assert!(o.failures().is_empty());
        assert!(o.render().contains("lost 3"));
        let mut o = outcome(&["--sync"]);
        o.lost_final = Some(3);
        assert_eq!(o.failures().len(), 1);
    }

    #[test]
    fn fewer_faults_than_planned_or_no_final_read_fail_the_run() {
        let mut o = outcome(&[]);
        o.planned = 20;
        o.lost_final = None;
        assert_eq!(o.failures().len(), 2, "{:?}", o.failures());
    }
}
