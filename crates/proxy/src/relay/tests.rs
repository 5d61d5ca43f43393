use super::registry::REGISTRY_SWEEP_AT;
use super::*;
use crate::params::{ParamSet, Strings};
use crate::server::ServerSession;
use bytes::Bytes;
use bytes::BytesMut;
use wire::backend::{BackendMessage as B, TxStatus};
use wire::frame::split_message;
use wire::frontend::Target;
use wire::frontend::{Bind, FrontendMessage as F, Parse};

pub(super) fn enc_f(msgs: &[F]) -> BytesMut {
    let mut b = BytesMut::new();
    for m in msgs {
        m.encode(&mut b);
    }
    b
}

fn enc_b(msgs: &[B]) -> BytesMut {
    let mut b = BytesMut::new();
    for m in msgs {
        m.encode(&mut b);
    }
    b
}

pub(super) fn tags(buf: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while let Some((h, _)) = split_message(&buf[pos..], 1 << 20).unwrap() {
        out.push(char::from(h.tag));
        pos += h.total_len();
    }
    assert_eq!(pos, buf.len(), "trailing partial message");
    out
}

fn decode_f(buf: &[u8]) -> Vec<F> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((h, body)) = split_message(&buf[pos..], 1 << 20).unwrap() {
        out.push(F::decode(h.tag, body).unwrap());
        pos += h.total_len();
    }
    out
}

pub(super) struct Harness {
    pub(super) relay: Relay,
    pub(super) srv: ServerSession,
    params: ClientParams,
}

impl Harness {
    pub(super) fn new(rewrite: bool) -> Self {
        Harness {
            relay: Relay::new(rewrite, 1 << 20),
            srv: ServerSession::default(),
            params: ClientParams::default(),
        }
    }
    /// Returns (bytes to server, direct bytes to client).
    pub(super) fn client(&mut self, reg: &Registry, msgs: &[F]) -> (BytesMut, BytesMut) {
        let mut input = enc_f(msgs);
        let (mut s, mut c) = (BytesMut::new(), BytesMut::new());
        self.relay
            .client_messages(&mut input, &mut s, &mut c, &mut self.srv, reg)
            .unwrap();
        assert!(input.is_empty());
        (s, c)
    }
    pub(super) fn server(&mut self, msgs: &[B]) -> BytesMut {
        let mut input = enc_b(msgs);
        let mut c = BytesMut::new();
        self.relay
            .server_messages(&mut input, &mut c, &mut self.srv, &mut self.params)
            .unwrap();
        c
    }
}

pub(super) fn parse(name: &str, q: &str) -> F {
    F::Parse(Parse {
        name: name.into(),
        query: q.into(),
        param_types: vec![],
    })
}
pub(super) fn bind(stmt: &str) -> F {
    F::Bind(Bind {
        portal: "".into(),
        statement: stmt.into(),
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    })
}
pub(super) fn exec() -> F {
    F::Execute {
        portal: "".into(),
        max_rows: 0,
    }
}
pub(super) fn cc(tag: &str) -> B {
    B::CommandComplete(tag.into())
}
pub(super) fn rfq(s: TxStatus) -> B {
    B::ReadyForQuery(s)
}

#[test]
fn simple_query_round_trip_releases_server() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    let (s, c) = h.client(&reg, &[F::Query("select 1".into())]);
    assert_eq!(tags(&s), "Q");
    assert!(c.is_empty());
    assert!(!h.relay.is_idle());
    let out = h.server(&[
        B::RowDescription(vec![]),
        B::DataRow(vec![]),
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(tags(&out), "TDCZ");
    assert!(h.relay.is_idle());
}

/// Transaction mode: what a server sends after the ReadyForQuery that
/// ends the client's transaction (a backend whose postmaster died says so
/// as soon as it waits for the next query) is no client's; session mode
/// passes it on.
#[test]
fn bytes_after_the_transaction_are_not_the_clients() {
    let reg = Registry::default();
    for rewrite in [true, false] {
        let mut h = Harness::new(rewrite);
        h.client(&reg, &[F::Query("select 1".into())]);
        let fatal = wire::ErrorFields::new(
            wire::Severity::Fatal,
            "57P01",
            "terminating connection due to unexpected postmaster exit",
        );
        let mut input = enc_b(&[
            B::RowDescription(vec![]),
            B::DataRow(vec![]),
            cc("SELECT 1"),
            rfq(TxStatus::Idle),
            B::ErrorResponse(fatal),
        ]);
        let mut out = BytesMut::new();
        h.relay
            .server_messages(&mut input, &mut out, &mut h.srv, &mut h.params)
            .unwrap();
        if rewrite {
            assert_eq!(tags(&out), "TDCZ");
            assert_eq!(tags(&input), "E", "left with the server connection");
            assert!(h.relay.is_idle());
        } else {
            assert_eq!(tags(&out), "TDCZE");
            assert!(input.is_empty());
        }
    }
}

#[test]
fn transaction_keeps_server_until_idle() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[F::Query("begin".into())]);
    h.server(&[cc("BEGIN"), rfq(TxStatus::InTransaction)]);
    assert!(!h.relay.is_idle());
    h.client(&reg, &[F::Query("commit".into())]);
    h.server(&[cc("COMMIT"), rfq(TxStatus::Idle)]);
    assert!(h.relay.is_idle());
}

#[test]
fn named_statements_are_shared_and_injected() {
    let reg = Registry::default();
    // client A prepares s1 on server 1
    let mut a = Harness::new(true);
    let (s, _) = a.client(&reg, &[parse("s1", "select $1"), F::Sync]);
    let sent = decode_f(&s);
    let F::Parse(p) = &sent[0] else {
        panic!("expected Parse, got {sent:?}")
    };
    assert!(p.name.starts_with("pgw_"));
    let server_name = p.name.clone();
    assert_eq!(
        tags(&a.server(&[B::ParseComplete, rfq(TxStatus::Idle)])),
        "1Z"
    );

    // client B on the same server prepares the same text: answered by the proxy
    let mut b = Harness {
        srv: std::mem::take(&mut a.srv),
        ..Harness::new(true)
    };
    let (s, c) = b.client(
        &reg,
        &[parse("other", "select $1"), bind("other"), exec(), F::Sync],
    );
    assert_eq!(tags(&c), "1", "ParseComplete synthesised at once");
    let sent = decode_f(&s);
    assert_eq!(sent.len(), 3, "no Parse sent: {sent:?}");
    let F::Bind(bd) = &sent[0] else { panic!() };
    assert_eq!(bd.statement, server_name);
    assert_eq!(
        tags(&b.server(&[B::BindComplete, cc("SELECT 1"), rfq(TxStatus::Idle)])),
        "2CZ"
    );
    assert!(b.relay.is_idle());

    // client A later runs on a fresh server 2: the Parse is injected and its answer swallowed
    a.srv = ServerSession::default();
    let (s, _) = a.client(&reg, &[bind("s1"), exec(), F::Sync]);
    assert_eq!(tags(&s), "PBES");
    let out = a.server(&[
        B::ParseComplete,
        B::BindComplete,
        B::DataRow(vec![]),
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(tags(&out), "2DCZ");
    assert!(a.srv.prepared.contains(server_name.as_str()));

    // Close is answered by the proxy in order, and the statement stays on the server
    let (s, c) = a.client(
        &reg,
        &[
            F::Close {
                target: Target::Statement,
                name: "s1".into(),
            },
            F::Sync,
        ],
    );
    assert_eq!(tags(&s), "S");
    assert_eq!(tags(&c), "3");
    assert_eq!(tags(&a.server(&[rfq(TxStatus::Idle)])), "Z");
    assert_eq!(a.relay.prepared_count(), 0);
}

#[test]
fn synthetic_answers_wait_for_earlier_responses() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("s", "select 1"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    // Execute of an unnamed statement, then a re-Parse of "s" (already on the server)
    let (_, c) = h.client(
        &reg,
        &[
            parse("", "select 2"),
            bind(""),
            exec(),
            parse("s", "select 1"),
            F::Sync,
        ],
    );
    assert!(
        c.is_empty(),
        "ParseComplete must come after the Execute's results"
    );
    let out = h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(tags(&out), "12C1Z");
}

#[test]
fn error_skips_to_sync_and_unmarks_failed_parse() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    let (s, _) = h.client(
        &reg,
        &[parse("bad", "selec 1"), bind("bad"), exec(), F::Sync],
    );
    assert_eq!(tags(&s), "PBES");
    let err = wire::ErrorFields::new(wire::Severity::Error, "42601", "syntax error");
    let out = h.server(&[B::ErrorResponse(err), rfq(TxStatus::Idle)]);
    assert_eq!(tags(&out), "EZ");
    assert!(h.relay.is_idle());
    assert!(
        h.srv.prepared.is_empty(),
        "failed Parse must not count as prepared"
    );
}

#[test]
fn set_is_tracked_and_rolled_back() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[F::Query("SET search_path TO app".into())]);
    h.server(&[cc("SET"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("search_path"), Some("app"));
    assert_eq!(h.srv.applied.get("search_path"), Some("app"));

    h.client(&reg, &[F::Query("BEGIN; SET statement_timeout = 5".into())]);
    h.server(&[cc("BEGIN"), cc("SET"), rfq(TxStatus::InTransaction)]);
    h.client(&reg, &[F::Query("ROLLBACK".into())]);
    h.server(&[cc("ROLLBACK"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("statement_timeout"), None);

    // extended protocol SET (as psycopg sends it)
    h.client(
        &reg,
        &[parse("", "SET TimeZone = 'UTC'"), bind(""), exec(), F::Sync],
    );
    h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("SET"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(h.params.set().get("timezone"), Some("'UTC'"));

    // a failed SET changes nothing
    h.client(&reg, &[F::Query("SET nonsense.x TO".into())]);
    let err = wire::ErrorFields::new(wire::Severity::Error, "42601", "syntax error");
    h.server(&[B::ErrorResponse(err), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().iter().count(), 2);
}

#[test]
fn listen_pins_until_unlisten() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[F::Query("LISTEN jobs".into())]);
    h.server(&[cc("LISTEN"), rfq(TxStatus::Idle)]);
    assert!(!h.relay.is_idle());
    let out = h.server(&[B::NotificationResponse {
        pid: 1,
        channel: "jobs".into(),
        payload: "x".into(),
    }]);
    assert_eq!(tags(&out), "A");
    h.client(&reg, &[F::Query("UNLISTEN *".into())]);
    h.server(&[cc("UNLISTEN"), rfq(TxStatus::Idle)]);
    assert!(h.relay.is_idle());
}

#[test]
fn session_mode_passes_names_through() {
    let reg = Registry::default();
    let mut h = Harness::new(false);
    let (s, _) = h.client(
        &reg,
        &[parse("s1", "select 1"), bind("s1"), exec(), F::Sync],
    );
    let sent = decode_f(&s);
    assert!(matches!(&sent[0], F::Parse(p) if p.name == "s1"));
    assert!(reg.is_empty());
}

#[test]
fn partial_messages_wait_and_bad_ones_fail() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    let full = enc_f(&[F::Query("select 1".into())]);
    let mut input = BytesMut::from(&full[..full.len() - 1]);
    let (mut s, mut c) = (BytesMut::new(), BytesMut::new());
    h.relay
        .client_messages(&mut input, &mut s, &mut c, &mut h.srv, &reg)
        .unwrap();
    assert!(s.is_empty());
    assert_eq!(input.len(), full.len() - 1);
    let mut bad = BytesMut::from(&b"Q\0\0\0\x05\xff"[..]);
    assert!(h
        .relay
        .client_messages(&mut bad, &mut s, &mut c, &mut h.srv, &reg)
        .is_err());
    let mut huge = BytesMut::from(&b"Q\x7f\0\0\0"[..]);
    assert!(matches!(
        h.relay
            .client_messages(&mut huge, &mut s, &mut c, &mut h.srv, &reg),
        Err(ProtocolError::BadLength { .. })
    ));
    let mut term = enc_f(&[F::Terminate]);
    assert_eq!(
        h.relay
            .client_messages(&mut term, &mut s, &mut c, &mut h.srv, &reg)
            .unwrap(),
        Flow::Terminate
    );
}

#[test]
fn syncs_sent_during_copy_in_are_not_answered() {
    // tokio-postgres: Bind, Execute, Sync before it knows it is a COPY,
    // then CopyData, CopyDone, Sync, then Close + Sync.
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("s0", "COPY c FROM STDIN"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    h.client(&reg, &[bind("s0"), exec(), F::Sync]);
    let out = h.server(&[
        B::BindComplete,
        B::CopyInResponse {
            format: 0,
            column_formats: vec![],
        },
    ]);
    assert_eq!(tags(&out), "2G");
    h.client(
        &reg,
        &[
            F::CopyData(Bytes::from_static(b"1\n")),
            F::CopyDone,
            F::Sync,
        ],
    );
    let (_, c) = h.client(
        &reg,
        &[
            F::Close {
                target: Target::Statement,
                name: "s0".into(),
            },
            F::Sync,
        ],
    );
    assert!(c.is_empty());
    // the server answers the CopyDone's Sync and the Close's Sync only
    let out = h.server(&[cc("COPY 1"), rfq(TxStatus::Idle), rfq(TxStatus::Idle)]);
    assert_eq!(tags(&out), "CZ3Z");
    assert!(h.relay.is_idle());
}

#[test]
fn a_rolled_back_or_failed_set_makes_the_server_state_unknown() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    // SET then ROLLBACK TO SAVEPOINT: the proxy cannot tell what survived
    h.client(
        &reg,
        &[F::Query(
            "BEGIN; SET search_path = x; SAVEPOINT s; ROLLBACK TO s; COMMIT".into(),
        )],
    );
    h.server(&[
        cc("BEGIN"),
        cc("SET"),
        cc("SAVEPOINT"),
        cc("ROLLBACK"),
        cc("COMMIT"),
        rfq(TxStatus::Idle),
    ]);
    assert_eq!(h.params.set().get("search_path"), None);
    let sql = ParamSet::default()
        .diff_sql(&h.srv.applied)
        .expect("a reset is due");
    assert!(
        sql.starts_with("SET SESSION AUTHORIZATION DEFAULT;RESET ALL;"),
        "{sql}"
    );
    // an implicit transaction that fails after a SET: nothing is kept
    let mut h = Harness::new(true);
    h.client(
        &reg,
        &[F::Query("SET work_mem = '64MB'; SELECT 1/0".into())],
    );
    let err = wire::ErrorFields::new(wire::Severity::Error, "22012", "division by zero");
    h.server(&[cc("SET"), B::ErrorResponse(err), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("work_mem"), None);
    assert!(ParamSet::default()
        .diff_sql(&h.srv.applied)
        .unwrap()
        .starts_with("SET SESSION AUTHORIZATION DEFAULT;RESET ALL;"));
}

#[test]
fn awaits_server_only_when_the_server_can_answer_alone() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    assert!(!h.relay.awaits_server(), "nothing owed");
    // A simple query: the server answers without more input.
    h.client(&reg, &[F::Query("select 1".into())]);
    assert!(h.relay.awaits_server());
    h.server(&[cc("SELECT 1"), rfq(TxStatus::Idle)]);
    assert!(!h.relay.awaits_server());
    // Extended messages without Sync or Flush: the server waits for the
    // client, so the client must be read.
    h.client(&reg, &[parse("", "select 1"), bind(""), exec()]);
    assert!(!h.relay.awaits_server());
    h.client(&reg, &[F::Flush]);
    assert!(h.relay.awaits_server());
    h.server(&[B::ParseComplete, B::BindComplete, cc("SELECT 1")]);
    assert!(!h.relay.awaits_server(), "all flushed requests answered");
    h.client(&reg, &[F::Sync]);
    assert!(h.relay.awaits_server());
    h.server(&[rfq(TxStatus::Idle)]);
    // COPY FROM STDIN: the server waits for the client's data.
    h.client(&reg, &[F::Query("copy t from stdin".into())]);
    assert!(h.relay.awaits_server());
    h.server(&[B::CopyInResponse {
        format: 0,
        column_formats: vec![],
    }]);
    assert!(!h.relay.awaits_server());
}

#[test]
fn role_survives_reset_all_and_unmodelled_statements_force_a_cleanup() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[F::Query("SET ROLE app".into())]);
    h.server(&[cc("SET"), rfq(TxStatus::Idle)]);
    h.client(&reg, &[F::Query("RESET ALL".into())]);
    h.server(&[cc("RESET"), rfq(TxStatus::Idle)]);
    // PostgreSQL keeps the role through RESET ALL: so does the model, on
    // both sides, and the next client of this server gets RESET ROLE.
    assert_eq!(h.params.set().get("role"), Some("app"));
    assert_eq!(h.srv.applied.get("role"), Some("app"));
    assert_eq!(
        ParamSet::default().diff_sql(&h.srv.applied).as_deref(),
        Some("RESET role;")
    );
    // DISCARD ALL ends the role too.
    h.client(&reg, &[F::Query("DISCARD ALL".into())]);
    h.server(&[cc("DISCARD ALL"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("role"), None);
    assert_eq!(h.srv.applied.get("role"), None);
    // SET SESSION AUTHORIZATION is not modelled: the server is cleaned up
    // (including the authorization) before another client uses it.
    h.client(&reg, &[F::Query("SET SESSION AUTHORIZATION other".into())]);
    h.server(&[cc("SET"), rfq(TxStatus::Idle)]);
    let sql = ParamSet::default()
        .diff_sql(&h.srv.applied)
        .expect("a cleanup is due");
    assert!(
        sql.starts_with("SET SESSION AUTHORIZATION DEFAULT;RESET ALL;"),
        "{sql}"
    );
}

#[test]
fn reset_goes_back_to_the_startup_value() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    let mut startup = ParamSet::default();
    startup.apply(&ParamChange::Set {
        name: "search_path".into(),
        value: "tenant1".into(),
    });
    h.params = ClientParams::new(startup);
    h.client(&reg, &[F::Query("SET search_path = other".into())]);
    h.server(&[cc("SET"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("search_path"), Some("other"));
    h.client(&reg, &[F::Query("RESET search_path".into())]);
    h.server(&[cc("RESET"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("search_path"), Some("tenant1"));
    h.client(
        &reg,
        &[F::Query("SET search_path = other; DISCARD ALL".into())],
    );
    h.server(&[cc("SET"), cc("DISCARD ALL"), rfq(TxStatus::Idle)]);
    assert_eq!(h.params.set().get("search_path"), Some("tenant1"));
    // The server went back to its own default: the next transaction
    // brings it in line again.
    assert_eq!(h.srv.applied.get("search_path"), None);
    assert_eq!(
        h.params.set().diff_sql(&h.srv.applied).as_deref(),
        Some("SET search_path = tenant1;")
    );
}

#[test]
fn the_registry_forgets_statements_no_client_holds() {
    let reg = Registry::default();
    let held = reg.get(b"select 0\0\0\0", b"select 0", Strings::Standard, false);
    for i in 1..=3 * REGISTRY_SWEEP_AT {
        let q = format!("select {i}");
        let mut body = q.clone().into_bytes();
        body.extend_from_slice(&[0, 0, 0]);
        drop(reg.get(&body, q.as_bytes(), Strings::Standard, false));
    }
    assert!(reg.len() <= REGISTRY_SWEEP_AT, "{}", reg.len());
    // a statement a client holds keeps its name
    let again = reg.get(b"select 0\0\0\0", b"select 0", Strings::Standard, false);
    assert_eq!(again.server_name, held.server_name);
}

#[test]
fn large_rows_are_passed_on_as_they_arrive() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[F::Query("select big".into())]);
    let big = vec![b'x'; 3 * STREAM_ABOVE];
    let all = enc_b(&[
        B::DataRow(vec![Some(Bytes::from(big.clone()))]),
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    // the row arrives in pieces; each piece is passed on at once and
    // nothing of it is kept
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    for piece in all.chunks(STREAM_ABOVE / 2 + 7) {
        input.extend_from_slice(piece);
        h.relay
            .server_messages(&mut input, &mut out, &mut h.srv, &mut h.params)
            .unwrap();
        assert!(input.len() < 64, "{} bytes held back", input.len());
        assert_eq!(&out[..], &all[..out.len()]);
    }
    assert!(input.is_empty());
    assert_eq!(out.len(), all.len());
    assert!(!h.relay.awaits_server(), "the query is answered");
}

#[test]
fn deallocate_of_a_rewritten_statement_is_answered_by_the_proxy() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("_pg3_0", "select $1"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    // psycopg (libpq < 17) drops a statement with SQL DEALLOCATE: the
    // server only knows the proxy-wide name, so the proxy answers
    let (s, c) = h.client(&reg, &[F::Query("DEALLOCATE _pg3_0".into())]);
    assert_eq!(tags(&s), "");
    assert_eq!(tags(&c), "CZ");
    assert!(!h.relay.in_transaction());
    assert_eq!(h.relay.prepared_count(), 0);
    // a name it does not know (SQL PREPARE, or a typo) goes to the server
    let (s, c) = h.client(&reg, &[F::Query("DEALLOCATE _pg3_0".into())]);
    assert_eq!(tags(&s), "Q");
    assert_eq!(tags(&c), "");
    h.server(&[rfq(TxStatus::Idle)]);
    // behind a pipelined query, the answer keeps its place
    h.client(&reg, &[parse("a", "select 2"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    let (s, c) = h.client(
        &reg,
        &[F::Query("select 1".into()), F::Query("DEALLOCATE a".into())],
    );
    assert_eq!((tags(&s).as_str(), tags(&c).as_str()), ("Q", ""));
    let out = h.server(&[cc("SELECT 1"), rfq(TxStatus::Idle)]);
    assert_eq!(tags(&out), "CZCZ");
    // in a failed transaction the server refuses it (25P02) and the name stays
    h.client(&reg, &[parse("b", "select 3"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    h.client(&reg, &[F::Query("BEGIN; SELECT 1/0".into())]);
    let err = wire::ErrorFields::new(wire::Severity::Error, "22012", "division by zero");
    h.server(&[cc("BEGIN"), B::ErrorResponse(err), rfq(TxStatus::Failed)]);
    let (s, c) = h.client(&reg, &[F::Query("DEALLOCATE b".into())]);
    assert_eq!((tags(&s).as_str(), tags(&c).as_str()), ("Q", ""));
    assert_eq!(h.relay.prepared_count(), 1);
}

#[test]
fn extended_protocol_deallocate_of_a_rewritten_statement_is_answered_by_the_proxy() {
    let reg = Registry::default();
    let mut h = Harness::new(true);
    h.client(&reg, &[parse("_pg3_0", "select $1"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    // psycopg in pipeline mode before libpq 17: DEALLOCATE as an unnamed
    // extended-protocol statement, pipelined behind another query
    let describe = |target| F::Describe {
        target,
        name: "".into(),
    };
    let (s, c) = h.client(
        &reg,
        &[
            parse("", "select 7"),
            bind(""),
            exec(),
            parse("", "DEALLOCATE _pg3_0"),
            bind(""),
            describe(wire::frontend::Target::Portal),
            exec(),
            F::Sync,
        ],
    );
    // only the first statement and the Sync reach the server
    assert_eq!(tags(&s), "PBES");
    assert_eq!(tags(&c), "");
    let out = h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    // the proxy's answers take their place in the stream
    assert_eq!(tags(&out), "12C12nCZ");
    assert_eq!(h.relay.prepared_count(), 0);
    assert!(!h.relay.in_transaction());
    // the next unnamed statement is a real one again
    let (s, _) = h.client(&reg, &[parse("", "select 8"), bind(""), exec(), F::Sync]);
    assert_eq!(tags(&s), "PBES");
    h.server(&[
        B::ParseComplete,
        B::BindComplete,
        cc("SELECT 1"),
        rfq(TxStatus::Idle),
    ]);
    // and so is the unnamed portal once a named statement is bound to it
    h.client(&reg, &[parse("_pg3_1", "select 9"), F::Sync]);
    h.server(&[B::ParseComplete, rfq(TxStatus::Idle)]);
    let (s, c) = h.client(
        &reg,
        &[
            parse("", "DEALLOCATE _pg3_1"),
            bind(""),
            parse("_pg3_2", "select 10"),
            bind("_pg3_2"),
            describe(wire::frontend::Target::Portal),
            exec(),
            F::Sync,
        ],
    );
    assert_eq!(tags(&s), "PBDES");
    assert_eq!(tags(&c), "12");
}

#[path = "tests_pipeline.rs"]
mod pipeline;
