//! The agent's log of its loop: one sentence a pass, written when it
//! changes. A sentence repeated pass after pass (a failure retried every
//! second, or a quiet "following node0") is written once, then again only
//! every few minutes with the number of repeats, so a log shows the cause
//! of a problem once instead of burying it.
use std::time::{Duration, Instant};

/// How often a repeated sentence is written again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct SentenceLog {
    last: String,
    /// Passes with the same sentence since it was last written.
    repeats: u64,
    written_at: Option<Instant>,
}

impl SentenceLog {
    /// The lines to log for this pass's sentence (none, or the sentence,
    /// after a count of the previous one's repeats).
    pub fn lines(&mut self, sentence: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if sentence != self.last && self.repeats > 0 {
            out.push(format!(
                "(the previous sentence repeated {} more times)",
                self.repeats
            ));
        }
        out.extend(self.line(sentence, now));
        out
    }

    fn line(&mut self, sentence: &str, now: Instant) -> Option<String> {
        if sentence == self.last {
            self.repeats += 1;
            let due = self
                .written_at
                .is_none_or(|t| now.duration_since(t) >= REPEAT_EVERY);
            if !due {
                return None;
            }
            let line = format!("{sentence} (again, {} times since)", self.repeats);
            self.repeats = 0;
            self.written_at = Some(now);
            return Some(line);
        }
        let line = sentence.to_owned();
        self.last = sentence.to_owned();
        self.repeats = 0;
        self.written_at = Some(now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_sentence_is_written_once_then_every_few_minutes() {
        let mut log = SentenceLog::default();
        let t0 = Instant::now();
        let fail = "bootstrapping — failed: initdb: Permission denied";
        assert_eq!(log.line(fail, t0).as_deref(), Some(fail));
        for s in 1..300 {
            assert_eq!(
                log.line(fail, t0 + Duration::from_secs(s)),
                None,
                "pass {s}"
            );
        }
        assert_eq!(
            log.line(fail, t0 + REPEAT_EVERY).as_deref(),
            Some("bootstrapping — failed: initdb: Permission denied (again, 300 times since)")
        );
        assert_eq!(
            log.line(fail, t0 + REPEAT_EVERY + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.lines(
                "following node0",
                t0 + REPEAT_EVERY + Duration::from_secs(2)
            ),
            [
                "(the previous sentence repeated 1 more times)",
                "following node0"
            ]
        );
        assert_eq!(
            log.lines("promoted", t0 + REPEAT_EVERY + Duration::from_secs(3)),
            ["promoted"]
        );
    }
}
