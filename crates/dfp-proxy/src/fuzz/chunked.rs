//! `ChunkedScanner` against a reference decoder.
//!
//! The reference reads a whole input at once, as RFC 9112 §7.1 lays a chunked body out, with
//! the limits and strictness rules `chunked.rs` documents: the size is hex digits at the very
//! start of its line, at most 16 of them after leading zeros; extensions are `;` up to the
//! CRLF, optionally after spaces or tabs, and only delimited; every line ends in CRLF; chunk
//! data is followed by exactly CRLF; a size line (without its CRLF) is at most
//! `MAX_SIZE_LINE` bytes and the trailer section at most `MAX_TRAILERS`.
//!
//! Where the scanner streams byte by byte through a state machine, the reference finds each
//! line's extent first and then asks which rule is broken *earliest* in the input: a
//! streaming reader must fail at the first byte that no valid body can continue with, or at
//! the first byte over a limit. Same verdict, reached a different way.
//!
//! The reference also says where the chunk data lies, which `feed_with` must report: every
//! data byte before the verdict once, in order, and nothing else (no size line, extension,
//! CRLF or trailer byte). `feed`, which reports nothing, must give the same verdicts.

use std::ops::Range;

use proptest::prelude::*;

use super::{cuts, filler, framing_byte, harness, pieces, same_however_split, show};
use crate::chunked::{ChunkedError, ChunkedScanner, Scan, MAX_SIZE_LINE, MAX_TRAILERS};

/// What a whole input is, as a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A body that ends after this many bytes.
    End(usize),
    /// The beginning of a body: no rule broken yet, no end yet.
    More,
    /// Not a body: the first rule broken.
    Fail(ChunkedError),
}

// ---------------------------------------------------------------------------------------
// The reference decoder.

/// How a size line reads.
enum SizeLine {
    /// The chunk size, and where the line's CRLF ends.
    Read {
        size: u64,
        next: usize,
    },
    More,
    Fail(ChunkedError),
}

/// How the syntax of a size line ends, limits aside.
enum LineEnd {
    /// At a CR, this many bytes into the line.
    Cr(usize),
    /// At a byte no valid line has there.
    Broken(usize, ChunkedError),
    /// At the end of the input, this many bytes into the line.
    Unfinished(usize),
}

/// The verdict on a whole input, and where the chunk data before it lies.
fn reference(input: &[u8]) -> (Verdict, Vec<Range<usize>>) {
    let mut data_ranges = Vec::new();
    let mut at = 0;
    let verdict = loop {
        let (size, data) = match size_line(&input[at..]) {
            SizeLine::Read { size, next } => (size, at + next),
            SizeLine::More => break Verdict::More,
            SizeLine::Fail(error) => break Verdict::Fail(error),
        };
        if size == 0 {
            break trailers(input, data);
        }
        // `size` bytes of data, whatever they are, then CRLF.
        let left = (input.len() - data) as u64;
        if left <= size {
            if left > 0 {
                data_ranges.push(data..input.len());
            }
            break Verdict::More;
        }
        let end = data + size as usize;
        data_ranges.push(data..end);
        match input.get(end..end + 2) {
            Some(b"\r\n") => at = end + 2,
            Some([b'\r', _]) | Some([_, _]) => break Verdict::Fail(ChunkedError::MissingCrlf),
            _ if input[end] == b'\r' => break Verdict::More,
            _ => break Verdict::Fail(ChunkedError::MissingCrlf),
        }
    };
    (verdict, data_ranges)
}

/// Reads the size line at the start of `line` (which runs on to the end of the input).
fn size_line(line: &[u8]) -> SizeLine {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return match line.first() {
            None => SizeLine::More,
            Some(_) => SizeLine::Fail(ChunkedError::BadChunkSize),
        };
    }
    let end = line_end(line, digits);

    // Each rule broken, as (offset of the first offending byte, rank among rules broken at
    // the same byte, error). The line limit counts every byte before the CR or the broken
    // byte; the size limit is broken by the 17th significant digit.
    let mut broken = Vec::new();
    let counted = match end {
        LineEnd::Cr(at) | LineEnd::Unfinished(at) => at,
        LineEnd::Broken(at, error) => {
            broken.push((at, 2, error));
            at
        }
    };
    if counted > MAX_SIZE_LINE {
        broken.push((MAX_SIZE_LINE, 0, ChunkedError::LineTooLong));
    }
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    let significant = &line[zeros..digits];
    if significant.len() > 16 {
        broken.push((zeros + 16, 1, ChunkedError::SizeTooLarge));
    }
    if let Some(&(_, _, error)) = broken.iter().min_by_key(|(at, rank, _)| (*at, *rank)) {
        return SizeLine::Fail(error);
    }

    let LineEnd::Cr(cr) = end else { return SizeLine::More };
    match line.get(cr + 1) {
        None => SizeLine::More,
        Some(b'\n') => {
            let hex = std::str::from_utf8(significant).expect("hex digits are ASCII");
            let size = if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).expect("at most 16 hex digits fit in a u64")
            };
            SizeLine::Read { size, next: cr + 2 }
        }
        Some(_) => SizeLine::Fail(ChunkedError::MissingCrlf),
    }
}

/// Where the syntax of a size line ends, its first `digits` bytes being the size.
fn line_end(line: &[u8], digits: usize) -> LineEnd {
    let blanks = line[digits..].iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let at = digits + blanks;
    match line.get(at) {
        None => LineEnd::Unfinished(at),
        Some(b'\r') if blanks == 0 => LineEnd::Cr(at),
        Some(b'\n') => LineEnd::Broken(at, ChunkedError::MissingCrlf),
        Some(b';') => {
            // An extension: anything up to the line's end.
            match line[at + 1..].iter().position(|b| matches!(b, b'\r' | b'\n')) {
                None => LineEnd::Unfinished(line.len()),
                Some(p) if line[at + 1 + p] == b'\r' => LineEnd::Cr(at + 1 + p),
                Some(p) => LineEnd::Broken(at + 1 + p, ChunkedError::MissingCrlf),
            }
        }
        // Whitespace must lead to an extension; anything else cannot follow a size.
        Some(_) => LineEnd::Broken(at, ChunkedError::BadChunkSize),
    }
}

/// Reads the trailer section starting at `start`: field lines, each ended by CRLF, then an
/// empty line. Every byte counts against the limit before it is looked at.
fn trailers(input: &[u8], start: usize) -> Verdict {
    let over = start + MAX_TRAILERS; // the first byte over the limit
    let mut line = start;
    // The verdict, limit aside, and the offset of the last byte it looked at.
    let (verdict, last) = loop {
        let Some(p) = input[line..].iter().position(|b| matches!(b, b'\r' | b'\n')) else {
            break (Verdict::More, input.len().wrapping_sub(1));
        };
        let at = line + p;
        if input[at] == b'\n' {
            break (Verdict::Fail(ChunkedError::MissingCrlf), at);
        }
        match input.get(at + 1) {
            None => break (Verdict::More, at),
            Some(b'\n') if at == line => break (Verdict::End(at + 2), at + 1),
            Some(b'\n') => line = at + 2,
            Some(_) => break (Verdict::Fail(ChunkedError::MissingCrlf), at + 1),
        }
    };
    if input.len() > over && last >= over {
        Verdict::Fail(ChunkedError::TrailersTooLarge)
    } else {
        verdict
    }
}

// ---------------------------------------------------------------------------------------
// The scanner, driven over pieces.

/// Feeds `pieces` in order through `feed_with`; returns the verdict and the data ranges it
/// reported (as offsets in the whole input, adjacent ones merged). Checks on the way what
/// `feed` promises after an end or an error.
fn scan(pieces: &[&[u8]]) -> (Verdict, Vec<Range<usize>>) {
    let mut data: Vec<Range<usize>> = Vec::new();
    let verdict = scan_with(pieces, |piece, offset, scanner| {
        scanner.feed_with(piece, |range| {
            assert!(
                range.start < range.end && range.end <= piece.len(),
                "{range:?} in a piece of {}",
                piece.len()
            );
            let range = offset + range.start..offset + range.end;
            match data.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                Some(last) => {
                    assert!(last.end < range.start, "data {range:?} reported after {last:?}");
                    data.push(range);
                }
                None => data.push(range),
            }
        })
    });
    (verdict, data)
}

/// The verdict `feed` gives on `pieces`.
fn scan_plain(pieces: &[&[u8]]) -> Verdict {
    scan_with(pieces, |piece, _, scanner| scanner.feed(piece))
}

/// Feeds `pieces` in order by `feed(piece, offset of the piece, scanner)`.
fn scan_with(
    pieces: &[&[u8]],
    mut feed: impl FnMut(&[u8], usize, &mut ChunkedScanner) -> Result<Scan, ChunkedError>,
) -> Verdict {
    let mut scanner = ChunkedScanner::new();
    let mut end = None;
    let mut offset = 0;
    for piece in pieces {
        match feed(piece, offset, &mut scanner) {
            Ok(Scan::NeedMore) => assert!(end.is_none(), "NeedMore after Done"),
            Ok(Scan::Done(n)) => {
                assert!(n <= piece.len(), "Done({n}) for a piece of {} bytes", piece.len());
                match end {
                    None => end = Some(offset + n),
                    Some(_) => assert_eq!(n, 0, "bytes taken after Done"),
                }
            }
            Err(error) => {
                assert_eq!(scanner.feed(b"0\r\n\r\n"), Err(error), "errors stick");
                return Verdict::Fail(error);
            }
        }
        offset += piece.len();
    }
    match end {
        Some(end) => {
            assert_eq!(scanner.feed(b"0\r\n\r\n"), Ok(Scan::Done(0)), "Done sticks");
            Verdict::End(end)
        }
        None => Verdict::More,
    }
}

/// The scanner's verdict and data on `input`, the same whole, byte by byte and cut at
/// `fractions`, and the reference's; `feed`'s verdict the same, whole and cut.
fn check(input: &[u8], fractions: &[f64]) -> Result<Verdict, TestCaseError> {
    let scanned = same_however_split(input, fractions, scan)?;
    prop_assert_eq!(
        &scanned,
        &reference(input),
        "scanner against reference, input {}",
        show(input)
    );
    // `feed` is `feed_with` reporting nowhere: whole and cut is enough.
    prop_assert_eq!(scan_plain(&[input]), scanned.0, "feed, whole, input {}", show(input));
    let cut = pieces(input, fractions);
    prop_assert_eq!(scan_plain(&cut), scanned.0, "feed, cut, input {}", show(input));
    Ok(scanned.0)
}

// ---------------------------------------------------------------------------------------
// Valid bodies.

/// How a size line is written.
#[derive(Debug, Clone)]
struct SizeStyle {
    /// Leading zeros.
    zeros: usize,
    /// Which hex letters are upper case (bit i for digit i).
    upper: u16,
    /// Spaces and tabs before the `;`, and the extension after it (no CR, no LF).
    extension: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone)]
struct Chunk {
    style: SizeStyle,
    /// The data's length and the seed of its bytes.
    len: usize,
    seed: u64,
}

/// A valid body as generated: chunks, the last chunk's style, trailer field lines.
#[derive(Debug, Clone)]
struct Body {
    chunks: Vec<Chunk>,
    last: SizeStyle,
    trailers: Vec<Vec<u8>>,
}

/// Any byte but CR and LF, mostly printable and delimiter-like.
fn line_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b" \t;=\",:abcXYZ019".to_vec()),
        1 => any::<u8>().prop_map(|b| if b == b'\r' || b == b'\n' { b'x' } else { b }),
    ]
}

fn size_style() -> impl Strategy<Value = SizeStyle> {
    let zeros = prop_oneof![8 => Just(0usize), 4 => 1usize..4, 1 => 4usize..4200];
    let blanks = prop::collection::vec(prop::sample::select(b" \t".to_vec()), 0..3);
    let long_extension = (1usize..4200, line_byte()).prop_map(|(len, b)| vec![b; len]);
    let extension_bytes = prop_oneof![
        8 => prop::collection::vec(line_byte(), 0..24),
        1 => long_extension,
    ];
    let extension = prop::option::weighted(0.3, (blanks, extension_bytes));
    (zeros, any::<u16>(), extension).prop_map(|(zeros, upper, extension)| SizeStyle {
        zeros,
        upper,
        extension,
    })
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let len = prop_oneof![
        8 => 1usize..16,
        6 => 16usize..600,
        2 => 600usize..5000,
        1 => 5000usize..70_000,
    ];
    (size_style(), len, any::<u64>()).prop_map(|(style, len, seed)| Chunk { style, len, seed })
}

fn body() -> impl Strategy<Value = Body> {
    let trailer = prop_oneof![
        8 => prop::collection::vec(line_byte(), 1..40),
        1 => (1usize..MAX_TRAILERS, line_byte()).prop_map(|(len, b)| vec![b; len]),
    ];
    (prop::collection::vec(chunk(), 0..6), size_style(), prop::collection::vec(trailer, 0..4))
        .prop_map(|(chunks, last, trailers)| Body { chunks, last, trailers })
}

/// A size line within `MAX_SIZE_LINE`: zeros and extension are cut to fit.
fn write_size(out: &mut Vec<u8>, size: usize, style: &SizeStyle) {
    let hex: Vec<u8> = format!("{size:x}")
        .bytes()
        .enumerate()
        .map(|(i, d)| if (style.upper >> (i % 16)) & 1 == 1 { d.to_ascii_uppercase() } else { d })
        .collect();
    let mut room = MAX_SIZE_LINE - hex.len();
    let zeros = style.zeros.min(room);
    room -= zeros;
    out.resize(out.len() + zeros, b'0');
    out.extend_from_slice(&hex);
    if let Some((blanks, extension)) = &style.extension {
        if room > blanks.len() {
            out.extend_from_slice(blanks);
            out.push(b';');
            room -= blanks.len() + 1;
            out.extend_from_slice(&extension[..extension.len().min(room)]);
        }
    }
    out.extend_from_slice(b"\r\n");
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in &self.chunks {
            write_size(&mut out, chunk.len, &chunk.style);
            out.extend_from_slice(&filler(chunk.seed, chunk.len));
            out.extend_from_slice(b"\r\n");
        }
        write_size(&mut out, 0, &self.last);
        // Field lines within MAX_TRAILERS, counting each CRLF and the final one.
        let mut room = MAX_TRAILERS - 2;
        for field in &self.trailers {
            if room <= 2 {
                break;
            }
            let len = field.len().min(room - 2);
            out.extend_from_slice(&field[..len]);
            out.extend_from_slice(b"\r\n");
            room -= len + 2;
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

// ---------------------------------------------------------------------------------------
// Hostile inputs: valid bodies, damaged.

#[derive(Debug, Clone)]
enum Damage {
    /// Sets the byte at this fraction of the input.
    Set(f64, u8),
    /// Inserts bytes at this fraction.
    Insert(f64, Vec<u8>),
    /// Removes up to this many bytes from this fraction on.
    Remove(f64, usize),
    /// Replaces the nth CRLF (counting from 0, wrapping) by these bytes (a bare LF, a CR and
    /// something else, nothing).
    Crlf(usize, Vec<u8>),
    /// Cuts the input short at this fraction.
    Truncate(f64),
}

/// Snippets that break framing rules or limits in the places they are checked.
fn hostile_snippet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(framing_byte(), 1..4),
        Just(b"\r\n0\r\n\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"g".to_vec()),
        Just(b" x".to_vec()),
        Just(b"0x".to_vec()),
        Just(b"-".to_vec()),
        // Sizes at and past 64 bits, with and without leading zeros.
        (16usize..19, prop::sample::select(b"0fF1".to_vec()), 0usize..3).prop_map(
            |(digits, d, zeros)| {
                let mut size = vec![b'0'; zeros];
                size.extend(std::iter::repeat_n(if d == b'0' { b'1' } else { d }, digits));
                size
            }
        ),
        // Runs long enough to cross the size-line limit or the trailer limit.
        (MAX_SIZE_LINE - 8..MAX_SIZE_LINE + 8, prop::sample::select(b"0;e \t".to_vec()))
            .prop_map(|(len, b)| vec![b; len]),
        (MAX_TRAILERS - 8..MAX_TRAILERS + 8, line_byte()).prop_map(|(len, b)| vec![b; len]),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let at = 0.0..1.0f64;
    prop_oneof![
        4 => (at.clone(), framing_byte()).prop_map(|(at, b)| Damage::Set(at, b)),
        3 => (at.clone(), hostile_snippet()).prop_map(|(at, s)| Damage::Insert(at, s)),
        2 => (at.clone(), 1usize..8).prop_map(|(at, n)| Damage::Remove(at, n)),
        3 => (any::<usize>(), prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(Vec::new()),
            framing_byte().prop_map(|b| vec![b'\r', b]),
            framing_byte().prop_map(|b| vec![b, b'\n']),
        ])
            .prop_map(|(n, with)| Damage::Crlf(n, with)),
        1 => at.prop_map(Damage::Truncate),
    ]
}

fn apply(input: &mut Vec<u8>, damage: &Damage) {
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    match damage {
        Damage::Set(f, b) => {
            if !input.is_empty() {
                let i = at(*f, input.len() - 1);
                input[i] = *b;
            }
        }
        Damage::Insert(f, bytes) => {
            let i = at(*f, input.len());
            input.splice(i..i, bytes.iter().copied());
        }
        Damage::Remove(f, n) => {
            let i = at(*f, input.len());
            let j = (i + n).min(input.len());
            input.drain(i..j);
        }
        Damage::Crlf(n, with) => {
            let crlfs: Vec<usize> = input
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w == b"\r\n")
                .map(|(i, _)| i)
                .collect();
            if !crlfs.is_empty() {
                let i = crlfs[n % crlfs.len()];
                input.splice(i..i + 2, with.iter().copied());
            }
        }
        Damage::Truncate(f) => input.truncate(at(*f, input.len())),
    }
}

/// Short token soup: pieces of framing in any order, valid ones included, so that the
/// scanner reaches every state with every kind of byte next.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            &b"\r\n"[..],
            b"\r",
            b"\n",
            b"0",
            b"1",
            b"a",
            b"F",
            b"00",
            b"10",
            b";",
            b";x=y",
            b" ",
            b"\t",
            b"X: 1",
            b"\r\n\r\n",
            b"0\r\n",
            b"1\r\nx\r\n",
            b"0\r\n\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
        framing_byte().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(harness::config())]

    /// A valid body, followed by anything, ends exactly where it was built to end, however
    /// it is cut; the reference agrees (which also checks the reference).
    #[test]
    fn fuzz_chunked_valid_bodies_end_where_built(
        body in body(),
        after in prop::collection::vec(framing_byte(), 0..32),
        fractions in cuts(),
    ) {
        let body = body.bytes();
        let mut input = body.clone();
        input.extend_from_slice(&after);
        prop_assert_eq!(check(&input, &fractions)?, Verdict::End(body.len()));
    }

    /// A valid body with a few kinds of damage (bad hex, bare LF, missing CRLF after data,
    /// sizes past 64 bits, lines and trailers past their limits, cut short), followed by
    /// anything: the scanner's verdict is the reference's, however it is cut.
    #[test]
    fn fuzz_chunked_damaged_bodies_match_reference(
        body in body(),
        damages in prop::collection::vec(damage(), 1..4),
        after in prop::collection::vec(framing_byte(), 0..16),
        fractions in cuts(),
    ) {
        let mut input = body.bytes();
        for damage in &damages {
            apply(&mut input, damage);
        }
        input.extend_from_slice(&after);
        check(&input, &fractions)?;
    }

    /// Short inputs made of framing tokens and bytes: the same.
    #[test]
    fn fuzz_chunked_token_soup_matches_reference(input in soup(), fractions in cuts()) {
        check(&input, &fractions)?;
    }
}
