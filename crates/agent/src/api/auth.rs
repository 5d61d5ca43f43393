//! Authentication of the mutating endpoints: the token from the agent's
//! configuration, as `Authorization: Bearer TOKEN` or as the password of
//! basic auth (any user name). Without a configured token they are refused.
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;

use super::error::ApiError;

pub fn check(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this agent has no api_token (or api_token_file) in its [agent] configuration: \
             operations are disabled",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("the API token is wrong")),
        None => Err(unauthorized(
            "authentication required: send Authorization: Bearer <api_token>",
        )),
    }
}

fn unauthorized(m: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, m)
}

/// The token a header value presents.
fn presented(v: &str) -> Option<String> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_owned()),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            s.split_once(':').map(|(_, p)| p.to_owned())
        }
        _ => None,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        m
    }

    #[test]
    fn bearer_and_basic() {
        let t = Some("0123456789abcdef");
        assert!(check(&h("Bearer 0123456789abcdef"), t).is_ok());
        // basic: user "x", password the token
        let b = base64::engine::general_purpose::STANDARD.encode("x:0123456789abcdef");
        assert!(check(&h(&format!("Basic {b}")), t).is_ok());
        assert_eq!(
            check(&h("Bearer nope"), t).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check(&HeaderMap::new(), t).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check(&h("Bearer x"), None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(presented("Basic !!!"), None);
    }
}
