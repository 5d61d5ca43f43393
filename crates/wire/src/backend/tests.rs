use super::*;
use crate::fields::{ErrorFields, Severity};
use crate::frame::split_message;

fn roundtrip(m: BackendMessage) {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    let (h, body) = split_message(&b, 1 << 20).unwrap().unwrap();
    assert_eq!(BackendMessage::decode(h.tag, body).unwrap(), m);
}

#[test]
fn every_message_roundtrips() {
    use Authentication as A;
    for a in [
        A::Ok,
        A::CleartextPassword,
        A::Md5Password { salt: [1, 2, 3, 4] },
        A::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()],
        },
        A::SaslContinue(Bytes::from_static(b"r=x,s=y,i=1")),
        A::SaslFinal(Bytes::from_static(b"v=abc")),
        A::Gss,
        A::Sspi,
        A::KerberosV5,
    ] {
        roundtrip(BackendMessage::Authentication(a));
    }
    roundtrip(BackendMessage::BackendKeyData { pid: 1, secret: 2 });
    roundtrip(BackendMessage::BindComplete);
    roundtrip(BackendMessage::CloseComplete);
    roundtrip(BackendMessage::CommandComplete("SELECT 1".into()));
    roundtrip(BackendMessage::CopyData(Bytes::from_static(b"x")));
    roundtrip(BackendMessage::CopyDone);
    roundtrip(BackendMessage::CopyInResponse {
        format: 0,
        column_formats: vec![0, 0],
    });
    roundtrip(BackendMessage::CopyOutResponse {
        format: 1,
        column_formats: vec![1],
    });
    roundtrip(BackendMessage::CopyBothResponse {
        format: 0,
        column_formats: vec![],
    });
    roundtrip(BackendMessage::DataRow(vec![
        Some(Bytes::from_static(b"1")),
        None,
    ]));
    roundtrip(BackendMessage::EmptyQueryResponse);
    let full = ErrorFields::new(Severity::Error, "23505", "duplicate key")
        .with(b'D', "Key (id)=(1) already exists.")
        .with(b'H', "hint")
        .with(b'P', "5")
        .with(b'p', "3")
        .with(b'q', "internal query")
        .with(b'W', "where")
        .with(b's', "public")
        .with(b't', "t")
        .with(b'c', "id")
        .with(b'd', "int4")
        .with(b'n', "t_pkey")
        .with(b'F', "nbtinsert.c")
        .with(b'L', "664")
        .with(b'R', "_bt_check_unique");
    roundtrip(BackendMessage::ErrorResponse(full.clone()));
    roundtrip(BackendMessage::NoticeResponse(full));
    roundtrip(BackendMessage::FunctionCallResponse(None));
    roundtrip(BackendMessage::NegotiateProtocolVersion {
        newest_minor: 0,
        unrecognized: vec!["_pq_.x".into()],
    });
    roundtrip(BackendMessage::NoData);
    roundtrip(BackendMessage::NotificationResponse {
        pid: 9,
        channel: "c".into(),
        payload: "p".into(),
    });
    roundtrip(BackendMessage::ParameterDescription(vec![23, 25]));
    roundtrip(BackendMessage::ParameterStatus {
        name: "TimeZone".into(),
        value: "UTC".into(),
    });
    roundtrip(BackendMessage::ParseComplete);
    roundtrip(BackendMessage::PortalSuspended);
    roundtrip(BackendMessage::ReadyForQuery(TxStatus::InTransaction));
    roundtrip(BackendMessage::RowDescription(vec![
        Column::text("a"),
        Column::int8("b"),
    ]));
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(BackendMessage::decode(b'Z', b"Q").is_err());
    assert!(BackendMessage::decode(b'R', b"\0\0\0\x05ab").is_err());
    assert!(BackendMessage::decode(b'D', b"\0\x01\xff\xff\xff\xfe").is_err());
    assert!(BackendMessage::decode(b'T', b"\0\x01a\0").is_err());
    assert!(BackendMessage::decode(b'E', b"Sx").is_err());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn decoder_never_panics(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BackendMessage::decode(tag, &body);
            let _ = command_tag(&body);
        }
    }
}
