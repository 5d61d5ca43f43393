//! Errors raised by the decoders and the authentication state machines.
use thiserror::Error;

/// A message that cannot be decoded. The connection it came from cannot be
/// trusted to be in sync any more and should be closed after reporting it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("message length {len} is invalid (must be between 4 and {max})")]
    BadLength { len: i64, max: usize },
    #[error("message '{tag}' is truncated: {what}")]
    Truncated { tag: char, what: &'static str },
    #[error("message '{tag}' has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
    #[error("string in message '{tag}' is not terminated")]
    UnterminatedString { tag: char },
    #[error("string in message '{tag}' is not valid UTF-8")]
    InvalidUtf8 { tag: char },
    #[error("negative count {count} in message '{tag}'")]
    NegativeCount { tag: char, count: i64 },
    #[error("unknown message type 0x{0:02x}")]
    UnknownTag(u8),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("invalid value in message '{tag}': {what}")]
    BadValue { tag: char, what: &'static str },
    #[error("authentication exchange failed: {0}")]
    Auth(String),
}
