//! Messages sent by a client (frontend) after the startup phase.
use bytes::{BufMut, Bytes, BytesMut};

use crate::cursor::Cursor;
use crate::frame::{put_cstr, write_message};
use crate::ProtocolError;

/// Target of Describe and Close: a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn decode(tag: u8, b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(ProtocolError::BadValue {
                tag: char::from(tag),
                what: "target must be 'S' or 'P'",
            }),
        }
    }
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

/// A frontend message. `Password` carries the raw body of a 'p' message,
/// whose meaning (password, SASLInitialResponse, SASLResponse) depends on the
/// authentication exchange in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    Parse(Parse),
    Bind(Bind),
    Describe { target: Target, name: String },
    Execute { portal: String, max_rows: i32 },
    Close { target: Target, name: String },
    Sync,
    Flush,
    Terminate,
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    FunctionCall(Bytes),
    Password(Bytes),
}

impl FrontendMessage {
    /// Decodes a whole message body with its tag.
    pub fn decode(tag: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            b'Q' => FrontendMessage::Query(c.cstr()?.to_owned()),
            b'P' => {
                let name = c.cstr()?.to_owned();
                let query = c.cstr()?.to_owned();
                let n = parameter_type_count(&mut c)?;
                let mut param_types = Vec::with_capacity(n);
                for _ in 0..n {
                    param_types.push(c.i32("parameter type")? as u32);
                }
                FrontendMessage::Parse(Parse {
                    name,
                    query,
                    param_types,
                })
            }
            b'B' => FrontendMessage::Bind(decode_bind(&mut c)?),
            b'D' => {
                let target = Target::decode(tag, c.u8("describe target")?)?;
                FrontendMessage::Describe {
                    target,
                    name: c.cstr()?.to_owned(),
                }
            }
            b'E' => {
                let portal = c.cstr()?.to_owned();
                FrontendMessage::Execute {
                    portal,
                    max_rows: c.i32("row limit")?,
                }
            }
            b'C' => {
                let target = Target::decode(tag, c.u8("close target")?)?;
                FrontendMessage::Close {
                    target,
                    name: c.cstr()?.to_owned(),
                }
            }
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'd' => FrontendMessage::CopyData(Bytes::copy_from_slice(c.rest())),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail(c.cstr()?.to_owned()),
            b'F' => FrontendMessage::FunctionCall(Bytes::copy_from_slice(c.rest())),
            b'p' => FrontendMessage::Password(Bytes::copy_from_slice(c.rest())),
            other => return Err(ProtocolError::UnknownTag(other)),
        };
        c.finish()?;
        Ok(msg)
    }

    /// Appends the encoded message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            FrontendMessage::Query(q) => write_message(buf, b'Q', |b| put_cstr(b, q)),
            FrontendMessage::Parse(p) => write_message(buf, b'P', |b| {
                put_cstr(b, &p.name);
                put_cstr(b, &p.query);
                b.put_i16(p.param_types.len() as i16);
                for t in &p.param_types {
                    b.put_u32(*t);
                }
            }),
            FrontendMessage::Bind(bind) => write_message(buf, b'B', |b| {
                put_cstr(b, &bind.portal);
                put_cstr(b, &bind.statement);
                b.put_i16(bind.param_formats.len() as i16);
                for f in &bind.param_formats {
                    b.put_i16(*f);
                }
                b.put_i16(bind.params.len() as i16);
                for p in &bind.params {
                    match p {
                        None => b.put_i32(-1),
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v);
                        }
                    }
                }
                b.put_i16(bind.result_formats.len() as i16);
                for f in &bind.result_formats {
                    b.put_i16(*f);
                }
            }),
            FrontendMessage::Describe { target, name } => write_message(buf, b'D', |b| {
                b.put_u8(target.byte());
                put_cstr(b, name);
            }),
            FrontendMessage::Execute { portal, max_rows } => write_message(buf, b'E', |b| {
                put_cstr(b, portal);
                b.put_i32(*max_rows);
            }),
            FrontendMessage::Close { target, name } => write_message(buf, b'C', |b| {
                b.put_u8(target.byte());
                put_cstr(b, name);
            }),
            FrontendMessage::Sync => write_message(buf, b'S', |_| {}),
            FrontendMessage::Flush => write_message(buf, b'H', |_| {}),
            FrontendMessage::Terminate => write_message(buf, b'X', |_| {}),
            FrontendMessage::CopyData(d) => write_message(buf, b'd', |b| b.put_slice(d)),
            FrontendMessage::CopyDone => write_message(buf, b'c', |_| {}),
            FrontendMessage::CopyFail(m) => write_message(buf, b'f', |b| put_cstr(b, m)),
            FrontendMessage::FunctionCall(d) => write_message(buf, b'F', |b| b.put_slice(d)),
            FrontendMessage::Password(d) => write_message(buf, b'p', |b| b.put_slice(d)),
        }
    }
}

fn decode_bind(c: &mut Cursor<'_>) -> Result<Bind, ProtocolError> {
    let portal = c.cstr()?.to_owned();
    let statement = c.cstr()?.to_owned();
    let nf = c.count16("parameter format count")?;
    if c.remaining() < nf * 2 {
        return Err(ProtocolError::Truncated {
            tag: 'B',
            what: "parameter formats",
        });
    }
    let param_formats = (0..nf)
        .map(|_| c.i16("format"))
        .collect::<Result<Vec<_>, _>>()?;
    let np = c.count16("parameter count")?;
    if c.remaining() < np * 4 {
        return Err(ProtocolError::Truncated {
            tag: 'B',
            what: "parameters",
        });
    }
    let mut params = Vec::with_capacity(np);
    for _ in 0..np {
        let len = c.i32("parameter length")?;
        if len == -1 {
            params.push(None);
        } else if len < 0 {
            return Err(ProtocolError::NegativeCount {
                tag: 'B',
                count: len.into(),
            });
        } else {
            params.push(Some(Bytes::copy_from_slice(
                c.bytes(len as usize, "parameter value")?,
            )));
        }
    }
    let nr = c.count16("result format count")?;
    if c.remaining() < nr * 2 {
        return Err(ProtocolError::Truncated {
            tag: 'B',
            what: "result formats",
        });
    }
    let result_formats = (0..nr)
        .map(|_| c.i16("format"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// Reads only the statement name of a Bind body (portal, then statement),
/// without decoding the parameters: the proxy's hot path for prepared
/// statements in transaction mode.
pub fn bind_statement_name(body: &[u8]) -> Result<(&str, &str, usize), ProtocolError> {
    let mut c = Cursor::new(b'B', body);
    let portal = c.cstr()?;
    let stmt = c.cstr()?;
    let consumed = body.len() - c.remaining();
    Ok((portal, stmt, consumed))
}

/// A Parse's parameter type count, checked against what follows: an
/// unsigned 16-bit count, as the server reads it (up to 65535).
fn parameter_type_count(c: &mut Cursor) -> Result<usize, ProtocolError> {
    let n = usize::from(c.i16("parameter type count")? as u16);
    if c.remaining() < n * 4 {
        return Err(ProtocolError::Truncated {
            tag: 'P',
            what: "parameter types",
        });
    }
    Ok(n)
}

/// Reads the name and query text of a Parse body without copying, and
/// checks the rest of it; also returns the length of name and query. The
/// query is bytes in the client's encoding (LATIN1, say: not UTF-8).
pub fn parse_name_and_query(body: &[u8]) -> Result<(&str, &[u8], usize), ProtocolError> {
    let mut c = Cursor::new(b'P', body);
    let name = c.cstr()?;
    let query = c.cbytes()?;
    let consumed = body.len() - c.remaining();
    let n = parameter_type_count(&mut c)?;
    if c.remaining() > n * 4 {
        return Err(ProtocolError::TrailingBytes {
            tag: 'P',
            extra: c.remaining() - n * 4,
        });
    }
    Ok((name, query, consumed))
}

/// Reads the target and name of a Describe or Close body without copying.
pub fn target_and_name(tag: u8, body: &[u8]) -> Result<(Target, &str), ProtocolError> {
    let mut c = Cursor::new(tag, body);
    let t = Target::decode(tag, c.u8("target")?)?;
    let name = c.cstr()?;
    c.finish()?;
    Ok((t, name))
}

/// Reads the query text of a 'Q' body without copying.
/// Query body as bytes, without UTF-8 validation (the server checks the
/// text against its encoding): the data path's cheap form of [`query_text`].
pub fn query_bytes(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match memchr::memchr(0, body) {
        Some(i) if i + 1 == body.len() => Ok(&body[..i]),
        Some(i) => Err(ProtocolError::TrailingBytes {
            tag: 'Q',
            extra: body.len() - i - 1,
        }),
        None => Err(ProtocolError::UnterminatedString { tag: 'Q' }),
    }
}

pub fn query_text(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut c = Cursor::new(b'Q', body);
    let q = c.cstr()?;
    c.finish()?;
    Ok(q)
}

/// SASLInitialResponse body: mechanism name and the client's first message.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut c = Cursor::new(b'p', body);
    let mech = c.cstr()?;
    let len = c.i32("SASL data length")?;
    let data = if len == -1 {
        &[][..]
    } else if len < 0 {
        return Err(ProtocolError::NegativeCount {
            tag: 'p',
            count: len.into(),
        });
    } else {
        c.bytes(len as usize, "SASL data")?
    };
    c.finish()?;
    Ok((mech, data))
}

/// Encodes a SASLInitialResponse.
pub fn encode_sasl_initial(buf: &mut BytesMut, mech: &str, data: &[u8]) {
    write_message(buf, b'p', |b| {
        put_cstr(b, mech);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// A cleartext or md5 password message body: the NUL-terminated password.
pub fn password_text(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut c = Cursor::new(b'p', body);
    let p = c.cstr()?;
    c.finish()?;
    Ok(p)
}

#[cfg(test)]
mod tests;
