//! The first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. It has no tag byte, only a length.
use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::frame::{put_cstr, MAX_STARTUP_LEN};
use crate::ProtocolError;

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Protocol 3.x startup with its parameters (user, database, options...).
    /// `minor` above 0 and `_pq_.` options must be answered with
    /// NegotiateProtocolVersion.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
}

impl StartupPacket {
    /// Decodes the packet at the start of `buf`; returns it with the number
    /// of bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 || len as usize > MAX_STARTUP_LEN {
            return Err(ProtocolError::BadLength {
                len: len.into(),
                max: MAX_STARTUP_LEN,
            });
        }
        let len = len as usize;
        if buf.len() < len {
            return Ok(None);
        }
        let mut c = Cursor::new(0, &buf[4..len]);
        let code = c.i32("protocol version")?;
        let pkt = match code {
            SSL_REQUEST => StartupPacket::SslRequest,
            GSSENC_REQUEST => StartupPacket::GssEncRequest,
            CANCEL_REQUEST => StartupPacket::Cancel {
                pid: c.i32("pid")?,
                secret: c.i32("secret")?,
            },
            v => {
                let (major, minor) = ((v >> 16) as u16, (v & 0xffff) as u16);
                if major != 3 {
                    return Err(ProtocolError::UnsupportedProtocol { major, minor });
                }
                // libpq sends a handful of parameters: no regrowing.
                let mut params = Vec::with_capacity(8);
                loop {
                    let k = c.cstr().map_err(|_| {
                        ProtocolError::BadStartup("parameter name is not terminated or not UTF-8")
                    })?;
                    if k.is_empty() {
                        break;
                    }
                    let v = c.cbytes().map_err(|_| {
                        ProtocolError::BadStartup("parameter value is not terminated")
                    })?;
                    let v = match std::str::from_utf8(v) {
                        Ok(v) => v.to_owned(),
                        // PostgreSQL keeps only printable ASCII of an
                        // application name (pg_clean_ascii): a name in the
                        // client's own encoding (a LATIN1 PGAPPNAME) logs
                        // in, with '?' for the other bytes, as it does there.
                        Err(_) if k == "application_name" => clean_ascii(v),
                        Err(_) => {
                            return Err(ProtocolError::BadStartup("parameter value is not UTF-8"))
                        }
                    };
                    params.push((k.to_owned(), v));
                }
                StartupPacket::Startup { minor, params }
            }
        };
        if c.remaining() != 0 {
            return Err(ProtocolError::BadStartup(
                "trailing bytes after the startup packet",
            ));
        }
        Ok(Some((pkt, len)))
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let at = buf.len();
        buf.put_i32(0);
        match self {
            StartupPacket::SslRequest => buf.put_i32(SSL_REQUEST),
            StartupPacket::GssEncRequest => buf.put_i32(GSSENC_REQUEST),
            StartupPacket::Cancel { pid, secret } => {
                buf.put_i32(CANCEL_REQUEST);
                buf.put_i32(*pid);
                buf.put_i32(*secret);
            }
            StartupPacket::Startup { minor, params } => {
                buf.put_i32(PROTOCOL_3_0 | i32::from(*minor));
                for (k, v) in params {
                    put_cstr(buf, k);
                    put_cstr(buf, v);
                }
                buf.put_u8(0);
            }
        }
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Printable ASCII kept, every other byte made '?' (`pg_clean_ascii` in
/// PostgreSQL 15).
fn clean_ascii(b: &[u8]) -> String {
    b.iter()
        .map(|&b| {
            if (32..127).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_roundtrip() {
        let p = StartupPacket::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into()),
            ],
        };
        let mut b = BytesMut::new();
        p.encode(&mut b);
        assert_eq!(StartupPacket::decode(&b).unwrap(), Some((p, b.len())));
        for cut in 0..b.len() {
            assert_eq!(StartupPacket::decode(&b[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn special_requests() {
        for p in [
            StartupPacket::SslRequest,
            StartupPacket::GssEncRequest,
            StartupPacket::Cancel { pid: 7, secret: -3 },
        ] {
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(StartupPacket::decode(&b).unwrap().unwrap().0, p);
        }
    }

    fn packet(params: &[(&[u8], &[u8])]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(PROTOCOL_3_0);
        for (k, v) in params {
            body.put_slice(k);
            body.put_u8(0);
            body.put_slice(v);
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut b = BytesMut::new();
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(&body);
        b
    }

    /// An application name in another encoding is cleaned as PostgreSQL
    /// cleans it; any other parameter must be UTF-8.
    #[test]
    fn application_names_in_other_encodings_are_cleaned() {
        let b = packet(&[(b"user", b"u"), (b"application_name", b"caf\xe9 \x01x")]);
        let Some((StartupPacket::Startup { params, .. }, _)) = StartupPacket::decode(&b).unwrap()
        else {
            panic!("not a startup packet")
        };
        assert_eq!(params[1], ("application_name".into(), "caf? ?x".into()));
        // valid UTF-8 is kept as it is (the server cleans what it is sent)
        let b = packet(&[(b"application_name", "café".as_bytes())]);
        let Some((StartupPacket::Startup { params, .. }, _)) = StartupPacket::decode(&b).unwrap()
        else {
            panic!("not a startup packet")
        };
        assert_eq!(params[0].1, "café");
        for bad in [
            packet(&[(b"user", b"caf\xe9")]),
            packet(&[(b"search_path", b"\xff")]),
            packet(&[(b"appl\xe9", b"x")]),
        ] {
            assert!(matches!(
                StartupPacket::decode(&bad),
                Err(ProtocolError::BadStartup(_))
            ));
        }
    }

    #[test]
    fn rejects_bad_versions_and_lengths() {
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_i32(2 << 16);
        assert_eq!(
            StartupPacket::decode(&b),
            Err(ProtocolError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        let mut b = BytesMut::new();
        b.put_i32(100_000);
        assert!(matches!(
            StartupPacket::decode(&b),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut b = BytesMut::new();
        b.put_i32(3);
        assert!(StartupPacket::decode(&b).is_err());
        // parameters without the final terminator
        let mut b = BytesMut::new();
        b.put_i32(14);
        b.put_i32(PROTOCOL_3_0);
        b.put_slice(b"user\0x");
        assert!(matches!(
            StartupPacket::decode(&b),
            Err(ProtocolError::BadStartup(_))
        ));
    }
}
