//! Messages sent by a server (backend) to a client.
use bytes::{BufMut, Bytes, BytesMut};

use crate::cursor::Cursor;
use crate::fields::ErrorFields;
use crate::frame::{put_cstr, write_message};
use crate::ProtocolError;

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// The authentication request kinds of an 'R' message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    KerberosV5,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Gss,
    GssContinue(Bytes),
    Sspi,
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

impl Column {
    /// A text column of type `text` (oid 25), as the admin console returns.
    pub fn text(name: &str) -> Self {
        Column {
            name: name.to_owned(),
            table_oid: 0,
            column: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }
    /// A text-format column of type `int8` (oid 20).
    pub fn int8(name: &str) -> Self {
        Column {
            type_oid: 20,
            type_size: 8,
            ..Column::text(name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    BackendKeyData {
        pid: i32,
        secret: i32,
    },
    BindComplete,
    CloseComplete,
    CommandComplete(String),
    CopyData(Bytes),
    CopyDone,
    CopyInResponse {
        format: i8,
        column_formats: Vec<i16>,
    },
    CopyOutResponse {
        format: i8,
        column_formats: Vec<i16>,
    },
    CopyBothResponse {
        format: i8,
        column_formats: Vec<i16>,
    },
    DataRow(Vec<Option<Bytes>>),
    EmptyQueryResponse,
    ErrorResponse(ErrorFields),
    FunctionCallResponse(Option<Bytes>),
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized: Vec<String>,
    },
    NoData,
    NoticeResponse(ErrorFields),
    NotificationResponse {
        pid: i32,
        channel: String,
        payload: String,
    },
    ParameterDescription(Vec<u32>),
    ParameterStatus {
        name: String,
        value: String,
    },
    ParseComplete,
    PortalSuspended,
    ReadyForQuery(TxStatus),
    RowDescription(Vec<Column>),
}

impl BackendMessage {
    /// Decodes a whole message body with its tag.
    pub fn decode(tag: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            b'R' => BackendMessage::Authentication(decode_auth(&mut c)?),
            b'K' => BackendMessage::BackendKeyData {
                pid: c.i32("pid")?,
                secret: c.i32("secret key")?,
            },
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'C' => BackendMessage::CommandComplete(c.cstr()?.to_owned()),
            b'd' => BackendMessage::CopyData(Bytes::copy_from_slice(c.rest())),
            b'c' => BackendMessage::CopyDone,
            b'G' | b'H' | b'W' => {
                let format = c.u8("copy format")? as i8;
                let n = c.count16("column count")?;
                if c.remaining() < n * 2 {
                    return Err(ProtocolError::Truncated {
                        tag: char::from(tag),
                        what: "column formats",
                    });
                }
                let column_formats = (0..n)
                    .map(|_| c.i16("format"))
                    .collect::<Result<Vec<_>, _>>()?;
                match tag {
                    b'G' => BackendMessage::CopyInResponse {
                        format,
                        column_formats,
                    },
                    b'H' => BackendMessage::CopyOutResponse {
                        format,
                        column_formats,
                    },
                    _ => BackendMessage::CopyBothResponse {
                        format,
                        column_formats,
                    },
                }
            }
            b'D' => {
                let n = c.count16("column count")?;
                if c.remaining() < n * 4 {
                    return Err(ProtocolError::Truncated {
                        tag: 'D',
                        what: "columns",
                    });
                }
                let mut cols = Vec::with_capacity(n);
                for _ in 0..n {
                    cols.push(nullable_bytes(&mut c, "column")?);
                }
                BackendMessage::DataRow(cols)
            }
            b'I' => BackendMessage::EmptyQueryResponse,
            b'E' => BackendMessage::ErrorResponse(ErrorFields::decode_from(&mut c)?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::decode_from(&mut c)?),
            b'V' => BackendMessage::FunctionCallResponse(nullable_bytes(&mut c, "result")?),
            b'v' => {
                let newest_minor = c.i32("minor version")?;
                let n = c.i32("option count")?;
                if n < 0 {
                    return Err(ProtocolError::NegativeCount {
                        tag: 'v',
                        count: n.into(),
                    });
                }
                let mut unrecognized = Vec::new();
                for _ in 0..n {
                    unrecognized.push(c.cstr()?.to_owned());
                }
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                }
            }
            b'n' => BackendMessage::NoData,
            b'A' => BackendMessage::NotificationResponse {
                pid: c.i32("pid")?,
                channel: c.cstr()?.to_owned(),
                payload: c.cstr()?.to_owned(),
            },
            b't' => {
                let n = c.count16("parameter count")?;
                if c.remaining() < n * 4 {
                    return Err(ProtocolError::Truncated {
                        tag: 't',
                        what: "parameter types",
                    });
                }
                BackendMessage::ParameterDescription(
                    (0..n)
                        .map(|_| c.i32("type").map(|t| t as u32))
                        .collect::<Result<_, _>>()?,
                )
            }
            b'S' => BackendMessage::ParameterStatus {
                name: c.cstr()?.to_owned(),
                value: c.cstr()?.to_owned(),
            },
            b'1' => BackendMessage::ParseComplete,
            b's' => BackendMessage::PortalSuspended,
            b'Z' => {
                let b = c.u8("transaction status")?;
                BackendMessage::ReadyForQuery(TxStatus::from_byte(b).ok_or(
                    ProtocolError::BadValue {
                        tag: 'Z',
                        what: "transaction status must be I, T or E",
                    },
                )?)
            }
            b'T' => {
                let n = c.count16("field count")?;
                let mut cols = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    cols.push(Column {
                        name: c.cstr()?.to_owned(),
                        table_oid: c.i32("table oid")? as u32,
                        column: c.i16("column number")?,
                        type_oid: c.i32("type oid")? as u32,
                        type_size: c.i16("type size")?,
                        type_modifier: c.i32("type modifier")?,
                        format: c.i16("format")?,
                    });
                }
                BackendMessage::RowDescription(cols)
            }
            other => return Err(ProtocolError::UnknownTag(other)),
        };
        c.finish()?;
        Ok(msg)
    }

    /// Appends the encoded message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            BackendMessage::Authentication(a) => write_message(buf, b'R', |b| encode_auth(a, b)),
            BackendMessage::BackendKeyData { pid, secret } => write_message(buf, b'K', |b| {
                b.put_i32(*pid);
                b.put_i32(*secret);
            }),
            BackendMessage::BindComplete => write_message(buf, b'2', |_| {}),
            BackendMessage::CloseComplete => write_message(buf, b'3', |_| {}),
            BackendMessage::CommandComplete(t) => write_message(buf, b'C', |b| put_cstr(b, t)),
            BackendMessage::CopyData(d) => write_message(buf, b'd', |b| b.put_slice(d)),
            BackendMessage::CopyDone => write_message(buf, b'c', |_| {}),
            BackendMessage::CopyInResponse {
                format,
                column_formats,
            }
            | BackendMessage::CopyOutResponse {
                format,
                column_formats,
            }
            | BackendMessage::CopyBothResponse {
                format,
                column_formats,
            } => {
                let tag = match self {
                    BackendMessage::CopyInResponse { .. } => b'G',
                    BackendMessage::CopyOutResponse { .. } => b'H',
                    _ => b'W',
                };
                write_message(buf, tag, |b| {
                    b.put_i8(*format);
                    b.put_i16(column_formats.len() as i16);
                    for f in column_formats {
                        b.put_i16(*f);
                    }
                })
            }
            BackendMessage::DataRow(cols) => write_message(buf, b'D', |b| {
                b.put_i16(cols.len() as i16);
                for col in cols {
                    put_nullable(b, col.as_deref());
                }
            }),
            BackendMessage::EmptyQueryResponse => write_message(buf, b'I', |_| {}),
            BackendMessage::ErrorResponse(f) => write_message(buf, b'E', |b| f.encode_into(b)),
            BackendMessage::NoticeResponse(f) => write_message(buf, b'N', |b| f.encode_into(b)),
            BackendMessage::FunctionCallResponse(v) => {
                write_message(buf, b'V', |b| put_nullable(b, v.as_deref()))
            }
            BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => write_message(buf, b'v', |b| {
                b.put_i32(*newest_minor);
                b.put_i32(unrecognized.len() as i32);
                for o in unrecognized {
                    put_cstr(b, o);
                }
            }),
            BackendMessage::NoData => write_message(buf, b'n', |_| {}),
            BackendMessage::NotificationResponse {
                pid,
                channel,
                payload,
            } => write_message(buf, b'A', |b| {
                b.put_i32(*pid);
                put_cstr(b, channel);
                put_cstr(b, payload);
            }),
            BackendMessage::ParameterDescription(types) => write_message(buf, b't', |b| {
                b.put_i16(types.len() as i16);
                for t in types {
                    b.put_u32(*t);
                }
            }),
            BackendMessage::ParameterStatus { name, value } => write_message(buf, b'S', |b| {
                put_cstr(b, name);
                put_cstr(b, value);
            }),
            BackendMessage::ParseComplete => write_message(buf, b'1', |_| {}),
            BackendMessage::PortalSuspended => write_message(buf, b's', |_| {}),
            BackendMessage::ReadyForQuery(s) => write_message(buf, b'Z', |b| b.put_u8(s.byte())),
            BackendMessage::RowDescription(cols) => write_message(buf, b'T', |b| {
                b.put_i16(cols.len() as i16);
                for c in cols {
                    put_cstr(b, &c.name);
                    b.put_u32(c.table_oid);
                    b.put_i16(c.column);
                    b.put_u32(c.type_oid);
                    b.put_i16(c.type_size);
                    b.put_i32(c.type_modifier);
                    b.put_i16(c.format);
                }
            }),
        }
    }
}

fn nullable_bytes(c: &mut Cursor<'_>, what: &'static str) -> Result<Option<Bytes>, ProtocolError> {
    let len = c.i32(what)?;
    if len == -1 {
        Ok(None)
    } else if len < 0 {
        Err(ProtocolError::NegativeCount {
            tag: 'D',
            count: len.into(),
        })
    } else {
        Ok(Some(Bytes::copy_from_slice(c.bytes(len as usize, what)?)))
    }
}

fn put_nullable(b: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => b.put_i32(-1),
        Some(v) => {
            b.put_i32(v.len() as i32);
            b.put_slice(v);
        }
    }
}

fn decode_auth(c: &mut Cursor<'_>) -> Result<Authentication, ProtocolError> {
    Ok(match c.i32("authentication kind")? {
        0 => Authentication::Ok,
        2 => Authentication::KerberosV5,
        3 => Authentication::CleartextPassword,
        5 => {
            let s = c.bytes(4, "md5 salt")?;
            Authentication::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        7 => Authentication::Gss,
        8 => Authentication::GssContinue(Bytes::copy_from_slice(c.rest())),
        9 => Authentication::Sspi,
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = c.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m.to_owned());
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(Bytes::copy_from_slice(c.rest())),
        12 => Authentication::SaslFinal(Bytes::copy_from_slice(c.rest())),
        _ => {
            return Err(ProtocolError::BadValue {
                tag: 'R',
                what: "unknown authentication request",
            })
        }
    })
}

fn encode_auth(a: &Authentication, b: &mut BytesMut) {
    match a {
        Authentication::Ok => b.put_i32(0),
        Authentication::KerberosV5 => b.put_i32(2),
        Authentication::CleartextPassword => b.put_i32(3),
        Authentication::Md5Password { salt } => {
            b.put_i32(5);
            b.put_slice(salt);
        }
        Authentication::Gss => b.put_i32(7),
        Authentication::GssContinue(d) => {
            b.put_i32(8);
            b.put_slice(d);
        }
        Authentication::Sspi => b.put_i32(9),
        Authentication::Sasl { mechanisms } => {
            b.put_i32(10);
            for m in mechanisms {
                put_cstr(b, m);
            }
            b.put_u8(0);
        }
        Authentication::SaslContinue(d) => {
            b.put_i32(11);
            b.put_slice(d);
        }
        Authentication::SaslFinal(d) => {
            b.put_i32(12);
            b.put_slice(d);
        }
    }
}

/// Reads the command tag of a CommandComplete body without copying.
/// CommandComplete tag as bytes, without UTF-8 validation (data path).
pub fn command_tag_bytes(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match memchr::memchr(0, body) {
        Some(i) if i + 1 == body.len() => Ok(&body[..i]),
        Some(i) => Err(ProtocolError::TrailingBytes {
            tag: 'C',
            extra: body.len() - i - 1,
        }),
        None => Err(ProtocolError::UnterminatedString { tag: 'C' }),
    }
}

pub fn command_tag(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut c = Cursor::new(b'C', body);
    let t = c.cstr()?;
    c.finish()?;
    Ok(t)
}

#[cfg(test)]
mod tests;
