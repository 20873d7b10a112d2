//! `proxy_protocol::parse` against the promises its module documents: on any bytes it never
//! panics; a complete header is no longer than the input or the limits, and reads the same
//! whatever follows it; `Incomplete` means every byte so far may still be header (so reading
//! it all consumes nothing of the request after it); built v1 and v2 headers read as built,
//! and every strict prefix of one is `Incomplete`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{harness, show};
use crate::proxy_protocol::{parse, Parse, MAX_V1_LEN, MAX_V2_LEN};

fn holds_promises(input: &[u8]) -> Result<(), TestCaseError> {
    match parse(input) {
        Ok(Parse::Complete(header)) => {
            prop_assert!(header.len <= input.len(), "{}", show(input));
            prop_assert!(header.len <= 16 + MAX_V2_LEN, "{}", show(input));
            let alone = parse(&input[..header.len]);
            prop_assert!(matches!(alone, Ok(Parse::Complete(h)) if h == header), "{}", show(input));
        }
        Ok(Parse::Incomplete) => {
            prop_assert!(input.len() < 16 + MAX_V2_LEN, "{}", show(input));
            for cut in 0..input.len() {
                let prefix = parse(&input[..cut]);
                prop_assert!(matches!(prefix, Ok(Parse::Incomplete)), "{} at {cut}", show(input));
            }
        }
        Err(_) => {}
    }
    Ok(())
}

/// A header built for `source`, and the length it takes.
fn built(v2: bool, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    if !v2 {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        let (s, d) = (source, destination);
        return format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port())
            .into_bytes();
    }
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("the generator pairs addresses of one family"),
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(s, sp, d, dp)| (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(s)), sp),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(d)), dp)
        )),
        (any::<u128>(), any::<u16>(), any::<u128>(), any::<u16>()).prop_map(|(s, sp, d, dp)| (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), sp),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dp)
        )),
    ]
}

/// Bytes that start like a header more often than at random.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    let starts = prop::sample::select(vec![
        &b"PROXY "[..],
        b"PROXY TCP4 ",
        b"PROXY TCP6 ",
        b"PROXY UNKNOWN",
        b"\r\n\r\n\0\r\nQUIT\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    ]);
    let tail = prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(b" .:0123456789\r\n".to_vec())],
        0..(MAX_V1_LEN + 20),
    );
    (starts, tail).prop_map(|(start, tail)| [start, &tail].concat())
}

proptest! {
    #![proptest_config(harness::config())]

    #[test]
    fn fuzz_proxy_header_built_headers_read_as_built(
        v2 in any::<bool>(),
        (source, destination) in pair(),
        after in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let header = built(v2, source, destination);
        let input = [&header[..], &after].concat();
        let parsed = parse(&input);
        prop_assert!(
            matches!(parsed, Ok(Parse::Complete(h)) if h.len == header.len() && h.source == Some(source)),
            "{} read as {parsed:?}", show(&input)
        );
        for cut in 0..header.len() {
            prop_assert!(matches!(parse(&header[..cut]), Ok(Parse::Incomplete)), "{} at {cut}", show(&header));
        }
    }

    #[test]
    fn fuzz_proxy_header_like_bytes_hold_the_promises(input in header_like()) {
        holds_promises(&input)?;
    }

    #[test]
    fn fuzz_proxy_header_any_bytes_hold_the_promises(input in prop::collection::vec(any::<u8>(), 0..64)) {
        holds_promises(&input)?;
    }
}
