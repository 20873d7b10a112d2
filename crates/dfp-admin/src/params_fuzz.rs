//! Generated-input tests of the reconfigure parameter parser (`params.rs`): any query, never a
//! panic; what it accepts holds what the module promises (valid, normal `PathPrefix`es,
//! domains that parse back to themselves, a port above 0, a supported redirect code, ...);
//! and it agrees with every second reading of the same parameters: a plain re-reading written
//! here, the stored call read again (restore, other replicas), the query string the admin
//! API decodes, and the `serviceName` a remove reads. How to run them: FUZZING.md.

// The generators (names, values, calls, query strings) are in params_fuzz/generators.rs.
mod generators;
// The case count is read the same way as dfp-proxy's targets, from the same file.
#[path = "../../dfp-proxy/src/fuzz/harness.rs"]
mod harness;

use self::generators::*;

use std::collections::{BTreeMap, BTreeSet};

use dfp_routing::{Domain, PathPrefix, StreamTls};
use proptest::prelude::*;

use crate::params::{service_name_from_pairs, ReconfigureRequest};

/// The parameters the proxy acts on, written out again here (`parity.rs` holds them as its
/// `Built` rows; `built_rows_are_these` checks the two agree). A name built there must be
/// added here too.
const SUPPORTED: &[&str] = &[
    "serviceName",
    "servicePath",
    "port",
    "serviceDomain",
    "servicePathExclude",
    "isDefaultBackend",
    "letsEncrypt",
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
    "timeoutClient",
    "srcPort",
    "reqMode",
    "allowedMethods",
    "deniedMethods",
    "denyHttp",
    "allowedSources",
    "deniedSources",
    "serviceColor",
    "pathType",
    "serviceHeader",
    "userAgent",
    "ignoreAuthorization",
    "usersSecret",
    "sessionType",
    "sessionCookie",
    "redirectWhenHttpProto",
    "redirectUnlessHttpsProto",
    "redirectFromDomain",
    "reqPathSearchReplace",
    "verifyClientSsl",
    "compressionAlgo",
    "compressionType",
    "sendProxyProtocol",
    "instanceMaxConn",
    "timeoutQueue",
    "maxQueue",
];

type Pairs = Vec<(String, String)>;

#[test]
fn built_rows_are_these() {
    let mut built: Vec<&str> = crate::parity::PARAMETERS
        .iter()
        .filter(|p| crate::parity::is_built(p.name))
        .map(|p| p.name)
        .collect();
    let mut here = SUPPORTED.to_vec();
    built.sort_unstable();
    here.sort_unstable();
    assert_eq!(built, here, "parity.rs's Built rows and this SUPPORTED list differ");
}

fn borrowed(pairs: &Pairs) -> impl Iterator<Item = (&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// A request, in a form two readings can be compared in. Passwords are not visible (a
/// `Credential` shows only its user); everything else is.
#[derive(Debug, PartialEq)]
struct Read {
    name: String,
    paths: Vec<String>,
    port: Option<u16>,
    domains: Vec<String>,
    excluded: Vec<String>,
    default_backend: bool,
    ignored: BTreeSet<String>,
    params: BTreeMap<String, String>,
    policy: String,
    /// The further destinations, whole.
    destinations: Vec<String>,
}

fn read(pairs: &Pairs) -> Result<Read, String> {
    ReconfigureRequest::from_pairs(borrowed(pairs)).map(|r| summary(&r)).map_err(|e| e.to_string())
}

fn summary(r: &ReconfigureRequest) -> Read {
    let strings = |paths: &[PathPrefix]| paths.iter().map(|p| p.as_str().to_owned()).collect();
    Read {
        name: r.service_name.clone(),
        paths: strings(&r.service_paths),
        port: r.port,
        domains: r.domains.iter().map(Domain::to_string).collect(),
        excluded: strings(&r.excluded),
        default_backend: r.default_backend,
        ignored: r.ignored.iter().cloned().collect(),
        params: r.params.to_map(),
        policy: format!("{:?}", r.policy),
        destinations: r.more_destinations.iter().map(|d| format!("{d:?}")).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// A plain re-reading of the parameters whose reading is simple enough to write twice.

/// The last value sent for `name` that is not blank, as `from_pairs` reads a single-valued
/// parameter.
fn last<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// The comma-separated items of `values`, trimmed, the empty ones left out.
fn items<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    values.flat_map(|v| v.split(',')).map(str::trim).filter(|i| !i.is_empty()).collect()
}

/// Paths as the module promises to read them: each item parsed, duplicates once, in order.
fn expected_paths(raw: &[&str]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for item in raw {
        let path = PathPrefix::parse(item).expect("an accepted call has valid paths");
        if !paths.iter().any(|p| p == path.as_str()) {
            paths.push(path.as_str().to_owned());
        }
    }
    paths
}

/// The built parameter and destination index of an indexed key (`servicePath.2`): Docker
/// Flow Proxy's numbering, 1 to 10 without leading zeros. `None` for any other key.
fn indexed_key(key: &str) -> Option<(&str, u8)> {
    let (base, n) = key.rsplit_once('.')?;
    let index: u8 = n.parse().ok().filter(|i| (1..=10).contains(i) && !n.starts_with('0'))?;
    let per_destination = !matches!(base, "serviceName" | "serviceColor" | "isDefaultBackend");
    (SUPPORTED.contains(&base) && per_destination).then_some((base, index))
}

/// The call as destination `index` reads it: its own `.N` parameters (named without the
/// index) over the unindexed ones they do not give; 0: the unindexed parameters alone.
fn projected(pairs: &Pairs, index: u8) -> Pairs {
    let own: Vec<(String, String)> = pairs
        .iter()
        .filter_map(|(k, v)| match indexed_key(k) {
            Some((base, i)) if i == index => Some((base.to_owned(), v.clone())),
            _ => None,
        })
        .collect();
    let given = |name: &str| match name {
        "servicePath" => {
            !items(own.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str())).is_empty()
        }
        _ => own.iter().any(|(k, v)| k == name && !v.trim().is_empty()),
    };
    // A destination's own authentication replaces the service's.
    let truthy = |v: &str| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1";
    let opens = own.iter().any(|(k, v)| k == "ignoreAuthorization" && truthy(v));
    let protects = given("users") || given("usersSecret");
    let hidden = |name: &str| match name {
        "users" | "usersSecret" => opens,
        "ignoreAuthorization" => protects,
        _ => false,
    };
    pairs
        .iter()
        .filter(|(k, _)| {
            !k.contains('.')
                || (indexed_key(k).is_none() && !k.ends_with(|c: char| c.is_ascii_digit()))
        })
        .filter(|(k, _)| index == 0 || (!given(k) && !hidden(k)))
        .cloned()
        // A blank `.N` value is as if not given (the unindexed one stands).
        .chain(own.iter().filter(|(k, v)| k == "servicePath" || !v.trim().is_empty()).cloned())
        .collect()
}

/// What an accepted call must hold, read again from `pairs` without the module's code: each
/// destination as its own projected call, then what belongs to the call as a whole.
fn check_accepted(pairs: &Pairs, r: &ReconfigureRequest) -> Result<(), TestCaseError> {
    let mut indexes: Vec<u8> =
        pairs.iter().filter_map(|(k, _)| indexed_key(k)).map(|(_, i)| i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    prop_assert!(indexes.iter().copied().eq(1..=indexes.len() as u8), "gap in {:?}", indexes);
    let mut seen: Vec<u8> = Vec::new();
    for (position, d) in r.destinations().enumerate() {
        seen.push(d.index);
        let own = projected(pairs, d.index);
        check_destination(&own, d, position == 0)?;
        prop_assert_eq!(&d.service_name, &r.service_name);
        prop_assert!(position == 0 || (d.params.is_empty() && d.ignored.is_empty()));
    }
    let unindexed =
        !items(pairs.iter().filter(|(k, _)| k == "servicePath").map(|(_, v)| v.as_str()))
            .is_empty();
    let mut want: Vec<u8> = indexes.clone();
    if unindexed || want.is_empty() {
        want.insert(0, 0);
    }
    prop_assert_eq!(seen, want);
    check_call(pairs, r)
}

/// What one destination must hold, read again from its projected call (`pairs`).
fn check_destination(
    pairs: &Pairs,
    r: &ReconfigureRequest,
    first: bool,
) -> Result<(), TestCaseError> {
    let flag = |name: &str| {
        last(pairs, name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
    };
    // serviceName: the last one sent, trimmed; letters, digits, '-', '_', '.'; at most 255.
    let name = last(pairs, "serviceName").map(str::trim);
    prop_assert_eq!(Some(r.service_name.as_str()), name);
    prop_assert!(!r.service_name.is_empty() && r.service_name.len() <= 255);
    prop_assert!(r
        .service_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));

    // servicePath: every item of every value counts, once; each is a valid, normal prefix.
    let raw_paths =
        items(pairs.iter().filter(|(k, _)| k == "servicePath").map(|(_, v)| v.as_str()));
    let mut paths: Vec<&str> = r.service_paths.iter().map(PathPrefix::as_str).collect();
    if last(pairs, "pathType").is_some() {
        // Under pathType the values are kept as given (trimmed), not normalised as prefixes.
        prop_assert!(paths.is_empty());
        paths = r.path_patterns.iter().map(dfp_routing::PathPattern::as_str).collect();
        let mut want: Vec<&str> = Vec::new();
        for item in &raw_paths {
            if !want.contains(item) {
                want.push(item);
            }
        }
        prop_assert_eq!(&paths, &want);
    } else {
        prop_assert!(r.path_patterns.is_empty());
        prop_assert_eq!(&paths, &expected_paths(&raw_paths));
    }
    prop_assert!(
        !paths.is_empty() || flag("isDefaultBackend"),
        "no path and not the default backend"
    );
    for prefix in r.service_paths.iter().chain(&r.excluded) {
        prop_assert_eq!(PathPrefix::parse(prefix.as_str()), Ok(prefix.clone()), "not normal");
        let path = prefix.as_str();
        prop_assert!(path.starts_with('/') && !path.contains("//"), "{}", path);
        prop_assert!(path == "/" || !path.ends_with('/'), "{}", path);
        prop_assert!(
            path.split('/').skip(1).all(|s| s != "." && s != ".."),
            "dot segment in {}",
            path
        );
    }
    let excluded: Vec<&str> = r.excluded.iter().map(PathPrefix::as_str).collect();
    prop_assert_eq!(
        &excluded,
        &expected_paths(&items(last(pairs, "servicePathExclude").into_iter()))
    );

    // serviceDomain: the items of the last value, each a domain that reads back as itself.
    let domains = items(last(pairs, "serviceDomain").into_iter());
    prop_assert_eq!(r.domains.len(), domains.len());
    for (domain, raw) in r.domains.iter().zip(domains) {
        prop_assert_eq!(Domain::parse(raw), Ok(domain.clone()));
        let shown = domain.to_string();
        prop_assert_eq!(Domain::parse(&shown), Ok(domain.clone()), "{}", shown);
        prop_assert!(!shown.ends_with('.') && shown == shown.to_ascii_lowercase(), "{}", shown);
    }

    // port: above 0, stored as a plain number.
    let port = last(pairs, "port").map(|p| p.trim().parse::<u16>().expect("an accepted port"));
    prop_assert_eq!(r.port, port);
    prop_assert!(r.port != Some(0));
    if let Some(port) = r.port.filter(|_| first && r.index == 0) {
        prop_assert_eq!(&r.params["port"], &port.to_string());
    }

    // Flags and modes.
    prop_assert_eq!(r.default_backend, first && flag("isDefaultBackend"));
    // letsEncrypt: only with an exact name to certify, never on a TCP service.
    prop_assert_eq!(r.lets_encrypt, flag("letsEncrypt"));
    if r.lets_encrypt {
        prop_assert!(r.domains.iter().any(|d| matches!(d, Domain::Exact(_))), "{:?}", r.domains);
        prop_assert!(r.tcp_port.is_none());
    }
    if let Some(mode) = last(pairs, "reqMode") {
        let mode = mode.trim();
        let (tcp, sni) = (mode.eq_ignore_ascii_case("tcp"), mode.eq_ignore_ascii_case("sni"));
        prop_assert!(
            mode.eq_ignore_ascii_case("http") || ((tcp || sni) && r.tcp_port.is_some()),
            "reqMode={:?} accepted",
            mode
        );
        // A TCP service is chosen by server name exactly when it has names: always for sni
        // (which needs them), for tcp when serviceDomain is given (TLS ended here).
        let expected = match (tcp, sni, r.domains.is_empty()) {
            (false, false, _) => StreamTls::Plain,
            (_, true, false) => StreamTls::Passthrough,
            (true, false, false) => StreamTls::Terminate,
            (_, _, true) => {
                prop_assert!(!sni, "reqMode=sni accepted without serviceDomain");
                StreamTls::Plain
            }
        };
        prop_assert_eq!(r.stream_tls, expected);
    } else {
        prop_assert_eq!(r.stream_tls, StreamTls::Plain);
    }

    // Policy.
    let policy = &r.policy;
    prop_assert_eq!(policy.https_redirect.is_some(), flag("httpsOnly"));
    if let Some(code) = policy.https_redirect {
        prop_assert!([301, 302, 303, 307, 308].contains(&code), "redirect code {}", code);
    }
    prop_assert_eq!(policy.path_rewrite.is_some(), last(pairs, "reqPathSearch").is_some());
    for user in policy.auth.users() {
        prop_assert!(!user.user().is_empty() && !user.user().contains(':'));
    }
    // ignoreAuthorization opens the service, and never beside users of its own; a
    // usersSecret is a name (never a path), beside users only when an entry is a bare name
    // (whose password the secret holds).
    prop_assert_eq!(
        matches!(policy.auth, dfp_routing::Authentication::Ignored),
        flag("ignoreAuthorization")
    );
    if let Some(secret) = &r.users_secret {
        prop_assert_eq!(Some(secret.as_str()), last(pairs, "usersSecret").map(str::trim));
        prop_assert!(!secret.contains('/') && !secret.starts_with('.'), "{}", secret);
        prop_assert!(
            policy.auth.users().is_empty() || !r.users_entries.is_empty(),
            "usersSecret accepted beside users that all have their passwords"
        );
    }
    let timeouts = [policy.server_timeout, policy.tunnel_timeout, policy.client_timeout];
    for timeout in timeouts.into_iter().flatten() {
        prop_assert!(!timeout.is_zero());
        // A deadline further ahead would not fit the clock.
        prop_assert!(timeout <= dfp_routing::LONGEST_TIMEOUT, "{:?}", timeout);
    }
    // The queue's settings only beside the cap it queues behind.
    if policy.queue_timeout.is_some() || policy.max_queue.is_some() {
        prop_assert!(policy.instance_max_conn.is_some(), "a queue setting without a cap");
    }
    prop_assert!(policy.queue_timeout.is_none_or(|t| t.as_secs() <= 3600));

    Ok(())
}

/// What belongs to the call as a whole: what it ignored, and what it stores.
fn check_call(pairs: &Pairs, r: &ReconfigureRequest) -> Result<(), TestCaseError> {
    // Parameters not acted on: named once each, every one of them.
    let mut ignored: Vec<&str> = Vec::new();
    for (key, _) in pairs {
        prop_assert!(
            !matches!(
                crate::parity::lookup(key).map(|p| p.status),
                Some(crate::parity::Status::Refused { .. })
            ),
            "refused parameter {} accepted",
            key
        );
        if key != "servicePath"
            && !SUPPORTED.contains(&key.as_str())
            && indexed_key(key).is_none()
            && !ignored.contains(&key.as_str())
        {
            ignored.push(key);
        }
    }
    prop_assert_eq!(&r.ignored, &ignored);

    // What is stored: every parameter sent (servicePath once, normalised, when there is one).
    // (`servicePath.N` are stored normalised when their destination has paths of its own.)
    let indexed_path = |k: &str| indexed_key(k).is_some_and(|(base, _)| base == "servicePath");
    let mut keys: BTreeSet<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "servicePath" && !indexed_path(k))
        .collect();
    keys.insert("serviceName");
    let paths: Vec<&str> = r
        .service_paths
        .iter()
        .map(PathPrefix::as_str)
        .chain(r.path_patterns.iter().map(dfp_routing::PathPattern::as_str))
        .collect();
    if !paths.is_empty() && r.index == 0 {
        keys.insert("servicePath");
        prop_assert_eq!(&r.params["servicePath"], &paths.join(","));
    }
    let stored: BTreeSet<&str> =
        r.params.keys().map(String::as_str).filter(|k| !indexed_path(k)).collect();
    prop_assert_eq!(stored, keys);
    prop_assert_eq!(&r.params["serviceName"], &r.service_name);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(harness::config())]

    /// Any parameters: no panic; what is accepted holds the module's promises and reads the
    /// same as the plain re-reading above.
    #[test]
    fn fuzz_params_accepted_calls_hold_their_invariants(pairs in call()) {
        if let Ok(request) = ReconfigureRequest::from_pairs(borrowed(&pairs)) {
            check_accepted(&pairs, &request)?;
        }
    }

    /// A call that is valid by construction is accepted, and read as it was sent.
    #[test]
    fn fuzz_params_valid_calls_are_read_as_sent(
        (pairs, paths, port, domains) in valid_call()
    ) {
        let request = ReconfigureRequest::from_pairs(borrowed(&pairs));
        let request = match request {
            Ok(request) => request,
            Err(err) => return Err(TestCaseError::fail(format!("{pairs:?} refused: {err}"))),
        };
        let read = summary(&request);
        prop_assert_eq!(&read.paths, &paths);
        prop_assert_eq!(read.port, port);
        let domains: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        prop_assert_eq!(&read.domains, &domains);
        check_accepted(&pairs, &request)?;
    }

    /// The stored call (what goes to Consul KV or the state file, as JSON) read again is the
    /// same request, and stores the same parameters: a restore or another replica routes
    /// exactly what this proxy routes.
    #[test]
    fn fuzz_params_stored_call_replays_to_the_same_request(pairs in call()) {
        if let Ok(first) = read(&pairs) {
            let json = serde_json::to_vec(&first.params).expect("parameters serialise");
            let stored: BTreeMap<String, String> =
                serde_json::from_slice(&json).expect("parameters deserialise");
            let stored: Pairs = stored.into_iter().collect();
            prop_assert_eq!(read(&stored), Ok(first));
        }
    }

    /// A remove given the same parameters as an accepted reconfigure removes the service
    /// that reconfigure configured.
    #[test]
    fn fuzz_params_remove_reads_the_same_service_name(pairs in call()) {
        if let Ok(request) = ReconfigureRequest::from_pairs(borrowed(&pairs)) {
            let removed = service_name_from_pairs(borrowed(&pairs)).map_err(|e| e.to_string());
            prop_assert_eq!(removed, Ok(request.service_name), "parameters {:?}", pairs);
        }
    }

    /// Parameters sent as a query string and decoded as the admin API decodes them read the
    /// same as the parameters themselves.
    #[test]
    fn fuzz_params_read_the_same_through_a_query_string(pairs in call()) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(borrowed(&pairs))
            .finish();
        let decoded: Pairs = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        prop_assert_eq!(read(&decoded), read(&pairs));
    }

    /// Any query string at all, decoded as the admin API does: no panic in either reading.
    #[test]
    fn fuzz_params_any_query_string_is_safe(query in query()) {
        let pairs: Pairs = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let _ = read(&pairs);
        let _ = service_name_from_pairs(borrowed(&pairs));
    }
}
