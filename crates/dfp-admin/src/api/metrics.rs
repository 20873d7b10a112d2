//! `/metrics`: the control plane's counters and the data plane's per-service counters as
//! Prometheus text. Split out of `api.rs` (a pure move): rendering, not routing.
//!
//! The text is sent as it is rendered, a chunk at a time: with 10,000 services it is ~13 MB
//! (21 lines per service), and rendering it whole held that much, doubled while the string
//! grew, on every scrape (massif: the largest allocation of a restore's peak was the
//! benchmark's own `/metrics` polls). A scrape now holds three chunks at most (one being
//! written to the socket, one waiting, one being rendered), and a scraper that stops reading
//! stops the rendering rather than growing it.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use crate::controller::Controller;
use crate::Discovery;

/// Rendered text handed to the connection at a time (the last chunk may be shorter).
const CHUNK: usize = 64 * 1024;

/// `/metrics`' body: the chunks a rendering task sends as the connection takes them.
#[derive(Debug)]
pub struct MetricsBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl Body for MetricsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Where the text is rendered: a chunk's buffer, handed on when full. Lines are written to it
/// with `write!`, as to a `String`.
struct Sink {
    buf: String,
    to_connection: mpsc::Sender<Bytes>,
}

/// The scraper went away: the rest is not rendered.
struct Gone;

impl Sink {
    /// Hands the buffer on once it holds a chunk; waits while the connection has not taken
    /// the one before.
    async fn spill(&mut self) -> Result<(), Gone> {
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + CHUNK / 4));
        self.to_connection.send(Bytes::from(chunk)).await.map_err(|_| Gone)
    }
}

impl std::fmt::Write for Sink {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.buf.push_str(text);
        Ok(())
    }
}

/// Prometheus text exposition of the control plane's state, rendered by a task of its own as
/// the connection sends it.
pub(super) fn metrics(controller: &Controller) -> Response<MetricsBody> {
    // One chunk waiting for the connection while the next is rendered.
    let (to_connection, chunks) = mpsc::channel(1);
    let controller = controller.clone();
    tokio::spawn(async move {
        let mut sink = Sink { buf: String::with_capacity(CHUNK + CHUNK / 4), to_connection };
        if render(&controller, &mut sink).await.is_ok() {
            let _ = sink.flush().await;
        }
    });
    let mut response = Response::new(MetricsBody { chunks });
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

async fn render(controller: &Controller, out: &mut Sink) -> Result<(), Gone> {
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
    drop(addrs);
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
    service_metrics(&table, out).await?;
    if let Some(hook) = controller.metrics_hook() {
        (hook.0)(&mut out.buf);
    }
    Ok(())
}

/// Reads one counter of a service's stats.
type ReadCounter = fn(&dfp_routing::BackendStats) -> u64;

/// One per-service series: name, Prometheus type, help, and how to read it.
type Series = (&'static str, &'static str, &'static str, ReadCounter);

/// Each series' `HELP` and `TYPE` lines, then its value for each service.
async fn write_series(
    out: &mut Sink,
    series: &[Series],
    services: &[(&str, &dfp_routing::BackendStats)],
) -> Result<(), Gone> {
    for (metric, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, stats) in services {
            let _ = writeln!(out, "{metric}{{service=\"{name}\"}} {}", read(stats));
            out.spill().await?;
        }
    }
    Ok(())
}

/// Per-service counters of the data plane: the live table's services, then the services it
/// no longer routes (their counters stay, so no series a scraper saw goes backwards or
/// vanishes; a service routed again resumes them).
async fn service_metrics(table: &dfp_routing::RouteTable, out: &mut Sink) -> Result<(), Gone> {
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
        out.spill().await?;
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
    write_series(out, &counters, &services).await?;
    queue_metrics(table, out).await?;
    tcp_metrics(table, out).await?;
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
        out.spill().await?;
    }
    Ok(())
}

/// The queue of each service with `instanceMaxConn` (HTTP and TCP): exchanges waiting for a
/// place now, and all that have waited.
async fn queue_metrics(table: &dfp_routing::RouteTable, out: &mut Sink) -> Result<(), Gone> {
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
    write_series(out, &series, &services).await
}

/// TCP services' counters (`reqMode=tcp`): connections accepted and open, connections that
/// reached no instance, bytes each way. The live table's TCP services, and services it no
/// longer routes that carried TCP connections (so their series do not vanish).
async fn tcp_metrics(table: &dfp_routing::RouteTable, out: &mut Sink) -> Result<(), Gone> {
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
    write_series(out, &counters, &services).await?;
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
        out.spill().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::params::ReconfigureRequest;
    use crate::{Discovery, FollowConfig, RouteStore};

    /// A controller routing `count` services, each named by an IP literal (no DNS needed).
    async fn routing(count: usize) -> Controller {
        let controller = Controller::new(
            dfp_routing::TableHandle::default(),
            Discovery::Dns,
            RouteStore::Memory,
            FollowConfig::default(),
        );
        for i in 0..count {
            let name = format!("127.0.{}.{}", i / 250, i % 250 + 1);
            let path = format!("/svc-{i}");
            let request = ReconfigureRequest::from_pairs([
                ("serviceName", name.as_str()),
                ("servicePath", path.as_str()),
                ("port", "8080"),
            ])
            .expect("valid request");
            controller.reconfigure(request).await.expect("routed");
        }
        controller
    }

    #[tokio::test]
    async fn a_scrape_of_many_services_arrives_whole_a_chunk_at_a_time() {
        let services = 600;
        let controller = routing(services).await;
        let mut body = metrics(&controller).into_body();
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("infallible").into_data().expect("only data frames");
            chunks.push(data);
        }
        assert!(chunks.len() > 5, "{} chunks for {services} services", chunks.len());
        // Each chunk is handed on once it reaches CHUNK, after the service that filled it.
        for chunk in &chunks {
            assert!(chunk.len() < CHUNK + 4096, "a chunk of {} bytes", chunk.len());
        }
        let text = String::from_utf8(chunks.concat()).expect("UTF-8");
        assert!(text.contains(&format!("\ndfp_services {services}\n")));
        for i in [0, services / 2, services - 1] {
            let name = format!("127.0.{}.{}", i / 250, i % 250 + 1);
            for series in ["dfp_requests_total", "dfp_request_duration_seconds_count"] {
                assert!(
                    text.contains(&format!("{series}{{service=\"{name}\"")),
                    "{series} of {name}"
                );
            }
        }
        // Each family's samples follow its one TYPE line, as Prometheus requires.
        let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = families.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(families.len(), unique.len(), "a family's TYPE line twice");
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches("dfp_request_duration_seconds_count{").count(), services);
    }

    #[tokio::test]
    async fn a_scraper_that_goes_away_leaves_the_next_scrape_whole() {
        let controller = routing(300).await;
        let mut body = metrics(&controller).into_body();
        body.frame().await.expect("a first chunk").expect("infallible");
        drop(body);
        let text = metrics(&controller).into_body().collect().await.expect("whole").to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&text).matches("dfp_request_duration_seconds_count{").count(),
            300
        );
    }
}
