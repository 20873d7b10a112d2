//! The store sync/restore path: makes the routes match a listing of the store (at start, on
//! `reload?recreate=true`, and as the store follower sees changes), and records and publishes
//! the instance changes the followers find. Split out of `controller.rs` (a pure move).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dfp_routing::{BuildError, TableEditor};

use super::{key, Inner};
use crate::discovery::{Discovery, Strictness};
use crate::params::CallParams;
use crate::store::Params;
use crate::ReconfigureRequest;

/// Instance lookups a store sync has in flight at once: enough to hide the agent's latency,
/// few enough not to crowd it out (Consul's default limit is 200 connections per client).
const LOOKUPS_AT_ONCE: usize = 32;

impl Inner {
    /// Makes the routes match `desired`, a listing of the store. With `read_after` (the local
    /// write sequence when the listing was requested), services written locally since then
    /// are left as they are: the listing may predate that write. Returns whether any service
    /// was left for that reason (the caller should read the store again).
    pub(crate) async fn sync_from_store(
        self: &Arc<Self>,
        desired: BTreeMap<String, Params>,
        read_after: Option<u64>,
    ) -> bool {
        let _syncing = self.syncing.lock().await;
        let mut state = self.state.lock().await;
        let newer_locally =
            |name: &str| read_after.is_some_and(|seen| self.store.written_since(name, seen));
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
            changed.push(Box::new(request));
        }
        if removed.is_empty() && changed.is_empty() {
            return deferred;
        }

        // Look the changed services up, LOOKUPS_AT_ONCE at a time and without the state lock,
        // so reconfigure calls and instance updates go on meanwhile (10,000 stored services
        // are 10,000 lookups). A service a local call wrote or removed meanwhile is left as
        // that call made it: this listing may predate the call (the store follower reads
        // again). An unknown or unreachable one starts with no instance, or keeps the ones it
        // had, and its follower fills them in.
        let mark = self.store.mark();
        let seen = self.instance_seq.load(Ordering::Acquire);
        drop(state);
        let looked_up = self.look_up(changed).await;
        let mut state = self.state.lock().await;
        let mut found = Vec::with_capacity(looked_up.len());
        for (request, instances) in looked_up {
            let k = key(&request.service_name);
            if self.store.written_since(&k, mark) {
                deferred = true;
                continue;
            }
            // A failed lookup keeps what the service had; so does one older than what its
            // follower recorded since (the follower goes on with the same source).
            let current = state.services.get(&k);
            let newer = current.filter(|e| {
                e.updated > seen && super::reconfigure::same_source(&e.request, &request)
            });
            let instances = match (instances, newer) {
                (Some(found), None) => found,
                (_, Some(entry)) => entry.instances.clone(),
                (None, None) => current.map(|e| e.instances.clone()).unwrap_or_default(),
            };
            found.push((k, request, instances));
        }
        removed.retain(|k| {
            let written = self.store.written_since(k, mark);
            deferred |= written;
            !written && state.services.contains_key(k)
        });
        if removed.is_empty() && found.is_empty() {
            return deferred;
        }

        // One table change. A stored route whose path (or port, or default role) a routed
        // service has is left out, not the others; two stored routes new in this listing
        // that claim the same are both left out (neither is more right than the other).
        let live = self.table.snapshot();
        let table = loop {
            let mut editor = TableEditor::new(&live);
            for name in &removed {
                editor.remove(name);
            }
            let refused = found.iter().find_map(|(_, request, instances)| {
                editor.set(request.destination_specs(instances)).err().map(|err| (request, err))
            });
            let Some((request, err)) = refused else { break editor.finish(live.version() + 1) };
            tracing::warn!(service = %request.service_name, error = %err, "stored route conflicts with another; skipped");
            let (service, owner) = (request.service_name.clone(), conflict_owner(&err));
            found.retain(|(_, r, _)| {
                r.service_name != service && Some(&r.service_name) != owner.as_ref()
            });
        };
        if removed.is_empty() && found.is_empty() {
            return deferred;
        }
        let mut names: Vec<&str> = removed.iter().map(String::as_str).collect();
        names.extend(found.iter().map(|(_, r, _)| r.service_name.as_str()));
        self.publish(table, format!("store: {}", super::reconfigure::list_of(&names)));
        for name in &removed {
            state.dirty.remove(name);
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
            state.dirty.remove(&k);
            let entry = self.entry(&mut state, &k, request, instances);
            state.services.insert(k, entry);
        }
        self.counters.store_syncs.fetch_add(1, Ordering::Relaxed);
        deferred
    }

    /// The instances of each of `requests` (`None`: the lookup failed, logged), looked up
    /// [`LOOKUPS_AT_ONCE`] at a time, in the order given.
    #[allow(
        clippy::vec_box,
        reason = "each call ends in its service's entry as this box; unboxed, a restore's lists \
                  held copies of every ~0.9 kB call at once"
    )]
    async fn look_up(
        &self,
        requests: Vec<Box<ReconfigureRequest>>,
    ) -> Vec<(Box<ReconfigureRequest>, Option<Vec<SocketAddr>>)> {
        let mut answers: Vec<Option<Option<Vec<SocketAddr>>>> = vec![None; requests.len()];
        let mut lookups = tokio::task::JoinSet::new();
        let mut next = requests.iter().enumerate();
        loop {
            while lookups.len() < LOOKUPS_AT_ONCE {
                let Some((at, request)) = next.next() else { break };
                let (discovery, name, port) =
                    (self.discovery.clone(), request.lookup_name(), request.port);
                lookups.spawn(async move {
                    (at, discovery.instances(&name, port, Strictness::Restore).await)
                });
            }
            let Some(done) = lookups.join_next().await else { break };
            let Ok((at, lookup)) = done else { continue };
            self.note_registry(&lookup);
            answers[at] = Some(match lookup {
                Ok(found) => Some(found.instances),
                Err(err) => {
                    tracing::warn!(service = %requests[at].service_name, error = %err, "lookup failed; keeping its last instances");
                    None
                }
            });
        }
        requests.into_iter().zip(answers).map(|(r, a)| (r, a.flatten())).collect()
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

    /// Records new instances for a service found by its follower. The publisher publishes them.
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
        entry.updated = self.instance_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let k = key(service);
        state.dirty.insert(k);
        self.counters.instance_updates.fetch_add(1, Ordering::Relaxed);
        self.publish_wanted.notify_one();
    }

    /// Publishes the recorded instance changes, if any are still pending: the services whose
    /// instances changed are set again, nothing else is touched.
    pub(super) async fn publish_pending(&self) {
        let mut state = self.state.lock().await;
        let dirty: Vec<String> = std::mem::take(&mut state.dirty).into_iter().collect();
        if let Some(table) = self.with_instances(&state, &dirty) {
            tracing::debug!(
                table_version = table.version(),
                services = dirty.len(),
                "published instance changes"
            );
            let names: Vec<&str> = dirty.iter().map(String::as_str).collect();
            self.publish(table, format!("instances of {}", super::reconfigure::list_of(&names)));
        }
    }

    /// Whether stored parameters replay the call that `current` holds: equal, but for the
    /// `port` older versions stored with Consul (which [`Inner::fit_to_mode`] drops).
    fn same_call(&self, current: &CallParams, stored: &Params) -> bool {
        match self.discovery {
            Discovery::Consul(_) => current.iter().eq(stored.iter().filter(|(k, _)| *k != "port")),
            Discovery::Dns => current.iter().eq(stored.iter()),
        }
    }
}

/// The service a conflict was with, when it names one.
fn conflict_owner(err: &BuildError) -> Option<String> {
    match err {
        BuildError::PathOwned { owner, .. }
        | BuildError::DefaultTaken { owner, .. }
        | BuildError::PortOwned { owner, .. }
        | BuildError::NameOwned { owner, .. } => Some(owner.clone()),
        _ => None,
    }
}
