//! Property tests: the index lookup agrees with the plain definition of
//! "longest segment-aware prefix" on random tables and paths, and never panics.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::{RouteTableBuilder, ServiceSpec};
use crate::PathPrefix;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("ab".to_owned()),
        Just("b".to_owned()),
        Just("api".to_owned()),
        "[a-c]{1,3}"
    ]
}

fn prefix() -> impl Strategy<Value = String> {
    proptest::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn request_path() -> impl Strategy<Value = String> {
    (proptest::collection::vec(segment(), 0..5), prop_oneof![Just(""), Just("/"), Just("x")])
        .prop_map(|(s, tail)| format!("/{}{tail}", s.join("/")))
}

/// The definition: `p` owns `path` when `p` is `/`, or `path` is `p`, or `path` starts with
/// `p/`; the longest owner wins.
fn reference<'a>(prefixes: &'a [String], path: &str) -> Option<&'a str> {
    prefixes
        .iter()
        .filter(|p| *p == "/" || path == p.as_str() || path.starts_with(&format!("{p}/")))
        .max_by_key(|p| p.len())
        .map(String::as_str)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn lookup_is_longest_segment_aware_prefix(
        raw in proptest::collection::btree_set(prefix(), 1..12),
        paths in proptest::collection::vec(request_path(), 1..16),
    ) {
        let prefixes: Vec<String> = raw.into_iter().collect();
        let mut builder = RouteTableBuilder::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        for p in &prefixes {
            // Each prefix is its own service, named after it.
            let parsed = PathPrefix::parse(p).expect("generated prefixes are valid");
            builder.add_service(p, &[parsed], &[addr]).expect("distinct prefixes");
        }
        let table = builder.build(1).expect("builds");
        for path in &paths {
            let got = table.lookup(path).map(|m| m.backend.service());
            prop_assert_eq!(got, reference(&prefixes, path), "path {}", path);
        }
    }

    #[test]
    fn parse_and_lookup_never_panic(input in "\\PC{0,40}", path in "\\PC{0,40}") {
        if let Ok(prefix) = PathPrefix::parse(&input) {
            let reparsed = PathPrefix::parse(prefix.as_str());
            prop_assert_eq!(reparsed, Ok(prefix.clone()));
            let mut builder = RouteTableBuilder::new();
            builder.add_service("s", &[prefix], &[]).expect("one service");
            let table = builder.build(1).expect("builds");
            let _ = table.lookup(&path);
        }
    }
}

/// One change of a service in [`edits_are_builds_from_nothing`]: set with these paths, hosts
/// and TCP port (and the default role), or removed.
#[derive(Debug, Clone)]
enum Edit {
    Set {
        service: usize,
        paths: Vec<String>,
        hosts: Vec<&'static str>,
        port: Option<u16>,
        default: bool,
    },
    Remove {
        service: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let hosts = proptest::sample::subsequence(vec!["a.test", "b.test", "*.test"], 0..=2);
    let port = proptest::option::weighted(0.2, prop_oneof![Just(7001_u16), Just(7002)]);
    prop_oneof![
        4 => (0..6_usize, proptest::collection::vec(prefix(), 0..3), hosts, port, proptest::bool::weighted(0.1))
            .prop_map(|(service, paths, hosts, port, default)| Edit::Set { service, paths, hosts, port, default }),
        1 => (0..6_usize).prop_map(|service| Edit::Remove { service }),
    ]
}

fn edit_spec(
    service: usize,
    paths: &[String],
    hosts: &[&str],
    port: Option<u16>,
    default: bool,
) -> ServiceSpec {
    let mut paths: Vec<PathPrefix> =
        paths.iter().map(|p| PathPrefix::parse(p).expect("generated prefixes are valid")).collect();
    if port.is_some() {
        // A TCP service routes no path; its hosts are the TLS names it is chosen by.
        paths.clear();
    }
    ServiceSpec {
        name: if service.is_multiple_of(2) {
            format!("svc-{service}")
        } else {
            format!("Svc-{service}")
        },
        prefixes: paths,
        domains: hosts.iter().map(|h| crate::Domain::parse(h).expect("valid")).collect(),
        default_backend: default,
        tcp_port: port,
        stream_tls: if hosts.is_empty() {
            super::StreamTls::Plain
        } else {
            super::StreamTls::Passthrough
        },
        ..ServiceSpec::default()
    }
}

/// What a table answers, as data: each lookup's service and prefix, and each service's routes.
fn answers(table: &super::RouteTable, paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for host in [None, Some("a.test"), Some("b.test"), Some("c.test")] {
        for path in paths {
            let found = table.lookup_host(host, path);
            out.push(format!(
                "{host:?} {path} -> {:?}",
                found.map(|m| (m.backend.service(), m.prefix.map(PathPrefix::as_str)))
            ));
        }
    }
    for port in [7001, 7002] {
        out.push(format!("tcp {port} -> {:?}", table.tcp_route(port).map(|b| b.service())));
        for name in ["a.test", "b.test", "x.test"] {
            out.push(format!(
                "tls {port} {name} -> {:?}",
                table.tls_route(port, name).map(|(b, _)| b.service())
            ));
        }
    }
    for s in table.services() {
        out.push(format!(
            "{} {:?} {:?} {} {:?}",
            s.backend.service(),
            s.prefixes,
            s.domains,
            s.default_backend,
            s.tcp_port
        ));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The editor is the table's one set of rules: any sequence of sets and removes accepts
    /// exactly the changes a table built from nothing would (every set is checked against a
    /// build of the services accepted so far plus it), and ends as the table built from
    /// nothing with the services accepted, answering every lookup alike.
    #[test]
    fn edits_are_builds_from_nothing(
        edits in proptest::collection::vec(edit(), 1..16),
        paths in proptest::collection::vec(request_path(), 1..12),
    ) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut live = super::RouteTable::empty();
        let mut accepted: std::collections::BTreeMap<usize, ServiceSpec> = Default::default();
        for (version, edit) in edits.into_iter().enumerate() {
            let mut editor = super::TableEditor::new(&live);
            match edit {
                Edit::Set { service, paths, hosts, port, default } => {
                    let spec = edit_spec(service, &paths, &hosts, port, default);
                    let mut from_nothing = RouteTableBuilder::new();
                    let others = accepted.iter().filter(|(s, _)| **s != service);
                    let mut fits = true;
                    for (_, other) in others {
                        fits &= from_nothing.add(other.clone(), &[addr]).is_ok();
                    }
                    prop_assert!(fits, "the accepted services build");
                    let expected = from_nothing.add(spec.clone(), &[addr]).is_ok();
                    let got = editor.set(vec![(spec.clone(), vec![addr])]).is_ok();
                    prop_assert_eq!(got, expected, "set {:?}", spec);
                    if got {
                        accepted.insert(service, spec);
                    }
                }
                Edit::Remove { service } => {
                    let was = accepted.remove(&service).is_some();
                    let name = format!("SVC-{service}");
                    prop_assert_eq!(editor.remove(&name), was);
                }
            }
            live = editor.finish(version as u64 + 1);
        }
        let mut from_nothing = RouteTableBuilder::new();
        for spec in accepted.values() {
            from_nothing.add(spec.clone(), &[addr]).expect("accepted services build");
        }
        let built = from_nothing.build(live.version()).expect("builds");
        prop_assert_eq!(answers(&live, &paths), answers(&built, &paths));
    }
}
