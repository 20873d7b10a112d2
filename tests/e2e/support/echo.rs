//! A TCP echo server for TCP services' tests: sends back what it reads, each chunk prefixed
//! with its name, so a test sees which instance a connection reached. Dropping it closes its
//! listener and every connection it has open (an instance killed). [`TcpEcho::start_tls`]
//! is the same behind TLS ended by the instance itself, with its own certificate (what
//! `reqMode=sni` passes connections through to).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::TlsAcceptor;

/// A connection as the echo reads it: plain or decrypted.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct TcpEcho {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(name: &'static str) -> TcpEcho {
        Self::serve(name, None).await
    }

    /// An echo that ends TLS itself with `chain` and `key`.
    pub async fn start_tls(
        name: &'static str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TcpEcho {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the instance's certificate and key match");
        Self::serve(name, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(name: &'static str, tls: Option<TlsAcceptor>) -> TcpEcho {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let port = listener.local_addr().expect("echo address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned here: aborting the task drops (and so closes) every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                connections.spawn(async move {
                    let mut stream: Box<dyn Stream> = match tls {
                        None => Box::new(stream),
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    let mut buf = vec![0_u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut out = name.as_bytes().to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if stream.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TcpEcho { port, accepted, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
