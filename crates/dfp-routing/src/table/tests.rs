//! Unit tests of the table: routing semantics, hosts, exclusions, conditions, conflicts,
//! carried state and publishing, through the public API.

use std::net::SocketAddr;

use super::*;
use crate::condition::PathType;
use crate::Domain;

fn p(s: &str) -> PathPrefix {
    PathPrefix::parse(s).expect("test prefixes are valid")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn table(routes: &[(&str, &[&str])]) -> RouteTable {
    let mut b = RouteTableBuilder::new();
    for (i, (service, paths)) in routes.iter().enumerate() {
        let prefixes: Vec<_> = paths.iter().map(|s| p(s)).collect();
        let port = u16::try_from(i).expect("few services") + 1;
        b.add_service(service, &prefixes, &[addr(port)]).expect("no conflicts in test table");
    }
    b.build(1).expect("test table builds")
}

/// Looks `path` up in a table of `routes` and checks which service (if any) gets it.
fn check(routes: &[(&str, &[&str])], path: &str, expected: Option<&str>) {
    let t = table(routes);
    let got = t.lookup(path).map(|m| m.backend.service().to_owned());
    assert_eq!(got.as_deref(), expected, "routes {routes:?}, path {path:?}");
}

/// A table as data: (service, its paths).
type Routes = &'static [(&'static str, &'static [&'static str])];

const BOOKS: Routes = &[("books", &["/api/v1/books"])];
const NESTED: Routes = &[
    ("api", &["/api"]),
    ("books", &["/api/v1/books"]),
    ("authors", &["/api/v1/authors", "/authors"]),
];
const WITH_ROOT: Routes = &[("web", &["/"]), ("books", &["/api/v1/books"])];

#[test]
fn routing_semantics() {
    #[rustfmt::skip]
    let cases: &[(Routes, &str, Option<&str>)] = &[
        // segment-aware prefix
        (BOOKS, "/api/v1/books", Some("books")),
        (BOOKS, "/api/v1/books/", Some("books")),
        (BOOKS, "/api/v1/books/1", Some("books")),
        (BOOKS, "/api/v1/books/1/chapters/2", Some("books")),
        (BOOKS, "/api/v1/booksellers", None),
        (BOOKS, "/api/v1/book", None),
        (BOOKS, "/api/v1", None),
        (BOOKS, "/", None),
        (BOOKS, "/API/v1/books", None),
        (BOOKS, "", None),
        // longest prefix wins, and a miss deeper down falls back to the shorter owner
        (NESTED, "/api", Some("api")),
        (NESTED, "/api/v1", Some("api")),
        (NESTED, "/api/v1/books/7", Some("books")),
        (NESTED, "/api/v1/booksellers", Some("api")),
        (NESTED, "/api/v1/bo", Some("api")),
        (NESTED, "/api/v1/authors", Some("authors")),
        (NESTED, "/api/v2/books", Some("api")),
        (NESTED, "/apix", None),
        (NESTED, "/authors/x", Some("authors")),
        (NESTED, "/author", None),
        // `/` catches everything nothing longer owns
        (WITH_ROOT, "/", Some("web")),
        (WITH_ROOT, "/index.html", Some("web")),
        (WITH_ROOT, "/api/v1/booksellers", Some("web")),
        (WITH_ROOT, "/api/v1/books/1", Some("books")),
        (WITH_ROOT, "//x", Some("web")),
    ];
    for (routes, path, expected) in cases {
        check(routes, path, *expected);
    }
}

fn spec(name: &str, paths: &[&str], domains: &[&str], excluded: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        prefixes: paths.iter().map(|s| p(s)).collect(),
        domains: domains.iter().map(|d| Domain::parse(d).expect("valid domain")).collect(),
        excluded: excluded.iter().map(|s| p(s)).collect(),
        ..ServiceSpec::default()
    }
}

#[test]
fn hosts_first_then_any_host_then_default() {
    let mut b = RouteTableBuilder::new();
    b.add(spec("shop", &["/"], &["shop.example.com"], &[]), &[addr(1)]).expect("valid");
    b.add(spec("tenants", &["/"], &["*.tenants.example.com"], &[]), &[addr(2)]).expect("valid");
    b.add(spec("api", &["/api"], &[], &[]), &[addr(3)]).expect("valid");
    b.add(spec("shop-api", &["/api"], &["shop.example.com"], &[]), &[addr(4)]).expect("valid");
    let mut fallback = spec("fallback", &[], &[], &[]);
    fallback.default_backend = true;
    b.add(fallback, &[addr(5)]).expect("valid");
    let t = b.build(1).expect("builds");
    #[rustfmt::skip]
    let cases: &[(Option<&str>, &str, &str)] = &[
        (Some("shop.example.com"), "/cart", "shop"),
        (Some("SHOP.Example.com:8080"), "/cart", "shop"),
        (Some("shop.example.com."), "/cart", "shop"),
        (Some("shop.example.com"), "/api/x", "shop-api"),
        (Some("a.tenants.example.com"), "/x", "tenants"),
        (Some("a.b.tenants.example.com"), "/api", "api"),
        (Some("tenants.example.com"), "/x", "fallback"),
        (Some("other.example.com"), "/api/v1", "api"),
        (Some("other.example.com"), "/nothing", "fallback"),
        (None, "/api", "api"),
        (Some("[::1]:80"), "/api", "api"),
    ];
    for (host, path, want) in cases {
        let got = t.lookup_host(*host, path).map(|m| m.backend.service());
        assert_eq!(got, Some(*want), "host {host:?} path {path}");
    }
    let default = t.lookup_host(Some("x"), "/nothing").expect("default");
    assert!(default.prefix.is_none());
}

#[test]
fn excluded_paths_fall_through_to_shorter_owners() {
    let mut b = RouteTableBuilder::new();
    b.add(spec("web", &["/"], &[], &[]), &[addr(1)]).expect("valid");
    b.add(spec("books", &["/api/books"], &[], &["/api/books/admin"]), &[addr(2)]).expect("valid");
    let t = b.build(1).expect("builds");
    let owner = |path: &str| t.lookup(path).map(|m| m.backend.service().to_owned());
    assert_eq!(owner("/api/books/7").as_deref(), Some("books"));
    assert_eq!(owner("/api/books/admin").as_deref(), Some("web"));
    assert_eq!(owner("/api/books/admin/x").as_deref(), Some("web"));
    assert_eq!(owner("/api/books/administrator").as_deref(), Some("books"));
}

#[test]
fn hosts_and_defaults_have_one_owner() {
    let mut b = RouteTableBuilder::new();
    b.add(spec("a", &["/x"], &["a.example.com"], &[]), &[]).expect("valid");
    b.add(spec("b", &["/x"], &["b.example.com"], &[]), &[]).expect("same path, other host");
    b.add(spec("c", &["/x"], &[], &[]), &[]).expect("same path, any host");
    let err = b.add(spec("d", &["/x"], &["A.example.com"], &[]), &[]).expect_err("taken");
    assert!(err.to_string().contains("a.example.com"), "{err}");
    let mut first = spec("e", &[], &[], &[]);
    first.default_backend = true;
    b.add(first.clone(), &[]).expect("first default");
    first.name = "f".into();
    assert!(matches!(b.add(first, &[]), Err(BuildError::DefaultTaken { .. })));
}

#[test]
fn a_path_has_one_owner() {
    let mut b = RouteTableBuilder::new();
    b.add_service("a", &[p("/x")], &[]).expect("first owner");
    let err = b.add_service("b", &[p("/x/")], &[]).expect_err("same path, other service");
    assert!(matches!(err, BuildError::PathOwned { ref owner, .. } if owner == "a"), "{err}");
    assert!(b.add_service("a", &[p("/y")], &[]).is_err(), "a service is added once");
}

/// A service with conditions: `paths` under `path_type` (none: plain prefixes),
/// `serviceHeader`, `userAgent`.
fn conditioned(
    name: &str,
    path_type: Option<PathType>,
    paths: &[&str],
    header: Option<&str>,
    agent: Option<&str>,
) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, &[]);
    match path_type {
        None => s.prefixes = paths.iter().map(|x| p(x)).collect(),
        Some(t) => {
            s.patterns = paths.iter().map(|x| PathPattern::parse(t, x).expect("valid")).collect();
        }
    }
    s.conditions = RouteConditions::parse(header, agent).expect("valid conditions");
    s
}

#[test]
fn conditions_pick_among_routes_on_one_path() {
    use PathType::*;
    let mut b = RouteTableBuilder::new();
    let services = [
        conditioned("web", None, &["/"], None, None),
        conditioned("api", None, &["/api"], None, None),
        conditioned("mobile", None, &["/api"], None, Some("iphone,android")),
        conditioned("v3", None, &["/api"], Some("X-Version:3"), None),
        conditioned("v3-mobile", None, &["/api"], Some("X-Version:3"), Some("iphone")),
        conditioned("raw", Some(Beg), &["/api/v"], None, None),
        conditioned("exact", Some(Exact), &["/api/status"], None, None),
        conditioned("images", Some(End), &[".png"], None, None),
        conditioned("numbers", Some(Regex), &["^/n/[0-9]+$"], None, None),
        conditioned("legacy", Some(Beg), &["/leg"], None, None),
        conditioned("deep", None, &["/api/v1/deep"], None, None),
    ];
    for (i, s) in services.into_iter().enumerate() {
        b.add(s, &[addr(u16::try_from(i).expect("few") + 1)]).expect("no conflict");
    }
    let t = b.build(1).expect("builds");
    let iphone: &[(&str, &str)] = &[("User-Agent", "Mozilla (iPhone)")];
    let v3: &[(&str, &str)] = &[("x-version", "3")];
    let v3_iphone: &[(&str, &str)] = &[("x-version", "3"), ("user-agent", "iphone")];
    let v4: &[(&str, &str)] = &[("x-version", "4")];
    let none: &[(&str, &str)] = &[];
    #[rustfmt::skip]
    type Fields<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, Fields<'_>, &str)] = &[
        // fields decide among the routes at /api; more conditions first
        ("/api/x", none, "api"),
        ("/api/x", iphone, "mobile"),
        ("/api/x", v3, "v3"),
        ("/api/x", v3_iphone, "v3-mobile"),
        ("/api/x", v4, "api"),
        // path_beg is a raw prefix hanging off /api: before the plain /api
        ("/api/v1", none, "raw"),
        ("/api/vx", iphone, "raw"),
        // ... but a longer plain prefix still wins
        ("/api/v1/deep/x", iphone, "deep"),
        // exact path only
        ("/api/status", iphone, "exact"),
        ("/api/status/x", none, "api"),
        // path_end and path_reg compete at /: only where no longer prefix owns the path
        ("/img/a.png", none, "images"),
        ("/api/a.png", none, "api"),
        ("/n/42", none, "numbers"),
        ("/n/42x", none, "web"),
        ("/legacy", none, "legacy"),
        ("/le", none, "web"),
    ];
    for (path, fields, want) in cases {
        let got = t.lookup_request(None, path, fields).map(|m| m.backend.service());
        assert_eq!(got, Some(*want), "path {path} fields {fields:?}");
    }
    // Without fields, header conditions never hold.
    assert_eq!(t.lookup("/api/x").map(|m| m.backend.service()), Some("api"));
}

#[test]
fn conditioned_routes_fall_through_to_shorter_owners_or_miss() {
    let mut b = RouteTableBuilder::new();
    b.add(conditioned("bots", None, &["/api"], None, Some("googlebot")), &[]).expect("valid");
    b.add(conditioned("root", None, &["/"], Some("X-Env:prod"), None), &[]).expect("valid");
    let t = b.build(1).expect("builds");
    let owner = |fields: &[(&str, &str)]| {
        t.lookup_request(None, "/api/x", &fields).map(|m| m.backend.service().to_owned())
    };
    assert_eq!(owner(&[("user-agent", "Googlebot/2.1")]).as_deref(), Some("bots"));
    assert_eq!(owner(&[("x-env", "prod")]).as_deref(), Some("root"));
    assert_eq!(owner(&[("x-env", "dev")]), None, "no candidate anywhere: 404");
}

#[test]
fn equal_conditions_on_one_path_conflict() {
    use PathType::*;
    let mut b = RouteTableBuilder::new();
    b.add(conditioned("a", None, &["/api"], None, Some("iphone")), &[]).expect("first");
    b.add(conditioned("b", None, &["/api"], None, None), &[]).expect("other conditions");
    b.add(conditioned("c", None, &["/api"], Some("X-V:1"), None), &[]).expect("other");
    b.add(conditioned("d", Some(Beg), &["/api"], None, None), &[]).expect("other type");
    b.add(conditioned("e", Some(Exact), &["/api"], None, None), &[]).expect("other type");
    let cases = [
        conditioned("x", None, &["/api"], None, Some("IPhone")),
        conditioned("x", None, &["/api/"], None, None),
        conditioned("x", None, &["/api"], Some("x-v : 1"), None),
        conditioned("x", Some(Beg), &["/api"], None, None),
    ];
    for spec in cases {
        let err = b.add(spec.clone(), &[]).expect_err("same path, same conditions");
        assert!(matches!(err, BuildError::PathOwned { .. }), "{spec:?}: {err}");
    }
    let err =
        b.add(conditioned("x", None, &["/api"], None, Some("iphone")), &[]).expect_err("duplicate");
    assert!(err.to_string().contains("/api (userAgent=iphone)"), "{err}");
}

#[test]
fn service_names_compare_as_consul_compares_them() {
    let mut b = RouteTableBuilder::new();
    b.add_service("Books-ms", &[p("/b")], &[addr(1)]).expect("first");
    let err = b.add_service("books-MS", &[p("/c")], &[]).expect_err("the same service");
    assert!(matches!(err, BuildError::DuplicateService(_)), "{err}");
    let t = b.build(1).expect("builds");
    assert_eq!(t.service("BOOKS-MS").map(|b| b.service()), Some("Books-ms"), "display kept");

    // State follows the name in any case: counters carry to `books-ms`.
    t.service("books-ms").expect("routed").stats().record_response(200, 10);
    let mut next = RouteTableBuilder::new();
    next.carry_state_from(&t);
    next.add_service("books-ms", &[p("/b")], &[addr(1)]).expect("valid");
    let next = next.build(2).expect("builds");
    let stats = next.service("books-ms").expect("routed").stats();
    assert_eq!(stats.responses()[1], 1);
}

#[test]
fn a_removed_services_counters_are_kept_and_resumed() {
    let count = |t: &RouteTable| -> Vec<(String, u64)> {
        let live = t.services().map(|s| (s.backend.service(), s.backend.stats()));
        live.chain(t.retired_stats()).map(|(n, s)| (n.to_owned(), s.responses()[1])).collect()
    };
    let mut b = RouteTableBuilder::new();
    b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
    b.add_service("b", &[p("/b")], &[addr(2)]).expect("valid");
    let first = b.build(1).expect("builds");
    first.service("b").expect("routed").stats().record_response(200, 1);

    // `b` removed: its counters stay, as retired, through any number of swaps.
    let mut tables = vec![first];
    for version in 2..=3 {
        let mut b = RouteTableBuilder::new();
        b.carry_state_from(tables.last().expect("a table"));
        b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
        tables.push(b.build(version).expect("builds"));
    }
    let removed = tables.last().expect("a table");
    assert_eq!(count(removed), [("a".to_owned(), 0), ("b".to_owned(), 1)]);

    // Routed again (in another case): it resumes its counters, and is no longer retired.
    let mut b = RouteTableBuilder::new();
    b.carry_state_from(removed);
    b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
    b.add_service("B", &[p("/b")], &[addr(2)]).expect("valid");
    let back = b.build(4).expect("builds");
    assert_eq!(back.retired_stats().len(), 0);
    assert_eq!(count(&back), [("a".to_owned(), 0), ("B".to_owned(), 1)], "ordered by key");
}

#[test]
fn round_robin_is_exact() {
    let instances: Vec<_> = (1..=3).map(addr).collect();
    let mut b = RouteTableBuilder::new();
    b.add_service("s", &[p("/")], &instances).expect("valid");
    let t = b.build(1).expect("builds");
    let backend = t.lookup("/").expect("routed").backend;
    let mut hits = HashMap::new();
    for _ in 0..100 {
        *hits.entry(backend.next_instance(|| 0).expect("has instances").addr()).or_insert(0) += 1;
    }
    for i in &instances {
        assert!((33..=34).contains(&hits[i]), "{hits:?}");
    }
}

#[test]
fn rotation_continues_across_swaps() {
    let instances: Vec<_> = (1..=2).map(addr).collect();
    let build = |previous: Option<&RouteTable>, version| {
        let mut b = RouteTableBuilder::new();
        if let Some(prev) = previous {
            b.carry_state_from(prev);
        }
        b.add_service("s", &[p("/")], &instances).expect("valid");
        b.build(version).expect("builds")
    };
    let first = build(None, 1);
    assert_eq!(
        first.service("s").and_then(|b| b.next_instance(|| 0)).map(|u| u.addr()),
        Some(addr(1))
    );
    let second = build(Some(&first), 2);
    assert_eq!(
        second.service("s").and_then(|b| b.next_instance(|| 0)).map(|u| u.addr()),
        Some(addr(2))
    );
}

#[test]
fn no_instance_means_none() {
    let mut b = RouteTableBuilder::new();
    b.add_service("s", &[p("/s")], &[]).expect("valid");
    let t = b.build(1).expect("builds");
    assert_eq!(
        t.lookup("/s").expect("still routed").backend.next_instance(|| 0).map(|u| u.addr()),
        None
    );
}

#[test]
fn handle_publishes_whole_tables() {
    let handle = TableHandle::default();
    let before = handle.snapshot();
    handle.publish(table(BOOKS));
    assert_eq!(before.version(), 0);
    assert!(before.lookup("/api/v1/books").is_none(), "old readers keep the old table");
    assert_eq!(handle.load().version(), 1);
    assert!(handle.load().lookup("/api/v1/books").is_some());
}

#[test]
fn many_routes_build_and_resolve() {
    let mut b = RouteTableBuilder::new();
    for i in 0..10_000 {
        let name = format!("svc-{i}");
        b.add_service(&name, &[p(&format!("/api/{i}/items"))], &[addr(1)]).expect("valid");
    }
    let t = b.build(1).expect("builds");
    assert_eq!(t.lookup("/api/9999/items/3").map(|m| m.backend.service()), Some("svc-9999"));
    assert!(t.lookup("/api/9999/itemsx").is_none());
}

/// A destination of service `name`: its paths on `hosts`, its instance ports, an https
/// redirect code as a visible piece of policy.
fn destination(name: &str, paths: &[&str], hosts: &[&str], code: Option<u16>) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, &paths.iter().map(|s| p(s)).collect::<Vec<_>>());
    spec.domains = hosts.iter().map(|h| Domain::parse(h).expect("test domain")).collect();
    spec.policy.https_redirect = code;
    spec
}

#[test]
fn each_destination_of_a_service_routes_with_its_own_policy_and_instances() {
    let mut b = RouteTableBuilder::new();
    let mut first = destination("books", &["/a"], &[], None);
    first.default_backend = true;
    b.add_destinations(vec![
        (first, vec![addr(8080)]),
        (destination("books", &["/b"], &[], Some(301)), vec![addr(9090)]),
        (destination("Books", &["/a"], &["b.example"], Some(308)), vec![addr(8080)]),
    ])
    .expect("distinct routes");
    let t = b.build(1).expect("builds");
    let at = |host: Option<&str>, path: &str| {
        let m = t.lookup_host(host, path).expect("routed");
        (
            m.backend.service().to_owned(),
            m.backend.policy().https_redirect,
            m.backend.addrs().next(),
        )
    };
    assert_eq!(at(None, "/a/1"), ("books".to_owned(), None, Some(addr(8080))));
    assert_eq!(at(None, "/b"), ("books".to_owned(), Some(301), Some(addr(9090))));
    assert_eq!(at(Some("b.example"), "/a"), ("books".to_owned(), Some(308), Some(addr(8080))));
    assert_eq!(at(None, "/elsewhere").1, None, "the default backend is the first destination");

    let destinations: Vec<usize> = t.services().map(|s| s.destination).collect();
    assert_eq!(destinations, [0, 1, 2]);
    assert!(t.service("BOOKS").is_some_and(|b| b.policy().https_redirect.is_none()));

    // One service: counters, cursor and each address's health are shared.
    let backends: Vec<&Arc<Backend>> = t.services().map(|s| s.backend).collect();
    assert!(Arc::ptr_eq(&backends[0].stats, &backends[2].stats));
    assert!(Arc::ptr_eq(&backends[0].cursor, &backends[1].cursor));
    backends[2].instances()[0].health().record_failure(crate::health_clock_ms());
    assert!(backends[0].instances()[0].health().failures() > 0, "same instance, same health");

    // Carried to the next table: the ejection stays, for every destination.
    let mut next = RouteTableBuilder::new();
    next.carry_state_from(&t);
    next.add_destinations(vec![
        (destination("books", &["/a"], &[], None), vec![addr(8080)]),
        (destination("books", &["/b"], &[], None), vec![addr(8080)]),
    ])
    .expect("valid");
    let next = next.build(2).expect("builds");
    for s in next.services() {
        assert!(s.backend.instances()[0].health().failures() > 0, "destination {}", s.destination);
    }
}

#[test]
fn two_destinations_of_one_service_may_not_claim_one_route() {
    let mut b = RouteTableBuilder::new();
    let err = b
        .add_destinations(vec![
            (destination("books", &["/a"], &[], None), vec![]),
            (destination("books", &["/a"], &[], Some(301)), vec![]),
        ])
        .expect_err("same path twice");
    assert!(matches!(err, BuildError::RoutedTwice { .. }), "{err}");
    assert!(err.to_string().contains("servicePath.N"), "{err}");
    let err = b
        .add_destinations(vec![
            (destination("books", &["/a"], &[], None), vec![]),
            (destination("films", &["/b"], &[], None), vec![]),
        ])
        .expect_err("another service's name");
    assert!(matches!(err, BuildError::ForeignDestination { .. }), "{err}");
    // Nothing of a refused service was kept.
    b.add_service("films", &[p("/a")], &[]).expect("the path is free");
}

fn tcp(name: &str, port: u16) -> ServiceSpec {
    ServiceSpec { name: name.to_owned(), tcp_port: Some(port), ..ServiceSpec::default() }
}

#[test]
fn tcp_services_own_their_port_and_keep_their_state_across_swaps() {
    let mut b = RouteTableBuilder::new();
    b.add(tcp("redis", 6379), &[addr(7001), addr(7002)]).expect("free port");
    b.add(tcp("pg", 5432), &[addr(7003)]).expect("free port");
    b.add_service("web", &[p("/")], &[addr(8080)]).expect("http beside tcp");
    let err = b.add(tcp("other", 6379), &[]).expect_err("port taken");
    assert!(matches!(err, BuildError::PortOwned { port: 6379, .. }), "{err}");
    assert!(err.to_string().contains("\"redis\""), "{err}");
    let t = b.build(1).expect("builds");
    assert_eq!(t.tcp_route(6379).map(|b| b.service()), Some("redis"));
    assert_eq!(t.tcp_route(5432).map(|b| b.service()), Some("pg"));
    assert!(t.tcp_route(80).is_none());
    let ports: Vec<u16> = t.tcp_ports().map(|(p, _)| p).collect();
    assert_eq!(ports, [5432, 6379]);
    // A TCP service routes no path, and HTTP lookups never reach it.
    assert_eq!(t.lookup("/anything").map(|m| m.backend.service()), Some("web"));

    // Rotation and health carry over a swap that changes the instances.
    let redis = t.tcp_route(6379).expect("routed");
    assert_eq!(redis.next_instance(|| 0).map(|u| u.addr()), Some(addr(7001)));
    redis.instances()[1].health().record_failure(crate::health_clock_ms());
    let mut next = RouteTableBuilder::new();
    next.carry_state_from(&t);
    next.add(tcp("redis", 6379), &[addr(7001), addr(7002), addr(7004)]).expect("same port");
    let next = next.build(2).expect("builds");
    let redis2 = next.tcp_route(6379).expect("routed");
    assert!(Arc::ptr_eq(&redis.stats, &redis2.stats));
    assert!(redis2.instances()[1].health().failures() > 0, "ejection carried");
    assert!(next.tcp_route(5432).is_none(), "pg removed: its port is free");
}

fn by_name(name: &str, port: u16, how: StreamTls, domains: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        tcp_port: Some(port),
        stream_tls: how,
        domains: domains.iter().map(|d| Domain::parse(d).expect("valid")).collect(),
        ..ServiceSpec::default()
    }
}

#[test]
fn services_chosen_by_server_name_share_a_port_exact_name_before_wildcard() {
    let mut b = RouteTableBuilder::new();
    b.add(by_name("db", 443, StreamTls::Passthrough, &["db.example.com"]), &[addr(7001)])
        .expect("free port");
    b.add(by_name("tenants", 443, StreamTls::Passthrough, &["*.example.com"]), &[addr(7002)])
        .expect("another name on the port");
    b.add(by_name("pg", 5433, StreamTls::Terminate, &["pg.example.com"]), &[addr(7003)])
        .expect("free port");
    b.add(tcp("redis", 6379), &[addr(7004)]).expect("free port");
    b.add_service("web", &[p("/")], &[addr(8080)]).expect("http beside");

    let err = b
        .add(by_name("other", 443, StreamTls::Terminate, &["x.org", "DB.example.com"]), &[])
        .expect_err("a name another service has on the port");
    assert!(matches!(err, BuildError::NameOwned { port: 443, .. }), "{err}");
    assert!(err.to_string().contains("db.example.com") && err.to_string().contains("\"db\""));
    let err = b.add(tcp("plain", 443), &[]).expect_err("a whole port among named services");
    assert!(matches!(err, BuildError::PortOwned { port: 443, .. }), "{err}");
    let err = b
        .add(by_name("named", 6379, StreamTls::Passthrough, &["r.example.com"]), &[])
        .expect_err("a name on a port one service has whole");
    assert!(matches!(err, BuildError::PortOwned { port: 6379, .. }), "{err}");
    let err = b.add(by_name("nameless", 7000, StreamTls::Passthrough, &[]), &[]).expect_err("");
    assert!(matches!(err, BuildError::NoServerName { .. }), "{err}");
    // The same name on another port is another route.
    b.add(by_name("db2", 8443, StreamTls::Passthrough, &["db.example.com"]), &[addr(7005)])
        .expect("another port");

    let t = b.build(1).expect("builds");
    let route = |port, name| t.tls_route(port, name).map(|(b, how)| (b.service(), how));
    assert_eq!(route(443, "db.example.com"), Some(("db", StreamTls::Passthrough)));
    assert_eq!(route(443, "a.example.com"), Some(("tenants", StreamTls::Passthrough)));
    assert_eq!(route(443, "a.b.example.com"), None, "a wildcard is one label");
    assert_eq!(route(443, "example.com"), None);
    assert_eq!(route(443, ".example.com"), None);
    assert_eq!(route(8443, "db.example.com"), Some(("db2", StreamTls::Passthrough)));
    assert_eq!(route(5433, "pg.example.com"), Some(("pg", StreamTls::Terminate)));
    assert_eq!(route(5433, "db.example.com"), None);
    assert!(t.routes_by_server_name(443) && t.routes_by_server_name(5433));
    assert!(!t.routes_by_server_name(6379) && !t.routes_by_server_name(80));
    assert!(t.tcp_route(443).is_none(), "a port shared by name is no one's whole port");
    assert_eq!(t.tcp_route(6379).map(|b| b.service()), Some("redis"));
    let ports: Vec<(u16, &str)> = t.tcp_ports().map(|(p, b)| (p, b.service())).collect();
    assert_eq!(
        ports,
        [(443, "db"), (443, "tenants"), (5433, "pg"), (6379, "redis"), (8443, "db2")]
    );
    assert_eq!(t.lookup("/x").map(|m| m.backend.service()), Some("web"));
    assert!(t
        .lookup_host(Some("db.example.com"), "/x")
        .is_some_and(|m| m.backend.service() == "web"));
}
