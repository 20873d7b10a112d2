//! One request's path through the proxy: route, pick an instance, rewrite, forward, answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dfp_routing::TableHandle;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ProxyError;
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::ProxyConfig;

/// What the proxy answers with: the upstream's streamed body, or a short body of its own.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Forwards requests along the live table. One per data-plane server, shared by connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    table: TableHandle,
    client: Client<HttpConnector, Incoming>,
    server_timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(table: TableHandle, config: &ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.upstream_idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Forwarder { table, client, server_timeout: config.server_timeout }
    }

    /// Answers one client request. Never fails: every problem becomes a response.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        client_addr: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        Ok(match self.forward(request, client_addr).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        })
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        client_addr: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let instance = self.pick_instance(request.uri().path())?;

        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .ok_or(ProxyError::BadRequest("the request has no path\n"))?;
        let authority = Authority::try_from(instance.to_string())
            .map_err(|_| ProxyError::UpstreamUnreachable)?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_and_query);
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::UpstreamUnreachable)?;
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        add_forwarded(headers, client_addr.ip(), "http");

        let answer = tokio::time::timeout(self.server_timeout, self.client.request(request)).await;
        let mut response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                tracing::debug!(%instance, error = %err, "upstream request failed");
                return Err(ProxyError::UpstreamUnreachable);
            }
            Err(_elapsed) => {
                tracing::debug!(%instance, timeout = ?self.server_timeout, "upstream timed out");
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        strip_hop_by_hop(response.headers_mut());
        // The client leg is ours: hyper speaks HTTP/1.1 to it (or 1.0 to a 1.0 client) whatever
        // version the instance answered with.
        *response.version_mut() = Version::HTTP_11;
        Ok(response.map(Either::Left))
    }

    /// Routes `path` on the live table and takes the service's next instance. The table guard
    /// lives only inside this function: nothing holds it across an `.await`.
    fn pick_instance(&self, path: &str) -> Result<SocketAddr, ProxyError> {
        let table = self.table.load();
        let route = table.lookup(path).ok_or(ProxyError::NoRoute)?;
        route.backend.next_instance().ok_or(ProxyError::NoInstance)
    }
}
