//! Shared pieces of the benches: route tables of a given size, a tiny upstream, and a
//! keep-alive HTTP/1.1 client that measures one request at a time with little overhead.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use dfp_routing::{PathPrefix, RouteTable, RouteTableBuilder};

/// A table of `n` services, each owning `/api/v<k>/service-<i>`, one instance each.
pub fn table_of(n: usize) -> RouteTable {
    let mut builder = RouteTableBuilder::new();
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    for i in 0..n {
        let path = PathPrefix::parse(&format!("/api/v{}/service-{i}", i % 7)).expect("valid");
        builder.add_service(&format!("service-{i}"), &[path], &[addr]).expect("distinct");
    }
    builder.build(1).expect("builds")
}

/// A blocking keep-alive HTTP/1.1 client on one connection.
#[derive(Debug)]
pub struct KeepAliveClient {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl KeepAliveClient {
    /// Connects to `addr`; every [`KeepAliveClient::get`] asks for `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
        Ok(KeepAliveClient { stream, request, buf: vec![0; 64 * 1024] })
    }

    /// Sends the request and reads the whole response (Content-Length framing); returns the
    /// status code.
    pub fn get(&mut self) -> std::io::Result<u16> {
        self.stream.write_all(&self.request)?;
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.buf[filled..])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
            if let Some(done) = complete_response(&self.buf[..filled]) {
                return Ok(done);
            }
            if filled == self.buf.len() {
                return Err(std::io::Error::other("response larger than 64 KiB"));
            }
        }
    }
}

/// The status code when `bytes` hold a whole response with a Content-Length body.
fn complete_response(bytes: &[u8]) -> Option<u16> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (bytes.len() >= head_end + length).then_some(status)
}
