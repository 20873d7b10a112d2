//! Upgraded connections (WebSocket and any other `Upgrade`): bytes copied both ways until
//! either side closes or nothing moves for the tunnel timeout.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Copies `a` to `b` and `b` to `a`. A side that ends its output has its half closed on the
/// other side; the tunnel ends when both have, on an error, or after `idle` without traffic.
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let mut a_buf = vec![0_u8; 16 * 1024];
    let mut b_buf = vec![0_u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    while a_open || b_open {
        tokio::select! {
            read = a_read.read(&mut a_buf), if a_open => match read {
                Ok(0) | Err(_) => {
                    a_open = false;
                    let _ = b_write.shutdown().await;
                }
                Ok(n) => {
                    // Flushed at once: over TLS the last bytes could otherwise wait in the
                    // session while the tunnel waits for the other side.
                    if b_write.write_all(&a_buf[..n]).await.is_err() || b_write.flush().await.is_err() {
                        break;
                    }
                    quiet.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            },
            read = b_read.read(&mut b_buf), if b_open => match read {
                Ok(0) | Err(_) => {
                    b_open = false;
                    let _ = a_write.shutdown().await;
                }
                Ok(n) => {
                    if a_write.write_all(&b_buf[..n]).await.is_err() || a_write.flush().await.is_err() {
                        break;
                    }
                    quiet.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            },
            () = &mut quiet => {
                tracing::debug!(?idle, "tunnel idle for too long; closing it");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_idle_tunnels_close() {
        let (client, proxy_client_side) = tokio::io::duplex(64);
        let (proxy_upstream_side, upstream) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(splice(
            proxy_client_side,
            proxy_upstream_side,
            Duration::from_millis(200),
        ));
        let (mut client, mut upstream) = (client, upstream);
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0_u8; 4];
        upstream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        // Nothing moves: the tunnel closes by itself.
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("idle tunnel ends")
            .expect("no panic");
    }
}
