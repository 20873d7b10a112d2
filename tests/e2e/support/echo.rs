//! A TCP echo server for TCP services' tests: sends back what it reads, each chunk prefixed
//! with its name, so a test sees which instance a connection reached. Dropping it closes its
//! listener and every connection it has open (an instance killed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub struct TcpEcho {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(name: &'static str) -> TcpEcho {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let port = listener.local_addr().expect("echo address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned here: aborting the task drops (and so closes) every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                connections.spawn(async move {
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
