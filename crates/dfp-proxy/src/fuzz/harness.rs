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
    match std::env::var(CASES_VAR) {
        Err(std::env::VarError::NotPresent) => DEFAULT_CASES,
        Ok(value) => match value.trim().replace('_', "").parse::<u32>() {
            Ok(cases) if cases > 0 => cases,
            _ => panic!("{CASES_VAR}={value:?}: give a positive number of cases, e.g. 1000000"),
        },
        Err(err) => panic!("{CASES_VAR} is not readable: {err}"),
    }
}

/// The proptest configuration of every property: [`cases`] cases, everything else as
/// proptest reads it from its own `PROPTEST_*` variables (e.g. `PROPTEST_RNG_SEED` to replay
/// a run), with shrinking bounded so that a failure in a long run still reports in minutes.
pub(crate) fn config() -> Config {
    Config { cases: cases(), max_shrink_time: 120_000, ..Config::default() }
}
