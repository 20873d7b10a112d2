//! `/metrics`: the control plane's counters and the data plane's per-service counters as
//! Prometheus text. Split out of `api.rs` (a pure move): rendering, not routing.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

use crate::controller::Controller;
use crate::Discovery;

/// Prometheus text exposition of the control plane's state.
pub(super) fn metrics(controller: &Controller) -> Response<Full<Bytes>> {
    let table = controller.table().snapshot();
    let counters = controller.counters();
    // An instance reached by several destinations of its service (same address) counts once.
    let mut addrs: Vec<(&str, std::net::SocketAddr)> = table
        .services()
        .flat_map(|s| s.backend.addrs().map(move |a| (s.backend.service(), a)))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let instances = addrs.len();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("dfp_table_version", "Version of the live routing table.", table.version());
    gauge("dfp_services", "Services in the live routing table.", table.services().len() as u64);
    gauge(
        "dfp_instances",
        "Instances in the live routing table, over all services.",
        instances as u64,
    );
    if let Discovery::Consul(consul) = controller.discovery() {
        let up = controller.registry_health().reachable.unwrap_or(false);
        gauge(
            "dfp_consul_reachable",
            "1 when Consul answered the last call, else 0.",
            u64::from(up),
        );
        let _ = writeln!(
            out,
            "# HELP dfp_consul_requests_total HTTP requests sent to Consul agents (each blocking query once).\n\
             # TYPE dfp_consul_requests_total counter\n\
             dfp_consul_requests_total {}",
            consul.requests_sent()
        );
    }
    let _ = writeln!(
        out,
        "# HELP dfp_admin_calls_total Admin calls that change the table, by outcome.\n\
         # TYPE dfp_admin_calls_total counter\n\
         dfp_admin_calls_total{{call=\"reconfigure\",result=\"ok\"}} {}\n\
         dfp_admin_calls_total{{call=\"reconfigure\",result=\"error\"}} {}\n\
         dfp_admin_calls_total{{call=\"remove\",result=\"ok\"}} {}\n\
         dfp_admin_calls_total{{call=\"remove\",result=\"error\"}} {}",
        counters.reconfigure_ok.load(Ordering::Relaxed),
        counters.reconfigure_failed.load(Ordering::Relaxed),
        counters.remove_ok.load(Ordering::Relaxed),
        counters.remove_failed.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP dfp_instance_updates_total Instance-set changes picked up from Consul or DNS.\n\
         # TYPE dfp_instance_updates_total counter\n\
         dfp_instance_updates_total {}\n\
         # HELP dfp_store_syncs_total Route changes applied from the store (restore, other replicas).\n\
         # TYPE dfp_store_syncs_total counter\n\
         dfp_store_syncs_total {}",
        counters.instance_updates.load(Ordering::Relaxed),
        counters.store_syncs.load(Ordering::Relaxed),
    );
    service_metrics(&table, &mut out);
    if let Some(hook) = controller.metrics_hook() {
        (hook.0)(&mut out);
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// Reads one counter of a service's stats.
type ReadCounter = fn(&dfp_routing::BackendStats) -> u64;

/// One per-service series: name, Prometheus type, help, and how to read it.
type Series = (&'static str, &'static str, &'static str, ReadCounter);

/// Each series' `HELP` and `TYPE` lines, then its value for each service.
fn write_series(
    out: &mut String,
    series: &[Series],
    services: &[(&str, &dfp_routing::BackendStats)],
) {
    for (metric, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, stats) in services {
            let _ = writeln!(out, "{metric}{{service=\"{name}\"}} {}", read(stats));
        }
    }
}

/// Per-service counters of the data plane: the live table's services, then the services it
/// no longer routes (their counters stay, so no series a scraper saw goes backwards or
/// vanishes; a service routed again resumes them).
fn service_metrics(table: &dfp_routing::RouteTable, out: &mut String) {
    use dfp_routing::LATENCY_BUCKETS_MS;
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let services: Vec<(&str, &dfp_routing::BackendStats)> = table
        .services()
        // A service's destinations share its counters: one series per service.
        .filter(|s| s.destination == 0)
        .map(|s| (s.backend.service(), s.backend.stats()))
        .chain(table.retired_stats())
        .collect();
    let _ = writeln!(
        out,
        "# HELP dfp_requests_total Requests answered, by service and status class.\n\
         # TYPE dfp_requests_total counter"
    );
    for (name, stats) in &services {
        for (class, count) in CLASSES.iter().zip(stats.responses()) {
            let _ =
                writeln!(out, "dfp_requests_total{{service=\"{name}\",class=\"{class}\"}} {count}");
        }
    }
    let counters: [Series; 3] = [
        (
            "dfp_upstream_errors_total",
            "counter",
            "Attempts at an instance that failed before a response.",
            |s| s.upstream_errors.load(Ordering::Relaxed),
        ),
        ("dfp_retries_total", "counter", "Requests sent again to another instance.", |s| {
            s.retries.load(Ordering::Relaxed)
        }),
        (
            "dfp_ejections_total",
            "counter",
            "Times an instance was ejected by passive health.",
            |s| s.ejections.load(Ordering::Relaxed),
        ),
    ];
    write_series(out, &counters, &services);
    queue_metrics(table, out);
    tcp_metrics(table, out);
    let _ = writeln!(
        out,
        "# HELP dfp_request_duration_seconds Time from request to response head, by service.\n\
         # TYPE dfp_request_duration_seconds histogram"
    );
    for (name, stats) in &services {
        let mut cumulative = 0;
        for (i, bucket) in stats.latency_buckets().into_iter().enumerate() {
            cumulative += bucket;
            let le = LATENCY_BUCKETS_MS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1000.0));
            let _ = writeln!(out, "dfp_request_duration_seconds_bucket{{service=\"{name}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = stats.latency_sum_us() as f64 / 1e6;
        let _ = writeln!(out, "dfp_request_duration_seconds_sum{{service=\"{name}\"}} {sum}");
        let _ =
            writeln!(out, "dfp_request_duration_seconds_count{{service=\"{name}\"}} {cumulative}");
    }
}

/// The queue of each service with `instanceMaxConn` (HTTP and TCP): exchanges waiting for a
/// place now, and all that have waited.
fn queue_metrics(table: &dfp_routing::RouteTable, out: &mut String) {
    let mut capped: Vec<&dfp_routing::Backend> = table
        .services()
        .filter(|s| s.destination == 0)
        .map(|s| -> &dfp_routing::Backend { s.backend })
        .chain(table.tcp_ports().map(|(_, b)| -> &dfp_routing::Backend { b }))
        .filter(|b| b.policy().instance_max_conn.is_some())
        .collect();
    capped.sort_by_key(|b| b.service());
    capped.dedup_by_key(|b| b.service());
    let services: Vec<_> = capped.iter().map(|b| (b.service(), b.stats())).collect();
    let series: [Series; 2] = [
        (
            "dfp_queued_requests",
            "gauge",
            "Requests (or TCP connections) waiting for a place under instanceMaxConn now, by service.",
            |s| s.queued.load(Ordering::Relaxed),
        ),
        (
            "dfp_queued_requests_total",
            "counter",
            "Requests (or TCP connections) that waited for a place under instanceMaxConn, by service.",
            |s| s.queued_total.load(Ordering::Relaxed),
        ),
    ];
    write_series(out, &series, &services);
}

/// TCP services' counters (`reqMode=tcp`): connections accepted and open, connections that
/// reached no instance, bytes each way. The live table's TCP services, and services it no
/// longer routes that carried TCP connections (so their series do not vanish).
fn tcp_metrics(table: &dfp_routing::RouteTable, out: &mut String) {
    let services: Vec<(&str, &dfp_routing::BackendStats)> = table
        .tcp_ports()
        .map(|(_, b)| (b.service(), b.stats()))
        .chain(table.retired_stats().filter(|(_, s)| s.tcp_accepted.load(Ordering::Relaxed) > 0))
        .collect();
    let counters: [Series; 3] = [
        ("dfp_tcp_connections_total", "counter", "TCP connections accepted, by service.", |s| {
            s.tcp_accepted.load(Ordering::Relaxed)
        }),
        ("dfp_tcp_open_connections", "gauge", "TCP connections open now, by service.", |s| {
            s.tcp_open.load(Ordering::Relaxed)
        }),
        (
            "dfp_tcp_connect_failures_total",
            "counter",
            "TCP connections closed because no instance could be connected to, by service.",
            |s| s.tcp_connect_failures.load(Ordering::Relaxed),
        ),
    ];
    write_series(out, &counters, &services);
    let _ = writeln!(
        out,
        "# HELP dfp_tcp_bytes_total Bytes copied by TCP services, by service and direction.\n\
         # TYPE dfp_tcp_bytes_total counter"
    );
    for (name, stats) in &services {
        for (direction, bytes) in
            [("to_instance", &stats.bytes_to_instance), ("to_client", &stats.bytes_to_client)]
        {
            let _ = writeln!(
                out,
                "dfp_tcp_bytes_total{{service=\"{name}\",direction=\"{direction}\"}} {}",
                bytes.load(Ordering::Relaxed)
            );
        }
    }
}
