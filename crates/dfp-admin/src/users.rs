//! Basic-auth users that do not travel in a reconfigure call: the proxy's global users
//! (Docker Flow Proxy's `USERS`, or a users file) and the Docker secrets a service names with
//! `usersSecret` (`<secrets dir>/dfp_users_<name>`).
//!
//! Why here and not in the parameters: a reconfigure is stored and replayed (KV, the state
//! file, other replicas), and it must carry no password it was not sent. A secret is stored
//! by its name and read again wherever the call is replayed; the global users are the
//! proxy's own. Both are resolved into the service's policy once, when the call is applied,
//! as a shared list: a request only borrows it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfp_routing::{Authentication, Credential, PolicyError, UsersFrom};

use crate::discovery::Strictness;
use crate::{AdminError, ReconfigureRequest};

/// Where Docker mounts secrets, and so where `usersSecret` files are read by default.
pub const DEFAULT_SECRETS_DIR: &str = "/run/secrets";

/// A users file or secret that cannot be used. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the users in {path} are not valid: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: PolicyError,
    },
}

/// Reads a users file (Docker Flow Proxy's `users` format: `name:password` entries separated
/// by commas or newlines). An empty file is an error: a file meant to protect services must
/// not silently open them.
pub fn read_users_file(path: &Path, hashed: bool) -> Result<Vec<Credential>, UsersError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| UsersError::Read { path: path.to_owned(), source })?;
    Credential::parse_list(&text, hashed)
        .map_err(|source| UsersError::Invalid { path: path.to_owned(), source })
}

/// The users configured for the whole proxy, and where services' secrets are read.
#[derive(Debug, Clone)]
pub struct UsersConfig {
    /// Applied to every service without users of its own and without
    /// `ignoreAuthorization=true`. Empty: none.
    pub global: Arc<[Credential]>,
    /// Where `usersSecret=<name>` is read, as `dfp_users_<name>`.
    pub secrets_dir: PathBuf,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig { global: Arc::from(Vec::new()), secrets_dir: DEFAULT_SECRETS_DIR.into() }
    }
}

impl UsersConfig {
    /// The file of `usersSecret=<name>`.
    pub fn secret_path(&self, name: &str) -> PathBuf {
        self.secrets_dir.join(format!("dfp_users_{name}"))
    }

    /// Gives `request`'s policy its effective users: its own `users` or `ignoreAuthorization`
    /// as parsed, else its `usersSecret` read now, else the global users.
    ///
    /// A secret that cannot be read or holds no valid users: for a call (`Interactive`) a 400
    /// naming the file; when restoring, the service keeps asking for credentials but no one
    /// has them (every request 401, rather than a protected service served open), and the
    /// warning returned says why.
    pub(crate) fn resolve(
        &self,
        request: &mut ReconfigureRequest,
        strictness: Strictness,
    ) -> Result<Option<String>, AdminError> {
        match &request.policy.auth {
            Authentication::Ignored | Authentication::Users { .. } => return Ok(None),
            Authentication::Open => {}
        }
        let Some(name) = &request.users_secret else {
            if !self.global.is_empty() {
                request.policy.auth =
                    Authentication::Users { users: self.global.clone(), from: UsersFrom::Global };
            }
            return Ok(None);
        };
        let from = UsersFrom::Secret(name.as_str().into());
        match read_users_file(&self.secret_path(name), request.users_pass_encrypted) {
            Ok(users) => {
                request.policy.auth = Authentication::Users { users: users.into(), from };
                Ok(None)
            }
            Err(err) => match strictness {
                Strictness::Interactive => Err(AdminError::InvalidParameter {
                    name: "usersSecret",
                    value: name.clone(),
                    reason: format!(
                        "{err}; create the Docker secret dfp_users_{name} with user:password \
                         entries (or point --secrets-dir at its directory)"
                    ),
                }),
                Strictness::Restore => {
                    request.policy.auth =
                        Authentication::Users { users: Arc::from(Vec::new()), from };
                    Ok(Some(format!(
                        "{err}; the service answers 401 to every request until the secret is \
                         back and the service is reconfigured"
                    )))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> ReconfigureRequest {
        let mut pairs = vec![("serviceName", "books"), ("servicePath", "/b")];
        pairs.extend_from_slice(extra);
        ReconfigureRequest::from_pairs(pairs).expect("valid")
    }

    #[test]
    fn own_users_then_secret_then_global() {
        let dir = std::env::temp_dir().join(format!("dfp-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("dfp_users_ops"), "ops:1\nadmin:2\n").expect("secret");
        std::fs::write(dir.join("dfp_users_empty"), "\n").expect("secret");
        let config = UsersConfig {
            global: vec![Credential::new("g", "pw", false).expect("user")].into(),
            secrets_dir: dir.clone(),
        };
        let resolved = |extra: &[(&str, &str)], strictness| {
            let mut r = request(extra);
            config.resolve(&mut r, strictness).map(|warning| (r.policy.auth, warning))
        };
        let names = |auth: &Authentication| {
            auth.users().iter().map(|c| c.user().to_owned()).collect::<Vec<_>>().join(",")
        };

        let (auth, _) = resolved(&[], Strictness::Interactive).expect("global");
        assert_eq!((auth.from(), names(&auth).as_str()), (Some(&UsersFrom::Global), "g"));
        let (auth, _) = resolved(&[("users", "own:1")], Strictness::Interactive).expect("own");
        assert_eq!(names(&auth), "own", "a service's own users replace the global ones");
        let (auth, _) =
            resolved(&[("ignoreAuthorization", "true")], Strictness::Interactive).expect("open");
        assert!(!auth.required());
        let (auth, _) = resolved(&[("usersSecret", "ops")], Strictness::Interactive).expect("ok");
        assert_eq!(auth.from(), Some(&UsersFrom::Secret("ops".into())));
        assert_eq!(names(&auth), "ops,admin");

        for missing in ["gone", "empty"] {
            let err = resolved(&[("usersSecret", missing)], Strictness::Interactive)
                .expect_err("a call with a missing secret is refused");
            assert_eq!(err.status(), 400);
            let path = dir.join(format!("dfp_users_{missing}"));
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            let (auth, warning) = resolved(&[("usersSecret", missing)], Strictness::Restore)
                .expect("restored, closed");
            assert!(auth.required() && auth.users().is_empty(), "nobody gets in");
            assert!(warning.is_some_and(|w| w.contains("401")));
        }

        let open = UsersConfig { secrets_dir: dir.clone(), ..UsersConfig::default() };
        let mut r = request(&[]);
        open.resolve(&mut r, Strictness::Interactive).expect("no users anywhere");
        assert!(!r.policy.auth.required());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
