//! The ClientHello reader against real hellos (made by rustls) and hand-built hostile ones, as
//! tables: bytes in, what must come out; and `Prefixed` replaying its prefix. The helpers that
//! make hellos are shared with the generated-input target (`fuzz/client_hello.rs`).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// How a test client is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Client {
    /// TLS 1.3 and 1.2, rustls's defaults.
    Default,
    /// TLS 1.2 only.
    Tls12,
    /// ALPN `h2` and `http/1.1` (a bigger hello).
    Alpn,
    /// `enable_sni = false`: no `server_name` whatever the name.
    NoSni,
    /// Records of at most 64 bytes: rustls fragments the hello itself.
    Fragmented,
}

/// The records of the ClientHello a rustls client of kind `client` sends to `name`.
pub(crate) fn rustls_hello(client: Client, name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match client {
        Client::Tls12 => builder.with_protocol_versions(&[&rustls::version::TLS12]),
        _ => builder.with_safe_default_protocol_versions(),
    };
    let mut config = builder
        .expect("ring supports these versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    match client {
        Client::Alpn => config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Client::NoSni => config.enable_sni = false,
        Client::Fragmented => config.max_fragment_size = Some(64),
        Client::Default | Client::Tls12 => {}
    }
    let name = ServerName::try_from(name).expect("a test server name").to_owned();
    let mut connection = ClientConnection::new(Arc::new(config), name).expect("a client");
    let mut out = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut out).expect("writes to a Vec");
    }
    out
}

/// The handshake bytes carried by `records` (well-formed ones, as built here).
pub(crate) fn handshake_of(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while let [_, _, _, high, low, ..] = *rest {
        let end = RECORD_HEADER + usize::from(u16::from_be_bytes([high, low]));
        out.extend_from_slice(&rest[RECORD_HEADER..end]);
        rest = &rest[end..];
    }
    out
}

/// `handshake` in handshake records of at most the given sizes, in turn (the last size
/// repeating), with version 3.1 in the first record and 3.3 after, as clients send them.
pub(crate) fn records(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    let mut sizes = sizes.iter().copied();
    let mut size = MAX_RECORD;
    while !rest.is_empty() {
        size = sizes.next().unwrap_or(size).clamp(1, MAX_RECORD);
        let (fragment, after) = rest.split_at(size.min(rest.len()));
        let minor = if out.is_empty() { 1 } else { 3 };
        out.extend_from_slice(&[HANDSHAKE, 3, minor]);
        out.extend_from_slice(&u16::try_from(fragment.len()).expect("clamped").to_be_bytes());
        out.extend_from_slice(fragment);
        rest = after;
    }
    out
}

/// A ClientHello handshake message with no session id, one suite, no compression and
/// `extensions` (`None`: the block left out, as old clients do).
fn hello(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    if let Some(extensions) = extensions {
        let mut block = Vec::new();
        for (kind, data) in extensions {
            block.extend_from_slice(&kind.to_be_bytes());
            block.extend_from_slice(&u16::try_from(data.len()).expect("short").to_be_bytes());
            block.extend_from_slice(data);
        }
        body.extend_from_slice(&u16::try_from(block.len()).expect("short").to_be_bytes());
        body.extend_from_slice(&block);
    }
    message(CLIENT_HELLO, &body)
}

/// A handshake message of type `kind` around `body`.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("short").to_be_bytes();
    [&[kind, len[1], len[2], len[3]][..], body].concat()
}

/// A `server_name` extension's data: a list of (type, name) entries.
fn names(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16::try_from(name.len()).expect("short").to_be_bytes());
        list.extend_from_slice(name);
    }
    [&u16::try_from(list.len()).expect("short").to_be_bytes()[..], &list].concat()
}

/// One record holding a ClientHello whose only extension is `server_name` naming `name`.
fn named(name: &[u8]) -> Vec<u8> {
    records(&hello(Some(&[(0, names(&[(0, name)]))])), &[])
}

/// What a case expects.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// A whole hello naming this server, all of the input's records.
    Name(Option<&'a str>),
    Incomplete,
    /// An error whose `Debug` starts so.
    Error(&'a str),
}

fn check(input: &[u8], want: Want<'_>) {
    let got = parse(input);
    let shown = crate::fuzz::show(input);
    match (want, &got) {
        (Want::Name(name), Ok(Hello::Complete { server_name, consumed })) => {
            assert_eq!(server_name.as_deref(), name, "name in {shown}");
            assert_eq!(*consumed, input.len(), "consumed of {shown}");
        }
        (Want::Incomplete, Ok(Hello::Incomplete)) => {}
        (Want::Error(start), Err(error)) if format!("{error:?}").starts_with(start) => {}
        (want, got) => panic!("{shown}: wanted {want:?}, got {got:?}"),
    }
}

#[test]
fn rustls_hellos_read_as_sent() {
    let cases = [
        (Client::Default, "Example.COM", Some("example.com")),
        (Client::Tls12, "Example.COM", Some("example.com")),
        (Client::Alpn, "api.example.com", Some("api.example.com")),
        (Client::Fragmented, "a-b_c.Example.org", Some("a-b_c.example.org")),
        (Client::NoSni, "example.com", None),
        // An address is no DNS name: rustls sends no server_name for it.
        (Client::Default, "192.0.2.1", None),
        (Client::Default, "2001:db8::1", None),
    ];
    for (client, name, want) in cases {
        let records = rustls_hello(client, name);
        check(&records, Want::Name(want));
        for cut in 0..records.len() {
            check(&records[..cut], Want::Incomplete);
        }
        // What follows the hello (here a ChangeCipherSpec record) is not read.
        let mut more = records.clone();
        more.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        let got = parse(&more).expect("a hello followed by more");
        let server_name = want.map(Box::from);
        assert_eq!(got, Hello::Complete { server_name, consumed: records.len() }, "{client:?}");
    }
    // The name is lowercased here, not by rustls.
    let sent = rustls_hello(Client::Default, "Example.COM");
    assert!(sent.windows(11).any(|w| w == b"Example.COM"));
    // rustls fragments when asked to.
    let fragmented = rustls_hello(Client::Fragmented, "example.com");
    assert!(fragmented.len() > handshake_of(&fragmented).len() + 2 * RECORD_HEADER);
}

#[test]
fn hellos_fragmented_anywhere_read_the_same() {
    let handshake = handshake_of(&rustls_hello(Client::Alpn, "Fragments.example.com"));
    let splits: &[&[usize]] =
        &[&[1, 2, 3, 64], &[3, 4, 60], &[4, 1, 1, 100], &[5, 100], &[37, 1, 200], &[200, 5000]];
    for sizes in splits {
        check(&records(&handshake, sizes), Want::Name(Some("fragments.example.com")));
    }
    // In as many records as are allowed, as small as that makes them: every cut is a start.
    let finest = records(&handshake, &[handshake.len().div_ceil(MAX_HELLO_RECORDS)]);
    check(&finest, Want::Name(Some("fragments.example.com")));
    for cut in 0..finest.len() {
        check(&finest[..cut], Want::Incomplete);
    }
    // A record more is refused once the allowed ones are whole and the hello is not.
    let bytewise = records(&handshake, &[1]);
    assert_eq!(bytewise.len(), handshake.len() * (RECORD_HEADER + 1));
    let allowed = MAX_HELLO_RECORDS * (RECORD_HEADER + 1);
    check(&bytewise[..allowed - 1], Want::Incomplete);
    check(
        &bytewise[..allowed],
        Want::Error("Malformed(\"a ClientHello in more than 64 records\")"),
    );
    check(&bytewise, Want::Error("Malformed(\"a ClientHello in more than 64 records\")"));
}

#[test]
fn hand_built_hellos() {
    let padding = (21, vec![0; 300]);
    let sni = |name: &[u8]| (0, names(&[(0, name)]));
    let long_label = [&b"a".repeat(63)[..], b".com"].concat();
    let too_long_label = [&b"a".repeat(64)[..], b".com"].concat();
    let name_253 = [&b"abcdefghi.".repeat(25)[..], b"com"].concat();
    let name_254 = [&b"abcdefghi.".repeat(25)[..], b"coma"].concat();
    let cases: Vec<(Vec<u8>, Want)> = vec![
        (records(&hello(None), &[]), Want::Name(None)),
        (records(&hello(Some(&[])), &[]), Want::Name(None)),
        (records(&hello(Some(std::slice::from_ref(&padding))), &[]), Want::Name(None)),
        (named(b"example.com"), Want::Name(Some("example.com"))),
        (named(b"EXAMPLE.com."), Want::Name(Some("example.com"))),
        (named(b"x"), Want::Name(Some("x"))),
        (named(b"_acme-challenge.Ex-ample.com"), Want::Name(Some("_acme-challenge.ex-ample.com"))),
        (named(&long_label), Want::Name(Some(std::str::from_utf8(&long_label).expect("ASCII")))),
        (named(&name_253), Want::Name(Some(std::str::from_utf8(&name_253).expect("ASCII")))),
        (named(&name_254), Want::Error("BadServerName")),
        (named(&too_long_label), Want::Error("BadServerName")),
        (named(b""), Want::Error("BadServerName")),
        (named(b"."), Want::Error("BadServerName")),
        (named(b"example.com.."), Want::Error("BadServerName")),
        (named(b".example.com"), Want::Error("BadServerName")),
        (named(b"a..b"), Want::Error("BadServerName")),
        (named(b"exa mple.com"), Want::Error("BadServerName")),
        (named(b"ex\xc3\xa4mple.com"), Want::Error("BadServerName")),
        (named(b"example.com:443"), Want::Error("BadServerName")),
        (named(b"exa\0mple.com"), Want::Error("BadServerName")),
        // Any extensions around server_name, before or after it.
        (
            records(
                &hello(Some(&[
                    padding.clone(),
                    sni(b"b.example"),
                    (16, vec![0, 3, 2, b'h', b'2']),
                ])),
                &[],
            ),
            Want::Name(Some("b.example")),
        ),
        // A name type other than host_name ends the list, as in rustls.
        (
            records(&hello(Some(&[(0, names(&[(0, b"first"), (1, b"x y")]))])), &[]),
            Want::Name(Some("first")),
        ),
        (
            records(&hello(Some(&[(0, names(&[(1, b"opaque"), (0, b"ignored")]))])), &[]),
            Want::Name(None),
        ),
        (
            records(&hello(Some(&[(0, names(&[(0, b"a"), (0, b"b")]))])), &[]),
            Want::Error("Malformed(\"two host names\")"),
        ),
        (
            records(&hello(Some(&[(0, vec![0, 0])])), &[]),
            Want::Error("Malformed(\"empty server name list\")"),
        ),
        (
            records(&hello(Some(&[(0, vec![])])), &[]),
            Want::Error("Malformed(\"server name list length\")"),
        ),
        (
            records(&hello(Some(&[(0, [names(&[(0, b"a")]), vec![0]].concat())])), &[]),
            Want::Error("Malformed(\"bytes after the server name list\")"),
        ),
        (
            records(&hello(Some(&[(0, vec![0, 9, 0, 0, 1, b'a'])])), &[]),
            Want::Error("Malformed(\"server name list\")"),
        ),
        (
            records(&hello(Some(&[sni(b"a"), padding.clone(), sni(b"b")])), &[]),
            Want::Error("Malformed(\"an extension sent twice\")"),
        ),
        (
            records(&hello(Some(&[padding.clone(), padding])), &[]),
            Want::Error("Malformed(\"an extension sent twice\")"),
        ),
    ];
    for (input, want) in cases {
        check(&input, want);
    }
}

#[test]
fn hostile_bytes_are_refused_as_early_as_they_can_be() {
    let good = hello(Some(&[(0, names(&[(0, b"example.com")]))]));
    let body = &good[HANDSHAKE_HEADER..];
    // The body with byte `at` set to `value`, and its handshake length kept.
    let patched = |at: usize, value: u8| {
        let mut body = body.to_vec();
        body[at] = value;
        records(&message(CLIENT_HELLO, &body), &[])
    };
    let cases: Vec<(Vec<u8>, Want)> = vec![
        (b"GET / HTTP/1.1\r\n".to_vec(), Want::Error("NotTls")),
        (b"G".to_vec(), Want::Error("NotTls")),
        (vec![0x80, 0x2e, 0x01, 0x03, 0x01], Want::Error("NotTls")), // SSL 2 hello
        (vec![21, 3, 3, 0, 2, 2, 40], Want::Error("NotTls")),        // an alert
        (vec![], Want::Incomplete),
        (vec![22], Want::Incomplete),
        (vec![22, 3, 1, 0], Want::Incomplete),
        (vec![22, 2], Want::Error("Malformed(\"record version is not 3.x\")")),
        (vec![22, 3, 5], Want::Error("Malformed(\"record version is above 3.4\")")),
        (vec![22, 3, 0, 0, 1], Want::Incomplete),
        (vec![22, 3, 4, 0, 1], Want::Incomplete),
        (vec![22, 3, 1, 0x40, 1], Want::Error("Malformed(\"record longer than 2^14 bytes\")")),
        (vec![22, 3, 1, 0, 0], Want::Error("Malformed(\"empty handshake record\")")),
        (vec![22, 3, 1, 0, 4, 2], Want::Error("NotClientHello")),
        (records(&message(2, &[3, 3]), &[]), Want::Error("NotClientHello")),
        // The declared handshake length alone rules it out, before any body arrives.
        (vec![22, 3, 1, 0, 4, 1, 1, 0, 0], Want::Error("TooLarge")),
        (vec![22, 3, 1, 0, 4, 1, 0, 0x3e, 0x80], Want::Incomplete),
        // Counted by what the records declare, not by what has arrived: 16 KiB in one record.
        (vec![22, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfc], Want::Incomplete),
        (vec![22, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfb], Want::Error("Malformed(\"its last record")),
        // A record ending past the ClientHello, and one of another type inside it.
        (
            [&[22, 3, 1, 0, 5], &message(CLIENT_HELLO, &[])[..]].concat(),
            Want::Error("Malformed(\"its last record carries more than the ClientHello\")"),
        ),
        (
            [&records(&good[..10], &[])[..], &[23, 3, 3, 0, 1, 0]].concat(),
            Want::Error("Malformed(\"a non-handshake record inside it\")"),
        ),
        (patched(0, 2), Want::Error("Malformed(\"client version is not 3.x\")")),
        (patched(34, 33), Want::Error("Malformed(\"session id longer than 32 bytes\")")),
        (patched(36, 3), Want::Error("Malformed(\"cipher suites length is odd or zero\")")),
        (patched(36, 0), Want::Error("Malformed(\"cipher suites length is odd or zero\")")),
        (patched(39, 0), Want::Error("Malformed(\"no compression method\")")),
        (patched(41, 0xff), Want::Error("Malformed(\"extensions\")")),
        (patched(42, body[42] - 1), Want::Error("Malformed(\"bytes after the extensions\")")),
        (patched(45, 0xff), Want::Error("Malformed(\"server name extension\")")),
        // A session id of 40 bytes is refused as soon as its length byte arrives.
        (
            patched(34, 40)[..RECORD_HEADER + HANDSHAKE_HEADER + 35].to_vec(),
            Want::Error("Malformed(\"session id"),
        ),
        // A body shorter than its vectors say.
        (
            records(&message(CLIENT_HELLO, &body[..body.len() - 1]), &[]),
            Want::Error("Malformed(\"extensions\")"),
        ),
        (
            records(&message(CLIENT_HELLO, &body[..38]), &[]),
            Want::Error("Malformed(\"cipher suites\")"),
        ),
    ];
    for (input, want) in cases {
        check(&input, want);
    }
}

/// A ClientHello of `message_len` handshake bytes (a padding extension fills it).
fn hello_of(message_len: usize) -> Vec<u8> {
    let empty = hello(Some(&[(21, vec![])]));
    hello(Some(&[(21, vec![0; message_len - empty.len()])]))
}

#[test]
fn the_limit_counts_every_record_byte() {
    // 16 KiB of handshake in four records: exactly the limit.
    let four = records(&hello_of(MAX_RECORD), &[MAX_RECORD / 4]);
    assert_eq!(four.len(), MAX_HELLO_BYTES);
    check(&four, Want::Name(None));
    // One byte more, or the same in five records, cannot fit: refused as soon as the records
    // so far leave too little room for the rest, even in full records.
    let over = records(&hello_of(MAX_RECORD + 1), &[MAX_RECORD / 4]);
    let two = 2 * (RECORD_HEADER + MAX_RECORD / 4);
    check(&over[..two], Want::Incomplete);
    check(&over[..two + RECORD_HEADER], Want::Error("TooLarge"));
    let five = records(&hello_of(MAX_RECORD), &[MAX_RECORD / 5 + 1]);
    check(&five, Want::Error("TooLarge"));
    // Small records add headers, but more than 64 records are refused before their headers
    // could pass the limit: 250-byte ones would need 65.
    let small = records(&hello_of(16_004), &[250]);
    check(&small[..64 * 255 - 1], Want::Incomplete);
    check(&small[..64 * 255], Want::Error("Malformed(\"a ClientHello in more than 64 records\")"));
    // A record may not run past the limit, even before the handshake length is known.
    let start = records(&[1, 0, 0], &[1]);
    check(&[&start[..], &[22, 3, 3, 0x3f, 0xfd]].concat(), Want::Incomplete);
    check(&[&start[..], &[22, 3, 3, 0x3f, 0xfe]].concat(), Want::Error("TooLarge"));
}

/// A stream of `pieces`, one per read (as much of it as the read takes), then the end.
pub(crate) struct Pieces(pub(crate) std::collections::VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn read_client_hello_reads_across_reads_and_keeps_what_follows() {
    let hello = rustls_hello(Client::Alpn, "Read.example.com");
    let sent = [&hello[..], b"early"].concat();
    let half = sent.len() / 2;
    let pieces = [&sent[..1], &sent[1..7], &sent[7..half], &sent[half..]];
    let mut stream = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
    let mut buf = Vec::new();
    let name = read_client_hello(&mut stream, &mut buf).await.expect("a hello");
    assert_eq!(name.as_deref(), Some("read.example.com"));
    // Replayed: the hello, then whatever came with it or after it.
    let mut replay = Prefixed::new(buf, stream);
    let mut all = Vec::new();
    replay.read_to_end(&mut all).await.expect("reads");
    assert_eq!(all, sent);

    // Bytes read before are the start of the hello.
    let mut buf = hello[..3].to_vec();
    let mut stream = Pieces([hello[3..].to_vec()].into());
    let name = read_client_hello(&mut stream, &mut buf).await.expect("a hello");
    assert_eq!(name.as_deref(), Some("read.example.com"));
}

#[tokio::test]
async fn read_client_hello_stops_at_the_first_wrong_byte_and_at_the_limit() {
    let hello = rustls_hello(Client::Default, "example.com");
    let mut buf = Vec::new();
    let got = read_client_hello(&mut Pieces([hello[..100].to_vec()].into()), &mut buf).await;
    assert!(matches!(got, Err(HelloError::Closed)), "{got:?}");
    assert_eq!(buf, hello[..100]);

    let mut buf = Vec::new();
    let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
    let got = read_client_hello(&mut Pieces([http.clone()].into()), &mut buf).await;
    assert!(matches!(got, Err(HelloError::NotTls)), "{got:?}");
    assert_eq!(buf, http);

    // A hello that fits exactly, sent in one piece: read in chunks, up to the limit.
    let four = records(&hello_of(MAX_RECORD), &[MAX_RECORD / 4]);
    let mut buf = Vec::new();
    let sent = [&four[..], &[0; 1000]].concat();
    let got = read_client_hello(&mut Pieces([sent].into()), &mut buf).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(buf.len(), MAX_HELLO_BYTES);

    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&[22, 3, 1, 0, 4, 1, 0, 0x41]).await.expect("write");
    client.write_all(&[0]).await.expect("write");
    let mut buf = Vec::new();
    let got = read_client_hello(&mut server, &mut buf).await;
    assert!(matches!(got, Err(HelloError::TooLarge)), "{got:?}");

    drop(client);
    let got = read_client_hello(&mut server, &mut Vec::new()).await;
    assert!(matches!(got, Err(HelloError::Closed)), "{got:?}");
}

#[tokio::test]
async fn prefixed_replays_its_prefix_then_reads_and_writes_through() {
    let (mut peer, inner) = tokio::io::duplex(64);
    let mut stream = Prefixed::new(b"hello ".to_vec(), inner);
    peer.write_all(b"world").await.expect("write");
    peer.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    let mut small = [0; 4];
    loop {
        let n = stream.read(&mut small).await.expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&small[..n]);
    }
    assert_eq!(got, b"hello world");
    assert_eq!(stream.prefix.capacity(), 0, "the prefix is freed once read");

    stream.write_all(b"back").await.expect("write");
    let slices = [IoSlice::new(b" and"), IoSlice::new(b" forth")];
    let n = stream.write_vectored(&slices).await.expect("write");
    assert_eq!(stream.is_write_vectored(), stream.get_ref().is_write_vectored());
    stream.flush().await.expect("flush");
    stream.get_mut().shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    peer.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, &b"back and forth"[..4 + n]);

    let (mut peer, inner) = tokio::io::duplex(64);
    let mut plain = Prefixed::plain(inner);
    peer.write_all(b"as is").await.expect("write");
    let mut got = [0; 5];
    plain.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"as is");
    plain.shutdown().await.expect("shutdown");
    drop(plain.into_inner());
    assert_eq!(peer.read(&mut got).await.expect("read"), 0);
}
