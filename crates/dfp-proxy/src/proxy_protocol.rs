//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header an L4 balancer in front
//! of the proxy sends before anything else on a connection, naming the client it accepted.
//!
//! Why it exists: behind a TCP balancer (an AWS NLB, HAProxy in `mode tcp`) every connection's
//! peer is the balancer, and a TLS connection cannot carry `X-Forwarded-For` from it. The
//! header gives the client's address back, and from then on that address is the connection's
//! peer for every rule (`X-Forwarded-For`, the access log, `allowedSources`/`deniedSources`).
//!
//! Trust is by peer only (`--accept-proxy`): a listed peer must send a header, an unlisted
//! one is never asked for one (whatever it sends is its request, and a PROXY line is a bad
//! one). Reading is bounded: v1's line is at most 107 bytes (the spec's limit), v2's
//! variable part at most [`MAX_V2_LEN`]; the socket is peeked, and only the header's own bytes
//! are consumed, so what follows (a request, a ClientHello) is left for the engine.
//!
//! Sending ([`encode`]) is for instances that ask for the header (`sendProxyProtocol`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use dfp_routing::ProxyProtocol;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// v2's fixed signature: the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's start: `PROXY` and one space.
const V1_START: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included (the spec's `107`).
pub(crate) const MAX_V1_LEN: usize = 107;
/// The longest v2 variable part (addresses and TLVs) read. The spec allows 65535; the
/// addresses take at most 216 and the TLVs balancers send (SSL details, a VPC endpoint id)
/// a few hundred more, so anything longer is refused instead of buffered.
pub(crate) const MAX_V2_LEN: usize = 2048;

/// Why a connection from a listed peer was closed instead of served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadProxyHeader {
    #[error("the connection does not start with a PROXY protocol signature")]
    Signature,
    #[error("the PROXY v1 line is longer than 107 bytes")]
    V1TooLong,
    #[error("the PROXY v1 line is malformed: {0}")]
    V1Malformed(&'static str),
    #[error("the PROXY v2 header is malformed: {0}")]
    V2Malformed(&'static str),
    #[error("the PROXY v2 header is longer than {MAX_V2_LEN} bytes")]
    V2TooLong,
    #[error("the connection ended before the PROXY header did")]
    Truncated,
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header failed")]
    Io(#[source] std::io::Error),
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// How many bytes the header takes at the start of the connection.
    pub(crate) len: usize,
    /// The client the balancer accepted, or `None` for v1 `UNKNOWN`, v2 `LOCAL` and address
    /// families other than IPv4/IPv6: the connection's real peer stays the client.
    pub(crate) source: Option<SocketAddr>,
    /// The address the client connected to (the balancer's), when `source` is known.
    pub(crate) destination: Option<SocketAddr>,
}

/// The outcome of looking at the bytes a connection started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parse {
    /// A whole header.
    Complete(Header),
    /// A header's valid beginning, and every byte seen belongs to it: read more.
    Incomplete,
}

/// Parses the header at the start of `input` (v1 or v2, told apart by the signature). Never
/// reads past the header: `Incomplete` means all of `input` is header so far.
pub(crate) fn parse(input: &[u8]) -> Result<Parse, BadProxyHeader> {
    let start = input.len().min(V2_SIGNATURE.len());
    if input[..start] == V2_SIGNATURE[..start] {
        return if start < V2_SIGNATURE.len() { Ok(Parse::Incomplete) } else { parse_v2(input) };
    }
    let start = input.len().min(V1_START.len());
    if input[..start] == V1_START[..start] {
        return if start < V1_START.len() { Ok(Parse::Incomplete) } else { parse_v1(input) };
    }
    Err(BadProxyHeader::Signature)
}

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, or `PROXY UNKNOWN[ anything]\r\n`.
fn parse_v1(input: &[u8]) -> Result<Parse, BadProxyHeader> {
    let Some(lf) = memchr::memchr(b'\n', &input[..input.len().min(MAX_V1_LEN)]) else {
        return if input.len() >= MAX_V1_LEN {
            Err(BadProxyHeader::V1TooLong)
        } else {
            Ok(Parse::Incomplete)
        };
    };
    let len = lf + 1;
    let line = input[..lf].strip_suffix(b"\r").ok_or(BadProxyHeader::V1Malformed("no CR"))?;
    let line = std::str::from_utf8(&line[V1_START.len()..])
        .map_err(|_| BadProxyHeader::V1Malformed("not ASCII"))?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Parse::Complete(Header { len, source: None, destination: None }));
    }
    let mut fields = line.split(' ');
    let mut next = || fields.next().ok_or(BadProxyHeader::V1Malformed("missing field"));
    let (protocol, src, dst, sport, dport) = (next()?, next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(BadProxyHeader::V1Malformed("too many fields"));
    }
    let ip = |text: &str| -> Result<IpAddr, BadProxyHeader> {
        let ip = match protocol {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(BadProxyHeader::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
        };
        ip.map_err(|_| BadProxyHeader::V1Malformed("bad address"))
    };
    let (src, dst) = (ip(src)?, ip(dst)?);
    let (sport, dport) = (port(sport)?, port(dport)?);
    let (source, destination) = (SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
    Ok(Parse::Complete(Header { len, source: Some(source), destination: Some(destination) }))
}

/// A decimal port: 1 to 5 digits, at most 65535, no sign, no leading zero (but `0` itself).
fn port(text: &str) -> Result<u16, BadProxyHeader> {
    let bad = BadProxyHeader::V1Malformed("bad port");
    if text.is_empty()
        || text.len() > 5
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

/// The 16-byte fixed part (signature, version and command, family and transport, length),
/// then addresses and TLVs (skipped).
fn parse_v2(input: &[u8]) -> Result<Parse, BadProxyHeader> {
    let Some(fixed) = input.get(..16) else { return Ok(Parse::Incomplete) };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(BadProxyHeader::V2Malformed("version is not 2"));
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    if family > 3 || transport > 2 {
        return Err(BadProxyHeader::V2Malformed("unknown address family or transport"));
    }
    let rest = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if rest > MAX_V2_LEN {
        return Err(BadProxyHeader::V2TooLong);
    }
    let len = 16 + rest;
    let Some(body) = input.get(16..len) else { return Ok(Parse::Incomplete) };
    let addresses = match command {
        // LOCAL: the balancer's own connection (a health check); the addresses are ignored.
        0 => None,
        1 => match family {
            1 => {
                let a = body.get(..12).ok_or(BadProxyHeader::V2Malformed("short IPv4 block"))?;
                let ip =
                    |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
                let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
                Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
            }
            2 => {
                let a = body.get(..36).ok_or(BadProxyHeader::V2Malformed("short IPv6 block"))?;
                let ip = |at: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[at..at + 16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
                Some((SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34))))
            }
            // UNSPEC or UNIX: nothing that is an IP address; the real peer stays the client.
            _ => None,
        },
        _ => return Err(BadProxyHeader::V2Malformed("command is neither LOCAL nor PROXY")),
    };
    let (source, destination) = (addresses.map(|a| a.0), addresses.map(|a| a.1));
    Ok(Parse::Complete(Header { len, source, destination }))
}

/// Reads the PROXY header `stream` must start with, within `timeout`, consuming exactly its
/// bytes, and returns what it says: the client, and the address the client connected to
/// (`None`: keep the real peer and local address).
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<(SocketAddr, SocketAddr)>, BadProxyHeader> {
    tokio::time::timeout(timeout, read_header_untimed(stream))
        .await
        .map_err(|_| BadProxyHeader::Timeout(timeout))?
}

async fn read_header_untimed(
    stream: &mut TcpStream,
) -> Result<Option<(SocketAddr, SocketAddr)>, BadProxyHeader> {
    // Bytes consumed so far (all of them header), then what the socket has past them.
    let mut seen: Vec<u8> = Vec::with_capacity(MAX_V1_LEN + 1);
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await.map_err(BadProxyHeader::Io)?;
        if n == 0 {
            return Err(BadProxyHeader::Truncated);
        }
        let consumed = seen.len();
        seen.extend_from_slice(&peeked[..n]);
        // Consume only the header's bytes: what follows is the engine's.
        let (take, done) = match parse(&seen)? {
            Parse::Complete(header) => {
                (header.len - consumed, Some(header.source.zip(header.destination)))
            }
            // Everything peeked is header: take it, and wait for more.
            Parse::Incomplete => (n, None),
        };
        stream.read_exact(&mut peeked[..take]).await.map_err(BadProxyHeader::Io)?;
        if let Some(source) = done {
            return Ok(source);
        }
    }
}

/// The header to send an instance for a connection from `client` to `local` (the proxy's end
/// of the client's connection). Addresses of different families are sent as IPv6 (an IPv4
/// one mapped), since a header carries one family.
pub(crate) fn encode(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (as_v6(client), as_v6(local)),
    };
    match version {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (client.ip(), local.ip()) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    out.extend_from_slice(&[0x11, 0, 12]); // AF_INET, STREAM; 12 bytes
                    out.extend_from_slice(&src.octets());
                    out.extend_from_slice(&dst.octets());
                }
                (src, dst) => {
                    out.extend_from_slice(&[0x21, 0, 36]); // AF_INET6, STREAM; 36 bytes
                    out.extend_from_slice(&v6(src).octets());
                    out.extend_from_slice(&v6(dst).octets());
                }
            }
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&local.port().to_be_bytes());
            out
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(v6(addr.ip())), addr.port())
}

#[cfg(test)]
mod tests;
