//! Why a request could not be forwarded, classified by who is at fault, and the one place that
//! turns each case into the status a client sees.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::forward::ProxyBody;

/// A request the proxy answers itself instead of forwarding.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The client's fault: the request cannot be routed as sent.
    BadRequest(&'static str),
    /// The request head (or one of its field lines) is larger than the proxy reads.
    HeadTooLarge,
    /// The request is well formed but asks for something the proxy cannot forward faithfully
    /// (a transfer coding other than chunked).
    NotImplemented(&'static str),
    /// `Expect` with something other than `100-continue`.
    ExpectationFailed,
    /// No service owns the path.
    NoRoute,
    /// A service owns the path but has no live instance right now.
    NoInstance,
    /// Every instance of the service has its `instanceMaxConn` exchanges in flight, and still
    /// had after the wait in the queue (`--queue-timeout`, by default the connect timeout).
    InstancesFull,
    /// The instance refused the connection, reset it, or broke off before answering.
    UpstreamUnreachable,
    /// The instance did not answer within the server timeout.
    UpstreamTimeout,
    /// The service is HTTPS-only and the request came over plain HTTP: not a failure, the
    /// proxy's own answer.
    Redirect { location: HeaderValue, status: StatusCode, kind: RedirectKind },
    /// The service wants basic auth and the request's credentials are missing or wrong.
    Unauthorized { realm: HeaderValue },
    /// The service's path rewrite produced something that is not a path: its configuration's
    /// fault, not the client's.
    RewriteFailed,
    /// The service's access rules refuse the request (403).
    Forbidden(Forbidden),
    /// `/.well-known/acme-challenge/<token>` while this proxy (or a replica sharing its
    /// store) obtains a certificate: 200 with the token's key authorization, whatever the
    /// host's routes say.
    AcmeChallenge(std::sync::Arc<str>),
}

/// Why the proxy redirected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirectKind {
    /// To HTTPS: `httpsOnly`, `redirectWhenHttpProto`, `redirectUnlessHttpsProto`.
    Https,
    /// To the service's domain: `redirectFromDomain`.
    Domain,
}

/// Which of a service's access rules refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forbidden {
    /// The client's address is not in `allowedSources`, or is in `deniedSources`.
    Source,
    /// `denyHttp`: the request came over plain HTTP.
    Http,
    /// The method is not in `allowedMethods`, or is in `deniedMethods`.
    Method,
    /// `verifyClientSsl`: no client certificate verified against `--client-ca`.
    ClientCert,
}

impl ProxyError {
    pub(crate) fn status_and_text(&self) -> (StatusCode, &str) {
        match self {
            ProxyError::AcmeChallenge(key_authorization) => (StatusCode::OK, key_authorization),
            ProxyError::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            ProxyError::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is larger than 64 KiB or has more than 100 fields\n",
            ),
            ProxyError::NotImplemented(why) => (StatusCode::NOT_IMPLEMENTED, why),
            ProxyError::ExpectationFailed => {
                (StatusCode::EXPECTATION_FAILED, "only Expect: 100-continue is supported\n")
            }
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no service is routed for this path\n"),
            ProxyError::NoInstance => {
                (StatusCode::SERVICE_UNAVAILABLE, "the service has no live instance right now\n")
            }
            ProxyError::InstancesFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "every instance of the service was serving as many requests as its \
                 instanceMaxConn allows for as long as the request could wait; try again \
                 shortly\n",
            ),
            ProxyError::UpstreamUnreachable => {
                (StatusCode::BAD_GATEWAY, "the service instance could not be reached\n")
            }
            ProxyError::UpstreamTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, "the service instance did not answer in time\n")
            }
            ProxyError::Redirect { status, kind: RedirectKind::Https, .. } => {
                (*status, "this service is served over HTTPS\n")
            }
            ProxyError::Redirect { status, kind: RedirectKind::Domain, .. } => {
                (*status, "this service moved to another domain\n")
            }
            ProxyError::Unauthorized { .. } => {
                (StatusCode::UNAUTHORIZED, "this service needs a user name and password\n")
            }
            ProxyError::RewriteFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the service's path rewrite (reqPathSearch/reqPathReplace) gave an invalid path\n",
            ),
            ProxyError::Forbidden(Forbidden::Source) => {
                (StatusCode::FORBIDDEN, "this service does not accept requests from your address\n")
            }
            ProxyError::Forbidden(Forbidden::Http) => {
                (StatusCode::FORBIDDEN, "this service is served over HTTPS only\n")
            }
            ProxyError::Forbidden(Forbidden::Method) => {
                (StatusCode::FORBIDDEN, "this service does not accept this method\n")
            }
            ProxyError::Forbidden(Forbidden::ClientCert) => (
                StatusCode::FORBIDDEN,
                "this service needs a client certificate: connect over HTTPS with a certificate \
                 issued by the proxy's client CA\n",
            ),
        }
    }

    /// Whether the connection closes after this answer: after a request the proxy could not
    /// make sense of, the framing of what follows is suspect.
    pub(crate) fn closes_connection(&self) -> bool {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge
            | ProxyError::NotImplemented(_)
            | ProxyError::ExpectationFailed => true,
            ProxyError::NoRoute
            | ProxyError::NoInstance
            | ProxyError::InstancesFull
            | ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamTimeout
            | ProxyError::Redirect { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::RewriteFailed
            | ProxyError::Forbidden(_)
            | ProxyError::AcmeChallenge(_) => false,
        }
    }

    /// Fields the answer carries besides its text.
    pub(crate) fn extra_fields(&self) -> Option<(&'static str, &HeaderValue)> {
        match self {
            ProxyError::Redirect { location, .. } => Some(("location", location)),
            ProxyError::Unauthorized { realm } => Some(("www-authenticate", realm)),
            ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge
            | ProxyError::NotImplemented(_)
            | ProxyError::ExpectationFailed
            | ProxyError::NoRoute
            | ProxyError::NoInstance
            | ProxyError::InstancesFull
            | ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamTimeout
            | ProxyError::RewriteFailed
            | ProxyError::Forbidden(_)
            | ProxyError::AcmeChallenge(_) => None,
        }
    }

    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        crate::rules::count_own_answer(&self);
        let (status, text) = self.status_and_text();
        let mut response =
            Response::new(Either::Right(Full::new(Bytes::copy_from_slice(text.as_bytes()))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let Some((name, value)) = self.extra_fields() {
            headers.insert(name, value.clone());
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
