//! Basic-auth users that do not travel in a reconfigure call: the proxy's global users
//! (Docker Flow Proxy's `USERS`, or a users file) and the Docker secrets a service names with
//! `usersSecret` (`<secrets dir>/dfp_users_<name>`).
//!
//! Why here and not in the parameters: a reconfigure is stored and replayed (KV, the state
//! file, other replicas), and it must carry no password it was not sent. A secret is stored
//! by its name and read again wherever the call is replayed; the global users are the
//! proxy's own. Both are resolved into the service's policy once, when the call is applied,
//! as a shared list: a request only borrows it. So are a `users` entry's bare names
//! (`users=alice,bob:pw`, as in Docker Flow Proxy): each takes the password of the same user
//! in the service's `usersSecret`, else in the global users, when the call is applied; the
//! call keeps the bare name, so a restart or another replica finds it again in its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfp_routing::{Authentication, Credential, PolicyError, UsersEntry, UsersFrom};

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
    /// as parsed (bare names in `users` completed by [`Self::resolve_bare`]), else its
    /// `usersSecret` read now, else the global users.
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
            Authentication::Users { .. } if !request.users_entries.is_empty() => {
                return self.resolve_bare(request, strictness);
            }
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
        match self.read_secret(name, request.users_pass_encrypted, strictness)? {
            Ok(users) => {
                request.policy.auth = Authentication::Users { users: users.into(), from };
                Ok(None)
            }
            Err(warning) => {
                request.policy.auth = Authentication::Users { users: Arc::from(Vec::new()), from };
                Ok(Some(format!(
                    "{warning}; the service answers 401 to every request until the secret is \
                     back and the service is reconfigured"
                )))
            }
        }
    }

    /// The users of `usersSecret=<name>`. A secret that cannot be used is a 400 naming the
    /// file for a call, and for a restore the warning (`Ok(Err(..))`) to log.
    fn read_secret(
        &self,
        name: &str,
        hashed: bool,
        strictness: Strictness,
    ) -> Result<Result<Vec<Credential>, String>, AdminError> {
        match read_users_file(&self.secret_path(name), hashed) {
            Ok(users) => Ok(Ok(users)),
            Err(err) => match strictness {
                Strictness::Interactive => Err(AdminError::InvalidParameter {
                    name: "usersSecret",
                    value: name.to_owned(),
                    reason: format!(
                        "{err}; create the Docker secret dfp_users_{name} with user:password \
                         entries (or point --secrets-dir at its directory)"
                    ),
                }),
                Strictness::Restore => Ok(Err(err.to_string())),
            },
        }
    }

    /// Completes a service's own `users` whose entries include bare names: each takes the
    /// credential of the same user in the service's `usersSecret` if it names one, else in
    /// the global users, hashed or plain as it is there. A bare name found in neither is a 400
    /// for a call, naming the entry by its position (its text may be a password cut at a
    /// comma) and where to define the user; when restoring, that entry lets nobody in (the
    /// others still do) and the warning returned says so.
    fn resolve_bare(
        &self,
        request: &mut ReconfigureRequest,
        strictness: Strictness,
    ) -> Result<Option<String>, AdminError> {
        let mut warnings = Vec::new();
        let (source, place): (Arc<[Credential]>, String) = match &request.users_secret {
            Some(name) => {
                let place = format!("in the Docker secret dfp_users_{name}");
                match self.read_secret(name, request.users_pass_encrypted, strictness)? {
                    Ok(users) => (users.into(), place),
                    Err(warning) => {
                        warnings.push(warning);
                        (Arc::from(Vec::new()), place)
                    }
                }
            }
            None => (
                self.global.clone(),
                "among the proxy's global users (--users, --users-file, DFP_USERS or USERS)"
                    .to_owned(),
            ),
        };
        let mut users = Vec::with_capacity(request.users_entries.len());
        let mut missing = Vec::new();
        for (index, entry) in request.users_entries.iter().enumerate() {
            match entry {
                UsersEntry::Given(credential) => users.push(credential.clone()),
                UsersEntry::Bare(user) => match source.iter().find(|c| c.user() == &**user) {
                    Some(credential) => users.push(credential.clone()),
                    None => missing.push((index + 1).to_string()),
                },
            }
        }
        if !missing.is_empty() {
            let what = match missing.len() {
                1 => format!(
                    "users entry {} has no password and no user of that name is {place}",
                    missing[0]
                ),
                _ => format!(
                    "users entries {} have no password and no users of those names are {place}",
                    missing.join(", ")
                ),
            };
            match strictness {
                Strictness::Interactive => {
                    return Err(AdminError::InvalidParameter {
                        name: "users",
                        value: "(hidden)".to_owned(),
                        reason: format!(
                            "{what}; define each such user there as name:password, or write \
                             its password in the entry (name:password)"
                        ),
                    });
                }
                Strictness::Restore => warnings.push(format!(
                    "{what}; nobody can sign in as those users until they are defined there and \
                     the service is reconfigured"
                )),
            }
        }
        request.policy.auth =
            Authentication::Users { users: users.into(), from: UsersFrom::Service };
        Ok((!warnings.is_empty()).then(|| warnings.join("; ")))
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

    fn basic(user: &str, password: &str) -> http::HeaderValue {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        http::HeaderValue::from_str(&format!("Basic {token}")).expect("valid")
    }

    /// `users=alice,bob:pw`: a bare name takes the credential of the same user in the
    /// `usersSecret` if given, else in the global users, hashed or plain as it is there; the
    /// stored call keeps the bare name; one found nowhere is a 400 naming its position (or,
    /// restored, lets nobody in under that name).
    #[test]
    fn bare_names_take_the_password_from_the_secret_else_the_global_users() {
        // `mkpasswd -m sha-512 -S saltsalt secret` (glibc crypt).
        let hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let dir = std::env::temp_dir().join(format!("dfp-bare-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("dfp_users_ops"), "alice:from-secret\n").expect("secret");
        let config = UsersConfig {
            global: vec![
                Credential::new("alice", "wonderland", false).expect("plain"),
                Credential::new("carol", hash, false).expect("hashed"),
            ]
            .into(),
            secrets_dir: dir.clone(),
        };
        let resolved = |extra: &[(&str, &str)], strictness| {
            let mut r = request(extra);
            config.resolve(&mut r, strictness).map(|warning| (r, warning))
        };

        let (r, warning) =
            resolved(&[("users", "alice, bob:builder ,carol")], Strictness::Interactive)
                .expect("alice and carol are global users");
        assert_eq!(warning, None);
        let names: Vec<&str> = r.policy.auth.users().iter().map(Credential::user).collect();
        assert_eq!(names, ["alice", "bob", "carol"], "in the order given");
        assert_eq!(r.policy.auth.from(), Some(&UsersFrom::Service));
        for (user, password, lets_in) in [
            ("alice", "wonderland", true),
            ("bob", "builder", true),
            ("carol", "secret", true),
            ("carol", hash, false),
            ("alice", "from-secret", false),
        ] {
            assert_eq!(r.policy.authorizes(Some(&basic(user, password))), lets_in, "{user}");
        }
        assert_eq!(r.params["users"], "alice, bob:builder ,carol", "stored as sent");

        // usersPassEncrypted is about the entries given here: alice keeps her plain password.
        let (r, _) = resolved(
            &[("users", &format!("alice,dave:{hash}")), ("usersPassEncrypted", "true")],
            Strictness::Interactive,
        )
        .expect("valid");
        assert!(r.policy.authorizes(Some(&basic("alice", "wonderland"))));
        assert!(r.policy.authorizes(Some(&basic("dave", "secret"))));

        // With usersSecret, the secret is where bare names are looked up (not the global users).
        let (r, _) =
            resolved(&[("users", "alice"), ("usersSecret", "ops")], Strictness::Interactive)
                .expect("alice is in the secret");
        assert!(r.policy.authorizes(Some(&basic("alice", "from-secret"))));
        assert!(!r.policy.authorizes(Some(&basic("alice", "wonderland"))));

        // Found nowhere: a 400 naming the entry by position, never its text.
        for (extra, place) in [
            (&[("users", "bob:builder,zed")][..], "global users"),
            (&[("users", "bob:builder,carol"), ("usersSecret", "ops")][..], "dfp_users_ops"),
        ] {
            let err = resolved(extra, Strictness::Interactive).expect_err("unknown bare name");
            assert_eq!(err.status(), 400);
            let message = err.to_string();
            assert!(message.contains("users entry 2 ") && message.contains(place), "{message}");
            assert!(!message.contains("zed") && !message.contains("builder"), "{message}");
            // Restored: the others still get in, the unknown name nobody.
            let (r, warning) = resolved(extra, Strictness::Restore).expect("restored");
            assert!(warning.is_some_and(|w| w.contains("users entry 2 ")));
            assert!(r.policy.authorizes(Some(&basic("bob", "builder"))));
            assert_eq!(r.policy.auth.users().len(), 1);
        }
        let err = resolved(&[("users", "x,y")], Strictness::Interactive).expect_err("unknown");
        assert!(err.to_string().contains("users entries 1, 2 "), "{err}");

        // A secret that cannot be read is the secret's 400, as without bare names.
        let err = resolved(&[("users", "alice"), ("usersSecret", "gone")], Strictness::Interactive)
            .expect_err("no secret");
        assert!(err.to_string().contains("dfp_users_gone"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
