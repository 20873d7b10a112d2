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

/// Property tests: any input, never a panic, and what comes out is normal and stable.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::normalize;

    /// Paths built from the pieces that make normalisation hard.
    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2".to_owned()),
            Just("%".to_owned()),
            Just("%2F".to_owned()),
            "[a-z]{1,3}",
            "\\PC{1,2}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|p| format!("/{}", p.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn normalised_paths_are_normal_and_stable(path in tricky_path()) {
            if let Ok(Some(normal)) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"), "{normal}");
                for segment in normal.split('/') {
                    let lower = segment.to_ascii_lowercase().replace("%2e", ".");
                    prop_assert!(lower != "." && lower != "..", "{path} -> {normal}");
                }
                // Normalising again changes nothing.
                let again = normalize(&normal).expect("a normal path does not climb");
                prop_assert!(again.is_none() || again.as_deref() == Some(normal.as_str()));
            }
        }

        #[test]
        fn any_string_is_safe(path in "\\PC{0,64}") {
            let _ = normalize(&path);
        }
    }
}
