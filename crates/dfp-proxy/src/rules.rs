//! The one set of rules every proxied exchange follows, whichever engine carries it.
//!
//! Why one module: the proxy has two HTTP engines (its own HTTP/1 codec in `h1/` for plain
//! and TLS connections, and hyper's HTTP/2 server in `tls.rs` + `forward.rs`). Every decision
//! about an exchange is made here, once, over plain `(name, value)` field lists that both
//! engines can give: which request and response fields pass (hop-by-hop, names listed in
//! `Connection`, fields the proxy writes itself), the forwarded fields, the `Host` check, the
//! framing checks of RFC 9112 §6 (what a proxy must refuse or remove), a service's policy
//! ([`admit`]: redirect, authentication, rewrite, header edits, timeouts), who is at fault
//! when an attempt fails ([`Failure`]) and the access-log and metrics record ([`record`]).
//!
//! [`admit`] destructures [`ServicePolicy`] without `..`, and engines destructure its
//! [`Admitted`] answer the same way: a new policy field does not compile until this module
//! says what it means and every engine says what it does with it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dfp_routing::{Backend, HeaderEdits, ServicePolicy, TableHandle, Upstream};
use http::header::HeaderValue;
use http::StatusCode;

use crate::error::ProxyError;
use crate::forward::now_ms;
use crate::path;

/// The largest request or response head (start line and fields) accepted, on every request of
/// every connection; a larger request head gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Field lines read per head; more gets 431 (requests) or 502 (responses).
pub(crate) const MAX_HEADERS: usize = 100;

/// The longest the proxy waits for an instance's `100 Continue` before telling the client to
/// send its body anyway (what curl waits before sending it unasked).
pub(crate) const EXPECT_WAIT: Duration = Duration::from_secs(1);

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
        17 if is("x-forwarded-proto") => RequestField::ForwardedProto,
        16 if is("x-forwarded-host") => RequestField::Dropped,
        13 if is("authorization") => RequestField::Authorization,
        _ if is_proxy_field(name) => RequestField::Dropped,
        _ => RequestField::EndToEnd,
    }
}

fn is_proxy_field(name: &str) -> bool {
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
fn listed<'a>(mut connection_values: impl Iterator<Item = &'a [u8]>, name: &str) -> bool {
    !protected_from_connection(name.as_bytes())
        && connection_values
            .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
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
    pub(crate) authorization: Option<&'a [u8]>,
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
            }
            RequestField::Authorization => {
                facts.authorization = facts.authorization.or(Some(value));
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

// ---------------------------------------------------------------------------------------------
// A service's policy

/// What a service's policy asks of one request that it lets through.
#[derive(Debug)]
pub(crate) struct Admitted<'p> {
    /// The path after the service's rewrite, when it rewrote it.
    pub(crate) rewritten: Option<String>,
    /// Edits of the fields sent to the instance.
    pub(crate) request_edits: &'p HeaderEdits,
    /// Edits of the fields sent back to the client.
    pub(crate) response_edits: &'p HeaderEdits,
    /// The credentials were for the proxy: the instance never sees them.
    pub(crate) strip_authorization: bool,
    pub(crate) server_timeout: Duration,
    pub(crate) tunnel_timeout: Duration,
}

/// What [`admit`] needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission<'a> {
    /// The request came over TLS terminated here, or (with `--trust-forwarded-proto`) says it
    /// came over HTTPS to a trusted balancer.
    pub(crate) https: bool,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) authorization: Option<&'a [u8]>,
}

/// Applies a service's policy to a routed request, in this order: HTTPS redirect,
/// authentication, path rewrite. An `Err` is the proxy's own answer.
pub(crate) fn admit<'p>(
    policy: &'p ServicePolicy,
    service: &str,
    request: &Admission<'_>,
    defaults: (Duration, Duration),
) -> Result<Admitted<'p>, ProxyError> {
    // No `..`: a new policy field must be given a meaning here before this compiles.
    let ServicePolicy {
        https_redirect,
        path_rewrite,
        users,
        request_headers,
        response_headers,
        server_timeout,
        tunnel_timeout,
    } = policy;
    if let Some(status) = *https_redirect {
        if !request.https {
            return Err(https_redirect_to(request.host, request.path, request.query, status));
        }
    }
    if !users.is_empty() {
        let authorization = request.authorization.and_then(|a| HeaderValue::from_bytes(a).ok());
        if !policy.authorizes(authorization.as_ref()) {
            return Err(ProxyError::Unauthorized { realm: realm(service) });
        }
    }
    let rewritten = match path_rewrite {
        Some(rewrite) => match rewrite.apply(request.path) {
            Some(path)
                if path.starts_with('/')
                    && path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#') =>
            {
                Some(path)
            }
            Some(_) => return Err(ProxyError::RewriteFailed),
            None => None,
        },
        None => None,
    };
    Ok(Admitted {
        rewritten,
        request_edits: request_headers,
        response_edits: response_headers,
        strip_authorization: !users.is_empty(),
        server_timeout: server_timeout.unwrap_or(defaults.0),
        tunnel_timeout: tunnel_timeout.unwrap_or(defaults.1),
    })
}

/// A request routed and let through by its service's policy.
#[derive(Debug)]
pub(crate) struct Routing<'t, 'b> {
    /// The path as routed: the target's, with dot segments resolved and `//` merged.
    pub(crate) path: Cow<'t, str>,
    pub(crate) backend: &'b Arc<Backend>,
    pub(crate) admitted: Admitted<'b>,
    /// One of the service's instances (an HTTP/1.0 client without `Host` gets its address as
    /// `Host` upstream).
    pub(crate) first: &'b Upstream,
}

/// What [`route`] refuses with: the answer, and the service when the request was routed.
pub(crate) type Unrouted<'b> = (ProxyError, Option<&'b Arc<Backend>>);

/// Normalises the target's path ([`path::normalize`]), looks the host and path up in the live
/// table (the guard is dropped before this returns; `slot` keeps the backend alive for as long
/// as the answer borrows it), and lets the service's policy [`admit`] the request. No route:
/// 404; the policy's own answer (redirect, 401); no instance: 503.
pub(crate) fn route<'t, 'b>(
    table: &TableHandle,
    slot: &'b mut Option<Arc<Backend>>,
    host: Option<&str>,
    target: &Target<'t>,
    request: RoutedRequest<'_>,
) -> Result<Routing<'t, 'b>, Unrouted<'b>> {
    let path: Cow<'t, str> = match path::normalize(target.path) {
        Ok(Some(normal)) => Cow::Owned(normal),
        Ok(None) => Cow::Borrowed(target.path),
        Err(path::EscapesRoot) => {
            return Err((ProxyError::BadRequest("the request path climbs above /\n"), None));
        }
    };
    let backend: &'b Arc<Backend> = {
        let table = table.load();
        let Some(found) = table.lookup_host(host, &path) else {
            return Err((ProxyError::NoRoute, None));
        };
        slot.insert(found.backend.clone())
    };
    let admission = Admission {
        https: request.https,
        host,
        path: &path,
        query: target.query,
        authorization: request.authorization,
    };
    let admitted = admit(backend.policy(), backend.service(), &admission, request.defaults)
        .map_err(|err| (err, Some(backend)))?;
    let Some(first) = backend.instances().first() else {
        return Err((ProxyError::NoInstance, Some(backend)));
    };
    Ok(Routing { path, backend, admitted, first })
}

/// What [`route`] needs to know of a request besides its host and target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoutedRequest<'a> {
    /// Came over TLS, or (trusted) says it came over HTTPS.
    pub(crate) https: bool,
    pub(crate) authorization: Option<&'a [u8]>,
    /// The proxy's server and tunnel timeouts.
    pub(crate) defaults: (Duration, Duration),
}

/// `301`..`308` to the same host and path over HTTPS (the port, if any, is dropped: HTTPS is
/// served on its own port).
fn https_redirect_to(
    host: Option<&str>,
    path: &str,
    query: Option<&str>,
    status: u16,
) -> ProxyError {
    let host = host.map_or("", |h| {
        if h.starts_with('[') {
            h.split_once(']').map_or(h, |(v6, _)| v6)
        } else {
            h.rsplit_once(':').map_or(h, |(name, _)| name)
        }
    });
    let closing = if host.starts_with('[') { "]" } else { "" };
    let location = match query {
        Some(query) => format!("https://{host}{closing}{path}?{query}"),
        None => format!("https://{host}{closing}{path}"),
    };
    let location =
        HeaderValue::try_from(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    ProxyError::Redirect { location, status }
}

fn realm(service: &str) -> HeaderValue {
    let safe: String =
        service.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    HeaderValue::try_from(format!("Basic realm=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

/// Whether `edits` deletes or replaces the field `name` (then the original is not sent).
fn edited(edits: &HeaderEdits, name: &str) -> bool {
    edits.delete.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
        || edits.set.iter().any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------------------------------------
// Head writers: where a head is written, field by field, into a sink

/// Where head fields go: raw HTTP/1 bytes, or a header map for hyper.
pub(crate) trait FieldSink {
    fn field(&mut self, name: &str, value: &[u8]);
}

impl FieldSink for Vec<u8> {
    fn field(&mut self, name: &str, value: &[u8]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }
}

impl FieldSink for http::HeaderMap {
    fn field(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value))
        {
            self.append(name, value);
        }
    }
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
            RequestField::EndToEnd => true,
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

fn write_edits(out: &mut impl FieldSink, edits: &HeaderEdits) {
    for (name, value) in edits.set.iter().chain(&edits.add) {
        out.field(name.as_str(), value.as_bytes());
    }
}

/// What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs.
fn is_visible_text(value: &[u8]) -> bool {
    value.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
}

/// What a response field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseField {
    Connection,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Date,
    /// `Keep-Alive`, `TE`, `Proxy-*`: one hop only.
    HopByHop,
    EndToEnd,
}

fn response_field(name: &str) -> ResponseField {
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
/// a `Date` when the instance sent none (RFC 9110 §6.6.1); the edits' own fields; and for a
/// `101`, the protocol switched to.
pub(crate) fn write_response_fields<'a>(
    out: &mut impl FieldSink,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    facts: &ResponseFacts,
    edits: &HeaderEdits,
    relay_chunked: bool,
) {
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
            ResponseField::ContentLength => !facts.transfer_encoded,
            ResponseField::TransferEncoding => relay_chunked,
            ResponseField::Upgrade => facts.status == 101,
            ResponseField::Connection | ResponseField::HopByHop => false,
        };
        if !pass
            || (facts.lists_fields && listed(connection_values(), name))
            || (editing && edited(edits, name))
        {
            continue;
        }
        out.field(name, value);
    }
    if facts.status == 101 {
        out.field("connection", b"upgrade");
    } else if !facts.dated && facts.status >= 200 {
        with_date(|date| out.field("date", date));
    }
    write_edits(out, edits);
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

// ---------------------------------------------------------------------------------------------
// Failures: whose fault, retry or not, eject or not, which answer

/// Why an attempt at one instance did not give the client a whole response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The instance, before any byte of a response: refused, reset, closed. The instance is
    /// ejected for a while; another may be tried if the request can be sent again.
    Unreachable(std::io::Error),
    /// The instance sent something that is not a valid response head: as `Unreachable`.
    BadResponse(&'static str),
    /// No response head within the server timeout: 504, the instance is not ejected (slow is
    /// not dead).
    Timeout,
    /// The client's fault while its request body was relayed (broken chunked framing, the body
    /// cut short, or the client silent for the client timeout): 400, or a quiet close when the
    /// client is gone. Never counted against the instance.
    Client(&'static str),
    /// The response (with this status) began but could not be relayed to its end (instance or
    /// client gone, bad body framing, a client that stopped reading): the client connection is
    /// closed.
    Broken(u16),
}

impl Failure {
    /// Whether this failure counts against the instance (error counter and ejection).
    pub(crate) fn blames_instance(&self) -> bool {
        match self {
            Failure::Unreachable(_) | Failure::BadResponse(_) => true,
            Failure::Timeout | Failure::Client(_) | Failure::Broken(_) => false,
        }
    }

    /// The answer the client gets when no response was relayed.
    pub(crate) fn answer(&self) -> ProxyError {
        match self {
            Failure::Unreachable(_) | Failure::BadResponse(_) | Failure::Broken(_) => {
                ProxyError::UpstreamUnreachable
            }
            Failure::Timeout => ProxyError::UpstreamTimeout,
            Failure::Client(why) => ProxyError::BadRequest(why),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(err) => write!(f, "unreachable: {err}"),
            Failure::BadResponse(why) => write!(f, "bad response: {why}"),
            Failure::Timeout => f.write_str("no response head within the server timeout"),
            Failure::Client(why) => write!(f, "client fault: {}", why.trim_end()),
            Failure::Broken(status) => write!(f, "response {status} broken off"),
        }
    }
}

/// Records an attempt at `upstream` that failed in a way that blames the instance (it counts
/// toward its ejection) and says whether to try another instance: only for a `replayable`
/// request, and only while an instance is left untried.
pub(crate) fn attempt_failed(
    backend: &Backend,
    upstream: &Upstream,
    tried: &mut Vec<SocketAddr>,
    replayable: bool,
    error: &dyn std::fmt::Display,
) -> bool {
    let stats = backend.stats();
    stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
    upstream.health().record_failure(now_ms());
    stats.ejections.fetch_add(1, Ordering::Relaxed);
    tried.push(upstream.addr());
    let retry = replayable && tried.len() < backend.instances().len();
    tracing::debug!(service = backend.service(), instance = %upstream.addr(), %error, retry, "upstream attempt failed");
    if retry {
        stats.retries.fetch_add(1, Ordering::Relaxed);
    }
    retry
}

/// One exchange as it is counted and logged.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) backend: Option<&'a Backend>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) status: u16,
    /// From the request head to the response head (what the latency histogram means).
    pub(crate) micros: u64,
}

/// Counts an exchange in its service's metrics and writes its access-log line.
pub(crate) fn record(record: &Record<'_>, access_log: bool) {
    if let Some(backend) = record.backend {
        backend.stats().record_response(record.status, record.micros);
    }
    if access_log {
        tracing::info!(
            target: "access",
            client = %record.client,
            method = %record.method,
            uri = %record.target,
            service = %record.backend.map_or("-", |b| b.service()),
            upstream = %record.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            status = record.status,
            micros = record.micros,
            "request"
        );
    }
}

#[cfg(test)]
mod tests;
