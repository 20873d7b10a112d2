//! Finds where an HTTP/1.1 chunked message body (RFC 9112 §7.1) ends, without decoding it.
//!
//! The proxy relays a chunked body byte for byte, framing included, so it never needs the
//! decoded data. It needs two facts: where the message ends, so that the bytes after it are
//! read as the next message and the connection can go back to the pool, and that the framing
//! is sound, so that the proxy and the peer after it cannot disagree on that end (request and
//! response smuggling). [`ChunkedScanner`] finds both as the bytes stream past.
//!
//! It holds a few integers and no buffer: memory is bounded whatever the peer sends, nothing is
//! allocated, and the input may be split anywhere, even one byte per call. Size lines and
//! trailers are read byte by byte, under limits ([`MAX_SIZE_LINE`], [`MAX_TRAILERS`]); chunk
//! data, which is most of the body, is skipped with one subtraction per call.
//!
//! It is strict where leniency lets two parsers disagree: every line ends in CRLF (a bare LF,
//! or a CR followed by anything but LF, is an error), chunk data is followed by exactly CRLF,
//! and the chunk size is hex digits at the very start of its line, at most 16 of them after
//! any leading zeros.
//! Extensions (`;` up to the CRLF, optionally after spaces or tabs) and trailer field lines are
//! only delimited, not parsed: they pass through to the peer as they came.

/// The longest chunk-size line accepted, counting the size and its extensions but not the CRLF.
pub(crate) const MAX_SIZE_LINE: usize = 4096;

/// The largest trailer section accepted, counting every byte after the last chunk's size line:
/// each field line with its CRLF, and the final empty line's CRLF.
pub(crate) const MAX_TRAILERS: usize = 65536;

/// Follows a chunked body through [`feed`](Self::feed) calls until it ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkedScanner {
    state: State,
    /// The chunk size read so far on a size line; in [`State::Data`], the data bytes left.
    size: u64,
    /// Hex digits of `size` after its leading zeros.
    digits: u8,
    /// Bytes of the current size line (without the CRLF), or of the trailer section so far.
    count: usize,
}

/// Where in the body the next byte falls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// On the chunk size; `count` says how many digits came before.
    #[default]
    Size,
    /// After spaces or tabs following the size: only more of them or `;` may follow.
    SizeWhitespace,
    /// In a chunk extension, up to the CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In chunk data, `size` bytes left.
    Data,
    /// After chunk data: its CR is due.
    DataCr,
    /// After chunk data and its CR.
    DataLf,
    /// At the start of a trailer field line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line, up to the CR.
    TrailerLine,
    /// After a trailer field line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    /// The body has ended.
    Done,
    /// The framing was broken; the same error is returned from now on.
    Failed(ChunkedError),
}

/// What a [`ChunkedScanner::feed`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Every byte given belongs to the body, and the body goes on.
    NeedMore,
    /// The body ends after this many of the bytes given (the rest belongs to whatever follows).
    Done(usize),
}

/// Why a chunked body is malformed. The body cannot be relayed on and the connection it came
/// on cannot be reused: where the next message starts is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkedError {
    /// The size line does not start with a hex digit, or the size is followed by something
    /// other than `;` (after optional whitespace) or CRLF.
    #[error("malformed chunked body: a chunk size is missing or is not a hexadecimal number")]
    BadChunkSize,
    /// The chunk size has more than 16 significant hex digits.
    #[error("malformed chunked body: a chunk size does not fit in 64 bits")]
    SizeTooLarge,
    /// The chunk size and its extensions are longer than [`MAX_SIZE_LINE`].
    #[error("chunked body refused: a chunk-size line is longer than {} bytes", MAX_SIZE_LINE)]
    LineTooLong,
    /// A bare LF, a CR followed by something other than LF, or chunk data longer than its size.
    #[error("malformed chunked body: a line or a chunk does not end in CRLF")]
    MissingCrlf,
    /// The trailer section is longer than [`MAX_TRAILERS`].
    #[error("chunked body refused: the trailer section is longer than {} bytes", MAX_TRAILERS)]
    TrailersTooLarge,
}

impl ChunkedScanner {
    /// A scanner for a body whose first byte has not been fed yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the body (any split, even 1 byte at a time).
    ///
    /// After [`Scan::Done`] every call returns `Ok(Scan::Done(0))`; after an error, every call
    /// returns the same error.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Scan, ChunkedError> {
        self.feed_with(input, |_| {})
    }

    /// As [`feed`](Self::feed), also telling `data` where in `input` each run of chunk data
    /// lies (what a decoder passes on; size lines, extensions and trailers are not data).
    pub(crate) fn feed_with(
        &mut self,
        input: &[u8],
        data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Scan, ChunkedError> {
        self.feed_parts(input, data, |_| {})
    }

    /// As [`feed_with`](Self::feed_with), also telling `trailers` where in `input` the
    /// trailer section's bytes lie: each field line with its CRLF and the final empty line's
    /// CRLF (what a decoder that passes trailers on needs; they are only delimited here, and
    /// [`MAX_TRAILERS`] bounds them). Called once per call at most, before it returns.
    pub(crate) fn feed_parts(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
        mut trailers: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Scan, ChunkedError> {
        match self.state {
            State::Done => return Ok(Scan::Done(0)),
            State::Failed(error) => return Err(error),
            _ => {}
        }
        let mut at = 0;
        // The trailer bytes of this input, from where they start.
        let mut trailer_start = None;
        while at < input.len() {
            if self.state == State::Data {
                let left = input.len() - at;
                // Either all that is left of the chunk (it fits in `left`, so in a usize) or
                // all that is left of the input.
                let skip = usize::try_from(self.size).map_or(left, |size| size.min(left));
                if skip > 0 {
                    data(at..at + skip);
                }
                at += skip;
                self.size -= skip as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = input[at];
            if trailer_start.is_none()
                && matches!(
                    self.state,
                    State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf
                )
            {
                trailer_start = Some(at);
            }
            at += 1;
            if let Err(error) = self.step(byte) {
                self.state = State::Failed(error);
                return Err(error);
            }
            if self.state == State::Done {
                if let Some(start) = trailer_start {
                    trailers(start..at);
                }
                return Ok(Scan::Done(at));
            }
        }
        if let Some(start) = trailer_start {
            trailers(start..at);
        }
        Ok(Scan::NeedMore)
    }

    /// True once Done has been returned.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Moves past one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size => match byte {
                _ if hex_value(byte).is_some() => {
                    self.size_line_byte()?;
                    self.push_digit(byte)?;
                    State::Size
                }
                // Nothing read yet: the line does not start with the size.
                _ if self.count == 0 => return Err(ChunkedError::BadChunkSize),
                b' ' | b'\t' => {
                    self.size_line_byte()?;
                    State::SizeWhitespace
                }
                b';' => {
                    self.size_line_byte()?;
                    State::Extension
                }
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                _ => return Err(ChunkedError::BadChunkSize),
            },
            State::SizeWhitespace => match byte {
                b' ' | b'\t' => {
                    self.size_line_byte()?;
                    State::SizeWhitespace
                }
                b';' => {
                    self.size_line_byte()?;
                    State::Extension
                }
                b'\n' => return Err(ChunkedError::MissingCrlf),
                _ => return Err(ChunkedError::BadChunkSize),
            },
            State::Extension => match byte {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                _ => {
                    self.size_line_byte()?;
                    State::Extension
                }
            },
            State::SizeLf => match byte {
                b'\n' if self.size == 0 => {
                    self.count = 0;
                    State::TrailerStart
                }
                b'\n' => State::Data,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match byte {
                b'\n' => {
                    self.count = 0;
                    self.digits = 0;
                    State::Size
                }
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::TrailerStart | State::TrailerLine => {
                self.trailer_byte()?;
                match byte {
                    b'\r' if self.state == State::TrailerStart => State::EndLf,
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLf => {
                self.trailer_byte()?;
                match byte {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::MissingCrlf),
                }
            }
            State::EndLf => {
                self.trailer_byte()?;
                match byte {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::MissingCrlf),
                }
            }
            // `feed` handles these without stepping.
            State::Data | State::Done | State::Failed(_) => self.state,
        };
        Ok(())
    }

    /// Adds one hex digit to the size, refusing a 17th significant one.
    fn push_digit(&mut self, byte: u8) -> Result<(), ChunkedError> {
        let value = hex_value(byte).unwrap_or_default();
        if self.size == 0 && value == 0 {
            return Ok(()); // a leading zero
        }
        if self.digits == 16 {
            return Err(ChunkedError::SizeTooLarge);
        }
        self.digits += 1;
        // At most 15 significant digits so far: the shift loses nothing.
        self.size = (self.size << 4) | u64::from(value);
        Ok(())
    }

    /// Counts one byte of a size line against [`MAX_SIZE_LINE`].
    fn size_line_byte(&mut self) -> Result<(), ChunkedError> {
        self.count += 1;
        if self.count > MAX_SIZE_LINE {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }

    /// Counts one byte of the trailer section against [`MAX_TRAILERS`].
    fn trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.count += 1;
        if self.count > MAX_TRAILERS {
            return Err(ChunkedError::TrailersTooLarge);
        }
        Ok(())
    }
}

/// The value of a hex digit, either case.
fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What feeding a whole input should give.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        /// The body ends after this many bytes of the input.
        End(usize),
        /// Every byte belongs to the body and it has not ended.
        More,
        Fail(ChunkedError),
    }

    /// Feeds `input` cut at `cuts` (ascending offsets) and returns where the body ended.
    /// Checks on the way that nothing is consumed after `Done` and that errors stick.
    fn scan(input: &[u8], cuts: &[usize]) -> Want {
        let mut scanner = ChunkedScanner::new();
        let mut end = None;
        let mut start = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            let piece = &input[start..cut];
            match scanner.feed(piece) {
                Ok(Scan::NeedMore) => assert!(end.is_none(), "NeedMore after Done"),
                Ok(Scan::Done(n)) => {
                    assert!(n <= piece.len(), "Done({n}) for {} bytes", piece.len());
                    match end {
                        None => end = Some(start + n),
                        Some(_) => assert_eq!(n, 0, "bytes consumed after Done"),
                    }
                    assert!(scanner.is_done());
                }
                Err(error) => {
                    assert_eq!(scanner.feed(b"more"), Err(error), "errors stick");
                    return Want::Fail(error);
                }
            }
            start = cut;
        }
        match end {
            Some(end) => {
                assert_eq!(scanner.feed(b"next"), Ok(Scan::Done(0)));
                Want::End(end)
            }
            None => {
                assert!(!scanner.is_done());
                Want::More
            }
        }
    }

    /// Checks `input` fed whole, one byte at a time, and cut at every point (at up to about
    /// 600 points for long inputs, always including the first and last 50).
    fn check(input: &[u8], want: Want) {
        let show = String::from_utf8_lossy(&input[..input.len().min(80)]);
        assert_eq!(scan(input, &[]), want, "whole: {show:?}");
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(scan(input, &bytewise), want, "byte by byte: {show:?}");
        let stride = (input.len() / 500).max(1);
        for cut in 0..=input.len() {
            if cut % stride == 0 || cut < 50 || input.len() - cut < 50 {
                assert_eq!(scan(input, &[cut]), want, "cut at {cut}: {show:?}");
            }
        }
    }

    fn ok(body: &str, after: &str) -> (Vec<u8>, Want) {
        (format!("{body}{after}").into_bytes(), Want::End(body.len()))
    }

    fn more(input: &str) -> (Vec<u8>, Want) {
        (input.as_bytes().to_vec(), Want::More)
    }

    fn bad(input: &str, error: ChunkedError) -> (Vec<u8>, Want) {
        (input.as_bytes().to_vec(), Want::Fail(error))
    }

    #[test]
    fn framing_table() {
        use ChunkedError::*;
        let next = "HTTP/1.1 200 OK\r\n\r\n";
        let line_of = |len: usize| format!("1;{}", "e".repeat(len - 2));
        let trailers_of = |len: usize| format!("X: {}\r\n\r\n", "v".repeat(len - 7));
        let cases = [
            // Valid bodies, alone and followed by the next message.
            ok("0\r\n\r\n", ""),
            ok("0\r\n\r\n", next),
            ok("5\r\nhello\r\n0\r\n\r\n", ""),
            ok("5\r\nhello\r\n0\r\n\r\n", next),
            ok("5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n", "x"),
            ok("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n", next),
            ok("1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n", ""),
            ok("0005\r\nhello\r\n000\r\n\r\n", next),
            ok("00000000000000000000001\r\nx\r\n0\r\n\r\n", ""),
            // Data that looks like framing is data.
            ok("7\r\n0\r\n\r\n\n\r\r\n0\r\n\r\n", next),
            // Extensions, with whitespace before `;`, on data chunks and the last chunk.
            ok("5;name=value\r\nhello\r\n0;last\r\n\r\n", next),
            ok("5 ;a\r\nhello\r\n0\t; b = \"q;\"\r\n\r\n", next),
            ok("5 \t ;\r\nhello\r\n0\r\n\r\n", ""),
            // Trailers.
            ok("5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n", next),
            ok("0\r\nA: 1\r\nB: 2\r\n\r\n", "\r\n"),
            // At the limits.
            ok(&format!("{}\r\nx\r\n0\r\n\r\n", line_of(MAX_SIZE_LINE)), next),
            ok(&format!("0\r\n{}", trailers_of(MAX_TRAILERS)), next),
            // Unfinished bodies.
            more(""),
            more("5"),
            more("5\r"),
            more("5\r\nhel"),
            more("5\r\nhello"),
            more("5\r\nhello\r\n0\r\n"),
            more("5\r\nhello\r\n0\r\nX: 1\r\n"),
            more("ffffffffffffffff\r\nhuge"),
            more("FFFFFFFFFFFFFFFF;x\r\n"),
            // Bare LF, or CR without LF, anywhere.
            bad("5\nhello\r\n0\r\n\r\n", MissingCrlf),
            bad("5\r\rhello", MissingCrlf),
            bad("5;ext\nhello", MissingCrlf),
            bad("5 \nhello", MissingCrlf),
            bad("5\r\nhello\n0\r\n\r\n", MissingCrlf),
            bad("5\r\nhello\rx", MissingCrlf),
            bad("0\r\nX: 1\n\r\n", MissingCrlf),
            bad("0\r\nX: 1\rY\n", MissingCrlf),
            bad("0\r\n\n", MissingCrlf),
            bad("0\r\n\rx", MissingCrlf),
            // Chunk data must be followed by CRLF at once.
            bad("3\r\nhello\r\n0\r\n\r\n", MissingCrlf),
            bad("5\r\nhello0\r\n\r\n", MissingCrlf),
            // Bad sizes.
            bad("\r\n", BadChunkSize),
            bad("\n", BadChunkSize),
            bad(";ext\r\n", BadChunkSize),
            bad(" 5\r\nhello", BadChunkSize),
            bad("g\r\n", BadChunkSize),
            bad("5x\r\nhello", BadChunkSize),
            bad("-1\r\n", BadChunkSize),
            bad("+5\r\n", BadChunkSize),
            bad("0x5\r\nhello", BadChunkSize),
            bad("5 \r\nhello", BadChunkSize),
            bad("5 x\r\nhello", BadChunkSize),
            bad("5\r\nhello\r\n\r\n", BadChunkSize),
            bad("5\r\nhello\r\nz\r\n", BadChunkSize),
            // Too large.
            bad("10000000000000000\r\n", SizeTooLarge),
            bad("0000ffffffffffffffff0\r\n", SizeTooLarge),
            bad(&format!("{}\r\nx\r\n", line_of(MAX_SIZE_LINE + 1)), LineTooLong),
            bad(&format!("{}\r\n", "0".repeat(MAX_SIZE_LINE + 1)), LineTooLong),
            bad(&format!("0\r\n{}", trailers_of(MAX_TRAILERS + 1)), TrailersTooLarge),
            bad(&format!("0\r\nX: {}", "v".repeat(MAX_TRAILERS)), TrailersTooLarge),
        ];
        for (input, want) in &cases {
            check(input, *want);
        }
    }

    /// The trailer section is reported whole, however the input is cut, and nothing else is.
    #[test]
    fn trailers_are_reported_however_cut() {
        let body = b"5\r\nhello\r\n0\r\nDigest: x\r\nGrpc-Status: 0\r\n\r\nNEXT";
        let want = &b"Digest: x\r\nGrpc-Status: 0\r\n\r\n"[..];
        for cut in 0..body.len() {
            let mut scanner = ChunkedScanner::new();
            let (mut data, mut trailers) = (Vec::new(), Vec::new());
            let mut end = None;
            for (offset, piece) in [(0, &body[..cut]), (cut, &body[cut..])] {
                let scan = scanner
                    .feed_parts(
                        piece,
                        |r| data.extend_from_slice(&piece[r]),
                        |r| trailers.extend_from_slice(&piece[r]),
                    )
                    .expect("valid");
                if let (Scan::Done(n), None) = (scan, end) {
                    end = Some(offset + n);
                }
            }
            assert_eq!(end, Some(body.len() - 4), "cut at {cut}");
            assert_eq!(data, b"hello", "cut at {cut}");
            assert_eq!(trailers, want, "cut at {cut}");
        }
        let mut scanner = ChunkedScanner::new();
        let mut trailers = Vec::new();
        scanner
            .feed_parts(b"0\r\n\r\n", |_| {}, |r| trailers.push((r.start, r.end)))
            .expect("valid");
        assert_eq!(trailers, [(3, 5)], "an empty section is its final CRLF");
    }

    #[test]
    fn large_chunks_are_skipped_whole() {
        let size = 3 << 20;
        let mut body = format!("{size:x}\r\n").into_bytes();
        body.resize(body.len() + size, b'\n');
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(&body[..10]), Ok(Scan::NeedMore));
        assert_eq!(scanner.feed(&body[10..]), Ok(Scan::Done(body.len() - 10)));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let messages = [
            ChunkedError::BadChunkSize,
            ChunkedError::SizeTooLarge,
            ChunkedError::LineTooLong,
            ChunkedError::MissingCrlf,
            ChunkedError::TrailersTooLarge,
        ]
        .map(|error| error.to_string());
        assert!(messages[2].contains("4096"), "{}", messages[2]);
        assert!(messages[4].contains("65536"), "{}", messages[4]);
        for message in messages {
            assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'));
        }
    }
}

/// Property tests: any valid body, cut anywhere and followed by anything, ends exactly where
/// it was built to; and any input gives the same answer however it is cut.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{ChunkedScanner, Scan};

    /// One chunk: its data, how its size is written, and an optional extension.
    #[derive(Debug, Clone)]
    struct Chunk {
        data: Vec<u8>,
        upper: bool,
        zeros: usize,
        extension: Option<String>,
    }

    /// Bytes that look like framing turn up more often than at random.
    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![any::<u8>(), prop::sample::select(b"0\r\n;: ".to_vec())]
    }

    fn chunk() -> impl Strategy<Value = Chunk> {
        let data = prop_oneof![
            4 => prop::collection::vec(byte(), 1..40),
            1 => prop::collection::vec(byte(), 40..3000),
        ];
        let extension = prop::option::of("[ \t]{0,2};[ -~\t]{0,20}");
        (data, any::<bool>(), 0usize..3, extension)
            .prop_map(|(data, upper, zeros, extension)| Chunk { data, upper, zeros, extension })
    }

    fn size_line(size: usize, upper: bool, zeros: usize, extension: Option<&str>) -> Vec<u8> {
        let hex = if upper { format!("{size:X}") } else { format!("{size:x}") };
        let extension = extension.unwrap_or("");
        format!("{}{hex}{extension}\r\n", "0".repeat(zeros)).into_bytes()
    }

    /// A valid body: chunks, the last chunk, trailers.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let last = (any::<bool>(), 0usize..3, prop::option::of(";[ -~]{0,10}"));
        let trailers = prop::collection::vec("[A-Za-z-]{1,10}: [ -~\t]{0,30}", 0..4);
        (prop::collection::vec(chunk(), 0..8), last, trailers).prop_map(
            |(chunks, (upper, zeros, extension), trailers)| {
                let mut body = Vec::new();
                for chunk in &chunks {
                    let line = size_line(
                        chunk.data.len(),
                        chunk.upper,
                        chunk.zeros,
                        chunk.extension.as_deref(),
                    );
                    body.extend_from_slice(&line);
                    body.extend_from_slice(&chunk.data);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(&size_line(0, upper, zeros, extension.as_deref()));
                for field in &trailers {
                    body.extend_from_slice(field.as_bytes());
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"\r\n");
                body
            },
        )
    }

    /// Cuts `len` bytes at the given fractions of its length.
    fn cuts(len: usize, fractions: &[f64]) -> Vec<usize> {
        let mut cuts: Vec<usize> = fractions.iter().map(|f| (f * len as f64) as usize).collect();
        cuts.sort_unstable();
        cuts
    }

    /// Feeds the pieces; `Ok(Some(end))` once the body ended, `Ok(None)` if it did not.
    fn scan(input: &[u8], cuts: &[usize]) -> Result<Option<usize>, super::ChunkedError> {
        let mut scanner = ChunkedScanner::new();
        let mut end = None;
        let mut start = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            let piece = &input[start..cut];
            if let Scan::Done(n) = scanner.feed(piece)? {
                end = end.or(Some(start + n));
            }
            start = cut;
        }
        Ok(end)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn valid_bodies_end_where_they_end(
            body in body(),
            after in prop::collection::vec(byte(), 0..64),
            fractions in prop::collection::vec(0.0..=1.0f64, 0..12),
        ) {
            let mut input = body.clone();
            input.extend_from_slice(&after);
            prop_assert_eq!(scan(&input, &[]), Ok(Some(body.len())));
            prop_assert_eq!(scan(&input, &cuts(input.len(), &fractions)), Ok(Some(body.len())));
        }

        #[test]
        fn any_input_gives_one_answer_however_cut(
            input in prop::collection::vec(byte(), 0..200),
            fractions in prop::collection::vec(0.0..=1.0f64, 0..12),
        ) {
            prop_assert_eq!(scan(&input, &cuts(input.len(), &fractions)), scan(&input, &[]));
        }

        /// Near misses: a valid body with one byte changed, mostly into framing bytes.
        #[test]
        fn damaged_bodies_give_one_answer_however_cut(
            body in body(),
            at in 0.0..1.0f64,
            with in byte(),
            fractions in prop::collection::vec(0.0..=1.0f64, 0..12),
        ) {
            let mut input = body;
            let at = (at * input.len() as f64) as usize;
            input[at] = with;
            prop_assert_eq!(scan(&input, &cuts(input.len(), &fractions)), scan(&input, &[]));
        }
    }
}
