//! The HTTP client: one or more agents, tried in order, every call bounded in time.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use url::Url;

use crate::model::{CatalogEntry, CheckState, HealthEntry, RawCheck, RawKvEntry};
use crate::Instance;

mod catalog;
mod session;

pub use catalog::Registration;
pub use session::SessionEnd;

/// What went wrong talking to Consul. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("no Consul address given; set --consul-address or CONSUL_ADDRESS, e.g. http://127.0.0.1:8500")]
    NoAddress,
    #[error(
        "invalid Consul address {address:?}: {reason}; give a URL such as http://127.0.0.1:8500"
    )]
    InvalidAddress { address: String, reason: String },
    #[error(
        "Consul is unreachable (tried {tried}): {last}; check that the Consul agent runs and that \
         CONSUL_ADDRESS points at it"
    )]
    Unreachable { tried: String, last: String },
    #[error("Consul refused {url} with {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    /// Consul's ACLs refused the call (403: `Permission denied`, or `ACL not found` for a
    /// token Consul does not know). `needs` says what the token must be allowed.
    #[error("Consul refused {call} ({answer}): {needs}")]
    PermissionDenied { call: String, answer: String, needs: String },
    #[error(
        "the Consul token is not usable: {0}; give the token's SecretID (CONSUL_HTTP_TOKEN, or \
         CONSUL_HTTP_TOKEN_FILE for a file holding it)"
    )]
    InvalidToken(&'static str),
    #[error("Consul's answer to {url} could not be read: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the HTTP client for Consul could not be set up: {0}")]
    Setup(#[source] reqwest::Error),
}

/// An ACL token sent to Consul as `X-Consul-Token` on every call (never in a URL). Its
/// `Debug` never shows it, and no error message carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulToken(String);

impl ConsulToken {
    /// A token as Consul's CLI reads one (`CONSUL_HTTP_TOKEN`, or the content of
    /// `CONSUL_HTTP_TOKEN_FILE`): surrounding whitespace is dropped; what is left must be a
    /// non-empty header value.
    pub fn new(token: &str) -> Result<ConsulToken, ConsulError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ConsulError::InvalidToken("it is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConsulError::InvalidToken(
                "it holds a space, a control or a non-ASCII character",
            ));
        }
        Ok(ConsulToken(token.to_owned()))
    }
}

impl fmt::Debug for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsulToken(<redacted>)")
    }
}

/// What Consul knows of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceLookup {
    /// The catalog knows the service; these are its instances whose checks all pass (possibly
    /// none right now).
    Known(Vec<Instance>),
    /// The catalog has never heard of the service: most likely a typo.
    Unknown,
}

/// A client for one or more Consul agents (the comma-separated `CONSUL_ADDRESS`).
///
/// Every call tries the agent that answered last, then the others in the order given, and
/// gives up with [`ConsulError::Unreachable`] when none answers within the timeout.
pub struct ConsulClient {
    http: reqwest::Client,
    agents: Vec<Url>,
    preferred: AtomicUsize,
    /// `X-Consul-Token`, marked sensitive (kept out of reqwest's and hyper's debug output).
    token: Option<reqwest::header::HeaderValue>,
    /// HTTP requests sent to agents so far (each agent tried counts), for `/metrics`.
    requests: AtomicU64,
}

/// Idle connections kept open to each agent for the next calls.
const IDLE_CONNECTIONS_KEPT: usize = 16;

impl ConsulClient {
    /// A client for `addresses` (one URL or a comma-separated list; `host:port` means
    /// `http://host:port`), each call to one agent bounded by `timeout`.
    pub fn new(addresses: &str, timeout: Duration) -> Result<Self, ConsulError> {
        let agents = parse_addresses(addresses)?;
        // reqwest is built without a default TLS provider so that the whole binary uses one;
        // installing it twice is harmless (the second call reports the first is in place).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A restore looks services up 32 at a time; each connection it leaves idle holds
            // ~40 kB of buffers (massif), so 32 of them kept an idle proxy 1.2 MB larger for
            // the 30 s above. Keeping 8 made a burst of 16 calls (Docker Flow Swarm
            // Listener's start, benches/reconfigure-rate.sh) open connections again: ~1 ms
            // more per call. 16 serve such a burst and keep half of that memory.
            .pool_max_idle_per_host(IDLE_CONNECTIONS_KEPT)
            .no_proxy()
            .build()
            .map_err(ConsulError::Setup)?;
        Ok(ConsulClient {
            http,
            agents,
            preferred: AtomicUsize::new(0),
            token: None,
            requests: AtomicU64::new(0),
        })
    }

    /// Sends `token` as `X-Consul-Token` on every call from now on (Consul's ACLs).
    pub fn with_token(mut self, token: ConsulToken) -> Result<Self, ConsulError> {
        let mut value = reqwest::header::HeaderValue::from_str(&token.0)
            .map_err(|_| ConsulError::InvalidToken("it is not a valid header value"))?;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// HTTP requests sent to Consul agents so far (blocking queries count once each; every
    /// agent tried counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether a token is sent (for messages; never the token itself).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks the token against Consul's ACLs (`GET /v1/acl/token/self`, which any token may
    /// read about itself). `Ok` when ACLs are off or the token is one Consul knows;
    /// [`ConsulError::PermissionDenied`] when ACLs are on and no token, or an unknown one,
    /// was given. Consul 1.8 does not refuse reads for a token without `service:read`: it
    /// hides what the token may not read, so without this check a proxy with no token sees
    /// an empty catalog and says nothing.
    pub async fn check_token(&self) -> Result<(), ConsulError> {
        let segments = ["v1", "acl", "token", "self"];
        let mut call = Call::get(&segments);
        call.needs = Needs::Fixed(
            "service:read and node:read on the routed services, and key:write on the \
             instance name's prefix",
        );
        match self.call(call).await {
            Ok(_) => Ok(()),
            Err(denied @ ConsulError::PermissionDenied { .. }) => Err(denied),
            // 401 "ACL support disabled": nothing to check.
            Err(ConsulError::Refused { status: 401, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The agents this client talks to, in order.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(Url::as_str)
    }

    /// Looks a service up: its passing instances, or whether the catalog knows it at all.
    /// The index is the health query's, to start a [`ConsulClient::watch_passing_instances`].
    pub async fn lookup_service(
        &self,
        service: &str,
    ) -> Result<Indexed<ServiceLookup>, ConsulError> {
        let passing = self.watch_passing_instances(service, 0, Duration::ZERO).await?;
        if !passing.value.is_empty() {
            return Ok(Indexed {
                value: ServiceLookup::Known(passing.value),
                index: passing.index,
            });
        }
        let segments = ["v1", "catalog", "service", service];
        let mut call = Call::get(&segments);
        call.needs = Needs::Service(service);
        let answer = self.call(call).await?;
        let catalog: Vec<CatalogEntry> = answer.json()?;
        let value = if catalog.is_empty() {
            // With ACLs on, a service the token may not read looks unknown: a token Consul
            // does not know (or none) is told apart here; a known token lacking
            // `service:read` is not (Consul 1.8 says nothing), the caller's hint mentions it.
            if let Err(ConsulError::PermissionDenied { answer, needs, .. }) =
                self.check_token().await
            {
                return Err(ConsulError::PermissionDenied {
                    call: format!("GET /v1/catalog/service/{service}"),
                    answer: format!("it lists nothing, and /v1/acl/token/self says {answer}"),
                    needs,
                });
            }
            ServiceLookup::Unknown
        } else {
            ServiceLookup::Known(Vec::new())
        };
        Ok(Indexed { value, index: passing.index })
    }

    /// The instances of `service` whose checks all pass (`/v1/health/service/<name>?passing`).
    ///
    /// With `index` > 0 this is a blocking query: Consul answers when the result changes past
    /// `index`, or after about `wait`. With `index` 0 it answers at once.
    pub async fn watch_passing_instances(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<Instance>>, ConsulError> {
        let segments = ["v1", "health", "service", service];
        let mut call = Call::get(&segments);
        call.needs = Needs::Service(service);
        call.query.push(("passing", "true".to_owned()));
        call.block(index, wait);
        let answer = self.call(call).await?;
        let entries: Vec<HealthEntry> = answer.json()?;
        Ok(Indexed {
            value: entries.into_iter().map(Instance::from).collect(),
            index: answer.index,
        })
    }

    /// Stores `value` at `key` in Consul's KV store.
    pub async fn kv_put(&self, key: &str, value: Vec<u8>) -> Result<(), ConsulError> {
        let segments = kv_path(key);
        let mut call = Call::get(&segments);
        call.method = reqwest::Method::PUT;
        call.needs = Needs::KeyWrite(key);
        call.body = Some(value);
        self.call(call).await.map(drop)
    }

    /// Deletes `key` from Consul's KV store (deleting a missing key succeeds).
    pub async fn kv_delete(&self, key: &str) -> Result<(), ConsulError> {
        let segments = kv_path(key);
        let mut call = Call::get(&segments);
        call.method = reqwest::Method::DELETE;
        call.needs = Needs::KeyWrite(key);
        self.call(call).await.map(drop)
    }

    /// Waits (as [`ConsulClient::watch_passing_instances`]) until the catalog's services
    /// change anywhere: an instance registered, deregistered or moved. Only the index matters
    /// (`GET /v1/catalog/services`, whose body is just the service names).
    pub async fn watch_catalog(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<()>, ConsulError> {
        let mut call = Call::get(&["v1", "catalog", "services"]);
        call.needs = Needs::Fixed("service:read on the routed services");
        call.block(index, wait);
        let answer = self.call(call).await?;
        Ok(Indexed { value: (), index: answer.index })
    }

    /// Waits until any health check changes, and returns every check's state
    /// (`GET /v1/health/state/any`): which services' checks changed tells which services to
    /// read again.
    pub async fn watch_checks(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<CheckState>>, ConsulError> {
        let mut call = Call::get(&["v1", "health", "state", "any"]);
        call.needs = Needs::Fixed("service:read on the routed services and node:read");
        call.block(index, wait);
        let answer = self.call(call).await?;
        let checks: Vec<RawCheck> = answer.json()?;
        Ok(Indexed {
            value: checks.into_iter().map(CheckState::from).collect(),
            index: answer.index,
        })
    }

    /// Every key under `prefix` (which should end in `/`) with its value; blocking as
    /// [`ConsulClient::watch_passing_instances`] when `index` > 0.
    pub async fn kv_list(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<KvEntry>>, ConsulError> {
        let segments = kv_path(prefix);
        let mut call = Call::get(&segments);
        call.needs = Needs::KeyRead(prefix);
        call.query.push(("recurse", "true".to_owned()));
        // Consistent: a server that has just been elected leader (Consul restarted) answers
        // from its snapshot until it has applied the log after it, so a default read can miss
        // recent writes, and a listing without a stored route would remove that route. A
        // consistent read waits until the leader is ready (Consul answers 500 meanwhile, and
        // the follower retries).
        call.query.push(("consistent", "true".to_owned()));
        call.block(index, wait);
        call.missing_is_empty = true;
        let answer = self.call(call).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Indexed { value: Vec::new(), index: answer.index });
        }
        let raw: Vec<RawKvEntry> = answer.json()?;
        let value = raw.into_iter().map(|e| e.decode()).collect::<Result<Vec<_>, _>>().map_err(
            |reason| ConsulError::Refused {
                url: format!("/v1/kv/{prefix}"),
                status: 200,
                body: reason,
            },
        )?;
        Ok(Indexed { value, index: answer.index })
    }

    /// Makes one call, trying each agent in turn until one answers.
    async fn call(&self, call: Call<'_>) -> Result<Answer, ConsulError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.agents.len();
        let mut last_failure = String::new();
        for step in 0..self.agents.len() {
            let agent = (first + step) % self.agents.len();
            let url = endpoint(&self.agents[agent], call.segments, &call.query);
            match self.call_once(&call, &url).await {
                Ok(answer) => {
                    self.preferred.store(agent, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(Attempt::Refused(err)) => return Err(err),
                Err(Attempt::TryNext(reason)) => {
                    tracing::debug!(agent = %self.agents[agent], %reason, "consul agent failed");
                    last_failure = reason;
                }
            }
        }
        Err(ConsulError::Unreachable { tried: self.agents_list(), last: last_failure })
    }

    async fn call_once(&self, call: &Call<'_>, url: &Url) -> Result<Answer, Attempt> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(call.method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.clone());
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        let response =
            request.send().await.map_err(|e| Attempt::TryNext(describe_transport_error(&e)))?;
        let status = response.status();
        let index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body =
            response.bytes().await.map_err(|e| Attempt::TryNext(describe_transport_error(&e)))?;
        if status.is_server_error() {
            return Err(Attempt::TryNext(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        if status == reqwest::StatusCode::FORBIDDEN {
            let answer = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(Attempt::Refused(self.denied(call, url, answer)));
        }
        let missing_ok = call.missing_is_empty && status == reqwest::StatusCode::NOT_FOUND;
        if !status.is_success() && !missing_ok {
            return Err(Attempt::Refused(ConsulError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            }));
        }
        Ok(Answer { status, body, index, url: url.to_string() })
    }

    /// The typed error of a 403: which call, Consul's words, and what the token needs.
    fn denied(&self, call: &Call<'_>, url: &Url, answer: String) -> ConsulError {
        let rule = call.needs.rule();
        let needs = if answer.contains("ACL not found") {
            if self.token.is_some() {
                format!(
                    "Consul knows no such token; set CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) \
                     to the SecretID of a token with {rule} ({ACL_DOC})"
                )
            } else {
                format!(
                    "Consul has ACLs on and no token was given; set CONSUL_HTTP_TOKEN (or \
                     CONSUL_HTTP_TOKEN_FILE) to a token with {rule} ({ACL_DOC})"
                )
            }
        } else if self.token.is_some() {
            format!("the Consul token needs {rule} ({ACL_DOC})")
        } else {
            format!(
                "Consul has ACLs on and no token was given; set CONSUL_HTTP_TOKEN (or \
                 CONSUL_HTTP_TOKEN_FILE) to a token with {rule} ({ACL_DOC})"
            )
        };
        ConsulError::PermissionDenied {
            call: format!("{} {}", call.method, url.path()),
            answer: if answer.is_empty() { "403 Forbidden".to_owned() } else { answer },
            needs,
        }
    }

    fn agents_list(&self) -> String {
        self.agents.iter().map(|u| u.as_str().trim_end_matches('/')).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("agents", &self.agents_list())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A value together with the Consul index it was read at (`X-Consul-Index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    pub value: T,
    pub index: u64,
}

/// One key of Consul's KV store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
}

/// One HTTP call to Consul, whichever agent answers it.
struct Call<'a> {
    method: reqwest::Method,
    segments: &'a [&'a str],
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    /// A 404 is an answer (an empty KV prefix), not an error.
    missing_is_empty: bool,
    /// What Consul's ACLs must allow the token for this call, for the message of a 403.
    needs: Needs<'a>,
}

/// Where README.md tells the whole policy.
const ACL_DOC: &str = "README.md, section Consul ACLs, has the whole policy";

/// The ACL rule a call needs (Consul 1.8's rules for the endpoints this client calls).
#[derive(Clone, Copy)]
enum Needs<'a> {
    /// `/v1/health/service/<name>`, `/v1/catalog/service/<name>`: the service and the nodes
    /// its instances run on (Consul hides instances on nodes the token may not read).
    Service(&'a str),
    /// `GET /v1/kv/<prefix>?recurse`.
    KeyRead(&'a str),
    /// `PUT`, `DELETE /v1/kv/<key>`.
    KeyWrite(&'a str),
    Fixed(&'static str),
}

impl Needs<'_> {
    fn rule(self) -> String {
        match self {
            Needs::Service(name) => format!("service:read on {name:?} and node:read"),
            Needs::KeyRead(prefix) => format!("key:read on {prefix:?}"),
            Needs::KeyWrite(key) => format!("key:write on {key:?}"),
            Needs::Fixed(rule) => rule.to_owned(),
        }
    }
}

impl<'a> Call<'a> {
    fn get(segments: &'a [&'a str]) -> Self {
        Call {
            method: reqwest::Method::GET,
            segments,
            query: Vec::new(),
            body: None,
            timeout: None,
            missing_is_empty: false,
            needs: Needs::Fixed("read access to what it asks for"),
        }
    }

    /// Makes this a blocking query when `index` > 0. Consul may hold it for `wait` plus up to
    /// `wait / 16` of jitter, so the call's own timeout is longer than that.
    fn block(&mut self, index: u64, wait: Duration) {
        if index > 0 {
            self.query.push(("index", index.to_string()));
            self.query.push(("wait", format!("{}ms", wait.as_millis())));
            self.timeout = Some(wait + wait / 16 + Duration::from_secs(5));
        }
    }
}

/// The URL path segments of KV key (or prefix) `key`: `/v1/kv/<key>`.
fn kv_path(key: &str) -> Vec<&str> {
    ["v1", "kv"].into_iter().chain(key.split('/')).collect()
}

/// What an agent answered.
struct Answer {
    status: reqwest::StatusCode,
    body: bytes::Bytes,
    index: u64,
    url: String,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ConsulError> {
        serde_json::from_slice(&self.body)
            .map_err(|source| ConsulError::Decode { url: self.url.clone(), source })
    }
}

/// How one attempt at one agent ended.
enum Attempt {
    /// The agent is down, timed out or failed internally: another agent may answer.
    TryNext(String),
    /// The agent answered and said no: another agent would say the same.
    Refused(ConsulError),
}

fn describe_transport_error(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's Display hides the cause (e.g. "Connection refused"); walk the chain for it.
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    match err.url() {
        Some(url) if cause.is_empty() => format!("{url}: {what}"),
        Some(url) => format!("{url}: {what} ({cause})"),
        None => format!("{what}: {err}"),
    }
}

fn endpoint(agent: &Url, segments: &[&str], query: &[(&'static str, String)]) -> Url {
    let mut url = agent.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    url
}

/// Parses `CONSUL_ADDRESS`: URLs or `host:port`, separated by commas.
fn parse_addresses(addresses: &str) -> Result<Vec<Url>, ConsulError> {
    let mut agents = Vec::new();
    for raw in addresses.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme =
            if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
        let invalid =
            |reason: String| ConsulError::InvalidAddress { address: raw.to_owned(), reason };
        let url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("scheme {:?} is not http or https", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it has no host".to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it must not have a query or fragment".to_owned()));
        }
        agents.push(url);
    }
    if agents.is_empty() {
        return Err(ConsulError::NoAddress);
    }
    Ok(agents)
}

#[cfg(test)]
mod tests;
