//! Who may use the web port: the `Host` header (against DNS rebinding), the WebSocket
//! `Origin` (against cross-site pages), and where the bearer token travels (never in the
//! URL: a `Sec-WebSocket-Protocol` entry, or an `Authorization` header).
//!
//! Pure functions over header values, so they are unit-tested and fuzzed without a server.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The WebSocket subprotocol of a confab session. The server selects it when the client
/// offers it, which a browser that offered subprotocols (the token) requires.
pub const WS_PROTOCOL: &str = "confab.v1";

/// A subprotocol entry starting with this carries the bearer token, base64url-encoded without
/// padding (a browser's WebSocket cannot send an `Authorization` header, and a token in the
/// URL ends up in logs and histories). The server never selects it, so it is never echoed.
pub const WS_TOKEN_PROTOCOL_PREFIX: &str = "confab.bearer.";

/// `*` in `--ws-allowed-origins` or `--ws-allowed-hosts` allows any.
const ANY: &str = "*";

/// Whether a request's `Host` header names this server: an IP literal equal to the bound
/// address (any IP when bound to all addresses), `localhost` when bound to loopback, or a
/// name in `allowed_hosts`. A DNS-rebinding page reaches the port under its own host name,
/// which none of these match. Ports are not compared (a proxy may change them).
pub fn check_host(host: Option<&str>, bound: SocketAddr, allowed_hosts: &[String]) -> Result<(), String> {
    let Some(host) = host else { return Err("the request has no Host header".into()) };
    let name = host_name(host);
    if allowed_hosts.iter().any(|allowed| allowed == ANY || host_name(allowed).eq_ignore_ascii_case(name)) {
        return Ok(());
    }
    let bound_ip = bound.ip();
    let matches = match name.parse::<IpAddr>() {
        Ok(ip) => bound_ip.is_unspecified() || ip == bound_ip,
        Err(_) => name.eq_ignore_ascii_case("localhost") && (bound_ip.is_loopback() || bound_ip.is_unspecified()),
    };
    if matches {
        Ok(())
    } else {
        Err(format!("Host {host:?} is not this server's address; add the name to --ws-allowed-hosts to serve it"))
    }
}

/// Whether a WebSocket upgrade's `Origin` may connect: none (not a browser: browsers always
/// send one), the page's own origin (its authority is the request's `Host`), or one listed in
/// `allowed_origins`.
pub fn check_origin(origin: Option<&str>, host: Option<&str>, allowed_origins: &[String]) -> Result<(), String> {
    let Some(origin) = origin else { return Ok(()) };
    let trimmed = origin.trim_end_matches('/');
    if allowed_origins
        .iter()
        .any(|allowed| allowed == ANY || allowed.trim_end_matches('/').eq_ignore_ascii_case(trimmed))
    {
        return Ok(());
    }
    let authority = trimmed.split_once("://").map(|(_, authority)| authority);
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(format!("a cross-origin WebSocket from {origin:?}; allow it with --ws-allowed-origins")),
    }
}

/// The bearer token among a request's `Sec-WebSocket-Protocol` header values, if one carries
/// it ([`WS_TOKEN_PROTOCOL_PREFIX`]).
pub fn protocol_token<'a>(protocol_headers: impl IntoIterator<Item = &'a str>) -> Result<Option<String>, String> {
    let entries = protocol_headers.into_iter().flat_map(|header| header.split(',')).map(str::trim);
    let Some(encoded) = entries.filter_map(|entry| entry.strip_prefix(WS_TOKEN_PROTOCOL_PREFIX)).next() else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| format!("the {WS_TOKEN_PROTOCOL_PREFIX}… subprotocol is not base64url without padding"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("the token in the {WS_TOKEN_PROTOCOL_PREFIX}… subprotocol is not UTF-8"))
}

/// A `Sec-WebSocket-Protocol` entry carrying `token` (what a client offers).
pub fn token_protocol(token: &str) -> String {
    format!("{WS_TOKEN_PROTOCOL_PREFIX}{}", URL_SAFE_NO_PAD.encode(token))
}

/// The host of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`), without the port and
/// the brackets.
fn host_name(authority: &str) -> &str {
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(address, _)| address);
    }
    match authority.rsplit_once(':') {
        // One colon: `host:port`. More: a bare IPv6 address, which is its own host.
        Some((name, _)) if !name.contains(':') => name,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_host_must_be_the_bound_address_localhost_or_allowed() {
        let loopback = bound("127.0.0.1:8080");
        assert_eq!(check_host(Some("127.0.0.1:8080"), loopback, &[]), Ok(()));
        assert_eq!(check_host(Some("LOCALHOST:8080"), loopback, &[]), Ok(()));
        assert!(check_host(Some("evil.example:8080"), loopback, &[]).is_err(), "DNS rebinding");
        assert!(check_host(Some("10.0.0.1:8080"), loopback, &[]).is_err());
        assert!(check_host(None, loopback, &[]).is_err());
        let allowed = ["chat.example.org".to_owned()];
        assert_eq!(check_host(Some("Chat.Example.org:443"), loopback, &allowed), Ok(()));
        let everywhere = bound("[::]:8080");
        assert_eq!(check_host(Some("[2001:db8::1]:8080"), everywhere, &[]), Ok(()));
        assert_eq!(check_host(Some("192.0.2.7"), everywhere, &[]), Ok(()));
        assert!(check_host(Some("localhost.evil.example"), everywhere, &[]).is_err());
        assert_eq!(check_host(Some("anything"), loopback, &["*".to_owned()]), Ok(()));
    }

    #[test]
    fn only_same_origin_or_allowed_origins_may_upgrade() {
        let host = Some("127.0.0.1:8080");
        assert_eq!(check_origin(None, host, &[]), Ok(()), "not a browser");
        assert_eq!(check_origin(Some("http://127.0.0.1:8080"), host, &[]), Ok(()));
        assert!(check_origin(Some("https://evil.example"), host, &[]).is_err());
        assert!(check_origin(Some("null"), host, &[]).is_err());
        assert!(check_origin(Some("http://127.0.0.1:8080"), None, &[]).is_err());
        let allowed = ["https://app.example.org".to_owned()];
        assert_eq!(check_origin(Some("https://APP.example.org"), host, &allowed), Ok(()));
        assert_eq!(check_origin(Some("https://evil.example"), host, &["*".to_owned()]), Ok(()));
    }

    #[test]
    fn the_token_round_trips_through_a_subprotocol_entry() {
        let token = "ann-token/0123456789+=,; x";
        let entry = token_protocol(token);
        assert!(entry.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte)), "{entry}");
        let header = format!("{WS_PROTOCOL}, {entry}");
        assert_eq!(protocol_token([header.as_str()]), Ok(Some(token.to_owned())));
        assert_eq!(protocol_token([WS_PROTOCOL]), Ok(None));
        assert!(protocol_token(["confab.bearer.***"]).is_err());
    }
}
