//! What the ACME manager asks of the controller: which names to certify (from the services'
//! `letsEncrypt` and `serviceDomain`), and answering the CA's HTTP-01 challenges from the
//! live table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dfp_routing::{Domain, TableEditor};

use super::Controller;

/// The names the routed services ask certificates for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WantedNames {
    /// Name -> the service that asks for it (the first by name, when several do).
    pub(crate) names: BTreeMap<String, String>,
    /// Names that cannot be certified here: (name, service, why).
    pub(crate) skipped: Vec<(String, String, &'static str)>,
}

impl Controller {
    /// Every `serviceDomain` of the services with `letsEncrypt=true` (every service's, with
    /// `all`), over all their destinations. Wildcards and IP addresses are skipped (a
    /// wildcard needs DNS-01; public CAs do not certify IP addresses through HTTP-01 here).
    pub(crate) async fn acme_names(&self, all: bool) -> WantedNames {
        let state = self.inner.state.lock().await;
        let mut wanted = WantedNames::default();
        for entry in state.services.values() {
            let request = &*entry.request;
            for destination in std::iter::once(request).chain(&request.more_destinations) {
                if !(destination.lets_encrypt || all) || destination.tcp_port.is_some() {
                    continue;
                }
                for domain in &destination.domains {
                    let service = request.service_name.clone();
                    match domain {
                        Domain::Wildcard(parent) => wanted.skipped.push((
                            format!("*.{parent}"),
                            service,
                            "a wildcard name needs the DNS-01 challenge, which this proxy does not do",
                        )),
                        Domain::Exact(name) if name.parse::<std::net::IpAddr>().is_ok() => {
                            wanted.skipped.push((
                                name.to_string(),
                                service,
                                "an IP address, not a name",
                            ));
                        }
                        Domain::Exact(name) => {
                            wanted.names.entry(name.to_string()).or_insert(service);
                        }
                    }
                }
            }
        }
        wanted.skipped.sort();
        wanted.skipped.dedup();
        wanted
    }

    /// Notified at every table published (one waiter: the ACME manager).
    pub(crate) fn table_changed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inner.table_changed.clone()
    }

    /// Answers the HTTP-01 challenges `challenges` (token -> key authorization) from now on,
    /// in place of the ones answered before: one table swap.
    pub(crate) async fn set_acme_challenges(&self, challenges: HashMap<Box<str>, Arc<str>>) {
        let _state = self.inner.state.lock().await;
        let live = self.inner.table.snapshot();
        let count = challenges.len();
        let mut editor = TableEditor::new(&live);
        editor.set_acme_challenges(challenges);
        self.inner.publish(
            editor.finish(live.version() + 1),
            format!("ACME challenges: {count} answered"),
        );
    }
}
