//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it, as two small
//! state machines without I/O: [`ScramServer`] authenticates a client against
//! a stored verifier, [`ScramClient`] logs in to a server either with the
//! password or with the keys recovered from a client's exchange (so a proxy
//! can pass SCRAM through without knowing the password). Channel binding is
//! not offered (only `SCRAM-SHA-256`, not `-PLUS`). Passwords are
//! SASLprep-normalised as PostgreSQL and libpq do it.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::ProtocolError;

pub const MECHANISM: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for i in 0..32 {
        o[i] = a[i] ^ b[i];
    }
    o
}

fn err(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Auth(msg.into())
}

/// The password as PostgreSQL and libpq hash it: normalised with SASLprep
/// (RFC 4013), or as it is when that fails (a prohibited or unassigned
/// character, a bidi violation) or leaves nothing. ASCII passwords are
/// taken as they are.
fn prepared(password: &str) -> std::borrow::Cow<'_, str> {
    if password.is_ascii() {
        return password.into();
    }
    match saslprep(password) {
        Some(p) => p.into(),
        None => password.into(),
    }
}

/// SASLprep as PostgreSQL's `pg_saslprep` (src/common/saslprep.c) does it,
/// which libpq shares: map, then check the *mapped* characters (before
/// NFKC, where RFC 4013 checks the normalised ones: PostgreSQL's rule is
/// the one that must be matched), then normalise. `None`: prohibited.
fn saslprep(password: &str) -> Option<String> {
    use stringprep::tables as t;
    use unicode_normalization::UnicodeNormalization;
    let mapped: Vec<char> = password
        .chars()
        .filter(|&c| !t::commonly_mapped_to_nothing(c))
        .map(|c| {
            if t::non_ascii_space_character(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    let prohibited = |c: char| {
        t::ascii_control_character(c)
            || t::non_ascii_control_character(c)
            || t::private_use(c)
            || t::non_character_code_point(c)
            || t::surrogate_code(c)
            || t::inappropriate_for_plain_text(c)
            || t::inappropriate_for_canonical_representation(c)
            || t::change_display_properties_or_deprecated(c)
            || t::tagging_character(c)
            || t::unassigned_code_point(c)
    };
    let (first, last) = (*mapped.first()?, *mapped.last()?);
    if mapped.iter().any(|&c| prohibited(c)) {
        return None;
    }
    if mapped.iter().any(|&c| t::bidi_r_or_al(c))
        && (mapped.iter().any(|&c| t::bidi_l(c))
            || !t::bidi_r_or_al(first)
            || !t::bidi_r_or_al(last))
    {
        return None;
    }
    Some(mapped.into_iter().nfkc().collect())
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let password = prepared(password);
    pbkdf2::pbkdf2::<HmacSha256>(password.as_bytes(), salt, iterations, &mut out)
        .expect("HMAC accepts any key length");
    out
}

/// A fresh client or server nonce: 18 random bytes in base64, as PostgreSQL.
pub fn new_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    B64.encode(bytes)
}

/// What a server stores for a SCRAM user (pg_authid.rolpassword).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Verifier {
    /// Derives a verifier from a cleartext password with a random salt.
    pub fn from_password(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Self::with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let sp = salted_password(password, salt, iterations);
        let client_key = hmac(&sp, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&sp, b"Server Key"),
        }
    }

    /// A verifier for a user that does not exist, as PostgreSQL makes one:
    /// the same salt for the same name every time (a changing salt would
    /// tell who exists), keys no password matches, and no key derivation
    /// (an unauthenticated client must not cost PBKDF2 rounds).
    pub fn mock(secret: &[u8], user: &str) -> Self {
        let mut salt_src = b"salt:".to_vec();
        salt_src.extend_from_slice(user.as_bytes());
        Verifier {
            iterations: 4096,
            salt: hmac(secret, &salt_src)[..16].to_vec(),
            stored_key: hmac(secret, b"stored key"),
            server_key: hmac(secret, b"server key"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok().filter(|&i| i > 0)?;
        Some(Verifier {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Keys recovered from a successful client exchange: enough to log in to a
/// server that stores the same verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

fn attr(part: &str, name: char) -> Result<&str, ProtocolError> {
    let mut chars = part.chars();
    if chars.next() == Some(name) && chars.next() == Some('=') {
        Ok(&part[2..])
    } else {
        Err(err(format!("expected attribute '{name}' in SCRAM message")))
    }
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

enum ServerState {
    Initial,
    SentFirst {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        gs2_header: String,
    },
    Done,
}

/// Server side: authenticates a client against a verifier.
pub struct ScramServer {
    verifier: Verifier,
    server_nonce: String,
    state: ServerState,
}

impl ScramServer {
    pub fn new(verifier: Verifier) -> Self {
        Self::with_nonce(verifier, new_nonce())
    }

    /// With a fixed server nonce, for replaying recorded exchanges in tests.
    pub fn with_nonce(verifier: Verifier, server_nonce: String) -> Self {
        ScramServer {
            verifier,
            server_nonce,
            state: ServerState::Initial,
        }
    }

    /// Takes the client-first-message and returns the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ProtocolError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(err("unexpected SCRAM client-first-message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| err("SCRAM message is not UTF-8"))?;
        let mut it = msg.splitn(3, ',');
        let cbind = it.next().unwrap_or("");
        let authzid = it
            .next()
            .ok_or_else(|| err("malformed SCRAM client-first-message"))?;
        let bare = it
            .next()
            .ok_or_else(|| err("malformed SCRAM client-first-message"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(err("channel binding was not offered")),
            _ => return Err(err("malformed SCRAM channel binding flag")),
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(err("malformed SCRAM authorization identity"));
        }
        let mut parts = bare.split(',');
        let first = parts.next().unwrap_or("");
        if first.starts_with("m=") {
            return Err(err("SCRAM extensions are not supported"));
        }
        attr(first, 'n')?;
        let client_nonce = attr(parts.next().unwrap_or(""), 'r')?;
        if !valid_nonce(client_nonce) {
            return Err(err("invalid SCRAM client nonce"));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = ServerState::SentFirst {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: format!("{cbind},{authzid},"),
        };
        Ok(server_first)
    }

    /// Takes the client-final-message; on a valid proof returns the
    /// server-final-message and the client's keys.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<(String, ClientKeys), ProtocolError> {
        let ServerState::SentFirst {
            client_first_bare,
            server_first,
            nonce,
            gs2_header,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(err("unexpected SCRAM client-final-message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| err("SCRAM message is not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| err("SCRAM proof missing"))?;
        let mut parts = without_proof.split(',');
        let cb = attr(parts.next().unwrap_or(""), 'c')?;
        if B64.decode(cb).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(err("SCRAM channel binding does not match"));
        }
        if attr(parts.next().unwrap_or(""), 'r')? != nonce {
            return Err(err("SCRAM nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| err("malformed SCRAM proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let ok = sha256(&client_key)
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
        if !ok {
            return Err(err("password authentication failed"));
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok((
            format!("v={}", B64.encode(server_signature)),
            ClientKeys {
                client_key,
                server_key: self.verifier.server_key,
                salt: self.verifier.salt.clone(),
                iterations: self.verifier.iterations,
            },
        ))
    }
}

/// How the client side proves itself.
#[derive(Debug, Clone)]
pub enum Credential {
    Password(String),
    Keys(ClientKeys),
}

enum ClientState {
    Initial,
    SentFirst {
        client_first_bare: String,
        nonce: String,
    },
    SentFinal {
        server_signature: [u8; 32],
    },
    Done,
}

/// Client side: logs in to a server.
pub struct ScramClient {
    credential: Credential,
    client_nonce: String,
    state: ClientState,
}

impl ScramClient {
    pub fn new(credential: Credential) -> Self {
        Self::with_nonce(credential, new_nonce())
    }

    pub fn with_nonce(credential: Credential, client_nonce: String) -> Self {
        ScramClient {
            credential,
            client_nonce,
            state: ClientState::Initial,
        }
    }

    /// The client-first-message (for SASLInitialResponse).
    pub fn client_first(&mut self) -> String {
        let bare = format!("n=,r={}", self.client_nonce);
        let msg = format!("n,,{bare}");
        self.state = ClientState::SentFirst {
            client_first_bare: bare,
            nonce: self.client_nonce.clone(),
        };
        msg
    }

    /// Takes the server-first-message, returns the client-final-message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<String, ProtocolError> {
        let ClientState::SentFirst {
            client_first_bare,
            nonce,
        } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(err("unexpected SCRAM server-first-message"));
        };
        let server_first =
            std::str::from_utf8(msg).map_err(|_| err("SCRAM message is not UTF-8"))?;
        let mut parts = server_first.split(',');
        let full_nonce = attr(parts.next().unwrap_or(""), 'r')?;
        if !full_nonce.starts_with(&nonce)
            || full_nonce.len() == nonce.len()
            || !valid_nonce(full_nonce)
        {
            return Err(err("invalid SCRAM server nonce"));
        }
        let salt = B64
            .decode(attr(parts.next().unwrap_or(""), 's')?)
            .map_err(|_| err("invalid SCRAM salt"))?;
        let iterations: u32 = attr(parts.next().unwrap_or(""), 'i')?
            .parse()
            .ok()
            .filter(|&i| i > 0 && i <= 10_000_000)
            .ok_or_else(|| err("invalid SCRAM iteration count"))?;
        let (client_key, server_key) = match &self.credential {
            Credential::Password(p) => {
                let sp = salted_password(p, &salt, iterations);
                (hmac(&sp, b"Client Key"), hmac(&sp, b"Server Key"))
            }
            Credential::Keys(k) => {
                if k.salt != salt || k.iterations != iterations {
                    return Err(err(
                        "server's SCRAM salt differs from the one the client authenticated with",
                    ));
                }
                (k.client_key, k.server_key)
            }
        };
        let without_proof = format!("c=biws,r={full_nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        self.state = ClientState::SentFinal {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message (the server's signature).
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ProtocolError> {
        let ClientState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(err("unexpected SCRAM server-final-message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| err("SCRAM message is not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(err(format!("server rejected SCRAM: {e}")));
        }
        let v = attr(msg.split(',').next().unwrap_or(""), 'v')?;
        if B64.decode(v).ok().as_deref() != Some(&server_signature[..]) {
            return Err(err("server's SCRAM signature is wrong"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3 test vector (user "user", password "pencil").
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut c = ScramClient::with_nonce(
            Credential::Password("pencil".into()),
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        // the RFC's client-first carries n=user; PostgreSQL sends n= (empty)
        c.state = ClientState::SentFirst {
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.server_first(server_first.as_bytes()).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let v = Verifier::with_salt("pencil", &salt, 4096);
        assert_eq!(Verifier::parse(&v.to_string()), Some(v));
    }

    #[test]
    fn passwords_are_saslprep_normalised_as_postgresql_does() {
        // ASCII as it is, control characters included (PostgreSQL's fast path)
        assert_eq!(prepared("pa\tss"), "pa\tss");
        // NFKC, non-ASCII spaces to a space, "mapped to nothing" removed
        assert_eq!(prepared("\u{2168}\u{a0}pa\u{ad}ss"), "IX pass");
        // prohibited (a bidi violation) or nothing left: the raw password
        assert_eq!(prepared("\u{627}1"), "\u{627}1");
        assert_eq!(prepared("\u{ad}"), "\u{ad}");
        // checked before NFKC, as PostgreSQL does: U+0340 is prohibited
        // (it normalises to U+0300), U+2090 unassigned in Unicode 3.2
        assert_eq!(prepared("a\u{340}"), "a\u{340}");
        assert_eq!(prepared("x\u{2090}"), "x\u{2090}");
        let salt = [7u8; 16];
        assert_eq!(
            Verifier::with_salt("\u{2168}", &salt, 4096),
            Verifier::with_salt("IX", &salt, 4096)
        );
    }

    fn exchange(server_pw: &str, client: Credential) -> Result<ClientKeys, ProtocolError> {
        let mut s = ScramServer::new(Verifier::from_password(server_pw));
        let mut c = ScramClient::new(client);
        let sf = s.client_first(c.client_first().as_bytes())?;
        let cf = c.server_first(sf.as_bytes())?;
        let (fin, keys) = s.client_final(cf.as_bytes())?;
        c.server_final(fin.as_bytes())?;
        Ok(keys)
    }

    #[test]
    fn password_roundtrip_and_wrong_password() {
        exchange("s3cret", Credential::Password("s3cret".into())).unwrap();
        assert!(exchange("s3cret", Credential::Password("nope".into())).is_err());
    }

    #[test]
    fn passthrough_with_recovered_keys() {
        let v = Verifier::from_password("pw");
        let mut s = ScramServer::new(v.clone());
        let mut c = ScramClient::new(Credential::Password("pw".into()));
        let sf = s.client_first(c.client_first().as_bytes()).unwrap();
        let (_, keys) = s
            .client_final(c.server_first(sf.as_bytes()).unwrap().as_bytes())
            .unwrap();
        // a second server with the same verifier accepts the recovered keys
        let mut s2 = ScramServer::new(v);
        let mut c2 = ScramClient::new(Credential::Keys(keys));
        let sf = s2.client_first(c2.client_first().as_bytes()).unwrap();
        let (fin, _) = s2
            .client_final(c2.server_first(sf.as_bytes()).unwrap().as_bytes())
            .unwrap();
        c2.server_final(fin.as_bytes()).unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut s = ScramServer::new(Verifier::from_password("x"));
        for m in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls,,n=,r=a",
            b"n,,m=x",
            b"n,,n=,r=",
            b"\xff\xfe",
        ] {
            assert!(ScramServer::new(Verifier::from_password("x"))
                .client_first(m)
                .is_err());
        }
        s.client_first(b"n,,n=,r=abc").unwrap();
        assert!(s.client_final(b"c=biws,r=abc,p=!!!").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_none());
    }

    #[test]
    fn mock_verifiers_keep_their_salt_and_match_no_password() {
        let a = Verifier::mock(b"k", "alice");
        assert_eq!(a, Verifier::mock(b"k", "alice"));
        assert_ne!(a.salt, Verifier::mock(b"k", "bob").salt);
        assert_ne!(a.salt, Verifier::mock(b"other", "alice").salt);
        assert_ne!(Verifier::with_salt("", &a.salt, a.iterations), a);
    }
}
