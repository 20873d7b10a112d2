//! `path::normalize` against RFC 3986 §5.2.4 `remove_dot_segments`, written out step by step
//! as the RFC gives it, after the module's own documented rules:
//!
//! - only a path starting with `/` is normalised; anything else is left as it is;
//! - a segment made only of dots, each written `.`, `%2e` or `%2E`, is a dot segment when it
//!   has one or two of them (`%2e%2E` is `..`); no other escape is decoded;
//! - empty segments are merged (`//` is `/`);
//! - a `..` with nothing left to remove (above the root) refuses the whole path.

use proptest::prelude::*;

use super::harness;
use crate::path::{normalize, EscapesRoot};

/// The path that would be routed: the normalised one, or the input when it was normal.
fn routed(path: &str) -> Result<String, EscapesRoot> {
    normalize(path).map(|normal| normal.unwrap_or_else(|| path.to_owned()))
}

/// The reference: the module's rules, then RFC 3986 §5.2.4.
fn reference(path: &str) -> Result<String, EscapesRoot> {
    if !path.starts_with('/') {
        return Ok(path.to_owned());
    }
    // Encoded dots in dot segments become plain dots; then empty segments are merged.
    let mut joined = path
        .split('/')
        .map(|segment| match decode_dots(segment).as_deref() {
            Some(".") => ".",
            Some("..") => "..",
            _ => segment,
        })
        .collect::<Vec<_>>()
        .join("/");
    while joined.contains("//") {
        joined = joined.replace("//", "/");
    }
    remove_dot_segments(&joined)
}

/// The segment with each `%2e`/`%2E` read as `.`, if it is nothing but dots.
fn decode_dots(segment: &str) -> Option<String> {
    let mut rest = segment;
    let mut dots = String::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            rest = after;
        } else if let Some(after) = rest.strip_prefix("%2e").or_else(|| rest.strip_prefix("%2E")) {
            rest = after;
        } else {
            return None;
        }
        dots.push('.');
    }
    Some(dots)
}

/// RFC 3986 §5.2.4, with an input and an output buffer, rule by rule.
fn remove_dot_segments(path: &str) -> Result<String, EscapesRoot> {
    let mut input = path.to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if input.starts_with("../") {
            // A
            input.replace_range(..3, "");
        } else if input.starts_with("./") {
            input.replace_range(..2, "");
        } else if input.starts_with("/./") {
            // B
            input.replace_range(..3, "/");
        } else if input == "/." {
            input.replace_range(.., "/");
        } else if input.starts_with("/../") {
            // C
            input.replace_range(..4, "/");
            remove_last_segment(&mut output)?;
        } else if input == "/.." {
            input.replace_range(.., "/");
            remove_last_segment(&mut output)?;
        } else if input == "." || input == ".." {
            // D
            input.clear();
        } else {
            // E: the first segment, with its leading `/` if any, up to the next `/`.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| start + i);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    Ok(output)
}

/// "Removing the last segment and its preceding `/` (if any) from the output buffer"; the
/// module refuses where there is no segment left to remove.
fn remove_last_segment(output: &mut String) -> Result<(), EscapesRoot> {
    if output.is_empty() {
        return Err(EscapesRoot);
    }
    let cut = output.rfind('/').unwrap_or(0);
    output.truncate(cut);
    Ok(())
}

/// Whether a normalised path still has something to normalise.
fn has_dot_or_empty_segment(path: &str) -> bool {
    path.contains("//")
        || path.split('/').skip(1).any(|s| matches!(decode_dots(s).as_deref(), Some("." | "..")))
}

/// Paths built from the pieces that make normalisation hard.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "/", "/", "/", ".", "..", "...", "%2e", "%2E", "%2e%2E", ".%2e", "%2", "%", "%2F",
            "%2f", "%25", "%2e.", "e", "2", "a", "b", "/..", "/.", "//",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z0-9]{1,4}",
        1 => "\\PC{1,2}",
    ];
    let rooted =
        prop::collection::vec(piece.clone(), 0..32).prop_map(|p| format!("/{}", p.concat()));
    let any_start = prop::collection::vec(piece, 0..32).prop_map(|p| p.concat());
    prop_oneof![8 => rooted, 1 => any_start]
}

/// Any string at all, mostly short.
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,64}",
        2 => "/[./%2eE]{0,64}",
        1 => any::<String>(),
        1 => "/(\\PC{0,16}/){0,128}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![3 => tricky_path(), 1 => any_path()]
}

proptest! {
    #![proptest_config(harness::config())]

    /// The normaliser's answer is the reference's, refusals included.
    #[test]
    fn fuzz_path_matches_rfc3986_remove_dot_segments(path in path()) {
        prop_assert_eq!(routed(&path), reference(&path), "path {:?}", path);
    }

    /// What comes out starts with `/`, has no dot segment (plain or encoded) and no `//`, and
    /// normalising it again changes nothing.
    #[test]
    fn fuzz_path_output_is_normal_and_stable(path in path()) {
        if let (true, Ok(normal)) = (path.starts_with('/'), routed(&path)) {
            prop_assert!(normal.starts_with('/'), "{:?} -> {:?}", path, normal);
            prop_assert!(!has_dot_or_empty_segment(&normal), "{:?} -> {:?}", path, normal);
            prop_assert_eq!(routed(&normal), Ok(normal.clone()), "again, from {:?}", path);
        }
    }

    /// Any string whatever, never a panic; a path that is not touched comes back as `None`.
    #[test]
    fn fuzz_path_any_string_is_safe(path in any::<String>()) {
        if let Ok(Some(normal)) = normalize(&path) {
            prop_assert!(path.starts_with('/'), "{:?} -> {:?}", path, normal);
        }
    }
}
