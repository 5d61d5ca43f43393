//! A bounds-checked reader over a message body.
use crate::ProtocolError;

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    tag: char,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Self {
            buf,
            tag: char::from(tag),
        }
    }

    fn truncated(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Truncated {
            tag: self.tag,
            what,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.truncated(what))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let b = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count that must not be negative.
    pub(crate) fn count16(&mut self, what: &'static str) -> Result<usize, ProtocolError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| ProtocolError::NegativeCount {
            tag: self.tag,
            count: n.into(),
        })
    }

    pub(crate) fn bytes(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string as bytes (text in the client's encoding,
    /// which need not be UTF-8).
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let pos = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::UnterminatedString { tag: self.tag })?;
        let s = &self.buf[..pos];
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let tag = self.tag;
        std::str::from_utf8(self.cbytes()?).map_err(|_| ProtocolError::InvalidUtf8 { tag })
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                tag: self.tag,
                extra: self.buf.len(),
            })
        }
    }
}
