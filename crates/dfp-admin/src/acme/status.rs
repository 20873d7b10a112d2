//! What `certs` and the dashboard show of ACME: the manager's view of its names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{cert_name, ChallengeKind};

/// The manager's view of its names, shared with [`CertAdmin`] for `certs`.
#[derive(Debug, Clone)]
pub(crate) struct AcmeStatus(Arc<Mutex<Names>>);

#[derive(Debug, Default)]
pub(super) struct Names {
    pub(super) directory: String,
    pub(super) challenge: &'static str,
    pub(super) names: BTreeMap<String, NameState>,
    pub(super) skipped: Vec<(String, String, &'static str)>,
}

#[derive(Debug, Default)]
pub(super) struct NameState {
    pub(super) service: String,
    /// `valid`, `obtaining`, `waiting` (another replica, or the order limit), `failed`.
    pub(super) state: &'static str,
    pub(super) not_after: Option<i64>,
    pub(super) renew_after: Option<i64>,
    pub(super) failures: u32,
    pub(super) next_attempt: Option<i64>,
    pub(super) last_attempt: Option<i64>,
    pub(super) last_result: Option<String>,
    pub(super) holder: Option<String>,
    /// Certificates this replica obtained for the name since it started.
    pub(super) renewals: u64,
}

/// ACME in `certs`: the CA, each name with its certificate's dates and the last result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AcmeView {
    directory: String,
    challenge: &'static str,
    names: Vec<NameView>,
    skipped: Vec<SkippedView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NameView {
    name: String,
    service: String,
    cert_name: String,
    state: &'static str,
    not_after: Option<String>,
    renew_after: Option<String>,
    last_attempt: Option<String>,
    last_result: Option<String>,
    next_attempt: Option<String>,
    /// The replica holding the name's lock, when it is another one.
    holder: Option<String>,
    obtained_here: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SkippedView {
    name: String,
    service: String,
    why: &'static str,
}

impl AcmeStatus {
    pub(super) fn new(directory: &str, challenge: ChallengeKind) -> AcmeStatus {
        AcmeStatus(Arc::new(Mutex::new(Names {
            directory: directory.to_owned(),
            challenge: challenge.name(),
            ..Names::default()
        })))
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Names> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn view(&self) -> AcmeView {
        let status = self.lock();
        let time = |t: Option<i64>| t.map(dfp_tls::rfc3339);
        AcmeView {
            directory: status.directory.clone(),
            challenge: status.challenge,
            names: status
                .names
                .iter()
                .map(|(name, s)| NameView {
                    name: name.clone(),
                    service: s.service.clone(),
                    cert_name: cert_name(name),
                    state: if s.state.is_empty() { "pending" } else { s.state },
                    not_after: time(s.not_after),
                    renew_after: time(s.renew_after),
                    last_attempt: time(s.last_attempt),
                    last_result: s.last_result.clone(),
                    next_attempt: time(s.next_attempt),
                    holder: s.holder.clone(),
                    obtained_here: s.renewals,
                })
                .collect(),
            skipped: status
                .skipped
                .iter()
                .map(|(name, service, why)| SkippedView {
                    name: name.clone(),
                    service: service.clone(),
                    why,
                })
                .collect(),
        }
    }
}
