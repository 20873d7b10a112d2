//! The ACME client's HTTP: instant-acme's requests sent through a reqwest client, so the
//! binary keeps one HTTP client stack and one TLS provider (and the operator's CA file for a
//! private or test CA is added the way reqwest adds roots).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use super::AcmeError;

/// How long one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An [`HttpClient`] for instant-acme over reqwest.
#[derive(Debug, Clone)]
pub(crate) struct AcmeHttp {
    client: reqwest::Client,
}

impl AcmeHttp {
    /// A client that trusts the system's roots and, when given, the PEM certificates in
    /// `extra_roots` (a private CA, or a test CA such as pebble's).
    pub(crate) fn new(extra_roots: Option<&Path>) -> Result<AcmeHttp, AcmeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .no_proxy();
        if let Some(path) = extra_roots {
            let pem = std::fs::read(path).map_err(|err| {
                AcmeError::Config(format!(
                    "--acme-ca-cert {} cannot be read: {err}",
                    path.display()
                ))
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                AcmeError::Config(format!(
                    "--acme-ca-cert {} holds no PEM certificate reqwest can use: {err}",
                    path.display()
                ))
            })?;
            if roots.is_empty() {
                return Err(AcmeError::Config(format!(
                    "--acme-ca-cert {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(roots);
        }
        let client = builder
            .build()
            .map_err(|err| AcmeError::Config(format!("the ACME HTTP client: {err}")))?;
        Ok(AcmeHttp { client })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let url = parts.uri.to_string();
            let mut outgoing = client.request(parts.method, url).body(body);
            for (name, value) in &parts.headers {
                outgoing = outgoing.header(name, value);
            }
            let answer = outgoing.send().await.map_err(other)?;
            let mut response = http::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            let bytes = answer.bytes().await.map_err(other)?;
            let response = response.body(Full::new(bytes)).map_err(instant_acme::Error::Http)?;
            Ok(BytesResponse::from(response))
        })
    }
}

/// reqwest's error with its causes (its own message alone says only "error sending request").
fn other(err: reqwest::Error) -> instant_acme::Error {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    instant_acme::Error::Other(message.into())
}
