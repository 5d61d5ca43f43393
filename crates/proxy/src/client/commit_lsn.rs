//! `SHOW pgwarden.commit_lsn`, answered by the proxy (read balancing on,
//! transaction mode): a WAL position at or after the commit of the
//! session's last write transaction through the proxy (`0/0` before its
//! first), read from the primary only when asked. An application carries
//! it to another connection, whose `SET pgwarden.min_lsn = '...'` makes
//! that connection's reads wait for a standby that has replayed it.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use config::Consistency;
use wire::backend::{BackendMessage, Column, TxStatus};

use crate::pool::Pool;
use crate::relay::Relay;
use crate::route::SessionRoute;
use crate::state::State;

pub const COMMIT_LSN_SETTING: &str = "pgwarden.commit_lsn";

/// Whether `input` holds exactly one simple query asking for the commit
/// position; the bytes it takes.
fn asks(input: &[u8], max: usize) -> Option<usize> {
    let (h, body) = wire::frame::split_message(input, max).ok()??;
    if h.tag != b'Q' || h.total_len() != input.len() {
        return None;
    }
    // cheap refusals first: every simple query of a balanced session
    // passes here
    let text = body.strip_suffix(&[0])?.trim_ascii_start();
    if text.len() > 64 || !text.get(..4)?.eq_ignore_ascii_case(b"show") {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let words: Vec<&str> = text
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    match words.as_slice() {
        [show, name]
            if show.eq_ignore_ascii_case("show")
                && name.eq_ignore_ascii_case(COMMIT_LSN_SETTING) =>
        {
            Some(h.total_len())
        }
        _ => None,
    }
}

/// `X/Y`, as PostgreSQL prints an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The answer to a request for the commit position, and the bytes of
/// `input` it answers; None when `input` is something else (or read
/// balancing is off: the server answers).
pub(super) async fn answer(
    state: &Arc<State>,
    pool: &Arc<Pool>,
    input: &[u8],
    relay: &Relay,
    route: &Option<Box<SessionRoute>>,
) -> Option<(usize, BytesMut)> {
    // (the request is already whole in `input`, bounded when it was read)
    let used = asks(input, usize::MAX >> 1)?;
    let cfg = state.config();
    let bal = &cfg.proxy.balance;
    if !bal.enabled || bal.consistency == Consistency::Primary || !relay.transaction_mode() {
        return None;
    }
    let lsn = match route.as_ref().and_then(|r| r.write_ended) {
        None => Some(0),
        Some(since) => super::routing::primary_lsn_after(state, pool, since)
            .await
            .map(|(_, lsn)| lsn),
    };
    let mut out = BytesMut::new();
    match lsn {
        Some(lsn) => {
            BackendMessage::RowDescription(vec![Column::text(COMMIT_LSN_SETTING)]).encode(&mut out);
            BackendMessage::DataRow(vec![Some(Bytes::from(format_lsn(lsn)))]).encode(&mut out);
            BackendMessage::CommandComplete("SHOW".into()).encode(&mut out);
        }
        None => {
            let e = wire::ErrorFields::new(
                wire::Severity::Error,
                "08006",
                "the primary's WAL position could not be read",
            );
            BackendMessage::ErrorResponse(e).encode(&mut out);
        }
    }
    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    Some((used, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> BytesMut {
        let mut b = BytesMut::new();
        wire::frontend::FrontendMessage::Query(q.into()).encode(&mut b);
        b
    }

    #[test]
    fn only_a_lone_show_of_the_setting_is_answered() {
        for q in [
            "SHOW pgwarden.commit_lsn",
            "show PGWARDEN.COMMIT_LSN ;",
            "  SHOW  pgwarden.commit_lsn;",
        ] {
            let b = query(q);
            assert_eq!(asks(&b, 1 << 20), Some(b.len()), "{q}");
        }
        for q in [
            "SHOW pgwarden.min_lsn",
            "SELECT 1",
            "SHOW pgwarden.commit_lsn; SELECT 1",
        ] {
            assert_eq!(asks(&query(q), 1 << 20), None, "{q}");
        }
        let mut two = query("SHOW pgwarden.commit_lsn");
        two.extend_from_slice(&query("SELECT 1"));
        assert_eq!(
            asks(&two, 1 << 20),
            None,
            "pipelined after it: the server answers"
        );
    }

    #[test]
    fn positions_print_as_postgresql_prints_them() {
        assert_eq!(format_lsn(0x16B3748), "0/16B3748");
        assert_eq!(format_lsn((1 << 32) | 0xA0), "1/A0");
        assert_eq!(
            crate::route::parse_lsn(&format_lsn(0x1_2345_6789)),
            Some(0x1_2345_6789)
        );
    }
}
