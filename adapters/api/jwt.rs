//! JSON Web Tokens signed by the operator's own backend (`confab serve --jwt-hmac-secret-file`
//! or `--jwt-public-key-file`), verified with the `jsonwebtoken` crate.
//!
//! A token is accepted when its signature verifies with the configured key, under the one
//! algorithm that key is for (HS256 for a secret; RS256 for an RSA public key, ES256 for a
//! P-256 one), and its claims hold:
//!
//! - `sub`: the user, a valid user name under the same rule as a tokens file's names;
//! - `exp`: required (a token without one is refused), in seconds since the Unix epoch. A
//!   token past `exp` + the leeway ([`JWT_LEEWAY`], `--jwt-leeway`) is refused, and a stream
//!   opened with it ends with UNAUTHENTICATED at that moment;
//! - `nbf`, if present: the token is refused before it (less the leeway);
//! - `aud` and `iss`: checked when the server names its audience or issuer
//!   (`--jwt-audience`, `--jwt-issuer`); a token with an `aud` claim is refused by a server that
//!   names none, as RFC 7519 asks;
//! - `rooms`, `read_rooms`, optional: the bearer's room patterns ([`super::permissions`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab_engine::UserName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::permissions::{PatternError, RoomPatterns, RoomPermissions};

/// How far past its `exp` (and before its `nbf`) a token is still taken (`--jwt-leeway`), for
/// clocks that disagree a little. Small: a revoked user keeps access this much longer.
pub const JWT_LEEWAY: Duration = Duration::from_secs(5);

/// Shortest HS256 secret accepted: RFC 7518 section 3.2 asks for a key at least as long as
/// the hash (32 bytes).
pub const JWT_HMAC_SECRET_BYTES_MIN: usize = 32;

/// Most leeway `--jwt-leeway` takes: more would keep expired tokens alive for long.
pub const JWT_LEEWAY_MAX: Duration = Duration::from_secs(3_600);

/// Longest bearer token verified as a JWT. Rooms lists are bounded after decoding; this bounds
/// the decoding itself (a token travels in every call's metadata).
pub const JWT_BYTES_MAX: usize = 8 * 1024;

/// A key file that cannot be used. The server refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// The HMAC secret is too short to be safe.
    #[error("the secret is {bytes} bytes; HS256 needs at least {JWT_HMAC_SECRET_BYTES_MIN}")]
    SecretTooShort {
        /// Its length, after trailing whitespace is dropped.
        bytes: usize,
    },
    /// The leeway is over [`JWT_LEEWAY_MAX`].
    #[error("a leeway of {0:?} is over the most taken, {JWT_LEEWAY_MAX:?} (--jwt-leeway)")]
    LeewayTooLong(Duration),
    /// The file is not a PEM public key of a kind confab verifies.
    #[error("not a PEM public key for RS256 (RSA) or ES256 (EC P-256): {0} (expected `-----BEGIN PUBLIC KEY-----`)")]
    PublicKey(jsonwebtoken::errors::Error),
}

/// What the server checks besides the signature. `Default` is the strictest (no leeway);
/// [`JwtPolicy::new`] has `confab serve`'s defaults.
#[derive(Clone, Debug, Default)]
pub struct JwtPolicy {
    /// See [`JWT_LEEWAY`].
    pub leeway: Duration,
    /// Accepted `aud` values (`--jwt-audience`); empty: a token must carry no `aud`.
    pub audience: Vec<String>,
    /// Accepted `iss` values (`--jwt-issuer`); empty: `iss` is not checked.
    pub issuer: Vec<String>,
}

impl JwtPolicy {
    /// The default leeway, no audience, any issuer.
    pub fn new() -> Self {
        Self { leeway: JWT_LEEWAY, ..Self::default() }
    }
}

/// A verified token: who, what rooms, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtBearer {
    /// `sub`.
    pub user: UserName,
    /// `rooms` and `read_rooms`.
    pub permissions: RoomPermissions,
    /// `exp` plus the leeway: when streams opened with the token end. `None` for an `exp` so
    /// far ahead that the clock cannot hold it (it never comes).
    pub expires_at: Option<SystemTime>,
}

/// Why a bearer token was refused (the message goes to the client with UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwtRefused(String);

/// The claims confab reads; `exp`, `nbf`, `aud` and `iss` are checked by `jsonwebtoken`.
/// `sub` and `exp` are options so that a token without them is refused as missing a required
/// claim, rather than as malformed JSON.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    rooms: Option<Vec<String>>,
    read_rooms: Option<Vec<String>>,
}

/// The key and rules tokens are verified with.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl std::fmt::Debug for JwtVerifier {
    /// The algorithm only: a secret must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with the secret in `path` (its bytes, less trailing whitespace such as the final
    /// newline an editor adds).
    pub fn hmac_secret_file(path: &Path, policy: &JwtPolicy) -> Result<Self, JwtKeyError> {
        Self::hmac_secret(&std::fs::read(path)?, policy)
    }

    /// HS256 with `secret` (trailing whitespace dropped).
    pub fn hmac_secret(secret: &[u8], policy: &JwtPolicy) -> Result<Self, JwtKeyError> {
        check_leeway(policy)?;
        let secret = secret.trim_ascii_end();
        if secret.len() < JWT_HMAC_SECRET_BYTES_MIN {
            return Err(JwtKeyError::SecretTooShort { bytes: secret.len() });
        }
        Ok(Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256, policy))
    }

    /// RS256 or ES256, chosen by the kind of the PEM public key in `path`.
    pub fn public_key_file(path: &Path, policy: &JwtPolicy) -> Result<Self, JwtKeyError> {
        Self::public_key_pem(&std::fs::read(path)?, policy)
    }

    /// RS256 or ES256, chosen by the kind of the PEM public key `pem`.
    pub fn public_key_pem(pem: &[u8], policy: &JwtPolicy) -> Result<Self, JwtKeyError> {
        check_leeway(policy)?;
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::with_key(key, Algorithm::ES256, policy));
        }
        let key = DecodingKey::from_rsa_pem(pem).map_err(JwtKeyError::PublicKey)?;
        Ok(Self::with_key(key, Algorithm::RS256, policy))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm, policy: &JwtPolicy) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = policy.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if !policy.audience.is_empty() {
            validation.set_audience(&policy.audience);
        }
        if !policy.issuer.is_empty() {
            validation.set_issuer(&policy.issuer);
        }
        Self { key, validation, leeway: Duration::from_secs(policy.leeway.as_secs()) }
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms.first().copied().unwrap_or(Algorithm::HS256)
    }

    /// Verifies `token` and reads its claims.
    pub fn verify(&self, token: &str) -> Result<JwtBearer, JwtRefused> {
        let refused = |reason: String| JwtRefused(reason);
        if token.len() > JWT_BYTES_MAX {
            return Err(refused(format!("the token is {} bytes; at most {JWT_BYTES_MAX} are taken", token.len())));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| refused(self.explain(error.kind())))?
            .claims;
        // Both required (`required_spec_claims`); checked again rather than unwrapped.
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(refused("the token needs both a sub and an exp claim".into()));
        };
        let user = UserName::new(&sub).map_err(|error| refused(format!("the token's sub: {error}")))?;
        if user.as_str().is_empty() {
            return Err(refused("the token's sub (the user) is empty".into()));
        }
        let patterns = |claim: &str, list: Option<Vec<String>>| -> Result<Option<RoomPatterns>, JwtRefused> {
            list.map(|list| RoomPatterns::new(list.iter().map(String::as_str)))
                .transpose()
                .map_err(|error: PatternError| refused(format!("the token's {claim} claim: {error}")))
        };
        let permissions =
            RoomPermissions::new(patterns("rooms", claims.rooms)?, patterns("read_rooms", claims.read_rooms)?);
        // Checked: an `exp` of u64::MAX seconds is past what `SystemTime` holds.
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_secs(exp).saturating_add(self.leeway));
        // `jsonwebtoken` compares whole seconds and still takes a token during its `exp` second;
        // RFC 7519 says "before", and the token's streams end at `expires_at`, so calls must too.
        if expires_at.is_some_and(|expires_at| SystemTime::now() >= expires_at) {
            return Err(refused(self.explain(&ErrorKind::ExpiredSignature)));
        }
        Ok(JwtBearer { user, permissions, expires_at })
    }

    /// A client-facing reason for a refused token, naming what to fix.
    fn explain(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::ExpiredSignature => "the token has expired (its exp has passed)".into(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (its nbf is in the future)".into(),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no {claim} claim; this server requires sub and exp")
            }
            ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
            ErrorKind::InvalidAlgorithm => {
                format!("the token is not signed with {:?}, the algorithm of this server's key", self.algorithm())
            }
            ErrorKind::InvalidAudience => "the token's aud is not this server's audience (--jwt-audience)".into(),
            ErrorKind::InvalidIssuer => "the token's iss is not an issuer this server takes (--jwt-issuer)".into(),
            ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
            ErrorKind::Json(error) => {
                format!("the token is not a valid JWT: its header or claims are malformed: {error}")
            }
            other => format!("the token is not a valid JWT: {other:?}"),
        }
    }
}

fn check_leeway(policy: &JwtPolicy) -> Result<(), JwtKeyError> {
    if policy.leeway > JWT_LEEWAY_MAX { Err(JwtKeyError::LeewayTooLong(policy.leeway)) } else { Ok(()) }
}

/// Whether a bearer token has the shape of a JWT: three non-empty base64url parts separated by
/// dots. Only such tokens are verified as JWTs.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if part.is_empty() || !part.bytes().all(base64url) {
            return false;
        }
    }
    parts == 3
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).expect("signs")
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::hmac_secret(SECRET, &JwtPolicy::default()).expect("long enough")
    }

    #[test]
    fn a_valid_token_names_its_user_rooms_and_expiry() {
        let exp = now() + 60;
        let token = sign(&json!({"sub": "ann", "exp": exp, "rooms": ["team-*"], "read_rooms": ["news"]}));
        assert!(looks_like_jwt(&token));
        let bearer = verifier().verify(&token).expect("valid");
        assert_eq!(bearer.user.as_str(), "ann");
        assert_eq!(bearer.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
        let far = verifier().verify(&sign(&json!({"sub": "ann", "exp": u64::MAX}))).expect("valid for ever");
        assert_eq!(far.expires_at, None, "beyond the clock: never");
        assert!(bearer.permissions.allows("team-a", super::super::permissions::RoomAction::Post));
        assert!(!bearer.permissions.allows("news", super::super::permissions::RoomAction::Post));
    }

    #[test]
    fn bad_tokens_are_refused_saying_why() {
        let cases = [
            (json!({"sub": "ann"}), "no exp claim"),
            (json!({"exp": now() + 60}), "no sub claim"),
            (json!({"sub": "ann", "exp": now() - 10}), "expired"),
            (json!({"sub": "", "exp": now() + 60}), "empty"),
            (json!({"sub": "ann", "exp": now() + 60, "rooms": ["a/b"]}), "rooms claim"),
            (json!({"sub": "ann", "exp": now() + 60, "aud": "elsewhere"}), "aud"),
            (json!({"sub": "ann", "exp": now() + 60, "nbf": now() + 600}), "not valid yet"),
        ];
        for (claims, expected) in cases {
            let refused = verifier().verify(&sign(&claims)).expect_err("refused").to_string();
            assert!(refused.contains(expected), "{claims}: {refused}");
        }
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "ann", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret, also 32 bytes long!"),
        )
        .expect("signs");
        assert!(verifier().verify(&other).expect_err("wrong key").to_string().contains("signature"));
    }

    #[test]
    fn keys_that_cannot_work_are_refused() {
        assert!(matches!(
            JwtVerifier::hmac_secret(b"short\n", &JwtPolicy::default()),
            Err(JwtKeyError::SecretTooShort { bytes: 5 })
        ));
        assert!(JwtVerifier::public_key_pem(b"not a key", &JwtPolicy::default()).is_err());
        let lax = JwtPolicy { leeway: JWT_LEEWAY_MAX + Duration::from_secs(1), ..JwtPolicy::default() };
        assert!(matches!(JwtVerifier::hmac_secret(SECRET, &lax), Err(JwtKeyError::LeewayTooLong(_))));
    }

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(looks_like_jwt("a.b.c"));
        for token in ["a.b", "a.b.c.d", "a..c", "a.b.c ", "plain-token-0123456789", "a.b+.c"] {
            assert!(!looks_like_jwt(token), "{token:?}");
        }
    }
}
