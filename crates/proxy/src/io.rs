//! Small helpers for reading whole messages and writing errors during the
//! login phase (not the data path).
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::fields::sqlstate;
use wire::{ErrorFields, ProtocolError, Severity};

use crate::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("client closed the connection")]
    Closed,
    #[error("client sent an invalid message: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("client did not answer in time")]
    Timeout,
}

/// Reads one whole tagged message.
pub async fn read_message(
    s: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
    timeout: Duration,
) -> Result<(u8, Bytes), ClientError> {
    tokio::time::timeout(timeout, async {
        loop {
            if let Some(h) = wire::peek_header(buf, max)? {
                if buf.len() >= h.total_len() {
                    let mut m = buf.split_to(h.total_len());
                    m.advance(5);
                    return Ok((h.tag, m.freeze()));
                }
                buf.reserve(h.total_len() - buf.len());
            }
            if s.read_buf(buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    })
    .await
    .map_err(|_| ClientError::Timeout)?
}

/// Sends a FATAL error; the caller closes the connection.
pub async fn send_fatal(s: &mut Stream, code: &str, message: impl Into<String>) {
    let mut out = BytesMut::new();
    ErrorFields::new(Severity::Fatal, code, message).encode_error(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        s.write_all(&out).await?;
        s.flush().await
    })
    .await;
}

pub async fn send_fields(s: &mut Stream, mut fields: ErrorFields) {
    // A server's ERROR at login is FATAL for the client.
    for (t, v) in &mut fields.0 {
        if (*t == b'S' || *t == b'V') && v == "ERROR" {
            *v = "FATAL".into();
        }
    }
    if fields.code().is_none() {
        fields.0.push((b'C', sqlstate::CONNECTION_FAILURE.into()));
    }
    let mut out = BytesMut::new();
    fields.encode_error(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&out)).await;
}
