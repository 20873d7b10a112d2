//! `compressionAlgo` and `compressionType`: which responses of a service are compressed on
//! the fly, validated once at reconfigure time so the data plane compares bytes only.
//!
//! Docker Flow Proxy passed these to HAProxy's `compression algo` / `compression type`, so
//! their meanings are HAProxy's: a list of algorithms separated by spaces (commas are
//! accepted too), each `gzip`, `deflate` (zlib-wrapped, as `Content-Encoding: deflate` means
//! in HTTP) or `identity` (no compression); the types are media types separated the same
//! way, compared with the response's `Content-Type` without its parameters, ignoring case;
//! no type list means every type. Beyond HAProxy (2.6 has no brotli), `br` is brotli, named
//! by its `Content-Encoding` token. Of a list, a response gets the first algorithm the client
//! accepts (the service's order of preference, not the client's). HAProxy's `raw-deflate` (a
//! workaround for 2000s browsers) is refused with a 400.

use crate::policy::PolicyError;

/// A content coding the proxy produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionAlgo {
    Gzip,
    /// zlib-wrapped deflate (RFC 9110 §8.4.1.2).
    Deflate,
    /// Brotli (RFC 7932), `Content-Encoding: br`.
    Brotli,
}

impl CompressionAlgo {
    /// The coding's name in `Content-Encoding` and `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            CompressionAlgo::Gzip => "gzip",
            CompressionAlgo::Deflate => "deflate",
            CompressionAlgo::Brotli => "br",
        }
    }

    /// An algorithm by its `compressionAlgo` name (any case); `None` for an unknown one.
    fn from_name(name: &str) -> Option<Self> {
        [CompressionAlgo::Gzip, CompressionAlgo::Deflate, CompressionAlgo::Brotli]
            .into_iter()
            .find(|algo| algo.token().eq_ignore_ascii_case(name))
    }
}

/// A service's compression: the coding and the media types it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// In the service's order of preference, without repeats; never empty.
    algos: Vec<CompressionAlgo>,
    /// Lowercase `type/subtype` entries; empty: every type.
    types: Vec<Box<str>>,
}

impl Compression {
    /// Reads `compressionAlgo` and `compressionType`. `Ok(None)` when nothing is to be
    /// compressed (no algorithm, or only `identity`).
    pub fn parse(algo: Option<&str>, types: Option<&str>) -> Result<Option<Self>, PolicyError> {
        let mut algos = Vec::new();
        let mut named = false;
        for name in entries(algo.unwrap_or_default()) {
            named = true;
            if name.eq_ignore_ascii_case("identity") {
                continue;
            }
            let algo = CompressionAlgo::from_name(name)
                .ok_or_else(|| PolicyError::BadCompressionAlgo(name.to_owned()))?;
            if !algos.contains(&algo) {
                algos.push(algo);
            }
        }
        if algos.is_empty() {
            return match types {
                Some(t) if !named && !t.trim().is_empty() => Err(PolicyError::CompressionTypeAlone),
                _ => Ok(None),
            };
        }
        let mut list: Vec<Box<str>> = Vec::new();
        for entry in entries(types.unwrap_or_default()) {
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
        Ok(Some(Compression { algos, types: list }))
    }

    /// The algorithms, in the service's order of preference (at least one).
    pub fn algos(&self) -> impl Iterator<Item = CompressionAlgo> + '_ {
        self.algos.iter().copied()
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

/// The entries of a list separated by spaces, tabs or commas.
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split([' ', ',', '\t']).filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_and_types_are_validated() {
        let c = Compression::parse(Some("GZIP"), Some("text/css  text/html,application/json"))
            .expect("valid")
            .expect("compresses");
        assert_eq!(c.algos().collect::<Vec<_>>(), [CompressionAlgo::Gzip]);
        assert_eq!(c.types().collect::<Vec<_>>(), ["text/css", "text/html", "application/json"]);
        assert!(c.applies_to(Some(b"text/html; charset=utf-8")));
        assert!(c.applies_to(Some(b"Text/CSS")));
        assert!(!c.applies_to(Some(b"image/png")));
        assert!(!c.applies_to(Some(b"text/htmlx")));
        assert!(!c.applies_to(None));
        let all = Compression::parse(Some("deflate"), None).expect("valid").expect("some");
        assert_eq!(all.algos().map(CompressionAlgo::token).collect::<Vec<_>>(), ["deflate"]);
        assert!(all.applies_to(None) && all.applies_to(Some(b"image/png")));
        assert_eq!(Compression::parse(Some("identity"), None), Ok(None));
        assert_eq!(Compression::parse(None, None), Ok(None));
        // A list keeps the service's order, without repeats or `identity`.
        let list = Compression::parse(Some(" br,gzip identity BR "), None).expect("valid");
        let list = list.expect("compresses").algos().collect::<Vec<_>>();
        assert_eq!(list, [CompressionAlgo::Brotli, CompressionAlgo::Gzip]);
        assert_eq!(Compression::parse(Some("identity identity"), Some("text/html")), Ok(None));
        assert_eq!(
            Compression::parse(Some("gzip brotli"), None),
            Err(PolicyError::BadCompressionAlgo("brotli".into()))
        );
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
