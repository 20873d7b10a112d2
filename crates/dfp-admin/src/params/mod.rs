//! Reconfigure parameters as Docker Flow Proxy names them, read from a query string.
//!
//! Split by job: this file holds the request itself (what a call reads into, how it is
//! stored and replayed, and the `serviceName` rules shared with remove); [`policy`] holds the
//! per-option parsers (access, redirects, rewrites, users, headers, timeouts, compression)
//! that turn one parameter's value into its part of the request; [`tcp`] the TCP service's
//! parameters (`reqMode=tcp`, `srcPort`); `tests` holds the unit
//! tests. `params_fuzz` (a sibling module) checks the whole reading against a model.

mod policy;
mod stored;
mod tcp;
#[cfg(test)]
mod tests;

pub use self::stored::CallParams;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use dfp_routing::{
    Authentication, ConditionError, Domain, DomainRedirect, PathPattern, PathPrefix, PathType,
    RouteConditions, ServicePolicy, ServiceSpec, StickySession, StreamTls, UsersEntry,
};

use self::policy::{
    condition_err, invalid, parse_bool, parse_paths, parse_patterns, parse_policy, parse_port,
    parse_seconds, policy, policy_err, validate_color, validate_users_secret,
};
use self::tcp::{forget_tcp_only_of_http, tcp_port};
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
    /// `reqMode=tcp` with `srcPort`: a TCP service, reached by every connection to this
    /// port of the proxy (its paths, hosts and conditions are empty).
    pub tcp_port: Option<u16>,
    /// With `tcp_port`: how its connections are taken (`reqMode=tcp` as they are, `sni`
    /// passed through by TLS server name, `tcp` with `serviceDomain` TLS ended here).
    pub stream_tls: StreamTls,
    /// `serviceDomain`: the hosts the paths apply to (empty: any host); for a TCP service
    /// chosen by TLS server name, those names.
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
    /// `letsEncrypt`: the proxy obtains and renews a certificate for each exact
    /// `serviceDomain` from its ACME CA (when ACME is on; wildcards are skipped).
    pub lets_encrypt: bool,
    /// Parameters that were sent but that this proxy does not act on, by name.
    pub ignored: Vec<String>,
    /// Every parameter of the call (the supported ones normalised), as stored in Consul KV or
    /// the state file, so a restore or another replica replays exactly this call. Empty in
    /// [`ReconfigureRequest::more_destinations`]: the first destination holds the call.
    pub params: CallParams,
    /// Which destination this is: 0 for the unindexed parameters, N for those ending in `.N`
    /// (Docker Flow Proxy's indexed `servicePath.N`, `port.N`...).
    pub index: u8,
    /// The service's further destinations, in index order: each read from its `.N`
    /// parameters over the unindexed ones, with its own paths, hosts, conditions, options and
    /// (standalone) port. The fields above are the first destination's; `serviceName`,
    /// `serviceColor` and `isDefaultBackend` are the service's and the same in all.
    pub more_destinations: Vec<ReconfigureRequest>,
}

/// Most destinations one service may have: Docker Flow Proxy reads `.1` to `.10`.
pub(crate) const MAX_DESTINATIONS: u8 = 10;

/// Built parameters that belong to the service as a whole; their indexed form is refused.
const SERVICE_WIDE: [&str; 3] = ["serviceName", "serviceColor", "isDefaultBackend"];

/// The `N` of an indexed parameter `key` (`<name>.<N>`), 1 to [`MAX_DESTINATIONS`].
fn destination_index(key: &str, name: &'static str) -> Result<u8, AdminError> {
    let digits = key.rsplit_once('.').map_or("", |(_, n)| n);
    match digits.parse::<u8>() {
        Ok(n) if (1..=MAX_DESTINATIONS).contains(&n) && !digits.starts_with('0') => Ok(n),
        _ => Err(AdminError::InvalidParameter {
            name,
            value: key.to_owned(),
            reason: format!(
                "destinations are numbered 1 to {MAX_DESTINATIONS} ({name}.1 ... \
                 {name}.{MAX_DESTINATIONS}), as Docker Flow Proxy numbers them"
            ),
        }),
    }
}

/// A destination's failure, said to be that destination's.
fn in_destination(index: u8, err: AdminError) -> AdminError {
    AdminError::InDestination { index, source: Box::new(err) }
}

/// The entries of a comma-separated list, trimmed.
fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split(',').map(str::trim).map(str::to_owned)
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
        // `servicePath` values by destination index (0: unindexed); they may be repeated.
        let mut raw_paths: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        let mut indexes: BTreeSet<u8> = BTreeSet::new();
        let mut ignored: Vec<String> = Vec::new();
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in pairs {
            let reading = parity::read(key);
            let index = match reading {
                Reading::Indexed(Parameter { name, status: Status::Built { .. } }) => {
                    let index = destination_index(key, name)?;
                    if SERVICE_WIDE.contains(&name) {
                        if refuse {
                            return Err(AdminError::RefusedParameter {
                                name: key.to_owned(),
                                instead: "it is one per service, not per destination: give it \
                                          without the index",
                            });
                        }
                        None
                    } else {
                        indexes.insert(index);
                        Some((name, index))
                    }
                }
                _ => None,
            };
            if key == "servicePath" || index.is_some_and(|(name, _)| name == "servicePath") {
                let at = index.map_or(0, |(_, index)| index);
                raw_paths.entry(at).or_default().extend(split_list(value));
                continue;
            }
            let built = match reading {
                Reading::Known(Parameter { name, status: Status::Built { .. } }) => Some(name),
                Reading::Known(Parameter { name, status: Status::Refused { instead } })
                | Reading::Indexed(Parameter { name, status: Status::Refused { instead } })
                    if refuse =>
                {
                    let name = if matches!(reading, Reading::Known(_)) { name } else { key };
                    return Err(AdminError::RefusedParameter { name: name.to_owned(), instead });
                }
                Reading::Indexed(Parameter { name, .. }) if index.is_some() => Some(name),
                Reading::Known(_) | Reading::Indexed(_) | Reading::Unknown => None,
            };
            if built.is_none() && !ignored.iter().any(|seen| seen == key) {
                ignored.push(key.to_owned());
            }
            if let Some(previous) = params.get(key).filter(|previous| *previous != value) {
                if let Some(name) = built {
                    let err = given_twice(name, previous, value);
                    return Err(match index {
                        Some((_, index)) => in_destination(index, err),
                        None => err,
                    });
                }
            }
            params.insert(key.to_owned(), value.to_owned());
        }
        for (expected, &index) in (1..).zip(&indexes) {
            if index != expected {
                return Err(AdminError::InvalidParameter {
                    name: "destination index",
                    value: index.to_string(),
                    reason: format!(
                        "there are parameters ending in .{index} but none ending in \
                         .{expected}; number the destinations from 1 without gaps (Docker \
                         Flow Proxy stops reading at the first missing one)"
                    ),
                });
            }
        }
        if !refuse {
            forget_tcp_only_of_http(&mut params, &mut ignored);
        }
        let service_name = validate_service_name(params.get("serviceName").map(String::as_str))?;

        // Destination 0 (the unindexed parameters) exists on its own when it has paths, or
        // when there is no indexed one; each indexed one reads its own parameters over the
        // unindexed ones (Docker Flow Proxy's fallback).
        let unindexed_paths = raw_paths.get(&0).is_some_and(|p| p.iter().any(|p| !p.is_empty()));
        let mut wanted: Vec<u8> = indexes.iter().copied().collect();
        if unindexed_paths || wanted.is_empty() {
            wanted.insert(0, 0);
        }
        let mut destinations = Vec::with_capacity(wanted.len());
        for index in wanted {
            let own = |name: &str| {
                (index > 0)
                    .then(|| params.get(&format!("{name}.{index}")))
                    .flatten()
                    .map(String::as_str)
                    .filter(|v| !v.trim().is_empty())
            };
            // A destination's own authentication replaces the service's instead of meeting
            // it: `ignoreAuthorization.2=true` opens destination 2 of a service with users
            // (Docker Flow Proxy's use of it), `users.2` protects one of an open service.
            let opens = own("ignoreAuthorization")
                .is_some_and(|v| parse_bool(Some(v), "ignoreAuthorization").unwrap_or(false));
            let protects = own("users").is_some() || own("usersSecret").is_some();
            let get = |name: &str| {
                let inherited = match name {
                    "users" | "usersSecret" => !opens,
                    "ignoreAuthorization" => !protects,
                    _ => true,
                };
                own(name).or_else(|| {
                    params
                        .get(name)
                        .filter(|_| inherited)
                        .map(String::as_str)
                        .filter(|v| !v.trim().is_empty())
                })
            };
            let paths = raw_paths
                .get(&index)
                .filter(|p| p.iter().any(|p| !p.is_empty()))
                .or_else(|| raw_paths.get(&0))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let destination = Self::destination(&service_name, &get, paths).map_err(|err| {
                if index > 0 {
                    in_destination(index, err)
                } else {
                    err
                }
            })?;
            destinations.push((index, destination));
        }

        // What is stored and replayed: everything as sent, the paths normalised.
        let mut stored = params;
        stored.insert("serviceName".to_owned(), service_name.clone());
        for (index, destination) in &destinations {
            if !raw_paths.contains_key(index) {
                continue;
            }
            let key = match index {
                0 => "servicePath".to_owned(),
                n => format!("servicePath.{n}"),
            };
            let joined: Vec<&str> = destination
                .service_paths
                .iter()
                .map(PathPrefix::as_str)
                .chain(destination.path_patterns.iter().map(PathPattern::as_str))
                .collect();
            if !joined.is_empty() {
                stored.insert(key, joined.join(","));
            }
        }
        if let Some(port) =
            destinations.first().and_then(|(index, d)| d.port.filter(|_| *index == 0))
        {
            stored.insert("port".to_owned(), port.to_string());
        }
        if !indexes.is_empty() {
            if let Some((index, d)) = destinations.iter().find(|(_, d)| d.tcp_port.is_some()) {
                let err = invalid(
                    "reqMode",
                    "tcp",
                    "a TCP service has one destination (one srcPort, no indexed parameters \
                     such as srcPort.N); route each port as a service of its own",
                );
                debug_assert!(d.tcp_port.is_some());
                return Err(if *index > 0 { in_destination(*index, err) } else { err });
            }
        }
        let mut destinations = destinations.into_iter();
        let (first_index, mut first) =
            destinations.next().unwrap_or_else(|| unreachable!("at least one destination"));
        first.index = first_index;
        first.more_destinations = destinations
            .map(|(index, mut d)| {
                d.index = index;
                d.default_backend = false;
                d
            })
            .collect();
        // The collect reuses the list the destinations came in, first one included: without
        // this, a service of one destination kept an empty list of room for one (~0.9 kB).
        first.more_destinations.shrink_to_fit();
        first.ignored = ignored;
        first.params = stored.into();
        Ok(first)
    }

    /// Reads one destination from its parameters (`get`: a destination's own over the
    /// unindexed ones) and its `servicePath` values; `ignored`, `params` and the further
    /// destinations are the caller's to fill in.
    fn destination<'a>(
        service_name: &str,
        get: &impl Fn(&str) -> Option<&'a str>,
        raw_paths: &[String],
    ) -> Result<Self, AdminError> {
        let service_name = service_name.to_owned();
        let default_backend = parse_bool(get("isDefaultBackend"), "isDefaultBackend")?;
        let path_type = get("pathType")
            .map(PathType::parse)
            .transpose()
            .map_err(|e| condition_err("pathType", get("pathType").unwrap_or_default(), e))?;
        let (service_paths, path_patterns) = match path_type {
            None => (parse_paths(raw_paths.iter().map(String::as_str), "servicePath")?, Vec::new()),
            Some(kind) => (Vec::new(), parse_patterns(kind, raw_paths)?),
        };
        let conditions = RouteConditions::parse(get("serviceHeader"), get("userAgent")).map_err(
            |e| match e {
                ConditionError::BadUserAgent(_) => {
                    condition_err("userAgent", get("userAgent").unwrap_or_default(), e)
                }
                _ => condition_err("serviceHeader", get("serviceHeader").unwrap_or_default(), e),
            },
        )?;
        let has_domains =
            get("serviceDomain").is_some_and(|d| d.split(',').any(|d| !d.trim().is_empty()));
        let (tcp_port, stream_tls) =
            match tcp_port(get, !raw_paths.iter().all(|p| p.trim().is_empty()), has_domains)? {
                Some((port, how)) => (Some(port), how),
                None => (None, StreamTls::Plain),
            };
        if service_paths.is_empty()
            && path_patterns.is_empty()
            && !default_backend
            && tcp_port.is_none()
        {
            return Err(AdminError::MissingParameter {
                name: "servicePath",
                example:
                    "servicePath=/api/v1/books (or reqMode=tcp&srcPort=6379 for a TCP service)",
            });
        }
        let port = get("port").map(parse_port).transpose()?;
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
        let (mut policy, users_entries) = parse_policy(get)?;
        match (get("timeoutClient"), tcp_port) {
            (Some(v), Some(_)) => policy.client_timeout = Some(parse_seconds(v, "timeoutClient")?),
            (Some(v), None) => {
                return Err(invalid(
                    "timeoutClient",
                    v,
                    "it is a TCP service's client timeout (reqMode=tcp); the HTTP client \
                     timeout is global: --client-timeout (DFP_CLIENT_TIMEOUT)",
                ))
            }
            (None, _) => {}
        }
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

        let lets_encrypt = parse_bool(get("letsEncrypt"), "letsEncrypt")?;
        // (A TCP service refuses letsEncrypt with the other HTTP-only parameters.)
        if lets_encrypt && !domains.iter().any(|d| matches!(d, Domain::Exact(_))) {
            return Err(invalid(
                "letsEncrypt",
                "true",
                "it needs serviceDomain with at least one exact name to certify (a wildcard \
                 name needs the DNS-01 challenge, which this proxy does not do)",
            ));
        }

        Ok(ReconfigureRequest {
            service_name,
            service_paths,
            path_patterns,
            conditions,
            port,
            tcp_port,
            stream_tls,
            domains,
            excluded,
            default_backend,
            color,
            policy,
            users_secret,
            users_pass_encrypted,
            users_entries,
            lets_encrypt,
            ignored: Vec::new(),
            params: CallParams::default(),
            index: 0,
            more_destinations: Vec::new(),
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
                Reading::Known(Parameter { status: Status::Refused { instead }, .. })
                | Reading::Indexed(Parameter { status: Status::Refused { instead }, .. }) => {
                    warnings.push(format!(
                        "stored parameter {name} is ignored (it is refused in new calls: {instead})"
                    ));
                }
                Reading::Indexed(Parameter { status: Status::Built { .. }, .. }) => {
                    warnings.push(format!(
                        "stored parameter {name} is ignored (it is one per service, not per \
                         destination: give it without the index)"
                    ))
                }
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

    /// Drops `port` (and every `port.N`) from the request and what is stored of it; returns
    /// the first destination's if there was one.
    pub(crate) fn drop_port(&mut self) -> Option<u16> {
        self.params.retain(|key, _| key != "port" && !key.starts_with("port."));
        let first = self.port.take();
        let others = self.more_destinations.iter_mut().filter_map(|d| d.port.take());
        others.fold(first, |found, port| found.or(Some(port)))
    }

    /// Names the service `name` (the same service in another case: Consul compares names
    /// ignoring case), here and in what is stored.
    pub(crate) fn rename(&mut self, name: &str) {
        if self.service_name != name {
            self.service_name = name.to_owned();
            self.params.insert("serviceName".to_owned(), name.to_owned());
            for destination in &mut self.more_destinations {
                destination.service_name = name.to_owned();
            }
        }
    }

    /// The service's destinations, the first first (most services have one).
    pub fn destinations(&self) -> impl Iterator<Item = &ReconfigureRequest> {
        std::iter::once(self).chain(&self.more_destinations)
    }

    /// Applies `f` to each destination, the first first; a failure of a further destination
    /// is said to be that destination's.
    pub(crate) fn for_each_destination<T>(
        &mut self,
        mut f: impl FnMut(&mut ReconfigureRequest) -> Result<T, AdminError>,
    ) -> Result<Vec<T>, AdminError> {
        let mut apply = |destination: &mut ReconfigureRequest| {
            let index = destination.index;
            f(destination).map_err(|err| if index > 0 { in_destination(index, err) } else { err })
        };
        let mut out = vec![apply(self)?];
        for destination in &mut self.more_destinations {
            out.push(apply(destination)?);
        }
        Ok(out)
    }

    /// What the route table needs of each destination, with its instances: those found for
    /// the service, at the destination's own `port` where it has one that differs (standalone
    /// mode resolves the name once; a destination's port only changes where it connects).
    pub fn destination_specs(
        &self,
        instances: &[SocketAddr],
    ) -> Vec<(ServiceSpec, Vec<SocketAddr>)> {
        self.destinations()
            .map(|d| {
                let at = match d.port {
                    Some(port) if d.port != self.port => {
                        instances.iter().map(|addr| SocketAddr::new(addr.ip(), port)).collect()
                    }
                    _ => instances.to_vec(),
                };
                (d.spec(), at)
            })
            .collect()
    }

    /// What the route table needs of this destination. The `redirectFromDomain` hosts are routed
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
            index: self.index,
            tcp_port: self.tcp_port,
            stream_tls: self.stream_tls,
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
