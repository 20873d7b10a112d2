//! The per-service options as `route` and `admit` see them: routing conditions, redirects,
//! rewrites, sticky sessions, users, client certificates and compression.

use super::*;

/// `route` reads the request's fields for conditioned routes, through the engine's own
/// iterator (a `FieldList`), and the path after normalisation.
#[test]
fn route_reads_fields_for_conditions() {
    use dfp_routing::{PathPrefix, RouteConditions, RouteTableBuilder, ServiceSpec};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let api = PathPrefix::parse("/api").expect("valid");
    let mut builder = RouteTableBuilder::new();
    builder.add(ServiceSpec::new("api", std::slice::from_ref(&api)), &[addr]).expect("valid");
    let mut mobile = ServiceSpec::new("mobile", &[api]);
    mobile.conditions = RouteConditions::parse(None, Some("iphone")).expect("valid");
    builder.add(mobile, &[addr]).expect("other conditions");
    let table = TableHandle::new(builder.build(1).expect("builds"));
    let peer = || std::net::IpAddr::from([127, 0, 0, 1]);
    let routed = |fields: &[(&str, &[u8])], path: &str| -> Option<String> {
        let list = FieldList(fields.iter().copied());
        let request = RoutedRequest {
            fields: Fields(&list),
            https: false,
            client_cert: false,
            method: "GET",
            client: ClientIp(&peer),
            authorization: None,
            forwarded_proto: None,
            cookie: CookieToken(&NO_COOKIE),
            accept_encoding: None,
            defaults: (Duration::from_secs(1), Duration::from_secs(1)),
        };
        let target = parse_target(path).expect("origin form");
        let mut slot = None;
        route(&table, &mut slot, None, &target, request)
            .ok()
            .map(|r| r.backend.service().to_owned())
    };
    let iphone: &[(&str, &[u8])] = &[("Host", b"a"), ("USER-AGENT", b"Mozilla (iPhone)")];
    assert_eq!(routed(iphone, "/api/x").as_deref(), Some("mobile"));
    assert_eq!(routed(iphone, "/x/../api").as_deref(), Some("mobile"), "normalised first");
    assert_eq!(routed(&[("user-agent", b"curl")], "/api").as_deref(), Some("api"));
    assert_eq!(routed(&[], "/api").as_deref(), Some("api"));
    assert_eq!(routed(iphone, "/other"), None);
}

fn plain_request<'a>(host: &'a str, forwarded_proto: Option<&'a [u8]>) -> Admission<'a> {
    static PEER: fn() -> std::net::IpAddr = || std::net::IpAddr::from([10, 0, 0, 9]);
    Admission {
        https: false,
        client_cert: false,
        method: "GET",
        client: ClientIp(&PEER),
        host: Some(host),
        path: "/a",
        query: Some("q=1"),
        authorization: None,
        forwarded_proto,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: None,
    }
}

/// `redirectWhenHttpProto`, `redirectUnlessHttpsProto` and `redirectFromDomain`: which
/// requests each redirects, where to, and with which status.
#[test]
fn forwarded_proto_and_domain_redirects() {
    use dfp_routing::{Domain, DomainRedirect, ProtoRedirect};
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let when_http = ServicePolicy {
        proto_redirect: Some((ProtoRedirect::WhenHttp, 301)),
        ..ServicePolicy::default()
    };
    let unless_https = ServicePolicy {
        proto_redirect: Some((ProtoRedirect::UnlessHttps, 302)),
        ..ServicePolicy::default()
    };
    let domain = ServicePolicy {
        domain_redirect: Some(
            DomainRedirect::new(
                vec![Domain::parse("old.example.com").expect("domain")],
                &Domain::parse("new.example.com").expect("domain"),
            )
            .expect("exact"),
        ),
        ..ServicePolicy::default()
    };
    let location = |policy: &ServicePolicy, request: &Admission<'_>| match admit(
        policy, "s", request, defaults,
    ) {
        Ok(_) => None,
        Err(ProxyError::Redirect { location, status, .. }) => {
            Some((status.as_u16(), location.to_str().expect("ascii").to_owned()))
        }
        Err(other) => panic!("{other:?}"),
    };
    let to = |status: u16, l: &str| Some((status, l.to_owned()));
    for (policy, request, expected) in [
        (&when_http, plain_request("shop:8080", Some(b"http")), to(301, "https://shop/a?q=1")),
        (&when_http, plain_request("shop", Some(b"HTTP ")), to(301, "https://shop/a?q=1")),
        (&when_http, plain_request("shop", Some(b"https")), None),
        (&when_http, plain_request("shop", None), None),
        (&unless_https, plain_request("shop", None), to(302, "https://shop/a?q=1")),
        (&unless_https, plain_request("shop", Some(b"http")), to(302, "https://shop/a?q=1")),
        (&unless_https, plain_request("shop", Some(b"https")), None),
        (&unless_https, Admission { https: true, ..plain_request("shop", None) }, None),
        (
            &domain,
            plain_request("old.example.com:80", None),
            to(301, "http://new.example.com/a?q=1"),
        ),
        (
            &domain,
            Admission { https: true, ..plain_request("OLD.example.com", None) },
            to(301, "https://new.example.com/a?q=1"),
        ),
        (&domain, plain_request("new.example.com", None), None),
    ] {
        assert_eq!(location(policy, &request), expected, "{:?}", request.host);
    }
}

#[test]
fn search_replace_pairs_apply_in_order_after_req_path_search() {
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let rewrite = |s: &str, r: &str| dfp_routing::PathRewrite::new(s, r).expect("regex");
    let policy = ServicePolicy {
        path_rewrite: Some(rewrite("^/a", "/b")),
        search_replace: vec![rewrite("^/b", "/c"), rewrite("^/nomatch", "/x"), rewrite("c$", "d")],
        ..ServicePolicy::default()
    };
    let admitted = admit(&policy, "s", &plain_request("h", None), defaults).expect("admitted");
    assert_eq!(admitted.rewritten.as_deref(), Some("/d"));
}

#[test]
fn sticky_cookies_are_read_and_written() {
    let fields = [("cookie", &b"a=1; DFP_SERVER=00000000000000ff"[..]), ("Cookie", b"b=2")];
    assert_eq!(cookie_token(fields.iter().copied(), "DFP_SERVER"), Some(255));
    assert_eq!(cookie_token(fields.iter().copied(), "DFP"), None);
    let split = [("cookie", &b"a=1"[..]), ("cookie", b"S=\"0123456789abcdef\"")];
    assert_eq!(cookie_token(split.iter().copied(), "S"), Some(0x0123_4567_89ab_cdef));
    for bad in [&b"S=12"[..], b"S=zzzzzzzzzzzzzzzz", b"XS=0123456789abcdef", b"S=+123456789abcdef"]
    {
        assert_eq!(cookie_token([("cookie", bad)].into_iter(), "S"), None, "{bad:?}");
    }
    let mut out = Vec::new();
    write_pin(&mut out, &Pin { cookie: "DFP_SERVER", token: 0xab });
    assert_eq!(
        String::from_utf8(out).expect("text"),
        "set-cookie: DFP_SERVER=00000000000000ab; Path=/; HttpOnly\r\ncache-control: private\r\n"
    );
}

/// Global users, `ignoreAuthorization` and a `usersSecret` that could not be read, as
/// `admit` sees them: resolved into the policy's one `Authentication`.
#[test]
fn global_users_ignored_and_unreadable_secret() {
    use dfp_routing::{Authentication, Credential, UsersFrom};
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let peer = || std::net::IpAddr::from([10, 0, 0, 9]);
    // `g:pw` and `g:nope`.
    let (good, bad) = ("Basic Zzpwdw==", "Basic Zzpub3Bl");
    let request = |authorization: Option<&'static str>| Admission {
        https: false,
        client_cert: false,
        method: "GET",
        client: ClientIp(&peer),
        host: Some("shop"),
        path: "/a",
        query: None,
        authorization: authorization.map(str::as_bytes),
        forwarded_proto: None,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: None,
    };
    let global: std::sync::Arc<[Credential]> =
        vec![Credential::new("g", "pw", false).expect("user")].into();
    let with = |auth| ServicePolicy { auth, ..ServicePolicy::default() };
    let global_policy =
        with(Authentication::Users { users: global.clone(), from: UsersFrom::Global });
    let nobody = with(Authentication::Users {
        users: Vec::new().into(),
        from: UsersFrom::Secret("gone".into()),
    });
    for (policy, authorization, expected) in [
        (&global_policy, None, Err(())),
        (&global_policy, Some(bad), Err(())),
        (&global_policy, Some(good), Ok(true)),
        (&with(Authentication::Ignored), None, Ok(false)),
        (&with(Authentication::Open), Some(good), Ok(false)),
        (&nobody, Some(good), Err(())),
        (&nobody, None, Err(())),
    ] {
        let verdict = match admit(policy, "s", &request(authorization), defaults) {
            Ok(admitted) => Ok(admitted.strip_authorization),
            Err(ProxyError::Unauthorized { .. }) => Err(()),
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(verdict, expected, "{:?} {authorization:?}", policy.auth);
    }
}

/// `verifyClientSsl`: only a request whose connection verified a client certificate passes;
/// after the address and `denyHttp`, before the method, redirect and authentication.
#[test]
fn client_certificates_are_required_where_asked() {
    use crate::error::Forbidden;
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let peer = || std::net::IpAddr::from([10, 0, 0, 9]);
    let request = |https, client_cert| Admission {
        https,
        client_cert,
        method: "GET",
        client: ClientIp(&peer),
        host: Some("shop"),
        path: "/a",
        query: None,
        authorization: None,
        forwarded_proto: None,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: None,
    };
    let verify = ServicePolicy { verify_client_cert: true, ..ServicePolicy::default() };
    let refused = |policy: &ServicePolicy, https, cert| match admit(
        policy,
        "s",
        &request(https, cert),
        defaults,
    ) {
        Ok(_) => None,
        Err(ProxyError::Forbidden(why)) => Some(why),
        Err(other) => panic!("{other:?}"),
    };
    assert_eq!(refused(&verify, true, true), None);
    assert_eq!(refused(&verify, true, false), Some(Forbidden::ClientCert));
    assert_eq!(refused(&verify, false, false), Some(Forbidden::ClientCert), "plain HTTP");
    assert_eq!(refused(&ServicePolicy::default(), true, false), None, "not asked");
    let deny_http = ServicePolicy { deny_http: true, ..verify.clone() };
    assert_eq!(refused(&deny_http, false, false), Some(Forbidden::Http), "denyHttp first");
    let redirect = ServicePolicy { https_redirect: Some(301), ..verify.clone() };
    assert_eq!(
        refused(&redirect, false, false),
        Some(Forbidden::ClientCert),
        "before the redirect"
    );
    let methods = ServicePolicy {
        allowed_methods: dfp_routing::MethodList::parse("POST").expect("list"),
        ..verify
    };
    assert_eq!(refused(&methods, true, false), Some(Forbidden::ClientCert), "before methods");
    assert_eq!(refused(&methods, true, true), Some(Forbidden::Method));
}

/// `compressionAlgo`/`compressionType`: which responses are compressed.
#[test]
fn compression_is_decided_from_the_response_the_request_and_the_service() {
    use dfp_routing::{Compression, CompressionAlgo};
    let text = Compression::parse(Some("gzip"), Some("text/html text/css")).expect("valid");
    let text = text.as_ref();
    let html: &[(&str, &[u8])] = &[("Content-Type", b"text/html; charset=utf-8")];
    let facts = |status, framing| ResponseFacts {
        status,
        framing,
        keep_alive: true,
        transfer_encoded: false,
        lists_fields: false,
        dated: false,
    };
    let big = Framing::Length(10_000);
    type Case<'a> =
        (Option<&'a Compression>, u16, Framing, Option<&'a [u8]>, &'a [(&'a str, &'a [u8])], bool);
    let cases: [Case<'_>; 16] = [
        (text, 200, big, Some(b"gzip, deflate, br"), html, true),
        (text, 200, Framing::Chunked, Some(b"gzip"), html, true),
        (text, 200, Framing::UntilClose, Some(b"*"), html, true),
        (None, 200, big, Some(b"gzip"), html, false),
        (text, 200, big, None, html, false),
        (text, 200, big, Some(b"deflate, br"), html, false),
        (text, 200, big, Some(b"gzip;q=0"), html, false),
        (text, 200, big, Some(b"gzip;q=0.000, *"), html, false),
        (text, 200, big, Some(b"gzip;q=0.5"), html, true),
        (text, 200, Framing::Length(255), Some(b"gzip"), html, false),
        (text, 200, Framing::Empty, Some(b"gzip"), html, false),
        (text, 206, big, Some(b"gzip"), html, false),
        (text, 404, big, Some(b"gzip"), html, false),
        (text, 200, big, Some(b"gzip"), &[("Content-Type", b"image/png")], false),
        (
            text,
            200,
            big,
            Some(b"gzip"),
            &[("content-type", b"text/css"), ("Content-Encoding", b"br")],
            false,
        ),
        (
            text,
            200,
            big,
            Some(b"gzip"),
            &[("content-type", b"text/css"), ("Cache-Control", b"public, no-transform")],
            false,
        ),
    ];
    for (i, (service, status, framing, accept, fields, expected)) in cases.into_iter().enumerate() {
        let accepted = accepted_compression(service, accept);
        let got = compression(accepted, &facts(status, framing), fields.iter().copied());
        assert_eq!(got, expected.then_some(CompressionAlgo::Gzip), "case {i}");
    }
}

/// `Accept-Encoding` against a service's list of codings: the first of the service's list
/// that the client accepts by name or `*` with a `q` above 0, and a malformed `q` accepts
/// nothing.
#[test]
fn the_coding_is_the_first_of_the_service_list_the_client_accepts() {
    use dfp_routing::Compression;
    let services = |algo: &str| Compression::parse(Some(algo), None).expect("valid");
    let (br, br_gzip, gzip_br) = (services("br"), services("br gzip"), services("gzip br"));
    type Case<'a> = (&'a Option<Compression>, Option<&'a [u8]>, Option<&'a str>);
    let cases: [Case<'_>; 22] = [
        (&br, Some(b"gzip, deflate, br"), Some("br")),
        (&br, Some(b"BR"), Some("br")),
        (&br, Some(b"gzip"), None),
        (&br, Some(b"br;q=0"), None),
        (&br, Some(b"br; q=0.000, gzip"), None),
        (&br, Some(b"br;q=0.001"), Some("br")),
        (&br, Some(b"br;q=1.0"), Some("br")),
        (&br, Some(b"br;q=1.5"), None),
        (&br, Some(b"br;q=high"), None),
        (&br, Some(b"br;q=0.0001"), None),
        (&br, Some(b"*"), Some("br")),
        (&br, Some(b"*;q=0"), None),
        (&br, Some(b"br;q=0, *"), None),
        (&br, Some(b"*, br;q=0"), None),
        (&br, Some(b"identity"), None),
        (&br, Some(b""), None),
        (&br, None, None),
        (&br_gzip, Some(b"gzip, br"), Some("br")),
        (&br_gzip, Some(b"gzip;q=1, br;q=0.1"), Some("br")),
        (&br_gzip, Some(b"gzip, deflate"), Some("gzip")),
        (&gzip_br, Some(b"br, gzip;q=0"), Some("br")),
        (&gzip_br, Some(b"*;q=0.5, gzip;q=0"), Some("br")),
    ];
    for (i, (service, accept, expected)) in cases.into_iter().enumerate() {
        let got = accepted_compression(service.as_ref(), accept).map(|a| a.algo.token());
        assert_eq!(got, expected, "case {i}: {:?}", accept.map(String::from_utf8_lossy));
    }
}

/// A compressed answer's strong `ETag` becomes weak (the bytes differ from the instance's); a
/// weak one, and every `ETag` of an answer passed as it came, stay as they are.
#[test]
fn compression_weakens_a_strong_etag() {
    use dfp_routing::CompressionAlgo;
    let written = |etag: &str, coding: Option<CompressionAlgo>| {
        let fields: &[(&str, &str)] =
            &[("Content-Type", "text/html"), ("Content-Length", "4096"), ("ETag", etag)];
        let pairs = || fields.iter().map(|(n, v)| (*n, v.as_bytes()));
        let facts = analyse_response(200, false, false, pairs()).expect("valid");
        let mut out = Vec::new();
        write_response_fields(
            &mut out,
            pairs(),
            &facts,
            &HeaderEdits::default(),
            None,
            true,
            coding,
        );
        let text = String::from_utf8(out).expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix("ETag: ").map(str::to_owned))
            .expect("an ETag line")
    };
    let gzip = Some(CompressionAlgo::Gzip);
    assert_eq!(written("\"v1\"", gzip), "W/\"v1\"");
    assert_eq!(written("W/\"v1\"", gzip), "W/\"v1\"");
    assert_eq!(written("\"v1\"", None), "\"v1\"");
}

/// A table with service `s` on two instances (ports 1 and 2) and `instanceMaxConn=1`.
fn two_instances_capped_at_one() -> (dfp_routing::RouteTable, [std::net::SocketAddr; 2]) {
    use dfp_routing::{PathPrefix, RouteTableBuilder, ServiceSpec};
    let addrs = [1, 2].map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    let path = PathPrefix::parse("/s").expect("valid");
    let mut spec = ServiceSpec::new("s", &[path]);
    spec.policy.instance_max_conn = std::num::NonZeroU32::new(1);
    let mut builder = RouteTableBuilder::new();
    builder.add(spec, &addrs).expect("valid");
    (builder.build(1).expect("builds"), addrs)
}

/// `instanceMaxConn` as `choose_instance` applies it: a full instance is stepped over, every
/// one full is `NoChoice::Full` (not `Left`), a pinned request whose instance is full stays
/// off the others, and a dropped slot makes room again.
#[test]
fn instance_max_conn_steps_over_full_instances() {
    let (table, addrs) = two_instances_capped_at_one();
    let backend = table.service("s").expect("routed");

    let (first, _, first_slot) = choose_instance(backend, None, &[]).expect("room");
    let (second, _, second_slot) = choose_instance(backend, None, &[]).expect("room");
    assert_ne!(first.addr(), second.addr(), "the full one is stepped over");
    assert_eq!(choose_instance(backend, None, &[]).err(), Some(NoChoice::Full));
    // Tried and full are told apart.
    assert_eq!(choose_instance(backend, None, &addrs).err(), Some(NoChoice::Left));
    // Pinned to a full instance: not moved to another.
    let sticky = Sticky { cookie: "S", pinned: Some(first.token()) };
    assert_eq!(choose_instance(backend, Some(sticky), &[]).err(), Some(NoChoice::Full));
    drop(first_slot);
    let (again, pin, _slot) = choose_instance(backend, Some(sticky), &[]).expect("room again");
    assert_eq!((again.addr(), pin), (first.addr(), None), "pinned, not re-pinned");
    drop(second_slot);
    assert_eq!(second.health().in_flight(), 0);
}

/// `take_instance`'s queue: with every instance full, a request waits, takes the place an
/// exchange gives back (on another task, as on another thread), and gets `NoChoice::Full`
/// only once the queue time has passed with none given back.
#[tokio::test]
async fn a_request_queued_for_a_full_service_takes_the_first_place_given_back() {
    use std::time::{Duration, Instant};

    use dfp_routing::{PathPrefix, RouteTableBuilder, ServiceSpec};
    let (table, addrs) = two_instances_capped_at_one();
    let backend = table.service("s").expect("routed");

    let (_, _, first_slot) = choose_instance(backend, None, &[]).expect("room");
    let (second, _, second_slot) = choose_instance(backend, None, &[]).expect("room");

    // No queue time: Full at once.
    assert_eq!(take_instance(backend, None, &[], Duration::ZERO).await.err(), Some(NoChoice::Full));

    // Nothing is given back: after the queue time, Full.
    let started = Instant::now();
    let queued = take_instance(backend, None, &[], Duration::from_millis(100)).await;
    assert_eq!(queued.err(), Some(NoChoice::Full));
    assert!(started.elapsed() >= Duration::from_millis(100), "it waited the queue time");

    // One place is given back while the request waits: it takes that one.
    let giver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(second_slot);
    });
    let (chosen, _, _slot) =
        take_instance(backend, None, &[], Duration::from_secs(30)).await.expect("a place");
    assert_eq!(chosen.addr(), second.addr());
    giver.await.expect("no panic");
    drop(first_slot);

    // A service without a cap never waits, even with a queue time.
    let mut free = ServiceSpec::new("free", &[PathPrefix::parse("/f").expect("valid")]);
    free.policy.instance_max_conn = None;
    let mut builder = RouteTableBuilder::new();
    builder.add(free, &addrs[..1]).expect("valid");
    let table = builder.build(1).expect("builds");
    let backend = table.service("free").expect("routed");
    let held: Vec<_> = (0..3).map(|_| choose_instance(backend, None, &[]).expect("room")).collect();
    assert!(take_instance(backend, None, &[], Duration::from_secs(30)).await.is_ok());
    drop(held);
}

/// The queue's order: requests waiting for a full service are served in the order they
/// queued, one per place given back, and a request pinned to a full instance is never handed
/// a place on another.
#[tokio::test]
async fn queued_requests_are_served_in_arrival_order_and_pinned_ones_keep_their_instance() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    let (table, _) = two_instances_capped_at_one();
    let table = Arc::new(table);
    let backend = table.service("s").expect("routed");
    let (first, _, first_slot) = choose_instance(backend, None, &[]).expect("room");
    let (second, _, second_slot) = choose_instance(backend, None, &[]).expect("room");
    let (first_addr, second_addr, second_token) = (first.addr(), second.addr(), second.token());
    let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
    // Queued one after another: a pinned request (to the second instance), then three others.
    let mut waiters = Vec::new();
    for i in 0..4_usize {
        let (table, served_tx) = (table.clone(), served_tx.clone());
        waiters.push(tokio::spawn(async move {
            let backend = table.service("s").expect("routed");
            let sticky = (i == 0).then_some(Sticky { cookie: "S", pinned: Some(second_token) });
            let (chosen, _, slot) = take_instance(backend, sticky, &[], Duration::from_secs(30))
                .await
                .expect("a place before the queue time");
            served_tx.send((i, chosen.addr())).expect("listening");
            // Held a moment, then given back: it goes on to the next in the queue.
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(slot);
        }));
        tokio::time::timeout(Duration::from_secs(5), async {
            while backend.stats().queued.load(Ordering::Relaxed) < i as u64 + 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the request queued");
    }
    drop(first_slot);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(
            tokio::time::timeout(Duration::from_secs(5), served.recv()).await.expect("served"),
        );
    }
    assert_eq!(
        order,
        [Some((1, first_addr)), Some((2, first_addr)), Some((3, first_addr))],
        "in arrival order, on the instance that gave places back; the pinned one still waits"
    );
    drop(second_slot);
    let pinned = tokio::time::timeout(Duration::from_secs(5), served.recv()).await.expect("served");
    assert_eq!(pinned, Some((0, second_addr)), "the pinned request got its own instance");
    for waiter in waiters {
        waiter.await.expect("no panic");
    }
    assert_eq!(backend.stats().queued.load(Ordering::Relaxed), 0);
}

/// A service's own queue settings: `timeoutQueue` wins over the proxy's `--queue-timeout`
/// (zero: the 503 at once), and past `maxQueue` waiting a request is refused at once rather
/// than joining them; one refused so is not counted as queued.
#[tokio::test]
async fn a_service_s_own_queue_time_and_length_win_over_the_proxy_s() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use dfp_routing::{PathPrefix, RouteTableBuilder, ServiceSpec};
    let table_with = |queue_timeout: Option<Duration>, max_queue: Option<u32>| {
        let mut spec = ServiceSpec::new("s", &[PathPrefix::parse("/s").expect("valid")]);
        spec.policy.instance_max_conn = std::num::NonZeroU32::new(1);
        spec.policy.queue_timeout = queue_timeout;
        spec.policy.max_queue = max_queue.and_then(std::num::NonZeroU32::new);
        let mut builder = RouteTableBuilder::new();
        builder.add(spec, &[std::net::SocketAddr::from(([127, 0, 0, 1], 1))]).expect("valid");
        Arc::new(builder.build(1).expect("builds"))
    };
    let proxy_wide = Duration::from_secs(30);

    // timeoutQueue=0: no queue for this service, whatever the proxy's.
    let table = table_with(Some(Duration::ZERO), None);
    let backend = table.service("s").expect("routed");
    let _held = choose_instance(backend, None, &[]).expect("room");
    let started = Instant::now();
    assert_eq!(take_instance(backend, None, &[], proxy_wide).await.err(), Some(NoChoice::Full));
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once");
    assert_eq!(backend.stats().queued_total.load(Ordering::Relaxed), 0, "never queued");

    // timeoutQueue shorter than the proxy's: the service's is waited.
    let table = table_with(Some(Duration::from_millis(100)), None);
    let backend = table.service("s").expect("routed");
    let _held = choose_instance(backend, None, &[]).expect("room");
    let started = Instant::now();
    assert_eq!(take_instance(backend, None, &[], proxy_wide).await.err(), Some(NoChoice::Full));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "waited the service's time: {waited:?}");
    assert!(waited < Duration::from_secs(10), "not the proxy's: {waited:?}");

    // maxQueue=1: one waits; the next is refused at once, and uncounted.
    let table = table_with(None, Some(1));
    let backend = table.service("s").expect("routed");
    let held = choose_instance(backend, None, &[]).expect("room");
    let waiter = {
        let table = table.clone();
        tokio::spawn(async move {
            let backend = table.service("s").expect("routed");
            take_instance(backend, None, &[], proxy_wide).await.map(|(u, _, _)| u.addr())
        })
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while backend.stats().queued.load(Ordering::Relaxed) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the first request queued");
    let started = Instant::now();
    assert_eq!(take_instance(backend, None, &[], proxy_wide).await.err(), Some(NoChoice::Full));
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once");
    assert_eq!(backend.stats().queued.load(Ordering::Relaxed), 1, "the refused one left no count");
    assert_eq!(backend.stats().queued_total.load(Ordering::Relaxed), 1);
    drop(held);
    let served = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("in time");
    assert!(served.expect("no panic").is_ok(), "the queued one got the place given back");
    assert_eq!(backend.stats().queued.load(Ordering::Relaxed), 0);
}
