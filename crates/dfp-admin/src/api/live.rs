//! What the dashboard reads: `config` with live figures (`stats=true`), filtered and paged
//! (`filter`, `offset`, `limit`), and the page itself. The figures are the same counters
//! `/metrics` reports and the services the same views `config` renders, so the dashboard has
//! no model of its own to drift from them.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use dfp_routing::{BackendStats, ServiceRoutes, LATENCY_BUCKETS_MS};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::controller::Controller;

/// The page: HTML, CSS and script in one file, compiled into the binary (no build step, no
/// library, nothing fetched from elsewhere).
const PAGE: &str = include_str!("dashboard.html");

/// Services a page shows when `limit` is not given with `offset` or `filter`.
const DEFAULT_LIMIT: usize = 50;
/// The most services one answer pages out, whatever `limit` asks.
const MAX_LIMIT: usize = 500;

/// When the admin API was first served: the proxy's uptime.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Notes the start (the first call wins).
pub(super) fn mark_started() {
    let _ = STARTED.get_or_init(Instant::now);
}

/// What a `config` call asks for beyond the table.
#[derive(Debug, Default)]
pub(super) struct ConfigQuery {
    /// Live figures: each service's counters and instances' health, and the proxy's header.
    pub(super) stats: bool,
    /// Lowercase text a service's name, a path or a domain must contain.
    filter: Option<String>,
    pub(super) offset: usize,
    pub(super) limit: usize,
    paged: bool,
}

impl ConfigQuery {
    /// Reads `stats`, `filter`, `offset` and `limit` from a query string's pairs; anything
    /// else is left to the caller (`type=json`). A bad number is the caller's mistake.
    pub(super) fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, crate::AdminError> {
        let mut query = ConfigQuery { limit: DEFAULT_LIMIT, ..ConfigQuery::default() };
        let number = |name: &'static str, value: &str| {
            value.parse::<usize>().map_err(|_| crate::AdminError::InvalidParameter {
                name,
                value: value.to_owned(),
                reason: "give a whole number, e.g. offset=0&limit=50".to_owned(),
            })
        };
        for (key, value) in pairs {
            match *key {
                "stats" => query.stats = value.eq_ignore_ascii_case("true") || *value == "1",
                "filter" => {
                    let text = value.trim().to_ascii_lowercase();
                    query.paged = true;
                    query.filter = (!text.is_empty()).then_some(text);
                }
                "offset" => {
                    query.offset = number("offset", value)?;
                    query.paged = true;
                }
                "limit" => {
                    query.limit = number("limit", value)?.clamp(1, MAX_LIMIT);
                    query.paged = true;
                }
                _ => {}
            }
        }
        Ok(query)
    }

    /// Whether the answer is a page (with `Total`) rather than every service.
    pub(super) fn pages(&self) -> bool {
        self.paged
    }

    /// Whether a service (its first destination) is one the filter asks for.
    pub(super) fn matches(&self, s: &ServiceRoutes<'_>) -> bool {
        let Some(text) = &self.filter else { return true };
        let has = |value: &str| value.to_ascii_lowercase().contains(text.as_str());
        has(s.backend.service())
            || s.prefixes.iter().any(|p| has(p.as_str()))
            || s.patterns.iter().any(|p| has(p.as_str()))
            || s.domains.iter().any(|d| has(&d.to_string()))
    }
}

/// A service's counters since it was first routed (a rate is the difference between two
/// reads: the dashboard reads every 2 s).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StatsView {
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [u64; 5],
    upstream_errors: u64,
    retries: u64,
    ejections: u64,
    /// Answers by time to the response head: the counts of the buckets whose upper bounds
    /// are `ProxyView::LatencyBucketsMs`, and one more above the last.
    latency_buckets: Vec<u64>,
    /// TCP services: connections open now and accepted so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted_connections: Option<u64>,
}

impl StatsView {
    pub(super) fn of(stats: &BackendStats) -> Self {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let accepted = read(&stats.tcp_accepted);
        StatsView {
            responses: stats.responses(),
            upstream_errors: read(&stats.upstream_errors),
            retries: read(&stats.retries),
            ejections: read(&stats.ejections),
            latency_buckets: stats.latency_buckets().to_vec(),
            open_connections: (accepted > 0).then(|| read(&stats.tcp_open)),
            accepted_connections: (accepted > 0).then_some(accepted),
        }
    }
}

/// The proxy itself, for the dashboard's header.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProxyView {
    version: &'static str,
    uptime_seconds: u64,
    /// Milliseconds since the start, when this answer was made: rates are counts over the
    /// difference between two answers' clocks (the browser's own clock is not the proxy's).
    clock_ms: u64,
    /// The instance name its routes are stored under: replicas with the same name share them.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_name: Option<String>,
    /// What it listens on: `Name` (`proxy`, `https`, `admin`) and `Address`.
    listeners: Vec<ListenerView>,
    /// The last table published: when (seconds ago) and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_change: Option<LastChangeView>,
    latency_buckets_ms: &'static [u64],
    /// With Consul: the replicas sharing the instance name, oldest first, as they marked
    /// themselves in the store (this one has `This`).
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<Vec<ReplicaView>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReplicaView {
    host: String,
    pid: u32,
    admin: String,
    version: String,
    uptime_seconds: i64,
    this: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListenerView {
    name: &'static str,
    address: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LastChangeView {
    table_version: u64,
    seconds_ago: u64,
    cause: String,
}

impl ProxyView {
    pub(super) fn now(controller: &Controller) -> Self {
        ProxyView {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: STARTED.get().map_or(0, |s| s.elapsed().as_secs()),
            clock_ms: STARTED
                .get()
                .map_or(0, |s| u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX)),
            instance_name: controller.identity().map(|i| i.instance_name.clone()),
            listeners: controller
                .identity()
                .map(|i| {
                    i.listeners
                        .iter()
                        .map(|(name, addr)| ListenerView { name, address: addr.to_string() })
                        .collect()
                })
                .unwrap_or_default(),
            last_change: controller.last_change().map(|change| LastChangeView {
                table_version: change.table_version,
                seconds_ago: change.at.elapsed().as_secs(),
                cause: change.cause,
            }),
            latency_buckets_ms: &LATENCY_BUCKETS_MS,
            replicas: controller.replicas().map(|replicas| {
                let now = crate::unix_now();
                replicas
                    .list
                    .iter()
                    .map(|r| ReplicaView {
                        host: r.host.clone(),
                        pid: r.pid,
                        admin: r.admin.clone(),
                        version: r.version.clone(),
                        uptime_seconds: (now - r.started).max(0),
                        this: replicas.this.as_ref() == Some(r),
                    })
                    .collect()
            }),
        }
    }
}

/// `GET /dashboard`: the page. It reads `config?stats=true` and `certs` from this listener
/// with the browser's own credentials (basic auth, when the admin API has it), so it needs
/// what every other admin call needs.
pub(super) fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Its own script and style only, and calls to this listener only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}
