//! Routing conditions: Docker Flow Proxy's `pathType`, `serviceHeader` and `userAgent`.
//!
//! Why here and in this shape: these decide *which service* gets a request, so they are part
//! of the lookup, not of a service's policy (which only runs once a service is chosen). The
//! table keeps its index keyed by segment-aware prefixes, and a route with conditions
//! hangs off one node of it (its *anchor*, a prefix that owns every path the route can match)
//! as one more candidate. A lookup walks the index as before and evaluates conditions only on
//! the candidates at the nodes it visits, so the cost does not grow with the number of
//! services, and a route without conditions pays one `Option` check.
//!
//! Everything is parsed and compiled here at reconfigure time (regexes with a size bound,
//! header names, lowercase user-agent needles); matching borrows the request's fields through
//! [`RequestFields`] and never allocates.

use std::fmt;

use http::header::HeaderName;
use regex::{Regex, RegexBuilder};

use crate::PathPrefix;

/// Longest `servicePath` value, `serviceHeader` value or `userAgent` entry accepted.
const MAX_LEN: usize = 1024;

/// Compiled size bound of a `path_reg` expression (the `regex` crate's own default is 10 MiB:
/// one service must not be able to make every table that large).
const MAX_REGEX_BYTES: usize = 256 * 1024;

/// Why a routing condition was refused. Each message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("pathType {0:?} is not supported; give path_beg, path, path_end or path_reg")]
    UnknownPathType(String),
    #[error("servicePath {path:?} is not valid for pathType {path_type}: {why}")]
    BadPath { path: String, path_type: &'static str, why: String },
    #[error("regular expression {pattern:?} is invalid: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error(
        "serviceHeader entry {0:?} is not `Name:value`; give entries such as X-Version:3, \
         separated by commas"
    )]
    BadHeader(String),
    #[error("userAgent entry {0:?} is not valid: give visible ASCII text such as iphone")]
    BadUserAgent(String),
}

/// How a `servicePath` value is compared with the request path (HAProxy's ACL derivatives,
/// as Docker Flow Proxy's `pathType` names them). Without `pathType`, this proxy's own
/// segment-aware prefix applies (a [`PathPrefix`]), which is not one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    /// `path_beg`: a raw string prefix (`/api` matches `/apix`), for compatibility.
    Beg,
    /// `path`: the path exactly.
    Exact,
    /// `path_end`: a suffix (`.png`).
    End,
    /// `path_reg`: a regular expression searched in the path (write `^`/`$` to anchor it).
    Regex,
}

impl PathType {
    pub fn parse(input: &str) -> Result<Self, ConditionError> {
        match input.trim() {
            "path_beg" => Ok(PathType::Beg),
            "path" => Ok(PathType::Exact),
            "path_end" => Ok(PathType::End),
            "path_reg" => Ok(PathType::Regex),
            other => Err(ConditionError::UnknownPathType(other.to_owned())),
        }
    }

    /// Docker Flow Proxy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PathType::Beg => "path_beg",
            PathType::Exact => "path",
            PathType::End => "path_end",
            PathType::Regex => "path_reg",
        }
    }
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `servicePath` value under a `pathType`, validated and (for `path_reg`) compiled.
#[derive(Clone)]
pub struct PathPattern {
    kind: PathType,
    text: Box<str>,
    regex: Option<Regex>,
    /// The longest segment-aware prefix that owns every path this pattern can match: the
    /// index node the route hangs off.
    anchor: PathPrefix,
}

impl PathPattern {
    /// Validates `text` as a `kind` pattern.
    ///
    /// `path_beg` and `path` values are paths (they start with `/` and hold only URL path
    /// characters, no empty or dot segment: requests are normalised before they are compared);
    /// a `path_end` value is visible ASCII without `?` or `#`; a `path_reg` value compiles,
    /// within a size bound.
    pub fn parse(kind: PathType, text: &str) -> Result<Self, ConditionError> {
        let bad = |why: String| ConditionError::BadPath {
            path: text.to_owned(),
            path_type: kind.as_str(),
            why,
        };
        if text.is_empty() {
            return Err(bad("it is empty".to_owned()));
        }
        if text.len() > MAX_LEN {
            return Err(bad(format!("it is longer than {MAX_LEN} bytes")));
        }
        let (regex, anchor) = match kind {
            PathType::Beg | PathType::Exact => {
                // The path rules of a prefix, but the value is kept as given (`/api/` and
                // `/api` differ for these types).
                let whole = PathPrefix::parse(text).map_err(|e| bad(e.to_string()))?;
                let anchor = match kind {
                    PathType::Exact => whole,
                    _ => parent(text),
                };
                (None, anchor)
            }
            PathType::End => {
                if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic() || "?#".contains(*c)) {
                    return Err(bad(format!(
                        "it contains {c:?}; give the end of a path such as .png"
                    )));
                }
                (None, PathPrefix::root())
            }
            PathType::Regex => {
                let regex = RegexBuilder::new(text)
                    .size_limit(MAX_REGEX_BYTES)
                    .dfa_size_limit(MAX_REGEX_BYTES)
                    .build()
                    .map_err(|e| ConditionError::BadRegex {
                        pattern: text.to_owned(),
                        reason: e.to_string(),
                    })?;
                (Some(regex), PathPrefix::root())
            }
        };
        Ok(PathPattern { kind, text: text.into(), regex, anchor })
    }

    pub fn kind(&self) -> PathType {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The index node this pattern's route hangs off.
    pub fn anchor(&self) -> &PathPrefix {
        &self.anchor
    }

    /// Whether the (normalised) request path matches.
    pub fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathType::Beg => path.starts_with(&*self.text),
            PathType::Exact => path == &*self.text,
            PathType::End => path.ends_with(&*self.text),
            PathType::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
        }
    }
}

/// The segment-aware prefix above a raw prefix: everything before its last `/` (`/api/v` ->
/// `/api`, `/api/` -> `/api`, `/api` -> `/`). Every path starting with `text` is below it.
fn parent(text: &str) -> PathPrefix {
    match text.rfind('/') {
        Some(0) | None => PathPrefix::root(),
        Some(i) => PathPrefix::parse(&text[..i]).unwrap_or_else(|_| PathPrefix::root()),
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.text)
    }
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.text == other.text
    }
}

impl Eq for PathPattern {}

/// `serviceHeader`'s `Name:value`: the request must have a field `Name` (any case) with the
/// value `value` exactly, as one of its comma-separated elements (HAProxy's `hdr(Name) value`,
/// which is what Docker Flow Proxy writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    name: HeaderName,
    value: Box<str>,
}

impl HeaderCondition {
    /// Reads one `Name:value` entry (split at the first `:`, both sides trimmed).
    pub fn parse(entry: &str) -> Result<Self, ConditionError> {
        let bad = || ConditionError::BadHeader(entry.to_owned());
        let (name, value) = entry.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        if value.is_empty()
            || value.len() > MAX_LEN
            || value.contains(',')
            || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(bad());
        }
        Ok(HeaderCondition { name, value: value.into() })
    }

    /// The field name, lowercase.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    fn matches(&self, fields: &dyn RequestFields) -> bool {
        let want = self.value.as_bytes();
        fields.any_value(self.name.as_str(), &mut |value| {
            value.split(|b| *b == b',').any(|element| element.trim_ascii() == want)
        })
    }
}

impl fmt::Display for HeaderCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.value)
    }
}

/// `serviceHeader` and `userAgent`: what a request's fields must show for a route to take it.
/// Empty: no condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteConditions {
    /// Every one must match (Docker Flow Proxy ANDs its `hdr` ACLs). Sorted, no duplicates.
    pub headers: Vec<HeaderCondition>,
    /// Lowercase; one must be a substring of `User-Agent`, ignoring ASCII case (HAProxy's
    /// `hdr_sub(User-Agent) -i a b`). Sorted, no duplicates.
    pub user_agents: Vec<Box<str>>,
}

impl RouteConditions {
    /// Reads `serviceHeader` (comma-separated `Name:value`) and `userAgent` (comma-separated
    /// substrings); empty entries are skipped.
    pub fn parse(
        service_header: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<Self, ConditionError> {
        let entries = |raw: Option<&str>| {
            raw.unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let mut headers = entries(service_header)
            .iter()
            .map(|e| HeaderCondition::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        headers.sort_by(|a, b| (a.name(), a.value()).cmp(&(b.name(), b.value())));
        headers.dedup();
        let mut user_agents = Vec::new();
        for entry in entries(user_agent) {
            if entry.len() > MAX_LEN || !entry.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(ConditionError::BadUserAgent(entry));
            }
            user_agents.push(entry.to_ascii_lowercase().into_boxed_str());
        }
        user_agents.sort();
        user_agents.dedup();
        Ok(RouteConditions { headers, user_agents })
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.user_agents.is_empty()
    }

    /// How many separate conditions a request must meet (a `userAgent` list counts once).
    pub(crate) fn weight(&self) -> usize {
        self.headers.len() + usize::from(!self.user_agents.is_empty())
    }

    /// Whether the request's fields meet every condition.
    pub fn matches(&self, fields: &dyn RequestFields) -> bool {
        self.headers.iter().all(|h| h.matches(fields))
            && (self.user_agents.is_empty()
                || fields.any_value("user-agent", &mut |value| {
                    self.user_agents.iter().any(|needle| contains_ignore_case(value, needle))
                }))
    }
}

impl fmt::Display for RouteConditions {
    /// `serviceHeader=a:1,b:2 userAgent=x,y`, or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.headers.is_empty() {
            f.write_str("serviceHeader=")?;
            for (i, h) in self.headers.iter().enumerate() {
                write!(f, "{}{h}", if i == 0 { "" } else { "," })?;
            }
            sep = " ";
        }
        if !self.user_agents.is_empty() {
            write!(f, "{sep}userAgent={}", self.user_agents.join(","))?;
        }
        Ok(())
    }
}

/// Whether `needle` (lowercase) occurs in `haystack`, ignoring ASCII case. No allocation.
fn contains_ignore_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty()
        || haystack.windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle))
}

/// A request's fields as a lookup reads them: the engine's own field list, borrowed.
pub trait RequestFields {
    /// Whether some field named `name` (given lowercase; compared ignoring case) has a value
    /// for which `test` holds.
    fn any_value(&self, name: &str, test: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

/// No fields: what [`RouteTable::lookup_host`](crate::RouteTable::lookup_host) looks up with.
/// Routes with `serviceHeader` or `userAgent` never match it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFields;

impl RequestFields for NoFields {
    fn any_value(&self, _: &str, _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        false
    }
}

/// Fields as `(name, value)` pairs, e.g. a test's literal list.
impl RequestFields for &[(&str, &str)] {
    fn any_value(&self, name: &str, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && test(v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_types_match_as_haproxy_does() {
        #[rustfmt::skip]
        let cases: &[(PathType, &str, &str, bool)] = &[
            (PathType::Beg, "/api", "/api", true),
            (PathType::Beg, "/api", "/apix", true),
            (PathType::Beg, "/api", "/api/v1", true),
            (PathType::Beg, "/api", "/ap", false),
            (PathType::Beg, "/api/", "/api", false),
            (PathType::Exact, "/api", "/api", true),
            (PathType::Exact, "/api", "/api/", false),
            (PathType::Exact, "/api", "/api/x", false),
            (PathType::End, ".png", "/img/a.png", true),
            (PathType::End, ".png", "/img/a.png/x", false),
            (PathType::Regex, "^/api/v[0-9]+/books$", "/api/v12/books", true),
            (PathType::Regex, "^/api/v[0-9]+/books$", "/api/vx/books", false),
            (PathType::Regex, "books", "/api/v1/books/7", true),
        ];
        for (kind, text, path, want) in cases {
            let pattern = PathPattern::parse(*kind, text).expect("valid pattern");
            assert_eq!(pattern.matches(path), *want, "{kind} {text} on {path}");
        }
    }

    #[test]
    fn anchors_own_every_path_the_pattern_can_match() {
        let cases: &[(PathType, &str, &str)] = &[
            (PathType::Beg, "/api", "/"),
            (PathType::Beg, "/api/v", "/api"),
            (PathType::Beg, "/api/", "/api"),
            (PathType::Exact, "/api/", "/api"),
            (PathType::Exact, "/api/v1", "/api/v1"),
            (PathType::End, ".png", "/"),
            (PathType::Regex, "^/api", "/"),
        ];
        for (kind, text, anchor) in cases {
            let pattern = PathPattern::parse(*kind, text).expect("valid pattern");
            assert_eq!(pattern.anchor().as_str(), *anchor, "{kind} {text}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        let cases: &[(PathType, &str)] = &[
            (PathType::Beg, "api"),
            (PathType::Beg, ""),
            (PathType::Exact, "/a//b"),
            (PathType::Exact, "/a b"),
            (PathType::End, "a?b"),
            (PathType::End, "a b"),
            (PathType::Regex, "(unclosed"),
            (PathType::Regex, "a{1000}{1000}"),
        ];
        for (kind, text) in cases {
            assert!(PathPattern::parse(*kind, text).is_err(), "{kind} {text:?} accepted");
        }
        assert!(PathPattern::parse(PathType::Beg, &format!("/{}", "a".repeat(MAX_LEN))).is_err());
        assert!(matches!(PathType::parse("path_sub"), Err(ConditionError::UnknownPathType(_))));
    }

    #[test]
    fn headers_all_match_user_agents_any_matches() {
        let c = RouteConditions::parse(Some("X-Version:3, X-Env : prod"), Some("iPhone,Android"))
            .expect("valid");
        assert_eq!(c.to_string(), "serviceHeader=x-env:prod,x-version:3 userAgent=android,iphone");
        let both: &[(&str, &str)] =
            &[("x-version", "3"), ("X-ENV", "dev, prod"), ("user-agent", "Mozilla (IPHONE)")];
        assert!(c.matches(&both));
        let wrong_value: &[(&str, &str)] =
            &[("x-version", "30"), ("x-env", "prod"), ("user-agent", "iphone")];
        assert!(!c.matches(&wrong_value));
        let no_agent: &[(&str, &str)] = &[("x-version", "3"), ("x-env", "prod")];
        assert!(!c.matches(&no_agent));
        assert!(!c.matches(&NoFields));
        assert!(RouteConditions::parse(None, None).expect("empty").matches(&NoFields));
    }

    #[test]
    fn bad_conditions_are_refused() {
        for header in ["X-Version", "X Version:3", ":3", "X-Version:", "X:\u{7f}"] {
            assert!(RouteConditions::parse(Some(header), None).is_err(), "{header:?} accepted");
        }
        assert!(RouteConditions::parse(None, Some("caf\u{e9}")).is_err());
    }
}
