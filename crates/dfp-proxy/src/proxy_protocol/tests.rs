//! The PROXY header parser against hostile inputs, as a table: bytes in, what must come out.

use super::*;

/// What a case expects.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A header of this many bytes naming this client (`None`: keep the peer).
    Header(usize, Option<&'static str>),
    Incomplete,
    Bad,
}

fn check(input: &[u8], want: Want) {
    let got = parse(input);
    let shown = String::from_utf8_lossy(input);
    match (&want, got) {
        (Want::Header(len, source), Ok(Parse::Complete(header))) => {
            assert_eq!(header.len, *len, "length of {shown:?}");
            let source = source.map(|s| s.parse::<SocketAddr>().expect("a test address"));
            assert_eq!(header.source, source, "client of {shown:?}");
        }
        (Want::Incomplete, Ok(Parse::Incomplete)) | (Want::Bad, Err(_)) => {}
        (want, got) => panic!("{shown:?}: wanted {want:?}, got {got:?}"),
    }
}

/// A v2 header: command byte, family byte, the variable part.
fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(rest.len()).expect("short").to_be_bytes());
    out.extend_from_slice(rest);
    out
}

const V4_BLOCK: [u8; 12] = [203, 0, 113, 7, 10, 0, 0, 1, 0xd4, 0x31, 0, 80];

#[test]
fn v1_lines() {
    let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1_LEN - 16));
    let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1_LEN - 15));
    let cases: &[(&[u8], Want)] = &[
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80\r\nGET /",
            Want::Header(42, Some("203.0.113.7:54321")),
        ),
        (b"PROXY TCP6 2001:db8::7 ::1 1 443\r\n", Want::Header(34, Some("[2001:db8::7]:1"))),
        (b"PROXY TCP4 0.0.0.0 0.0.0.0 0 65535\r\n", Want::Header(36, Some("0.0.0.0:0"))),
        (b"PROXY UNKNOWN\r\n", Want::Header(15, None)),
        (b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n", Want::Header(31, None)),
        (long.as_bytes(), Want::Header(MAX_V1_LEN, None)),
        (too_long.as_bytes(), Want::Bad),
        (&[b'P'; 1], Want::Incomplete),
        (b"PROX", Want::Incomplete),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80", Want::Incomplete),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80\r", Want::Incomplete),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80\n", Want::Bad),
        (b"PROXY  TCP4 203.0.113.7 10.0.0.1 54321 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80 \r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 54321\r\n", Want::Bad),
        (b"PROXY TCP4 ::1 10.0.0.1 1 80\r\n", Want::Bad),
        (b"PROXY TCP6 203.0.113.7 ::1 1 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.256 10.0.0.1 1 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.07 10.0.0.1 1 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 080 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 +80 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 80\r\n", Want::Bad),
        (b"PROXY UDP4 203.0.113.7 10.0.0.1 1 80\r\n", Want::Bad),
        (b"PROXY tcp4 203.0.113.7 10.0.0.1 1 80\r\n", Want::Bad),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 1 8\xff\r\n", Want::Bad),
        (b"PROXY \r\n", Want::Bad),
        (b"proxy TCP4 203.0.113.7 10.0.0.1 1 80\r\n", Want::Bad),
        (b"GET / HTTP/1.1\r\n\r\n", Want::Bad),
        (b"\x16\x03\x01\x02\x00", Want::Bad),
        (b"", Want::Incomplete),
    ];
    for (input, want) in cases {
        check(input, *want);
    }
}

#[test]
fn v2_headers() {
    let mut v6_block = [0u8; 36];
    v6_block[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
    v6_block[32..34].copy_from_slice(&443u16.to_be_bytes());
    let mut with_tlvs = V4_BLOCK.to_vec();
    // Two TLVs: PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP of 5 bytes.
    with_tlvs.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 5, 0, 0, 0, 0, 0]);
    let mut longest = V4_BLOCK.to_vec();
    longest.resize(MAX_V2_LEN, 0);
    let mut too_long = V4_BLOCK.to_vec();
    too_long.resize(MAX_V2_LEN + 1, 0);
    let proxy_v4 = v2(0x21, 0x11, &V4_BLOCK);
    let cases: Vec<(Vec<u8>, Want)> = vec![
        (proxy_v4.clone(), Want::Header(28, Some("203.0.113.7:54321"))),
        (
            [proxy_v4.as_slice(), b"GET / HTTP/1.1\r\n"].concat(),
            Want::Header(28, Some("203.0.113.7:54321")),
        ),
        (v2(0x21, 0x21, &v6_block), Want::Header(52, Some("[2001:db8::7]:443"))),
        (v2(0x21, 0x11, &with_tlvs), Want::Header(16 + 25, Some("203.0.113.7:54321"))),
        (v2(0x21, 0x11, &longest), Want::Header(16 + MAX_V2_LEN, Some("203.0.113.7:54321"))),
        (v2(0x21, 0x11, &too_long), Want::Bad),
        // LOCAL: a balancer's health check; its addresses (if any) are ignored.
        (v2(0x20, 0x00, &[]), Want::Header(16, None)),
        (v2(0x20, 0x11, &V4_BLOCK), Want::Header(28, None)),
        // PROXY with UNSPEC or UNIX: nothing usable, the peer stays the client.
        (v2(0x21, 0x00, &[]), Want::Header(16, None)),
        (v2(0x21, 0x31, &[0; 216]), Want::Header(232, None)),
        // Truncated: the fixed part, or the addresses it announces.
        (proxy_v4[..11].to_vec(), Want::Incomplete),
        (proxy_v4[..15].to_vec(), Want::Incomplete),
        (proxy_v4[..27].to_vec(), Want::Incomplete),
        // The length too short for the family's block.
        (v2(0x21, 0x11, &V4_BLOCK[..11]), Want::Bad),
        (v2(0x21, 0x21, &V4_BLOCK), Want::Bad),
        // Wrong version, command, family, transport; a damaged signature.
        (v2(0x11, 0x11, &V4_BLOCK), Want::Bad),
        (v2(0x22, 0x11, &V4_BLOCK), Want::Bad),
        (v2(0x21, 0x41, &V4_BLOCK), Want::Bad),
        (v2(0x21, 0x13, &V4_BLOCK), Want::Bad),
        ([b"\r\n\r\n\0\r\nQUIT\r".as_slice(), &proxy_v4[12..]].concat(), Want::Bad),
        (b"\r\n\r\n\0\r\nQU".to_vec(), Want::Incomplete),
        (b"\r\n\r\n\r\n".to_vec(), Want::Bad),
    ];
    for (input, want) in cases {
        check(&input, want);
    }
}

/// Through a real socket: only the header's bytes are consumed, whatever pieces it comes in,
/// and a silent or closing peer ends the read.
#[tokio::test]
async fn reading_consumes_exactly_the_header() {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pieces: [&[u8]; 4] = [b"PROXY TCP4 203.0.113.7 ", b"10.0.0.1 5", b"4321 80\r", b"\nGET /"];
    let client = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for piece in pieces {
            stream.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stream
    });
    let (mut accepted, _) = listener.accept().await.expect("accept");
    let source = read_header(&mut accepted, Duration::from_secs(5)).await.expect("a header");
    let named = ("203.0.113.7:54321".parse().expect("addr"), "10.0.0.1:80".parse().expect("addr"));
    assert_eq!(source, Some(named));
    let mut rest = [0u8; 5];
    accepted.read_exact(&mut rest).await.expect("the request follows");
    assert_eq!(&rest, b"GET /");
    drop(client.await.expect("client"));

    // A peer that says nothing: the timeout; one that closes midway: truncated.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let (mut accepted, _) = listener.accept().await.expect("accept");
    let err = read_header(&mut accepted, Duration::from_millis(100)).await.expect_err("timeout");
    assert!(matches!(err, BadProxyHeader::Timeout(_)), "{err}");
    drop(silent);
    let mut closing = TcpStream::connect(addr).await.expect("connect");
    closing.write_all(b"PROXY TCP4").await.expect("write");
    drop(closing);
    let (mut accepted, _) = listener.accept().await.expect("accept");
    let err = read_header(&mut accepted, Duration::from_secs(5)).await.expect_err("truncated");
    assert!(matches!(err, BadProxyHeader::Truncated), "{err}");
}

/// What is sent reads back as sent, in both versions, for both families and a mix of them.
#[test]
fn encoded_headers_read_back() {
    let cases = [
        ("203.0.113.7:54321", "10.0.0.1:80", "203.0.113.7:54321", "10.0.0.1:80"),
        ("[2001:db8::7]:1", "[::1]:443", "[2001:db8::7]:1", "[::1]:443"),
        // One header carries one family: an IPv4 client on an IPv6 listener goes as IPv6.
        ("203.0.113.7:2", "[::1]:80", "[::ffff:203.0.113.7]:2", "[::1]:80"),
    ];
    for (client, local, source, destination) in cases {
        let addr = |a: &str| a.parse::<SocketAddr>().expect("a test address");
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut sent = encode(version, addr(client), addr(local));
            let len = sent.len();
            sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let Ok(Parse::Complete(header)) = parse(&sent) else {
                panic!("{version:?} {client}: {}", String::from_utf8_lossy(&sent))
            };
            assert_eq!(header.len, len);
            assert_eq!(header.source, Some(addr(source)), "{version:?} {client}");
            assert_eq!(header.destination, Some(addr(destination)), "{version:?} {client}");
        }
    }
    let v1 = encode(
        ProxyProtocol::V1,
        "203.0.113.7:54321".parse().expect("a"),
        "10.0.0.1:80".parse().expect("a"),
    );
    assert_eq!(v1, b"PROXY TCP4 203.0.113.7 10.0.0.1 54321 80\r\n");
}
