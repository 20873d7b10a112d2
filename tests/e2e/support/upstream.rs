//! Upstream HTTP servers standing in for service instances: each answers with its own name,
//! counts its hits and remembers the headers it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
    last_uri: Mutex<Option<String>>,
}

/// A running upstream. Its accept loop is aborted when dropped.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream on a free loopback port that answers `200 <name>` at once.
    pub async fn start(name: &str) -> Upstream {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// Starts an upstream that waits `delay` before answering each request.
    pub async fn start_with_delay(name: &str, delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let addr = listener.local_addr().expect("bound");
        let seen = Arc::new(Seen::default());
        let (task_seen, task_name) = (seen.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, name) = (task_seen.clone(), task_name.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, name) = (seen.clone(), name.clone());
                        async move {
                            seen.hits.fetch_add(1, Ordering::SeqCst);
                            *seen.last_headers.lock().expect("not poisoned") =
                                Some(req.headers().clone());
                            *seen.last_uri.lock().expect("not poisoned") =
                                Some(req.uri().to_string());
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut response = Response::new(Full::new(Bytes::from(name.clone())));
                            response.headers_mut().insert(
                                "x-upstream",
                                name.parse().expect("upstream names are header-safe"),
                            );
                            response
                                .headers_mut()
                                .insert("keep-alive", "timeout=30".parse().expect("valid"));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Upstream { name: name.to_owned(), addr, seen, task }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests this upstream has answered (or started answering).
    pub fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }

    /// Headers of the last request received.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.seen.last_headers.lock().expect("not poisoned").clone()
    }

    /// Request target of the last request received.
    pub fn last_uri(&self) -> Option<String> {
        self.seen.last_uri.lock().expect("not poisoned").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
