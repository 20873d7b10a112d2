//! Generated-input tests of the code that reads what a client or an instance sends: many
//! inputs per run, each checked against a plain reference written in the test or against
//! properties the module promises. How to run them and how to add a target: FUZZING.md.
//!
//! Each target is a submodule; what they share is here and in [`harness`] (the case count).

mod chunked;
mod client_hello;
pub(crate) mod harness;
mod head;
mod host;
mod path;
mod proxy_header;

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Bytes that delimit HTTP/1.1 messages, to turn up far more often than at random.
const FRAMING: &[u8] = b"\r\n\r\n;: \t0019aAfF/%.=\"";

/// Any byte, one of [`FRAMING`] half of the time.
pub(crate) fn framing_byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), prop::sample::select(FRAMING)]
}

/// Where to cut an input: up to 16 cut points, as fractions of its length (so the same
/// value shrinks well whatever the input's length).
pub(crate) fn cuts() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0..=1.0f64, 0..16)
}

/// `input` cut at `fractions` of its length, in order; empty pieces included.
pub(crate) fn pieces<'a>(input: &'a [u8], fractions: &[f64]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> =
        fractions.iter().map(|f| ((f * input.len() as f64) as usize).min(input.len())).collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        pieces.push(&input[start..cut]);
        start = cut;
    }
    pieces.push(&input[start..]);
    pieces
}

/// Runs a streaming reader over `input` whole, one byte at a time, and cut at `fractions`,
/// checks that the three agree and returns their answer.
pub(crate) fn same_however_split<T: PartialEq + Debug>(
    input: &[u8],
    fractions: &[f64],
    run: impl Fn(&[&[u8]]) -> T,
) -> Result<T, TestCaseError> {
    let whole = run(&[input]);
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    prop_assert_eq!(&run(&bytewise), &whole, "byte by byte, input {}", show(input));
    let cut = pieces(input, fractions);
    prop_assert_eq!(&run(&cut), &whole, "cut at {:?}, input {}", fractions, show(input));
    Ok(whole)
}

/// `len` bytes drawn from `seed` by a small xorshift generator, a quarter of them from
/// [`FRAMING`]: cheap filler for large generated inputs (drawing each byte through proptest
/// would cost more than the check), still shrinkable through `seed` and `len`.
pub(crate) fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pick = (state >> 8) as usize;
            if state.is_multiple_of(4) {
                FRAMING[pick % FRAMING.len()]
            } else {
                pick as u8
            }
        })
        .collect()
}

/// An input as a failure message shows it: escaped, and cut short when long.
pub(crate) fn show(input: &[u8]) -> String {
    const SHOWN: usize = 160;
    let escaped = input.iter().take(SHOWN).flat_map(|b| std::ascii::escape_default(*b));
    let mut text: String = escaped.map(char::from).collect();
    if input.len() > SHOWN {
        text.push_str(&format!("... ({} bytes)", input.len()));
    }
    format!("\"{text}\"")
}
