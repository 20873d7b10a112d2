//! The per-option parsers of a reconfigure: each turns one parameter's value (or a few
//! related ones) into its part of a [`ReconfigureRequest`](super::ReconfigureRequest), or into
//! a 400 that names the parameter and says what to give instead. Apart from the request in
//! `mod.rs` so that adding an option touches this file, not the request's reading order.

use std::time::Duration;

use dfp_routing::{
    Authentication, Compression, ConditionError, Credential, HeaderEdits, MethodList, PathPattern,
    PathPrefix, PathRewrite, PathType, PolicyError, ProtoRedirect, ProxyProtocol, ServicePolicy,
    SourceList, UsersEntry, UsersFrom,
};

use super::MAX_SERVICE_NAME;
use crate::AdminError;

/// `usersSecret`: the suffix of a Docker secret's name (`dfp_users_<name>`), so letters,
/// digits, `-`, `_` and `.` only: never a path.
pub(super) fn validate_users_secret(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    let valid = name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(invalid(
            "usersSecret",
            name,
            "give the suffix of a Docker secret named dfp_users_<suffix> (letters, digits, '-', '_', '.'), e.g. usersSecret=monitoring",
        ));
    }
    Ok(name.to_owned())
}

/// `serviceColor`: a name part (letters, digits, `-`, `_`, `.`), so that
/// `<serviceName>-<serviceColor>` is a valid service name.
pub(super) fn validate_color(service: &str, color: &str) -> Result<String, AdminError> {
    let color = color.trim();
    let valid = color.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid || service.len() + 1 + color.len() > MAX_SERVICE_NAME {
        return Err(invalid(
            "serviceColor",
            color,
            "use letters, digits, '-', '_' and '.' only (e.g. blue), so that serviceName-serviceColor names a registered service",
        ));
    }
    Ok(color.to_owned())
}

/// The service's policy, and its `users` entries when one of them is a bare name (else empty:
/// the policy holds every user).
pub(super) fn parse_policy<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(ServicePolicy, Vec<UsersEntry>), AdminError> {
    let mut policy = ServicePolicy::default();
    let mut bare_users = Vec::new();
    for (name, list) in [
        ("allowedMethods", &mut policy.allowed_methods),
        ("deniedMethods", &mut policy.denied_methods),
    ] {
        if let Some(raw) = get(name) {
            *list = MethodList::parse(raw).map_err(|e| policy_err(name, raw, e))?;
        }
    }
    policy.deny_http = parse_bool(get("denyHttp"), "denyHttp")?;
    policy.verify_client_cert = parse_bool(get("verifyClientSsl"), "verifyClientSsl")?;
    for (name, list) in [
        ("allowedSources", &mut policy.allowed_sources),
        ("deniedSources", &mut policy.denied_sources),
    ] {
        if let Some(raw) = get(name) {
            *list = SourceList::parse(raw).map_err(|e| policy_err(name, raw, e))?;
        }
    }
    // `httpsRedirectCode` applies to every redirect to HTTPS, as in Docker Flow Proxy's
    // template; validated whenever given.
    let code = match get("httpsRedirectCode") {
        Some(raw) => raw
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| ServicePolicy::redirect_code(c).ok())
            .ok_or_else(|| invalid("httpsRedirectCode", raw, "give 301, 302, 303, 307 or 308"))?,
        None => 302,
    };
    if parse_bool(get("httpsOnly"), "httpsOnly")? {
        policy.https_redirect = Some(code);
    }
    // Redirecting unless `https` covers redirecting when `http`: it wins when both are set.
    if parse_bool(get("redirectUnlessHttpsProto"), "redirectUnlessHttpsProto")? {
        policy.proto_redirect = Some((ProtoRedirect::UnlessHttps, code));
    } else if parse_bool(get("redirectWhenHttpProto"), "redirectWhenHttpProto")? {
        policy.proto_redirect = Some((ProtoRedirect::WhenHttp, code));
    }
    match (get("reqPathSearch"), get("reqPathReplace")) {
        (Some(search), replace) => {
            policy.path_rewrite = Some(
                PathRewrite::new(search, replace.unwrap_or_default())
                    .map_err(|e| policy_err("reqPathSearch", search, e))?,
            );
        }
        (None, Some(replace)) => {
            return Err(invalid("reqPathReplace", replace, "it needs reqPathSearch too"));
        }
        (None, None) => {}
    }
    // Docker Flow Proxy's pairs: `search,replace` entries separated by `:` (split at the
    // first comma of each entry, so a replacement may hold commas; a search may not).
    if let Some(raw) = get("reqPathSearchReplace") {
        for entry in raw.split(':').filter(|e| !e.is_empty()) {
            let (search, replace) = entry.split_once(',').ok_or_else(|| {
                invalid(
                    "reqPathSearchReplace",
                    entry,
                    "give search,replace pairs separated by ':', e.g. /old/,/new/:/a,/b",
                )
            })?;
            policy.search_replace.push(
                PathRewrite::new(search, replace)
                    .map_err(|e| policy_err("reqPathSearchReplace", search, e))?,
            );
        }
    }
    if let Some(users) = get("users") {
        let hashed = parse_bool(get("usersPassEncrypted"), "usersPassEncrypted")?;
        // Never echo the value: it holds passwords.
        let entries = Credential::parse_entries(users, hashed)
            .map_err(|e| policy_err("users", "(hidden)", e))?;
        let given: Vec<Credential> = entries
            .iter()
            .filter_map(|e| match e {
                UsersEntry::Given(credential) => Some(credential.clone()),
                UsersEntry::Bare(_) => None,
            })
            .collect();
        if given.len() < entries.len() {
            // Bare names: the controller completes the list (`UsersConfig::resolve`).
            bare_users = entries;
        }
        policy.auth = Authentication::Users { users: given.into(), from: UsersFrom::Service };
    }
    let edits = |add: &'static str,
                 set: &'static str,
                 del: &'static str|
     -> Result<HeaderEdits, AdminError> {
        let mut edits = HeaderEdits::default();
        for (name, list) in [(add, &mut edits.add), (set, &mut edits.set)] {
            for entry in get(name).unwrap_or_default().split(',').filter(|e| !e.trim().is_empty()) {
                list.push(HeaderEdits::parse_pair(entry).map_err(|e| policy_err(name, entry, e))?);
            }
        }
        for entry in get(del).unwrap_or_default().split(',').filter(|e| !e.trim().is_empty()) {
            edits
                .delete
                .push(HeaderEdits::parse_name(entry).map_err(|e| policy_err(del, entry, e))?);
        }
        Ok(edits)
    };
    policy.request_headers = edits("addReqHeader", "setReqHeader", "delReqHeader")?;
    policy.response_headers = edits("addResHeader", "setResHeader", "delResHeader")?;
    policy.server_timeout =
        get("timeoutServer").map(|v| parse_seconds(v, "timeoutServer")).transpose()?;
    policy.tunnel_timeout =
        get("timeoutTunnel").map(|v| parse_seconds(v, "timeoutTunnel")).transpose()?;
    let (algo, types) = (get("compressionAlgo"), get("compressionType"));
    policy.compression = Compression::parse(algo, types).map_err(|e| match e {
        PolicyError::BadCompressionAlgo(_) => {
            policy_err("compressionAlgo", algo.unwrap_or_default(), e)
        }
        _ => policy_err("compressionType", types.unwrap_or_default(), e),
    })?;
    policy.send_proxy = get("sendProxyProtocol")
        .filter(|v| !v.trim().is_empty())
        .map(|v| ProxyProtocol::parse(v).map_err(|e| policy_err("sendProxyProtocol", v, e)))
        .transpose()?;
    policy.instance_max_conn = get("instanceMaxConn")
        .filter(|v| !v.trim().is_empty())
        .map(parse_instance_max_conn)
        .transpose()?;
    policy.queue_timeout = get("timeoutQueue")
        .filter(|v| !v.trim().is_empty())
        .map(parse_queue_timeout)
        .transpose()?;
    policy.max_queue =
        get("maxQueue").filter(|v| !v.trim().is_empty()).map(parse_max_queue).transpose()?;
    // A queue forms only behind instanceMaxConn: without it these would change nothing.
    if policy.instance_max_conn.is_none() {
        if let Some(name) = ["timeoutQueue", "maxQueue"]
            .into_iter()
            .find(|n| get(n).is_some_and(|v| !v.trim().is_empty()))
        {
            return Err(invalid(
                name,
                get(name).unwrap_or_default(),
                "a service's requests queue only when every instance has instanceMaxConn in \
                 flight; give instanceMaxConn too, or leave this out",
            ));
        }
    }
    Ok((policy, bare_users))
}

pub(super) fn parse_paths<'a>(
    raw: impl Iterator<Item = &'a str>,
    name: &'static str,
) -> Result<Vec<PathPrefix>, AdminError> {
    let mut paths = Vec::new();
    for raw in raw.map(str::trim).filter(|p| !p.is_empty()) {
        let prefix = PathPrefix::parse(raw).map_err(|source| {
            if name == "servicePath" {
                AdminError::InvalidPath { source }
            } else {
                invalid(name, raw, &source.to_string())
            }
        })?;
        if !paths.contains(&prefix) {
            paths.push(prefix);
        }
    }
    Ok(paths)
}

/// `servicePath` values under `pathType`, as given (trimmed), each once.
pub(super) fn parse_patterns(
    kind: PathType,
    raw: &[String],
) -> Result<Vec<PathPattern>, AdminError> {
    let mut patterns: Vec<PathPattern> = Vec::new();
    for raw in raw.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let pattern =
            PathPattern::parse(kind, raw).map_err(|e| condition_err("servicePath", raw, e))?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

pub(super) fn condition_err(name: &'static str, value: &str, err: ConditionError) -> AdminError {
    invalid(name, value, &err.to_string())
}

pub(super) fn parse_bool(value: Option<&str>, name: &'static str) -> Result<bool, AdminError> {
    match value.map(str::trim) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(invalid(name, v, "give true or false")),
    }
}

/// Docker Flow Proxy's timeouts: whole seconds (a unit suffix `s` is accepted), from 1 to
/// [`dfp_routing::LONGEST_TIMEOUT`] (2147483, ~24.8 days, HAProxy's limit).
pub(super) fn parse_seconds(value: &str, name: &'static str) -> Result<Duration, AdminError> {
    const WHAT: &str = "give a whole number of seconds from 1 to 2147483 (~24.8 days)";
    match value.trim().trim_end_matches('s').parse::<u64>() {
        Ok(n) if n > 0 && Duration::from_secs(n) <= dfp_routing::LONGEST_TIMEOUT => {
            Ok(Duration::from_secs(n))
        }
        _ => Err(invalid(name, value, WHAT)),
    }
}

/// The most exchanges in flight to each instance (`instanceMaxConn`): a whole number from 1
/// to [`MAX_INSTANCE_CONN`].
fn parse_instance_max_conn(value: &str) -> Result<std::num::NonZeroU32, AdminError> {
    parse_count(
        "instanceMaxConn",
        value,
        "give the most requests (or TCP connections) each instance may have in flight at once, a whole number from 1 to 1000000 (e.g. instanceMaxConn=100)",
    )
}

/// A count parameter: a whole number from 1 to [`MAX_INSTANCE_CONN`], else `reason`.
fn parse_count(
    name: &'static str,
    value: &str,
    reason: &str,
) -> Result<std::num::NonZeroU32, AdminError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_INSTANCE_CONN).contains(&n) => {
            Ok(std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN))
        }
        _ => Err(invalid(name, value, reason)),
    }
}

/// How long a request waits in the service's queue (`timeoutQueue`): whole seconds (a unit
/// suffix `s` is accepted) up to an hour; `0` is no queue (the 503 at once).
fn parse_queue_timeout(value: &str) -> Result<Duration, AdminError> {
    match value.trim().trim_end_matches('s').parse::<u64>() {
        Ok(n) if n <= MAX_QUEUE_SECONDS => Ok(Duration::from_secs(n)),
        _ => Err(invalid(
            "timeoutQueue",
            value,
            "give how many seconds a request may wait for a place when every instance is full, \
             a whole number from 0 (no queue: the 503 at once) to 3600 (e.g. timeoutQueue=5)",
        )),
    }
}

/// The longest `timeoutQueue`: a request held longer than this has been given up on by
/// every client.
const MAX_QUEUE_SECONDS: u64 = 3600;

/// The most requests of the service waiting in its queue at once (`maxQueue`): a whole
/// number from 1 to [`MAX_INSTANCE_CONN`].
fn parse_max_queue(value: &str) -> Result<std::num::NonZeroU32, AdminError> {
    parse_count(
        "maxQueue",
        value,
        "give the most requests (or TCP connections) of the service that may wait for a place \
         at once, a whole number from 1 to 1000000 (e.g. maxQueue=100); for no queue, give \
         timeoutQueue=0",
    )
}

/// The largest `instanceMaxConn`: far above what one instance serves at once, far below
/// where a counter could wrap.
pub(super) const MAX_INSTANCE_CONN: u32 = 1_000_000;

pub(super) fn invalid(name: &'static str, value: &str, reason: &str) -> AdminError {
    AdminError::InvalidParameter { name, value: value.to_owned(), reason: reason.to_owned() }
}

pub(super) fn policy_err(name: &'static str, value: &str, err: PolicyError) -> AdminError {
    invalid(name, value, &err.to_string())
}

pub(super) fn policy(name: &'static str, value: &str, err: PolicyError) -> AdminError {
    policy_err(name, value, err)
}

pub(super) fn parse_port(value: &str) -> Result<u16, AdminError> {
    parse_port_named(value, "port")
}

pub(super) fn parse_port_named(value: &str, name: &'static str) -> Result<u16, AdminError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(AdminError::InvalidParameter {
            name,
            value: value.to_owned(),
            reason: "give a TCP port between 1 and 65535".to_owned(),
        }),
    }
}
