//! `websocket` and `ws-echo`: the WebSocket client, its echo server, and the framing both use.

use base64::Engine as _;
use tokio::io::AsyncWrite;

use super::*;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One frame: FIN set, `opcode`, `payload`, masked with `mask` when given.
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame (after whatever `buf` already holds); returns its opcode and unmasked
/// payload, or None at the end of the stream.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    loop {
        if let Some((used, opcode, payload)) = parse_frame(buf) {
            buf.drain(..used);
            return Ok(Some((opcode, payload)));
        }
        buf.reserve(16384);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A whole frame at the start of `buf`: (bytes used, opcode, unmasked payload).
fn parse_frame(buf: &[u8]) -> Option<(usize, u8, Vec<u8>)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let mut at = 2;
    let len = match second & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            at = 4;
            u64::from(u16::from_be_bytes([b[0], b[1]]))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            at = 10;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mask: Option<[u8; 4]> = if second & 0x80 != 0 {
        let key = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let body = buf.get(at..at.checked_add(len)?)?;
    let payload = match mask {
        Some(key) => body.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect(),
        None => body.to_vec(),
    };
    Some((at + len, first & 0x0f, payload))
}

pub(super) async fn websocket_loop(
    shared: std::rc::Rc<Shared>,
    path: String,
    size: usize,
) -> Tally {
    let mut tally = Tally::default();
    if let Err(failure) = websocket_session(&shared, &path, size, &mut tally).await {
        tally.fail(failure);
    }
    tally
}

async fn websocket_session(
    shared: &Shared,
    path: &str,
    size: usize,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let mut tcp = bounded(Failure::Connect, TcpStream::connect(shared.addr)).await?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        shared.addr
    );
    bounded(Failure::Write, tcp.write_all(upgrade.as_bytes())).await?;
    let mut buf = Vec::with_capacity(16384);
    let head = bounded(Failure::Read, read_head(&mut tcp, &mut buf)).await?.ok_or(Failure::Read)?;
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(Failure::Status);
    }
    buf.drain(..head);
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let message = frame(0x1, &payload, Some([0x37, 0xfa, 0x21, 0x3d]));
    while shared.take() {
        let started = Instant::now();
        bounded(Failure::Write, tcp.write_all(&message)).await?;
        let echo = bounded(Failure::Read, read_frame(&mut tcp, &mut buf)).await?;
        match echo {
            Some((0x1, got)) if got == payload => tally.record(started),
            Some(_) => return Err(Failure::Status),
            None => return Err(Failure::Read),
        }
    }
    // A close frame, politely; the proxy and the echo server end the connection.
    let _ = timeout(STEP_TIMEOUT, tcp.write_all(&frame(0x8, &[], Some([1, 2, 3, 4])))).await;
    Ok(())
}

pub(super) async fn ws_echo(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::task::spawn_local(async move {
                    let _ = echo_session(stream).await;
                });
            }
        })
        .await
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

async fn echo_session<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16384);
    let Some(head_len) = read_head(&mut stream, &mut buf).await? else { return Ok(()) };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.drain(..head_len);
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
    });
    let Some(key) = key else {
        // Not an upgrade (a check or a stray request): a plain answer, then the end.
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nws-echo")
            .await?;
        return Ok(());
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    stream.write_all(answer.as_bytes()).await?;
    while let Some((opcode, payload)) = read_frame(&mut stream, &mut buf).await? {
        match opcode {
            0x8 => {
                stream.write_all(&frame(0x8, &[], None)).await?;
                return Ok(());
            }
            0x9 => stream.write_all(&frame(0xA, &payload, None)).await?,
            _ => stream.write_all(&frame(opcode, &payload, None)).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frames_round_trip_masked_and_not() {
        for size in [0, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            for mask in [None, Some([9, 8, 7, 6])] {
                let bytes = frame(0x2, &payload, mask);
                let (used, opcode, got) = parse_frame(&bytes).expect("a whole frame");
                assert_eq!((used, opcode, got.as_slice()), (bytes.len(), 0x2, payload.as_slice()));
                assert!(parse_frame(&bytes[..bytes.len() - 1]).is_none() || size == 0);
            }
        }
    }

    /// tcp-stream and tcp-connect against tcp-echo on a port-0 listener: every echo comes back
    /// whole, the budget bounds the count, and the byte tally matches.
    #[test]
    fn tcp_loads_echo_every_byte_within_their_budget() {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("its address");
            tokio::task::spawn_local(tcp_echo(listener));
            let load = Load { addr, connections: 3, duration: 10, max: 20 };
            let stream = run_clients(&load, |shared| tcp_stream_loop(shared, 200_000))
                .await
                .expect("the clients ran");
            let connect = run_clients(&load, |shared| tcp_connect_loop(shared, 64))
                .await
                .expect("the clients ran");
            for (tally, size) in [(stream, 200_000), (connect, 64)] {
                let failures =
                    (tally.connect, tally.read, tally.write, tally.status, tally.timeout);
                assert_eq!(failures, (0, 0, 0, 0, 0));
                assert_eq!(tally.latencies_us.len(), 20);
                assert_eq!(tally.bytes, 20 * size);
            }
        });
    }

    #[test]
    fn an_answer_is_complete_when_its_body_is() {
        assert!(complete_ok(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok1"));
        assert!(!complete_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"));
        assert!(!complete_ok(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
    }
}
