//! Service paths, validated once at configuration time.

use std::fmt;
use std::sync::Arc;

/// Longest service path we accept. Generous for real APIs, small enough to keep the table lean.
pub(crate) const MAX_LEN: usize = 1024;

/// Why a service path was refused. Each message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("service path is empty: give a path such as /api/v1/books")]
    Empty,
    #[error("service path {0:?} must start with '/', e.g. /{0}")]
    NoLeadingSlash(String),
    #[error("service path {path:?} is longer than {MAX_LEN} bytes")]
    TooLong { path: String },
    #[error(
        "service path {path:?} contains {found:?}, which is not allowed in a URL path; \
         percent-encode it (e.g. %20 for a space) or leave it out"
    )]
    InvalidChar { path: String, found: char },
    #[error("service path {path:?} has a malformed percent-escape; write '%' followed by two hex digits")]
    BadPercentEscape { path: String },
    #[error("service path {path:?} has an empty segment ('//'); remove the extra '/'")]
    EmptySegment { path: String },
    #[error("service path {path:?} has a '.' or '..' segment; give the path as it is after resolving them")]
    DotSegment { path: String },
}

/// A validated service path such as `/api/v1/books`.
///
/// Invariants (checked by [`PathPrefix::parse`], relied upon by the route table):
/// starts with `/`; is `/` itself or has no trailing `/` (a trailing slash given by the user is
/// dropped: `/api/` and `/api` own the same requests); has no empty, `.` or `..` segment;
/// holds only characters allowed in a URL path (RFC 3986 `pchar` and `/`) with well-formed
/// percent-escapes, so in particular no `?`, `#`, whitespace, `{` or `}`.
///
/// A prefix owns requests segment by segment: `/api/v1/books` owns `/api/v1/books`,
/// `/api/v1/books/…` and `/api/v1/books?…`, never `/api/v1/booksellers`. `/` owns everything.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPrefix(Arc<str>);

/// A prefix is looked up by the text of a request path's cut (see the route table's lookup):
/// hashed and compared as that text.
impl std::borrow::Borrow<str> for PathPrefix {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PathPrefix {
    /// The catch-all prefix `/`.
    pub fn root() -> Self {
        PathPrefix(Arc::from("/"))
    }

    /// Validates and normalises a service path.
    pub fn parse(input: &str) -> Result<Self, PrefixError> {
        if input.is_empty() {
            return Err(PrefixError::Empty);
        }
        if !input.starts_with('/') {
            return Err(PrefixError::NoLeadingSlash(input.to_owned()));
        }
        if input.len() > MAX_LEN {
            return Err(PrefixError::TooLong { path: input.to_owned() });
        }
        if input.contains("//") {
            return Err(PrefixError::EmptySegment { path: input.to_owned() });
        }
        let trimmed =
            if input.len() > 1 { input.strip_suffix('/').unwrap_or(input) } else { input };
        let bytes = trimmed.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(PrefixError::BadPercentEscape { path: input.to_owned() });
                }
                i += 3;
                continue;
            }
            if !is_path_byte(b) {
                let found = trimmed[i..].chars().next().unwrap_or('\u{fffd}');
                return Err(PrefixError::InvalidChar { path: input.to_owned(), found });
            }
            i += 1;
        }
        if trimmed != "/" {
            for segment in trimmed[1..].split('/') {
                match segment {
                    "" => return Err(PrefixError::EmptySegment { path: input.to_owned() }),
                    "." | ".." => return Err(PrefixError::DotSegment { path: input.to_owned() }),
                    _ => {}
                }
            }
        }
        Ok(PathPrefix(Arc::from(trimmed)))
    }

    /// The normalised path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the catch-all `/`.
    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }
}

/// RFC 3986 `pchar` (less the `%` handled by the caller) plus the segment separator.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, expected normalised path or the error's variant name)
    const CASES: &[(&str, Result<&str, &str>)] = &[
        ("/", Ok("/")),
        ("/api", Ok("/api")),
        ("/api/", Ok("/api")),
        ("/api/v1/books", Ok("/api/v1/books")),
        ("/a-b_c.d~e/f:g@h", Ok("/a-b_c.d~e/f:g@h")),
        ("/caf%C3%A9", Ok("/caf%C3%A9")),
        ("/v1.2", Ok("/v1.2")),
        ("", Err("Empty")),
        ("api", Err("NoLeadingSlash")),
        ("/a b", Err("InvalidChar")),
        ("/a?b", Err("InvalidChar")),
        ("/a#b", Err("InvalidChar")),
        ("/a{b}", Err("InvalidChar")),
        ("/café", Err("InvalidChar")),
        ("/a%zz", Err("BadPercentEscape")),
        ("/a%4", Err("BadPercentEscape")),
        ("//", Err("EmptySegment")),
        ("/a//b", Err("EmptySegment")),
        ("/a/./b", Err("DotSegment")),
        ("/a/..", Err("DotSegment")),
        ("/..", Err("DotSegment")),
    ];

    #[test]
    fn parse_table() {
        for (input, expected) in CASES {
            let got = PathPrefix::parse(input);
            match (expected, &got) {
                (Ok(want), Ok(p)) => assert_eq!(p.as_str(), *want, "input {input:?}"),
                (Err(variant), Err(e)) => {
                    let name = format!("{e:?}");
                    assert!(
                        name.starts_with(variant),
                        "input {input:?}: got {name}, want {variant}"
                    );
                    assert!(!e.to_string().is_empty());
                }
                _ => panic!("input {input:?}: got {got:?}, want {expected:?}"),
            }
        }
    }

    #[test]
    fn too_long_is_refused() {
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert!(matches!(PathPrefix::parse(&long), Err(PrefixError::TooLong { .. })));
    }

    #[test]
    fn multibyte_input_never_panics() {
        for input in ["/é", "/a/é/b", "/%é", "/€%", "/ü%2"] {
            assert!(PathPrefix::parse(input).is_err(), "{input}");
        }
    }
}
