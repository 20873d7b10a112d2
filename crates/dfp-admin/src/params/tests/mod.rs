//! Unit tests of reading a reconfigure's parameters (the model-based fuzzing is in
//! `params_fuzz`). Apart from the code so each file stays readable on its own.

use dfp_routing::{ProtoRedirect, ProxyProtocol, UsersFrom};

use super::*;

mod tcp;

fn parse(query: &[(&str, &str)]) -> Result<ReconfigureRequest, AdminError> {
    ReconfigureRequest::from_pairs(query.iter().copied())
}

/// The call most cases start from (`serviceName=books&servicePath=/b`), then `extra`.
fn books<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut query = vec![("serviceName", "books"), ("servicePath", "/b")];
    query.extend_from_slice(extra);
    query
}

/// Asserts `query` is refused with a 400 whose message holds every one of `needles`: the
/// check each table of bad calls below makes of each of its rows.
#[track_caller]
fn refused(query: &[(&str, &str)], needles: &[&str]) {
    let err = match parse(query) {
        Ok(r) => panic!("{query:?} was accepted: {r:?}"),
        Err(err) => err,
    };
    assert_eq!(err.status(), 400, "{query:?}: {err}");
    let message = err.to_string();
    for needle in needles {
        assert!(message.contains(needle), "{query:?}: {needle:?} not in {message}");
    }
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
    let replayed =
        ReconfigureRequest::from_pairs(first.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
    assert_eq!(warnings[2], "parameters not supported by this proxy were ignored: com.df.notify");
}

#[test]
fn refused_parameters_are_400s_that_say_what_instead() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "serviceGroup",
            "g",
            "parameter serviceGroup is refused: not supported yet: a TCP service",
        ),
        ("serviceCert", "-----BEGIN", "PUT /v1/docker-flow-proxy/cert"),
        ("checkTcp.1", "true", "parameter checkTcp.1 is refused: not supported yet"),
        ("serviceColor.1", "blue", "parameter serviceColor.1 is refused: it is one per service"),
        ("isDefaultBackend.2", "true", "isDefaultBackend.2 is refused: it is one per service"),
        ("distribute.x", "1", ""),
    ];
    for &(name, value, needle) in cases {
        let query = books(&[(name, value)]);
        if needle.is_empty() {
            let result = parse(&query);
            assert!(result.is_ok(), "{name}: {result:?}");
            continue;
        }
        refused(&query, &[needle]);
    }
}

#[test]
fn stored_calls_ignore_what_is_refused_now() {
    let pairs = [("serviceName", "books"), ("servicePath", "/b"), ("checkTcp", "true")];
    assert!(parse(&pairs).is_err());
    let r = ReconfigureRequest::from_stored_pairs(pairs).expect("restored as it was served");
    assert_eq!(r.ignored, ["checkTcp"]);
    assert_eq!(r.params["checkTcp"], "true");
    assert!(r.ignored_warnings()[0].starts_with("stored parameter checkTcp is ignored"));
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
    for &(query, needle) in cases {
        refused(query, &[needle]);
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
    for &(name, value, needle) in cases {
        refused(&books(&[(name, value)]), &[name, needle]);
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
    for &(name, value, needle) in cases {
        refused(&books(&[(name, value)]), &[name, needle]);
    }
    let paths: &[(&str, &str, &str)] = &[
        ("path_reg", "^/a(", "regular expression"),
        ("path_reg", "a{1000}{1000}", "regular expression"),
        ("path", "api", "pathType path"),
        ("path_beg", "/a//b", "pathType path_beg"),
        ("path_end", "a b", "pathType path_end"),
    ];
    for &(kind, path, needle) in paths {
        refused(&[("serviceName", "b"), ("servicePath", path), ("pathType", kind)], &[needle]);
    }
}

#[test]
fn compression_is_read_and_bad_values_named() {
    let r = parse(&[
        ("serviceName", "books"),
        ("servicePath", "/b"),
        ("compressionAlgo", "br gzip"),
        ("compressionType", "text/plain text/html"),
    ])
    .expect("valid");
    assert!(r.ignored.is_empty());
    let compression = r.policy.compression.expect("compresses");
    let algos: Vec<_> = compression.algos().map(|a| a.token()).collect();
    assert_eq!(algos, ["br", "gzip"]);
    assert_eq!(compression.types().collect::<Vec<_>>(), ["text/plain", "text/html"]);
    let off =
        parse(&[("serviceName", "b"), ("servicePath", "/b"), ("compressionAlgo", "identity")]);
    assert!(off.expect("valid").policy.compression.is_none());
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (&[("compressionAlgo", "gzip brotli")], "compressionAlgo", "\"brotli\""),
        (&[("compressionAlgo", "raw-deflate")], "compressionAlgo", "gzip, deflate or br"),
        (
            &[("compressionAlgo", "gzip"), ("compressionType", "text")],
            "compressionType",
            "\"text\"",
        ),
        (&[("compressionType", "text/html")], "compressionType", "compressionAlgo=gzip"),
        (&[("sendProxyProtocol", "v3")], "sendProxyProtocol", "v1 or v2"),
        (&[("sendProxyProtocol", "true")], "sendProxyProtocol", "v1 or v2"),
        (&[("instanceMaxConn", "0")], "instanceMaxConn", "from 1 to 1000000"),
        (&[("instanceMaxConn", "1000001")], "instanceMaxConn", "from 1 to 1000000"),
        (&[("instanceMaxConn", "ten")], "instanceMaxConn", "from 1 to 1000000"),
        (&[("timeoutQueue", "5")], "timeoutQueue", "give instanceMaxConn too"),
        (&[("maxQueue", "5")], "maxQueue", "give instanceMaxConn too"),
        (&[("instanceMaxConn", "1"), ("timeoutQueue", "3601")], "timeoutQueue", "0 (no queue"),
        (&[("instanceMaxConn", "1"), ("timeoutQueue", "-1")], "timeoutQueue", "to 3600"),
        (&[("instanceMaxConn", "1"), ("timeoutQueue", "0.5")], "timeoutQueue", "whole number"),
        (&[("instanceMaxConn", "1"), ("maxQueue", "0")], "maxQueue", "timeoutQueue=0"),
        (&[("instanceMaxConn", "1"), ("maxQueue", "1000001")], "maxQueue", "from 1 to 1000000"),
    ];
    for &(extra, name, needle) in cases {
        refused(&books(extra), &[name, needle]);
    }
}

#[test]
fn send_proxy_protocol_is_a_version() {
    for (value, want) in
        [("v1", Some(ProxyProtocol::V1)), ("V2", Some(ProxyProtocol::V2)), (" ", None)]
    {
        let r = parse(&[("serviceName", "b"), ("servicePath", "/b"), ("sendProxyProtocol", value)]);
        assert_eq!(r.expect("valid").policy.send_proxy, want, "{value:?}");
    }
}

#[test]
fn timeouts_are_whole_seconds_up_to_haproxys_limit() {
    for name in ["timeoutServer", "timeoutTunnel"] {
        for (value, secs) in [("1", 1), (" 60s ", 60), ("2147483", 2_147_483)] {
            let r = parse(&books(&[(name, value)])).expect("valid");
            let got = if name == "timeoutServer" {
                r.policy.server_timeout
            } else {
                r.policy.tunnel_timeout
            };
            assert_eq!(got, Some(std::time::Duration::from_secs(secs)), "{name}={value:?}");
        }
        // Past the limit, a deadline would not fit the clock: refused, not cut short.
        for value in ["0", "-5", "2147484", "18446744073709551615", "99999999999999999999"] {
            refused(&books(&[(name, value)]), &[name, "2147483"]);
        }
    }
}

#[test]
fn instance_max_conn_is_a_count() {
    for (value, want) in
        [("1", Some(1)), (" 250 ", Some(250)), ("1000000", Some(1_000_000)), (" ", None)]
    {
        let r = parse(&[("serviceName", "b"), ("servicePath", "/b"), ("instanceMaxConn", value)]);
        let got = r.expect("valid").policy.instance_max_conn.map(std::num::NonZeroU32::get);
        assert_eq!(got, want, "{value:?}");
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
    assert!(own.users_entries.is_empty(), "every entry has its password");
    // Bare names are kept for the controller to resolve; the call is stored as sent.
    let bare = with(&[("users", "a:1,bob")]).expect("valid");
    assert_eq!((bare.policy.auth.users().len(), bare.users_entries.len()), (1, 2));
    assert_eq!(bare.params["users"], "a:1,bob");
    let from_secret = with(&[("users", "bob"), ("usersSecret", "s")]).expect("valid");
    assert_eq!(from_secret.users_secret.as_deref(), Some("s"));

    for (bad, name, hidden) in [
        (&[("usersSecret", "../etc/passwd")][..], "usersSecret", ""),
        (&[("usersSecret", "a b")][..], "usersSecret", ""),
        (&[("usersSecret", "s"), ("users", "a:1")][..], "usersSecret", ""),
        (&[("ignoreAuthorization", "yes")][..], "ignoreAuthorization", ""),
        (&[("ignoreAuthorization", "true"), ("users", "a:1")][..], "ignoreAuthorization", ""),
        (&[("ignoreAuthorization", "1"), ("usersSecret", "s")][..], "ignoreAuthorization", ""),
        (&[("users", "a:1,:s3cret")][..], "users", "s3cret"),
        (&[("users", "a:1,b:")][..], "users", ""),
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
    let named = with(&[("sessionType", "sticky-server"), ("sessionCookie", "SRV")]).expect("valid");
    assert_eq!(named.policy.sticky.as_ref().map(StickySession::cookie), Some("SRV"));
    let when =
        with(&[("redirectWhenHttpProto", "true"), ("httpsRedirectCode", "301")]).expect("valid");
    assert_eq!(when.policy.proto_redirect, Some((ProtoRedirect::WhenHttp, 301)));
    assert_eq!(when.policy.https_redirect, None);
    let unless = with(&[("redirectUnlessHttpsProto", "true"), ("redirectWhenHttpProto", "true")])
        .expect("valid");
    assert_eq!(unless.policy.proto_redirect, Some((ProtoRedirect::UnlessHttps, 302)));
    let moved = with(&[("serviceDomain", "new.com"), ("redirectFromDomain", "old.com,*.old.com")])
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

/// Docker Flow Proxy's documented call with two destinations, then the same with options.
#[test]
fn indexed_destinations_each_read_their_own_parameters_over_the_unindexed_ones() {
    let r = parse(&[
        ("serviceName", "books"),
        ("servicePath.1", "/path-1"),
        ("port.1", "8080"),
        ("servicePath.2", "/path-2"),
        ("port.2", "9090"),
    ])
    .expect("Docker Flow Proxy's example");
    let paths = |d: &ReconfigureRequest| {
        d.service_paths.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>().join(",")
    };
    let seen: Vec<(u8, String, Option<u16>)> =
        r.destinations().map(|d| (d.index, paths(d), d.port)).collect();
    assert_eq!(
        seen,
        [(1, "/path-1".to_owned(), Some(8080)), (2, "/path-2".to_owned(), Some(9090))],
        "no unindexed servicePath: no destination 0"
    );

    // The unindexed parameters are every destination's fallback; `.N` ones override them.
    let r = parse(&[
        ("serviceName", "books"),
        ("servicePath", "/"),
        ("serviceDomain", "example.com"),
        ("httpsOnly", "true"),
        ("addReqHeader", "X-Dest 0"),
        ("servicePath.1", "/api"),
        ("addReqHeader.1", "X-Dest 1"),
        ("httpsOnly.1", "false"),
        ("serviceDomain.2", "admin.example.com"),
        ("users.2", "ops:secret"),
        ("isDefaultBackend", "true"),
    ])
    .expect("valid");
    let d: Vec<&ReconfigureRequest> = r.destinations().collect();
    assert_eq!(d.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(paths(d[0]), "/");
    assert_eq!(paths(d[1]), "/api");
    assert_eq!(paths(d[2]), "/", "servicePath falls back to the unindexed one");
    assert_eq!(d[1].domains, d[0].domains, "serviceDomain falls back");
    assert_eq!(
        d[2].domains.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["admin.example.com"]
    );
    assert!(d[0].policy.https_redirect.is_some());
    assert!(d[1].policy.https_redirect.is_none(), "httpsOnly.1=false overrides");
    assert!(d[2].policy.https_redirect.is_some(), "httpsOnly falls back");
    assert_eq!(d[1].policy.request_headers.add[0].1, "1");
    assert_eq!(d[2].policy.request_headers.add[0].1, "0");
    assert!(d[2].policy.auth.required() && !d[0].policy.auth.required());
    assert!(d[0].default_backend && !d[1].default_backend && !d[2].default_backend);
    assert!(d[1].params.is_empty(), "the call is stored once, with the first destination");

    // Stored as sent (paths normalised) and replayed to the same destinations.
    assert_eq!(r.params.get("servicePath.1").map(String::as_str), Some("/api"));
    let replayed = ReconfigureRequest::from_stored_pairs(
        r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .expect("replays");
    assert_eq!(format!("{replayed:?}"), format!("{r:?}"));
    let specs = r.destination_specs(&[]);
    assert_eq!(specs.iter().map(|(s, _)| s.index).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn bad_indexed_destinations_are_400s_that_name_the_destination() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[("servicePath.1", "/a"), ("servicePath.3", "/c")],
            &["ending in .3 but none ending in .2"],
        ),
        (&[("servicePath.0", "/a")], &["numbered 1 to 10"]),
        (&[("servicePath.11", "/a")], &["numbered 1 to 10"]),
        (&[("servicePath.01", "/a")], &["numbered 1 to 10"]),
        (&[("servicePath.1", "no-slash")], &["destination 1", "servicePath"]),
        (
            &[("servicePath.1", "/a"), ("servicePath.2", "/b"), ("httpsRedirectCode.2", "999")],
            &["destination 2", "httpsRedirectCode"],
        ),
        (
            &[("servicePath.1", "/a"), ("addReqHeader.1", "X 1"), ("addReqHeader.1", "X 2")],
            &["destination 1", "given twice"],
        ),
        (&[("port.1", "8080")], &["destination 1", "servicePath is missing"]),
    ];
    for (extra, needles) in cases {
        let mut query = vec![("serviceName", "books")];
        query.extend_from_slice(extra);
        refused(&query, needles);
    }
    // An indexed ignored parameter stays ignored; an unknown base is not a destination.
    let r = parse(&books(&[("userDef.1", "x"), ("com.df.servicePath.1", "/x")])).expect("valid");
    assert!(r.more_destinations.is_empty());
}

#[test]
fn a_service_of_one_destination_keeps_no_room_for_more() {
    // Every routed service keeps its call: an empty list with room for one destination
    // was ~0.9 kB per service, a third of what 1,000 idle routes cost the control plane.
    let r = parse(&books(&[])).expect("valid");
    assert_eq!(r.more_destinations.capacity(), 0);
    let r = parse(&books(&[("servicePath.1", "/c"), ("servicePath.2", "/d")])).expect("valid");
    assert_eq!(r.more_destinations.len(), 2);
    assert_eq!(r.more_destinations.capacity(), 2);
}

#[test]
fn a_destinations_own_authentication_replaces_the_services() {
    let r = parse(&[
        ("serviceName", "books"),
        ("servicePath", "/"),
        ("users", "alice:a"),
        ("servicePath.1", "/public"),
        ("ignoreAuthorization.1", "true"),
    ])
    .expect("Docker Flow Proxy's open destination of a protected service");
    assert!(r.policy.auth.required());
    assert!(matches!(r.more_destinations[0].policy.auth, dfp_routing::Authentication::Ignored));

    let r = parse(&[
        ("serviceName", "books"),
        ("servicePath", "/"),
        ("ignoreAuthorization", "true"),
        ("servicePath.1", "/private"),
        ("users.1", "ops:o"),
    ])
    .expect("a protected destination of an open service");
    assert!(matches!(r.policy.auth, dfp_routing::Authentication::Ignored));
    assert!(r.more_destinations[0].policy.auth.required());

    // At one level both are still a 400.
    refused(
        &books(&[("servicePath.1", "/x"), ("users.1", "a:b"), ("ignoreAuthorization.1", "true")]),
        &["destination 1", "ignoreAuthorization"],
    );
}

#[test]
fn queue_settings_are_read_beside_instance_max_conn() {
    let r = parse(&[
        ("serviceName", "b"),
        ("servicePath", "/b"),
        ("instanceMaxConn", "4"),
        ("timeoutQueue", " 2s "),
        ("maxQueue", "100"),
    ])
    .expect("valid");
    assert_eq!(r.policy.queue_timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(r.policy.max_queue.map(std::num::NonZeroU32::get), Some(100));
    assert!(r.ignored.is_empty());
    let none = parse(&[
        ("serviceName", "b"),
        ("servicePath", "/b"),
        ("instanceMaxConn", "4"),
        ("timeoutQueue", "0"),
    ])
    .expect("valid");
    assert_eq!(none.policy.queue_timeout, Some(std::time::Duration::ZERO), "0: no queue");
    // A TCP service queues its connections the same way.
    let tcp = parse(&[
        ("serviceName", "db"),
        ("reqMode", "tcp"),
        ("srcPort", "15432"),
        ("instanceMaxConn", "10"),
        ("timeoutQueue", "1"),
        ("maxQueue", "5"),
    ])
    .expect("valid");
    assert_eq!(tcp.policy.queue_timeout, Some(std::time::Duration::from_secs(1)));
    assert_eq!(tcp.policy.max_queue.map(std::num::NonZeroU32::get), Some(5));
    // Blank is as if not given, cap or no cap.
    let blank = parse(&[("serviceName", "b"), ("servicePath", "/b"), ("maxQueue", " ")]);
    assert!(blank.expect("valid").policy.max_queue.is_none());
}
