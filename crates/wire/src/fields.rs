//! The fields of ErrorResponse and NoticeResponse, and SQLSTATE codes the
//! proxy itself raises.
use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::frame::put_cstr;
use crate::ProtocolError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// SQLSTATE codes used by the proxy.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH: &str = "08001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// All fields of an error or notice, in wire order, keyed by their one-byte
/// field type (S, V, C, M, D, H, P, p, q, W, s, t, c, d, n, F, L, R, ...).
/// Unknown field types are kept, as the protocol asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields(pub Vec<(u8, String)>);

impl ErrorFields {
    /// A new error with severity (localized and not), SQLSTATE and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        ErrorFields(vec![
            (b'S', severity.as_str().to_owned()),
            (b'V', severity.as_str().to_owned()),
            (b'C', code.to_owned()),
            (b'M', message.into()),
        ])
    }

    pub fn with(mut self, field: u8, value: impl Into<String>) -> Self {
        self.0.push((field, value.into()));
        self
    }

    pub fn get(&self, field: u8) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }
    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }
    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }
    pub fn severity(&self) -> Option<&str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    pub(crate) fn decode_from(c: &mut Cursor<'_>) -> Result<Self, ProtocolError> {
        let mut v = Vec::new();
        loop {
            let t = c.u8("field type")?;
            if t == 0 {
                break;
            }
            v.push((t, c.cstr()?.to_owned()));
        }
        Ok(ErrorFields(v))
    }

    pub(crate) fn encode_into(&self, b: &mut BytesMut) {
        for (t, v) in &self.0 {
            if *t != 0 {
                b.put_u8(*t);
                put_cstr(b, v);
            }
        }
        b.put_u8(0);
    }

    /// Encodes an ErrorResponse ('E') with these fields.
    pub fn encode_error(&self, buf: &mut BytesMut) {
        crate::frame::write_message(buf, b'E', |b| self.encode_into(b));
    }
    /// Encodes a NoticeResponse ('N') with these fields.
    pub fn encode_notice(&self, buf: &mut BytesMut) {
        crate::frame::write_message(buf, b'N', |b| self.encode_into(b));
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity().unwrap_or("ERROR"),
            self.message().unwrap_or(""),
            self.code().unwrap_or("?????")
        )
    }
}
