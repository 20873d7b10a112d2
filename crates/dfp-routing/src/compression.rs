//! `compressionAlgo` and `compressionType`: which responses of a service are compressed on
//! the fly, validated once at reconfigure time so the data plane compares bytes only.
//!
//! Docker Flow Proxy passed these to HAProxy's `compression algo` / `compression type`, so
//! their meanings are HAProxy's: the algorithms `gzip` and `deflate` (zlib-wrapped, as
//! `Content-Encoding: deflate` means in HTTP); `identity` is no compression; the types are
//! media types separated by spaces (commas are accepted too), compared with the response's
//! `Content-Type` without its parameters, ignoring case; no type list means every type.
//! HAProxy's `raw-deflate` (a workaround for 2000s browsers) and brotli are refused with a
//! 400 that says to use gzip: brotli's only pure-Rust encoder is a large crate to build for
//! a few percent over gzip on text.

use crate::policy::PolicyError;

/// A content coding the proxy produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionAlgo {
    Gzip,
    /// zlib-wrapped deflate (RFC 9110 §8.4.1.2).
    Deflate,
}

impl CompressionAlgo {
    /// The coding's name in `Content-Encoding` and `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            CompressionAlgo::Gzip => "gzip",
            CompressionAlgo::Deflate => "deflate",
        }
    }
}

/// A service's compression: the coding and the media types it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    algo: CompressionAlgo,
    /// Lowercase `type/subtype` entries; empty: every type.
    types: Vec<Box<str>>,
}

impl Compression {
    /// Reads `compressionAlgo` and `compressionType`. `Ok(None)` when nothing is to be
    /// compressed (`identity`, or no algorithm).
    pub fn parse(algo: Option<&str>, types: Option<&str>) -> Result<Option<Self>, PolicyError> {
        let algo = match algo.map(str::trim) {
            None | Some("") => {
                return match types {
                    Some(t) if !t.trim().is_empty() => Err(PolicyError::CompressionTypeAlone),
                    _ => Ok(None),
                };
            }
            Some(a) if a.eq_ignore_ascii_case("gzip") => CompressionAlgo::Gzip,
            Some(a) if a.eq_ignore_ascii_case("deflate") => CompressionAlgo::Deflate,
            Some(a) if a.eq_ignore_ascii_case("identity") => return Ok(None),
            Some(other) => return Err(PolicyError::BadCompressionAlgo(other.to_owned())),
        };
        let mut list: Vec<Box<str>> = Vec::new();
        for entry in types.unwrap_or_default().split([' ', ',', '\t']).filter(|e| !e.is_empty()) {
            let valid = entry.split_once('/').is_some_and(|(t, s)| {
                let token = |p: &str| {
                    !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(t) && token(s)
            });
            if !valid {
                return Err(PolicyError::BadCompressionType(entry.to_owned()));
            }
            let entry: Box<str> = entry.to_ascii_lowercase().into();
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
        Ok(Some(Compression { algo, types: list }))
    }

    pub fn algo(&self) -> CompressionAlgo {
        self.algo
    }

    /// The media types, as configured (lowercase); empty: every type.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|t| &**t)
    }

    /// Whether a response with this `Content-Type` value is compressed. A response without
    /// one is compressed only when every type is.
    pub fn applies_to(&self, content_type: Option<&[u8]>) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let Some(value) = content_type else { return false };
        let media = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        self.types.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(media))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_and_types_are_validated() {
        let c = Compression::parse(Some("GZIP"), Some("text/css  text/html,application/json"))
            .expect("valid")
            .expect("compresses");
        assert_eq!(c.algo(), CompressionAlgo::Gzip);
        assert_eq!(c.types().collect::<Vec<_>>(), ["text/css", "text/html", "application/json"]);
        assert!(c.applies_to(Some(b"text/html; charset=utf-8")));
        assert!(c.applies_to(Some(b"Text/CSS")));
        assert!(!c.applies_to(Some(b"image/png")));
        assert!(!c.applies_to(Some(b"text/htmlx")));
        assert!(!c.applies_to(None));
        let all = Compression::parse(Some("deflate"), None).expect("valid").expect("some");
        assert_eq!(all.algo().token(), "deflate");
        assert!(all.applies_to(None) && all.applies_to(Some(b"image/png")));
        assert_eq!(Compression::parse(Some("identity"), None), Ok(None));
        assert_eq!(Compression::parse(None, None), Ok(None));
        assert!(matches!(
            Compression::parse(Some("br"), None),
            Err(PolicyError::BadCompressionAlgo(_))
        ));
        assert!(matches!(
            Compression::parse(Some("raw-deflate"), None),
            Err(PolicyError::BadCompressionAlgo(_))
        ));
        assert!(matches!(
            Compression::parse(Some("gzip"), Some("text")),
            Err(PolicyError::BadCompressionType(_))
        ));
        assert!(matches!(
            Compression::parse(Some("gzip"), Some("text/html;q=1")),
            Err(PolicyError::BadCompressionType(_))
        ));
        assert_eq!(
            Compression::parse(None, Some("text/html")),
            Err(PolicyError::CompressionTypeAlone)
        );
    }
}
