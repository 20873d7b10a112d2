//! Upstream HTTP servers standing in for service instances: each answers with its own name,
//! counts its hits and remembers the headers it received. A few paths behave differently,
//! for the data-plane tests:
//!
//! - `/upload`: reads the whole request body and answers its length;
//! - `/download?bytes=N`: streams N bytes;
//! - `/trailers`: a chunked body followed by the trailer `x-checksum: abc`;
//! - `/sleep?ms=N`: waits N ms before answering.
//!
//! Dropping an upstream closes its listener and every connection it has open, like a process
//! that dies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
    last_uri: Mutex<Option<String>>,
}

/// A running upstream. Its listener and connections are closed when dropped.
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
            // Connections live in this set: aborting the accept task drops it and them.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (seen, name) = (task_seen.clone(), task_name.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, name) = (seen.clone(), name.clone());
                        async move { Ok::<_, Infallible>(answer(req, &seen, &name, delay).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                while connections.try_join_next().is_some() {}
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

async fn answer(
    req: Request<Incoming>,
    seen: &Seen,
    name: &str,
    delay: Duration,
) -> Response<TestBody> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    *seen.last_headers.lock().expect("not poisoned") = Some(req.headers().clone());
    *seen.last_uri.lock().expect("not poisoned") = Some(req.uri().to_string());
    let query_number = |key: &str| -> u64 {
        req.uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut response = match req.uri().path() {
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(TestBody::text(total.to_string()))
        }
        "/download" => Response::new(TestBody::zeros(query_number("bytes"))),
        "/trailers" => {
            let mut response = Response::new(TestBody::with_trailer(name));
            response.headers_mut().insert("trailer", "x-checksum".parse().expect("valid"));
            response
        }
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_number("ms"))).await;
            Response::new(TestBody::text(name.to_owned()))
        }
        _ => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Response::new(TestBody::text(name.to_owned()))
        }
    };
    response
        .headers_mut()
        .insert("x-upstream", name.parse().expect("upstream names are header-safe"));
    response.headers_mut().insert("keep-alive", "timeout=30".parse().expect("valid"));
    response
}

/// A response body: a text, N zero bytes in 64 KiB chunks, or a text then a trailer.
pub struct TestBody {
    text: Option<Bytes>,
    zeros_left: u64,
    trailer: bool,
}

impl TestBody {
    fn text(text: String) -> Self {
        TestBody { text: Some(Bytes::from(text)), zeros_left: 0, trailer: false }
    }

    fn zeros(n: u64) -> Self {
        TestBody { text: None, zeros_left: n, trailer: false }
    }

    fn with_trailer(text: &str) -> Self {
        TestBody { text: Some(Bytes::from(text.to_owned())), zeros_left: 0, trailer: true }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        if let Some(text) = self.text.take() {
            return Poll::Ready(Some(Ok(Frame::data(text))));
        }
        if self.zeros_left > 0 {
            let n = self.zeros_left.min(ZEROS.len() as u64);
            self.zeros_left -= n;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n as usize])))));
        }
        if self.trailer {
            self.trailer = false;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().expect("valid"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.text.is_none() && self.zeros_left == 0 && !self.trailer
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.trailer {
            // Trailers need chunked framing: no length.
            return hyper::body::SizeHint::default();
        }
        let text = self.text.as_ref().map_or(0, |t| t.len() as u64);
        hyper::body::SizeHint::with_exact(text + self.zeros_left)
    }
}

/// A raw TCP upstream that answers any request with `101 Switching Protocols` and then echoes
/// every byte back, standing in for a WebSocket server.
pub struct EchoUpgrade {
    pub port: u16,
    task: JoinHandle<()>,
}

impl EchoUpgrade {
    pub async fn start() -> EchoUpgrade {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let port = listener.local_addr().expect("bound").port();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0_u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                    let mut buf = [0_u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoUpgrade { port, task }
    }
}

impl Drop for EchoUpgrade {
    fn drop(&mut self) {
        self.task.abort();
    }
}
