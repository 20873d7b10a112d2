//! Answering a lookup: host index, then any-host index, then the default backend, walking
//! each index from the longest prefix down. This is the code every request runs.

use std::fmt;
use std::sync::Arc;

use super::{service_key, Node, PathIndex, RouteMatch, RouteTable, ServiceRoutes, StreamTls};
use crate::condition::{NoFields, RequestFields};
use crate::stats::BackendStats;
use crate::Backend;

impl RouteTable {
    /// The empty table a proxy starts with: every lookup misses.
    pub fn empty() -> Self {
        RouteTable {
            version: 0,
            any_host: Arc::default(),
            by_host: Arc::default(),
            by_wildcard: Arc::default(),
            default_service: None,
            services: Vec::new(),
            tcp: Vec::new(),
            tls_names: Vec::new(),
            retired: Vec::new(),
            challenges: Arc::default(),
        }
    }

    /// The key authorization to answer `/.well-known/acme-challenge/<token>` with, while a
    /// certificate is being obtained for one of this proxy's names.
    pub fn acme_challenge(&self, token: &str) -> Option<&Arc<str>> {
        if self.challenges.is_empty() {
            return None;
        }
        self.challenges.get(token)
    }

    /// How many ACME challenges are being answered.
    pub fn acme_challenge_count(&self) -> usize {
        self.challenges.len()
    }

    /// Whether any ACME challenge is being answered.
    pub fn has_acme_challenges(&self) -> bool {
        !self.challenges.is_empty()
    }

    /// The version this table was built as; each swap publishes a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Finds the service owning `path` (the request path, without query string) for any host.
    pub fn lookup(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.lookup_host(None, path)
    }

    /// Finds the service owning `path` on `host` (the request's `Host`, any case, with or
    /// without a port), for a request without fields: routes with `serviceHeader` or
    /// `userAgent` are passed over.
    pub fn lookup_host(&self, host: Option<&str>, path: &str) -> Option<RouteMatch<'_>> {
        self.lookup_request(host, path, &NoFields)
    }

    /// Finds the service owning `path` on `host` for a request with `fields` (read only for
    /// the conditioned routes at the nodes the lookup visits).
    pub fn lookup_request(
        &self,
        host: Option<&str>,
        path: &str,
        fields: &dyn RequestFields,
    ) -> Option<RouteMatch<'_>> {
        if !self.by_host.is_empty() || !self.by_wildcard.is_empty() {
            if let Some(host) = host.and_then(normalise_host) {
                if let Some(found) =
                    self.by_host.get(host.as_ref()).and_then(|i| self.find(i, path, fields))
                {
                    return Some(found);
                }
                let parent = host.split_once('.').map(|(_, rest)| rest);
                if let Some(found) = parent
                    .and_then(|p| self.by_wildcard.get(p))
                    .and_then(|i| self.find(i, path, fields))
                {
                    return Some(found);
                }
            }
        }
        self.find(&self.any_host, path, fields).or_else(|| {
            self.default_service
                .as_ref()
                .map(|slot| RouteMatch { backend: &slot.backend, prefix: None })
        })
    }

    /// The longest owner of `path` in `index` whose conditions hold and that does not exclude
    /// it: the path cut at each `/`, longest first (`/a/b/c`, `/a/b`, `/a`, `/`), each looked
    /// for in the index. A cut with a trailing `/` is never found (no prefix has one), and
    /// the next shorter one is the prefix that owns it. At most one more cut than the index's
    /// deepest prefix has segments is hashed, whatever the request sends.
    fn find<'t>(
        &'t self,
        index: &'t PathIndex,
        path: &str,
        fields: &dyn RequestFields,
    ) -> Option<RouteMatch<'t>> {
        if index.nodes.is_empty() || !path.starts_with('/') {
            return None;
        }
        let mut probe =
            match path.bytes().enumerate().filter(|&(_, b)| b == b'/').nth(index.max_depth) {
                Some((at, _)) => &path[..at],
                None => path,
            };
        loop {
            if index.has_length(probe.len()) {
                if let Some(Node { prefix, candidates }) = index.nodes.get(probe).map(|n| &**n) {
                    for candidate in candidates.iter() {
                        if candidate.test.as_ref().is_some_and(|t| !t.matches(path, fields)) {
                            continue;
                        }
                        let slot = &candidate.slot;
                        if !slot.excludes(path) {
                            return Some(RouteMatch {
                                backend: &slot.backend,
                                prefix: Some(prefix),
                            });
                        }
                    }
                }
            }
            // Not here: the next shorter cut (all its owners are shorter).
            probe = match probe.rfind('/') {
                Some(0) if probe.len() > 1 => "/",
                Some(at) if at > 0 => &probe[..at],
                _ => return None,
            };
        }
    }

    /// The routed services' destinations, ordered by [`service_key`], then destination (most
    /// services have one).
    pub fn services(&self) -> impl ExactSizeIterator<Item = ServiceRoutes<'_>> {
        self.services.iter().map(|s| ServiceRoutes {
            backend: &s.backend,
            prefixes: &s.prefixes,
            patterns: &s.patterns,
            conditions: &s.conditions,
            domains: &s.domains,
            excluded: &s.excluded,
            default_backend: s.default_backend,
            color: s.color.as_deref(),
            destination: s.destination,
            index: s.index,
            tcp_port: s.tcp_port,
            stream_tls: s.stream_tls,
        })
    }

    /// The TCP service (`reqMode=tcp`) whose `srcPort` is `port`: what a connection accepted
    /// on that port is forwarded to. One binary search over the TCP services.
    /// Services chosen by TLS server name share their port, and are not this.
    pub fn tcp_route(&self, port: u16) -> Option<&Arc<Backend>> {
        let at = self.tcp.binary_search_by_key(&port, |(p, _)| *p).ok()?;
        let slot = &self.tcp[at].1;
        (slot.stream_tls == StreamTls::Plain).then_some(&slot.backend)
    }

    /// Whether connections to `port` are chosen by TLS server name (`reqMode=sni`, or
    /// `reqMode=tcp` with `serviceDomain`): the ClientHello must be read first.
    pub fn routes_by_server_name(&self, port: u16) -> bool {
        let at = self.tls_names.partition_point(|(p, ..)| *p < port);
        self.tls_names.get(at).is_some_and(|(p, ..)| *p == port)
    }

    /// The service a TLS connection to `port` asking for `server_name` (the ClientHello's
    /// SNI, lowercase, no trailing dot) goes to, and how: the exact name first, then a
    /// one-label wildcard (`*.example.com` takes `a.example.com`, not `a.b.example.com` nor
    /// `example.com`), as HTTP hosts are matched. Two binary searches, no allocation.
    pub fn tls_route(&self, port: u16, server_name: &str) -> Option<(&Arc<Backend>, StreamTls)> {
        let find = |wildcard: bool, name: &str| {
            self.tls_names
                .binary_search_by(|(p, w, n, _)| (*p, *w, n.as_ref()).cmp(&(port, wildcard, name)))
                .ok()
                .map(|at| &self.tls_names[at].3)
        };
        let slot = find(false, server_name).or_else(|| {
            let (first, parent) = server_name.split_once('.')?;
            (!first.is_empty()).then(|| find(true, parent)).flatten()
        })?;
        Some((&slot.backend, slot.stream_tls))
    }

    /// The ports TCP services are reached on, in order, with their services.
    pub fn tcp_ports(&self) -> impl ExactSizeIterator<Item = (u16, &Arc<Backend>)> {
        self.tcp.iter().map(|(port, slot)| (*port, &slot.backend))
    }

    /// The backend of a service's first destination by name, compared as [`service_key`]
    /// compares names.
    pub fn service(&self, name: &str) -> Option<&Arc<Backend>> {
        let key = service_key(name);
        self.services
            .binary_search_by(|s| (s.key.as_ref(), s.destination).cmp(&(key.as_ref(), 0)))
            .ok()
            .map(|i| &self.services[i].backend)
    }

    /// Counters of services that earlier tables routed and this one does not (removed
    /// services), by name, ordered by name. Their series stay in `/metrics`.
    pub fn retired_stats(&self) -> impl ExactSizeIterator<Item = (&str, &BackendStats)> {
        self.retired.iter().map(|(name, stats)| (name.as_ref(), stats.as_ref()))
    }
}

/// `Host` without port or trailing dot, lowercase. Borrowed unless it had uppercase letters.
fn normalise_host(host: &str) -> Option<std::borrow::Cow<'_, str>> {
    let host = if host.starts_with('[') {
        // An IPv6 literal: never a configured domain name.
        return None;
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("services", &self.services.iter().map(|s| &s.backend).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
