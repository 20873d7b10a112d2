//! What does one request cost end to end through docker-flow-proxy, next to HAProxy and to
//! no proxy at all?
//!
//! One keep-alive connection sends tiny GETs one after another (so this measures latency,
//! not throughput) to: the upstream directly (the floor), docker-flow-proxy's data plane (the
//! same `dfp_proxy::serve` the binary runs, on its own single-threaded runtime), and HAProxy
//! with an equivalent generated config (`path_beg` ACLs over 10 services, `roundrobin`,
//! `http-reuse always`, `nbthread 1`) in front of the same upstream. HAProxy is taken from
//! PATH; when it is missing the bench says so and measures the other two.
//!
//! Throughput and CPU per request under load are `benches/compare.sh`'s job.
//!
//! Run: `cargo bench -p dfp-benches --bench proxy`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dfp_benches::KeepAliveClient;
use dfp_proxy::{ConnectionStats, ProxyConfig};
use dfp_routing::{PathPrefix, RouteTableBuilder, TableHandle};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;

const PATH: &str = "/api/v1/books";

/// Runs `future` on a new single-threaded runtime on its own thread, for the whole bench.
fn on_own_thread<F>(make: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(make());
    });
}

fn free_listener() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback port");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// A tiny upstream answering `200 ok` with a Content-Length.
fn start_upstream() -> SocketAddr {
    let listener = free_listener();
    let addr = listener.local_addr().expect("bound");
    on_own_thread(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// docker-flow-proxy's data plane with 10 services, one of which owns PATH.
fn start_dfp(upstream: SocketAddr) -> SocketAddr {
    let mut builder = RouteTableBuilder::new();
    for i in 0..9 {
        let path = PathPrefix::parse(&format!("/api/v{i}/service-{i}")).expect("valid");
        builder.add_service(&format!("service-{i}"), &[path], &[upstream]).expect("distinct");
    }
    let books = PathPrefix::parse(PATH).expect("valid");
    builder.add_service("books-ms", &[books], &[upstream]).expect("distinct");
    let table = TableHandle::new(builder.build(1).expect("builds"));
    let listener = free_listener();
    let addr = listener.local_addr().expect("bound");
    on_own_thread(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let stats = std::sync::Arc::new(ConnectionStats::default());
        let _ = dfp_proxy::serve(
            listener,
            table,
            ProxyConfig::default(),
            stats,
            std::future::pending(),
        )
        .await;
    });
    addr
}

/// HAProxy with the equivalent config, or `None` when it is not installed.
fn start_haproxy(upstream: SocketAddr) -> Option<(SocketAddr, Child)> {
    let listener = free_listener();
    let addr = listener.local_addr().expect("bound");
    drop(listener);
    let mut config = format!(
        "global\n  nbthread 1\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 20s\n  timeout server 20s\n  http-reuse always\n\
         frontend fe\n  bind {addr}\n"
    );
    for i in 0..9 {
        config.push_str(&format!(
            "  acl s{i} path_beg /api/v{i}/service-{i}\n  use_backend be{i} if s{i}\n"
        ));
    }
    config.push_str(&format!("  acl books path_beg {PATH}\n  use_backend books if books\n"));
    for i in 0..9 {
        config.push_str(&format!("backend be{i}\n  balance roundrobin\n  server s1 {upstream}\n"));
    }
    config.push_str(&format!("backend books\n  balance roundrobin\n  server s1 {upstream}\n"));
    let path = std::env::temp_dir().join(format!("dfp-bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&path, config).expect("write haproxy config");
    let child = match Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            eprintln!("HAProxy is not on PATH ({err}): its row is skipped. Install it with `apt-get install haproxy`.");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "HAProxy did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((addr, child))
}

fn wait_until_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut client) = KeepAliveClient::connect(addr, PATH) {
            if client.get().ok() == Some(200) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} does not answer 200 on {PATH}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proxies(c: &mut Criterion) {
    let upstream = start_upstream();
    let dfp = start_dfp(upstream);
    let mut haproxy = start_haproxy(upstream);
    let mut targets = vec![("direct", upstream), ("docker-flow-proxy", dfp)];
    if let Some((addr, _)) = &haproxy {
        targets.push(("haproxy", *addr));
    }
    let mut group = c.benchmark_group("request-latency");
    for (name, addr) in targets {
        wait_until_up(addr);
        let mut client = KeepAliveClient::connect(addr, PATH).expect("connects");
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(client.get().expect("answer"), 200));
        });
    }
    group.finish();
    if let Some((_, child)) = haproxy.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

criterion_group!(benches, proxies);
criterion_main!(benches);
