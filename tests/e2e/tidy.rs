//! The crate graph keeps its shape (ARCHITECTURE.md): the data plane never imports the control
//! plane, the routing model imports no other crate of ours, and only the admin crate and the
//! binary know Consul.

use std::collections::BTreeMap;
use std::path::Path;

/// Each crate of ours -> the crates of ours its `[dependencies]` name.
fn our_dependencies() -> BTreeMap<String, Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/ is readable") {
        let dir = entry.expect("a directory entry").path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_owned())
            .expect("every crate has a name");
        let mut section = "";
        let mut deps = Vec::new();
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section == "[dependencies]" {
                let dep = line.split(['.', ' ', '=']).next().unwrap_or_default();
                if dep.starts_with("dfp-") {
                    deps.push(dep.to_owned());
                }
            }
        }
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn dependencies_flow_one_way() {
    let graph = our_dependencies();
    let allowed: &[(&str, &[&str])] = &[
        ("dfp-routing", &[]),
        ("dfp-consul", &["dfp-routing"]),
        ("dfp-tls", &[]),
        ("dfp-proxy", &["dfp-routing", "dfp-tls"]),
        ("dfp-admin", &["dfp-routing", "dfp-consul", "dfp-tls"]),
        ("docker-flow-proxy", &["dfp-routing", "dfp-consul", "dfp-proxy", "dfp-admin", "dfp-tls"]),
    ];
    assert_eq!(
        graph.len(),
        allowed.len(),
        "a crate was added or removed: update this test and ARCHITECTURE.md: {graph:?}"
    );
    for (krate, may_use) in allowed {
        let uses = graph.get(*krate).unwrap_or_else(|| panic!("{krate} is missing"));
        for dep in uses {
            assert!(
                may_use.contains(&dep.as_str()),
                "{krate} must not depend on {dep} (see ARCHITECTURE.md)"
            );
        }
    }
}
