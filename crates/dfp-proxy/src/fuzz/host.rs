//! `rules::check_host` against a reading of the rule written plainly from its documentation,
//! and against the `http` crate's `Authority` (what the proxy accepts, `http` must read as the
//! same host and port).
//!
//! The rule: `host[:port]`, host a name or IPv4 address made of letters, digits, `.`, `-`, `_`
//! and `~`, or a bracketed IPv6 address (hex digits, `:` and `.`, at least one `:`); the port,
//! when its colon is there, 1 to 5 digits worth 1 to 65535. Nothing else: no user info, no
//! lists, no empty port, no spaces.

use proptest::prelude::*;

use super::{harness, show};
use crate::rules::check_host;

fn reference(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else { return false };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else { return false };
        let ipv6 = inside.contains(':')
            && inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !ipv6 {
            return false;
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return false,
            },
        }
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let name = !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || "._-~".contains(c));
        if !name {
            return false;
        }
        (host, port)
    };
    let _ = host;
    match port {
        None => true,
        Some(port) => {
            (1..=5).contains(&port.len())
                && port.chars().all(|c| c.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
        }
    }
}

fn check(value: &[u8]) -> Result<(), TestCaseError> {
    let accepted = check_host(value).is_ok();
    prop_assert_eq!(accepted, reference(value), "Host {}", show(value));
    if accepted {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let authority = http::uri::Authority::try_from(text);
        prop_assert!(authority.is_ok(), "http cannot read an accepted Host {}", show(value));
        if let Ok(authority) = authority {
            let port = match text.strip_prefix('[') {
                Some(rest) => rest.split_once("]:").map(|(_, port)| port),
                None => text.split_once(':').map(|(_, port)| port),
            };
            let expected = port.and_then(|p| p.parse::<u16>().ok());
            prop_assert_eq!(authority.port_u16(), expected, "port of {}", show(value));
        }
    }
    Ok(())
}

/// Hosts in the shapes clients send, right or wrong.
fn host() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        "a", "shop", "example", "com", "0", "127", "1", ".", "-", "_", "~", ":", "::", "[", "]",
        "@", ",", " ", "%", "/", "?", "#", "80", "65535", "65536", "99999", "00080", "ff", "2001",
        "xn--", "\t", "\u{e9}",
    ]);
    prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat().into_bytes())
}

/// A name or address, and a port, each right or wrong, put together as `host[:port]`.
fn host_and_port() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        "shop.example",
        "a",
        "127.0.0.1",
        "[::1]",
        "[2001:db8::7]",
        "[::ffff:1.2.3.4]",
        "[]",
        "[::1",
        "::1",
        "a@b",
        "a,b",
        "a b",
        "",
        "a_b~c-d",
        "\u{e9}t\u{e9}",
        "a/b",
        "[zz::1]",
    ]);
    let port = prop::sample::select(vec![
        None,
        Some(""),
        Some("0"),
        Some("1"),
        Some("80"),
        Some("00080"),
        Some("000080"),
        Some("65535"),
        Some("65536"),
        Some("99999"),
        Some("8x"),
        Some("-1"),
        Some(":80"),
    ]);
    (name, port).prop_map(|(name, port)| match port {
        Some(port) => format!("{name}:{port}").into_bytes(),
        None => name.as_bytes().to_vec(),
    })
}

proptest! {
    #![proptest_config(harness::config())]

    /// Names and ports each right or wrong, put together.
    #[test]
    fn fuzz_host_names_and_ports_match_the_rule(value in host_and_port()) {
        check(&value)?;
    }

    /// Hosts built from the pieces that make the rule hard.
    #[test]
    fn fuzz_host_built_hosts_match_the_rule(value in host()) {
        check(&value)?;
    }

    /// Any bytes.
    #[test]
    fn fuzz_host_any_bytes_match_the_rule(value in prop::collection::vec(any::<u8>(), 0..40)) {
        check(&value)?;
    }
}
