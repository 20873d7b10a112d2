//! The store sync/restore path: makes the routes match a listing of the store (at start, on
//! `reload?recreate=true`, and as the store follower sees changes), and records and publishes
//! the instance changes the followers find. Split out of `controller.rs` (a pure move).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dfp_routing::BuildError;

use super::{key, Inner};
use crate::discovery::{Discovery, Strictness};
use crate::store::Params;
use crate::{AdminError, ReconfigureRequest};

impl Inner {
    /// The sequence number of the latest local write to the store.
    pub(crate) fn local_write_seq(&self) -> u64 {
        self.local_writes.mark()
    }

    /// Makes the routes match `desired`, a listing of the store. With `read_after` (the local
    /// write sequence when the listing was requested), services written locally since then
    /// are left as they are: the listing may predate that write. Returns whether any service
    /// was left for that reason (the caller should read the store again).
    pub(crate) async fn sync_from_store(
        self: &Arc<Self>,
        desired: BTreeMap<String, Params>,
        read_after: Option<u64>,
    ) -> bool {
        let mut state = self.state.lock().await;
        let newer_locally =
            |name: &str| read_after.is_some_and(|seen| self.local_writes.newer_than(name, seen));
        // The store's services by key. A service stored under several cases (versions before
        // names were compared as Consul compares them) is served once, from the first listed.
        let mut by_key: BTreeMap<String, (String, Params)> = BTreeMap::new();
        let mut shadowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, params) in desired {
            let k = key(&name);
            match by_key.get(&k) {
                Some((kept, _)) => {
                    tracing::warn!(%kept, ignored = %name, "two stored routes name the same service (Consul compares names ignoring case); serving the first");
                    shadowed.entry(k).or_default().push(name);
                }
                None => {
                    by_key.insert(k, (name, params));
                }
            }
        }
        state.shadowed = shadowed;
        let mut deferred = false;
        let mut removed: Vec<String> = Vec::new();
        for k in state.services.keys().filter(|k| !by_key.contains_key(*k)) {
            if newer_locally(k) {
                deferred = true;
            } else {
                removed.push(k.clone());
            }
        }
        let mut changed = Vec::new();
        for (k, (name, params)) in &by_key {
            // Most of a listing is unchanged: compare before parsing (regexes, credentials).
            if state.services.get(k).is_some_and(|e| self.same_call(&e.request.params, params)) {
                continue;
            }
            let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let mut request = match ReconfigureRequest::from_stored_pairs(pairs) {
                Ok(request) if request.service_name.eq_ignore_ascii_case(name) => request,
                Ok(request) => {
                    tracing::warn!(
                        key = %name,
                        service = %request.service_name,
                        "stored route's serviceName differs from its key; skipped"
                    );
                    continue;
                }
                Err(err) => {
                    tracing::warn!(service = %name, error = %err, "stored route is invalid; skipped");
                    continue;
                }
            };
            if let Err(err) = self.check_mode(&request) {
                tracing::warn!(service = %name, error = %err, "stored route does not fit this mode; skipped");
                continue;
            }
            let _ = self.fit_to_mode(&mut request);
            if state.services.get(k).is_some_and(|e| e.request.params == request.params) {
                continue;
            }
            if newer_locally(k) {
                deferred = true;
                continue;
            }
            match request.for_each_destination(|d| self.users.resolve(d, Strictness::Restore)) {
                Ok(warnings) => {
                    for warning in warnings.into_iter().flatten() {
                        tracing::warn!(service = %name, "{warning}");
                    }
                }
                Err(err) => {
                    tracing::warn!(service = %name, error = %err, "stored route's users cannot be read; skipped");
                    continue;
                }
            }
            changed.push(request);
        }
        if removed.is_empty() && changed.is_empty() {
            return deferred;
        }

        // Look the changed services up (an unknown or unreachable one starts with no instance,
        // or keeps the ones it had, and its follower fills them in).
        let mut found = Vec::with_capacity(changed.len());
        for request in changed {
            let lookup = self
                .discovery
                .instances(&request.lookup_name(), request.port, Strictness::Restore)
                .await;
            self.note_registry(&lookup);
            let instances = match lookup {
                Ok(f) => f.instances,
                Err(err) => {
                    tracing::warn!(service = %request.service_name, error = %err, "lookup failed; keeping its last instances");
                    let kept = state
                        .services
                        .get(&key(&request.service_name))
                        .map(|e| e.instances.clone());
                    kept.unwrap_or_default()
                }
            };
            found.push((key(&request.service_name), request, instances));
        }

        // Build; a stored route whose path another service owns is left out, not the others.
        loop {
            let mut services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
                .services
                .iter()
                .filter(|(k, _)| !removed.contains(k))
                .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
                .collect();
            for (k, request, instances) in &found {
                services.insert(k, (request, instances));
            }
            match self.build(&services) {
                Ok(table) => {
                    self.table.publish(table);
                    break;
                }
                Err(AdminError::PathConflict {
                    source:
                        BuildError::PathOwned { service, owner, .. }
                        | BuildError::DefaultTaken { service, owner, .. }
                        | BuildError::PortOwned { service, owner, .. }
                        | BuildError::NameOwned { service, owner, .. },
                }) => {
                    tracing::warn!(%service, %owner, "stored route conflicts with another; skipped");
                    let before = found.len();
                    found.retain(|(_, r, _)| r.service_name != service && r.service_name != owner);
                    if found.len() == before {
                        return deferred;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "stored routes could not be built; table unchanged");
                    return deferred;
                }
            }
        }
        state.dirty = false;
        for name in &removed {
            let old_port = state.services.remove(name).and_then(|e| e.request.tcp_port);
            self.settle_tcp(old_port, None);
            tracing::info!(service = %name, "removed (from the store)");
        }
        for (k, request, instances) in found {
            tracing::info!(service = %request.service_name, paths = ?request.service_paths, instances = ?instances, "routed (from the store)");
            // Unlike a call, a stored TCP service whose port cannot be bound is routed all
            // the same (shown as not listening) rather than skipped: its owner asked for it,
            // and a reconfigure once the port is free opens it.
            let old_port = state.services.get(&k).and_then(|e| e.request.tcp_port);
            let new_port = match self.bind_tcp(&request) {
                Ok(_) => request.tcp_port,
                Err(err) => {
                    tracing::warn!(service = %request.service_name, error = %err, "TCP service routed but not listening");
                    None
                }
            };
            self.settle_tcp(old_port.filter(|old| Some(*old) != request.tcp_port), new_port);
            let entry = self.entry(&mut state, &k, request, instances);
            state.services.insert(k, entry);
        }
        self.counters.store_syncs.fetch_add(1, Ordering::Relaxed);
        deferred
    }

    /// The routed services whose instances are registered under a name in `only` (or all),
    /// for a refresh of their instances: `(service, name looked up, generation)`. The name
    /// looked up differs from the service's with `serviceColor`.
    pub(crate) async fn routed_services(
        &self,
        only: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<(String, String, u64)> {
        // Consul reports a check under the service's name as registered, in any case.
        let only: Option<std::collections::BTreeSet<String>> =
            only.map(|only| only.iter().map(|name| key(name)).collect());
        let state = self.state.lock().await;
        state
            .services
            .values()
            .map(|entry| (entry, entry.request.lookup_name()))
            .filter(|(_, lookup)| only.as_ref().is_none_or(|only| only.contains(&key(lookup))))
            .map(|(entry, lookup)| (entry.request.service_name.clone(), lookup, entry.generation))
            .collect()
    }

    /// Records new instances for a service found by its follower. The publisher rebuilds.
    pub(crate) async fn update_instances(
        &self,
        service: &str,
        generation: u64,
        instances: Vec<SocketAddr>,
    ) {
        let mut state = self.state.lock().await;
        let Some(entry) = state.services.get_mut(&key(service)) else {
            return;
        };
        if entry.generation != generation || entry.instances == instances {
            return;
        }
        tracing::info!(service, before = ?entry.instances, after = ?instances, "instances changed");
        entry.instances = instances;
        state.dirty = true;
        self.counters.instance_updates.fetch_add(1, Ordering::Relaxed);
        self.publish_wanted.notify_one();
    }

    /// Publishes the recorded instance changes, if any are still pending.
    pub(super) async fn publish_pending(&self) {
        let mut state = self.state.lock().await;
        if !state.dirty {
            return;
        }
        let services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
            .services
            .iter()
            .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
            .collect();
        match self.build(&services) {
            Ok(table) => {
                tracing::debug!(table_version = table.version(), "published instance changes");
                self.table.publish(table);
                state.dirty = false;
            }
            Err(err) => tracing::error!(error = %err, "instance changes could not be built"),
        }
    }

    /// Whether stored parameters replay the call that `current` holds: equal, but for the
    /// `port` older versions stored with Consul (which [`Inner::fit_to_mode`] drops).
    fn same_call(&self, current: &Params, stored: &Params) -> bool {
        match self.discovery {
            Discovery::Consul(_) => current.iter().eq(stored.iter().filter(|(k, _)| *k != "port")),
            Discovery::Dns => current == stored,
        }
    }
}
