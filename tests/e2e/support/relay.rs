//! A TCP relay in front of a real server that holds back the requests whose bytes contain a
//! marker: a slow Consul for some lookups only (the restore's, for example), with everything
//! else passed through at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Relays loopback connections to `target`; stopped (with its connections) when dropped.
pub struct DelayRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayRelay {
    /// Each read from a client that contains `marker` is sent on after `delay`. An HTTP/1.1
    /// request without a body arrives in one read, so this delays the requests for paths
    /// that hold the marker.
    pub async fn start(target: SocketAddr, marker: &'static str, delay: Duration) -> DelayRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, target, marker.as_bytes(), delay));
            }
        });
        DelayRelay { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, marker: &'static [u8], delay: Duration) {
    let Ok(server) = TcpStream::connect(target).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buf[..n].windows(marker.len()).any(|w| w == marker) {
                tokio::time::sleep(delay).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
