//! `docker-flow-proxy server`: binds the ports, starts the data plane and the admin API on
//! separate runtimes, and stops both on SIGTERM or SIGINT.
//!
//! The data plane runs on `--threads` threads, each with its own single-threaded runtime and
//! upstream pool; the admin API and every Consul call run on a single-threaded runtime of
//! their own, so no admin work ever occupies a data-plane thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use dfp_admin::env_services::EnvService;
use dfp_admin::{
    AdminAuth, AdminError, CertAdmin, Controller, Discovery, FollowConfig, MetricsHook,
    ReconfigureRequest, ReservedPorts, RouteStore, TcpPorts, UsersConfig,
};
use dfp_consul::ConsulClient;
use dfp_proxy::{ConnectionStats, ProxyConfig, TcpHost};
use dfp_routing::TableHandle;
use dfp_tls::CertStore;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::cli::{ServerArgs, TlsListen};
use crate::memory::Collector;

pub(crate) fn run(args: ServerArgs) -> anyhow::Result<()> {
    // Credentials first: a mistake in them stops the start before any port is bound.
    let credentials = args.credentials.credentials()?;
    let admin_auth = AdminAuth::new(&credentials);
    // Global users likewise: a bad USERS or users file must not start a proxy that serves
    // its services open.
    let (global_users, users_from) = args.global_users(|name| std::env::var(name).ok())?;
    if let Some(from) = &users_from {
        tracing::info!(users = global_users.len(), from = %from, "global users protect every service without users of its own");
    }
    let users = UsersConfig { global: global_users.into(), secrets_dir: args.secrets_dir.clone() };
    // Static services (DFP_SERVICE_*) are read and validated before any port is bound too.
    let static_services = static_services(std::env::vars())?;
    let threads = match args.threads {
        Some(n) => usize::from(n),
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let (discovery, store) = match &args.consul_address {
        Some(address) => {
            let mut consul = ConsulClient::new(address, args.consul_timeout)
                .context("invalid --consul-address")?;
            if let Some(token) = args.consul_token()? {
                consul = consul.with_token(token).context("invalid Consul token")?;
            }
            let consul = Arc::new(consul);
            let store = RouteStore::ConsulKv {
                consul: consul.clone(),
                instance_name: args.instance_name.clone(),
            };
            (Discovery::Consul(consul), store)
        }
        None => {
            if args.consul_token.is_some() || args.consul_token_file.is_some() {
                tracing::warn!("a Consul token is set but no --consul-address (CONSUL_ADDRESS): standalone mode does not use it");
            }
            let state_file = crate::state_file::resolve(args.state_file.as_deref())?;
            tracing::info!(state_file = %state_file.display(), "standalone routes are kept here");
            (Discovery::Dns, RouteStore::File(state_file))
        }
    };

    // A certificate in --certs-dir that cannot be served stops the start, naming the file.
    let from_certs_dir = match &args.certs_dir {
        Some(dir) => dfp_tls::load_dir(dir).with_context(|| {
            format!("cannot load the certificates of {} (--certs-dir)", dir.display())
        })?,
        None => Vec::new(),
    };

    // Likewise a --client-ca bundle that holds no usable CA certificate.
    let client_ca = match &args.client_ca {
        Some(path) => Some(dfp_tls::ClientCa::load_file(path).with_context(|| {
            format!("cannot use {} as the client CA bundle (--client-ca)", path.display())
        })?),
        None => None,
    };

    // ACME's flags are checked before anything starts too.
    let acme_config = args.acme.config().map_err(anyhow::Error::msg)?;
    if acme_config.is_some() && matches!(args.tls_listen, TlsListen::Off) {
        anyhow::bail!(
            "--acme-agree-tos obtains certificates to serve on the HTTPS listener, and \
             --tls-listen is off; give --tls-listen an address (default 0.0.0.0:443)"
        );
    }

    // Bind every port before anything starts, so a taken port fails fast and says which.
    let backlog = i32::try_from(args.listen_backlog).unwrap_or(i32::MAX);
    let proxy_listener = listen(args.listen, backlog)
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let admin_listener = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let tls_listener = match args.tls_listen {
        TlsListen::At(addr) => {
            let listener = listen(addr, backlog).with_context(|| {
                format!("cannot listen on {addr} (--tls-listen; `off` disables HTTPS)")
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        TlsListen::Off => None,
    };
    proxy_listener.set_nonblocking(true)?;
    admin_listener.set_nonblocking(true)?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    if admin_auth.is_open() && !admin_addr.ip().to_canonical().is_loopback() {
        tracing::warn!(
            admin = %admin_addr,
            "the admin API is unauthenticated: whoever reaches it can reroute every path and \
             upload certificates; set --admin-token (DFP_ADMIN_TOKEN) or --admin-user with \
             --admin-password (DFP_ADMIN_USER, DFP_ADMIN_PASSWORD; or their _FILE forms for \
             Docker secrets), or bind --admin-listen to 127.0.0.1"
        );
    }
    let tls_addr = tls_listener.as_ref().map(std::net::TcpListener::local_addr).transpose()?;

    let table = TableHandle::default();
    let follow = FollowConfig { dns_refresh: args.dns_refresh, ..FollowConfig::default() };
    let certs = CertStore::new();
    let cert_admin = CertAdmin::new(certs.clone(), &store, from_certs_dir, &follow);
    let shared_store = store.clone();
    let acme_follow = follow.clone();
    let controller =
        Arc::new(Controller::with_users(table.clone(), discovery, store, follow, users));
    controller.set_client_ca_configured(client_ca.is_some());
    // TCP services' listeners: bound here (the binary owns ports) when the controller asks,
    // served by every data-plane thread. Set before the restore so stored TCP services
    // get their listeners back.
    let tcp_host = TcpHost::new();
    let mut reserved = ReservedPorts {
        listeners: vec![
            (proxy_addr.port(), "HTTP (--listen)"),
            (admin_addr.port(), "admin (--admin-listen)"),
        ],
        https: tls_addr.map(|tls| tls.port()),
    };
    if let Some(tls) = tls_addr {
        reserved.listeners.push((tls.port(), "HTTPS (--tls-listen)"));
    }
    controller.set_tcp_ports(
        Arc::new(TcpListeners { host: tcp_host.clone(), ip: proxy_addr.ip(), backlog }),
        reserved,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy_config = ProxyConfig {
        connect_timeout: args.connect_timeout,
        // Unset, HAProxy's rule: `timeout queue` defaults to `timeout connect`.
        queue_timeout: args.queue_timeout.unwrap_or(args.connect_timeout),
        server_timeout: args.server_timeout,
        header_read_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        client_timeout: args.client_timeout,
        tunnel_timeout: args.tunnel_timeout,
        upstream_idle_timeout: args.upstream_idle_timeout,
        access_log: args.access_log,
        trust_forwarded_proto: args.trust_forwarded_proto,
        trusted_proxies: args.trusted_proxies.clone().unwrap_or_default(),
        accept_proxy: args.accept_proxy.clone().unwrap_or_default(),
        shutdown_grace: args.shutdown_grace,
        client_ca,
    };

    // The admin API answers from here on: a reconfigure sent while the stored routes are
    // restored goes ahead (Docker Flow Swarm Listener sends them as the proxy comes up).
    // Routes are restored before the proxy listeners serve, so the first request already sees
    // them. Consul being down is not fatal (it is retried in the background); an unreadable
    // state file is.
    let control_plane = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("dfp-admin")
        .build()
        .context("cannot start the admin runtime")?;
    controller.set_ready(false);
    let admin = {
        let _runtime = control_plane.enter();
        let listener = tokio::net::TcpListener::from_std(admin_listener)?;
        control_plane.spawn(dfp_admin::serve(
            listener,
            controller.clone(),
            Some(cert_admin.clone()),
            admin_auth,
            stopped(stop_rx.clone()),
        ))
    };
    tracing::info!(admin = %admin_addr, "admin API open; restoring routes");
    control_plane.block_on(controller.start())?;
    // Certificates likewise: --certs-dir, then those stored (Consul KV or beside the state file).
    control_plane.block_on(cert_admin.start())?;
    // Static services after the restore, so that they win over what was stored for them.
    control_plane.block_on(apply_static_services(&controller, static_services))?;

    let connection_stats = Arc::new(ConnectionStats::new(args.max_connections));
    let stats = connection_stats.clone();
    let served_certs = certs.clone();
    controller.set_metrics_hook(MetricsHook(Arc::new(move |out: &mut String| {
        let open = stats.open.load(Ordering::Relaxed);
        let accepted = stats.accepted.load(Ordering::Relaxed);
        let max = stats.max_connections();
        let limited = stats.limit_reached.load(Ordering::Relaxed);
        let proxy_header_failures = stats.proxy_header_failures.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP dfp_open_connections Client connections open now.\n\
             # TYPE dfp_open_connections gauge\n\
             dfp_open_connections {open}\n\
             # HELP dfp_max_connections Most client connections open at once (--max-connections).\n\
             # TYPE dfp_max_connections gauge\n\
             dfp_max_connections {max}\n\
             # HELP dfp_connection_limit_reached_total Times a connection waited because --max-connections were open.\n\
             # TYPE dfp_connection_limit_reached_total counter\n\
             dfp_connection_limit_reached_total {limited}\n\
             # HELP dfp_accepted_connections_total Client connections accepted since start.\n\
             # TYPE dfp_accepted_connections_total counter\n\
             dfp_accepted_connections_total {accepted}\n\
             # HELP dfp_proxy_header_failures_total Connections from --accept-proxy peers closed without a valid PROXY header.\n\
             # TYPE dfp_proxy_header_failures_total counter\n\
             dfp_proxy_header_failures_total {proxy_header_failures}"
        );
        tls_metrics(out, &served_certs, &stats);
        own_answer_metrics(out);
    })));

    // The data plane: one single-threaded runtime per worker thread, each accepting from the
    // same listening sockets and owning its own upstream connection pool, so nothing on the
    // request path is shared between threads (no work stealing, no cross-thread pool lock).
    let mut workers = Vec::with_capacity(threads);
    for worker in 0..threads {
        let plain = proxy_listener.try_clone().context("cannot share the proxy listener")?;
        let tls = match &tls_listener {
            Some(listener) => Some(listener.try_clone().context("cannot share the TLS listener")?),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a data-plane runtime")?;
        let (table, config, stats, certs) =
            (table.clone(), proxy_config.clone(), connection_stats.clone(), certs.clone());
        let (plain_stop, tls_stop) = (stopped(stop_rx.clone()), stopped(stop_rx.clone()));
        let (tcp_host, tcp_stop) = (tcp_host.clone(), stopped(stop_rx.clone()));
        let handle =
            thread::Builder::new().name(format!("dfp-proxy-{worker}")).spawn(move || {
                // Answers this thread counts go to its own shard of each service's counters.
                dfp_routing::count_answers_on_shard(worker);
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(plain)?;
                    let https = match tls {
                        Some(tls) => {
                            let listener = tokio::net::TcpListener::from_std(tls)?;
                            Some(tokio::spawn(dfp_proxy::serve_tls(
                                listener,
                                table.clone(),
                                config.clone(),
                                certs.clone(),
                                stats.clone(),
                                tls_stop,
                            )))
                        }
                        None => None,
                    };
                    let tcp = {
                        let (table, config, stats) = (table.clone(), config.clone(), stats.clone());
                        tokio::spawn(async move {
                            tcp_host.run_thread(table, config, certs, stats, tcp_stop).await;
                        })
                    };
                    let giving_back =
                        tokio::spawn(crate::memory::give_back_freed_memory(Collector::Worker));
                    let served = dfp_proxy::serve(listener, table, config, stats, plain_stop).await;
                    giving_back.abort();
                    tcp.await.map_err(std::io::Error::other)?;
                    if let Some(https) = https {
                        https.await.map_err(std::io::Error::other)??;
                    }
                    served
                })
            })?;
        workers.push(handle);
    }
    drop((proxy_listener, tls_listener));

    let mut listeners = vec![("proxy", proxy_addr)];
    listeners.extend(tls_addr.map(|addr| ("https", addr)));
    listeners.push(("admin", admin_addr));
    controller
        .set_identity(dfp_admin::Identity { instance_name: args.instance_name.clone(), listeners });
    // This replica's mark in the store, for the dashboard's list of replicas (Consul only).
    let presence = {
        let _runtime = control_plane.enter();
        dfp_admin::start_presence(
            &controller,
            &shared_store,
            dfp_admin::Replica::this(hostname(), admin_addr.to_string()),
        )
    };
    // ACME once the listeners serve: the CA's challenge requests must be answered.
    let acme = match acme_config {
        Some(config) => {
            let holder = format!("{} pid {} (admin {admin_addr})", hostname(), std::process::id());
            let manager = dfp_admin::AcmeManager::new(
                config,
                (*controller).clone(),
                cert_admin.clone(),
                &shared_store,
                &acme_follow,
                holder,
            )
            .context("cannot start ACME")?;
            let _runtime = control_plane.enter();
            manager.start();
            Some(manager)
        }
        None => None,
    };
    controller.set_ready(true);
    control_plane.spawn(crate::memory::give_back_freed_memory(Collector::Control(table.clone())));
    let result = control_plane.block_on(async move {
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            https = %tls_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            mode = controller.discovery().mode(),
            consul = args.consul_address.as_deref().unwrap_or("-"),
            table_version = controller.table().load().version(),
            instance_name = %args.instance_name,
            threads,
            "docker-flow-proxy is ready"
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Some(acme) = &acme {
            acme.stop().await;
        }
        presence.leave().await;
        let _ = stop_tx.send(true);
        admin.await.context("admin task failed")??;
        anyhow::Ok(())
    });
    let mut proxy_result = Ok(());
    for worker in workers {
        let joined = worker.join().map_err(|_| anyhow::anyhow!("a data-plane thread panicked"))?;
        proxy_result = proxy_result.and(joined);
    }
    result?;
    proxy_result.context("data plane failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The services `DFP_SERVICE_*` variables define, each read as a reconfigure call. A mistake
/// names the variable and stops the start.
fn static_services(
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<Vec<(EnvService, ReconfigureRequest)>> {
    let services = dfp_admin::env_services::services_from_env(vars)?;
    services
        .into_iter()
        .map(|service| {
            let pairs = service.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            match ReconfigureRequest::from_pairs(pairs) {
                Ok(request) => Ok((service, request)),
                Err(err) => Err(static_error(&service, &err)),
            }
        })
        .collect()
}

fn static_error(service: &EnvService, err: &AdminError) -> anyhow::Error {
    let variable = err
        .parameter()
        .and_then(|p| service.variable(p))
        .map_or_else(|| format!("{}_*", service.prefix), str::to_owned);
    anyhow::anyhow!(
        "the static service of {}_* is invalid ({variable}): {err}; fix or unset {variable}",
        service.prefix
    )
}

/// Routes each static service like a reconfigure. A call this proxy refuses (bad value,
/// unknown service, path conflict) stops the start; Consul or the store being unreachable
/// does not: the call is retried in the background until it is applied.
async fn apply_static_services(
    controller: &Arc<Controller>,
    services: Vec<(EnvService, ReconfigureRequest)>,
) -> anyhow::Result<()> {
    for (service, request) in services {
        match controller.reconfigure(request.clone()).await {
            Ok(report) => tracing::info!(
                variables = %format!("{}_*", service.prefix),
                service = %report.service_name,
                table_version = report.table_version,
                "static service routed"
            ),
            Err(err) if err.status() == 503 => {
                tracing::warn!(variables = %format!("{}_*", service.prefix), error = %err, "static service not routed yet; retrying");
                let controller = controller.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        match controller.reconfigure(request.clone()).await {
                            Ok(_) => {
                                tracing::info!(variables = %format!("{}_*", service.prefix), "static service routed");
                                break;
                            }
                            Err(err) if err.status() == 503 => {}
                            Err(err) => {
                                tracing::error!(error = %static_error(&service, &err), "static service cannot be routed");
                                break;
                            }
                        }
                    }
                });
            }
            Err(err) => return Err(static_error(&service, &err)),
        }
    }
    Ok(())
}

/// The control plane's [`TcpPorts`], on the data plane's [`TcpHost`]: a TCP service's port is
/// bound on the HTTP listener's address with the same backlog, by the binary, which owns
/// every port the proxy listens on.
#[derive(Debug)]
struct TcpListeners {
    host: TcpHost,
    ip: std::net::IpAddr,
    backlog: i32,
}

impl TcpPorts for TcpListeners {
    fn bind(&self, port: u16) -> std::io::Result<bool> {
        if self.host.contains(port) {
            return Ok(false);
        }
        let listener = listen(SocketAddr::new(self.ip, port), self.backlog)?;
        listener.set_nonblocking(true)?;
        self.host.insert(port, listener);
        Ok(true)
    }

    fn serve(&self, port: u16) {
        self.host.serve(port);
    }

    fn close(&self, port: u16) {
        self.host.close(port);
    }

    fn is_listening(&self, port: u16) -> bool {
        self.host.is_listening(port)
    }
}

/// A listening socket on `addr` with a queue of `backlog` connections not yet accepted (std's
/// `TcpListener::bind` always asks for 128). `SO_REUSEADDR` as std sets it, so a restart
/// binds at once over connections in TIME_WAIT. `TCP_NODELAY` before it listens: every
/// connection it accepts has it from the start (the data plane then sets it on none).
fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The answers the proxy made itself (no instance did), by status and reason.
fn own_answer_metrics(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP dfp_proxy_responses_total Answers the proxy made itself (no instance made them), by status and reason.\n\
         # TYPE dfp_proxy_responses_total counter"
    );
    for (status, reason, count) in dfp_proxy::own_answers() {
        let _ = writeln!(
            out,
            "dfp_proxy_responses_total{{status=\"{status}\",reason=\"{reason}\"}} {count}"
        );
    }
}

/// The TLS side of `/metrics`: the certificates served, when each expires, failed handshakes.
fn tls_metrics(out: &mut String, certs: &CertStore, stats: &ConnectionStats) {
    let set = certs.load();
    let _ = writeln!(
        out,
        "# HELP dfp_tls_certificates Certificates served by the HTTPS listener.\n\
         # TYPE dfp_tls_certificates gauge\n\
         dfp_tls_certificates {}\n\
         # HELP dfp_tls_certificate_not_after_seconds When each certificate expires (Unix time).\n\
         # TYPE dfp_tls_certificate_not_after_seconds gauge",
        set.len()
    );
    for cert in set.iter() {
        let _ = writeln!(
            out,
            "dfp_tls_certificate_not_after_seconds{{cert=\"{}\"}} {}",
            cert.name(),
            cert.not_after()
        );
    }
    let _ = writeln!(
        out,
        "# HELP dfp_tls_handshake_failures_total TLS handshakes that failed or timed out.\n\
         # TYPE dfp_tls_handshake_failures_total counter\n\
         dfp_tls_handshake_failures_total {}",
        stats.tls_handshake_failures.load(Ordering::Relaxed)
    );
}

/// Completes once the stop flag is raised (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop the proxy with SIGKILL");
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

/// This machine's host name (a container's ID in Docker), for the locks ACME takes.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned())
}
