//! Request fields, the Host check, the target, and the fields an instance receives.

use super::*;

// ---------------------------------------------------------------------------------------------
// Request fields

/// What a request field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestField {
    Host,
    Connection,
    ContentLength,
    TransferEncoding,
    Expect,
    Upgrade,
    Te,
    ForwardedFor,
    /// `X-Forwarded-Proto`: replaced by the proxy's own; read only when trusted.
    ForwardedProto,
    Authorization,
    /// Forwarded as it is; kept for the compression decision (`compressionAlgo`).
    AcceptEncoding,
    /// Replaced by the proxy's own (`X-Forwarded-Host`) or describing one hop (`Keep-Alive`,
    /// `Proxy-*`): never forwarded.
    Dropped,
    EndToEnd,
}

/// Classifies a request field by name.
pub(crate) fn request_field(name: &str) -> RequestField {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is("host") => RequestField::Host,
        10 if is("connection") => RequestField::Connection,
        10 if is("keep-alive") => RequestField::Dropped,
        14 if is("content-length") => RequestField::ContentLength,
        17 if is("transfer-encoding") => RequestField::TransferEncoding,
        6 if is("expect") => RequestField::Expect,
        7 if is("upgrade") => RequestField::Upgrade,
        2 if is("te") => RequestField::Te,
        15 if is("x-forwarded-for") => RequestField::ForwardedFor,
        15 if is("accept-encoding") => RequestField::AcceptEncoding,
        17 if is("x-forwarded-proto") => RequestField::ForwardedProto,
        16 if is("x-forwarded-host") => RequestField::Dropped,
        13 if is("authorization") => RequestField::Authorization,
        _ if is_proxy_field(name) => RequestField::Dropped,
        _ => RequestField::EndToEnd,
    }
}

pub(crate) fn is_proxy_field(name: &str) -> bool {
    name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Fields a `Connection` header may not remove: the ones the proxy's framing, routing and
/// forwarding rely on. A client listing them gets them treated as if it had not.
pub(crate) fn protected_from_connection(name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 7] = [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"date",
    ];
    PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Tokens of a `Connection` value (comma-separated, trimmed, never empty).
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether any of `connection_values` lists `name` (so the field is hop-by-hop, RFC 9110
/// §7.6.1), unless the field is one a `Connection` header may not remove.
pub(crate) fn listed<'a>(
    mut connection_values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> bool {
    !protected_from_connection(name.as_bytes())
        && connection_values
            .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// The client's address for a service's source lists: the TCP peer, or, when the peer is
/// one of `--trusted-proxies`, the right-most `X-Forwarded-For` entry not trusted
/// ([`dfp_routing::client_address`]). Called only for services with source lists.
pub(crate) fn client_ip<'a>(
    peer: std::net::IpAddr,
    trusted: &dfp_routing::SourceList,
    fields: impl DoubleEndedIterator<Item = (&'a str, &'a [u8])>,
) -> std::net::IpAddr {
    let forwarded = fields
        .filter(|(name, _)| request_field(name) == RequestField::ForwardedFor)
        .map(|(_, value)| value);
    dfp_routing::client_address(peer, trusted, forwarded)
}

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// What the proxy read from a request's fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestFacts<'a> {
    /// The `Host` value (already checked).
    pub(crate) host: Option<&'a [u8]>,
    pub(crate) body: Option<RequestBody>,
    /// The client asked to close after this exchange (or is HTTP/1.0 without keep-alive).
    pub(crate) close: bool,
    /// `Upgrade` asked for with `Connection: upgrade`: the protocol.
    pub(crate) upgrade: Option<&'a [u8]>,
    pub(crate) expect_continue: bool,
    pub(crate) forwarded_for: Option<&'a [u8]>,
    pub(crate) forwarded_https: bool,
    /// The first `X-Forwarded-Proto` value, trusted or not.
    pub(crate) forwarded_proto: Option<&'a [u8]>,
    pub(crate) authorization: Option<&'a [u8]>,
    /// The first `Accept-Encoding` value (a client sends one; later ones are not combined,
    /// which would allocate): borrowed, read only by a service with `compressionAlgo`.
    pub(crate) accept_encoding: Option<&'a [u8]>,
    /// `TE: trailers`: the client takes trailer fields.
    pub(crate) trailers: bool,
    /// Some `Connection` value names other fields: they are hop-by-hop.
    pub(crate) lists_fields: bool,
}

impl RequestFacts<'_> {
    pub(crate) fn body(&self) -> RequestBody {
        self.body.unwrap_or(RequestBody::None)
    }
}

/// Reads and checks a request's fields: framing (RFC 9112 §6: `Content-Length` and
/// `Transfer-Encoding` refused together, only `chunked` accepted, no lists of lengths), `Host`
/// (one, and a valid `host[:port]`), `Expect`, `Upgrade` and `Connection`. `http10` for an
/// HTTP/1.0 request. Errors are the client's fault and are answered without forwarding.
pub(crate) fn analyse_request<'a>(
    http10: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Result<RequestFacts<'a>, ProxyError> {
    let mut facts = RequestFacts { close: http10, ..RequestFacts::default() };
    let mut upgrade = None;
    let mut asks_upgrade = false;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for (name, value) in fields {
        match request_field(name) {
            RequestField::Host => {
                if facts.host.is_some() {
                    return Err(ProxyError::BadRequest("a request must have one Host header\n"));
                }
                check_host(value)?;
                facts.host = Some(value);
            }
            RequestField::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        facts.close = false;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        asks_upgrade = true;
                    } else {
                        facts.lists_fields = true;
                    }
                }
            }
            RequestField::ContentLength => {
                let parsed = parse_content_length(value)
                    .ok_or(ProxyError::BadRequest("Content-Length must be one decimal number\n"))?;
                if length.is_some_and(|l| l != parsed) {
                    return Err(ProxyError::BadRequest("conflicting Content-Length headers\n"));
                }
                length = Some(parsed);
            }
            RequestField::TransferEncoding => {
                if http10 {
                    return Err(ProxyError::BadRequest(
                        "HTTP/1.0 has no Transfer-Encoding; send Content-Length\n",
                    ));
                }
                if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
                    return Err(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                        ProxyError::NotImplemented(
                            "only the chunked transfer coding is supported; send the body as it is, chunked or with Content-Length\n",
                        )
                    } else {
                        ProxyError::BadRequest(
                            "a request body's last transfer coding must be chunked\n",
                        )
                    });
                }
                chunked = true;
            }
            RequestField::Expect => {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") && !http10 {
                    facts.expect_continue = true;
                } else {
                    return Err(ProxyError::ExpectationFailed);
                }
            }
            RequestField::Upgrade => upgrade = upgrade.or(Some(value)),
            RequestField::Te => {
                facts.trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            RequestField::ForwardedFor => {
                facts.forwarded_for = facts.forwarded_for.or(Some(value));
            }
            RequestField::ForwardedProto => {
                facts.forwarded_https |= value.trim_ascii().eq_ignore_ascii_case(b"https");
                facts.forwarded_proto = facts.forwarded_proto.or(Some(value));
            }
            RequestField::Authorization => {
                facts.authorization = facts.authorization.or(Some(value));
            }
            RequestField::AcceptEncoding => {
                facts.accept_encoding = facts.accept_encoding.or(Some(value));
            }
            RequestField::Dropped | RequestField::EndToEnd => {}
        }
    }
    if chunked && length.is_some() {
        return Err(ProxyError::BadRequest(
            "a request must not have both Content-Length and Transfer-Encoding\n",
        ));
    }
    if facts.host.is_none() && !http10 {
        return Err(ProxyError::BadRequest("an HTTP/1.1 request needs a Host header\n"));
    }
    facts.body = Some(match (chunked, length) {
        (true, _) => RequestBody::Chunked,
        (false, None) => RequestBody::None,
        (false, Some(length)) => RequestBody::Length(length),
    });
    if asks_upgrade && !http10 {
        facts.upgrade = upgrade.filter(|u| !u.trim_ascii().is_empty());
    }
    Ok(facts)
}

/// `1*DIGIT` and nothing else (no sign, no list), at most 18 digits.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    (!value.is_empty() && value.len() <= 18 && value.iter().all(u8::is_ascii_digit))
        .then(|| value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A `Host` value (or an absolute target's authority): `host[:port]` where host is a name or
/// IPv4 address (letters, digits, `.`, `-`, `_`, `~`) or a bracketed IPv6 address, and port,
/// when its colon is there, 1 to 65535. No user info (`a@b`), lists (`a,b`) or empty port.
pub(crate) fn check_host(value: &[u8]) -> Result<(), ProxyError> {
    let bad = ProxyError::BadRequest("the Host header is not a valid host[:port]\n");
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else { return Err(bad) };
        let inside = &rest[..end];
        if !inside.contains(&b':')
            || !inside.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return Err(bad);
        }
        &rest[end + 1..]
    } else {
        let split = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        let name = &value[..split];
        if name.is_empty()
            || !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
        {
            return Err(bad);
        }
        &value[split..]
    };
    match port.strip_prefix(b":") {
        None if port.is_empty() => Ok(()),
        Some(digits)
            if !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && parse_content_length(digits).is_some_and(|p| (1..=65535).contains(&p)) =>
        {
            Ok(())
        }
        _ => Err(bad),
    }
}

/// The request target as the proxy routes and forwards it: `/path?query` (origin form), or
/// the path and authority of an absolute-form target (RFC 9112 §3.2.2: its authority wins
/// over `Host`). Bytes outside visible ASCII, and a fragment, are refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The authority of an absolute-form target.
    pub(crate) authority: Option<&'a str>,
}

pub(crate) fn parse_target(target: &str) -> Result<Target<'_>, ProxyError> {
    if target.bytes().any(|b| b == b'#' || !b.is_ascii_graphic()) {
        return Err(ProxyError::BadRequest(
            "the request target has a character that must be percent-encoded\n",
        ));
    }
    let (authority, origin) = if target.starts_with('/') {
        (None, target)
    } else {
        let rest = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(ProxyError::BadRequest("the request target must be a path such as /x\n"))?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..end];
        check_host(authority.as_bytes())?;
        let origin = &rest[end..];
        (Some(authority), if origin.is_empty() { "/" } else { origin })
    };
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
    };
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest("the request target must be a path such as /x\n"));
    }
    Ok(Target { path, query, authority })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

/// Writes the request line the instance receives: the method, the path as routed (and
/// rewritten), the client's query, and the version: HTTP/1.0 for an HTTP/1.0 client, so that
/// the instance frames its answer in a way that client reads (never chunked); HTTP/1.1 else
/// (an HTTP/2 client's request included).
#[inline]
pub(crate) fn write_request_line(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    query: Option<&str>,
    http10: bool,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(if http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
}

/// How the proxy forwards one request: what is fixed by the connection and the route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    pub(crate) client_ip: &'a str,
    /// `"http"` or `"https"`: how the client reached the proxy.
    pub(crate) proto: &'static str,
    /// The `Host` sent upstream (the client's, or the instance's for an HTTP/1.0 client that
    /// sent none).
    pub(crate) host: &'a [u8],
}

/// Writes the request fields the instance receives: the client's end-to-end fields less
/// hop-by-hop ones and those the service's edits delete or replace, the body's framing, the
/// upgrade asked for, `Host`, then `X-Forwarded-For` (the client appended to an earlier
/// proxy's list), `X-Forwarded-Proto`, `X-Forwarded-Host`, then the edits' own fields.
pub(crate) fn write_request_fields<'a>(
    out: &mut impl FieldSink,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    facts: &RequestFacts<'_>,
    admitted: &Admitted<'_>,
    forwarding: &Forwarding<'_>,
) {
    let edits = admitted.request_edits;
    let editing = !edits.is_empty();
    let connection_values = || {
        fields.clone().filter(|(n, _)| request_field(n) == RequestField::Connection).map(|(_, v)| v)
    };
    let mut wrote_length = false;
    for (name, value) in fields.clone() {
        let pass = match request_field(name) {
            RequestField::EndToEnd | RequestField::AcceptEncoding => true,
            RequestField::Authorization => !admitted.strip_authorization,
            RequestField::ContentLength => {
                // One, whatever the repeats (they agree: analyse_request checked).
                !std::mem::replace(&mut wrote_length, true)
                    && matches!(facts.body(), RequestBody::Length(_))
            }
            RequestField::TransferEncoding => facts.body() == RequestBody::Chunked,
            RequestField::Expect => facts.expect_continue,
            RequestField::Host
            | RequestField::Connection
            | RequestField::Upgrade
            | RequestField::Te
            | RequestField::ForwardedFor
            | RequestField::ForwardedProto
            | RequestField::Dropped => false,
        };
        if !pass
            || (facts.lists_fields && listed(connection_values(), name))
            || (editing && edited(edits, name))
        {
            continue;
        }
        out.field(name, value);
    }
    if facts.trailers {
        out.field("te", b"trailers");
    }
    if let Some(protocol) = facts.upgrade {
        out.field("upgrade", protocol);
        out.field("connection", b"upgrade");
    }
    let kept = |name: &str| !(editing && edited(edits, name));
    if kept("host") {
        out.field("host", forwarding.host);
    }
    if kept("x-forwarded-for") {
        with_forwarded_for(facts.forwarded_for, forwarding.client_ip, |v| {
            out.field("x-forwarded-for", v);
        });
    }
    if kept("x-forwarded-proto") {
        out.field("x-forwarded-proto", forwarding.proto.as_bytes());
    }
    let host = facts.host.unwrap_or_default();
    if kept("x-forwarded-host") && !host.is_empty() {
        out.field("x-forwarded-host", host);
    }
    write_edits(out, edits);
}

/// `X-Forwarded-For`: an earlier proxy's list (when it is readable text) with the client
/// appended.
fn with_forwarded_for(earlier: Option<&[u8]>, client_ip: &str, write: impl FnOnce(&[u8])) {
    match earlier.filter(|v| is_visible_text(v) && !v.trim_ascii().is_empty()) {
        Some(earlier) => {
            SCRATCH.with(|scratch| {
                let mut value = scratch.borrow_mut();
                value.clear();
                value.extend_from_slice(earlier);
                value.extend_from_slice(b", ");
                value.extend_from_slice(client_ip.as_bytes());
                write(&value);
            });
        }
        None => write(client_ip.as_bytes()),
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn write_edits(out: &mut impl FieldSink, edits: &HeaderEdits) {
    for (name, value) in edits.set.iter().chain(&edits.add) {
        out.field(name.as_str(), value.as_bytes());
    }
}

/// What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs.
pub(crate) fn is_visible_text(value: &[u8]) -> bool {
    value.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
}
