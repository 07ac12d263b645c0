//! Bearer tokens and room permissions, from arbitrary bytes: the `authorization` value, the
//! bearer as a tokens-file token or a JWT (as sent, and with the bytes as its claims, signed
//! with the server's secret so the claims parser is reached), a tokens file, and the room
//! pattern matcher. Nothing may panic; a signed token's user is its `sub`; and the matcher
//! agrees with a plain dynamic-programming reference.
#![no_main]

use std::sync::{Arc, OnceLock};

use confab::api::auth::{Authenticator, Tokens, bearer_token};
use confab::api::jwt::{JwtPolicy, JwtVerifier, looks_like_jwt};
use confab::api::permissions::{RoomAction, RoomPatterns, pattern_matches};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"confab-fuzz-secret-of-32-bytes!!";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let tokens = Tokens::parse("fuzz-token-0123456789 ann\n  rooms=team-*\n").expect("valid tokens");
        let jwt = JwtVerifier::hmac_secret(SECRET, &JwtPolicy::new()).expect("a long enough secret");
        Authenticator::new(Some(Arc::new(tokens))).with_jwt(Some(Arc::new(jwt)))
    })
}

/// Whether `pattern` matches all of `text`, by the textbook table (quadratic, obviously right).
fn reference(pattern: &[u8], text: &[u8]) -> bool {
    // matched[j]: the pattern so far matches text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = if p == b'*' {
                matched[j] || (j > 0 && next[j - 1])
            } else {
                j > 0 && matched[j - 1] && text[j - 1] == p
            };
        }
        matched = next;
    }
    matched[text.len()]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let auth = authenticator();
    let mut lines = text.splitn(3, '\n');
    let (first, second, rest) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""));

    // The header and the bearer as sent.
    if let Some(token) = bearer_token(first) {
        let _ = looks_like_jwt(token);
        let _ = auth.bearer(token);
    }
    let _ = auth.authorize_token(Some(first));

    // The bytes as a token's claims, signed: the claims parser and the patterns in them.
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        if let Ok(token) =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET))
        {
            if let Ok((_, grant)) = auth.bearer(&token) {
                let sub = claims.get("sub").and_then(serde_json::Value::as_str);
                assert!(sub.is_some_and(|sub| !sub.is_empty()), "a token without a user was taken: {claims}");
                let _ = grant.check("lobby", RoomAction::Post);
            }
        }
    }

    // A tokens file.
    let _ = Tokens::parse(text);

    // Patterns against a room: the fast matcher agrees with the reference.
    if let Ok(patterns) = RoomPatterns::parse_list(second) {
        let any = second.split(',').any(|pattern| reference(pattern.as_bytes(), rest.as_bytes()));
        assert_eq!(patterns.matches(rest), !second.is_empty() && any, "{second:?} against {rest:?}");
    }
    for pattern in second.split(',').take(8) {
        if pattern.len() <= 256 && rest.len() <= 256 {
            assert_eq!(pattern_matches(pattern, rest), reference(pattern.as_bytes(), rest.as_bytes()));
        }
    }
});
