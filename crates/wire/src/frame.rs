//! Message framing: the 5-byte header (tag + length) shared by every message
//! after the startup packet. The proxy's data path works on headers only and
//! forwards bodies untouched.

/// Longest startup packet accepted (PostgreSQL allows 10000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// The header of one regular message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the body, without tag and length word.
    pub body_len: usize,
}

impl Header {
    /// Bytes the whole message takes in the buffer.
    pub fn total_len(&self) -> usize {
        self.body_len + 5
    }
}

/// Reads the header at the start of `buf`. `Ok(None)` when fewer than 5 bytes
/// are there; an error when the length word is below 4 or the body would be
/// longer than `max_body`.
pub fn peek_header(buf: &[u8], max_body: usize) -> Result<Option<Header>, crate::ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || (len as i64 - 4) as u64 > max_body as u64 {
        return Err(crate::ProtocolError::BadLength {
            len: len.into(),
            max: max_body.saturating_add(4),
        });
    }
    Ok(Some(Header {
        tag: buf[0],
        body_len: len as usize - 4,
    }))
}

/// Returns the header and body of the whole message at the start of `buf`,
/// or `Ok(None)` when it is not complete yet.
pub fn split_message(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(Header, &[u8])>, crate::ProtocolError> {
    match peek_header(buf, max_body)? {
        Some(h) if buf.len() >= h.total_len() => Ok(Some((h, &buf[5..h.total_len()]))),
        _ => Ok(None),
    }
}

/// Appends a message with the given tag whose body is written by `body`,
/// filling in the length word afterwards.
pub fn write_message(buf: &mut bytes::BytesMut, tag: u8, body: impl FnOnce(&mut bytes::BytesMut)) {
    use bytes::BufMut;
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(buf: &mut bytes::BytesMut, s: &str) {
    use bytes::BufMut;
    // A NUL inside would end the string early on the other side and desync
    // the stream; cut it there instead.
    let s = s.split('\0').next().unwrap_or("");
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}
