//! The server name (SNI) of a TLS client, read from its ClientHello without terminating TLS.
//!
//! Why it exists: a TLS listener routes some connections by name *without* decrypting them
//! (TLS passthrough, HAProxy's `req.ssl_sni`): the instance holds the certificate and does
//! the handshake itself. Which route applies is known only from the ClientHello's
//! `server_name` extension, so the first bytes of the connection are read into a buffer, the
//! name is taken from them, and then the same bytes are replayed, either to the instance
//! (passthrough) or into rustls (terminated here when no passthrough route matches). That
//! replay is [`Prefixed`].
//!
//! The bytes come from anyone who can connect, so [`parse`] is strict and bounded: it walks
//! TLS records (RFC 8446 §5.1; a ClientHello may be fragmented over several handshake
//! records and over any number of reads), the ClientHello (§4.1.2) and the `server_name`
//! extension (RFC 6066 §3), checks every length against its parent, never panics and never
//! asks for more than [`MAX_HELLO_BYTES`]. It decides as early as the bytes allow: an answer
//! other than [`Hello::Incomplete`] never changes when more bytes arrive, so reading stops at
//! the first byte that rules the connection out. A host name comes back lowercased (DNS names
//! are case-insensitive), so a route's domain is compared with one spelling.
//!
//! Timeouts are the caller's: [`read_client_hello`] reads until [`parse`] answers.

use std::borrow::Cow;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The most bytes of TLS records read while looking for the end of a ClientHello (record
/// headers included): a ClientHello of up to 16 KiB, the most one record carries, in up to
/// four records. Browsers' hellos with a post-quantum key share (ML-KEM-768, about 1.2 KB)
/// are about 2 KB, so this leaves room for growth (more key shares, ECH, tickets) while one
/// connection can make the proxy hold no more than this before it routes.
pub(crate) const MAX_HELLO_BYTES: usize = 16 * 1024 + 4 * RECORD_HEADER;

/// A TLS record header: content type, legacy version (2 bytes), length (2 bytes).
const RECORD_HEADER: usize = 5;
/// The longest record payload a peer may send (RFC 8446 §5.1: 2^14).
const MAX_RECORD: usize = 1 << 14;
/// The record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// A handshake message header: type (1 byte), length (3 bytes).
const HANDSHAKE_HEADER: usize = 4;
/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The extension type of `server_name` (RFC 6066).
const SERVER_NAME: u16 = 0;
/// The `server_name` entry type of a DNS host name, the only one defined.
const HOST_NAME: u8 = 0;
/// Bytes asked of the stream per read: a whole ClientHello of today's browsers in one read.
const READ_CHUNK: usize = 4096;
/// The most records a ClientHello may come in. Real clients send one (two for a hello over
/// 16 KiB, which [`MAX_HELLO_BYTES`] refuses anyway); the bound keeps the work of reading a
/// hello linear in its size however finely a client cuts it (see [`read_client_hello`]).
pub(crate) const MAX_HELLO_RECORDS: usize = 64;

/// Why the start of a connection is not a ClientHello the proxy can route by.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error(
        "the connection does not start with a TLS handshake record (plain HTTP on a TLS port?)"
    )]
    NotTls,
    #[error("the first TLS handshake message is not a ClientHello")]
    NotClientHello,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("the ClientHello's server name is not a DNS host name")]
    BadServerName,
    #[error("the ClientHello takes more than {MAX_HELLO_BYTES} bytes of TLS records")]
    TooLarge,
    #[error("reading the ClientHello failed")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before its ClientHello was complete")]
    Closed,
}

/// What the bytes a connection started with say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A valid start of a ClientHello: read more.
    Incomplete,
    /// A whole, valid ClientHello.
    Complete {
        /// Its host name, lowercased, without a trailing dot; `None` when it sends none (no
        /// extensions, no `server_name`, or only name types other than `host_name`).
        server_name: Option<Box<str>>,
        /// The bytes of the records that carry it, from the start of the input. The records
        /// end where the ClientHello does; what follows is other data (early data, a
        /// ChangeCipherSpec), which callers replay with the rest.
        consumed: usize,
    },
}

/// Reads the ClientHello at the start of `buf`. `Incomplete` means every byte so far is a
/// valid start and more are needed; any other answer stays the same whatever follows.
pub(crate) fn parse(buf: &[u8]) -> Result<Hello, HelloError> {
    // The handshake bytes of the records so far: borrowed while there is one record.
    let mut payload: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    // Handshake bytes the records so far declare (some may not have arrived yet).
    let mut declared = 0;
    let mut at = 0;
    for _ in 0..MAX_HELLO_RECORDS {
        let header = buf.get(at..).unwrap_or_default();
        let header = &header[..header.len().min(RECORD_HEADER)];
        check_record_header(header, at == 0)?;
        let [_, _, _, high, low] = *header else { return Ok(Hello::Incomplete) };
        let end = at + RECORD_HEADER + usize::from(u16::from_be_bytes([high, low]));
        if end > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        declared += end - at - RECORD_HEADER;
        let fragment = &buf[(at + RECORD_HEADER).min(buf.len())..end.min(buf.len())];
        if payload.is_empty() {
            payload = Cow::Borrowed(fragment);
        } else {
            payload.to_mut().extend_from_slice(fragment);
        }
        match handshake(&payload, declared, end) {
            Ok(server_name) => return Ok(Hello::Complete { server_name, consumed: end }),
            Err(Stop::Bad(error)) => return Err(error),
            Err(Stop::More) if end > buf.len() => return Ok(Hello::Incomplete),
            Err(Stop::More) => at = end,
        }
    }
    Err(HelloError::Malformed("a ClientHello in more than 64 records"))
}

/// How long `buf` must be before [`parse`] can say more than it said of `buf`: the end of the
/// first record (or record header) not yet whole. Walks the record headers only.
fn next_whole_record(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let Some(&[_, _, _, high, low]) = buf.get(at..at + RECORD_HEADER) else {
            return at + RECORD_HEADER;
        };
        let end = at + RECORD_HEADER + usize::from(u16::from_be_bytes([high, low]));
        if end > buf.len() {
            return end;
        }
        at = end;
    }
}

/// Checks what has arrived of a record header (`first`: the connection's first record).
fn check_record_header(header: &[u8], first: bool) -> Result<(), HelloError> {
    match header.first() {
        Some(&HANDSHAKE) | None => {}
        Some(_) if first => return Err(HelloError::NotTls),
        Some(_) => return Err(HelloError::Malformed("a non-handshake record inside it")),
    }
    // The legacy record version: 3.0 (SSL 3, still sent by some clients in the first
    // record) to 3.4; TLS 1.3 clients send 3.1 or 3.3 here.
    if header.get(1).is_some_and(|&major| major != 3) {
        return Err(HelloError::Malformed("record version is not 3.x"));
    }
    if header.get(2).is_some_and(|&minor| minor > 4) {
        return Err(HelloError::Malformed("record version is above 3.4"));
    }
    if let [_, _, _, high, low] = *header {
        let len = usize::from(u16::from_be_bytes([high, low]));
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        // RFC 8446 §5.1: "Implementations MUST NOT send zero-length fragments of Handshake
        // types"; allowing them would let a client send records that carry nothing.
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
    }
    Ok(())
}

/// Why a walk over the bytes so far stopped without an answer.
enum Stop {
    /// The bytes so far are a valid start: more are needed.
    More,
    /// They cannot start a ClientHello, whatever follows.
    Bad(HelloError),
}

impl From<HelloError> for Stop {
    fn from(error: HelloError) -> Self {
        Stop::Bad(error)
    }
}

fn malformed(what: &'static str) -> Stop {
    Stop::Bad(HelloError::Malformed(what))
}

/// Checks the handshake bytes so far (`payload`, of the `declared` bytes the records whose
/// headers were read carry; those records end at `records_end`) and, once the ClientHello is
/// all there, returns its host name.
fn handshake(
    payload: &[u8],
    declared: usize,
    records_end: usize,
) -> Result<Option<Box<str>>, Stop> {
    match payload.first() {
        None => return Err(Stop::More),
        Some(&CLIENT_HELLO) => {}
        Some(_) => return Err(HelloError::NotClientHello.into()),
    }
    let Some(&[_, a, b, c]) = payload.get(..HANDSHAKE_HEADER) else { return Err(Stop::More) };
    let len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
    let message = HANDSHAKE_HEADER + len;
    // A client sends nothing after its ClientHello before the server answers (early data and
    // ChangeCipherSpec go in records of their own), so the hello ends with its last record.
    if declared > message {
        return Err(malformed("its last record carries more than the ClientHello"));
    }
    // The fewest record bytes the rest can come in: full records from here on.
    let rest = message - declared;
    if records_end + rest + rest.div_ceil(MAX_RECORD) * RECORD_HEADER > MAX_HELLO_BYTES {
        return Err(HelloError::TooLarge.into());
    }
    let body = &payload[HANDSHAKE_HEADER..payload.len().min(message)];
    client_hello(Reader { bytes: body, at: 0, end: len })
}

/// A cursor over the bytes of one vector (`at..end`) of a ClientHello's body, of which only
/// `bytes` have arrived. Every read checks the vector's declared end first, so a length that
/// overruns its parent is refused before its bytes arrive. Leaves are read with
/// [`Reader::take`], which needs their bytes, so a walk that reaches the end of the body has
/// seen all of it.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Stop> {
        let end = self.at + n;
        if end > self.end {
            return Err(malformed(what));
        }
        let taken = self.bytes.get(self.at..end).ok_or(Stop::More)?;
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<usize, Stop> {
        Ok(usize::from(self.take(1, what)?[0]))
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, Stop> {
        let bytes = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
    }

    /// The next `len` bytes as a vector of their own, walked by the returned reader.
    fn vector(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, Stop> {
        let end = self.at + len;
        if end > self.end {
            return Err(malformed(what));
        }
        let inner = Reader { bytes: self.bytes, at: self.at, end };
        self.at = end;
        Ok(inner)
    }

    fn is_done(&self) -> bool {
        self.at == self.end
    }
}

/// Walks a ClientHello's body (RFC 8446 §4.1.2, the same layout since SSL 3 but for the
/// extensions, which old clients may leave out) and returns its host name.
fn client_hello(mut body: Reader<'_>) -> Result<Option<Box<str>>, Stop> {
    if body.take(2, "client version")?[0] != 3 {
        return Err(malformed("client version is not 3.x"));
    }
    body.take(32, "random")?;
    let session_id = body.u8("session id length")?;
    if session_id > 32 {
        return Err(malformed("session id longer than 32 bytes"));
    }
    body.take(session_id, "session id")?;
    let suites = body.u16("cipher suites length")?;
    if suites < 2 || suites % 2 != 0 {
        return Err(malformed("cipher suites length is odd or zero"));
    }
    body.take(suites, "cipher suites")?;
    let methods = body.u8("compression methods length")?;
    if methods == 0 {
        return Err(malformed("no compression method"));
    }
    body.take(methods, "compression methods")?;
    if body.is_done() {
        return Ok(None);
    }
    let len = body.u16("extensions length")?;
    let mut extensions = body.vector(len, "extensions")?;
    if !body.is_done() {
        return Err(malformed("bytes after the extensions"));
    }
    // One bit per extension type: a type seen twice is refused (RFC 8446 §4.2).
    let mut seen = [0u64; 1 << 10];
    let mut server_name = None;
    while !extensions.is_done() {
        let kind = extensions.u16("extension type")?;
        let (word, bit) = (kind / 64, 1 << (kind % 64));
        if seen[word] & bit != 0 {
            return Err(malformed("an extension sent twice"));
        }
        seen[word] |= bit;
        let len = extensions.u16("extension length")?;
        if kind == usize::from(SERVER_NAME) {
            server_name = server_name_extension(extensions.vector(len, "server name extension")?)?;
        } else {
            extensions.take(len, "extension")?;
        }
    }
    Ok(server_name)
}

/// The `server_name` extension (RFC 6066 §3): a non-empty list of typed names, of which only
/// `host_name` is defined. As rustls does, an entry of another type ends the list: its
/// encoding is unknown, so what follows it cannot be read.
fn server_name_extension(mut data: Reader<'_>) -> Result<Option<Box<str>>, Stop> {
    let len = data.u16("server name list length")?;
    if len == 0 {
        return Err(malformed("empty server name list"));
    }
    let mut list = data.vector(len, "server name list")?;
    if !data.is_done() {
        return Err(malformed("bytes after the server name list"));
    }
    let mut found = None;
    while !list.is_done() {
        if list.u8("server name type")? != usize::from(HOST_NAME) {
            let rest = list.end - list.at;
            list.take(rest, "server name list")?;
            break;
        }
        // "The ServerNameList MUST NOT contain more than one name of the same name_type."
        if found.is_some() {
            return Err(malformed("two host names"));
        }
        let len = list.u16("host name length")?;
        found = Some(host_name(list.take(len, "host name")?)?);
    }
    Ok(found)
}

/// A plausible DNS name, lowercased: 1 to 253 bytes once a single trailing dot is stripped,
/// labels of 1 to 63 letters, digits, `-` and `_`. Anything else (spaces, other bytes,
/// non-ASCII, empty labels) could not be a route's domain, and is refused rather than logged
/// or matched.
fn host_name(name: &[u8]) -> Result<Box<str>, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let label_ok = |label: &[u8]| {
        (1..=63).contains(&label.len())
            && label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split(|&b| b == b'.').all(label_ok) {
        return Err(HelloError::BadServerName);
    }
    Ok(name.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect())
}

/// Reads from `stream`, appending to `buf` (which may already hold the connection's first
/// bytes), until `buf` starts with a whole ClientHello, and returns its host name. `buf`
/// never grows past [`MAX_HELLO_BYTES`]; it may hold bytes after the ClientHello, which the
/// caller replays with it ([`Prefixed`]). Timeouts are the caller's.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<Box<str>>, HelloError> {
    // `parse` starts over on each call, so it is called only once a record (or a record
    // header) is whole: at most twice per record, of which there are at most
    // MAX_HELLO_RECORDS. A client trickling its hello a byte at a time thus costs one parse
    // per record, not one per byte (which would be quadratic in the hello's size). Bytes in
    // between cannot complete the hello; an error they hold is found at the record's end.
    let mut parse_at = 0;
    loop {
        if buf.len() >= parse_at {
            if let Hello::Complete { server_name, .. } = parse(buf)? {
                return Ok(server_name);
            }
            parse_at = next_whole_record(buf);
        }
        let start = buf.len();
        let room = MAX_HELLO_BYTES.saturating_sub(start).min(READ_CHUNK);
        if room == 0 {
            // `parse` answers before MAX_HELLO_BYTES; kept so that no input can loop here.
            return Err(HelloError::TooLarge);
        }
        buf.resize(start + room, 0);
        let read = stream.read(&mut buf[start..]).await;
        buf.truncate(start + read.as_ref().map_or(0, |&n| n));
        if read? == 0 {
            // The bytes not parsed yet may hold the reason it cannot be a hello.
            parse(buf)?;
            return Err(HelloError::Closed);
        }
    }
}

/// A stream that reads `prefix` (bytes already read from `inner`, such as a ClientHello)
/// before reading `inner` again; writes go straight to `inner`. The prefix is freed once
/// read.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, whose reads start with `prefix`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, at: 0, inner }
    }

    /// `inner` as it is, so that prefixed and plain connections have one type.
    #[cfg(test)]
    pub(crate) fn plain(inner: S) -> Self {
        Prefixed::new(Vec::new(), inner)
    }

    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    #[cfg(test)]
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream; the part of the prefix not yet read is dropped.
    #[cfg(test)]
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests;
