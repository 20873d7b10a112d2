//! The trailer fields of an instance's chunked response, where the proxy decodes the body
//! instead of relaying its bytes: after a compressed body (both engines) and to HTTP/2
//! clients (hyper's trailers frame). The HTTP/1 engine's plain relay passes the trailer
//! section on byte for byte and never comes here.
//!
//! The section arrives as [`crate::chunked::ChunkedScanner::feed_parts`] delimits it (at most
//! [`crate::chunked::MAX_TRAILERS`] bytes). A line that is not `name: value` with a token
//! name is dropped: it could not be written into a header map, and HTTP/1.1 and HTTP/2
//! clients must get the same fields.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Trailer fields that state something about the body's bytes as the instance sent them,
/// which are no longer true of the compressed bytes: its length, its checksums (`Content-MD5`,
/// `Digest`, RFC 9530's `Content-Digest` and `Repr-Digest`, the latter over the
/// representation, which the content coding changes) and a validator (`ETag`, dropped rather
/// than weakened: a trailer is read after the body, too late to matter for caches). They are
/// dropped from a compressed response; every other trailer is kept.
const INVALIDATED_BY_COMPRESSION: &[&str] =
    &["content-length", "content-md5", "digest", "content-digest", "repr-digest", "etag"];

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2: connection-specific ones), in trailers as in a
/// head.
const CONNECTION_SPECIFIC: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

/// The field lines of a trailer section: name and value (trimmed); malformed lines skipped.
pub(crate) fn fields(section: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    section.split(|b| *b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        (!name.is_empty() && name.iter().all(token)).then_some((name, value))
    })
}

/// Whether compression makes this trailer field false ([`INVALIDATED_BY_COMPRESSION`]).
pub(crate) fn invalidated_by_compression(name: &[u8]) -> bool {
    INVALIDATED_BY_COMPRESSION.iter().any(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends the end of a compressed chunked body to `out`: the last chunk, the trailer fields
/// of `section` that compression leaves true (names as the instance wrote them), and the
/// final empty line.
pub(crate) fn write_last_chunk(section: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in fields(section).filter(|(name, _)| !invalidated_by_compression(name)) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The trailer section as an HTTP/2 trailers frame's fields, without the connection-specific
/// ones; `None` when nothing is left.
pub(crate) fn header_map(section: &[u8]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in fields(section) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if !CONNECTION_SPECIFIC.contains(&name.as_str()) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// Drops from `map` what compression makes false ([`INVALIDATED_BY_COMPRESSION`]).
pub(crate) fn drop_invalidated(map: &mut HeaderMap) {
    for name in INVALIDATED_BY_COMPRESSION {
        map.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &[u8] = b"Grpc-Status: 0\r\nContent-MD5:  Q2hlY2s=\r\nX-Sum: 5 \r\n\
        not a field\r\nBad Name: x\r\nDigest: sha-256=abc\r\nConnection: close\r\n\
        Content-Length: 9\r\nX-Sum: 6\r\n\r\n";

    #[test]
    fn a_compressed_body_keeps_the_trailers_compression_leaves_true() {
        let mut out = Vec::new();
        write_last_chunk(SECTION, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "0\r\nGrpc-Status: 0\r\nX-Sum: 5\r\nConnection: close\r\nX-Sum: 6\r\n\r\n"
        );
        let mut out = Vec::new();
        write_last_chunk(b"", &mut out);
        assert_eq!(out, b"0\r\n\r\n");
        write_last_chunk(b"\r\n", &mut out);
        assert_eq!(out, b"0\r\n\r\n0\r\n\r\n");
    }

    #[test]
    fn http2_trailers_drop_connection_fields_and_compression_drops_checksums() {
        let mut map = header_map(SECTION).expect("fields left");
        let names = |map: &HeaderMap| map.keys().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            names(&map),
            ["grpc-status", "content-md5", "x-sum", "digest", "content-length"]
        );
        assert_eq!(map.get_all("x-sum").iter().collect::<Vec<_>>(), ["5", "6"]);
        assert_eq!(map["content-md5"], "Q2hlY2s=");
        drop_invalidated(&mut map);
        assert_eq!(names(&map), ["grpc-status", "x-sum"]);
        assert_eq!(header_map(b"Connection: close\r\n\r\n"), None);
        assert_eq!(header_map(b"\r\n"), None);
    }
}
