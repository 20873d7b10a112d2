//! The HTTP/1 engine's request-head reader against `httparse` reading the whole input at once.
//!
//! The engine reads a head as it arrives: it drops empty lines before it (RFC 9112 §2.2), then
//! after each read looks only at bytes it has not looked at (`h1::find_head_end`, with the
//! everyday shortcut of a read that ends exactly with an empty line), and when it finds an end
//! parses up to there with `httparse` (what `h1::prepare` does). The reference is `httparse`
//! given the whole input (empty lines dropped the same way). They must agree however the input
//! is cut into reads:
//!
//! - reference `Complete(n)`: the engine finds a head and parses it to the same `n`;
//! - reference `Partial`: the engine is still waiting (no end found yet);
//! - reference `Err(e)`: the engine either still waits (it has not seen an end, so it has not
//!   parsed; at 64 KiB it answers 431) or parses and gets the same error.
//!
//! And the reader never looks at a byte more than a few times: the bytes it scans over all
//! reads stay within a small multiple of the input's length (a head trickled a byte at a time
//! costs linear time).

use bytes::BytesMut;
use proptest::prelude::*;

use super::{cuts, framing_byte, harness, pieces, show};
use crate::h1::{find_head_end, skip_empty_lines};

const FIELDS: usize = 100;

/// What reading gave: a head of this length, an error, or still waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    Head(usize),
    Error(httparse::Error),
    Waiting,
}

fn parse(bytes: &[u8]) -> Read {
    let mut fields = [httparse::EMPTY_HEADER; FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => Read::Head(n),
        Ok(httparse::Status::Partial) => Read::Waiting,
        Err(err) => Read::Error(err),
    }
}

/// The engine's way: reads in `pieces`, empty lines dropped, the end searched incrementally.
/// Also returns how many bytes the search was handed in all (a bound on its work).
fn engine(pieces: &[&[u8]]) -> (Read, usize) {
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut work = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        let before = buf.len();
        skip_empty_lines(&mut buf);
        if buf.len() != before {
            scanned = 0;
        }
        let from = scanned;
        if let Some(end) = find_head_end(&buf, &mut scanned) {
            work += end.saturating_sub(from.saturating_sub(2));
            return (parse(&buf[..end]), work);
        }
        work += buf.len().saturating_sub(from.saturating_sub(2));
    }
    (Read::Waiting, work)
}

fn reference(input: &[u8]) -> Read {
    let start = input.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    parse(&input[start..])
}

fn check(input: &[u8], fractions: &[f64]) -> Result<(), TestCaseError> {
    let expected = reference(input);
    for split in [vec![input], input.chunks(1).collect::<Vec<_>>(), pieces(input, fractions)] {
        let (got, work) = engine(&split);
        let agrees = match (&expected, &got) {
            (Read::Error(_), Read::Waiting) => true,
            (expected, got) => expected == got,
        };
        prop_assert!(
            agrees,
            "reference {:?}, engine {:?}, {} reads of {}",
            expected,
            got,
            split.len(),
            show(input)
        );
        // Each byte is handed to the search at most a few times, whatever the reads.
        prop_assert!(
            work <= 3 * input.len() + 3 * split.len(),
            "scanned {} bytes for {}",
            work,
            input.len()
        );
    }
    Ok(())
}

/// A request head in the shapes clients send, right or slightly wrong, maybe followed by more.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "HEAD", "OPTIONS", "DELETE", "G T", ""]);
    let target = prop::sample::select(vec![
        "/",
        "/a/b?c=d",
        "*",
        "http://a.example/x",
        "/%2e%2e/",
        "/a b",
        "",
    ]);
    let version =
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.", "http/1.1"]);
    let eol = prop::sample::select(vec!["\r\n", "\n", "\r"]);
    let name = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "X-A",
        "Transfer-Encoding",
        "Bad Name",
        "",
        "X:Y",
    ]);
    let value = prop::collection::vec(
        prop_oneof![Just(b'a'), Just(b' '), Just(b'\t'), framing_byte()],
        0..24,
    );
    let field = (name, value, eol.clone());
    (
        prop::collection::vec(prop::sample::select(vec!["", "\r\n", "\n"]), 0..3),
        method,
        target,
        version,
        eol.clone(),
        prop::collection::vec(field, 0..8),
        eol,
        prop::collection::vec(framing_byte(), 0..40),
    )
        .prop_map(|(leading, method, target, version, eol, fields, end, rest)| {
            let mut out = leading.concat().into_bytes();
            out.extend_from_slice(format!("{method} {target} {version}{eol}").as_bytes());
            for (name, value, eol) in fields {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(&value);
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(&rest);
            out
        })
}

proptest! {
    #![proptest_config(harness::config())]

    /// Heads built like a client's, right or damaged, with anything after them.
    #[test]
    fn fuzz_head_built_heads_read_as_httparse_reads_them(input in head(), fractions in cuts()) {
        check(&input, &fractions)?;
    }

    /// Any bytes at all, half of them HTTP delimiters.
    #[test]
    fn fuzz_head_any_bytes_read_as_httparse_reads_them(
        input in prop::collection::vec(framing_byte(), 0..300),
        fractions in cuts(),
    ) {
        check(&input, &fractions)?;
    }
}
