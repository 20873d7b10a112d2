//! Certificates that get themselves: ACME (RFC 8555) with the HTTP-01 or the TLS-ALPN-01
//! challenge, for the `serviceDomain` names of services routed with `letsEncrypt=true`.
//!
//! Why here, and how it fits: certificates are already kept in the store and followed by
//! every replica ([`CertAdmin`]), so an obtained certificate is just an upload made by the
//! proxy itself (`acme-<name>`), served by every replica hitlessly. What ACME adds:
//!
//! - **One replica at a time talks to the CA for a name**: it takes the lock
//!   `<instance-name>/acme/locks/<name>` with a Consul session ([`shared`]); the others see it
//!   held and wait for the certificate to reach them through the store. A replica that dies
//!   holding the lock loses it with its session.
//! - **Any replica answers the challenge**: the lock holder publishes each challenge's answer
//!   at once and in Consul KV, which every replica follows. HTTP-01: the data plane answers
//!   `/.well-known/acme-challenge/<token>` from the live table before any route (so
//!   `httpsOnly` services are certified too). TLS-ALPN-01: the TLS listener answers a
//!   handshake offering `acme-tls/1` with the challenge certificate, then closes.
//! - **Renewal** when two thirds of the certificate's lifetime have passed; a failure leaves
//!   the certificate served as it is and is retried after a wait that doubles each time
//!   (from `--acme-retry-after`, at most a day), and the proxy never places more than
//!   [`MAX_ORDERS`] orders in [`ORDER_WINDOW`] (under Let's Encrypt's 300 new orders per
//!   account per three hours).
//! - **One account**: its key is kept in the store (KV, or a private file beside the state
//!   file), so a new replica or a restart does not open another account.
//!
//! Nothing here logs or shows a key: the account is stored, never printed; `certs` and the
//! dashboard show names, dates and results.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfp_consul::ConsulError;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use sha2::Digest as _;

use crate::certs::CertAdmin;
use crate::controller::Controller;
use crate::mirror::{Backend, Mirrored, StoreMirror};
use crate::store::RouteStore;
use crate::FollowConfig;

mod challenge;
mod http;
mod shared;
mod status;

use crate::unix_now;
pub use challenge::ChallengeKind;
use challenge::{alpn_certificate, HTTP_01, TLS_ALPN_01};
use http::AcmeHttp;
use shared::Shared;
use status::NameState;
pub(crate) use status::{AcmeStatus, AcmeView};

/// Obtained certificates are stored as `acme-<name>`.
pub(crate) const CERT_PREFIX: &str = "acme-";

/// Let's Encrypt's production directory (the default).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory (`--acme-staging`): untrusted certificates, generous
/// limits, for trying a setup out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// At most this many orders in [`ORDER_WINDOW`], whatever fails.
const MAX_ORDERS: usize = 250;
const ORDER_WINDOW: Duration = Duration::from_secs(3 * 3600);

/// The longest wait between attempts for a name that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// The lock taken to open the account: a leading `-` is no label of a DNS name, so no name's
/// lock can be it.
const ACCOUNT_LOCK: &str = "-account";

/// How many seconds a replica waits for another one to open the account.
const ACCOUNT_WAIT_STEPS: u32 = 30;

/// How long the CA may take to validate, or to issue, before the attempt counts as failed.
const CA_PATIENCE: Duration = Duration::from_secs(90);

/// How long after a change of the table the names are compared again: a burst of changes
/// costs one comparison.
const CHANGE_SETTLE: Duration = Duration::from_millis(200);

/// How ACME is set up (the binary's `--acme-*` flags).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// The account's contact address (`mailto:` is added).
    pub email: Option<String>,
    /// PEM roots to trust for the CA's own HTTPS besides the system's (a private or test CA).
    pub ca_cert: Option<PathBuf>,
    /// Certify every service's `serviceDomain`, not only those of `letsEncrypt=true` services.
    pub all_domains: bool,
    /// How often the wanted names are compared with the certificates served.
    pub check_every: Duration,
    /// The first wait after a failed attempt for a name (doubled after each further one).
    pub retry_after: Duration,
    /// How long a published challenge is given to reach every replica before the CA is told
    /// to check it.
    pub propagation: Duration,
    /// Which challenge proves the names.
    pub challenge: ChallengeKind,
}

/// Why ACME could not do something.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME is misconfigured: {0}")]
    Config(String),
    #[error("the ACME store: {0}")]
    Store(String),
    #[error("the ACME CA: {0}")]
    Ca(String),
    #[error("serving the certificate failed: {0}")]
    Serve(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(err: instant_acme::Error) -> Self {
        AcmeError::Ca(err.to_string())
    }
}

/// The ACME manager: start it once routes and certificates are restored.
#[derive(Debug, Clone)]
pub struct AcmeManager {
    inner: Arc<Manager>,
}

#[derive(Debug)]
struct Manager {
    config: AcmeConfig,
    controller: Controller,
    certs: CertAdmin,
    shared: Shared,
    http: AcmeHttp,
    /// The account, once loaded or made.
    account: AccountSlot,
    /// Names the account in the store: a hash of the directory URL (an account belongs to
    /// one CA).
    account_id: String,
    /// Who this replica is, in the locks it holds.
    holder: String,
    status: AcmeStatus,
    /// The challenges this replica publishes, and those followed from the store.
    challenges: Mutex<ChallengeSets>,
    /// `<instance-name>/acme/challenges/` in Consul KV (nothing standalone).
    challenge_mirror: StoreMirror,
    /// When the orders of the last [`ORDER_WINDOW`] were placed.
    orders: Mutex<VecDeque<Instant>>,
}

/// The account once loaded; its `Debug` shows nothing of it (it holds the account's key).
struct AccountSlot(tokio::sync::Mutex<Option<Account>>);

impl std::fmt::Debug for AccountSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountSlot")
    }
}

/// Challenge key -> answer (a TLS-ALPN-01 answer holds a throwaway private key: the `Debug`
/// shows the keys only).
#[derive(Default)]
struct ChallengeSets {
    local: BTreeMap<String, String>,
    followed: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChallengeSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeSets")
            .field("local", &self.local.keys().collect::<Vec<_>>())
            .field("followed", &self.followed.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AcmeManager {
    /// A manager for the services `controller` routes, storing what it obtains through
    /// `certs` where `store` keeps routes. `instance_name` and the replica's `holder`
    /// description go in the locks it takes.
    pub fn new(
        config: AcmeConfig,
        controller: Controller,
        certs: CertAdmin,
        store: &RouteStore,
        follow: &FollowConfig,
        holder: String,
    ) -> Result<AcmeManager, AcmeError> {
        let http = AcmeHttp::new(config.ca_cert.as_deref())?;
        let shared = Shared::new(store);
        let backend = match shared.challenge_prefix() {
            Some((consul, prefix)) => Backend::ConsulKv { consul, prefix },
            None => Backend::Memory,
        };
        let digest = sha2::Sha256::digest(config.directory.as_bytes());
        let account_id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let status = AcmeStatus::new(&config.directory, config.challenge);
        certs.set_acme(status.clone());
        Ok(AcmeManager {
            inner: Arc::new(Manager {
                challenge_mirror: StoreMirror::new(backend, "ACME challenge", follow.consul_wait),
                config,
                controller,
                certs,
                shared,
                http,
                account: AccountSlot(tokio::sync::Mutex::new(None)),
                account_id,
                holder,
                status,
                challenges: Mutex::new(ChallengeSets::default()),
                orders: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// Follows the shared challenges (with Consul) and starts checking the wanted names.
    pub fn start(&self) {
        StoreMirror::follow(&self.inner, 0);
        tokio::spawn(run(self.inner.clone()));
    }

    /// Ends this replica's Consul session: the locks it holds are free at once.
    pub async fn stop(&self) {
        self.inner.shared.close().await;
    }
}

/// Checks at start, after every change of the table (a route asking for a certificate is
/// served one at once), and every `check_every` (renewals, retries after a failure).
async fn run(manager: Arc<Manager>) {
    let changed = manager.controller.table_changed();
    loop {
        manager.check().await;
        tokio::select! {
            () = tokio::time::sleep(manager.config.check_every) => {}
            () = changed.notified() => {
                // A burst of changes (a cluster reconfiguring every service) makes one check.
                tokio::time::sleep(CHANGE_SETTLE).await;
            }
        }
    }
}

impl Manager {
    /// Compares the wanted names with the certificates served, and obtains what is missing
    /// or due for renewal, one name after the other.
    async fn check(&self) {
        let wanted = self.controller.acme_names(self.config.all_domains).await;
        let now = unix_now();
        let mut due = Vec::new();
        {
            let mut status = self.status.lock();
            for (name, service, why) in &wanted.skipped {
                if !status.skipped.iter().any(|(n, s, _)| n == name && s == service) {
                    tracing::warn!(
                        name,
                        service,
                        why,
                        "no certificate can be obtained for this name; skipped"
                    );
                }
            }
            status.skipped = wanted.skipped.clone();
            status.names.retain(|name, _| wanted.names.contains_key(name));
            for (name, service) in &wanted.names {
                let entry = status.names.entry(name.clone()).or_default();
                entry.service = service.clone();
                let validity = self.certs.served_validity(&cert_name(name));
                entry.not_after = validity.map(|(_, not_after)| not_after);
                entry.renew_after = validity.map(renew_after);
                let needed = entry.renew_after.is_none_or(|at| now >= at);
                if !needed {
                    entry.state = "valid";
                    entry.failures = 0;
                    entry.next_attempt = None;
                    entry.holder = None;
                } else if entry.next_attempt.is_none_or(|at| now >= at) {
                    due.push(name.clone());
                }
            }
        }
        for name in due {
            self.attempt(&name).await;
        }
    }

    /// One attempt at a certificate for `name`, its outcome noted in the status.
    async fn attempt(&self, name: &str) {
        if !self.order_allowed() {
            self.note(name, |entry| {
                entry.state = "waiting";
                entry.last_result = Some(format!(
                    "held back: {MAX_ORDERS} orders were placed in the last {} hours",
                    ORDER_WINDOW.as_secs() / 3600
                ));
            });
            return;
        }
        self.note(name, |entry| {
            entry.state = "obtaining";
            entry.last_attempt = Some(unix_now());
        });
        let outcome = self.obtain(name).await;
        let now = unix_now();
        match outcome {
            Ok(Obtained::Stored(validity)) => {
                tracing::info!(name, not_after = %dfp_tls::rfc3339(validity.1), "ACME certificate obtained and served");
                self.note(name, |entry| {
                    entry.state = "valid";
                    entry.not_after = Some(validity.1);
                    entry.renew_after = Some(renew_after(validity));
                    entry.failures = 0;
                    entry.next_attempt = None;
                    entry.holder = None;
                    entry.renewals += 1;
                    entry.last_result = Some("obtained".to_owned());
                });
            }
            Ok(Obtained::AlreadyThere(validity)) => self.note(name, |entry| {
                entry.state = "valid";
                entry.not_after = Some(validity.1);
                entry.renew_after = Some(renew_after(validity));
                entry.holder = None;
                entry.last_result = Some("obtained by another replica".to_owned());
            }),
            Ok(Obtained::Busy(holder)) => self.note(name, |entry| {
                entry.state = "waiting";
                entry.holder = holder;
                entry.last_result = Some(
                    "another replica is obtaining it; it arrives through the store".to_owned(),
                );
            }),
            Err(err) => {
                let failures = self.note(name, |entry| {
                    entry.failures += 1;
                    entry.failures
                });
                let wait = backoff(self.config.retry_after, failures);
                tracing::warn!(name, error = %err, retry_in_s = wait.as_secs(), "obtaining an ACME certificate failed; the certificate served (if any) stays");
                self.note(name, |entry| {
                    entry.state = "failed";
                    entry.holder = None;
                    entry.next_attempt =
                        Some(now + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2));
                    entry.last_result = Some(err.to_string());
                });
            }
        }
    }

    /// Takes the name's lock and, unless the certificate arrived meanwhile, orders it.
    async fn obtain(&self, name: &str) -> Result<Obtained, AcmeError> {
        let Some(held) = self.shared.lock(name, &self.holder).await? else {
            return Ok(Obtained::Busy(self.shared.holder(name).await));
        };
        let result = async {
            // Another replica may have stored it just before this one took the lock.
            if let Some(validity) = self.shared.stored_cert_validity(&cert_name(name)).await {
                if unix_now() < renew_after(validity) {
                    return Ok(Obtained::AlreadyThere(validity));
                }
            }
            let account = self.account().await?;
            self.note_order();
            let pem = self.order(&account, name).await?;
            let cert = dfp_tls::Certificate::from_pem(&cert_name(name), pem.as_bytes()).map_err(
                |err| AcmeError::Ca(format!("the CA's certificate is not usable: {err}")),
            )?;
            let validity = (cert.not_before(), cert.not_after());
            self.certs
                .store_obtained(&cert_name(name), pem.into_bytes())
                .await
                .map_err(|err| AcmeError::Serve(err.to_string()))?;
            Ok(Obtained::Stored(validity))
        }
        .await;
        self.shared.release(held).await;
        result
    }

    /// One order for `name`: its challenge answered (HTTP-01 or TLS-ALPN-01, as configured),
    /// the key made here, the chain fetched. Returns the chain followed by the key (PEM), as an upload is.
    async fn order(&self, account: &Account, name: &str) -> Result<String, AcmeError> {
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut keys = Vec::new();
        let validated = async {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization?;
                match authorization.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Ca(format!(
                            "the authorization for {name} is {other:?}"
                        )))
                    }
                }
                let kind = self.config.challenge;
                let mut challenge = authorization.challenge(kind.acme_type()).ok_or_else(|| {
                    AcmeError::Ca(format!("the CA offers no {} challenge for {name}", kind.name()))
                })?;
                // What the proxy answers with: the key authorization at the token's path
                // (HTTP-01), or a certificate for the name carrying its digest (TLS-ALPN-01).
                let (key, value) = match kind {
                    ChallengeKind::Http01 => (
                        format!("{HTTP_01}{}", challenge.token),
                        challenge.key_authorization().as_str().to_owned(),
                    ),
                    ChallengeKind::TlsAlpn01 => (
                        format!("{TLS_ALPN_01}{name}"),
                        alpn_certificate(name, challenge.key_authorization().digest().as_ref())?,
                    ),
                };
                keys.push(key.clone());
                self.publish_challenge(&key, &value).await?;
                tokio::time::sleep(self.config.propagation).await;
                challenge.set_ready().await?;
            }
            Ok(())
        }
        .await;
        let issued = async {
            validated?;
            let patience = RetryPolicy::new().timeout(CA_PATIENCE);
            match order.poll_ready(&patience).await? {
                OrderStatus::Ready => {}
                other => {
                    let why = order
                        .state()
                        .error
                        .as_ref()
                        .map_or_else(|| format!("the order is {other:?}"), |p| p.to_string());
                    return Err(AcmeError::Ca(format!("{name} was not validated: {why}")));
                }
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&patience).await?;
            Ok(format!("{}\n{key}", chain.trim_end()))
        }
        .await;
        for key in &keys {
            self.withdraw_challenge(key).await;
        }
        issued
    }

    /// The account: cached, else from the store, else made (under the `account` lock, so
    /// replicas starting together make one).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.0.lock().await;
        if let Some(account) = &*cached {
            return Ok(account.clone());
        }
        // Replicas starting together: one opens the account under the lock, the others wait
        // for it to appear in the store (an order waits a few seconds, rather than failing
        // and backing off for minutes).
        for _ in 0..ACCOUNT_WAIT_STEPS {
            if let Some(account) = self.load_account().await? {
                *cached = Some(account.clone());
                return Ok(account);
            }
            let Some(held) = self.shared.lock(ACCOUNT_LOCK, &self.holder).await? else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let made = async {
                match self.load_account().await? {
                    Some(account) => Ok(account),
                    None => self.new_account().await,
                }
            }
            .await;
            self.shared.release(held).await;
            let account = made?;
            *cached = Some(account.clone());
            return Ok(account);
        }
        Err(AcmeError::Store(format!(
            "another replica held the lock on opening the ACME account for {ACCOUNT_WAIT_STEPS} \
             s and stored none; trying again later"
        )))
    }

    async fn load_account(&self) -> Result<Option<Account>, AcmeError> {
        let Some(stored) = self.shared.account(&self.account_id).await? else { return Ok(None) };
        let credentials: AccountCredentials = serde_json::from_slice(&stored).map_err(|err| {
            AcmeError::Store(format!("the stored ACME account cannot be read: {err}"))
        })?;
        let account = Account::builder_with_http(Box::new(self.http.clone()))
            .from_credentials(credentials)
            .await?;
        Ok(Some(account))
    }

    async fn new_account(&self) -> Result<Account, AcmeError> {
        let contact = self.config.email.as_ref().map(|email| format!("mailto:{email}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(self.http.clone()))
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let stored = serde_json::to_vec(&credentials)
            .map_err(|err| AcmeError::Store(format!("the ACME account cannot be stored: {err}")))?;
        self.shared.store_account(&self.account_id, stored).await?;
        tracing::info!(directory = %self.config.directory, account = %account.id(), "ACME account opened");
        Ok(account)
    }

    /// Answers the challenge `key` (`http-01.<token>` or `tls-alpn-01.<name>`) here at once
    /// and shares it with every replica.
    async fn publish_challenge(&self, key: &str, value: &str) -> Result<(), AcmeError> {
        self.challenge_sets(|sets| {
            sets.local.insert(key.to_owned(), value.to_owned());
        });
        self.publish_challenges().await;
        self.shared.put_challenge(key, value).await
    }

    async fn withdraw_challenge(&self, key: &str) {
        self.challenge_sets(|sets| {
            sets.local.remove(key);
        });
        self.publish_challenges().await;
        self.shared.delete_challenge(key).await;
    }

    fn challenge_sets<T>(&self, change: impl FnOnce(&mut ChallengeSets) -> T) -> T {
        let mut sets = self.challenges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut sets)
    }

    /// Answers this replica's challenges and the followed ones: HTTP-01 from the table,
    /// TLS-ALPN-01 from the TLS listener's certificates.
    async fn publish_challenges(&self) {
        let (all, alpn) = self.challenge_sets(|sets| {
            let both = || sets.followed.iter().chain(&sets.local);
            let http: HashMap<Box<str>, Arc<str>> = both()
                .filter_map(|(key, answer)| {
                    let token = key.strip_prefix(HTTP_01)?;
                    Some((Box::from(token), Arc::from(answer.as_str())))
                })
                .collect();
            let alpn: HashMap<String, Arc<rustls::sign::CertifiedKey>> = both()
                .filter_map(|(key, pem)| {
                    let name = key.strip_prefix(TLS_ALPN_01)?;
                    match dfp_tls::challenge_key(pem.as_bytes()) {
                        Ok(key) => Some((name.to_owned(), key)),
                        Err(err) => {
                            tracing::warn!(name, error = %err, "a shared TLS-ALPN-01 challenge certificate cannot be served");
                            None
                        }
                    }
                })
                .collect();
            (http, alpn)
        });
        if !alpn.is_empty() || self.certs.tls_challenge_count() > 0 {
            self.certs.publish_tls_challenges(alpn);
        }
        let live = self.controller.table().load();
        let same = all.len() == live.acme_challenge_count()
            && all.iter().all(|(token, answer)| live.acme_challenge(token) == Some(answer));
        drop(live);
        if !same {
            self.controller.set_acme_challenges(all).await;
        }
    }

    /// Whether another order fits in the window (and forgets orders older than it).
    fn order_allowed(&self) -> bool {
        let mut orders = self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while orders.front().is_some_and(|at| at.elapsed() > ORDER_WINDOW) {
            orders.pop_front();
        }
        orders.len() < MAX_ORDERS
    }

    fn note_order(&self) {
        let mut orders = self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        orders.push_back(Instant::now());
    }

    fn note<T>(&self, name: &str, change: impl FnOnce(&mut NameState) -> T) -> T {
        let mut status = self.status.lock();
        change(status.names.entry(name.to_owned()).or_default())
    }
}

/// What an attempt came to.
enum Obtained {
    /// Ordered, stored and served; its notBefore and notAfter.
    Stored((i64, i64)),
    /// Another replica stored it before this one took the lock (its validity).
    AlreadyThere((i64, i64)),
    /// Another replica holds the lock (it says who, when it could be read).
    Busy(Option<String>),
}

/// The shared challenges, as followed: what whichever replica is obtaining a certificate
/// stored (`http-01.<token>` -> key authorization, `tls-alpn-01.<name>` -> certificate PEM).
impl Mirrored for Manager {
    fn mirror(&self) -> &StoreMirror {
        &self.challenge_mirror
    }

    async fn apply(self: Arc<Self>, stored: BTreeMap<String, Vec<u8>>, _mark: u64) -> bool {
        let followed = stored
            .into_iter()
            .filter_map(|(key, value)| Some((key, String::from_utf8(value).ok()?)))
            .collect();
        self.challenge_sets(|sets| sets.followed = followed);
        self.publish_challenges().await;
        false
    }

    fn answered(&self, outcome: Result<(), &ConsulError>) {
        if let Err(err) = outcome {
            tracing::debug!(error = %err, "following ACME challenges in Consul KV failed; retrying");
        }
    }
}

/// The certificate name an obtained certificate for `name` is stored and served as.
pub(crate) fn cert_name(name: &str) -> String {
    format!("{CERT_PREFIX}{name}")
}

/// When a certificate valid from `not_before` to `not_after` is renewed: two thirds through.
fn renew_after((not_before, not_after): (i64, i64)) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

/// The wait after the `failures`-th failure in a row: `first`, doubled each time, at most a
/// day.
fn backoff(first: Duration, failures: u32) -> Duration {
    first.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests;
