//! Where standalone mode keeps its routes when `--state-file` is not given, and making sure
//! that file's directory exists before the proxy serves.
//!
//! Why not the current folder (the old default): a proxy started from a source checkout, as in
//! the README's quick start, left its state in the repository, and the same proxy started from
//! another folder silently forgot its routes. The XDG base directory specification names a
//! place for exactly this kind of data (it outlives restarts, it is not configuration and not
//! worth backing up): `$XDG_STATE_HOME`, by default `~/.local/state`. The container image sets
//! `DFP_STATE_FILE=/var/lib/docker-flow-proxy/state.json` instead (see the Dockerfile).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The state file's path below the state directory.
const BELOW_STATE_DIR: &str = "docker-flow-proxy/state.json";

/// The default state file, from the values of `XDG_STATE_HOME` and `HOME`:
/// `$XDG_STATE_HOME/docker-flow-proxy/state.json`, else
/// `$HOME/.local/state/docker-flow-proxy/state.json`; `None` when neither gives a place.
///
/// As the XDG specification says, a relative `XDG_STATE_HOME` is ignored (it would depend on
/// the current folder again), and so is an empty one; a relative `HOME` likewise.
pub(crate) fn default_path(
    xdg_state_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Option<PathBuf> {
    fn absolute(value: Option<&OsStr>) -> Option<&Path> {
        value.map(Path::new).filter(|path| path.is_absolute())
    }
    if let Some(state_home) = absolute(xdg_state_home) {
        return Some(state_home.join(BELOW_STATE_DIR));
    }
    absolute(home).map(|home| home.join(".local/state").join(BELOW_STATE_DIR))
}

/// The state file to use: `--state-file` when given, else [`default_path`] from the process's
/// environment. Its directory is created when missing (with its parents), so a first start
/// works; a directory that cannot be created stops the start, saying which and what to do.
pub(crate) fn resolve(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => {
            let xdg = std::env::var_os("XDG_STATE_HOME");
            let home = std::env::var_os("HOME");
            match default_path(xdg.as_deref(), home.as_deref()) {
                Some(path) => path,
                None => bail!(
                    "no place for the standalone state file: neither XDG_STATE_HOME nor HOME is \
                     an absolute path; pass --state-file (DFP_STATE_FILE) with the file to use"
                ),
            }
        }
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}, the directory of the state file {} (--state-file, \
                 DFP_STATE_FILE): create it, or pass a path in a writable directory",
                dir.display(),
                path.display()
            )
        })?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row: `XDG_STATE_HOME`, `HOME`, the default state file.
    #[test]
    fn default_path_follows_xdg_then_home() {
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (Some("/xdg"), Some("/home/u"), Some("/xdg/docker-flow-proxy/state.json")),
            (Some("/xdg/"), None, Some("/xdg/docker-flow-proxy/state.json")),
            (None, Some("/home/u"), Some("/home/u/.local/state/docker-flow-proxy/state.json")),
            (Some(""), Some("/home/u"), Some("/home/u/.local/state/docker-flow-proxy/state.json")),
            // Relative values would make the place depend on the current folder again.
            (Some("xdg"), Some("/root"), Some("/root/.local/state/docker-flow-proxy/state.json")),
            (Some("xdg"), Some("home"), None),
            (None, Some(""), None),
            (None, None, None),
        ];
        for &(xdg, home, expected) in cases {
            let got = default_path(xdg.map(OsStr::new), home.map(OsStr::new));
            assert_eq!(
                got.as_deref(),
                expected.map(Path::new),
                "XDG_STATE_HOME={xdg:?} HOME={home:?}"
            );
        }
    }

    #[test]
    fn resolve_creates_the_directory_of_a_given_file() {
        let base = std::env::temp_dir().join(format!("dfp-state-file-test-{}", std::process::id()));
        let file = base.join("a/b/state.json");
        let resolved = resolve(Some(&file)).expect("a directory under the temp dir can be made");
        assert_eq!(resolved, file);
        assert!(base.join("a/b").is_dir());
        assert!(!file.exists(), "only the directory is made; the store writes the file");
        std::fs::remove_dir_all(&base).expect("the test's directory is removable");
    }

    #[test]
    fn resolve_says_which_directory_it_cannot_create() {
        let base =
            std::env::temp_dir().join(format!("dfp-state-file-block-{}", std::process::id()));
        std::fs::write(&base, b"a file where a directory would go").expect("temp dir writable");
        let err = resolve(Some(&base.join("sub/state.json"))).expect_err("a file blocks the dir");
        let message = format!("{err:#}");
        assert!(message.contains(&base.join("sub").display().to_string()), "{message}");
        assert!(message.contains("--state-file"), "{message}");
        std::fs::remove_file(&base).expect("the test's file is removable");
    }
}
