//! Typed configuration for pgwarden, parsed from TOML. Every error names the
//! file and the line it is about; nothing here panics on any input.
#![forbid(unsafe_code)]

mod balance;
mod duration;
pub mod hba;
mod model;
mod vip;

pub use balance::*;
pub use duration::parse_duration;
pub use hba::{HbaMethod, HbaRule, HbaRules};
pub use model::*;
pub use vip::{Vip, MIN_VIP_TTL};

use std::path::{Path, PathBuf};

/// A configuration that cannot be used, with where it is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    At {
        file: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `file` is used in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: model::RawConfig = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::At {
            file: file.to_owned(),
            line,
            col,
            message: e.message().to_owned(),
        }
    })?;
    raw.validate().map_err(|v| match v.span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            ConfigError::At {
                file: file.to_owned(),
                line,
                col,
                message: v.message,
            }
        }
        None => ConfigError::Invalid {
            file: file.to_owned(),
            message: v.message,
        },
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0)
        + 1;
    (line, col)
}

/// A validation failure, with the span of the offending value when known.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub span: Option<std::ops::Range<usize>>,
    pub message: String,
}

impl Invalid {
    pub(crate) fn at(span: std::ops::Range<usize>, message: impl Into<String>) -> Self {
        Invalid {
            span: Some(span),
            message: message.into(),
        }
    }
    pub(crate) fn general(message: impl Into<String>) -> Self {
        Invalid {
            span: None,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
