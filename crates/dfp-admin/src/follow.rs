//! Background followers: each routed service's instances (Consul blocking queries, or DNS
//! re-resolution standalone) and the route store itself (Consul KV, so replicas converge).
//!
//! A follower holds only a weak reference to the controller and is aborted when its service
//! is removed or replaced, so none outlives what it follows.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::future::Future;

use dfp_consul::{ConsulClient, ConsulError, Indexed};
use tokio::task::AbortHandle;

use crate::controller::Inner;
use crate::discovery::{dns_refresh, resolve_instances, Discovery};
use crate::store::{services_from_kv, RouteStore};
use crate::ReconfigureRequest;

/// A running follower task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Follower(AbortHandle);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts following a service's instances; `index` is the Consul index its instances were
/// read at (0: read them again first).
pub(crate) fn follow_service(
    inner: Weak<Inner>,
    discovery: &Discovery,
    request: &ReconfigureRequest,
    generation: u64,
    index: u64,
) -> Option<Follower> {
    let service = request.service_name.clone();
    let task = match discovery {
        Discovery::Consul(consul) => {
            tokio::spawn(follow_consul(inner, consul.clone(), service, generation, index))
        }
        Discovery::Dns => {
            let port = request.port?;
            tokio::spawn(follow_dns(inner, service, port, generation))
        }
    };
    Some(Follower(task.abort_handle()))
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

/// One service's instances, followed with blocking queries on its health endpoint.
async fn follow_consul(
    inner: Weak<Inner>,
    consul: Arc<ConsulClient>,
    service: String,
    generation: u64,
    index: u64,
) {
    blocking_query_loop(
        inner,
        index,
        |i: &Inner| (i.follow_config().consul_wait, ()),
        |index, wait| {
            let (consul, service) = (consul.clone(), service.clone());
            async move { consul.watch_passing_instances(&service, index, wait).await }
        },
        |strong: Arc<Inner>, instances: Vec<dfp_consul::Instance>, ()| {
            let service = service.clone();
            async move {
                let found = resolve_instances(&instances).await;
                strong.update_instances(&service, generation, found.instances).await;
                false
            }
        },
        report_registry,
    )
    .await;
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

/// Follows this proxy's KV prefix, so a reconfigure or remove sent to any replica with the
/// same instance name reaches this one too.
pub(crate) async fn follow_store(
    inner: Weak<Inner>,
    consul: Arc<ConsulClient>,
    instance_name: String,
    index: u64,
) {
    let prefix = RouteStore::kv_prefix(&instance_name);
    blocking_query_loop(
        inner,
        index,
        // The local write sequence when the listing is asked for: a listing that may predate
        // one of our own writes is not trusted for the services that write touched (and the
        // store is read again at once).
        |i: &Inner| (i.follow_config().consul_wait, i.local_write_seq()),
        |index, wait| {
            let (consul, prefix) = (consul.clone(), prefix.clone());
            async move { consul.kv_list(&prefix, index, wait).await }
        },
        |strong: Arc<Inner>, entries: Vec<dfp_consul::KvEntry>, writes_before| {
            let instance_name = instance_name.clone();
            async move {
                let desired = services_from_kv(&entries, &instance_name);
                strong.sync_from_store(desired, Some(writes_before)).await
            }
        },
        report_registry,
    )
    .await;
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
