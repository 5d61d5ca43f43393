//! How far a copy of the leader (pg_basebackup `--progress`) has come, as
//! pg_basebackup reports it: shared by the agent running it and the REST
//! API showing it (`GET /reinitialize`, `pgwarden ctl reinit`'s bar).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CopyProgress {
    running: AtomicBool,
    done_kb: AtomicU64,
    total_kb: AtomicU64,
}

/// A reading of [`CopyProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyState {
    pub running: bool,
    pub done_kb: u64,
    /// pg_basebackup's estimate (it can grow while the copy runs).
    pub total_kb: u64,
}

impl CopyProgress {
    pub fn start(&self) {
        self.done_kb.store(0, Ordering::Relaxed);
        self.total_kb.store(0, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
    }
    pub fn finish(&self) {
        self.running.store(false, Ordering::Release);
    }
    /// Takes in one line of pg_basebackup's standard error.
    pub fn line(&self, line: &str) -> bool {
        match parse_line(line) {
            Some((done, total)) => {
                self.done_kb.store(done, Ordering::Relaxed);
                self.total_kb.store(total, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
    pub fn get(&self) -> CopyState {
        CopyState {
            running: self.running.load(Ordering::Acquire),
            done_kb: self.done_kb.load(Ordering::Relaxed),
            total_kb: self.total_kb.load(Ordering::Relaxed),
        }
    }
}

/// `  12345/67890 kB (18%), 0/1 tablespace` (pg_basebackup --progress;
/// with --verbose a file name may follow): (12345, 67890).
pub fn parse_line(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    let (done, total) = words.next()?.split_once('/')?;
    if words.next()? != "kB" {
        return None;
    }
    Some((done.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pg_basebackups_progress_lines() {
        assert_eq!(
            parse_line("   12345/67890 kB (18%), 0/1 tablespace"),
            Some((12345, 67890))
        );
        assert_eq!(
            parse_line("67890/67890 kB (100%), 1/1 tablespace"),
            Some((67890, 67890))
        );
        assert_eq!(
            parse_line("2042/30000 kB (6%), 0/1 tablespace (...data/base/1/1249)"),
            Some((2042, 30000))
        );
        assert_eq!(parse_line("pg_basebackup: error: connection failed"), None);
        assert_eq!(parse_line("1/2 MB"), None);
        assert_eq!(parse_line(""), None);
        let p = CopyProgress::default();
        p.start();
        assert!(p.line("100/400 kB (25%), 0/1 tablespace"));
        assert!(!p.line("waiting for checkpoint"));
        assert_eq!(
            p.get(),
            CopyState {
                running: true,
                done_kb: 100,
                total_kb: 400
            }
        );
        p.finish();
        assert!(!p.get().running);
    }
}
