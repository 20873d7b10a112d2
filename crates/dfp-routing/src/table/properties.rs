//! Property tests: the radix-tree lookup agrees with the plain definition of
//! "longest segment-aware prefix" on random tables and paths, and never panics.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::RouteTableBuilder;
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
