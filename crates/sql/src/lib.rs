//! SQL knowledge the proxy needs, without I/O.
#![forbid(unsafe_code)]

pub mod lexer;
