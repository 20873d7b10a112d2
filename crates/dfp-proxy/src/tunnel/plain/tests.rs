//! The plain tunnel loop on real loopback sockets: what a client and an instance see.

use super::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A tunnel on the loop between a client and an instance, each a real loopback socket:
/// returns the client's end, the instance's end and the task waiting for the tunnel.
async fn tunnel(
    idle: Duration,
) -> (tokio::net::TcpStream, tokio::net::TcpStream, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (proxy_client_side, _) = listener.accept().await.expect("accept");
    let proxy_instance_side = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (instance, _) = listener.accept().await.expect("accept");
    let task = tokio::spawn(splice(proxy_client_side, proxy_instance_side, idle));
    (client, instance, task)
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

#[tokio::test]
async fn messages_go_both_ways_and_a_quiet_tunnel_closes_both_sockets() {
    let (mut client, mut instance, task) = tunnel(Duration::from_millis(300)).await;
    let mut buf = [0_u8; 4];
    for _ in 0..3 {
        client.write_all(b"ping").await.expect("write");
        instance.read_exact(&mut buf).await.expect("the instance reads");
        assert_eq!(&buf, b"ping");
        instance.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("the client reads");
        assert_eq!(&buf, b"pong");
    }
    let loops = std::fs::read_dir("/proc/self/task")
        .expect("this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("dfp-tunnels-"))
        .count();
    assert!(loops > 0, "the tunnel runs on a loop of its own, not on the runtime");
    let quiet = Instant::now();
    within("the idle tunnel ends", task).await.expect("no panic");
    assert!(quiet.elapsed() >= Duration::from_millis(250), "closed only once quiet");
    assert_eq!(within("the client sees the end", client.read(&mut buf)).await.ok(), Some(0));
    assert_eq!(within("the instance sees the end", instance.read(&mut buf)).await.ok(), Some(0));
}

#[tokio::test]
async fn a_busy_tunnel_outlives_its_idle_timeout() {
    let (mut client, mut instance, task) = tunnel(Duration::from_millis(400)).await;
    let mut buf = [0_u8; 4];
    // Ten messages 100 ms apart: a second of traffic, more than twice the idle timeout.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"ping").await.expect("write");
        within("the tunnel is still open", instance.read_exact(&mut buf)).await.expect("read");
    }
    within("the quiet tunnel ends", task).await.expect("no panic");
}

#[tokio::test]
async fn a_client_that_ends_its_side_still_gets_the_instances_last_words() {
    let (mut client, mut instance, task) = tunnel(Duration::from_secs(60)).await;
    client.write_all(b"last request").await.expect("write");
    client.shutdown().await.expect("the client ends its side");
    let mut got = Vec::new();
    within("the end reaches the instance", instance.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"last request");
    instance.write_all(b"last answer").await.expect("the instance can still write");
    drop(instance);
    let mut back = Vec::new();
    within("the answer and the end", client.read_to_end(&mut back)).await.expect("read");
    assert_eq!(back, b"last answer");
    within("the tunnel ends once both sides have", task).await.expect("no panic");
}

#[tokio::test]
async fn large_transfers_both_ways_arrive_whole_past_a_slow_reader() {
    let (client, instance, task) = tunnel(Duration::from_secs(60)).await;
    let sent: Vec<u8> = (0..8_000_000_u32).map(|i| (i % 251) as u8).collect();
    let (mut client_in, mut client_out) = client.into_split();
    let (mut instance_in, mut instance_out) = instance.into_split();
    let up = {
        let sent = sent.clone();
        tokio::spawn(async move {
            client_out.write_all(&sent).await.expect("upload");
            client_out.shutdown().await.expect("end of the upload");
        })
    };
    let down = {
        let sent = sent.clone();
        tokio::spawn(async move {
            instance_out.write_all(&sent).await.expect("download");
            instance_out.shutdown().await.expect("end of the download");
        })
    };
    // Neither side reads for a while: both directions fill the sockets and wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut uploaded, mut downloaded) = (Vec::new(), Vec::new());
    let (a, b) = within("both transfers end", async {
        tokio::join!(instance_in.read_to_end(&mut uploaded), client_in.read_to_end(&mut downloaded))
    })
    .await;
    a.expect("the instance reads");
    b.expect("the client reads");
    up.await.expect("no panic");
    down.await.expect("no panic");
    assert!(uploaded == sent, "{} of {} bytes arrived up, in order?", uploaded.len(), sent.len());
    assert!(downloaded == sent, "{} of {} bytes arrived down", downloaded.len(), sent.len());
    within("the tunnel ends", task).await.expect("no panic");
}

#[tokio::test]
async fn a_socket_that_is_always_readable_does_not_hold_up_other_tunnels() {
    let (client, mut instance, flood) = tunnel(Duration::from_secs(60)).await;
    // The flooded tunnel: the client sends as fast as it can, the instance reads all.
    let draining = tokio::spawn(async move {
        let mut buf = vec![0_u8; 64 * 1024];
        while instance.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        let mut client = client;
        tokio::spawn(async move {
            let chunk = vec![7_u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if client.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })
    };
    // Meanwhile a second tunnel on the same loop answers every message.
    let (mut client, mut instance, quiet) = tunnel(Duration::from_secs(60)).await;
    let mut buf = [0_u8; 4];
    for _ in 0..20 {
        client.write_all(b"ping").await.expect("write");
        within("the message arrives beside the flood", instance.read_exact(&mut buf))
            .await
            .expect("read");
        instance.write_all(b"pong").await.expect("write");
        within("the answer arrives beside the flood", client.read_exact(&mut buf))
            .await
            .expect("read");
    }
    stop.store(true, Ordering::Relaxed);
    flooding.await.expect("no panic");
    flood.abort();
    quiet.abort();
    let _ = draining.await;
}

#[tokio::test]
async fn dropping_the_waiting_task_closes_the_tunnel() {
    let (mut client, mut instance, task) = tunnel(Duration::from_secs(60)).await;
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0_u8; 4];
    instance.read_exact(&mut buf).await.expect("the tunnel runs");
    // What the runtime does to a connection still open when the shutdown grace is over.
    task.abort();
    let _ = task.await;
    let ended = |read: io::Result<usize>| matches!(read, Ok(0) | Err(_));
    assert!(ended(within("the client's socket closes", client.read(&mut buf)).await));
    assert!(ended(within("the instance's socket closes", instance.read(&mut buf)).await));
}

#[tokio::test]
async fn bytes_waiting_in_the_sockets_when_the_tunnel_starts_go_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (proxy_client_side, _) = listener.accept().await.expect("accept");
    let proxy_instance_side = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut instance, _) = listener.accept().await.expect("accept");
    // Both sides speak before the tunnel exists (the first frames after a `101`).
    client.write_all(b"early up").await.expect("write");
    instance.write_all(b"early down").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let task =
        tokio::spawn(splice(proxy_client_side, proxy_instance_side, Duration::from_secs(60)));
    let mut up = [0_u8; 8];
    within("the early upload", instance.read_exact(&mut up)).await.expect("read");
    assert_eq!(&up, b"early up");
    let mut down = [0_u8; 10];
    within("the early download", client.read_exact(&mut down)).await.expect("read");
    assert_eq!(&down, b"early down");
    drop((client, instance));
    within("the tunnel ends with its sockets", task).await.expect("no panic");
}
