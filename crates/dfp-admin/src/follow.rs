//! Background followers: the routed services' instances (Consul, or DNS re-resolution
//! standalone) and the route store itself (Consul KV, so replicas converge).
//!
//! With Consul, one watch covers every routed service ([`follow_registry`]): two blocking
//! queries, on the catalog's services (registrations) and on every health check's state,
//! tell when something changed; the nodes' listings (after a registration change) and the
//! checks' states (after a check change) tell which services it concerns, and only those are
//! read again: a change costs a few requests, not one per routed service.
//! So a proxy holds two long-polling connections to its agent however many services it
//! routes (one per service would meet Consul's limit of connections per client, 200 by
//! default, and cost memory per service), in the manner of fabio and Traefik.
//!
//! Every follower holds only a weak reference to the controller, so none outlives it; a
//! standalone service's DNS follower is aborted when its service is removed or replaced.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::future::Future;

use dfp_consul::{ConsulClient, ConsulError, Indexed};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

use crate::controller::Inner;
use crate::discovery::{dns_refresh, resolve_instances, Discovery};
use crate::ReconfigureRequest;

/// A running follower task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Follower(AbortHandle);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts following a standalone service's name in DNS. With Consul there is nothing to
/// start per service: [`follow_registry`] covers every routed service.
pub(crate) fn follow_service(
    inner: Weak<Inner>,
    discovery: &Discovery,
    request: &ReconfigureRequest,
    generation: u64,
) -> Option<Follower> {
    match discovery {
        Discovery::Consul(_) => None,
        Discovery::Dns => {
            let port = request.port?;
            let service = request.service_name.clone();
            let task = tokio::spawn(follow_dns(inner, service, port, generation));
            Some(Follower(task.abort_handle()))
        }
    }
}

/// Consul's blocking-query loop, shared by every follower (Consul's documented pattern: pass
/// the last `X-Consul-Index`, start over when it goes backwards, never block on 0, back off
/// with jitter on errors and then ask without blocking, so a recovered agent is seen at once).
///
/// Holds the owner only weakly: while a query waits nothing keeps the owner alive, and the
/// loop ends once the owner is gone. Each round `prepare` reads from the owner what the query
/// needs (the wait) and any context `apply` wants from before the query; `apply` gets each
/// changed answer and returns whether to read again at once; `report` hears every answer or
/// failure.
pub(crate) async fn blocking_query_loop<O, T, C, Q, QF, A, AF>(
    owner: Weak<O>,
    mut index: u64,
    prepare: impl Fn(&O) -> (Duration, C),
    mut query: Q,
    mut apply: A,
    report: impl Fn(&O, Result<(), &ConsulError>),
) where
    Q: FnMut(u64, Duration) -> QF,
    QF: Future<Output = Result<Indexed<T>, ConsulError>>,
    A: FnMut(Arc<O>, T, C) -> AF,
    AF: Future<Output = bool>,
{
    let mut backoff = Backoff::default();
    loop {
        let Some((wait, context)) = owner.upgrade().map(|o| prepare(&o)) else { return };
        let result = query(index, wait).await;
        let Some(strong) = owner.upgrade() else { return };
        match result {
            Ok(answer) => {
                report(&strong, Ok(()));
                backoff.reset();
                match next_index(index, answer.index) {
                    Next::Reset => index = 0,
                    Next::Unchanged => {}
                    Next::Changed(new) => {
                        index = new;
                        if apply(strong, answer.value, context).await {
                            index = 0;
                        }
                    }
                }
            }
            Err(err) => {
                report(&strong, Err(&err));
                drop(strong);
                tokio::time::sleep(backoff.next_delay()).await;
                index = 0;
            }
        }
    }
}

/// Services to read again, gathered by the watches for the refresher.
#[derive(Debug, Default)]
struct Wanted {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    all: bool,
    services: BTreeSet<String>,
}

impl Wanted {
    fn all(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.all = true;
        }
        self.wake.notify_one();
    }

    fn some(&self, services: impl IntoIterator<Item = String>) {
        let mut any = false;
        if let Ok(mut pending) = self.pending.lock() {
            for service in services {
                pending.services.insert(service);
                any = true;
            }
        }
        if any {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Pending {
        self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }
}

/// Consul mode: follows every routed service's instances with one watch (see the module doc).
pub(crate) async fn follow_registry(inner: Weak<Inner>, consul: Arc<ConsulClient>) {
    let wanted = Arc::new(Wanted::default());
    // Each service's registrations as last read (a hash of its instances' nodes, IDs and
    // modify indexes): `None` until a first read, or after a failed one.
    let registered: Arc<Mutex<Option<HashMap<String, u64>>>> = Arc::default();
    let catalog = blocking_query_loop(
        inner.clone(),
        0,
        |i: &Inner| (i.follow_config().consul_wait, ()),
        |index, wait| {
            let consul = consul.clone();
            async move { consul.watch_catalog(index, wait).await }
        },
        |strong, (), ()| {
            // The catalog's index says something was registered, deregistered or moved, not
            // what: the nodes' listings say which services (one request per node), and only
            // those are read again. Without a listing to compare with, all of them are.
            let (consul, wanted, registered) = (consul.clone(), wanted.clone(), registered.clone());
            async move {
                let read = consul.registrations().await;
                report_registry(&strong, read.as_ref().map(drop));
                let now = read.ok().map(|r| registration_fingerprints(&r));
                let before = match registered.lock() {
                    Ok(mut kept) => std::mem::replace(&mut *kept, now.clone()),
                    Err(_) => None,
                };
                match (before, now) {
                    (Some(before), Some(now)) => wanted.some(changed_services(&before, &now)),
                    _ => wanted.all(),
                }
                false
            }
        },
        report_registry,
    );
    let mut fingerprints: Option<HashMap<String, u64>> = None;
    let checks = blocking_query_loop(
        inner.clone(),
        0,
        |i: &Inner| (i.follow_config().consul_wait, ()),
        |index, wait| {
            let consul = consul.clone();
            async move { consul.watch_checks(index, wait).await }
        },
        |_, checks: Vec<dfp_consul::CheckState>, ()| {
            let now = check_fingerprints(&checks);
            match fingerprints.as_ref() {
                // A node's own checks count for every service on it: read them all again.
                Some(before) if before.get("") == now.get("") => {
                    wanted.some(changed_services(before, &now));
                }
                _ => wanted.all(),
            }
            fingerprints = Some(now);
            std::future::ready(false)
        },
        report_registry,
    );
    let refresher = refresh_instances(inner, consul.clone(), wanted.clone());
    tokio::join!(catalog, checks, refresher);
}

/// For each service name, a hash of its registered instances (node, ID, modify index).
fn registration_fingerprints(registrations: &[dfp_consul::Registration]) -> HashMap<String, u64> {
    let mut prints: HashMap<String, std::hash::DefaultHasher> = HashMap::new();
    // Sorted by the client: the same registrations always hash alike.
    for r in registrations {
        (&r.node, &r.id, r.modify_index).hash(prints.entry(r.service.clone()).or_default());
    }
    prints.into_iter().map(|(service, hasher)| (service, hasher.finish())).collect()
}

/// For each service name (empty: the nodes' own checks), a hash of its checks' states.
fn check_fingerprints(checks: &[dfp_consul::CheckState]) -> HashMap<String, u64> {
    let mut sorted: Vec<&dfp_consul::CheckState> = checks.iter().collect();
    sorted.sort_unstable();
    let mut prints: HashMap<String, std::hash::DefaultHasher> = HashMap::new();
    for check in sorted {
        let hasher = prints.entry(check.service.clone()).or_default();
        (&check.node, &check.check_id, &check.status).hash(hasher);
    }
    prints.into_iter().map(|(service, hasher)| (service, hasher.finish())).collect()
}

fn changed_services(before: &HashMap<String, u64>, now: &HashMap<String, u64>) -> Vec<String> {
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(s, print)| before.get(*s) != Some(print))
        .map(|(s, _)| s.clone())
        .collect();
    changed.extend(before.keys().filter(|s| !now.contains_key(*s)).cloned());
    changed
}

/// Reads the wanted services' passing instances again (a few at a time) and hands them to
/// the controller, which publishes the changes in one table.
async fn refresh_instances(inner: Weak<Inner>, consul: Arc<ConsulClient>, wanted: Arc<Wanted>) {
    /// Reads in flight at once.
    const CONCURRENCY: usize = 16;
    /// Changes arriving together are read together.
    const GATHER: Duration = Duration::from_millis(10);
    let mut backoff = Backoff::default();
    loop {
        wanted.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        let pending = wanted.take();
        let Some(strong) = inner.upgrade() else { return };
        let only = if pending.all { None } else { Some(&pending.services) };
        let targets = strong.routed_services(only).await;
        drop(strong);
        let mut reads = JoinSet::new();
        let mut targets = targets.into_iter();
        let mut failed: Vec<String> = Vec::new();
        loop {
            while reads.len() < CONCURRENCY {
                let Some((service, lookup, generation)) = targets.next() else { break };
                let consul = consul.clone();
                reads.spawn(async move {
                    let read = consul.watch_passing_instances(&lookup, 0, Duration::ZERO).await;
                    (service, lookup, generation, read)
                });
            }
            let Some(done) = reads.join_next().await else { break };
            let Ok((service, lookup, generation, read)) = done else { continue };
            let Some(strong) = inner.upgrade() else { return };
            match read {
                Ok(answer) => {
                    report_registry(&strong, Ok(()));
                    let found = resolve_instances(&answer.value).await;
                    strong.update_instances(&service, generation, found.instances).await;
                }
                Err(err) => {
                    report_registry(&strong, Err(&err));
                    // Wanted by the name its checks are reported under.
                    failed.push(lookup);
                }
            }
        }
        if failed.is_empty() {
            backoff.reset();
        } else {
            // Consul failed meanwhile: read those again after a pause.
            tokio::time::sleep(backoff.next_delay()).await;
            wanted.some(failed);
        }
    }
}

/// Standalone: resolve the service's name again every `dns_refresh`.
async fn follow_dns(inner: Weak<Inner>, service: String, port: u16, generation: u64) {
    loop {
        let Some(every) = inner.upgrade().map(|i| i.follow_config().dns_refresh) else {
            return;
        };
        tokio::time::sleep(every).await;
        let addrs = dns_refresh(&service, port).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match addrs {
            Some(addrs) => strong.update_instances(&service, generation, addrs).await,
            None => tracing::debug!(%service, "DNS refresh failed; keeping the last addresses"),
        }
    }
}

/// Followers of Consul tell the controller whether Consul answered.
fn report_registry(inner: &Inner, outcome: Result<(), &ConsulError>) {
    inner.registry_answered(outcome.map_err(ToString::to_string));
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The index went backwards (Consul restarted, or a snapshot was restored): read afresh.
    Reset,
    /// The wait ran out with nothing new.
    Unchanged,
    /// Something changed; block on this index next.
    Changed(u64),
}

pub(crate) fn next_index(previous: u64, answered: u64) -> Next {
    if answered < previous {
        Next::Reset
    } else if answered == previous && previous != 0 {
        Next::Unchanged
    } else {
        // Never block on 0: Consul treats it as "answer at once", which would spin.
        Next::Changed(answered.max(1))
    }
}

/// Exponential backoff from 100 ms to 5 s, each delay jittered by ±50% so that many
/// followers do not retry in step.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = Self::FIRST.saturating_mul(1 << self.failures.min(10)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        // A random u64 without a dependency: std's per-process random hasher keys.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(self.failures);
        let unit = (hasher.finish() % 1000) as f64 / 1000.0; // [0, 1)
        base.mul_f64(0.5 + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_handling_follows_consuls_rules() {
        assert_eq!(next_index(0, 7), Next::Changed(7));
        assert_eq!(next_index(7, 7), Next::Unchanged);
        assert_eq!(next_index(7, 9), Next::Changed(9));
        assert_eq!(next_index(9, 3), Next::Reset);
        assert_eq!(next_index(0, 0), Next::Changed(1));
    }

    fn check(service: &str, node: &str, id: &str, status: &str) -> dfp_consul::CheckState {
        dfp_consul::CheckState {
            service: service.to_owned(),
            node: node.to_owned(),
            check_id: id.to_owned(),
            status: status.to_owned(),
        }
    }

    #[test]
    fn only_services_whose_checks_changed_are_read_again() {
        let before = check_fingerprints(&[
            check("", "n1", "serfHealth", "passing"),
            check("books", "n1", "b1", "passing"),
            check("books", "n2", "b2", "passing"),
            check("shop", "n1", "s1", "passing"),
            check("gone", "n1", "g1", "passing"),
        ]);
        // Same checks in another order: nothing changed.
        let same = check_fingerprints(&[
            check("shop", "n1", "s1", "passing"),
            check("books", "n2", "b2", "passing"),
            check("gone", "n1", "g1", "passing"),
            check("books", "n1", "b1", "passing"),
            check("", "n1", "serfHealth", "passing"),
        ]);
        assert!(changed_services(&before, &same).is_empty());
        let now = check_fingerprints(&[
            check("", "n1", "serfHealth", "passing"),
            check("books", "n1", "b1", "critical"),
            check("books", "n2", "b2", "passing"),
            check("shop", "n1", "s1", "passing"),
            check("new", "n1", "x1", "passing"),
        ]);
        let mut changed = changed_services(&before, &now);
        changed.sort();
        assert_eq!(changed, ["books", "gone", "new"]);
        assert_eq!(before.get(""), now.get(""), "node checks unchanged");
    }

    #[test]
    fn backoff_grows_is_bounded_and_jittered() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first < Duration::from_millis(150),
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Backoff::MAX.mul_f64(1.5), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }
}
