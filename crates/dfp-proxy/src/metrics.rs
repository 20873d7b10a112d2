//! The proxy's own answers (the ones no instance made), counted by why the proxy made them.
//!
//! Per-service counters live in each service's `BackendStats`; an answer made before any
//! service was chosen (no route, a malformed request, a head that never came) has no service
//! to be counted under, and a user still wants to see a flood of 404s or 400s. So every answer
//! the proxy makes itself is counted here too, once, by `(status, reason)`, whichever engine
//! wrote it (`rules::count_own_answer` is called where the answer is made).
//!
//! Why a process-wide table of atomics rather than a value handed to every connection: the
//! counters belong to the process like its listeners do, every data-plane thread and both
//! engines write them, and handing a handle down every call path for one relaxed increment
//! buys nothing. Each counter sits on its own cache line, so threads counting different
//! reasons never share one; the hot path does one relaxed `fetch_add` and never allocates or
//! locks. Every series exists from start (at 0), as Prometheus recommends.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Forbidden, ProxyError, RedirectKind};

/// Why the proxy answered a request itself: the `reason` label of
/// `dfp_proxy_responses_total`, with the status it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnAnswer {
    /// 400: a malformed request, a bad `Host`, a bad framing, a path above `/`, a broken body.
    BadRequest,
    /// 408: the request head did not come within the header timeout.
    HeaderTimeout,
    /// 431: the request head is too large.
    HeadTooLarge,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 501: a transfer coding the proxy does not pass on.
    NotImplemented,
    /// 404: no service owns the path.
    NoRoute,
    /// 503: the service has no live instance.
    NoInstance,
    /// 502: no instance could be reached (after retries).
    UpstreamUnreachable,
    /// 504: the instance did not answer within the server timeout.
    UpstreamTimeout,
    /// 401: the service's basic auth refused the request.
    AuthRequired,
    /// 301/302/303/307/308: an `httpsOnly`, `redirectWhenHttpProto` or
    /// `redirectUnlessHttpsProto` service's redirect to HTTPS.
    HttpsRedirect(u16),
    /// 500: the service's path rewrite gave an invalid path.
    RewriteFailed,
    /// 403: the client's address is not allowed (`allowedSources`/`deniedSources`).
    ForbiddenSource,
    /// 403: plain HTTP to a `denyHttp` service.
    HttpDenied,
    /// 403: the method is not allowed (`allowedMethods`/`deniedMethods`).
    ForbiddenMethod,
    /// 301: `redirectFromDomain`'s redirect to the service's domain.
    DomainRedirect,
    /// 403: no verified client certificate for a `verifyClientSsl` service.
    ClientCertRequired,
    /// 200: an ACME HTTP-01 challenge answered (the CA checking a name this proxy certifies).
    AcmeChallenge,
    /// 503: every instance of the service is at its `instanceMaxConn`.
    InstancesFull,
}

/// Every `(status, reason)` series, in the order they are reported.
const SERIES: [(u16, &str); 23] = [
    (400, "bad_request"),
    (408, "header_timeout"),
    (431, "head_too_large"),
    (417, "expectation_failed"),
    (501, "not_implemented"),
    (404, "no_route"),
    (503, "no_instance"),
    (502, "upstream_unreachable"),
    (504, "upstream_timeout"),
    (401, "auth_required"),
    (301, "https_redirect"),
    (302, "https_redirect"),
    (303, "https_redirect"),
    (307, "https_redirect"),
    (308, "https_redirect"),
    (500, "rewrite_failed"),
    (403, "forbidden_source"),
    (403, "http_denied"),
    (403, "forbidden_method"),
    (301, "domain_redirect"),
    (403, "client_cert_required"),
    (200, "acme_challenge"),
    (503, "instances_full"),
];

/// One counter on its own cache line.
#[repr(align(64))]
struct Slot(AtomicU64);

static COUNTS: [Slot; SERIES.len()] = [const { Slot(AtomicU64::new(0)) }; SERIES.len()];

impl OwnAnswer {
    /// The answer a [`ProxyError`] is, by cause (exhaustive: a new cause must pick one).
    pub(crate) fn of(err: &ProxyError) -> OwnAnswer {
        match err {
            ProxyError::BadRequest(_) => OwnAnswer::BadRequest,
            ProxyError::HeadTooLarge => OwnAnswer::HeadTooLarge,
            ProxyError::NotImplemented(_) => OwnAnswer::NotImplemented,
            ProxyError::ExpectationFailed => OwnAnswer::ExpectationFailed,
            ProxyError::NoRoute => OwnAnswer::NoRoute,
            ProxyError::NoInstance => OwnAnswer::NoInstance,
            ProxyError::UpstreamUnreachable => OwnAnswer::UpstreamUnreachable,
            ProxyError::UpstreamTimeout => OwnAnswer::UpstreamTimeout,
            ProxyError::Redirect { status, kind: RedirectKind::Https, .. } => {
                OwnAnswer::HttpsRedirect(status.as_u16())
            }
            ProxyError::Redirect { kind: RedirectKind::Domain, .. } => OwnAnswer::DomainRedirect,
            ProxyError::Unauthorized { .. } => OwnAnswer::AuthRequired,
            ProxyError::RewriteFailed => OwnAnswer::RewriteFailed,
            ProxyError::Forbidden(Forbidden::Source) => OwnAnswer::ForbiddenSource,
            ProxyError::Forbidden(Forbidden::Http) => OwnAnswer::HttpDenied,
            ProxyError::Forbidden(Forbidden::Method) => OwnAnswer::ForbiddenMethod,
            ProxyError::Forbidden(Forbidden::ClientCert) => OwnAnswer::ClientCertRequired,
            ProxyError::AcmeChallenge(_) => OwnAnswer::AcmeChallenge,
            ProxyError::InstancesFull => OwnAnswer::InstancesFull,
        }
    }

    /// Its index in [`SERIES`].
    fn slot(self) -> usize {
        match self {
            OwnAnswer::BadRequest => 0,
            OwnAnswer::HeaderTimeout => 1,
            OwnAnswer::HeadTooLarge => 2,
            OwnAnswer::ExpectationFailed => 3,
            OwnAnswer::NotImplemented => 4,
            OwnAnswer::NoRoute => 5,
            OwnAnswer::NoInstance => 6,
            OwnAnswer::UpstreamUnreachable => 7,
            OwnAnswer::UpstreamTimeout => 8,
            OwnAnswer::AuthRequired => 9,
            OwnAnswer::HttpsRedirect(301) => 10,
            // 302 is the redirect's default; policy validation allows no other code.
            OwnAnswer::HttpsRedirect(303) => 12,
            OwnAnswer::HttpsRedirect(307) => 13,
            OwnAnswer::HttpsRedirect(308) => 14,
            OwnAnswer::HttpsRedirect(_) => 11,
            OwnAnswer::RewriteFailed => 15,
            OwnAnswer::ForbiddenSource => 16,
            OwnAnswer::HttpDenied => 17,
            OwnAnswer::ForbiddenMethod => 18,
            OwnAnswer::DomainRedirect => 19,
            OwnAnswer::ClientCertRequired => 20,
            OwnAnswer::AcmeChallenge => 21,
            OwnAnswer::InstancesFull => 22,
        }
    }

    /// Counts one such answer: one relaxed increment.
    pub(crate) fn count(self) {
        COUNTS[self.slot()].0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The proxy's own answers so far: `(status, reason, count)` for every series, zeros
/// included, for `/metrics` (`dfp_proxy_responses_total{status,reason}`).
pub fn own_answers() -> impl ExactSizeIterator<Item = (u16, &'static str, u64)> {
    SERIES
        .iter()
        .zip(&COUNTS)
        .map(|(&(status, reason), slot)| (status, reason, slot.0.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_a_series_with_its_status() {
        let answers = [
            OwnAnswer::BadRequest,
            OwnAnswer::HeaderTimeout,
            OwnAnswer::HeadTooLarge,
            OwnAnswer::ExpectationFailed,
            OwnAnswer::NotImplemented,
            OwnAnswer::NoRoute,
            OwnAnswer::NoInstance,
            OwnAnswer::UpstreamUnreachable,
            OwnAnswer::UpstreamTimeout,
            OwnAnswer::AuthRequired,
            OwnAnswer::HttpsRedirect(301),
            OwnAnswer::HttpsRedirect(302),
            OwnAnswer::HttpsRedirect(303),
            OwnAnswer::HttpsRedirect(307),
            OwnAnswer::HttpsRedirect(308),
            OwnAnswer::RewriteFailed,
            OwnAnswer::ForbiddenSource,
            OwnAnswer::HttpDenied,
            OwnAnswer::ForbiddenMethod,
            OwnAnswer::DomainRedirect,
            OwnAnswer::ClientCertRequired,
            OwnAnswer::AcmeChallenge,
            OwnAnswer::InstancesFull,
        ];
        let mut slots: Vec<usize> = answers.iter().map(|a| a.slot()).collect();
        for (answer, slot) in answers.iter().zip(&slots) {
            if let OwnAnswer::HttpsRedirect(code) = answer {
                assert_eq!(SERIES[*slot], (*code, "https_redirect"));
            }
        }
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), SERIES.len(), "one series per answer, none unused");
        // The status each series reports is the one the proxy sends.
        for (err, status) in [
            (ProxyError::NoRoute, 404),
            (ProxyError::NoInstance, 503),
            (ProxyError::UpstreamUnreachable, 502),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::HeadTooLarge, 431),
            (ProxyError::ExpectationFailed, 417),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::NotImplemented("x"), 501),
            (ProxyError::RewriteFailed, 500),
            (ProxyError::Forbidden(Forbidden::Source), 403),
            (ProxyError::Forbidden(Forbidden::Http), 403),
            (ProxyError::Forbidden(Forbidden::Method), 403),
            (ProxyError::Forbidden(Forbidden::ClientCert), 403),
            (ProxyError::AcmeChallenge("token.key".into()), 200),
            (ProxyError::InstancesFull, 503),
        ] {
            assert_eq!(SERIES[OwnAnswer::of(&err).slot()].0, status, "{err:?}");
            assert_eq!(err.status_and_text().0.as_u16(), status, "{err:?}");
        }
    }
}
