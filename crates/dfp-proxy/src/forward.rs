//! The HTTP/2 engine's forwarding: a request hyper read from an HTTP/2 client goes through
//! the same rules as the HTTP/1 engine's ([`crate::rules`]: checks, routing, policy, fields,
//! failures, record) and on to an HTTP/1.1 instance over the same per-thread connections
//! ([`crate::upstream`]).
//!
//! What differs from the HTTP/1 engine is only the translation between HTTP/2 frames and
//! HTTP/1.1 bytes: the request's head is written as HTTP/1.1 bytes, its body (DATA frames) is
//! sent as it comes, with its `Content-Length` or chunked; the instance's response head is
//! parsed into hyper's response, and its body read from the socket and decoded (chunked
//! framing cannot cross to HTTP/2) into DATA frames as hyper asks for them, so an unread
//! response reads no more from the instance than the client's window takes; a chunked body's
//! trailers become a trailers frame.

use std::convert::Infallible;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use dfp_routing::{Backend, CompressionAlgo, HeaderEdits, InstanceSlot, TableHandle};
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::chunked::{ChunkedScanner, Scan};
use crate::compress::Encoder;
use crate::error::ProxyError;
use crate::rules::{
    self, Admitted, Failure, FieldSink as _, Forwarding, Framing, Record, RequestBody,
    RoutedRequest, Routing, MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::trailers;
use crate::upstream::{Connector, ProxyHello};
use crate::ProxyConfig;

mod body;
pub(crate) use self::body::{CompressedBody, InstanceBody};

/// What the proxy answers an HTTP/2 client with: the instance's body as it is read (or
/// compressed as it is read), or a short body of its own.
/// Boxed when compressing (the rare case): a response is moved several times on its way to
/// hyper, and the encoder would otherwise make every response's body the larger of the two.
pub(crate) type ProxyBody = Either<Either<InstanceBody, Box<CompressedBody>>, Full<Bytes>>;

/// What both engines share: the table, this thread's connections to instances, the
/// timeouts. One per data-plane server, shared by its connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) table: TableHandle,
    /// This thread's connections to instances.
    pub(crate) connector: Connector,
    pub(crate) server_timeout: Duration,
    pub(crate) tunnel_timeout: Duration,
    pub(crate) client_timeout: Duration,
    /// The longest a request waits for a place under `instanceMaxConn`.
    pub(crate) queue_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) trust_forwarded_proto: bool,
    /// `--trusted-proxies`: peers whose `X-Forwarded-For` names the client.
    pub(crate) trusted_proxies: dfp_routing::SourceList,
}

impl Forwarder {
    pub(crate) fn new(table: TableHandle, config: &ProxyConfig) -> Self {
        Forwarder {
            table,
            connector: Connector {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.upstream_idle_timeout,
            },
            server_timeout: config.server_timeout,
            tunnel_timeout: config.tunnel_timeout,
            client_timeout: config.client_timeout,
            queue_timeout: config.queue_timeout,
            access_log: config.access_log,
            trust_forwarded_proto: config.trust_forwarded_proto,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// Answers one HTTP/2 request. Never fails: every problem becomes a response, whose body
    /// `wrap` makes the connection's.
    ///
    /// This is the future hyper keeps for the stream and moves as it spawns it: owning the
    /// forwarder and wrapping the body here saves a level of future around it (and a copy of
    /// it, kilobytes, per request).
    pub(crate) async fn handle<B>(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: Client,
        wrap: impl FnOnce(ProxyBody) -> B,
    ) -> Result<Response<B>, Infallible> {
        let started = Instant::now();
        let mut routed = Routed::default();
        let method = request.method().clone();
        let target = if self.access_log { request.uri().to_string() } else { String::new() };
        let response = match self.forward(request, &client, &mut routed).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        rules::record(
            &Record {
                client: client.addr,
                method: method.as_str(),
                target: &target,
                backend: routed.backend.as_deref(),
                upstream: routed.upstream,
                status: response.status().as_u16(),
                micros,
            },
            self.access_log,
        );
        Ok(response.map(wrap))
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        client: &Client,
        routed: &mut Routed,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The routed service is kept in `routed` itself, for the record: one reference taken.
        let Routed { backend: slot, upstream: routed_upstream } = routed;
        let has_body = !request.body().is_end_stream();
        let Prepared {
            backend,
            head,
            chunked,
            replayable,
            head_request,
            response_edits,
            server_timeout,
            sticky,
            compression,
            hello,
        } = self.prepare(&request, has_body, client, slot)?;
        let body = request.body_mut();
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let queue = self.queue_timeout;
            let (upstream, pin, slot) =
                match rules::take_instance(backend, sticky, &tried, queue).await {
                    Ok(chosen) => chosen,
                    Err(rules::NoChoice::Left) => return Err(ProxyError::UpstreamUnreachable),
                    Err(rules::NoChoice::Full) => return Err(ProxyError::InstancesFull),
                };
            let addr = upstream.addr();
            *routed_upstream = Some(addr);
            let attempt = Attempt {
                connector: &self.connector,
                addr,
                hello,
                server_timeout,
                client_timeout: self.client_timeout,
                chunked,
                compression,
            };
            let body = has_body.then_some(&mut *body);
            let response = (response_edits, pin.as_ref());
            // Boxed: the attempt's future is larger than this one, and every future above
            // this one in the stream's task (and the copy made of each as it is created)
            // would carry it.
            // (Made in a statement of its own: a temporary of the `match` below would keep
            // its room in this future until the `match` ends.)
            let exchange = Box::pin(attempt.run(&head, body, head_request, response));
            let failure = match exchange.await {
                Ok((stream, parsed, leftover, sent_all)) => {
                    upstream.health().record_success();
                    return Ok(relay(stream, parsed, leftover, sent_all, &attempt, slot));
                }
                Err(failure) => failure,
            };
            if failure.blames_instance() {
                if rules::attempt_failed(backend, upstream, &mut tried, replayable, &failure) {
                    continue;
                }
            } else {
                tracing::debug!(service = backend.service(), instance = %addr, %failure, "exchange failed");
            }
            return Err(failure.answer());
        }
    }

    /// Checks and routes the request and writes the instance's head. Not async on purpose:
    /// its working values (the fields as pairs, the routing's) would otherwise take room in
    /// the stream's future for the whole exchange, and be copied with it.
    fn prepare<'b>(
        &self,
        request: &Request<Incoming>,
        has_body: bool,
        client: &Client,
        slot: &'b mut Option<Arc<Backend>>,
    ) -> Result<Prepared<'b>, ProxyError> {
        let pairs: Vec<(&str, &[u8])> =
            request.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let fields = pairs.iter().copied();
        let mut facts = rules::analyse_request(false, fields.clone())?;
        let target = rules::parse_target(
            request.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str),
        )?;
        let host = facts.host.and_then(|h| std::str::from_utf8(h).ok());
        let client_ip =
            || rules::client_ip(client.addr.ip(), &self.trusted_proxies, fields.clone());
        let field_list = rules::FieldList(fields.clone());
        let cookie = |name: &str| rules::cookie_token(fields.clone(), name);
        let method = request.method().as_str();
        let routed_request = RoutedRequest {
            fields: rules::Fields(&field_list),
            https: client.tls || (self.trust_forwarded_proto && facts.forwarded_https),
            client_cert: client.client_cert,
            method,
            client: rules::ClientIp(&client_ip),
            authorization: facts.authorization,
            forwarded_proto: facts.forwarded_proto,
            cookie: rules::CookieToken(&cookie),
            accept_encoding: facts.accept_encoding,
            defaults: (self.server_timeout, self.tunnel_timeout),
        };
        // Refused after routing, the service stays in `slot` and is counted with the answer.
        let Routing { path: routed_path, backend, admitted, first } =
            rules::route(&self.table, slot, host, &target, routed_request)
                .map_err(|(err, _)| err)?;

        // The instance's head. An HTTP/2 body without a length goes on chunked.
        let chunked = has_body && !matches!(facts.body(), RequestBody::Length(_));
        if !has_body {
            facts.body = Some(RequestBody::None);
        }
        let mut head = Vec::with_capacity(512);
        let path = admitted.rewritten.as_deref().unwrap_or(&routed_path);
        rules::write_request_line(&mut head, method, path, target.query, false);
        let host_field = match facts.host {
            Some(host) => host,
            None => first.authority().as_str().as_bytes(),
        };
        let forwarding = Forwarding {
            client_ip: &client.ip_text,
            proto: if client.tls { "https" } else { "http" },
            host: host_field,
        };
        rules::write_request_fields(&mut head, fields, &facts, &admitted, &forwarding);
        if chunked {
            head.field("transfer-encoding", b"chunked");
        }
        head.extend_from_slice(b"\r\n");
        // Every policy field has been used above or is handed on: no `..` here either.
        let Admitted {
            rewritten: _,
            request_edits: _,
            strip_authorization: _,
            response_edits,
            server_timeout,
            tunnel_timeout: _, // HTTP/2 carries no upgrades here
            sticky,
            compression,
            send_proxy,
        } = admitted;
        Ok(Prepared {
            backend,
            head,
            chunked,
            replayable: rules::replayable(method, has_body, false),
            head_request: request.method() == Method::HEAD,
            response_edits,
            server_timeout,
            sticky,
            compression,
            hello: send_proxy.map(|version| ProxyHello {
                version,
                client: client.addr,
                local: client.local,
            }),
        })
    }
}

/// A request routed and admitted, with the instance's head written: all the exchange needs
/// of it besides its body.
struct Prepared<'b> {
    backend: &'b Backend,
    head: Vec<u8>,
    /// The body goes on chunked (it has no `Content-Length`).
    chunked: bool,
    /// Another instance may be tried after a failure ([`rules::replayable`]).
    replayable: bool,
    head_request: bool,
    response_edits: &'b HeaderEdits,
    server_timeout: Duration,
    sticky: Option<rules::Sticky<'b>>,
    compression: Option<rules::AcceptedCompression<'b>>,
    /// The PROXY header the instance wants first.
    hello: Option<ProxyHello>,
}

/// What the proxy adds to an instance's response head: the service's edits and the sticky
/// cookie it sets, if any.
type ResponseAdditions<'a> = (&'a HeaderEdits, Option<&'a rules::Pin<'a>>);

/// One attempt at one instance.
struct Attempt<'a> {
    connector: &'a Connector,
    addr: SocketAddr,
    /// The PROXY header the instance wants first, which makes the connection this client's.
    hello: Option<ProxyHello>,
    server_timeout: Duration,
    client_timeout: Duration,
    /// The body goes on chunked (else with the client's `Content-Length`).
    chunked: bool,
    /// The service compresses and the client accepts its coding ([`rules::compression`]
    /// decides on the response's head).
    compression: Option<rules::AcceptedCompression<'a>>,
}

/// A response head as parsed: status, reason-less fields, and what the rules made of them.
struct ParsedHead {
    status: StatusCode,
    facts: rules::ResponseFacts,
    /// The client's fields, already rewritten by the rules.
    fields: HeaderMap,
    head_len: usize,
    /// The body is compressed on its way (the fields already say so).
    coding: Option<CompressionAlgo>,
}

impl Attempt<'_> {
    /// Sends the head and the body, and reads the instance's final response head. Returns the
    /// connection, the head, the bytes read past it, and whether the whole body was sent.
    async fn run(
        &self,
        head: &[u8],
        mut body: Option<&mut Incoming>,
        head_request: bool,
        edits: ResponseAdditions<'_>,
    ) -> Result<(TcpStream, ParsedHead, BytesMut, bool), Failure> {
        let (mut stream, reused) = loop {
            let (mut stream, reused) =
                self.connector.get(self.addr, self.hello).await.map_err(Failure::Unreachable)?;
            match stream.write_all(head).await {
                Ok(()) => break (stream, reused),
                // A pooled connection the instance closed meanwhile: nothing was sent.
                Err(_) if reused => {}
                Err(err) => return Err(Failure::Unreachable(err)),
            }
        };
        let mut buf = BytesMut::with_capacity(4096);
        let (mut reader, mut writer) = stream.split();
        let mut sent_all = body.is_none();
        let parsed = {
            let pump = pin!(async {
                if let Some(body) = body.as_mut() {
                    pump_body(body, &mut writer, self.chunked, self.client_timeout).await
                } else {
                    Ok(())
                }
            });
            let mut pump = pump;
            let mut read =
                pin!(read_head(&mut reader, &mut buf, head_request, edits, self.compression));
            // The server timeout runs from the end of the upload.
            let mut deadline = tokio::time::Instant::now() + self.server_timeout;
            loop {
                tokio::select! {
                    pumped = &mut pump, if !sent_all => {
                        pumped?;
                        sent_all = true;
                        deadline = tokio::time::Instant::now() + self.server_timeout;
                    }
                    parsed = &mut read => break parsed,
                    () = tokio::time::sleep_until(deadline), if sent_all => {
                        return Err(Failure::Timeout);
                    }
                }
            }
        };
        match parsed {
            Ok(parsed) => Ok((stream, parsed, buf, sent_all)),
            // A kept-alive connection the instance closed meanwhile, before any answer and
            // before any of a body: a fresh connection may carry the request again.
            Err(Failure::Unreachable(_)) if reused && buf.is_empty() && body.is_none() => {
                Box::pin(self.run(head, None, head_request, edits)).await
            }
            Err(failure) => Err(failure),
        }
    }
}

/// Sends the client's DATA frames to the instance as they come (chunk-framed when `chunked`),
/// then the last chunk. A client that sends nothing for the client timeout, or breaks off its
/// stream, is at fault.
async fn pump_body(
    body: &mut Incoming,
    upstream: &mut tokio::net::tcp::WriteHalf<'_>,
    chunked: bool,
    client_timeout: Duration,
) -> Result<(), Failure> {
    let gone = |err: io::Error| Failure::Unreachable(err);
    // A chunk (size line, data, CRLF) goes in one write: three were three system calls.
    let mut chunk = Vec::new();
    loop {
        let frame = match tokio::time::timeout(client_timeout, body.frame()).await {
            Err(_) => {
                return Err(Failure::Client("the request body stalled for the client timeout\n"))
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Failure::Client("the request body was broken off\n")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            chunk.clear();
            let _ = write!(chunk, "{:x}\r\n", data.len());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            upstream.write_all(&chunk).await.map_err(gone)?;
        } else {
            upstream.write_all(&data).await.map_err(gone)?;
        }
    }
    if chunked {
        upstream.write_all(b"0\r\n\r\n").await.map_err(gone)?;
    }
    Ok(())
}

/// Reads until `buf` starts with a final response head (interim `1xx` heads are dropped: an
/// HTTP/2 client is not sent them).
async fn read_head(
    reader: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut BytesMut,
    head_request: bool,
    (edits, pin): ResponseAdditions<'_>,
    compression: Option<rules::AcceptedCompression<'_>>,
) -> Result<ParsedHead, Failure> {
    use tokio::io::AsyncReadExt as _;
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    if (100..200).contains(&status) && status != 101 {
                        buf.advance(head_len);
                        continue;
                    }
                    if status == 101 {
                        return Err(Failure::BadResponse(
                            "101 Switching Protocols to a request without Upgrade",
                        ));
                    }
                    let status = StatusCode::from_u16(status)
                        .map_err(|_| Failure::BadResponse("invalid status code"))?;
                    let fields = response.headers.iter().map(|h| (h.name, h.value));
                    let facts = rules::analyse_response(
                        status.as_u16(),
                        response.version == Some(0),
                        head_request,
                        fields.clone(),
                    )
                    .map_err(Failure::BadResponse)?;
                    let coding = rules::compression(compression, &facts, fields.clone());
                    let mut client_fields = HeaderMap::with_capacity(response.headers.len() + 3);
                    rules::write_response_fields(
                        &mut client_fields,
                        fields,
                        &facts,
                        edits,
                        pin,
                        false,
                        coding,
                    );
                    return Ok(ParsedHead {
                        status,
                        facts,
                        fields: client_fields,
                        head_len,
                        coding,
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(Failure::BadResponse("response head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(Failure::BadResponse("malformed response head")),
            }
        }
        buf.reserve(4096);
        match reader.read_buf(buf).await {
            Ok(0) => return Err(Failure::Unreachable(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(err) => return Err(Failure::Unreachable(err)),
        }
    }
}

/// The instance's response as hyper's, with the fields as the rules rewrote them and a body
/// that reads the rest from the connection.
fn relay(
    stream: TcpStream,
    head: ParsedHead,
    mut leftover: BytesMut,
    sent_all: bool,
    attempt: &Attempt<'_>,
    slot: InstanceSlot,
) -> Response<ProxyBody> {
    let ParsedHead { status, facts, fields, head_len, coding } = head;
    leftover.advance(head_len);
    let mut body = InstanceBody {
        stream: Some(stream),
        buf: leftover,
        framing: facts.framing,
        remaining: match facts.framing {
            Framing::Length(length) => length,
            _ => 0,
        },
        scanner: ChunkedScanner::new(),
        trailers: Vec::new(),
        reusable: facts.keep_alive && sent_all,
        connector: *attempt.connector,
        addr: attempt.addr,
        hello: attempt.hello,
        done: facts.framing == Framing::Empty,
        slot: Some(slot),
    };
    body.finish_if_done();
    let body = match coding {
        None => Either::Left(body),
        Some(coding) => {
            let encoder = Some(Encoder::new(coding));
            Either::Right(Box::new(CompressedBody { inner: body, encoder, trailers: None }))
        }
    };
    let mut response = Response::new(Either::Left(body));
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_2;
    *response.headers_mut() = fields;
    response
}

/// Who sent a request, and how.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    /// `addr`'s IP as text, for `X-Forwarded-For`: formatted once per connection, not per
    /// stream.
    pub(crate) ip_text: Arc<str>,
    /// The address the client connected to (for a PROXY header sent on).
    pub(crate) local: SocketAddr,
    /// The request arrived over TLS terminated by this proxy.
    pub(crate) tls: bool,
    /// The TLS handshake verified a client certificate against `--client-ca`.
    pub(crate) client_cert: bool,
}

/// What a request was routed to, for counters and the access log.
#[derive(Default)]
struct Routed {
    backend: Option<Arc<Backend>>,
    upstream: Option<SocketAddr>,
}

/// Milliseconds of a monotonic clock, for passive health windows. Read only when an
/// instance has a failure on record.
/// The one clock shared with the admin API's report of ejections.
pub(crate) fn now_ms() -> u64 {
    dfp_routing::health_clock_ms()
}
