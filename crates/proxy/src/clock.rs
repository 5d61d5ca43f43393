//! A coarse monotonic clock for the data path: pool bookkeeping (idle
//! since, lifetime) and login deadlines read an atomic that a task of its
//! own advances every 250 ms, instead of asking the kernel for the time on
//! every transaction or connection.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Advances the coarse clock to the real time (called by the upkeep task).
pub fn tick() -> u64 {
    let ms = BASE.get_or_init(Instant::now).elapsed().as_millis() as u64;
    NOW_MS.fetch_max(ms, Ordering::Relaxed).max(ms)
}

/// A deadline `d` from now, by the coarse clock (early by up to a tick):
/// no clock read for timeouts set on every connection.
pub fn deadline(d: std::time::Duration) -> tokio::time::Instant {
    let base = *BASE.get_or_init(Instant::now);
    tokio::time::Instant::from_std(base + std::time::Duration::from_millis(now_ms()) + d)
}

/// Milliseconds since the first tick, as of the latest tick.
pub fn now_ms() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let a = tick();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = tick();
        assert!(b >= a + 5, "{a} -> {b}");
        assert!(now_ms() >= b);
    }
}
