//! What every generated-input target shares: how many cases to run, read from one environment
//! variable, and the proptest configuration built from it. See FUZZING.md.
//!
//! Kept free of anything but `std` and `proptest` because `dfp-admin` compiles this same file
//! into its own tests (`#[path]`), so both crates read the variable the same way.

use proptest::test_runner::Config;

/// The environment variable that sets the number of cases of every property.
pub(crate) const CASES_VAR: &str = "DFP_FUZZ_CASES";

/// Cases per property when [`CASES_VAR`] is unset: each property stays within a few seconds
/// in a debug `cargo test` on a 2-core machine.
pub(crate) const DEFAULT_CASES: u32 = 2_000;

/// The number of cases each property runs: [`CASES_VAR`], else [`DEFAULT_CASES`].
///
/// # Panics
///
/// When the variable is set but is not a positive whole number (a typo must not quietly
/// shrink a long run to the default).
pub(crate) fn cases() -> u32 {
    let value = std::env::var_os(CASES_VAR).map(|v| v.to_string_lossy().into_owned());
    parse_cases(value.as_deref()).unwrap_or_else(|| {
        panic!("{CASES_VAR}={value:?}: give a positive number of cases, e.g. 1000000")
    })
}

/// Reads a case count: `None` (unset) is the default; `_` may group digits (`1_000_000`).
fn parse_cases(value: Option<&str>) -> Option<u32> {
    match value {
        None => Some(DEFAULT_CASES),
        Some(value) => value.trim().replace('_', "").parse::<u32>().ok().filter(|&n| n > 0),
    }
}

/// The proptest configuration of every property: [`cases`] cases, everything else as
/// proptest reads it from its own `PROPTEST_*` variables (e.g. `PROPTEST_RNG_SEED` to replay
/// a run), with shrinking bounded so that a failure in a long run still reports in minutes.
pub(crate) fn config() -> Config {
    Config { cases: cases(), max_shrink_time: 120_000, ..Config::default() }
}

#[test]
fn fuzz_harness_reads_the_case_count() {
    assert_eq!(parse_cases(None), Some(DEFAULT_CASES));
    assert_eq!(parse_cases(Some("1000000")), Some(1_000_000));
    assert_eq!(parse_cases(Some(" 1_000_000 ")), Some(1_000_000));
    for bad in ["", "0", "-1", "1e6", "many", "99999999999"] {
        assert_eq!(parse_cases(Some(bad)), None, "{bad:?}");
    }
}
