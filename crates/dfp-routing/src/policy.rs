//! What a service asks of the proxy beyond "send it here": host names, excluded paths, the
//! default-backend role, and per-request policy (HTTPS and domain redirects, path rewrites,
//! basic auth, sticky sessions, header edits, timeouts).
//!
//! Everything is validated when built (at reconfigure time) and stored ready to apply, so the
//! data plane never parses a header name or compiles a regex per request. Still no IO here:
//! these are values and pure functions over them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use regex::Regex;

use crate::access::{MethodList, SourceList};

/// Why a service option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "domain {0:?} is not a host name; give names such as shop.example.com or *.example.com"
    )]
    BadDomain(String),
    #[error("header {0:?} is not valid; give `Name value`, e.g. `X-Env production`")]
    BadHeader(String),
    #[error("regular expression {pattern:?} is invalid: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("user entry {0:?} is not `name:password`")]
    BadUser(String),
    #[error("users entry {0} is not `name:password` with a name and a password; separate entries with commas or newlines")]
    BadUsersEntry(usize),
    #[error("no users are given; give `name:password` entries separated by commas or newlines")]
    NoUsers,
    #[error("password hash of user {0:?} is not a SHA-512 crypt hash ($6$[rounds=N$]salt$hash)")]
    BadHash(String),
    #[error("redirect code {0} is not one of 301, 302, 303, 307, 308")]
    BadRedirectCode(u16),
    #[error("source {entry:?} is refused: {why}; give addresses or CIDR blocks such as 10.0.0.0/8 or 2001:db8::/32, separated by commas")]
    BadSource { entry: String, why: &'static str },
    #[error(
        "method {0:?} is not an HTTP method name; give names such as GET,HEAD separated by commas"
    )]
    BadMethod(String),
    #[error("cookie name {0:?} is not a cookie name; use letters, digits and -_.!#$%&'*+^`|~, e.g. DFP_SERVER")]
    BadCookieName(String),
    #[error("redirectFromDomain needs an exact serviceDomain to redirect to (the first serviceDomain is {0:?}); give serviceDomain=www.example.com")]
    BadRedirectTarget(String),
    #[error("compression algorithm {0:?} is not supported; give gzip, deflate or br (brotli), or several separated by spaces in order of preference (identity for none)")]
    BadCompressionAlgo(String),
    #[error("compression type {0:?} is not a media type; give types such as text/html text/css application/javascript, separated by spaces")]
    BadCompressionType(String),
    #[error("compressionType needs compressionAlgo; add compressionAlgo=gzip")]
    CompressionTypeAlone,
    #[error("PROXY protocol version {0:?} is not supported; give v1 or v2")]
    BadProxyProtocol(String),
}

/// A host a service answers for: exact (`shop.example.com`) or one-label wildcard
/// (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`).
/// Stored lowercase without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Exact(Box<str>),
    /// The part after `*.`.
    Wildcard(Box<str>),
}

impl Domain {
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadDomain(input.to_owned());
        let lower = input.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(if wildcard { Domain::Wildcard(name.into()) } else { Domain::Exact(name.into()) })
    }
}

impl Domain {
    /// Whether `host` (a request's host, without port, any case, perhaps with a trailing dot)
    /// is this domain.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            Domain::Exact(name) => host.eq_ignore_ascii_case(name),
            Domain::Wildcard(suffix) => host
                .len()
                .checked_sub(suffix.len() + 1)
                .filter(|&dot| dot > 0 && host.as_bytes()[dot] == b'.')
                .is_some_and(|dot| {
                    !host[..dot].contains('.') && host[dot + 1..].eq_ignore_ascii_case(suffix)
                }),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Exact(name) => f.write_str(name),
            Domain::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A regex rewrite of the request path, applied after routing (`reqPathSearch` /
/// `reqPathReplace`).
#[derive(Debug, Clone)]
pub struct PathRewrite {
    search: Regex,
    replace: String,
}

impl PathRewrite {
    /// `replace` may refer to groups as `$1`, `${name}` or HAProxy's `\1`.
    pub fn new(search: &str, replace: &str) -> Result<Self, PolicyError> {
        let regex = Regex::new(search).map_err(|e| PolicyError::BadRegex {
            pattern: search.to_owned(),
            reason: e.to_string(),
        })?;
        // HAProxy's `\1` becomes `${1}`.
        let mut converted = String::with_capacity(replace.len());
        let mut chars = replace.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' && chars.peek().is_some_and(char::is_ascii_digit) {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                converted.push_str(&format!("${{{digits}}}"));
            } else {
                converted.push(c);
            }
        }
        Ok(PathRewrite { search: regex, replace: converted })
    }

    /// The expression, as configured.
    pub fn search(&self) -> &str {
        self.search.as_str()
    }

    /// The replacement, with HAProxy's `\N` already written as `${N}`.
    pub fn replacement(&self) -> &str {
        &self.replace
    }

    /// The rewritten path, or `None` when the expression does not match.
    pub fn apply(&self, path: &str) -> Option<String> {
        self.search
            .is_match(path)
            .then(|| self.search.replace(path, self.replace.as_str()).into_owned())
    }
}

/// A user of HTTP basic auth.
#[derive(Clone)]
pub struct Credential {
    user: Box<str>,
    secret: Secret,
}

#[derive(Clone)]
enum Secret {
    Plain(Box<str>),
    /// `$6$[rounds=N$]salt$hash`, split.
    Sha512 {
        rounds: usize,
        salt: Box<str>,
        hash: Box<str>,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Credential {
    /// A user with a plain password, or a SHA-512 crypt hash when `password` starts with `$6$`
    /// or `hashed` is set (Docker Flow Proxy's `usersPassEncrypted`).
    pub fn new(user: &str, password: &str, hashed: bool) -> Result<Self, PolicyError> {
        if user.is_empty() || user.contains(':') {
            return Err(PolicyError::BadUser(user.to_owned()));
        }
        let secret = if hashed || password.starts_with("$6$") {
            parse_sha512(password).ok_or_else(|| PolicyError::BadHash(user.to_owned()))?
        } else {
            Secret::Plain(password.into())
        };
        Ok(Credential { user: user.into(), secret })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Reads Docker Flow Proxy's users format: `name:password` entries separated by commas
    /// or newlines, blanks around them ignored (the `users` parameter, the `USERS` variable,
    /// users files and `dfp_users_*` secrets). A password is plain, or a SHA-512 crypt hash
    /// when `hashed` (`usersPassEncrypted`, `USERS_PASS_ENCRYPTED`) or when it starts with
    /// `$6$`. Errors name an entry by its position, never by its text: it may be a password.
    pub fn parse_list(text: &str, hashed: bool) -> Result<Vec<Credential>, PolicyError> {
        let entries = Credential::parse_entries(text, hashed)?;
        let given = entries.into_iter().enumerate().map(|(index, entry)| match entry {
            UsersEntry::Given(credential) => Ok(credential),
            UsersEntry::Bare(_) => Err(PolicyError::BadUsersEntry(index + 1)),
        });
        given.collect()
    }

    /// As [`parse_list`](Self::parse_list), for a service's `users` parameter, where an entry
    /// may also be a bare name (no `:`): Docker Flow Proxy then takes the password of the same
    /// user from the service's `usersSecret`, else from the global users
    /// ([`UsersEntry::Bare`]). A name with an empty password (`alice:`) is still an error.
    pub fn parse_entries(text: &str, hashed: bool) -> Result<Vec<UsersEntry>, PolicyError> {
        let mut users = Vec::new();
        let entries = text.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty());
        for (index, entry) in entries.enumerate() {
            let bad = || PolicyError::BadUsersEntry(index + 1);
            let Some((user, password)) = entry.split_once(':') else {
                users.push(UsersEntry::Bare(entry.into()));
                continue;
            };
            let (user, password) = (user.trim(), password.trim());
            if user.is_empty() || password.is_empty() {
                return Err(bad());
            }
            users.push(UsersEntry::Given(Credential::new(user, password, hashed)?));
        }
        if users.is_empty() {
            return Err(PolicyError::NoUsers);
        }
        Ok(users)
    }

    fn accepts(&self, user: &str, password: &str) -> bool {
        let user_ok = constant_time_eq(self.user.as_bytes(), user.as_bytes());
        let password_ok = match &self.secret {
            Secret::Plain(expected) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
            Secret::Sha512 { rounds, salt, hash } => {
                let Ok(params) = sha_crypt::Sha512Params::new(*rounds) else { return false };
                sha_crypt::sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params)
                    .is_ok_and(|computed| constant_time_eq(computed.as_bytes(), hash.as_bytes()))
            }
        };
        user_ok & password_ok
    }
}

fn parse_sha512(value: &str) -> Option<Secret> {
    let rest = value.strip_prefix("$6$")?;
    let mut parts: Vec<&str> = rest.split('$').collect();
    let rounds = match parts.first().and_then(|p| p.strip_prefix("rounds=")) {
        Some(n) => {
            let n: usize = n.parse().ok()?;
            parts.remove(0);
            n.clamp(1_000, 999_999_999)
        }
        None => 5_000,
    };
    let [salt, hash] = parts.as_slice() else { return None };
    if hash.len() != 86 {
        return None;
    }
    let salt: String = salt.chars().take(16).collect();
    Some(Secret::Sha512 { rounds, salt: salt.into(), hash: (*hash).into() })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Header edits on one direction of an exchange: delete, then set (replace), then add.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub delete: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Parses `Name value` (Docker Flow Proxy's format for add/set).
    pub fn parse_pair(entry: &str) -> Result<(HeaderName, HeaderValue), PolicyError> {
        let bad = || PolicyError::BadHeader(entry.to_owned());
        let entry = entry.trim();
        let (name, value) = entry.split_once(char::is_whitespace).ok_or_else(bad)?;
        let name =
            HeaderName::from_bytes(name.trim_end_matches(':').as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        Ok((name, value))
    }

    /// Parses a header name (for delete).
    pub fn parse_name(entry: &str) -> Result<HeaderName, PolicyError> {
        HeaderName::from_bytes(entry.trim().as_bytes())
            .map_err(|_| PolicyError::BadHeader(entry.to_owned()))
    }

    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.delete {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `sessionType=sticky-server`: the proxy pins each client to one instance with a cookie it
/// sets itself (HAProxy's `cookie NAME insert indirect nocache`, which Docker Flow Proxy
/// writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickySession {
    cookie: Box<str>,
}

impl StickySession {
    /// A sticky session with the cookie `name` (an RFC 6265 cookie name: an HTTP token).
    pub fn new(name: &str) -> Result<Self, PolicyError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid {
            return Err(PolicyError::BadCookieName(name.to_owned()));
        }
        Ok(StickySession { cookie: name.into() })
    }

    /// The cookie's name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }
}

/// Redirects to HTTPS decided by the `X-Forwarded-Proto` a balancer in front of the proxy
/// sets (Docker Flow Proxy's `redirectWhenHttpProto` and `redirectUnlessHttpsProto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoRedirect {
    /// Redirect when `X-Forwarded-Proto` is `http`.
    WhenHttp,
    /// Redirect unless `X-Forwarded-Proto` is `https`.
    UnlessHttps,
}

/// `redirectFromDomain`: requests for one of `from` are sent to `to` (the service's first
/// `serviceDomain`) with `301`, same path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRedirect {
    pub from: Vec<Domain>,
    to: Box<str>,
}

impl DomainRedirect {
    /// `to` must be an exact domain: a wildcard names no one host to send the client to.
    pub fn new(from: Vec<Domain>, to: &Domain) -> Result<Self, PolicyError> {
        match to {
            Domain::Exact(name) => Ok(DomainRedirect { from, to: name.clone() }),
            Domain::Wildcard(_) => Err(PolicyError::BadRedirectTarget(to.to_string())),
        }
    }

    /// The host redirected to.
    pub fn to(&self) -> &str {
        &self.to
    }

    /// Whether a request for `host` (without port) is redirected.
    pub fn applies_to(&self, host: &str) -> bool {
        self.from.iter().any(|d| d.matches(host))
    }
}

/// An entry of a service's `users` parameter ([`Credential::parse_entries`]).
#[derive(Debug, Clone)]
pub enum UsersEntry {
    /// `name:password`.
    Given(Credential),
    /// A name alone: the user's password is found where the proxy keeps users (the
    /// service's `usersSecret`, else the global users) when the call is applied, and never
    /// stored with the call. Its text is never shown: it may be a password cut at a comma.
    Bare(Box<str>),
}

/// Where a service's users come from, for `config` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersFrom {
    /// The service's own `users`.
    Service,
    /// The Docker secret `dfp_users_<name>` (`usersSecret=<name>`).
    Secret(Box<str>),
    /// The proxy's global users (`USERS`, `--users`, `--users-file`).
    Global,
}

/// HTTP basic authentication of a service, resolved at reconfigure time: the users are a
/// shared list (the global users are one list for every service that uses them), so a
/// request only borrows it.
#[derive(Debug, Clone, Default)]
pub enum Authentication {
    /// Nobody is asked for credentials: no users anywhere.
    #[default]
    Open,
    /// `ignoreAuthorization=true`: open although users are configured (globally).
    Ignored,
    /// One of `users` with the right password. An empty list lets nobody in: the service
    /// asks for users that could not be read (a `usersSecret` gone at restore).
    Users { users: Arc<[Credential]>, from: UsersFrom },
}

impl Authentication {
    /// Whether requests must carry credentials (then the proxy strips them before forwarding).
    pub fn required(&self) -> bool {
        match self {
            Authentication::Open | Authentication::Ignored => false,
            Authentication::Users { .. } => true,
        }
    }

    /// The users let in (none when open).
    pub fn users(&self) -> &[Credential] {
        match self {
            Authentication::Open | Authentication::Ignored => &[],
            Authentication::Users { users, .. } => users,
        }
    }

    /// Where the users come from, when there are any to ask for.
    pub fn from(&self) -> Option<&UsersFrom> {
        match self {
            Authentication::Open | Authentication::Ignored => None,
            Authentication::Users { from, .. } => Some(from),
        }
    }
}

/// The longest timeout the proxy takes, anywhere (a service's `timeoutServer`, `timeoutTunnel`
/// or `timeoutClient`, a command-line timeout): HAProxy's own limit, 2^31−1 ms (~24.8 days).
/// A deadline this far ahead always fits the clock; one of 18446744073709551615 s would not,
/// and reckoning it would fail in the middle of a request.
pub const LONGEST_TIMEOUT: Duration = Duration::from_millis((1 << 31) - 1);

/// Per-request policy of a service. The default asks for nothing.
#[derive(Debug, Clone, Default)]
pub struct ServicePolicy {
    /// Clients (by address) let through (`allowedSources`); empty: every client.
    pub allowed_sources: SourceList,
    /// Clients refused even when allowed (`deniedSources`).
    pub denied_sources: SourceList,
    /// Plain-HTTP requests are refused with 403 (`denyHttp`).
    pub deny_http: bool,
    /// Requests without a client certificate verified against `--client-ca` are refused
    /// with 403 (`verifyClientSsl`), plain-HTTP ones included.
    pub verify_client_cert: bool,
    /// Methods let through (`allowedMethods`); empty: every method.
    pub allowed_methods: MethodList,
    /// Methods refused even when allowed (`deniedMethods`).
    pub denied_methods: MethodList,
    /// Plain-HTTP requests are redirected to HTTPS with this status (`httpsOnly`).
    pub https_redirect: Option<u16>,
    /// Redirects to HTTPS by the balancer's `X-Forwarded-Proto`, with this status
    /// (`httpsRedirectCode`, default 302).
    pub proto_redirect: Option<(ProtoRedirect, u16)>,
    /// `redirectFromDomain`.
    pub domain_redirect: Option<DomainRedirect>,
    /// `reqPathSearch`/`reqPathReplace`: applied first.
    pub path_rewrite: Option<PathRewrite>,
    /// `reqPathSearchReplace` pairs: applied after `path_rewrite`, in order, each to the
    /// previous one's result (HAProxy's `set-path` rules in the order Docker Flow Proxy
    /// writes them).
    pub search_replace: Vec<PathRewrite>,
    /// `sessionType=sticky-server`.
    pub sticky: Option<StickySession>,
    /// Basic authentication (`users`, `usersSecret`, the global users, `ignoreAuthorization`).
    pub auth: Authentication,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Overrides the proxy's server timeout (`timeoutServer`).
    pub server_timeout: Option<Duration>,
    /// Overrides the proxy's tunnel timeout (`timeoutTunnel`).
    pub tunnel_timeout: Option<Duration>,
    /// Overrides the proxy's client timeout for a TCP service (`timeoutClient`): how long a
    /// write to its client may make no progress.
    pub client_timeout: Option<Duration>,
    /// Responses compressed on the way to the client (`compressionAlgo`,
    /// `compressionType`); `None`: passed as the instance sent them.
    pub compression: Option<crate::Compression>,
    /// The instances want a PROXY protocol header naming the client before each connection's
    /// first request (`sendProxyProtocol`); `None`: they are sent none.
    pub send_proxy: Option<ProxyProtocol>,
    /// At most this many exchanges in flight to each instance at once, over every thread
    /// (`instanceMaxConn`): a full instance is stepped over, and when every one is full the
    /// request gets 503 (a TCP connection is closed). `None`: no limit.
    pub instance_max_conn: Option<std::num::NonZeroU32>,
    /// Overrides the proxy's queue timeout (`--queue-timeout`) for this service
    /// (`timeoutQueue`): how long a request waits for a place when every instance is full.
    /// Zero: no queue, the 503 at once. Only with `instance_max_conn`.
    pub queue_timeout: Option<Duration>,
    /// At most this many requests (or TCP connections) of the service wait in its queue at
    /// once, over every thread (`maxQueue`); one more gets the 503 at once (a TCP connection
    /// is closed). `None`: no limit. Only with `instance_max_conn`.
    pub max_queue: Option<std::num::NonZeroU32>,
}

/// The PROXY protocol version a service's instances read (HAProxy's `send-proxy` and
/// `send-proxy-v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyProtocol {
    /// Reads `v1` or `v2` (any case).
    pub fn parse(value: &str) -> Result<Self, PolicyError> {
        match value.trim() {
            v if v.eq_ignore_ascii_case("v1") => Ok(ProxyProtocol::V1),
            v if v.eq_ignore_ascii_case("v2") => Ok(ProxyProtocol::V2),
            other => Err(PolicyError::BadProxyProtocol(other.to_owned())),
        }
    }

    /// The parameter's value for this version, as `config` shows it.
    pub fn token(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl ServicePolicy {
    /// Checks a redirect code for `httpsRedirectCode`.
    pub fn redirect_code(code: u16) -> Result<u16, PolicyError> {
        match code {
            301 | 302 | 303 | 307 | 308 => Ok(code),
            other => Err(PolicyError::BadRedirectCode(other)),
        }
    }

    /// Whether `authorization` (the request's header) names one of the users with the right
    /// password. True when the service asks for none; false when it asks for users of an
    /// empty list.
    pub fn authorizes(&self, authorization: Option<&HeaderValue>) -> bool {
        use base64::Engine as _;
        let users = match &self.auth {
            Authentication::Open | Authentication::Ignored => return true,
            Authentication::Users { users, .. } => users,
        };
        let Some(encoded) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = std::str::from_utf8(&decoded) else { return false };
        let Some((user, password)) = decoded.split_once(':') else { return false };
        // Check every user (no early exit), so timing does not tell which user exists.
        users.iter().fold(false, |ok, c| c.accepts(user, password) | ok)
    }
}

#[cfg(test)]
mod tests;
