//! Reconfigure parameters as Docker Flow Proxy names them, read from a query string.
//!
//! Split by job: this file holds the request itself (what a call reads into, how it is
//! stored and replayed, and the `serviceName` rules shared with remove); [`policy`] holds the
//! per-option parsers (access, redirects, rewrites, users, headers, timeouts, compression)
//! that turn one parameter's value into its part of the request; `tests` holds the unit
//! tests. `params_fuzz` (a sibling module) checks the whole reading against a model.

mod policy;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use dfp_routing::{
    Authentication, ConditionError, Domain, DomainRedirect, PathPattern, PathPrefix, PathType,
    RouteConditions, ServicePolicy, ServiceSpec, StickySession, UsersEntry,
};

use self::policy::{
    condition_err, invalid, parse_bool, parse_paths, parse_patterns, parse_policy, parse_port,
    policy, policy_err, validate_color, validate_users_secret,
};
use crate::parity::{self, Parameter, Reading, Status};
use crate::AdminError;

/// Longest service name accepted: Consul and DNS names are far shorter in practice.
pub(super) const MAX_SERVICE_NAME: usize = 255;

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
    /// The `users` entries, in order, when one is a bare name (Docker Flow Proxy's `users=alice`):
    /// the controller gives each bare name the password of the same user in the `usersSecret`,
    /// else in the global users. Empty when every entry has its password (`policy` holds them).
    /// Only the bare name is stored (in `params`), never the password found for it.
    pub users_entries: Vec<UsersEntry>,
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
        let (mut policy, users_entries) = parse_policy(&get)?;
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
        } else if let (Some(secret), Some(_), true) =
            (&users_secret, get("users"), users_entries.is_empty())
        {
            // With bare names in users the secret is where their passwords are; without, it
            // would be unused.
            return Err(invalid(
                "usersSecret",
                secret,
                "the service's users are all given with passwords in users; give users or \
                 usersSecret, or leave out the passwords of the users entries to take from the secret",
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
            users_entries,
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
