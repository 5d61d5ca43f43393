//! Property-based fuzzing of everything the proxy decodes from the network,
//! through the crate's public API: byte streams cut at random places,
//! startup packets with every protocol code, SCRAM exchanges, and valid
//! messages of both directions with bytes changed. Each property only
//! requires "an answer or a clear error, never a panic", and that valid
//! input still decodes.
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wire::backend::{BackendMessage, TxStatus};
use wire::frame::split_message;
use wire::frontend::{Bind, FrontendMessage, Parse};
use wire::scram::{ScramServer, Verifier};
use wire::startup::StartupPacket;
use wire::{ErrorFields, Severity};

const MAX_BODY: usize = 1 << 16;

fn frontend_samples() -> Vec<FrontendMessage> {
    vec![
        FrontendMessage::Query("select $1, 'x'".into()),
        FrontendMessage::Parse(Parse {
            name: "s1".into(),
            query: "select $1::int".into(),
            param_types: vec![23],
        }),
        FrontendMessage::Bind(Bind {
            portal: "p".into(),
            statement: "s1".into(),
            param_formats: vec![1],
            params: vec![Some(Bytes::from_static(&[0, 0, 0, 7])), None],
            result_formats: vec![0, 1],
        }),
        FrontendMessage::Execute {
            portal: "p".into(),
            max_rows: 10,
        },
        FrontendMessage::Sync,
        FrontendMessage::Flush,
        FrontendMessage::Terminate,
        FrontendMessage::CopyData(Bytes::from_static(b"1\tx\n")),
        FrontendMessage::CopyDone,
        FrontendMessage::CopyFail("stop".into()),
    ]
}

fn backend_samples() -> Vec<BackendMessage> {
    let err = ErrorFields::new(Severity::Error, "42P01", "relation \"t\" does not exist")
        .with(b'D', "detail");
    vec![
        BackendMessage::ErrorResponse(err.clone()),
        BackendMessage::NoticeResponse(err),
        BackendMessage::DataRow(vec![Some(Bytes::from_static(b"42")), None]),
        BackendMessage::CommandComplete("SELECT 1".into()),
        BackendMessage::ReadyForQuery(TxStatus::InTransaction),
        BackendMessage::ParameterStatus {
            name: "TimeZone".into(),
            value: "UTC".into(),
        },
        BackendMessage::BackendKeyData { pid: 7, secret: 9 },
    ]
}

/// Decodes every whole message of a stream, the way a connection reads.
fn drain<T>(mut buf: &[u8], decode: impl Fn(u8, &[u8]) -> Result<T, wire::ProtocolError>) -> usize {
    let mut n = 0;
    while let Ok(Some((h, body))) = split_message(buf, MAX_BODY) {
        let _ = decode(h.tag, body);
        buf = &buf[h.total_len()..];
        n += 1;
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// A stream of valid client messages, some bytes changed and cut short:
    /// every message decodes or errs; untouched streams decode whole.
    #[test]
    fn frontend_streams(picks in proptest::collection::vec(0usize..10, 1..12),
                        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                        cut in any::<usize>()) {
        let samples = frontend_samples();
        let mut b = BytesMut::new();
        for &i in &picks {
            samples[i].encode(&mut b);
        }
        if flips.is_empty() {
            prop_assert_eq!(drain(&b, FrontendMessage::decode), picks.len());
        }
        for (at, v) in flips {
            let i = at % b.len();
            b[i] = v;
        }
        let end = cut % (b.len() + 1);
        drain(&b[..end], FrontendMessage::decode);
    }

    /// The same for server messages.
    #[test]
    fn backend_streams(picks in proptest::collection::vec(0usize..7, 1..12),
                       flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                       cut in any::<usize>()) {
        let samples = backend_samples();
        let mut b = BytesMut::new();
        for &i in &picks {
            samples[i].encode(&mut b);
        }
        if flips.is_empty() {
            prop_assert_eq!(drain(&b, BackendMessage::decode), picks.len());
        }
        for (at, v) in flips {
            let i = at % b.len();
            b[i] = v;
        }
        let end = cut % (b.len() + 1);
        drain(&b[..end], BackendMessage::decode);
    }

    /// Startup packets: every request code, any parameters, any length word.
    #[test]
    fn startup_packets(code in prop_oneof![
                           Just(196_608u32), Just(80_877_103), Just(80_877_104),
                           Just(80_877_102), Just(131_072), any::<u32>()],
                       body in proptest::collection::vec(any::<u8>(), 0..512),
                       len_delta in -8i64..8) {
        let len = (body.len() as i64 + 8 + len_delta).max(0) as u32;
        let mut p = len.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(&body);
        if let Ok(Some((_, used))) = StartupPacket::decode(&p) {
            prop_assert!(used <= p.len());
        }
    }

    /// Startup parameters made of printable words decode as written.
    #[test]
    fn startup_parameters_round_trip(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..6)) {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        let mut want = Vec::new();
        for (k, v) in &params {
            if want.iter().any(|(n, _): &(String, String)| n == k) {
                continue;
            }
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
            want.push((k.clone(), v.clone()));
        }
        body.push(0);
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        match StartupPacket::decode(&p) {
            Ok(Some((StartupPacket::Startup { params, .. }, used))) => {
                prop_assert_eq!(used, p.len());
                prop_assert_eq!(params, want);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A SCRAM server fed anything at either step errs, never panics.
    #[test]
    fn scram_server_inputs(first in prop_oneof![
                               "n,,n=[a-z]{0,8},r=[ -~]{0,40}".prop_map(String::into_bytes),
                               "[ -~]{0,80}".prop_map(String::into_bytes),
                               proptest::collection::vec(any::<u8>(), 0..120)],
                           last in prop_oneof![
                               "c=biws,r=[ -~]{0,60},p=[A-Za-z0-9+/=]{0,60}".prop_map(String::into_bytes),
                               proptest::collection::vec(any::<u8>(), 0..160)]) {
        let mut s = ScramServer::new(Verifier::mock(b"fuzz", "u"));
        if s.client_first(&first).is_ok() {
            let _ = s.client_final(&last);
        }
        let _ = Verifier::parse(&String::from_utf8_lossy(&first));
    }
}
