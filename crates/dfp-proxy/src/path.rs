//! Request-path normalisation before routing.
//!
//! A request for `/api/v1/books/../admin` must not be routed to the books service and then
//! resolved by the books service to `/api/v1/admin`, nor routed by one rule and read by the
//! instance under another. So before routing, dot segments (`.` and `..`, also when written
//! as `%2e`/`%2E`) are resolved and empty segments (`//`) are merged, as RFC 3986 §5.2.4 does
//! for URIs; the normalised path is what is routed **and** what is forwarded. A path that
//! climbs above `/` is refused (400). Nothing else is decoded: `%2F` stays an escaped byte
//! inside a segment, never a separator, exactly as most HTTP servers read it.

/// Why a path cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EscapesRoot;

/// Returns `None` when `path` is already normal (the common case costs one scan), the
/// normalised path otherwise.
pub(crate) fn normalize(path: &str) -> Result<Option<String>, EscapesRoot> {
    if !needs_work(path.as_bytes()) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        trailing_slash = i == last;
        match dot_kind(segment) {
            Dots::One => {}
            Dots::Two => {
                if out.pop().is_none() {
                    return Err(EscapesRoot);
                }
            }
            Dots::None if segment.is_empty() => {}
            Dots::None => {
                out.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    Ok(Some(normal))
}

/// Whether the path has `//`, a segment starting with `.`, or an encoded dot.
fn needs_work(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    path.windows(2).any(|w| w == b"//" || w == b"/.")
        || path.windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e')
}

enum Dots {
    None,
    One,
    Two,
}

fn dot_kind(segment: &str) -> Dots {
    let mut dots = 0;
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            i += 1;
        } else if bytes[i..].len() >= 3
            && bytes[i] == b'%'
            && bytes[i + 1] == b'2'
            && (bytes[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return Dots::None;
        }
        dots += 1;
        if dots > 2 {
            return Dots::None;
        }
    }
    match dots {
        1 => Dots::One,
        2 => Dots::Two,
        _ => Dots::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, Result<Option<&str>, EscapesRoot>)] = &[
            ("/api/v1/books", Ok(None)),
            ("/api/v1/books/", Ok(None)),
            ("/", Ok(None)),
            ("/a.b/c.d", Ok(None)),
            ("/.well-known/x", Ok(Some("/.well-known/x"))),
            ("/api/v1/books/../admin", Ok(Some("/api/v1/admin"))),
            ("/api/v1/books/%2e%2e/admin", Ok(Some("/api/v1/admin"))),
            ("/api/v1/books/%2E./admin", Ok(Some("/api/v1/admin"))),
            ("/api/./v1//books", Ok(Some("/api/v1/books"))),
            ("//api", Ok(Some("/api"))),
            ("/api/..", Ok(Some("/"))),
            ("/api/v1/.", Ok(Some("/api/v1/"))),
            ("/api/...", Ok(Some("/api/..."))),
            ("/api/%2e%2e%2e", Ok(Some("/api/%2e%2e%2e"))),
            ("/..", Err(EscapesRoot)),
            ("/a/../../b", Err(EscapesRoot)),
            ("/a%2F..%2Fb", Ok(None)),
        ];
        for (input, expected) in cases {
            let got = normalize(input);
            let got = got.as_ref().map(|o| o.as_deref());
            assert_eq!(got, expected.as_ref().map(|o| *o), "{input}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for input in ["", "x", "/%", "/%2", "/%2é", "/é/../.", "/\u{0}/..", "*"] {
            let _ = normalize(input);
        }
    }
}
