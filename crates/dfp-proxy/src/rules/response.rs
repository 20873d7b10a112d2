//! Response fields and framing, and the proxy's own answers.

use super::*;

/// What a response field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseField {
    Connection,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Date,
    /// `Keep-Alive`, `TE`, `Proxy-*`: one hop only.
    HopByHop,
    EndToEnd,
}

pub(crate) fn response_field(name: &str) -> ResponseField {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        10 if is("connection") => ResponseField::Connection,
        10 if is("keep-alive") => ResponseField::HopByHop,
        14 if is("content-length") => ResponseField::ContentLength,
        17 if is("transfer-encoding") => ResponseField::TransferEncoding,
        7 if is("upgrade") => ResponseField::Upgrade,
        4 if is("date") => ResponseField::Date,
        2 if is("te") => ResponseField::HopByHop,
        _ if is_proxy_field(name) => ResponseField::HopByHop,
        _ => ResponseField::EndToEnd,
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (`HEAD`, `1xx`, `204`, `304`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// What the proxy read from a response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseFacts {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The instance keeps its connection open after this response.
    pub(crate) keep_alive: bool,
    /// The head had `Transfer-Encoding` (then a `Content-Length` beside it is dropped).
    pub(crate) transfer_encoded: bool,
    pub(crate) lists_fields: bool,
    pub(crate) dated: bool,
}

/// Reads and checks an instance's response fields. `http10` for an HTTP/1.0 response;
/// `head_request` when the request was `HEAD`. An `Err` is the instance's fault.
pub(crate) fn analyse_response<'a>(
    status: u16,
    http10: bool,
    head_request: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<ResponseFacts, &'static str> {
    let mut facts = ResponseFacts {
        status,
        framing: Framing::Empty,
        keep_alive: !http10,
        transfer_encoded: false,
        lists_fields: false,
        dated: false,
    };
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for (name, value) in fields {
        match response_field(name) {
            ResponseField::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        facts.keep_alive |= http10;
                    } else if !token.eq_ignore_ascii_case(b"upgrade") {
                        facts.lists_fields = true;
                    }
                }
            }
            ResponseField::TransferEncoding => {
                facts.transfer_encoded = true;
                let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            ResponseField::ContentLength => {
                let parsed = parse_content_length(value).ok_or("invalid Content-Length")?;
                if length.is_some_and(|l| l != parsed) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(parsed);
            }
            ResponseField::Date => facts.dated = true,
            ResponseField::Upgrade | ResponseField::HopByHop | ResponseField::EndToEnd => {}
        }
    }
    facts.framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if facts.transfer_encoded {
        if chunked && !http10 {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    if facts.framing == Framing::UntilClose {
        facts.keep_alive = false;
    }
    Ok(facts)
}

/// Writes the response fields the client receives: the instance's end-to-end fields less
/// hop-by-hop ones (and a `Content-Length` next to `Transfer-Encoding`, RFC 9112 §6.3) and
/// those the service's edits delete or replace; `Transfer-Encoding` only when `relay_chunked`
/// (an HTTP/1 client gets the chunks verbatim); `Content-Length` unless `relay_length` is false;
/// a `Date` when the instance sent none (RFC 9110 §6.6.1); the edits' own fields; for a
/// `101`, the protocol switched to; and a sticky service's [`Pin`] (never on an interim head:
/// the caller passes none).
///
/// With `coding` (the body is compressed on the way, [`compression`]) neither framing field
/// passes (the engine frames the new body itself), `Content-Encoding` names the coding, and
/// `Vary: Accept-Encoding` is added unless the instance's `Vary` already covers it (a second
/// `Vary` line appends to the first, RFC 9110 §5.3), so shared caches keep both versions, and
/// a strong `ETag` becomes weak (`W/"..."`): the bytes it named are not the bytes sent.
pub(crate) fn write_response_fields<'a>(
    out: &mut impl FieldSink,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    facts: &ResponseFacts,
    edits: &HeaderEdits,
    pin: Option<&Pin<'_>>,
    relay_chunked: bool,
    coding: Option<dfp_routing::CompressionAlgo>,
) {
    let compressed = coding.is_some();
    let editing = !edits.is_empty();
    let connection_values = || {
        fields
            .clone()
            .filter(|(n, _)| response_field(n) == ResponseField::Connection)
            .map(|(_, v)| v)
    };
    for (name, value) in fields.clone() {
        let pass = match response_field(name) {
            ResponseField::EndToEnd | ResponseField::Date => true,
            ResponseField::ContentLength => !facts.transfer_encoded && !compressed,
            ResponseField::TransferEncoding => relay_chunked && !compressed,
            ResponseField::Upgrade => facts.status == 101,
            ResponseField::Connection | ResponseField::HopByHop => false,
        };
        if !pass
            || (facts.lists_fields && listed(connection_values(), name))
            || (editing && edited(edits, name))
        {
            continue;
        }
        if compressed && name.eq_ignore_ascii_case("etag") && value.starts_with(b"\"") {
            // A strong validator names these exact bytes, and the client gets other bytes: it
            // becomes weak (RFC 9110 §8.8.1), as HAProxy's compression does. Only compressed
            // answers pay for the copy.
            out.field(name, &[b"W/".as_slice(), value].concat());
            continue;
        }
        out.field(name, value);
    }
    if facts.status == 101 {
        out.field("connection", b"upgrade");
    } else if !facts.dated && facts.status >= 200 {
        with_date(|date| out.field("date", date));
    }
    if let Some(coding) = coding {
        out.field("content-encoding", coding.token().as_bytes());
        let varies = fields.filter(|(n, _)| n.eq_ignore_ascii_case("vary")).any(|(_, v)| {
            tokens(v).any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
        });
        if !varies {
            out.field("vary", b"accept-encoding");
        }
    }
    write_edits(out, edits);
    if let Some(pin) = pin {
        write_pin(out, pin);
    }
}

/// The current `Date` value, formatted at most once a second per thread.
pub(crate) fn with_date(write: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(now));
        }
        write(date.1.as_bytes());
    });
}

/// The proxy's own short answer as HTTP/1.1 bytes, the same text hyper's path sends.
pub(crate) fn write_error(
    out: &mut Vec<u8>,
    err: &ProxyError,
    head_request: bool,
    close: bool,
) -> u16 {
    count_own_answer(err);
    let (status, text) = err.status_and_text();
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    with_date(|date| out.field("date", date));
    if let Some((name, value)) = err.extra_fields() {
        out.field(name, value.as_bytes());
    }
    if close || err.closes_connection() {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(text.as_bytes());
    }
    status.as_u16()
}

/// A response whose `Content-Length` is below this is not compressed: the gzip header and
/// trailer (18 bytes) and a deflate block eat most of what a tiny body could save, and one
/// MTU carries it either way.
pub(crate) const MIN_COMPRESSED_LENGTH: u64 = 256;

/// The service's compression and the coding chosen for one client: of the service's list
/// ([`dfp_routing::Compression::algos`]), the first that the request's `Accept-Encoding`
/// accepts (by name or `*`, with a `q` above 0). The service's order wins over the client's
/// `q` weights, as the operator listed them in order of preference (`br gzip`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptedCompression<'p> {
    pub(crate) service: &'p dfp_routing::Compression,
    pub(crate) algo: dfp_routing::CompressionAlgo,
}

/// The service's compression with the coding this client accepts ([`AcceptedCompression`]),
/// decided once per request at admission so an engine keeps no borrow of the request's
/// fields. `accept_encoding` is `None` for a client that could not read a body without a
/// length (HTTP/1.0: no chunked coding).
pub(crate) fn accepted_compression<'p>(
    service: Option<&'p dfp_routing::Compression>,
    accept_encoding: Option<&[u8]>,
) -> Option<AcceptedCompression<'p>> {
    let (service, accept_encoding) = (service?, accept_encoding?);
    let algo = service.algos().find(|algo| accepts(accept_encoding, algo.token()))?;
    Some(AcceptedCompression { service, algo })
}

/// Whether a response is compressed on its way to the client, and with which coding: only
/// when the service asks for it and the client accepts it (`accepted`, from
/// [`accepted_compression`]), the status is 200..=203 (never `204`, `206`'s byte ranges or
/// `304`), there is a body (not `HEAD`) of at least [`MIN_COMPRESSED_LENGTH`] bytes (or of
/// unknown length), the instance did not encode it already (`Content-Encoding`) nor forbid
/// it (`Cache-Control: no-transform`), and its `Content-Type` is in the service's list.
pub(crate) fn compression<'a>(
    accepted: Option<AcceptedCompression<'_>>,
    facts: &ResponseFacts,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<dfp_routing::CompressionAlgo> {
    let AcceptedCompression { service, algo } = accepted?;
    if !(200..=203).contains(&facts.status) {
        return None;
    }
    match facts.framing {
        Framing::Empty => return None,
        Framing::Length(length) if length < MIN_COMPRESSED_LENGTH => return None,
        Framing::Length(_) | Framing::Chunked | Framing::UntilClose => {}
    }
    let mut content_type = None;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-encoding") && !value.trim_ascii().is_empty() {
            return None;
        }
        if name.eq_ignore_ascii_case("cache-control")
            && tokens(value).any(|t| t.eq_ignore_ascii_case(b"no-transform"))
        {
            return None;
        }
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        }
    }
    service.applies_to(content_type).then_some(algo)
}

/// Whether an `Accept-Encoding` value accepts `coding` (RFC 9110 §12.5.3): named with a `q`
/// above 0, or not named and `*` has one. A malformed `q` accepts nothing: the client may not
/// read a coding it did not clearly ask for.
fn accepts(accept_encoding: &[u8], coding: &str) -> bool {
    let mut wildcard = false;
    for item in accept_encoding.split(|b| *b == b',') {
        let mut parts = item.split(|b| *b == b';');
        let name = parts.next().unwrap_or_default().trim_ascii();
        let mut weight = Some(1000);
        for p in parts.map(<[u8]>::trim_ascii) {
            if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                weight = qvalue(&p[2..]);
            }
        }
        let accepted = weight.is_some_and(|w| w > 0);
        if name.eq_ignore_ascii_case(coding.as_bytes()) {
            return accepted;
        }
        if name == b"*" {
            wildcard = accepted;
        }
    }
    wildcard
}

/// A `qvalue` (`0`, `0.5`, `1.000`; RFC 9110 §12.4.2) in thousandths; `None` if malformed.
fn qvalue(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|b| *b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}
