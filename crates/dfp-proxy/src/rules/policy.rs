//! A service's policy and the route: what lets a request through, and what it asks of it.

use std::net::IpAddr;

use super::*;
use crate::error::Forbidden;

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
    pub(crate) compression: Option<&'p dfp_routing::Compression>,
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
/// 5. `httpsOnly`: the redirect to HTTPS;
/// 6. basic authentication: 401;
/// 7. path rewrite.
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
        path_rewrite,
        users,
        request_headers,
        response_headers,
        server_timeout,
        tunnel_timeout,
        compression,
    } = policy;
    if !allowed_sources.is_empty() || !denied_sources.is_empty() {
        let client = (request.client.0)();
        let allowed = allowed_sources.is_empty() || allowed_sources.contains(client);
        if !allowed || denied_sources.contains(client) {
            return Err(ProxyError::Forbidden(Forbidden::Source));
        }
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
        compression: accepted_compression(compression.as_ref(), request.accept_encoding),
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
        client_cert: request.client_cert,
        method: request.method,
        client: request.client,
        host,
        path: &path,
        query: target.query,
        authorization: request.authorization,
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
    /// Came over TLS, or (trusted) says it came over HTTPS.
    pub(crate) https: bool,
    /// Came over TLS with a client certificate verified against `--client-ca`.
    pub(crate) client_cert: bool,
    pub(crate) method: &'a str,
    pub(crate) client: ClientIp<'a>,
    pub(crate) authorization: Option<&'a [u8]>,
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
pub(crate) fn edited(edits: &HeaderEdits, name: &str) -> bool {
    edits.delete.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
        || edits.set.iter().any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
}
