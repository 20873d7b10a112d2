//! Reconfigure parameters as Docker Flow Proxy names them, read from a query string.

use std::collections::BTreeMap;

use std::time::Duration;

use dfp_routing::{
    Compression, Credential, Domain, HeaderEdits, MethodList, PathPrefix, PathRewrite, PolicyError,
    ServicePolicy, ServiceSpec, SourceList,
};

use crate::AdminError;

/// Longest service name accepted: Consul and DNS names are far shorter in practice.
const MAX_SERVICE_NAME: usize = 255;

/// A validated reconfigure request.
#[derive(Debug, Clone)]
pub struct ReconfigureRequest {
    /// `serviceName`: the Consul service (or, standalone, the DNS name) to route to.
    pub service_name: String,
    /// `servicePath`: the paths the service owns; repeated or comma-separated.
    pub service_paths: Vec<PathPrefix>,
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
    /// `httpsOnly`, `reqPathSearch`, `users`, header edits, timeouts.
    pub policy: ServicePolicy,
    /// Parameters that were sent but that this proxy does not act on, by name.
    pub ignored: Vec<String>,
    /// Every parameter of the call (the supported ones normalised), as stored in Consul KV or
    /// the state file, so a restore or another replica replays exactly this call.
    pub params: BTreeMap<String, String>,
}

/// The parameters this proxy acts on (Docker Flow Proxy's names).
const SUPPORTED: &[&str] = &[
    "serviceName",
    "servicePath",
    "port",
    "serviceDomain",
    "servicePathExclude",
    "isDefaultBackend",
    "httpsOnly",
    "httpsRedirectCode",
    "reqPathSearch",
    "reqPathReplace",
    "users",
    "usersPassEncrypted",
    "addReqHeader",
    "setReqHeader",
    "delReqHeader",
    "addResHeader",
    "setResHeader",
    "delResHeader",
    "timeoutServer",
    "timeoutTunnel",
    "reqMode",
    "allowedMethods",
    "deniedMethods",
    "denyHttp",
    "allowedSources",
    "deniedSources",
    "serviceColor",
    "verifyClientSsl",
    "compressionAlgo",
    "compressionType",
];

impl ReconfigureRequest {
    /// Reads a reconfigure from `key=value` pairs (a decoded query string).
    ///
    /// Every supported parameter is validated; any other parameter is kept by name in
    /// [`ReconfigureRequest::ignored`] so the answer can say it had no effect. Tools such as
    /// Docker Flow Swarm Listener send extra parameters, so an unknown one is not an error.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, AdminError> {
        let mut raw_paths = Vec::new();
        let mut ignored: Vec<String> = Vec::new();
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in pairs {
            if key == "servicePath" {
                raw_paths.extend(value.split(',').map(str::trim).map(str::to_owned));
                continue;
            }
            if !SUPPORTED.contains(&key) && !ignored.iter().any(|seen| seen == key) {
                ignored.push(key.to_owned());
            }
            if let Some(previous) = params.get(key).filter(|previous| *previous != value) {
                if let Some(name) = SUPPORTED.iter().find(|name| **name == key) {
                    return Err(given_twice(name, previous, value));
                }
            }
            params.insert(key.to_owned(), value.to_owned());
        }
        let get =
            |name: &str| params.get(name).map(String::as_str).filter(|v| !v.trim().is_empty());

        let service_name = validate_service_name(get("serviceName"))?;
        let default_backend = parse_bool(get("isDefaultBackend"), "isDefaultBackend")?;
        let service_paths = parse_paths(raw_paths.iter().map(String::as_str), "servicePath")?;
        if service_paths.is_empty() && !default_backend {
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
        let policy = parse_policy(&get)?;
        let color = get("serviceColor").map(|c| validate_color(&service_name, c)).transpose()?;

        // What is stored and replayed: everything as sent, the paths normalised.
        let mut stored = params.clone();
        stored.insert("serviceName".to_owned(), service_name.clone());
        if !service_paths.is_empty() {
            let joined: Vec<&str> = service_paths.iter().map(PathPrefix::as_str).collect();
            stored.insert("servicePath".to_owned(), joined.join(","));
        }
        if let Some(port) = port {
            stored.insert("port".to_owned(), port.to_string());
        }
        Ok(ReconfigureRequest {
            service_name,
            service_paths,
            port,
            domains,
            excluded,
            default_backend,
            color,
            policy,
            ignored,
            params: stored,
        })
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

    /// What the route table needs of this service.
    pub fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            name: self.service_name.clone(),
            prefixes: self.service_paths.clone(),
            domains: self.domains.clone(),
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
    if parse_bool(get("httpsOnly"), "httpsOnly")? {
        let code = match get("httpsRedirectCode") {
            Some(raw) => raw
                .trim()
                .parse::<u16>()
                .ok()
                .and_then(|c| ServicePolicy::redirect_code(c).ok())
                .ok_or_else(|| {
                    invalid("httpsRedirectCode", raw, "give 301, 302, 303, 307 or 308")
                })?,
            None => 302,
        };
        policy.https_redirect = Some(code);
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
    if let Some(users) = get("users") {
        let hashed = parse_bool(get("usersPassEncrypted"), "usersPassEncrypted")?;
        for entry in users.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (user, password) = entry.split_once(':').ok_or_else(|| {
                invalid("users", "(hidden)", "give user:password entries separated by commas")
            })?;
            policy.users.push(
                Credential::new(user, password, hashed)
                    .map_err(|e| policy_err("users", user, e))?,
            );
        }
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
            ("sessionType", "sticky-server"),
            ("distribute", "true"),
        ])
        .expect("extra parameters are accepted");
        assert_eq!(r.ignored, ["distribute", "sessionType"]);
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
}
