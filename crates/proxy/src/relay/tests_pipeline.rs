//! Pipelines: errors that make the server discard until Sync, Flush
//! without Sync, a lone Describe, COPY in a pipeline, errors in a batch.
use super::*;
use wire::backend::{BackendMessage as B, TxStatus};
use wire::frontend::FrontendMessage as F;

fn error(code: &str) -> B {
    B::ErrorResponse(wire::ErrorFields::new(
        wire::Severity::Error,
        code,
        "failed",
    ))
}

fn describe_portal() -> F {
    F::Describe {
        target: Target::Portal,
        name: "".into(),
    }
}

/// libpq pipeline mode (psycopg's `pipeline()`): a query fails, the client
/// (which knows the pipeline is aborted) queues more and then a Sync. The
/// server discards everything up to that Sync and answers nothing: the
/// relay must not wait for answers to the discarded messages, or it never
/// reads the Sync the server waits for.
#[test]
fn requests_after_an_error_wait_for_the_sync_and_get_no_answers() {
    for rewrite in [false, true] {
        let reg = Registry::default();
        let mut h = Harness::new(rewrite);
        h.client(
            &reg,
            &[
                parse("", "select * from doesnotexist"),
                bind(""),
                describe_portal(),
                exec(),
                F::Flush,
            ],
        );
        assert!(h.relay.awaits_server());
        assert_eq!(tags(&h.server(&[error("42P01")])), "E");
        assert!(!h.relay.awaits_server(), "the server waits for a Sync");
        // what the client sends before its Sync is discarded by the server
        let (s, c) = h.client(
            &reg,
            &[
                parse("", "select 'aborted'"),
                bind(""),
                describe_portal(),
                exec(),
                F::Flush,
            ],
        );
        assert!(c.is_empty(), "no answer for a discarded request");
        assert!(
            !h.relay.awaits_server(),
            "the server answers nothing before the Sync (forwarded: {})",
            tags(&s)
        );
        let (s, _) = h.client(&reg, &[F::Sync]);
        assert!(tags(&s).ends_with('S'));
        assert!(h.relay.awaits_server());
        assert_eq!(tags(&h.server(&[rfq(TxStatus::Idle)])), "Z");
        assert!(h.relay.is_idle());
        // the next pipeline is answered as usual
        h.client(&reg, &[parse("", "select 2"), bind(""), exec(), F::Sync]);
        let out = h.server(&[
            B::ParseComplete,
            B::BindComplete,
            cc("SELECT 1"),
            rfq(TxStatus::Idle),
        ]);
        assert_eq!(tags(&out), "12CZ");
        assert!(h.relay.is_idle());
    }
}

/// In transaction mode the proxy answers a Parse of a statement the server
/// has itself: not while the server discards, where PostgreSQL would not
/// answer, and a statement the discarded Parse would have prepared is not
/// taken for prepared.
#[test]
fn the_proxy_gives_no_answers_of_its_own_while_the_server_discards() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("s", "select 1"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    h.client(&reg, &[parse("", "select nope"), F::Flush]);
    h.server(&[error("42703")]);
    let (s, c) = h.client(
        &reg,
        &[parse("s", "select 1"), parse("t", "select 2"), F::Flush],
    );
    assert!(c.is_empty(), "answered a discarded Parse: {}", tags(&c));
    assert!(!h.relay.awaits_server());
    h.client(&reg, &[F::Sync]);
    h.server(&[rfq(TxStatus::Idle)]);
    // "t" was never prepared on the server: a Bind must prepare it first
    let (s2, _) = h.client(&reg, &[parse("t", "select 2"), bind("t"), exec(), F::Sync]);
    let sent = format!("{}{}", tags(&s), tags(&s2));
    assert!(tags(&s2).starts_with('P'), "sent {sent}");
    let out = h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(tags(&out), "12CZ");
    assert!(h.relay.is_idle());
}

/// A JDBC batch: many Bind/Execute and one Sync; one in the middle fails.
#[test]
fn an_error_in_the_middle_of_a_batch_skips_to_its_sync() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    let mut batch = vec![parse("ins", "insert into t values ($1)")];
    for _ in 0..5 {
        batch.push(bind("ins"));
        batch.push(exec());
    }
    batch.push(F::Sync);
    h.client(&reg, &batch);
    let out = h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("INSERT 0 1"),
        B::BindComplete,
        error("23505"),
    ]);
    assert_eq!(tags(&out), "12C2E");
    assert!(h.relay.awaits_server(), "the Sync is still owed");
    assert_eq!(tags(&h.server(&[rfq(TxStatus::Idle)])), "Z");
    assert!(h.relay.is_idle());
}

/// Flush without Sync: answered, but the server is mid-pipeline (its
/// implicit transaction is open) and stays with the client.
#[test]
fn flush_without_sync_keeps_the_server() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("", "select 1"), bind(""), exec(), F::Flush]);
    h.server(&[B::ParseComplete, B::BindComplete, cc("SELECT 1")]);
    assert!(!h.relay.awaits_server());
    assert!(!h.relay.is_idle());
    h.client(&reg, &[F::Sync]);
    h.server(&[rfq(TxStatus::Idle)]);
    assert!(h.relay.is_idle());
}

/// A Describe of a statement alone: ParameterDescription then
/// RowDescription or NoData complete it.
#[test]
fn a_lone_describe_is_answered() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("d", "select $1::int"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    for (last, want) in [(B::RowDescription(vec![]), "tT"), (B::NoData, "tn")] {
        h.client(
            &reg,
            &[
                F::Describe {
                    target: Target::Statement,
                    name: "d".into(),
                },
                F::Flush,
            ],
        );
        assert!(h.relay.awaits_server());
        let out = h.server(&[B::ParameterDescription(vec![23]), last]);
        assert_eq!(tags(&out), want);
        assert!(!h.relay.awaits_server());
        h.client(&reg, &[F::Sync]);
        h.server(&[rfq(TxStatus::Idle)]);
        assert!(h.relay.is_idle());
    }
}

/// COPY TO STDOUT inside a pipeline, and a COPY whose Bind fails
/// (`copy (select $1, $2) to stdout` cannot take parameters).
#[test]
fn copy_in_a_pipeline() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(
        &reg,
        &[
            parse("", "copy (select 1) to stdout"),
            bind(""),
            describe_portal(),
            exec(),
            parse("", "select 2"),
            bind(""),
            exec(),
            F::Sync,
        ],
    );
    let out = h.server(&[
        B::ParseComplete,
        B::BindComplete,
        B::NoData,
        B::CopyOutResponse {
            format: 0,
            column_formats: vec![0],
        },
        B::CopyData(Bytes::from_static(b"1\n")),
        B::CopyDone,
        cc("COPY 1"),
        B::ParseComplete,
        B::BindComplete,
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(tags(&out), "12nHdcC12CZ");
    assert!(h.relay.is_idle());

    h.client(
        &reg,
        &[
            parse("", "copy (select $1, $2) to stdout"),
            bind(""),
            exec(),
            F::Flush,
        ],
    );
    h.server(&[error("42P02")]);
    assert!(!h.relay.awaits_server());
    h.client(&reg, &[F::Sync]);
    h.server(&[rfq(TxStatus::Idle)]);
    assert!(h.relay.is_idle());
}

/// COPY FROM STDIN in extended protocol whose data fails: the server
/// discards the rest of the data up to the client's Sync.
#[test]
fn copy_in_that_fails_discards_until_sync() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(
        &reg,
        &[parse("", "copy t from stdin"), bind(""), exec(), F::Sync],
    );
    h.server(&[
        B::ParseComplete,
        B::BindComplete,
        B::CopyInResponse {
            format: 0,
            column_formats: vec![0],
        },
    ]);
    h.client(&reg, &[F::CopyData(Bytes::from_static(b"x\n"))]);
    h.server(&[error("22P02")]);
    let (_, c) = h.client(
        &reg,
        &[F::CopyData(Bytes::from_static(b"y\n")), F::CopyDone],
    );
    assert!(c.is_empty());
    assert!(!h.relay.awaits_server());
    h.client(&reg, &[F::Sync]);
    assert!(h.relay.awaits_server());
    h.server(&[rfq(TxStatus::Idle)]);
    assert!(h.relay.is_idle());
}
