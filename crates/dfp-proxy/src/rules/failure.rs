//! Whose fault a failed attempt is, whether to try again, and the exchange's record.

use super::*;

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
    /// No instance had room under the service's `instanceMaxConn`, nor got one during the
    /// wait in the queue: 503, nothing sent.
    Full,
}

impl Failure {
    /// Whether this failure counts against the instance (error counter and ejection).
    pub(crate) fn blames_instance(&self) -> bool {
        match self {
            Failure::Unreachable(_) | Failure::BadResponse(_) => true,
            Failure::Timeout | Failure::Client(_) | Failure::Broken(_) | Failure::Full => false,
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
            Failure::Full => ProxyError::InstancesFull,
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
            Failure::Full => f.write_str("every instance is at the service's instanceMaxConn"),
        }
    }
}

/// Whether a request may be sent to another instance after an attempt failed before any
/// answer: only an idempotent method (RFC 9110 §9.2.2) without a body, and never an upgrade.
#[inline]
pub(crate) fn replayable(method: &str, has_body: bool, upgrade: bool) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
        && !has_body
        && !upgrade
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

/// Counts an answer the proxy made itself (no instance made it) by why it made it. Called
/// where each engine makes the answer, so every such answer is counted once.
pub(crate) fn count_own_answer(err: &ProxyError) {
    crate::metrics::OwnAnswer::of(err).count();
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
