//! Access lists of a service: which HTTP methods and which client addresses it lets through
//! (`allowedMethods` / `deniedMethods`, `allowedSources` / `deniedSources`), and the same
//! address lists for the proxy's `--trusted-proxies`.
//!
//! Why here and in this shape: the lists are parsed once, at reconfigure time, into values
//! the data plane only compares against. An address list is two boxed slices of
//! `(network, mask)` integers, one for IPv4 and one for IPv6, so a check is a few integer
//! operations per entry with no allocation, no parsing and no lock; an empty list (a service
//! without one) is never looked at. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, what a
//! dual-stack socket reports for an IPv4 client) are matched as the IPv4 address they carry,
//! both in lists and in clients, so `10.0.0.0/8` means the same on either kind of listener.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::PolicyError;

/// A list of IPv4/IPv6 networks (CIDR blocks or single addresses). Empty: no list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceList {
    /// `(network, mask)`, the network's host bits zero.
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl SourceList {
    /// Parses a comma-separated list such as `10.0.0.0/8, 192.168.1.7, 2001:db8::/32`.
    /// Blank entries are skipped; an entry that is not an address or a CIDR block, or whose
    /// host bits are set (`10.1.2.3/8`), is refused by name.
    pub fn parse(list: &str) -> Result<Self, PolicyError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_net(entry)? {
                Net::V4(net, mask) => {
                    if !v4.contains(&(net, mask)) {
                        v4.push((net, mask));
                    }
                }
                Net::V6(net, mask) => {
                    if !v6.contains(&(net, mask)) {
                        v6.push((net, mask));
                    }
                }
            }
        }
        Ok(SourceList { v4: v4.into(), v6: v6.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in one of the networks. Never allocates.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let ip = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(v6) => {
                let ip = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| ip & mask == net)
            }
        }
    }

    /// The networks as `address/length`, IPv4 first, in the order given.
    pub fn entries(&self) -> impl Iterator<Item = String> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|&(net, mask)| format!("{}/{}", Ipv4Addr::from(net), mask.count_ones()));
        let v6 = self
            .v6
            .iter()
            .map(|&(net, mask)| format!("{}/{}", Ipv6Addr::from(net), mask.count_ones()));
        v4.chain(v6)
    }
}

impl fmt::Display for SourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self.entries().collect();
        f.write_str(&entries.join(","))
    }
}

enum Net {
    V4(u32, u32),
    V6(u128, u128),
}

fn parse_net(entry: &str) -> Result<Net, PolicyError> {
    let bad = |why: &'static str| PolicyError::BadSource { entry: entry.to_owned(), why };
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => {
            let len: u8 =
                len.parse().map_err(|_| bad("the prefix length after '/' is not a number"))?;
            (addr, Some(len))
        }
        None => (entry, None),
    };
    let addr: IpAddr =
        addr.parse().map_err(|_| bad("it is not an IPv4 or IPv6 address or CIDR block"))?;
    match addr {
        IpAddr::V4(v4) => v4_net(u32::from(v4), len.unwrap_or(32)).ok_or(bad(
            "the prefix length is above 32, or host bits are set (give the network, e.g. 10.0.0.0/8)",
        )),
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            // `::ffff:a.b.c.d/104` is the IPv4 block `a.b.c.d/8`.
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), len >= 96) {
                return v4_net(u32::from(v4), len - 96).ok_or(bad(
                    "host bits are set (give the network, e.g. ::ffff:10.0.0.0/104)",
                ));
            }
            if len > 128 {
                return Err(bad("the prefix length is above 128"));
            }
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            let net = u128::from(v6);
            if net & mask != net {
                return Err(bad("host bits are set (give the network, e.g. 2001:db8::/32)"));
            }
            Ok(Net::V6(net, mask))
        }
    }
}

fn v4_net(net: u32, len: u8) -> Option<Net> {
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    (net & mask == net).then_some(Net::V4(net, mask))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; others as they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client's address under the usual real-IP rule (nginx's `real_ip_recursive on`,
/// HAProxy's right-most `X-Forwarded-For`): when the TCP peer is one of the `trusted`
/// proxies, the client is the right-most `X-Forwarded-For` entry that is not trusted
/// (walking right to left over every field, the last field's entries first). An entry that
/// is not an address stops the walk: the last trusted hop seen is the client. Otherwise,
/// or with no trusted proxies, the client is the peer. Never allocates.
///
/// `forwarded_for` gives every `X-Forwarded-For` value in the order received.
pub fn client_address<'a, I>(peer: IpAddr, trusted: &SourceList, forwarded_for: I) -> IpAddr
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for value in forwarded_for.rev() {
        for entry in value.rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_ip(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or (as some balancers write it) `[v6]`,
/// `[v6]:port` or `v4:port`.
fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(v6, _)| v6.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6);
    }
    text.rsplit_once(':').and_then(|(v4, _)| v4.parse::<Ipv4Addr>().ok()).map(IpAddr::V4)
}

/// A list of HTTP methods (`allowedMethods`, `deniedMethods`). Empty: no list.
///
/// Names are stored uppercase and compared ignoring ASCII case, so `deniedMethods=DELETE`
/// also stops a client that sends `delete` (which some frameworks would route as DELETE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodList(Box<[Box<str>]>);

impl MethodList {
    /// Parses a comma-separated list such as `GET, HEAD`; each name must be an HTTP token.
    pub fn parse(list: &str) -> Result<Self, PolicyError> {
        let mut methods: Vec<Box<str>> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !entry.bytes().all(is_tchar) {
                return Err(PolicyError::BadMethod(entry.to_owned()));
            }
            let upper: Box<str> = entry.to_ascii_uppercase().into();
            if !methods.contains(&upper) {
                methods.push(upper);
            }
        }
        Ok(MethodList(methods.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `method` is listed (ignoring ASCII case).
    pub fn contains(&self, method: &str) -> bool {
        self.0.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|m| &**m)
    }
}

impl fmt::Display for MethodList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.names().collect();
        f.write_str(&names.join(","))
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn source_lists_match_v4_v6_and_mapped() {
        let list =
            SourceList::parse("10.0.0.0/8, 192.168.1.7 ,2001:db8::/32, ::1, ::ffff:172.16.0.0/108")
                .expect("valid");
        let cases = [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("::1", true),
            ("::2", false),
            ("::ffff:10.9.9.9", true), // a mapped client matches the IPv4 block
            ("172.16.3.4", true),      // a mapped block matches the IPv4 client
            ("172.32.0.1", false),
        ];
        for (client, expected) in cases {
            assert_eq!(list.contains(ip(client)), expected, "{client}");
        }
        assert_eq!(
            list.entries().collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.168.1.7/32", "172.16.0.0/12", "2001:db8::/32", "::1/128"]
        );
        let everything = SourceList::parse("0.0.0.0/0, ::/0").expect("valid");
        assert!(everything.contains(ip("8.8.8.8")) && everything.contains(ip("fe80::1")));
        assert!(SourceList::parse(" , ").expect("blank").is_empty());
        assert!(!SourceList::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn bad_sources_are_named() {
        for bad in [
            "10.0.0.0/33",
            "10.1.2.3/8",
            "10.0.0",
            "example.com",
            "::1/129",
            "10.0.0.0/x",
            "2001:db8::1/32",
            "::ffff:10.1.0.0/104",
        ] {
            let err = SourceList::parse(&format!("10.0.0.0/8,{bad}")).expect_err(bad);
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn client_is_the_right_most_untrusted_forwarded_entry() {
        let trusted = SourceList::parse("10.0.0.0/8, ::1").expect("valid");
        let xff = |values: &'static [&'static str]| values.iter().map(|v| v.as_bytes());
        let cases: [(&str, &[&str], &str); 10] = [
            // An untrusted peer's header is not believed.
            ("203.0.113.9", &["1.2.3.4"], "203.0.113.9"),
            // A trusted peer without the header: the peer.
            ("10.0.0.1", &[], "10.0.0.1"),
            ("10.0.0.1", &["1.2.3.4"], "1.2.3.4"),
            // A forged left-most entry is skipped: the right-most untrusted one wins.
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4, 10.0.0.2"], "1.2.3.4"),
            // Across fields: the last field's entries come first.
            ("10.0.0.1", &["6.6.6.6", "1.2.3.4, 10.0.0.5"], "1.2.3.4"),
            ("10.0.0.1", &["1.2.3.4", "10.0.0.5"], "1.2.3.4"),
            // All trusted: the left-most (the farthest hop known).
            ("10.0.0.1", &["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // Garbage stops the walk at the last trusted hop.
            ("10.0.0.1", &["1.2.3.4, junk, 10.0.0.2"], "10.0.0.2"),
            ("::1", &["[2001:db8::7]:4711", "5.6.7.8:80"], "5.6.7.8"),
            ("::ffff:10.0.0.1", &["2001:db8::7"], "2001:db8::7"),
        ];
        for (peer, values, expected) in cases {
            assert_eq!(
                client_address(ip(peer), &trusted, xff(values)),
                ip(expected),
                "{peer} {values:?}"
            );
        }
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(
            client_address(ip("10.0.0.1"), &SourceList::default(), xff(&["1.2.3.4"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn method_lists() {
        let list = MethodList::parse("get, HEAD,GET").expect("valid");
        assert_eq!(list.to_string(), "GET,HEAD");
        assert!(list.contains("GET") && list.contains("get") && list.contains("HEAD"));
        assert!(!list.contains("POST"));
        assert!(MethodList::parse("").expect("empty").is_empty());
        for bad in ["GE T", "GET/1", "\"GET\"", "G(ET"] {
            assert!(matches!(MethodList::parse(bad), Err(PolicyError::BadMethod(_))), "{bad}");
        }
        assert!(MethodList::parse("PURGE, M-SEARCH").is_ok());
    }
}
