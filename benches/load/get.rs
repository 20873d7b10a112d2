//! `get`: plain keep-alive GETs, one in flight per connection, with the churn timeline.

use super::*;

pub(super) async fn get_loop(shared: std::rc::Rc<Shared>, request: std::rc::Rc<[u8]>) -> Tally {
    let mut tally = Tally::default();
    let mut connection = None;
    let mut buf = Vec::with_capacity(16384);
    while shared.take() {
        let started = Instant::now();
        match get_once(&shared, &mut connection, &request, &mut buf).await {
            Ok(()) => {
                tally.record(started);
                tally.ended(&shared, true);
            }
            Err(failure) => {
                connection = None;
                tally.fail(failure);
                tally.ended(&shared, false);
            }
        }
    }
    tally
}

/// One GET on `connection` (opened first when there is none) and its whole answer, which must
/// be a `200` with a `Content-Length`; a `Connection: close` answer drops the connection.
async fn get_once(
    shared: &Shared,
    connection: &mut Option<TcpStream>,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), Failure> {
    if connection.is_none() {
        let tcp = bounded(Failure::Connect, TcpStream::connect(shared.addr)).await?;
        tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
        buf.clear();
        *connection = Some(tcp);
    }
    let Some(tcp) = connection.as_mut() else { return Err(Failure::Connect) };
    bounded(Failure::Write, tcp.write_all(request)).await?;
    let head = bounded(Failure::Read, read_head(tcp, buf)).await?.ok_or(Failure::Read)?;
    if !(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")) {
        return Err(Failure::Status);
    }
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let header = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)).map(|v| v.trim().to_owned())
    };
    let length: usize =
        header("content-length:").and_then(|v| v.parse().ok()).ok_or(Failure::Status)?;
    // HTTP/1.0 closes unless it says keep-alive; HTTP/1.1 keeps alive unless it says close.
    let field = header("connection:").unwrap_or_default();
    let close = if buf.starts_with(b"HTTP/1.0") {
        !field.contains("keep-alive")
    } else {
        field.contains("close")
    };
    while buf.len() < head + length {
        buf.reserve(16384);
        if bounded(Failure::Read, tcp.read_buf(buf)).await? == 0 {
            return Err(Failure::Read);
        }
    }
    buf.drain(..head + length);
    if close {
        *connection = None;
    }
    Ok(())
}
