//! `client_hello::parse` and `read_client_hello` against the promises their module documents
//! and against rustls's own ClientHello reader.
//!
//! On any bytes, and on real hellos damaged at random, `parse` never panics, and an answer
//! other than `Incomplete` is final: every prefix reads `Incomplete` or the same answer, and
//! the input with anything after it reads the same (a hello: the same name and length, and
//! its records alone read the same too). `read_client_hello` fed the input in random reads
//! agrees with `parse`. Where rustls's `Acceptor` takes a damaged hello and names a server,
//! `parse` names the same one, but for the few rules in which the module is meant to be
//! stricter than rustls (listed in [`STRICTER_THAN_RUSTLS`]).
//!
//! Real hellos from rustls for random DNS names, re-fragmented into random records and read
//! in random pieces (whole, byte by byte and cut), always give the name, lowercased.

use std::future::Future as _;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{cuts, harness, pieces, same_however_split, show};
use crate::client_hello::tests::{handshake_of, records, rustls_hello, Client, Pieces};
use crate::client_hello::{parse, read_client_hello, Hello, HelloError, MAX_HELLO_BYTES};

/// The errors by which the module refuses hellos rustls reads, on purpose: record versions
/// above 3.4 and records over 2^14 bytes (rustls takes any 3.x and up to 2^14 + 2048), a
/// client version other than 3.x (rustls leaves it to the version negotiation), a record
/// that goes on after the ClientHello (rustls reads the hello and leaves the rest for later),
/// and a hello in more than 64 records (rustls takes any number; the bound keeps reading
/// linear, see `read_client_hello`).
const STRICTER_THAN_RUSTLS: &[&str] = &[
    "record version is above 3.4",
    "record longer than 2^14 bytes",
    "client version is not 3.x",
    "its last record carries more than the ClientHello",
    "a ClientHello in more than 64 records",
];

/// An answer as the properties compare them (`HelloError` holds an `io::Error`, so it is not
/// `PartialEq`): its `Debug`.
fn answer(parsed: &Result<Hello, HelloError>) -> String {
    format!("{parsed:?}")
}

/// `read_client_hello` over `pieces`, one per read, then the end of the stream; its answer
/// and what it read.
fn read_pieces(pieces: &[&[u8]]) -> (String, usize) {
    let mut stream = Pieces(pieces.iter().filter(|p| !p.is_empty()).map(|p| p.to_vec()).collect());
    let mut buf = Vec::new();
    let read = pin!(read_client_hello(&mut stream, &mut buf))
        .poll(&mut Context::from_waker(Waker::noop()));
    let Poll::Ready(read) = read else { unreachable!("reading pieces never waits") };
    (format!("{read:?}"), buf.len())
}

/// What `read_client_hello` must answer for an input `parse` reads as `parsed`, once the
/// stream ends after it.
fn read_answer(parsed: &Result<Hello, HelloError>) -> String {
    let read: Result<Option<Box<str>>, HelloError> = match parsed {
        Ok(Hello::Complete { server_name, .. }) => Ok(server_name.clone()),
        Ok(Hello::Incomplete) => Err(HelloError::Closed),
        Err(HelloError::Malformed(what)) => Err(HelloError::Malformed(what)),
        Err(HelloError::NotTls) => Err(HelloError::NotTls),
        Err(HelloError::NotClientHello) => Err(HelloError::NotClientHello),
        Err(HelloError::BadServerName) => Err(HelloError::BadServerName),
        Err(HelloError::TooLarge) => Err(HelloError::TooLarge),
        Err(HelloError::Io(_) | HelloError::Closed) => unreachable!("parse does no IO"),
    };
    format!("{read:?}")
}

/// The module's promises on `input`, `tail` (anything after it) and `fractions` (where to
/// take prefixes and cut it into reads).
fn holds_promises(input: &[u8], tail: &[u8], fractions: &[f64]) -> Result<(), TestCaseError> {
    let parsed = parse(input);
    let whole = answer(&parsed);
    match &parsed {
        Ok(Hello::Incomplete) => {
            prop_assert!(input.len() < MAX_HELLO_BYTES, "{}", show(input));
        }
        Ok(Hello::Complete { server_name, consumed }) => {
            prop_assert!(*consumed <= input.len(), "{}", show(input));
            prop_assert_eq!(answer(&parse(&input[..*consumed])), whole.clone(), "{}", show(input));
            if let Some(name) = server_name {
                let plausible = name.split('.').all(|label| {
                    (1..=63).contains(&label.len())
                        && label.bytes().all(|b| {
                            b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-' || b == b'_'
                        })
                });
                prop_assert!(plausible && name.len() <= 253, "{name:?} from {}", show(input));
            }
        }
        Err(_) => {}
    }
    if !matches!(parsed, Ok(Hello::Incomplete)) {
        let longer = [input, tail].concat();
        prop_assert_eq!(
            answer(&parse(&longer)),
            whole.clone(),
            "{} then {}",
            show(input),
            show(tail)
        );
    }
    for &fraction in fractions.iter().chain(&[0.5, 0.99]) {
        let cut = ((fraction * input.len() as f64) as usize).min(input.len());
        let prefix = answer(&parse(&input[..cut]));
        prop_assert!(
            prefix == whole || prefix == answer(&Ok(Hello::Incomplete)),
            "{} at {cut}: {prefix}, whole: {whole}",
            show(input)
        );
    }
    let (read, buffered) = read_pieces(&pieces(input, fractions));
    prop_assert_eq!(read, read_answer(&parsed), "{} cut at {:?}", show(input), fractions);
    prop_assert!(buffered <= MAX_HELLO_BYTES);
    Ok(())
}

/// The server name rustls's `Acceptor` reads from `input`, when it takes it as a ClientHello.
fn rustls_name(input: &[u8]) -> Option<String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = input;
    loop {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return accepted.client_hello().server_name().map(str::to_owned),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
}

/// Where rustls names a server, `parse` names the same one (lowercased, without a trailing
/// dot), or refuses the hello by one of the rules [`STRICTER_THAN_RUSTLS`].
fn agrees_with_rustls(input: &[u8]) -> Result<(), TestCaseError> {
    let Some(name) = rustls_name(input) else { return Ok(()) };
    let name = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
    match parse(input) {
        Ok(Hello::Complete { server_name: Some(ours), .. }) if *ours == *name => {}
        Err(HelloError::Malformed(what)) if STRICTER_THAN_RUSTLS.contains(&what) => {}
        other => prop_assert!(false, "rustls reads {name:?}, parse {other:?}: {}", show(input)),
    }
    Ok(())
}

/// The real hellos damaged by the second property: each client, a few names, and
/// re-fragmented into small records.
fn real_hellos() -> &'static [Vec<u8>] {
    static HELLOS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    HELLOS.get_or_init(|| {
        let mut hellos = Vec::new();
        for client in
            [Client::Default, Client::Tls12, Client::Alpn, Client::NoSni, Client::Fragmented]
        {
            for name in ["Example.COM", "a.b", "x_y-z.example.org", "192.0.2.7"] {
                hellos.push(rustls_hello(client, name));
            }
        }
        let split = handshake_of(&rustls_hello(Client::Default, "split.example"));
        hellos.push(records(&split, &[3, 40, 7]));
        hellos.push(records(&split, &[1]));
        hellos
    })
}

/// A change to a real hello.
#[derive(Debug, Clone)]
enum Damage {
    /// The byte at a fraction of the length set to a value.
    Set(f64, u8),
    /// The byte there made one more or one less: a length off by one.
    Nudge(f64, bool),
    /// Bytes inserted there.
    Insert(f64, Vec<u8>),
    /// Up to so many bytes removed from there.
    Delete(f64, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (0.0..1.0f64, any::<u8>()).prop_map(|(at, byte)| Damage::Set(at, byte)),
        3 => (0.0..1.0f64, any::<bool>()).prop_map(|(at, up)| Damage::Nudge(at, up)),
        1 => (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        1 => (0.0..1.0f64, 1..16usize).prop_map(|(at, n)| Damage::Delete(at, n)),
    ]
}

fn damaged(hello: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut out = hello.to_vec();
    for damage in damages {
        let at = |fraction: f64, len: usize| ((fraction * len as f64) as usize).min(len);
        let last = out.len().checked_sub(1);
        match damage {
            Damage::Set(f, byte) => {
                if let Some(last) = last {
                    out[at(*f, last)] = *byte;
                }
            }
            Damage::Nudge(f, up) => {
                if let Some(last) = last {
                    let i = at(*f, last);
                    out[i] = if *up { out[i].wrapping_add(1) } else { out[i].wrapping_sub(1) };
                }
            }
            Damage::Insert(f, bytes) => {
                let i = at(*f, out.len());
                out.splice(i..i, bytes.iter().copied());
            }
            Damage::Delete(f, n) => {
                let i = at(*f, out.len());
                out.drain(i..(i + n).min(out.len()));
            }
        }
    }
    out
}

/// Bytes that start like a handshake record more often than at random.
fn record_like() -> impl Strategy<Value = Vec<u8>> {
    let starts = prop::sample::select(vec![
        &b""[..],
        b"\x16",
        b"\x16\x03\x01",
        b"\x16\x03\x01\x00\x04\x01\x00\x00",
        b"\x16\x03\x03\x40\x00\x01\x00\x3f",
        b"\x16\x03\x01\x00\x01\x01\x16\x03\x03\x00\x03\x00\x00\x26\x03\x03",
    ]);
    let tail = prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(vec![0, 1, 3, 22, 0x40])],
        0..64,
    );
    (starts, tail).prop_map(|(start, tail)| [start, &tail].concat())
}

/// A DNS name rustls sends as `server_name`: 1 to 5 labels of 1 to 63 letters (either case),
/// digits, `_` and inner `-`, the last starting with a letter (so it is no IP address), at
/// most 253 bytes.
fn dns_name() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?";
    let last = "[g-zG-Z_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?";
    (prop::collection::vec(label, 0..5), last).prop_map(|(mut labels, last)| {
        labels.push(last);
        while labels.iter().map(|l| l.len() + 1).sum::<usize>() - 1 > 253 {
            labels.remove(0);
        }
        labels.join(".")
    })
}

fn client() -> impl Strategy<Value = Client> {
    prop::sample::select(vec![Client::Default, Client::Tls12, Client::Alpn, Client::Fragmented])
}

proptest! {
    #![proptest_config(harness::config())]

    #[test]
    fn fuzz_client_hello_any_bytes_hold_the_promises(
        input in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), record_like()],
        tail in prop::collection::vec(any::<u8>(), 0..16),
        fractions in cuts(),
    ) {
        holds_promises(&input, &tail, &fractions)?;
    }

    #[test]
    fn fuzz_client_hello_damaged_hellos_hold_the_promises(
        pick in any::<prop::sample::Index>(),
        damages in prop::collection::vec(damage(), 0..4),
        tail in prop::collection::vec(any::<u8>(), 0..16),
        fractions in cuts(),
    ) {
        let input = damaged(pick.get::<Vec<u8>>(real_hellos()), &damages);
        holds_promises(&input, &tail, &fractions)?;
        agrees_with_rustls(&input)?;
    }

    #[test]
    fn fuzz_client_hello_named_hellos_read_in_any_records_and_reads(
        name in dns_name(),
        client in client(),
        record_cuts in cuts(),
        read_cuts in cuts(),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let handshake = handshake_of(&rustls_hello(client, &name));
        let mut sent = Vec::new();
        for fragment in pieces(&handshake, &record_cuts).into_iter().filter(|f| !f.is_empty()) {
            sent.extend_from_slice(&[22, 3, 1]);
            sent.extend_from_slice(&u16::try_from(fragment.len()).expect("a small hello").to_be_bytes());
            sent.extend_from_slice(fragment);
        }
        let hello_len = sent.len();
        sent.extend_from_slice(&tail);
        let lower = name.to_ascii_lowercase();
        let want = Hello::Complete { server_name: Some(lower.as_str().into()), consumed: hello_len };
        prop_assert_eq!(answer(&parse(&sent)), answer(&Ok(want)), "{}", show(&sent));
        let read = same_however_split(&sent, &read_cuts, |pieces| read_pieces(pieces).0)?;
        prop_assert_eq!(read, format!("{:?}", Ok::<_, HelloError>(Some(lower.as_str()))));
    }
}
