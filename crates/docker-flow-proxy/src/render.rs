//! `config` and `routes` for people: the admin API's JSON turned into text a terminal reads.
//!
//! Pure functions over the JSON the admin API answers (`--json` prints that JSON as is), so
//! the text follows the API: a field the API adds to a service shows up in `config` without
//! a change here.

use std::fmt::Write as _;

use serde_json::Value;

/// `GET /v1/docker-flow-proxy/config` as text: the mode, the table version, Consul's state,
/// then each service with its fields (the API's names), one per line.
pub(crate) fn config(answer: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Mode: {}    TableVersion: {}",
        text(&answer["Mode"]),
        text(&answer["TableVersion"])
    );
    if let Some(consul) = answer.get("Consul").filter(|c| c.is_object()) {
        let reachable = match consul["Reachable"].as_bool() {
            Some(true) => "reachable".to_owned(),
            Some(false) => format!("UNREACHABLE ({})", text(&consul["LastError"])),
            None => "not asked yet".to_owned(),
        };
        let _ = writeln!(out, "Consul: {} ({reachable})", text(&consul["Agents"]));
    }
    let services = answer["Services"].as_array().map(Vec::as_slice).unwrap_or_default();
    if services.is_empty() {
        out.push_str("No services are routed; add one with `docker-flow-proxy reconfigure`.\n");
    }
    for service in services {
        let _ = writeln!(out, "\n{}", text(&service["ServiceName"]));
        fields(&mut out, service, "  ");
        // Further destinations (indexed servicePath.N...): each under its index, indented.
        for destination in service["Destinations"].as_array().map(Vec::as_slice).unwrap_or_default()
        {
            let _ = writeln!(out, "  Destination {}:", text(&destination["Index"]));
            fields(&mut out, destination, "    ");
        }
    }
    out
}

/// A service's (or destination's) fields, one per line, but its name and destinations.
fn fields(out: &mut String, service: &Value, indent: &str) {
    let Some(fields) = service.as_object() else { return };
    let shown = |name: &&String| !matches!(name.as_str(), "ServiceName" | "Destinations");
    for (name, value) in fields.iter().filter(|(name, _)| shown(name)) {
        let value = match value {
            Value::Array(list) if list.is_empty() => "(none)".to_owned(),
            other => text(other),
        };
        let _ = writeln!(out, "{indent}{name}: {value}");
    }
}

/// `GET /v1/docker-flow-proxy/routes` as a table: each route's path, host and service, then
/// one line per instance with its passive health.
pub(crate) fn routes(answer: &Value) -> String {
    let routes = answer["Routes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if routes.is_empty() {
        return format!(
            "No routes (table version {}); add one with `docker-flow-proxy reconfigure`.\n",
            text(&answer["TableVersion"])
        );
    }
    let mut rows: Vec<[String; 5]> =
        vec![["PATH", "HOST", "SERVICE", "INSTANCE", "STATE"].map(str::to_owned)];
    for route in routes {
        let path = match route["Path"].as_str() {
            Some(path) => path.to_owned(),
            None => "(default)".to_owned(),
        };
        let host = route["Domain"].as_str().unwrap_or("*").to_owned();
        let service = text(&route["ServiceName"]);
        let instances = route["Instances"].as_array().map(Vec::as_slice).unwrap_or_default();
        if instances.is_empty() {
            rows.push([path, host, service, "-".to_owned(), "no instance: answers 503".to_owned()]);
            continue;
        }
        let mut first = Some([path, host, service]);
        for instance in instances {
            let [path, host, service] = first.take().unwrap_or_default();
            rows.push([path, host, service, text(&instance["Address"]), state(instance)]);
        }
    }
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An instance's passive health in words: `healthy`, `ejected 1.5s more (2 failures)`, or
/// `probing (1 failure)`; then, for a service with `instanceMaxConn`, `, 3 in flight`.
fn state(instance: &Value) -> String {
    let failures = instance["Failures"].as_u64().unwrap_or(0);
    let failures = match failures {
        1 => "1 failure".to_owned(),
        n => format!("{n} failures"),
    };
    let health = match instance["State"].as_str().unwrap_or("unknown") {
        "ejected" => {
            let ms = instance["EjectedForMs"].as_u64().unwrap_or(0);
            format!("ejected {:.1}s more ({failures})", ms as f64 / 1000.0)
        }
        "probing" => format!("probing: next request tries it ({failures})"),
        other => other.to_owned(),
    };
    match instance["InFlight"].as_u64() {
        Some(n) => format!("{health}, {n} in flight"),
        None => health,
    }
}

/// A JSON value as a person reads it: strings bare, lists joined by commas.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        Value::Array(list) => list.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn routes_are_a_table_with_each_instances_health() {
        let answer = json!({
            "Status": "OK",
            "TableVersion": 3,
            "Routes": [
                {"Path": "/api/v1/books", "Domain": null, "ServiceName": "books-ms", "Instances": [
                    {"Address": "127.0.0.1:9001", "State": "healthy", "Failures": 0},
                    {"Address": "127.0.0.1:9002", "State": "ejected", "Failures": 2,
                     "EjectedForMs": 1500},
                    {"Address": "127.0.0.1:9003", "State": "probing", "Failures": 1},
                ]},
                {"Path": "/shop", "Domain": "*.example.com", "ServiceName": "shop",
                 "Instances": []},
                {"Path": null, "Domain": null, "ServiceName": "web", "IsDefaultBackend": true,
                 "Instances": [{"Address": "10.0.0.1:80", "State": "healthy", "Failures": 0}]},
            ]
        });
        let expected = "\
PATH           HOST           SERVICE   INSTANCE        STATE
/api/v1/books  *              books-ms  127.0.0.1:9001  healthy
                                        127.0.0.1:9002  ejected 1.5s more (2 failures)
                                        127.0.0.1:9003  probing: next request tries it (1 failure)
/shop          *.example.com  shop      -               no instance: answers 503
(default)      *              web       10.0.0.1:80     healthy
";
        assert_eq!(routes(&answer), expected);
        let empty = json!({"Status": "OK", "TableVersion": 0, "Routes": []});
        assert!(routes(&empty).starts_with("No routes (table version 0)"));
    }

    #[test]
    fn config_lists_each_service_with_the_apis_field_names() {
        let answer = json!({
            "Status": "OK", "Mode": "consul", "TableVersion": 2,
            "Consul": {"Agents": ["http://127.0.0.1:8500"], "Reachable": false,
                       "LastError": "connection refused"},
            "Services": [{"ServiceName": "books-ms", "ServicePath": ["/api/v1/books", "/b"],
                          "Instances": [], "Users": ["alice"],
                          "ServiceColor": "blue", "AllowedSources": ["10.0.0.0/8", "::1/128"],
                          "DenyHttp": true, "DeniedMethods": ["DELETE"],
                          "PathType": "path_beg", "ServiceHeader": ["x-version:3"],
                          "UserAgent": ["iphone", "android"], "Index": 0,
                          "Destinations": [{"ServiceName": "books-ms", "Index": 1,
                                            "ServicePath": ["/admin"], "Instances": []}]}]
        });
        let text = config(&answer);
        for line in [
            "Mode: consul    TableVersion: 2",
            "Consul: http://127.0.0.1:8500 (UNREACHABLE (connection refused))",
            "books-ms",
            "  ServicePath: /api/v1/books, /b",
            "  Instances: (none)",
            "  Users: alice",
            "  ServiceColor: blue",
            "  AllowedSources: 10.0.0.0/8, ::1/128",
            "  DenyHttp: true",
            "  DeniedMethods: DELETE",
            "  PathType: path_beg",
            "  ServiceHeader: x-version:3",
            "  UserAgent: iphone, android",
            "  Index: 0",
            "  Destination 1:",
            "    ServicePath: /admin",
            "    Instances: (none)",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }
}
