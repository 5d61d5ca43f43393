use super::*;
use crate::frame::split_message;

fn roundtrip(m: FrontendMessage) {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    let (h, body) = split_message(&b, 1 << 20).unwrap().unwrap();
    assert_eq!(h.total_len(), b.len());
    assert_eq!(FrontendMessage::decode(h.tag, body).unwrap(), m);
    for cut in 0..b.len() {
        assert_eq!(split_message(&b[..cut], 1 << 20).unwrap(), None);
    }
}

#[test]
fn every_message_roundtrips() {
    roundtrip(FrontendMessage::Query("select 1".into()));
    roundtrip(FrontendMessage::Parse(Parse {
        name: "s1".into(),
        query: "select $1".into(),
        param_types: vec![23],
    }));
    roundtrip(FrontendMessage::Bind(Bind {
        portal: "".into(),
        statement: "s1".into(),
        param_formats: vec![0, 1],
        params: vec![Some(Bytes::from_static(b"42")), None],
        result_formats: vec![1],
    }));
    roundtrip(FrontendMessage::Describe {
        target: Target::Statement,
        name: "s1".into(),
    });
    roundtrip(FrontendMessage::Execute {
        portal: "p".into(),
        max_rows: 10,
    });
    roundtrip(FrontendMessage::Close {
        target: Target::Portal,
        name: "p".into(),
    });
    roundtrip(FrontendMessage::Sync);
    roundtrip(FrontendMessage::Flush);
    roundtrip(FrontendMessage::Terminate);
    roundtrip(FrontendMessage::CopyData(Bytes::from_static(b"1\t2\n")));
    roundtrip(FrontendMessage::CopyDone);
    roundtrip(FrontendMessage::CopyFail("oops".into()));
    roundtrip(FrontendMessage::Password(Bytes::from_static(b"pw\0")));
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(matches!(
        FrontendMessage::decode(b'Q', b"no terminator"),
        Err(ProtocolError::UnterminatedString { .. })
    ));
    assert!(matches!(
        FrontendMessage::decode(b'Q', b"a\0b"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    assert!(matches!(
        FrontendMessage::decode(b'D', b"X\0"),
        Err(ProtocolError::BadValue { .. })
    ));
    assert!(matches!(
        FrontendMessage::decode(b'B', b"\0\0\xff\xff"),
        Err(ProtocolError::NegativeCount { .. })
    ));
    assert!(matches!(
        FrontendMessage::decode(b'B', b"\0\0\0\x05"),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        FrontendMessage::decode(b'?', b""),
        Err(ProtocolError::UnknownTag(b'?'))
    ));
    assert!(matches!(
        FrontendMessage::decode(b'Q', b"\xff\0"),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
}

#[test]
fn header_limits() {
    assert!(matches!(
        crate::peek_header(b"Q\0\0\0\x03", 100),
        Err(ProtocolError::BadLength { .. })
    ));
    assert!(matches!(
        crate::peek_header(b"Q\x7f\0\0\0", 100),
        Err(ProtocolError::BadLength { .. })
    ));
    assert!(matches!(
        crate::peek_header(b"Q\xff\xff\xff\xff", 100),
        Err(ProtocolError::BadLength { .. })
    ));
    assert_eq!(
        crate::peek_header(b"Q\0\0\0\x04", 100)
            .unwrap()
            .unwrap()
            .body_len,
        0
    );
}

#[test]
fn borrowed_readers() {
    let mut b = BytesMut::new();
    FrontendMessage::Parse(Parse {
        name: "n".into(),
        query: "q".into(),
        param_types: vec![],
    })
    .encode(&mut b);
    let (n, q, used) = parse_name_and_query(&b[5..]).unwrap();
    assert_eq!((n, q, used), ("n", &b"q"[..], 4));
    // a query in another encoding than UTF-8 (LATIN1 'é')
    let (_, q, _) = parse_name_and_query(b"\0SELECT '\xe9'\0\0\0").unwrap();
    assert_eq!(q, b"SELECT '\xe9'");
    assert!(parse_name_and_query(b"\0q\0\0\x01").is_err());
    let mut b = BytesMut::new();
    encode_sasl_initial(&mut b, "SCRAM-SHA-256", b"n,,n=,r=x");
    assert_eq!(
        sasl_initial_response(&b[5..]).unwrap(),
        ("SCRAM-SHA-256", &b"n,,n=,r=x"[..])
    );
    assert!(sasl_initial_response(b"SCRAM\0\0\0\0\x09ab").is_err());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// No input makes any frontend decoder panic.
        #[test]
        fn decoders_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FrontendMessage::decode(tag, &body);
            let _ = bind_statement_name(&body);
            let _ = parse_name_and_query(&body);
            let _ = target_and_name(tag, &body);
            let _ = sasl_initial_response(&body);
            let _ = crate::startup::StartupPacket::decode(&body);
            let _ = crate::peek_header(&body, 1024);
        }

        /// Valid messages with bytes flipped still never panic.
        #[test]
        fn mutated_valid_messages(idx in any::<usize>(), val in any::<u8>(), which in 0usize..4) {
            let m = match which {
                0 => FrontendMessage::Bind(Bind { portal: "".into(), statement: "s".into(), param_formats: vec![0],
                     params: vec![Some(Bytes::from_static(b"abc"))], result_formats: vec![0] }),
                1 => FrontendMessage::Parse(Parse { name: "s".into(), query: "select $1".into(), param_types: vec![23, 25] }),
                2 => FrontendMessage::Describe { target: Target::Portal, name: "x".into() },
                _ => FrontendMessage::Execute { portal: "".into(), max_rows: 0 },
            };
            let mut b = BytesMut::new();
            m.encode(&mut b);
            let i = idx % b.len();
            b[i] = val;
            if let Ok(Some((h, body))) = split_message(&b, 1 << 16) {
                let _ = FrontendMessage::decode(h.tag, body);
            }
        }
    }
}
