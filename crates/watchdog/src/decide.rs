//! The watchdog's decisions, without I/O: whether to take, renew or give
//! up the virtual IP lease, and until when the address may stay up after
//! a renewal.
use std::time::Duration;

use ha::proxy::{ProxyRecord, ProxyState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The lease is free: try to take it.
    Take,
    /// We hold it: keep it.
    Renew,
    /// We hold it but should not: take the address down, then give it up.
    Release,
    /// Someone else holds it, or others are better placed to.
    Wait,
}

/// What one round of the watchdog sees.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub me: &'a str,
    /// The lease holder by the DCS.
    pub holder: Option<&'a str>,
    /// Our health checks reach the primary.
    pub data_ok: bool,
    /// Another registered proxy reaches the primary and may hold the IP.
    pub others_ok: bool,
}

/// A proxy that cannot reach the primary while another can does not hold
/// the address (and gives it up if it does); when nobody can reach it,
/// whoever holds the address keeps it.
pub fn step(s: Seen<'_>) -> Step {
    let better_elsewhere = !s.data_ok && s.others_ok;
    match s.holder {
        Some(h) if h == s.me && better_elsewhere => Step::Release,
        Some(h) if h == s.me => Step::Renew,
        Some(_) => Step::Wait,
        None if better_elsewhere => Step::Wait,
        None => Step::Take,
    }
}

/// Whether a proxy other than `me` reaches the primary and competes for
/// the address.
pub fn others_ok(records: &[ProxyRecord], me: &str) -> bool {
    records.iter().any(|r| {
        r.name != me
            && r.primary_reachable
            && matches!(r.state, ProxyState::Standby | ProxyState::Holder)
    })
}

/// How long before the lease could expire the address goes down when the
/// lease is not renewed: a fifth of the TTL, at least 500 ms.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(500))
}

/// How often the holder renews.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 5
}

/// Until when (monotonic ms) the address may stay up after a renewal (or
/// take) whose request left at `sent_ms`: the DCS counts the TTL from
/// when the request arrived, which is later, so the lease cannot expire
/// before this plus the margin.
pub fn hold_until(sent_ms: u64, ttl: Duration) -> u64 {
    sent_ms + (ttl - margin(ttl)).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holder: Option<&'static str>, data_ok: bool, others_ok: bool) -> Seen<'static> {
        Seen {
            me: "p1",
            holder,
            data_ok,
            others_ok,
        }
    }

    #[test]
    fn a_free_lease_is_taken_unless_others_serve_better() {
        assert_eq!(step(seen(None, true, true)), Step::Take);
        assert_eq!(step(seen(None, true, false)), Step::Take);
        assert_eq!(
            step(seen(None, false, false)),
            Step::Take,
            "nobody reaches the primary: any holder will do"
        );
        assert_eq!(step(seen(None, false, true)), Step::Wait);
    }

    #[test]
    fn the_holder_renews_or_gives_way() {
        assert_eq!(step(seen(Some("p1"), true, true)), Step::Renew);
        assert_eq!(step(seen(Some("p1"), false, false)), Step::Renew);
        assert_eq!(step(seen(Some("p1"), false, true)), Step::Release);
    }

    #[test]
    fn another_holder_is_left_alone() {
        assert_eq!(step(seen(Some("p2"), true, true)), Step::Wait);
        assert_eq!(step(seen(Some("p2"), true, false)), Step::Wait);
    }

    #[test]
    fn the_address_goes_down_before_the_lease_can_expire() {
        let ttl = Duration::from_secs(5);
        assert_eq!(hold_until(10_000, ttl), 14_000);
        assert!(
            renew_every(ttl) < ttl - margin(ttl),
            "several renewals fit in a hold"
        );
        let short = Duration::from_secs(2);
        assert_eq!(margin(short), Duration::from_millis(500));
        assert_eq!(hold_until(0, short), 1_500);
    }

    fn rec(name: &str, state: ProxyState, reachable: bool) -> ProxyRecord {
        ProxyRecord {
            name: name.into(),
            holder_id: format!("{name}.1"),
            listen: String::new(),
            metrics_url: None,
            state,
            vip: None,
            clients: 0,
            pools: 0,
            transactions: 0,
            primary: None,
            primary_reachable: reachable,
            reads: Default::default(),
            node_transactions: Default::default(),
        }
    }

    #[test]
    fn others_count_only_when_they_reach_the_primary_and_compete() {
        let rs = [
            rec("p1", ProxyState::Standby, true),
            rec("p2", ProxyState::Stopping, true),
            rec("p3", ProxyState::DataPathDown, false),
        ];
        assert!(!others_ok(&rs, "p1"), "only p1 itself qualifies");
        assert!(others_ok(&rs, "p3"));
    }
}
