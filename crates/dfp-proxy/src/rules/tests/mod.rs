//! The rules as tables: input, expected verdict.

use super::*;

#[test]
fn hosts() {
    for ok in
        ["shop.example", "shop.example:8080", "127.0.0.1:80", "[::1]", "[::1]:80", "a_b", "t:65535"]
    {
        assert!(check_host(ok.as_bytes()).is_ok(), "{ok}");
    }
    for bad in [
        "", ":80", "a b", "a/b", "a:", "a:123456", "t:99999", "t:0", "[::1", "[]", "a@b", "a,b",
        "a:8x", "[::1]x", "a:-1",
    ] {
        assert!(check_host(bad.as_bytes()).is_err(), "{bad}");
    }
}

fn facts(
    http10: bool,
    fields: &[(&'static str, &'static str)],
) -> Result<RequestFacts<'static>, u16> {
    analyse_request(http10, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
        .map_err(|e| e.status_and_text().0.as_u16())
}

#[test]
fn request_framing_follows_rfc_9112() {
    let body = |f: &[(&'static str, &'static str)]| facts(false, f).map(|f| f.body());
    assert_eq!(body(&[("host", "a")]), Ok(RequestBody::None));
    assert_eq!(body(&[("host", "a"), ("content-length", "5")]), Ok(RequestBody::Length(5)));
    assert_eq!(
        body(&[("host", "a"), ("content-length", "5"), ("Content-Length", "5")]),
        Ok(RequestBody::Length(5))
    );
    assert_eq!(body(&[("host", "a"), ("content-length", "5, 5")]), Err(400));
    assert_eq!(body(&[("host", "a"), ("content-length", "5"), ("content-length", "6")]), Err(400));
    assert_eq!(body(&[("host", "a"), ("content-length", "+5")]), Err(400));
    assert_eq!(body(&[("host", "a"), ("transfer-encoding", "chunked")]), Ok(RequestBody::Chunked));
    assert_eq!(body(&[("host", "a"), ("transfer-encoding", "Chunked ")]), Ok(RequestBody::Chunked));
    assert_eq!(body(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]), Err(501));
    assert_eq!(body(&[("host", "a"), ("transfer-encoding", "chunked, gzip")]), Err(400));
    assert_eq!(
        body(&[("host", "a"), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]),
        Err(501)
    );
    assert_eq!(
        body(&[("host", "a"), ("transfer-encoding", "chunked"), ("content-length", "3")]),
        Err(400)
    );
    assert_eq!(facts(true, &[("transfer-encoding", "chunked")]).map(|f| f.body()), Err(400));
    assert_eq!(body(&[]), Err(400), "HTTP/1.1 needs a Host");
    assert!(facts(true, &[]).is_ok(), "HTTP/1.0 may omit it");
    assert_eq!(body(&[("host", "a"), ("host", "a")]), Err(400));
    assert_eq!(body(&[("host", "a"), ("expect", "100-continue")]), Ok(RequestBody::None));
    assert_eq!(body(&[("host", "a"), ("expect", "something")]), Err(417));
}

#[test]
fn connection_options() {
    let f =
        facts(false, &[("host", "a"), ("connection", "Upgrade, close"), ("upgrade", "websocket")])
            .expect("fine");
    assert!(f.close);
    assert_eq!(f.upgrade, Some(&b"websocket"[..]));
    let f = facts(false, &[("host", "a"), ("upgrade", "websocket")]).expect("fine");
    assert_eq!(f.upgrade, None, "Upgrade without Connection: upgrade is only hop-by-hop");
    let f = facts(true, &[("connection", "keep-alive")]).expect("fine");
    assert!(!f.close, "an HTTP/1.0 client that asks to keep the connection");
    assert!(facts(true, &[]).expect("fine").close);
}

fn no_cookie(_: &str) -> Option<u64> {
    None
}
const NO_COOKIE: fn(&str) -> Option<u64> = no_cookie;

fn upstream_head(fields: &[(&'static str, &'static str)], policy: &ServicePolicy) -> String {
    let pairs = || fields.iter().map(|(n, v)| (*n, v.as_bytes()));
    let facts = analyse_request(false, pairs()).expect("valid request");
    let peer = || std::net::IpAddr::from([10, 0, 0, 9]);
    let admission = Admission {
        https: false,
        client_cert: false,
        method: "GET",
        client: ClientIp(&peer),
        host: Some("a"),
        path: "/",
        query: None,
        authorization: facts.authorization,
        forwarded_proto: None,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: facts.accept_encoding,
    };
    let admitted =
        admit(policy, "svc", &admission, (Duration::from_secs(1), Duration::from_secs(1)))
            .expect("admitted");
    let forwarding =
        Forwarding { client_ip: "10.0.0.9", proto: "http", host: facts.host.unwrap_or_default() };
    let mut out = Vec::new();
    write_request_fields(&mut out, pairs(), &facts, &admitted, &forwarding);
    String::from_utf8(out).expect("text")
}

#[test]
fn request_fields_lose_hop_by_hop_ones_but_never_protected_ones() {
    let head = upstream_head(
        &[
            ("Host", "a"),
            ("Connection", "keep-alive, X-Secret, Host, Content-Length, X-Forwarded-For"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Forwarded-Host", "spoofed"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("Content-Length", "3"),
            ("TE", "gzip, trailers"),
            ("Accept", "*/*"),
        ],
        &ServicePolicy::default(),
    );
    assert_eq!(
        head,
        "Content-Length: 3\r\nAccept: */*\r\nte: trailers\r\nhost: a\r\n\
         x-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n"
    );
}

#[test]
fn request_edits_and_auth_apply() {
    let policy = ServicePolicy {
        auth: service_users(),
        request_headers: HeaderEdits {
            delete: vec![HeaderEdits::parse_name("X-Drop").expect("name")],
            set: vec![HeaderEdits::parse_pair("X-Env prod").expect("pair")],
            add: vec![HeaderEdits::parse_pair("X-Tag t").expect("pair")],
        },
        ..ServicePolicy::default()
    };
    let head = upstream_head(
        &[("Host", "a"), ("Authorization", "Basic dTpw"), ("X-Drop", "1"), ("x-env", "dev")],
        &policy,
    );
    assert_eq!(
        head,
        "host: a\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\
         x-env: prod\r\nx-tag: t\r\n"
    );
}

#[test]
fn policy_answers_in_order_redirect_auth_rewrite() {
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let peer = || std::net::IpAddr::from([10, 0, 0, 9]);
    let request = Admission {
        https: false,
        client_cert: false,
        method: "GET",
        client: ClientIp(&peer),
        host: Some("shop:80"),
        path: "/a",
        query: Some("q=1"),
        authorization: None,
        forwarded_proto: None,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: None,
    };
    let redirect = ServicePolicy { https_redirect: Some(308), ..ServicePolicy::default() };
    match admit(&redirect, "s", &request, defaults) {
        Err(ProxyError::Redirect { location, status, .. }) => {
            assert_eq!(location, "https://shop/a?q=1");
            assert_eq!(status, 308);
        }
        other => panic!("{other:?}"),
    }
    assert!(admit(&redirect, "s", &Admission { https: true, ..request }, defaults).is_ok());
    let auth = ServicePolicy { auth: service_users(), ..ServicePolicy::default() };
    assert!(matches!(admit(&auth, "s", &request, defaults), Err(ProxyError::Unauthorized { .. })));
    let rewrite = ServicePolicy {
        path_rewrite: Some(dfp_routing::PathRewrite::new("^/a", "/b").expect("regex")),
        server_timeout: Some(Duration::from_secs(7)),
        ..ServicePolicy::default()
    };
    let admitted = admit(&rewrite, "s", &request, defaults).expect("admitted");
    assert_eq!(admitted.rewritten.as_deref(), Some("/b"));
    assert_eq!(admitted.server_timeout, Duration::from_secs(7));
    assert_eq!(admitted.tunnel_timeout, Duration::from_secs(2));
    let broken = ServicePolicy {
        path_rewrite: Some(dfp_routing::PathRewrite::new("^/a", "nope").expect("regex")),
        ..ServicePolicy::default()
    };
    assert!(matches!(admit(&broken, "s", &request, defaults), Err(ProxyError::RewriteFailed)));
}

/// Which answer each combination of access rules gives, in `admit`'s order: source lists,
/// then `denyHttp`, then methods, then the redirect, then authentication.
#[test]
fn access_rules_answer_in_order() {
    use crate::error::Forbidden;
    use dfp_routing::{MethodList, SourceList};
    let defaults = (Duration::from_secs(1), Duration::from_secs(2));
    let inside = || std::net::IpAddr::from([10, 1, 2, 3]);
    let outside = || std::net::IpAddr::from([192, 0, 2, 1]);
    let mapped = || "::ffff:10.1.2.3".parse().expect("address");
    let never = || -> std::net::IpAddr { panic!("a service without source lists read the client") };
    let request = |https, method, client| Admission {
        https,
        client_cert: false,
        method,
        client,
        host: Some("shop"),
        path: "/a",
        query: None,
        authorization: None,
        forwarded_proto: None,
        cookie: CookieToken(&NO_COOKIE),
        accept_encoding: None,
    };
    let policy = ServicePolicy {
        allowed_sources: SourceList::parse("10.0.0.0/8").expect("list"),
        denied_sources: SourceList::parse("10.9.0.0/16").expect("list"),
        deny_http: true,
        allowed_methods: MethodList::parse("GET,POST,DELETE").expect("list"),
        denied_methods: MethodList::parse("DELETE").expect("list"),
        https_redirect: Some(301),
        auth: service_users(),
        ..ServicePolicy::default()
    };
    let in_denied = || std::net::IpAddr::from([10, 9, 1, 1]);
    type Verdict = Result<(), &'static str>;
    let cases: [(bool, &str, ClientIp<'_>, Verdict); 9] = [
        // The address first: even a plain-HTTP PUT from outside is told only that.
        (false, "PUT", ClientIp(&outside), Err("source")),
        (true, "GET", ClientIp(&in_denied), Err("source")),
        // Then plain HTTP, before the method and the redirect.
        (false, "PUT", ClientIp(&inside), Err("http")),
        (false, "GET", ClientIp(&mapped), Err("http")),
        // Then the method: not allowed, or denied (denied wins over allowed).
        (true, "PUT", ClientIp(&inside), Err("method")),
        (true, "delete", ClientIp(&inside), Err("method")),
        // Then authentication.
        (true, "GET", ClientIp(&inside), Err("auth")),
        (true, "post", ClientIp(&mapped), Err("auth")),
        (true, "GET", ClientIp(&inside), Err("auth")),
    ];
    for (https, method, client, expected) in cases {
        let verdict: Verdict = match admit(&policy, "s", &request(https, method, client), defaults)
        {
            Ok(_) => Ok(()),
            Err(ProxyError::Forbidden(Forbidden::Source)) => Err("source"),
            Err(ProxyError::Forbidden(Forbidden::Http)) => Err("http"),
            Err(ProxyError::Forbidden(Forbidden::Method)) => Err("method"),
            Err(ProxyError::Unauthorized { .. }) => Err("auth"),
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(verdict, expected, "https={https} {method}");
    }
    // Without denyHttp, the redirect comes after the method check.
    let redirect = ServicePolicy {
        deny_http: false,
        auth: dfp_routing::Authentication::Open,
        ..policy.clone()
    };
    assert!(matches!(
        admit(&redirect, "s", &request(false, "PUT", ClientIp(&inside)), defaults),
        Err(ProxyError::Forbidden(Forbidden::Method))
    ));
    assert!(matches!(
        admit(&redirect, "s", &request(false, "GET", ClientIp(&inside)), defaults),
        Err(ProxyError::Redirect { .. })
    ));
    assert!(admit(&redirect, "s", &request(true, "GET", ClientIp(&inside)), defaults).is_ok());
    // Only a deny list: everyone else passes; no list: the client is never looked for.
    let deny_only = ServicePolicy {
        denied_sources: SourceList::parse("192.0.2.0/24").expect("list"),
        ..ServicePolicy::default()
    };
    assert!(admit(&deny_only, "s", &request(false, "GET", ClientIp(&inside)), defaults).is_ok());
    assert!(admit(&deny_only, "s", &request(false, "GET", ClientIp(&outside)), defaults).is_err());
    let open = ServicePolicy::default();
    assert!(admit(&open, "s", &request(false, "BREW", ClientIp(&never)), defaults).is_ok());
}

fn framing(
    status: u16,
    fields: &[(&'static str, &'static str)],
    head_request: bool,
) -> Result<Framing, &'static str> {
    analyse_response(status, false, head_request, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
        .map(|f| f.framing)
}

#[test]
fn response_framing_follows_rfc_9112() {
    assert_eq!(framing(200, &[("content-length", "3")], false), Ok(Framing::Length(3)));
    assert_eq!(framing(200, &[("content-length", "3")], true), Ok(Framing::Empty));
    assert_eq!(framing(204, &[], false), Ok(Framing::Empty));
    assert_eq!(framing(304, &[("content-length", "9")], false), Ok(Framing::Empty));
    assert_eq!(framing(200, &[("transfer-encoding", "chunked")], false), Ok(Framing::Chunked));
    assert_eq!(
        framing(200, &[("transfer-encoding", "gzip, Chunked"), ("content-length", "5")], false),
        Ok(Framing::Chunked)
    );
    assert_eq!(framing(200, &[("transfer-encoding", "gzip")], false), Ok(Framing::UntilClose));
    assert_eq!(framing(200, &[], false), Ok(Framing::UntilClose));
    assert_eq!(
        framing(200, &[("content-length", "3"), ("content-length", "3")], false),
        Ok(Framing::Length(3))
    );
    assert!(framing(200, &[("content-length", "3"), ("content-length", "4")], false).is_err());
    assert!(framing(200, &[("content-length", "-1")], false).is_err());
    assert!(framing(200, &[("content-length", "5, 5")], false).is_err());
}

#[test]
fn response_fields_lose_hop_by_hop_ones_and_a_length_beside_chunks() {
    let fields: &[(&str, &str)] = &[
        ("Connection", "keep-alive, X-Hop, Date"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Thing", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "4"),
        ("Date", "Mon, 30 Nov 2026 15:00:00 GMT"),
        ("X-Kept", "yes"),
    ];
    let pairs = || fields.iter().map(|(n, v)| (*n, v.as_bytes()));
    let facts = analyse_response(200, false, false, pairs()).expect("valid");
    let mut out = Vec::new();
    write_response_fields(&mut out, pairs(), &facts, &HeaderEdits::default(), None, true, None);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "Transfer-Encoding: chunked\r\nDate: Mon, 30 Nov 2026 15:00:00 GMT\r\nX-Kept: yes\r\n"
    );
}

#[test]
fn targets() {
    let t = parse_target("/a/b?x=1").expect("origin form");
    assert_eq!((t.path, t.query, t.authority), ("/a/b", Some("x=1"), None));
    let t = parse_target("http://a.example:8080/p?q").expect("absolute form");
    assert_eq!((t.path, t.query, t.authority), ("/p", Some("q"), Some("a.example:8080")));
    let t = parse_target("HTTP://a.example").expect("absolute form without a path");
    assert_eq!((t.path, t.authority), ("/", Some("a.example")));
    for bad in ["*", "a.example:80", "/a#frag", "http://a@b/", "ftp://a/"] {
        assert!(parse_target(bad).is_err(), "{bad}");
    }
    assert!(parse_target("/a\"<>{}|^[]").is_ok(), "visible ASCII passes, as most servers read it");
}

#[test]
fn failures_blame_the_right_side() {
    let cases: [(Failure, bool, u16); 5] = [
        (Failure::Unreachable(std::io::ErrorKind::ConnectionRefused.into()), true, 502),
        (Failure::BadResponse("x"), true, 502),
        (Failure::Timeout, false, 504),
        (Failure::Client("broken body\n"), false, 400),
        (Failure::Broken(200), false, 502),
    ];
    for (failure, blames, status) in cases {
        assert_eq!(failure.blames_instance(), blames, "{failure}");
        assert_eq!(failure.answer().status_and_text().0.as_u16(), status, "{failure}");
    }
}

#[test]
fn only_idempotent_bodiless_requests_are_sent_again() {
    for (method, body, upgrade, expected) in [
        ("GET", false, false, true),
        ("HEAD", false, false, true),
        ("PUT", false, false, true),
        ("DELETE", false, false, true),
        ("OPTIONS", false, false, true),
        ("TRACE", false, false, true),
        ("PUT", true, false, false),
        ("GET", true, false, false),
        ("POST", false, false, false),
        ("PATCH", false, false, false),
        ("GET", false, true, false),
    ] {
        assert_eq!(
            replayable(method, body, upgrade),
            expected,
            "{method} body={body} upgrade={upgrade}"
        );
    }
}

fn service_users() -> dfp_routing::Authentication {
    dfp_routing::Authentication::Users {
        users: vec![dfp_routing::Credential::new("u", "p", false).expect("user")].into(),
        from: dfp_routing::UsersFrom::Service,
    }
}

mod options;
