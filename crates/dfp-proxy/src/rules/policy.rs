//! A service's policy and the route: what lets a request through, and what it asks of it.

use std::future::Future;
use std::net::IpAddr;
use std::task::Poll;

use dfp_routing::{ProtoRedirect, StickySession, Ticket};

use super::*;
use crate::error::{Forbidden, RedirectKind};

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
    /// The service's compression, when the client accepts its coding ([`accepted_compression`]):
    /// whether a response is compressed is decided on its head ([`compression`]).
    pub(crate) compression: Option<AcceptedCompression<'p>>,
    /// The service pins clients to instances: pick with [`choose_instance`].
    pub(crate) sticky: Option<Sticky<'p>>,
    /// The instances want a PROXY protocol header naming the client on each connection.
    pub(crate) send_proxy: Option<dfp_routing::ProxyProtocol>,
}

/// A sticky service's cookie, and the instance the request's cookie names, if it names one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sticky<'p> {
    pub(crate) cookie: &'p str,
    pub(crate) pinned: Option<u64>,
}

/// The cookie the proxy sets on a response to pin the client to the instance that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pin<'p> {
    pub(crate) cookie: &'p str,
    pub(crate) token: u64,
}

/// The request's cookie `name`, read as a sticky-session token, found only when a service's
/// rules ask for it (the engine's [`cookie_token`] over the request's fields).
#[derive(Clone, Copy)]
pub(crate) struct CookieToken<'a>(pub(crate) &'a (dyn Fn(&str) -> Option<u64> + 'a));

impl std::fmt::Debug for CookieToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieToken(..)")
    }
}

/// The sticky token in the `Cookie` fields (HTTP/2 may split them) under `name`: 16
/// lowercase or uppercase hex digits, else `None` (a forged or stale value is no pin).
pub(crate) fn cookie_token<'a>(
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &str,
) -> Option<u64> {
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, value)| value.split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            let value = value.trim_ascii();
            let value =
                value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
            if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
        })
}

/// One exchange in a service's queue, counted in its stats for as long as it waits.
struct Queued<'b>(&'b dfp_routing::BackendStats);

impl<'b> Queued<'b> {
    /// Counts one more waiting, unless `max` (`maxQueue`) are waiting already: `None`, and
    /// nothing counted. (Counted first and taken back when over: the count is shared by
    /// every thread, and never over `max` for longer than that.)
    fn enter(
        stats: &'b dfp_routing::BackendStats,
        max: Option<std::num::NonZeroU32>,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = stats.queued.fetch_add(1, Relaxed);
        if max.is_some_and(|max| before >= u64::from(max.get())) {
            stats.queued.fetch_sub(1, Relaxed);
            return None;
        }
        stats.queued_total.fetch_add(1, Relaxed);
        Some(Queued(stats))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why [`choose_instance`] gave no instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoChoice {
    /// Every instance was tried by this request (or the service has none).
    Left,
    /// Every instance not tried yet has its service's `instanceMaxConn` exchanges in flight
    /// (or, for a sticky request, the instance it is pinned to has); from
    /// [`take_instance`], still so at the end of the wait.
    Full,
}

/// An instance, the sticky pin to set, and the exchange's place on the instance.
pub(crate) type Chosen<'b, 'p> = (&'b Upstream, Option<Pin<'p>>, InstanceSlot);

/// How every engine gets the instance for an attempt: [`choose_instance`], and when every
/// instance is full (`instanceMaxConn`), a wait for one to give a place back (HAProxy's queue
/// behind a server's `maxconn`): for the service's `timeoutQueue`, else `queue` (the engines
/// pass `--queue-timeout`); zero is no queue. While `maxQueue` requests of the service wait
/// already, no other joins them: `NoChoice::Full` at once. A service without a cap never
/// waits.
pub(crate) fn take_instance<'a, 'b, 'p>(
    backend: &'b Backend,
    sticky: Option<Sticky<'p>>,
    tried: &'a [SocketAddr],
    queue: Duration,
) -> TakeInstance<'a, 'b, 'p> {
    TakeInstance { backend, sticky, tried, queue, wait: None }
}

/// The future of [`take_instance`]. Written out rather than an `async fn` so that the usual
/// case, a place found at once, is a call inlined into the engine's own future; the wait,
/// with its timer, is boxed and made only when every instance is full.
pub(crate) struct TakeInstance<'a, 'b, 'p> {
    backend: &'b Backend,
    sticky: Option<Sticky<'p>>,
    tried: &'a [SocketAddr],
    queue: Duration,
    wait: Option<QueueWait<'a, 'b, 'p>>,
}

type QueueWait<'a, 'b, 'p> =
    std::pin::Pin<Box<dyn Future<Output = Result<Chosen<'b, 'p>, NoChoice>> + Send + 'a>>;

impl<'a, 'b: 'a, 'p: 'a> Future for TakeInstance<'a, 'b, 'p> {
    type Output = Result<Chosen<'b, 'p>, NoChoice>;

    #[inline]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.wait.is_none() {
            match choose_instance(this.backend, this.sticky, this.tried) {
                Err(NoChoice::Full) => {
                    let (backend, sticky, tried) = (this.backend, this.sticky, this.tried);
                    let policy = backend.policy();
                    let queue = policy.queue_timeout.unwrap_or(this.queue);
                    let counted = (!queue.is_zero())
                        .then(|| Queued::enter(backend.stats(), policy.max_queue))
                        .flatten();
                    let Some(counted) = counted else {
                        return Poll::Ready(Err(NoChoice::Full));
                    };
                    let wait = queue_for_instance(backend, sticky, tried, queue, counted);
                    this.wait = Some(Box::pin(wait));
                }
                chosen => return Poll::Ready(chosen),
            }
        }
        match this.wait.as_mut() {
            Some(wait) => wait.as_mut().poll(cx),
            None => Poll::Ready(Err(NoChoice::Full)),
        }
    }
}

/// Waits until a place is handed over from an instance's queue or [`choose_instance`] finds
/// one, or `queue` has passed. The exchange is queued once, on every instance it may use
/// (those it has not tried; for a pinned request, its own), before it looks again: a place
/// given back between the two is seen by the look. Queued exchanges are served in arrival
/// order, one per place given back ([`dfp_routing::Ticket`]).
async fn queue_for_instance<'b, 'p>(
    backend: &'b Backend,
    sticky: Option<Sticky<'p>>,
    tried: &[SocketAddr],
    queue: Duration,
    _counted: Queued<'b>,
) -> Result<Chosen<'b, 'p>, NoChoice> {
    let ticket = Leaving(Ticket::new());
    // A request pinned to a live instance waits for that one (its session stays there);
    // one pinned to an instance that is gone waits, like any other, for whichever is first.
    let pinned = sticky
        .and_then(|s| s.pinned)
        .and_then(|token| backend.pinned_instance(token, now_ms, tried))
        .map(Upstream::token);
    for upstream in backend.instances().iter().filter(|u| !tried.contains(&u.addr())) {
        if pinned.is_none_or(|token| upstream.token() == token) {
            upstream.enqueue(&ticket.0);
        }
    }
    let deadline = tokio::time::sleep(queue);
    tokio::pin!(deadline);
    std::future::poll_fn(|cx| {
        if let Some(slot) = ticket.0.take_place(cx.waker()) {
            if let Some(upstream) = backend.instances().iter().find(|u| slot.is_on(u)) {
                let pin = pin_to(sticky.filter(|_| pinned.is_none()), upstream);
                return Poll::Ready(Ok((upstream, pin, slot)));
            }
        }
        match choose_instance(backend, sticky, tried) {
            Err(NoChoice::Full) => {}
            chosen => return Poll::Ready(chosen),
        }
        deadline.as_mut().poll(cx).map(|()| Err(NoChoice::Full))
    })
    .await
}

/// A queued exchange's ticket, taken out of every queue when the exchange stops waiting
/// (served, timed out or cancelled); a place handed to it and not taken goes to the next.
struct Leaving(std::sync::Arc<Ticket>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The sticky pin to set for a request of a sticky service sent to `upstream` (`None`: not
/// sticky, or already pinned there). One rule for a place found and a place handed over.
fn pin_to<'p>(sticky: Option<Sticky<'p>>, upstream: &Upstream) -> Option<Pin<'p>> {
    sticky.map(|s| Pin { cookie: s.cookie, token: upstream.token() })
}

/// The instance for the next attempt, with the attempt's [`InstanceSlot`] on it (held until
/// the exchange ends: the response relayed, the tunnel or TCP connection closed): for a
/// sticky service, the one the request's cookie names while it is live (still configured,
/// not ejected, not tried by this request); otherwise the next one by round robin, with the
/// [`Pin`] to set when the service is sticky. A pinned instance that failed is in `tried`,
/// so a retry never loops on it.
///
/// Under `instanceMaxConn` a full instance is stepped over (round robin goes on to the
/// next); a request pinned to a full instance is not moved (its session stays where it is)
/// and gets [`NoChoice::Full`], as does one that finds every instance full. Every engine
/// gets its instance here, so the cap cannot be skipped by one.
pub(crate) fn choose_instance<'b, 'p>(
    backend: &'b Backend,
    sticky: Option<Sticky<'p>>,
    tried: &[SocketAddr],
) -> Result<Chosen<'b, 'p>, NoChoice> {
    let cap = backend.policy().instance_max_conn;
    if let Some(pinned) = sticky.and_then(|s| s.pinned) {
        if let Some(upstream) = backend.pinned_instance(pinned, now_ms, tried) {
            let slot = upstream.take_slot(cap).ok_or(NoChoice::Full)?;
            return Ok((upstream, None, slot));
        }
    }
    let pin = |upstream: &Upstream| pin_to(sticky, upstream);
    let upstream = backend.next_instance_except(now_ms, tried).ok_or(NoChoice::Left)?;
    if let Some(slot) = upstream.take_slot(cap) {
        return Ok((upstream, pin(upstream), slot));
    }
    // Full: the others once each, in round-robin order (only with a cap, so only then this
    // list is made).
    let mut full: Vec<SocketAddr> = tried.to_vec();
    full.push(upstream.addr());
    while let Some(upstream) = backend.next_instance_except(now_ms, &full) {
        if let Some(slot) = upstream.take_slot(cap) {
            return Ok((upstream, pin(upstream), slot));
        }
        full.push(upstream.addr());
    }
    Err(NoChoice::Full)
}

/// Whether `allowedSources` and `deniedSources` let the client in: listed in `allowed` (or
/// it is empty) and not in `denied`. `client` is read only when a list is given. One rule for
/// HTTP requests and TCP connections.
pub(crate) fn source_admitted(
    allowed: &dfp_routing::SourceList,
    denied: &dfp_routing::SourceList,
    client: impl FnOnce() -> std::net::IpAddr,
) -> bool {
    if allowed.is_empty() && denied.is_empty() {
        return true;
    }
    let client = client();
    (allowed.is_empty() || allowed.contains(client)) && !denied.contains(client)
}

/// Writes the pinning cookie (`HttpOnly`, `Path=/`) and `Cache-Control: private`, so that no
/// shared cache keeps one client's pin for others (HAProxy's `insert indirect nocache`).
/// The value is formatted on the stack.
pub(crate) fn write_pin(out: &mut impl FieldSink, pin: &Pin<'_>) {
    let mut buf = [0_u8; 128];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{}={:016x}; Path=/; HttpOnly", pin.cookie, pin.token).is_ok() {
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        out.field("set-cookie", &buf[..len]);
        out.field("cache-control", b"private");
    }
}

/// The client's address, found only when a service's rules ask for it (a service without
/// source lists never reads `X-Forwarded-For`): the engine's [`client_address`] over the
/// peer, `--trusted-proxies` and the request's fields.
///
/// [`client_address`]: dfp_routing::client_address
#[derive(Clone, Copy)]
pub(crate) struct ClientIp<'a>(pub(crate) &'a (dyn Fn() -> IpAddr + 'a));

impl std::fmt::Debug for ClientIp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIp(..)")
    }
}

/// A request's fields as the table's routing conditions read them: a [`FieldList`] over the
/// engine's own `(name, value)` pairs, borrowed, never copied.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a>(pub(crate) &'a dyn dfp_routing::RequestFields);

impl std::fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fields(..)")
    }
}

/// An engine's field iterator (cloned for each question, so nothing is collected).
pub(crate) struct FieldList<I>(pub(crate) I);

impl<'a, I> dfp_routing::RequestFields for FieldList<I>
where
    I: Iterator<Item = (&'a str, &'a [u8])> + Clone,
{
    fn any_value(&self, name: &str, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0.clone().any(|(n, value)| n.eq_ignore_ascii_case(name) && test(value))
    }
}

/// What [`admit`] needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission<'a> {
    /// The request came over TLS terminated here, or (with `--trust-forwarded-proto`) says it
    /// came over HTTPS to a trusted balancer.
    pub(crate) https: bool,
    /// The connection is TLS terminated here and the client presented a certificate that
    /// verified against `--client-ca` (the handshake refuses one that does not).
    pub(crate) client_cert: bool,
    pub(crate) method: &'a str,
    pub(crate) client: ClientIp<'a>,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) authorization: Option<&'a [u8]>,
    /// The request's `X-Forwarded-Proto`, trusted or not (read only by the services that
    /// redirect by it).
    pub(crate) forwarded_proto: Option<&'a [u8]>,
    pub(crate) cookie: CookieToken<'a>,
    /// The request's `Accept-Encoding`, if it has one and the client reads a chunked (or
    /// HTTP/2) body: a compressed response has no length. `None` for HTTP/1.0 clients.
    pub(crate) accept_encoding: Option<&'a [u8]>,
}

/// Applies a service's policy to a routed request, in this order (HAProxy's: `http-request
/// deny` rules before `redirect` rules, access before authentication):
///
/// 1. client address (`allowedSources`, then `deniedSources`): 403. First, so a refused
///    address learns nothing of the service, not even that it wants HTTPS or a password;
/// 2. `denyHttp`: 403 on plain HTTP (so it wins over `httpsOnly`'s redirect);
/// 3. `verifyClientSsl`: 403 without a verified client certificate (plain HTTP never has
///    one), before anything else the service would say;
/// 4. method (`allowedMethods`, then `deniedMethods`: denied wins): 403;
/// 5. `redirectFromDomain`: `301` to the service's first domain, same scheme, path and query;
/// 6. `httpsOnly`, then `redirectWhenHttpProto` / `redirectUnlessHttpsProto` (by the
///    balancer's `X-Forwarded-Proto`, never for a request that is HTTPS here): the redirect to
///    HTTPS;
/// 7. basic authentication (the service's `users`, its `usersSecret`, or the global users;
///    none with `ignoreAuthorization=true`): 401;
/// 8. path rewrites: `reqPathSearch`/`reqPathReplace`, then each `reqPathSearchReplace` pair
///    in order, each over the previous result;
/// 9. sticky session: the request's cookie is read (the instance is chosen per attempt by
///    [`choose_instance`]).
///
/// An `Err` is the proxy's own answer.
pub(crate) fn admit<'p>(
    policy: &'p ServicePolicy,
    service: &str,
    request: &Admission<'_>,
    defaults: (Duration, Duration),
) -> Result<Admitted<'p>, ProxyError> {
    // No `..`: a new policy field must be given a meaning here before this compiles.
    let ServicePolicy {
        allowed_sources,
        denied_sources,
        deny_http,
        verify_client_cert,
        allowed_methods,
        denied_methods,
        https_redirect,
        proto_redirect,
        domain_redirect,
        path_rewrite,
        search_replace,
        sticky,
        auth,
        request_headers,
        response_headers,
        server_timeout,
        tunnel_timeout,
        // A TCP service's (`timeoutClient`); HTTP services cannot be given one.
        client_timeout: _,
        compression,
        send_proxy,
        // Applied where every engine gets its instance: `choose_instance`'s slot, and
        // `take_instance`'s queue.
        instance_max_conn: _,
        queue_timeout: _,
        max_queue: _,
    } = policy;
    if !source_admitted(allowed_sources, denied_sources, || (request.client.0)()) {
        return Err(ProxyError::Forbidden(Forbidden::Source));
    }
    if *deny_http && !request.https {
        return Err(ProxyError::Forbidden(Forbidden::Http));
    }
    if *verify_client_cert && !request.client_cert {
        return Err(ProxyError::Forbidden(Forbidden::ClientCert));
    }
    if (!allowed_methods.is_empty() && !allowed_methods.contains(request.method))
        || denied_methods.contains(request.method)
    {
        return Err(ProxyError::Forbidden(Forbidden::Method));
    }
    if let Some(redirect) = domain_redirect {
        if request.host.map(host_only).is_some_and(|host| redirect.applies_to(host)) {
            let scheme = if request.https { "https" } else { "http" };
            let location = location(scheme, redirect.to(), request.path, request.query);
            let status = StatusCode::MOVED_PERMANENTLY;
            return Err(ProxyError::Redirect { location, status, kind: RedirectKind::Domain });
        }
    }
    if let Some(status) = *https_redirect {
        if !request.https {
            return Err(https_redirect_to(request.host, request.path, request.query, status));
        }
    }
    if let Some((when, status)) = *proto_redirect {
        let proto = request.forwarded_proto.map(<[u8]>::trim_ascii);
        let redirect = !request.https
            && match when {
                ProtoRedirect::WhenHttp => proto.is_some_and(|p| p.eq_ignore_ascii_case(b"http")),
                ProtoRedirect::UnlessHttps => {
                    !proto.is_some_and(|p| p.eq_ignore_ascii_case(b"https"))
                }
            };
        if redirect {
            return Err(https_redirect_to(request.host, request.path, request.query, status));
        }
    }
    // The users were resolved at reconfigure time (the service's own, its secret's, or the
    // global ones, unless `ignoreAuthorization`): only borrowed here.
    if auth.required() {
        let authorization = request.authorization.and_then(|a| HeaderValue::from_bytes(a).ok());
        if !policy.authorizes(authorization.as_ref()) {
            return Err(ProxyError::Unauthorized { realm: realm(service) });
        }
    }
    let mut rewritten: Option<String> = None;
    for rewrite in path_rewrite.iter().chain(search_replace) {
        if let Some(path) = rewrite.apply(rewritten.as_deref().unwrap_or(request.path)) {
            rewritten = Some(path);
        }
    }
    if rewritten.as_deref().is_some_and(|path| {
        !path.starts_with('/')
            || !path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    }) {
        return Err(ProxyError::RewriteFailed);
    }
    let sticky = sticky.as_ref().map(|s: &StickySession| Sticky {
        cookie: s.cookie(),
        pinned: (request.cookie.0)(s.cookie()),
    });
    Ok(Admitted {
        rewritten,
        request_edits: request_headers,
        response_edits: response_headers,
        strip_authorization: auth.required(),
        server_timeout: server_timeout.unwrap_or(defaults.0),
        tunnel_timeout: tunnel_timeout.unwrap_or(defaults.1),
        sticky,
        compression: accepted_compression(compression.as_ref(), request.accept_encoding),
        send_proxy: *send_proxy,
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

/// Where an ACME CA asks for an HTTP-01 challenge's answer (RFC 8555 §8.3).
pub(crate) const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// What [`route`] refuses with: the answer, and the service when the request was routed.
pub(crate) type Unrouted<'b> = (ProxyError, Option<&'b Arc<Backend>>);

/// Normalises the target's path ([`path::normalize`]), looks the host and path up in the live
/// table (the guard is dropped before this returns; `slot` keeps the backend alive for as long
/// as the answer borrows it, and may be kept from one request to the next: a backend it
/// holds already is not cloned again), and lets the service's policy [`admit`] the request.
/// No route: 404; the policy's own answer (redirect, 401); no instance: 503. While an ACME
/// challenge is being answered, its path gets the answer (200) before any route is looked up.
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
        if table.has_acme_challenges() {
            if let Some(answer) =
                path.strip_prefix(ACME_CHALLENGE_PATH).and_then(|token| table.acme_challenge(token))
            {
                return Err((ProxyError::AcmeChallenge(answer.clone()), None));
            }
        }
        let Some(found) = table.lookup_request(host, &path, request.fields.0) else {
            return Err((ProxyError::NoRoute, None));
        };
        // The backend the slot already keeps (the connection's last request went to the
        // same service in the same table): kept, so that a keep-alive connection's requests
        // write nothing to the count every thread's requests to the service share.
        if !slot.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, found.backend)) {
            *slot = None;
        }
        slot.get_or_insert_with(|| found.backend.clone())
    };
    let admission = Admission {
        https: request.https,
        client_cert: request.client_cert,
        method: request.method,
        client: request.client,
        host,
        path: &path,
        query: target.query,
        authorization: request.authorization,
        forwarded_proto: request.forwarded_proto,
        cookie: request.cookie,
        accept_encoding: request.accept_encoding,
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
    /// The request's fields, for routes with `serviceHeader` or `userAgent` (read only when
    /// the lookup meets such a route).
    pub(crate) fields: Fields<'a>,
    /// Came over TLS, or (trusted) says it came over HTTPS.
    pub(crate) https: bool,
    /// Came over TLS with a client certificate verified against `--client-ca`.
    pub(crate) client_cert: bool,
    pub(crate) method: &'a str,
    pub(crate) client: ClientIp<'a>,
    pub(crate) authorization: Option<&'a [u8]>,
    /// The request's `X-Forwarded-Proto`, trusted or not.
    pub(crate) forwarded_proto: Option<&'a [u8]>,
    pub(crate) cookie: CookieToken<'a>,
    /// See [`Admission::accept_encoding`].
    pub(crate) accept_encoding: Option<&'a [u8]>,
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
    let host = host.map_or("", host_only);
    let location = location("https", host, path, query);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    ProxyError::Redirect { location, status, kind: RedirectKind::Https }
}

/// A `Host` value without its port (an IPv6 literal keeps its brackets).
fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        host.split_once(']').map_or(host, |(v6, _)| &host[..=v6.len()])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    }
}

fn location(scheme: &str, host: &str, path: &str, query: Option<&str>) -> HeaderValue {
    let location = match query {
        Some(query) => format!("{scheme}://{host}{path}?{query}"),
        None => format!("{scheme}://{host}{path}"),
    };
    HeaderValue::try_from(location).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

fn realm(service: &str) -> HeaderValue {
    let safe: String =
        service.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    HeaderValue::try_from(format!("Basic realm=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

/// Whether `edits` deletes or replaces the field `name` (then the original is not sent).
pub(crate) fn edited(edits: &HeaderEdits, name: &str) -> bool {
    edits.delete.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
        || edits.set.iter().any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
}
