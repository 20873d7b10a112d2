//! Optional credentials for the admin API: HTTP basic auth, a bearer token, or both.
//!
//! Docker Flow Proxy had none and relied on network isolation; without credentials this
//! crate behaves the same. [`Credentials`] are the validated values (what a server requires
//! and what a client sends); [`AdminAuth`] is the server's check, which keeps only SHA-256
//! digests of them and compares digests in constant time, so neither the secret's length nor
//! where a guess goes wrong shows in the answer's timing.

use std::fmt;
use std::path::{Path, PathBuf};

use http::{header, HeaderMap, HeaderValue, Method};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::AdminError;

/// Validated admin credentials. The default has none: the admin API is open.
/// Not `PartialEq` on purpose: secrets are compared only by [`AdminAuth`], in constant time.
#[derive(Clone, Default)]
pub struct Credentials {
    basic: Option<(String, String)>,
    token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password or the token.
        f.debug_struct("Credentials")
            .field("user", &self.basic.as_ref().map(|(user, _)| user))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Credentials {
    /// Adds HTTP basic auth: `user` (non-empty, no `:`) and `password` (non-empty).
    pub fn with_basic(self, user: String, password: String) -> Result<Self, CredentialError> {
        if user.is_empty() {
            return Err(CredentialError::EmptyUser);
        }
        if user.contains(':') || user.chars().any(char::is_control) {
            return Err(CredentialError::BadUser(user));
        }
        if password.is_empty() {
            return Err(CredentialError::EmptyPassword);
        }
        Ok(Credentials { basic: Some((user, password)), ..self })
    }

    /// Adds a bearer token (non-empty, visible ASCII without spaces: it travels in a header).
    pub fn with_token(self, token: String) -> Result<Self, CredentialError> {
        if token.is_empty() {
            return Err(CredentialError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialError::BadToken);
        }
        Ok(Credentials { token: Some(token), ..self })
    }

    /// Whether no credential is set (the admin API is open).
    pub fn is_empty(&self) -> bool {
        self.basic.is_none() && self.token.is_none()
    }

    /// The basic-auth user and password, if set.
    pub fn basic(&self) -> Option<(&str, &str)> {
        self.basic.as_ref().map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// The bearer token, if set.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// Reads a secret from a file, as Docker secrets are mounted: the whole content, one trailing
/// newline (`\n` or `\r\n`) removed.
pub fn secret_from_file(path: &Path) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CredentialError::File { path: path.to_owned(), source })?;
    Ok(trim_trailing_newline(text))
}

fn trim_trailing_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// Admin credentials that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the admin user is empty; give a user name")]
    EmptyUser,
    #[error("the admin user {0:?} contains ':' or a control character, which basic auth cannot carry; choose another name")]
    BadUser(String),
    #[error("the admin password is empty; give a non-empty password")]
    EmptyPassword,
    #[error("the admin token is empty; give a non-empty token")]
    EmptyToken,
    #[error("the admin token has a space or a character outside visible ASCII; use e.g. `openssl rand -hex 32`")]
    BadToken,
    #[error("cannot read {}: {source}; check the path and that the proxy's user may read it", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The admin API's check of each call. Built from [`Credentials`]; [`AdminAuth::default`]
/// (no credentials) lets every call through, as Docker Flow Proxy did.
#[derive(Clone, Default)]
pub struct AdminAuth {
    /// SHA-256 of `user:password`.
    basic: Option<[u8; 32]>,
    /// SHA-256 of the token.
    token: Option<[u8; 32]>,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("basic", &self.basic.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// The check for `credentials`; it keeps their digests, never the secrets themselves.
    pub fn new(credentials: &Credentials) -> AdminAuth {
        AdminAuth {
            basic: credentials.basic().map(|(user, password)| {
                let mut digest = Sha256::new();
                digest.update(user.as_bytes());
                digest.update(b":");
                digest.update(password.as_bytes());
                digest.finalize().into()
            }),
            token: credentials.token().map(|token| Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// Whether every call is let through (no credential configured).
    pub fn is_open(&self) -> bool {
        self.basic.is_none() && self.token.is_none()
    }

    /// Lets a call through when no credential is configured, when it is one of the calls that
    /// stay open (`GET`/`HEAD` ping, `GET /metrics`), or when its
    /// `Authorization` header carries a configured credential. Else [`AdminError::Unauthorized`].
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), AdminError> {
        if self.is_open() || always_open(method, path) {
            return Ok(());
        }
        let Some(authorization) = headers.get(header::AUTHORIZATION) else {
            return Err(self.unauthorized("no credentials were sent"));
        };
        if self.accepts(authorization.as_bytes()) {
            Ok(())
        } else {
            Err(self.unauthorized("the credentials sent were refused"))
        }
    }

    fn accepts(&self, authorization: &[u8]) -> bool {
        use base64::Engine as _;
        let Ok(authorization) = std::str::from_utf8(authorization) else { return false };
        let Some((scheme, value)) = authorization.trim().split_once(' ') else { return false };
        let value = value.trim();
        let (expected, given) = if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value) else {
                return false;
            };
            (self.basic, decoded)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            (self.token, value.as_bytes().to_vec())
        } else {
            return false;
        };
        let Some(expected) = expected else { return false };
        let given: [u8; 32] = Sha256::digest(&given).into();
        bool::from(given.ct_eq(&expected))
    }

    fn unauthorized(&self, reason: &'static str) -> AdminError {
        let how = match (self.basic.is_some(), self.token.is_some()) {
            (true, true) => HOW_BOTH,
            (true, false) => HOW_BASIC,
            (false, _) => HOW_TOKEN,
        };
        AdminError::Unauthorized { reason, how }
    }

    /// The `WWW-Authenticate` challenges of a 401: `Basic` when a user is configured,
    /// `Bearer` when a token is.
    pub(crate) fn challenge(&self, headers: &mut HeaderMap) {
        if self.basic.is_some() {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="docker-flow-proxy admin""#),
            );
        }
        if self.token.is_some() {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="docker-flow-proxy admin""#),
            );
        }
    }
}

const HOW_BASIC: &str = "send HTTP basic auth with the admin user and password (the \
     docker-flow-proxy CLI: --admin-user and --admin-password or --admin-password-file, or \
     DFP_ADMIN_USER and DFP_ADMIN_PASSWORD or DFP_ADMIN_PASSWORD_FILE; curl: -u USER:PASSWORD)";
const HOW_TOKEN: &str = "send `Authorization: Bearer <token>` with the admin token (the \
     docker-flow-proxy CLI: --admin-token or --admin-token-file, or DFP_ADMIN_TOKEN or \
     DFP_ADMIN_TOKEN_FILE; curl: -H 'Authorization: Bearer TOKEN')";
const HOW_BOTH: &str = "send HTTP basic auth with the admin user and password (the \
     docker-flow-proxy CLI: --admin-user and --admin-password or --admin-password-file, or \
     DFP_ADMIN_USER and DFP_ADMIN_PASSWORD or DFP_ADMIN_PASSWORD_FILE; curl: -u USER:PASSWORD), \
     or `Authorization: Bearer <token>` with the admin token (--admin-token or \
     --admin-token-file, or DFP_ADMIN_TOKEN or DFP_ADMIN_TOKEN_FILE)";

/// The calls that need no credential: liveness and metrics, for health checks and scrapers.
fn always_open(method: &Method, path: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    let ping =
        path.strip_prefix(crate::api::PREFIX).map(|e| e.trim_end_matches('/')) == Some("ping");
    read && (ping || path == "/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn auth(user: Option<(&str, &str)>, token: Option<&str>) -> AdminAuth {
        let mut credentials = Credentials::default();
        if let Some((u, p)) = user {
            credentials = credentials.with_basic(u.into(), p.into()).expect("valid basic");
        }
        if let Some(t) = token {
            credentials = credentials.with_token(t.into()).expect("valid token");
        }
        AdminAuth::new(&credentials)
    }

    /// (method, path, Authorization header) -> let through?
    fn check(auth: &AdminAuth, cases: &[(Method, &str, Option<&str>, bool)]) {
        for (method, path, authorization, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("ascii"));
            }
            let result = auth.check(method, path, &headers);
            assert_eq!(result.is_ok(), *expected, "{auth:?} {method} {path} {authorization:?}");
            if let Err(err) = result {
                assert_eq!(err.status(), 401);
            }
        }
    }

    const CONFIG: &str = "/v1/docker-flow-proxy/config";
    const RECONFIGURE: &str = "/v1/docker-flow-proxy/reconfigure";

    #[test]
    fn without_credentials_everything_is_open() {
        check(
            &AdminAuth::default(),
            &[
                (Method::GET, CONFIG, None, true),
                (Method::PUT, RECONFIGURE, None, true),
                (Method::GET, CONFIG, Some("Bearer whatever"), true),
                (Method::GET, "/nowhere", None, true),
            ],
        );
    }

    #[test]
    fn basic_auth() {
        let right = basic("admin", "s3cret:with colon");
        let a = auth(Some(("admin", "s3cret:with colon")), None);
        check(
            &a,
            &[
                (Method::GET, CONFIG, None, false),
                (Method::GET, CONFIG, Some(&right), true),
                (Method::PUT, RECONFIGURE, Some(&right), true),
                (Method::GET, CONFIG, Some(&right.replacen("Basic", "basic", 1)), true),
                (Method::GET, CONFIG, Some(&basic("admin", "s3cret")), false),
                (Method::GET, CONFIG, Some(&basic("Admin", "s3cret:with colon")), false),
                (Method::GET, CONFIG, Some(&basic("admin", "")), false),
                (Method::GET, CONFIG, Some("Basic !!!not-base64"), false),
                (Method::GET, CONFIG, Some("Basic"), false),
                (Method::GET, CONFIG, Some("Bearer s3cret:with colon"), false),
                (Method::GET, "/nowhere", None, false),
            ],
        );
    }

    #[test]
    fn bearer_token() {
        let a = auth(None, Some("t0ken"));
        check(
            &a,
            &[
                (Method::GET, CONFIG, None, false),
                (Method::GET, CONFIG, Some("Bearer t0ken"), true),
                (Method::GET, CONFIG, Some("bearer  t0ken "), true),
                (Method::GET, CONFIG, Some("Bearer t0ke"), false),
                (Method::GET, CONFIG, Some("Bearer t0ken2"), false),
                (Method::GET, CONFIG, Some("Bearer "), false),
                (Method::GET, CONFIG, Some("t0ken"), false),
                (Method::GET, CONFIG, Some(&basic("t0ken", "t0ken")), false),
            ],
        );
    }

    #[test]
    fn both_accept_either() {
        let a = auth(Some(("admin", "pw")), Some("t0ken"));
        check(
            &a,
            &[
                (Method::GET, CONFIG, Some("Bearer t0ken"), true),
                (Method::GET, CONFIG, Some(&basic("admin", "pw")), true),
                (Method::GET, CONFIG, Some("Bearer pw"), false),
            ],
        );
    }

    #[test]
    fn ping_and_metrics_stay_open() {
        let a = auth(None, Some("t0ken"));
        check(
            &a,
            &[
                (Method::GET, "/v1/docker-flow-proxy/ping", None, true),
                (Method::HEAD, "/v1/docker-flow-proxy/ping", None, true),
                (Method::GET, "/v1/docker-flow-proxy/ping/", None, true),
                (Method::GET, "/metrics", None, true),
                (Method::PUT, "/v1/docker-flow-proxy/ping", None, false),
                (Method::DELETE, "/metrics", None, false),
                (Method::GET, "/v1/docker-flow-proxy/pings", None, false),
                (Method::GET, "/metrics/x", None, false),
            ],
        );
    }

    #[test]
    fn refusals_say_what_to_send() {
        let only_token = auth(None, Some("t"));
        let err = only_token.unauthorized("no credentials were sent").to_string();
        assert!(err.contains("--admin-token") && err.contains("DFP_ADMIN_TOKEN"), "{err}");
        assert!(!err.contains("--admin-user"), "{err}");
        let both = auth(Some(("u", "p")), Some("t")).unauthorized("x").to_string();
        assert!(both.contains("DFP_ADMIN_PASSWORD_FILE") && both.contains("Bearer"), "{both}");

        let mut headers = HeaderMap::new();
        auth(Some(("u", "p")), Some("t")).challenge(&mut headers);
        let challenges: Vec<_> = headers.get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0], r#"Basic realm="docker-flow-proxy admin""#);
        assert_eq!(challenges[1], r#"Bearer realm="docker-flow-proxy admin""#);
    }

    #[test]
    fn credentials_are_validated() {
        let none = Credentials::default;
        assert!(none().is_empty());
        assert!(matches!(
            none().with_basic(String::new(), "p".into()),
            Err(CredentialError::EmptyUser)
        ));
        assert!(matches!(
            none().with_basic("a:b".into(), "p".into()),
            Err(CredentialError::BadUser(_))
        ));
        assert!(matches!(
            none().with_basic("a".into(), String::new()),
            Err(CredentialError::EmptyPassword)
        ));
        assert!(matches!(none().with_token(String::new()), Err(CredentialError::EmptyToken)));
        assert!(matches!(none().with_token("a b".into()), Err(CredentialError::BadToken)));
        assert!(matches!(none().with_token("a\n".into()), Err(CredentialError::BadToken)));
        let both = none()
            .with_basic("u".into(), "p w".into())
            .and_then(|c| c.with_token("t".into()))
            .expect("valid");
        assert_eq!(both.basic(), Some(("u", "p w")));
        assert_eq!(both.token(), Some("t"));
        let debug = format!("{both:?}");
        assert!(!debug.contains("p w") && !debug.contains("\"t\""), "{debug}");
    }

    #[test]
    fn secret_files_lose_one_trailing_newline() {
        for (content, expected) in [
            ("s3cret", "s3cret"),
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" s3cret \n", " s3cret "),
            ("\n", ""),
        ] {
            assert_eq!(trim_trailing_newline(content.to_owned()), expected, "{content:?}");
        }
        let missing = secret_from_file(Path::new("/nonexistent/dfp-secret"));
        assert!(matches!(missing, Err(CredentialError::File { .. })));
    }
}
