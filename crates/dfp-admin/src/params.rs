//! Reconfigure parameters as Docker Flow Proxy names them, read from a query string.

use std::collections::BTreeMap;

use std::time::Duration;

use dfp_routing::{
    Authentication, Compression, ConditionError, Credential, Domain, DomainRedirect, HeaderEdits,
    MethodList, PathPattern, PathPrefix, PathRewrite, PathType, PolicyError, ProtoRedirect,
    RouteConditions, ServicePolicy, ServiceSpec, SourceList, StickySession, UsersFrom,
};

use crate::parity::{self, Parameter, Reading, Status};
use crate::AdminError;

/// Longest service name accepted: Consul and DNS names are far shorter in practice.
const MAX_SERVICE_NAME: usize = 255;

/// A validated reconfigure request.
#[derive(Debug, Clone)]
pub struct ReconfigureRequest {
    /// `serviceName`: the Consul service (or, standalone, the DNS name) to route to.
    pub service_name: String,
    /// `servicePath`: the paths the service owns; repeated or comma-separated. Empty when
    /// `pathType` is given (then the paths are in `path_patterns`).
    pub service_paths: Vec<PathPrefix>,
    /// `servicePath` under `pathType` (`path_beg`, `path`, `path_end`, `path_reg`).
    pub path_patterns: Vec<PathPattern>,
    /// `serviceHeader`, `userAgent`: what a request's fields must show to take these routes.
    pub conditions: RouteConditions,
    /// `port`: standalone mode's instance port.
    pub port: Option<u16>,
    /// `serviceDomain`: the hosts the paths apply to (empty: any host).
    pub domains: Vec<Domain>,
    /// `servicePathExclude`: paths below `service_paths` the service does not own.
    pub excluded: Vec<PathPrefix>,
    /// `isDefaultBackend`: answers requests no route matches.
    pub default_backend: bool,
    /// `serviceColor` (Consul mode): the instances are those of `<serviceName>-<color>`; the
    /// route keeps the name `serviceName`.
    pub color: Option<String>,
    /// `httpsOnly`, `reqPathSearch`, `users`, header edits, timeouts. Its authentication is
    /// the service's own `users`, or `ignoreAuthorization`; otherwise open until the
    /// controller resolves it (the `usersSecret`, or the proxy's global users).
    pub policy: ServicePolicy,
    /// `usersSecret`: the service's users are in the Docker secret `dfp_users_<name>`, read by
    /// the controller (this is the name, never the users).
    pub users_secret: Option<String>,
    /// `usersPassEncrypted`: the passwords of `users` or of the `usersSecret` are hashes.
    pub users_pass_encrypted: bool,
    /// Parameters that were sent but that this proxy does not act on, by name.
    pub ignored: Vec<String>,
    /// Every parameter of the call (the supported ones normalised), as stored in Consul KV or
    /// the state file, so a restore or another replica replays exactly this call.
    pub params: BTreeMap<String, String>,
}

impl ReconfigureRequest {
    /// Reads a reconfigure from `key=value` pairs (a decoded query string).
    ///
    /// Each parameter is read as [`crate::parity`] says: a built one is validated; a refused
    /// one (or an indexed `servicePath.1`) is a 400 that says what to use instead; an ignored
    /// one, and any parameter Docker Flow Proxy does not know, is kept by name in
    /// [`ReconfigureRequest::ignored`] so the answer can say it had no effect (tools such as
    /// Docker Flow Swarm Listener send extra parameters, so an unknown one is not an error).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, AdminError> {
        Self::read(pairs, true)
    }

    /// Reads a stored call (restore, another replica). A parameter refused now but stored by
    /// a version that ignored it is ignored again, so an upgrade keeps serving the route as
    /// it was served before; everything else is read as [`Self::from_pairs`] reads it.
    pub(crate) fn from_stored_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, AdminError> {
        Self::read(pairs, false)
    }

    fn read<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        refuse: bool,
    ) -> Result<Self, AdminError> {
        let mut raw_paths = Vec::new();
        let mut ignored: Vec<String> = Vec::new();
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in pairs {
            if key == "servicePath" {
                raw_paths.extend(value.split(',').map(str::trim).map(str::to_owned));
                continue;
            }
            let built = match parity::read(key) {
                Reading::Known(Parameter { name, status: Status::Built { .. } }) => Some(name),
                Reading::Known(Parameter { name, status: Status::Refused { instead } })
                    if refuse =>
                {
                    return Err(AdminError::RefusedParameter { name: name.to_owned(), instead });
                }
                Reading::Indexed(Parameter { status, .. })
                    if refuse && !matches!(status, Status::Ignored { .. }) =>
                {
                    return Err(AdminError::RefusedParameter {
                        name: key.to_owned(),
                        instead: parity::INDEXED,
                    });
                }
                Reading::Known(_) | Reading::Indexed(_) | Reading::Unknown => None,
            };
            if built.is_none() && !ignored.iter().any(|seen| seen == key) {
                ignored.push(key.to_owned());
            }
            if let Some(previous) = params.get(key).filter(|previous| *previous != value) {
                if let Some(name) = built {
                    return Err(given_twice(name, previous, value));
                }
            }
            params.insert(key.to_owned(), value.to_owned());
        }
        let get =
            |name: &str| params.get(name).map(String::as_str).filter(|v| !v.trim().is_empty());

        let service_name = validate_service_name(get("serviceName"))?;
        let default_backend = parse_bool(get("isDefaultBackend"), "isDefaultBackend")?;
        let path_type = get("pathType")
            .map(PathType::parse)
            .transpose()
            .map_err(|e| condition_err("pathType", get("pathType").unwrap_or_default(), e))?;
        let (service_paths, path_patterns) = match path_type {
            None => (parse_paths(raw_paths.iter().map(String::as_str), "servicePath")?, Vec::new()),
            Some(kind) => (Vec::new(), parse_patterns(kind, &raw_paths)?),
        };
        let conditions = RouteConditions::parse(get("serviceHeader"), get("userAgent")).map_err(
            |e| match e {
                ConditionError::BadUserAgent(_) => {
                    condition_err("userAgent", get("userAgent").unwrap_or_default(), e)
                }
                _ => condition_err("serviceHeader", get("serviceHeader").unwrap_or_default(), e),
            },
        )?;
        if service_paths.is_empty() && path_patterns.is_empty() && !default_backend {
            return Err(AdminError::MissingParameter {
                name: "servicePath",
                example: "servicePath=/api/v1/books",
            });
        }
        let port = get("port").map(parse_port).transpose()?;
        if let Some(mode) = get("reqMode") {
            if !mode.eq_ignore_ascii_case("http") {
                return Err(invalid("reqMode", mode, "only reqMode=http is supported (no tcp)"));
            }
        }
        let mut domains = Vec::new();
        for raw in get("serviceDomain").unwrap_or_default().split(',').map(str::trim) {
            if !raw.is_empty() {
                domains.push(Domain::parse(raw).map_err(|e| policy("serviceDomain", raw, e))?);
            }
        }
        let excluded = parse_paths(
            get("servicePathExclude").unwrap_or_default().split(','),
            "servicePathExclude",
        )?;
        let mut policy = parse_policy(&get)?;
        if let Some(raw) = get("redirectFromDomain") {
            let mut from = Vec::new();
            for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                from.push(
                    Domain::parse(entry).map_err(|e| policy_err("redirectFromDomain", entry, e))?,
                );
            }
            let to = domains.first().ok_or_else(|| {
                invalid(
                    "redirectFromDomain",
                    raw,
                    "it redirects to the first serviceDomain; give serviceDomain too",
                )
            })?;
            if let Some(both) = from.iter().find(|d| domains.contains(d)) {
                return Err(invalid(
                    "redirectFromDomain",
                    &both.to_string(),
                    "it is also a serviceDomain, so it would redirect to itself; list it in one of them",
                ));
            }
            policy.domain_redirect = Some(
                DomainRedirect::new(from, to)
                    .map_err(|e| policy_err("redirectFromDomain", raw, e))?,
            );
        }
        match get("sessionType").map(str::trim) {
            None => {
                if let Some(cookie) = get("sessionCookie") {
                    return Err(invalid(
                        "sessionCookie",
                        cookie,
                        "it needs sessionType=sticky-server too",
                    ));
                }
            }
            Some(kind) if kind.eq_ignore_ascii_case("sticky-server") => {
                let cookie = get("sessionCookie").map_or(service_name.as_str(), str::trim);
                policy.sticky = Some(
                    StickySession::new(cookie)
                        .map_err(|e| policy_err("sessionCookie", cookie, e))?,
                );
            }
            Some(other) => {
                return Err(invalid(
                    "sessionType",
                    other,
                    "only sessionType=sticky-server is supported (a cookie set by the proxy); leave it out for round robin",
                ));
            }
        }
        let color = get("serviceColor").map(|c| validate_color(&service_name, c)).transpose()?;
        let users_secret = get("usersSecret").map(validate_users_secret).transpose()?;
        let users_pass_encrypted = parse_bool(get("usersPassEncrypted"), "usersPassEncrypted")?;
        if parse_bool(get("ignoreAuthorization"), "ignoreAuthorization")? {
            if let Some(given) = ["users", "usersSecret"].into_iter().find(|n| get(n).is_some()) {
                return Err(invalid(
                    "ignoreAuthorization",
                    "true",
                    &format!("it would ignore the service's own {given}; give one of them"),
                ));
            }
            policy.auth = Authentication::Ignored;
        } else if let (Some(secret), Some(_)) = (&users_secret, get("users")) {
            return Err(invalid(
                "usersSecret",
                secret,
                "the service's users are given in users too; give users or usersSecret, not both",
            ));
        }

        // What is stored and replayed: everything as sent, the paths normalised.
        let mut stored = params.clone();
        stored.insert("serviceName".to_owned(), service_name.clone());
        if !service_paths.is_empty() {
            let joined: Vec<&str> = service_paths.iter().map(PathPrefix::as_str).collect();
            stored.insert("servicePath".to_owned(), joined.join(","));
        }
        if !path_patterns.is_empty() {
            let joined: Vec<&str> = path_patterns.iter().map(PathPattern::as_str).collect();
            stored.insert("servicePath".to_owned(), joined.join(","));
        }
        if let Some(port) = port {
            stored.insert("port".to_owned(), port.to_string());
        }
        Ok(ReconfigureRequest {
            service_name,
            service_paths,
            path_patterns,
            conditions,
            port,
            domains,
            excluded,
            default_backend,
            color,
            policy,
            users_secret,
            users_pass_encrypted,
            ignored,
            params: stored,
        })
    }

    /// The answer's warnings about parameters that had no effect: why, for those Docker Flow
    /// Proxy knows and that mean nothing here; by name, for the others.
    pub fn ignored_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut unknown: Vec<&str> = Vec::new();
        for name in &self.ignored {
            match parity::read(name) {
                Reading::Known(Parameter { status: Status::Ignored { why }, .. })
                | Reading::Indexed(Parameter { status: Status::Ignored { why }, .. }) => {
                    warnings.push(format!("parameter {name} is ignored: {why}"));
                }
                Reading::Known(Parameter { status: Status::Refused { instead }, .. }) => {
                    warnings.push(format!(
                        "stored parameter {name} is ignored (it is refused in new calls: {instead})"
                    ));
                }
                Reading::Indexed(_) => warnings.push(format!(
                    "stored parameter {name} is ignored (it is refused in new calls: {})",
                    parity::INDEXED
                )),
                Reading::Known(Parameter { status: Status::Built { .. }, .. })
                | Reading::Unknown => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            warnings.push(format!(
                "parameters not supported by this proxy were ignored: {}",
                unknown.join(", ")
            ));
        }
        warnings
    }

    /// Drops `port` from the request and what is stored of it; returns it if there was one.
    pub(crate) fn drop_port(&mut self) -> Option<u16> {
        self.params.remove("port");
        self.port.take()
    }

    /// Names the service `name` (the same service in another case: Consul compares names
    /// ignoring case), here and in what is stored.
    pub(crate) fn rename(&mut self, name: &str) {
        if self.service_name != name {
            self.service_name = name.to_owned();
            self.params.insert("serviceName".to_owned(), name.to_owned());
        }
    }

    /// What the route table needs of this service. The `redirectFromDomain` hosts are routed
    /// to the service too (so their requests reach the rule that redirects them, and no other
    /// service can own them); `config` shows them apart from `serviceDomain`.
    pub fn spec(&self) -> ServiceSpec {
        let mut domains = self.domains.clone();
        if let Some(redirect) = &self.policy.domain_redirect {
            domains.extend(redirect.from.iter().cloned());
        }
        ServiceSpec {
            name: self.service_name.clone(),
            prefixes: self.service_paths.clone(),
            patterns: self.path_patterns.clone(),
            conditions: self.conditions.clone(),
            domains,
            excluded: self.excluded.clone(),
            default_backend: self.default_backend,
            policy: self.policy.clone(),
            color: self.color.clone(),
        }
    }

    /// The name the service's instances are looked up under: `<serviceName>-<serviceColor>`
    /// with a color, else `serviceName`.
    pub fn lookup_name(&self) -> String {
        match &self.color {
            Some(color) => format!("{}-{color}", self.service_name),
            None => self.service_name.clone(),
        }
    }
}

/// `usersSecret`: the suffix of a Docker secret's name (`dfp_users_<name>`), so letters,
/// digits, `-`, `_` and `.` only: never a path.
fn validate_users_secret(name: &str) -> Result<String, AdminError> {
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
fn validate_color(service: &str, color: &str) -> Result<String, AdminError> {
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

fn parse_policy<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<ServicePolicy, AdminError> {
    let mut policy = ServicePolicy::default();
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
        let users = Credential::parse_list(users, hashed)
            .map_err(|e| policy_err("users", "(hidden)", e))?;
        policy.auth = Authentication::Users { users: users.into(), from: UsersFrom::Service };
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
    Ok(policy)
}

fn parse_paths<'a>(
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
fn parse_patterns(kind: PathType, raw: &[String]) -> Result<Vec<PathPattern>, AdminError> {
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

fn condition_err(name: &'static str, value: &str, err: ConditionError) -> AdminError {
    invalid(name, value, &err.to_string())
}

fn parse_bool(value: Option<&str>, name: &'static str) -> Result<bool, AdminError> {
    match value.map(str::trim) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(invalid(name, v, "give true or false")),
    }
}

/// Docker Flow Proxy's timeouts: whole seconds (a unit suffix `s` is accepted).
fn parse_seconds(value: &str, name: &'static str) -> Result<Duration, AdminError> {
    match value.trim().trim_end_matches('s').parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(invalid(name, value, "give a number of seconds greater than 0")),
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> AdminError {
    AdminError::InvalidParameter { name, value: value.to_owned(), reason: reason.to_owned() }
}

fn policy_err(name: &'static str, value: &str, err: PolicyError) -> AdminError {
    invalid(name, value, &err.to_string())
}

fn policy(name: &'static str, value: &str, err: PolicyError) -> AdminError {
    policy_err(name, value, err)
}

/// Reads the `serviceName` of a remove.
pub(crate) fn service_name_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, AdminError> {
    let mut names = pairs.into_iter().filter(|(k, _)| *k == "serviceName").map(|(_, v)| v);
    let name = names.next();
    if let Some(other) = names.find(|other| Some(*other) != name) {
        return Err(given_twice("serviceName", name.unwrap_or_default(), other));
    }
    validate_service_name(name)
}

/// A single-valued parameter given twice with different values: reconfigure and remove
/// would have to pick one, and could pick differently.
fn given_twice(name: &'static str, first: &str, second: &str) -> AdminError {
    AdminError::InvalidParameter {
        name,
        value: second.to_owned(),
        reason: format!("it was given twice, as {first:?} and as {second:?}; give it once"),
    }
}

fn validate_service_name(name: Option<&str>) -> Result<String, AdminError> {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(AdminError::MissingParameter {
            name: "serviceName",
            example: "serviceName=books-ms",
        });
    }
    let valid_chars =
        name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_chars || name.len() > MAX_SERVICE_NAME {
        return Err(AdminError::InvalidParameter {
            name: "serviceName",
            value: name.to_owned(),
            reason: "use letters, digits, '-', '_' and '.' only, at most 255 of them".to_owned(),
        });
    }
    Ok(name.to_owned())
}

fn parse_port(value: &str) -> Result<u16, AdminError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(AdminError::InvalidParameter {
            name: "port",
            value: value.to_owned(),
            reason: "give a TCP port between 1 and 65535".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<ReconfigureRequest, AdminError> {
        ReconfigureRequest::from_pairs(query.iter().copied())
    }

    #[test]
    fn paths_may_be_repeated_or_comma_separated() {
        let r = parse(&[
            ("serviceName", "books-ms"),
            ("servicePath", "/api/v1/books, /api/v2/books/"),
            ("servicePath", "/books"),
            ("servicePath", "/books"),
        ])
        .expect("valid");
        let paths: Vec<_> = r.service_paths.iter().map(PathPrefix::as_str).collect();
        assert_eq!(paths, ["/api/v1/books", "/api/v2/books", "/books"]);
        assert_eq!(r.service_name, "books-ms");
        assert_eq!(r.port, None);
        assert!(r.ignored.is_empty());
        assert_eq!(r.params["servicePath"], "/api/v1/books,/api/v2/books,/books");
    }

    #[test]
    fn stored_params_replay_to_the_same_request() {
        let first = parse(&[
            ("serviceName", " books-ms "),
            ("servicePath", "/a/, /b"),
            ("port", "08080"),
            ("distribute", "true"),
        ])
        .expect("valid");
        let replayed = ReconfigureRequest::from_pairs(
            first.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .expect("stored parameters are valid");
        assert_eq!(replayed.params, first.params);
        assert_eq!(replayed.service_paths, first.service_paths);
        assert_eq!(first.params["port"], "8080");
    }

    #[test]
    fn unsupported_parameters_are_named_not_refused() {
        let r = parse(&[
            ("serviceName", "books-ms"),
            ("servicePath", "/b"),
            ("distribute", "true"),
            ("com.df.notify", "true"),
            ("distribute", "false"),
            ("userDef.1", "x"),
        ])
        .expect("extra parameters are accepted");
        assert_eq!(r.ignored, ["distribute", "com.df.notify", "userDef.1"]);
        let warnings = r.ignored_warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("parameter distribute is ignored: every replica"));
        assert!(warnings[1].starts_with("parameter userDef.1 is ignored: data for custom"));
        assert_eq!(
            warnings[2],
            "parameters not supported by this proxy were ignored: com.df.notify"
        );
    }

    #[test]
    fn refused_parameters_are_400s_that_say_what_instead() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "serviceGroup",
                "g",
                "parameter serviceGroup is refused: not supported yet (HTTP only)",
            ),
            ("srcPort", "8080", "parameter srcPort is refused: not supported yet (HTTP only)"),
            ("serviceCert", "-----BEGIN", "PUT /v1/docker-flow-proxy/cert"),
            ("servicePath.1", "/a", "parameter servicePath.1 is refused: indexed destinations"),
            ("port.2", "80", "parameter port.2 is refused: indexed destinations"),
            ("distribute.x", "1", ""),
        ];
        for (name, value, needle) in cases {
            let result = parse(&[("serviceName", "books"), ("servicePath", "/b"), (name, value)]);
            if needle.is_empty() {
                assert!(result.is_ok(), "{name}: {result:?}");
                continue;
            }
            let err = result.expect_err(name);
            assert_eq!(err.status(), 400, "{name}");
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn stored_calls_ignore_what_is_refused_now() {
        let pairs = [("serviceName", "books"), ("servicePath", "/b"), ("srcPort", "8080")];
        assert!(parse(&pairs).is_err());
        let r = ReconfigureRequest::from_stored_pairs(pairs).expect("restored as it was served");
        assert_eq!(r.ignored, ["srcPort"]);
        assert_eq!(r.params["srcPort"], "8080");
        assert!(r.ignored_warnings()[0].starts_with("stored parameter srcPort is ignored"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("servicePath", "/b")], "serviceName"),
            (&[("serviceName", ""), ("servicePath", "/b")], "serviceName"),
            (&[("serviceName", "a b"), ("servicePath", "/b")], "serviceName"),
            (&[("serviceName", "books")], "servicePath"),
            (&[("serviceName", "books"), ("servicePath", ",")], "servicePath"),
            (&[("serviceName", "books"), ("servicePath", "api")], "must start with '/'"),
            (&[("serviceName", "books"), ("servicePath", "/b"), ("port", "0")], "port"),
            (&[("serviceName", "books"), ("servicePath", "/b"), ("port", "http")], "port"),
            (&[("serviceName", "a"), ("servicePath", "/a"), ("serviceName", "0")], "given twice"),
            (
                &[("serviceName", "a"), ("servicePath", "/a"), ("port", "1"), ("port", "2")],
                "given twice",
            ),
        ];
        for (query, needle) in cases {
            let err = parse(query).expect_err("invalid");
            assert_eq!(err.status(), 400, "{query:?}");
            assert!(err.to_string().contains(needle), "{query:?}: {err}");
        }
    }

    #[test]
    fn access_options_are_read_and_bad_ones_named() {
        let r = parse(&[
            ("serviceName", "books"),
            ("servicePath", "/b"),
            ("allowedMethods", "get, HEAD"),
            ("deniedMethods", "DELETE"),
            ("denyHttp", "true"),
            ("allowedSources", "10.0.0.0/8, ::1"),
            ("deniedSources", "10.9.0.0/16"),
            ("serviceColor", "blue"),
        ])
        .expect("valid");
        assert!(r.ignored.is_empty());
        assert_eq!(r.policy.allowed_methods.to_string(), "GET,HEAD");
        assert_eq!(r.policy.denied_methods.to_string(), "DELETE");
        assert!(r.policy.deny_http);
        assert_eq!(r.policy.allowed_sources.to_string(), "10.0.0.0/8,::1/128");
        assert_eq!(r.policy.denied_sources.to_string(), "10.9.0.0/16");
        assert_eq!(r.lookup_name(), "books-blue");
        assert_eq!(r.spec().name, "books");
        let cases: &[(&str, &str, &str)] = &[
            ("allowedMethods", "GET,GE T", "\"GE T\""),
            ("deniedMethods", "(DELETE)", "(DELETE)"),
            ("denyHttp", "yes", "true or false"),
            ("allowedSources", "10.0.0.0/8,10.0.0.300", "10.0.0.300"),
            ("deniedSources", "10.1.0.0/8", "10.1.0.0/8"),
            ("deniedSources", "fe80::/129", "fe80::/129"),
            ("serviceColor", "bl ue", "serviceColor"),
        ];
        for (name, value, needle) in cases {
            let err = parse(&[("serviceName", "books"), ("servicePath", "/b"), (name, value)])
                .expect_err(value);
            assert_eq!(err.status(), 400);
            let message = err.to_string();
            assert!(message.contains(name) && message.contains(needle), "{message}");
        }
    }

    #[test]
    fn routing_conditions_are_read_stored_and_bad_ones_named() {
        let r = parse(&[
            ("serviceName", "books"),
            ("servicePath", "/api/, ^/x/[0-9]+$"),
            ("pathType", "path_reg"),
            ("serviceHeader", "X-Version:3,X-Env:prod"),
            ("userAgent", "iPhone,android"),
        ])
        .expect("valid");
        assert!(r.ignored.is_empty());
        assert!(r.service_paths.is_empty());
        let patterns: Vec<_> = r.path_patterns.iter().map(PathPattern::as_str).collect();
        assert_eq!(patterns, ["/api/", "^/x/[0-9]+$"]);
        assert_eq!(r.params["servicePath"], "/api/,^/x/[0-9]+$", "kept as given");
        assert_eq!(
            r.conditions.to_string(),
            "serviceHeader=x-env:prod,x-version:3 userAgent=android,iphone"
        );
        let replayed =
            parse(&r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
                .expect("stored params replay");
        assert_eq!(replayed.path_patterns, r.path_patterns);
        assert_eq!(replayed.conditions, r.conditions);
        assert_eq!(replayed.spec().patterns.len(), 2);

        let cases: &[(&str, &str, &str)] = &[
            ("pathType", "path_sub", "path_beg, path, path_end or path_reg"),
            ("serviceHeader", "X-Version", "Name:value"),
            ("serviceHeader", "X Version:3", "Name:value"),
            ("userAgent", "caf\u{e9}", "userAgent"),
        ];
        for (name, value, needle) in cases {
            let err = parse(&[("serviceName", "books"), ("servicePath", "/b"), (name, value)])
                .expect_err(value);
            assert_eq!(err.status(), 400);
            let message = err.to_string();
            assert!(message.contains(name) && message.contains(needle), "{message}");
        }
        let paths: &[(&str, &str, &str)] = &[
            ("path_reg", "^/a(", "regular expression"),
            ("path_reg", "a{1000}{1000}", "regular expression"),
            ("path", "api", "pathType path"),
            ("path_beg", "/a//b", "pathType path_beg"),
            ("path_end", "a b", "pathType path_end"),
        ];
        for (kind, path, needle) in paths {
            let err = parse(&[("serviceName", "b"), ("servicePath", path), ("pathType", kind)])
                .expect_err(path);
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn compression_is_read_and_bad_values_named() {
        let r = parse(&[
            ("serviceName", "books"),
            ("servicePath", "/b"),
            ("compressionAlgo", "gzip"),
            ("compressionType", "text/plain text/html"),
        ])
        .expect("valid");
        assert!(r.ignored.is_empty());
        let compression = r.policy.compression.expect("compresses");
        assert_eq!(compression.algo().token(), "gzip");
        assert_eq!(compression.types().collect::<Vec<_>>(), ["text/plain", "text/html"]);
        let off =
            parse(&[("serviceName", "b"), ("servicePath", "/b"), ("compressionAlgo", "identity")]);
        assert!(off.expect("valid").policy.compression.is_none());
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (&[("compressionAlgo", "br")], "compressionAlgo", "gzip"),
            (
                &[("compressionAlgo", "gzip"), ("compressionType", "text")],
                "compressionType",
                "\"text\"",
            ),
            (&[("compressionType", "text/html")], "compressionType", "compressionAlgo=gzip"),
        ];
        for (extra, name, needle) in cases {
            let mut query = vec![("serviceName", "books"), ("servicePath", "/b")];
            query.extend_from_slice(extra);
            let err = parse(&query).expect_err("invalid");
            assert_eq!(err.status(), 400);
            let message = err.to_string();
            assert!(message.contains(name) && message.contains(needle), "{message}");
        }
        let paths: &[(&str, &str, &str)] = &[
            ("path_reg", "^/a(", "regular expression"),
            ("path_reg", "a{1000}{1000}", "regular expression"),
            ("path", "api", "pathType path"),
            ("path_beg", "/a//b", "pathType path_beg"),
            ("path_end", "a b", "pathType path_end"),
        ];
        for (kind, path, needle) in paths {
            let err = parse(&[("serviceName", "b"), ("servicePath", path), ("pathType", kind)])
                .expect_err(path);
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn reconfigure_and_remove_read_a_repeated_service_name_alike() {
        let twice = [("serviceName", "a"), ("servicePath", "/a"), ("serviceName", "0")];
        assert!(parse(&twice).is_err());
        assert!(service_name_from_pairs(twice).is_err());
        let same = [("serviceName", "a"), ("servicePath", "/a"), ("serviceName", "a")];
        assert_eq!(parse(&same).expect("the same value twice").service_name, "a");
        assert_eq!(service_name_from_pairs(same).expect("the same value twice"), "a");
    }

    #[test]
    fn users_secret_and_ignore_authorization() {
        let base = [("serviceName", "books"), ("servicePath", "/b")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut q = base.to_vec();
            q.extend_from_slice(extra);
            parse(&q)
        };
        let open = with(&[]).expect("valid");
        assert!(matches!(open.policy.auth, Authentication::Open), "resolved by the controller");
        let secret =
            with(&[("usersSecret", " monitoring "), ("usersPassEncrypted", "true")]).expect("ok");
        assert_eq!(secret.users_secret.as_deref(), Some("monitoring"));
        assert!(secret.users_pass_encrypted);
        assert!(matches!(secret.policy.auth, Authentication::Open));
        assert!(secret.ignored.is_empty());
        let ignored = with(&[("ignoreAuthorization", "true")]).expect("valid");
        assert!(matches!(ignored.policy.auth, Authentication::Ignored));
        let own = with(&[("users", "a:1,b:2")]).expect("valid");
        assert_eq!(own.policy.auth.users().len(), 2);
        assert_eq!(own.policy.auth.from(), Some(&UsersFrom::Service));

        for (bad, name, hidden) in [
            (&[("usersSecret", "../etc/passwd")][..], "usersSecret", ""),
            (&[("usersSecret", "a b")][..], "usersSecret", ""),
            (&[("usersSecret", "s"), ("users", "a:1")][..], "usersSecret", ""),
            (&[("ignoreAuthorization", "yes")][..], "ignoreAuthorization", ""),
            (&[("ignoreAuthorization", "true"), ("users", "a:1")][..], "ignoreAuthorization", ""),
            (&[("ignoreAuthorization", "1"), ("usersSecret", "s")][..], "ignoreAuthorization", ""),
            (&[("users", "a:1,s3cret")][..], "users", "s3cret"),
        ] {
            match with(bad) {
                Err(err @ AdminError::InvalidParameter { name: got, .. }) => {
                    assert_eq!(got, name, "{bad:?}");
                    assert!(hidden.is_empty() || !err.to_string().contains(hidden), "{err}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn sticky_sessions_redirects_and_search_replace_pairs() {
        let base = [("serviceName", "books"), ("servicePath", "/b")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut q = base.to_vec();
            q.extend_from_slice(extra);
            parse(&q)
        };
        let sticky = with(&[("sessionType", "sticky-server")]).expect("valid");
        assert_eq!(sticky.policy.sticky.as_ref().map(StickySession::cookie), Some("books"));
        let named =
            with(&[("sessionType", "sticky-server"), ("sessionCookie", "SRV")]).expect("valid");
        assert_eq!(named.policy.sticky.as_ref().map(StickySession::cookie), Some("SRV"));
        let when = with(&[("redirectWhenHttpProto", "true"), ("httpsRedirectCode", "301")])
            .expect("valid");
        assert_eq!(when.policy.proto_redirect, Some((ProtoRedirect::WhenHttp, 301)));
        assert_eq!(when.policy.https_redirect, None);
        let unless =
            with(&[("redirectUnlessHttpsProto", "true"), ("redirectWhenHttpProto", "true")])
                .expect("valid");
        assert_eq!(unless.policy.proto_redirect, Some((ProtoRedirect::UnlessHttps, 302)));
        let moved =
            with(&[("serviceDomain", "new.com"), ("redirectFromDomain", "old.com,*.old.com")])
                .expect("valid");
        let redirect = moved.policy.domain_redirect.as_ref().expect("redirect");
        assert_eq!(redirect.to(), "new.com");
        assert_eq!(moved.spec().domains.len(), 3, "redirected hosts are routed to the service");
        let pairs = with(&[(
            "reqPathSearchReplace",
            "/replace-something/,/with-else/:/replace-with-empty,:/foo,/bar",
        )])
        .expect("DFP's documented example");
        assert_eq!(pairs.policy.search_replace.len(), 3);
        assert_eq!(pairs.policy.search_replace[1].replacement(), "");

        for (bad, name) in [
            (&[("sessionType", "sticky-client")][..], "sessionType"),
            (&[("sessionCookie", "X")][..], "sessionCookie"),
            (&[("sessionType", "sticky-server"), ("sessionCookie", "a b")][..], "sessionCookie"),
            (&[("redirectWhenHttpProto", "yes")][..], "redirectWhenHttpProto"),
            (&[("redirectFromDomain", "old.com")][..], "redirectFromDomain"),
            (
                &[("serviceDomain", "*.new.com"), ("redirectFromDomain", "old.com")][..],
                "redirectFromDomain",
            ),
            (
                &[("serviceDomain", "new.com"), ("redirectFromDomain", "new.com")][..],
                "redirectFromDomain",
            ),
            (&[("reqPathSearchReplace", "/no-comma")][..], "reqPathSearchReplace"),
            (&[("reqPathSearchReplace", "(,x")][..], "reqPathSearchReplace"),
            (
                &[("redirectWhenHttpProto", "true"), ("httpsRedirectCode", "200")][..],
                "httpsRedirectCode",
            ),
        ] {
            match with(bad) {
                Err(AdminError::InvalidParameter { name: got, .. }) => {
                    assert_eq!(got, name, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
