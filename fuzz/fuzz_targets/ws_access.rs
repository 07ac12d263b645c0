//! The web port's header parsers, from arbitrary bytes: the `Host` check, the `Origin` check
//! and the token's `Sec-WebSocket-Protocol` entry. Nothing may panic; a token put in a
//! subprotocol entry must come back out whole; and a Host that is a name other than
//! `localhost` is never taken for a loopback-bound server unless it is allowed (DNS rebinding).
#![no_main]

use std::net::SocketAddr;

use confab::ws::access::{check_host, check_origin, protocol_token, token_protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    let allowed = [second.to_owned()];
    for bound in ["127.0.0.1:8080", "[::]:8080", "0.0.0.0:80"] {
        let bound: SocketAddr = bound.parse().expect("a literal address");
        let _ = check_host(Some(first), bound, &allowed);
        let _ = check_host(Some(first), bound, &[]);
    }
    let loopback: SocketAddr = "127.0.0.1:8080".parse().expect("a literal address");
    let name = first.rsplit_once(':').map_or(first, |(name, _)| name);
    let is_address = name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    if !is_address && !name.eq_ignore_ascii_case("localhost") && !first.starts_with('[') && first.matches(':').count() <= 1 {
        assert!(check_host(Some(first), loopback, &[]).is_err(), "a foreign name passed the Host check: {first:?}");
    }
    let _ = check_origin(Some(first), Some(second), &[]);
    let _ = check_origin(Some(first), Some(second), &allowed);
    let _ = protocol_token([first, second]);
    let entry = token_protocol(text);
    assert_eq!(protocol_token([entry.as_str()]), Ok(Some(text.to_owned())), "the token round-trips");
});
