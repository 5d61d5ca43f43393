//! md5 password authentication: `"md5" + md5hex(md5hex(password + user) + salt)`.
use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(H[(b >> 4) as usize]));
        s.push(char::from(H[(b & 15) as usize]));
    }
    s
}

/// The stored form, as in pg_authid: `"md5" + md5hex(password + user)`.
pub fn stored_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The response to an AuthenticationMD5Password challenge, computed from the
/// stored form (`md5...`), which is all a pooler needs to know.
pub fn response_from_stored(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// The response computed from the cleartext password.
pub fn response(user: &str, password: &str, salt: [u8; 4]) -> String {
    response_from_stored(&stored_hash(user, password), salt)
}

/// Whether `s` looks like a stored md5 hash.
pub fn is_stored_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Constant-time comparison of two responses.
pub fn verify(expected: &str, got: &str) -> bool {
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SELECT 'md5' || md5('secret' || 'app') in PostgreSQL
        assert_eq!(
            stored_hash("app", "secret"),
            format!("md5{}", hex(&Md5::digest(b"secretapp")))
        );
        let r = response("app", "secret", [1, 2, 3, 4]);
        assert_eq!(
            r,
            response_from_stored(&stored_hash("app", "secret"), [1, 2, 3, 4])
        );
        assert!(verify(&r, &r.clone()));
        assert!(!verify(&r, "md5000"));
        assert!(is_stored_hash(&stored_hash("a", "b")));
        assert!(!is_stored_hash("secret"));
    }
}
