//! The command line: every flag also reads the environment variable shown in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use dfp_admin::Credentials;

mod acme;

/// A reverse proxy for services registered in Consul, reconfigured live without reloads.
#[derive(Debug, Parser)]
#[command(name = "docker-flow-proxy", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; the server's many flags make its variant the largest"
)]
pub(crate) enum Command {
    /// Run the proxy: the data plane on --listen and the admin API on --admin-listen.
    Server(ServerArgs),
    /// Route URL paths to a service's instances (a client of the admin API).
    Reconfigure(ReconfigureArgs),
    /// Stop routing a service (a client of the admin API).
    Remove(RemoveArgs),
    /// Show the live routing table: mode, table version, Consul's state, and each service
    /// with its paths, instances and options (a client of the admin API).
    Config(ShowArgs),
    /// Show every route as a table: path and host -> service -> instances, with each
    /// instance's passive health (healthy, ejected, probing) (a client of the admin API).
    Routes(ShowArgs),
    /// Check that a running proxy answers on its admin API; exits non-zero if not.
    Ping(AdminArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Address of the proxy (data plane).
    #[arg(long, env = "DFP_LISTEN", default_value = "0.0.0.0:80")]
    pub(crate) listen: SocketAddr,

    /// Address of the admin API.
    #[arg(long, env = "DFP_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub(crate) admin_listen: SocketAddr,

    /// Address of the HTTPS listener (TLS terminated here; HTTP/1.1 and HTTP/2), or `off`.
    #[arg(long, env = "DFP_TLS_LISTEN", default_value = "0.0.0.0:443", value_parser = parse_tls_listen)]
    pub(crate) tls_listen: TlsListen,

    /// Directory whose `*.pem` files (certificate chain and private key each) are served at
    /// start, each named by its file name; a file that cannot be served stops the proxy.
    #[arg(long, env = "DFP_CERTS_DIR")]
    pub(crate) certs_dir: Option<std::path::PathBuf>,

    /// Consul agent URL, or several separated by commas (tried in order). Without it the
    /// proxy runs standalone: reconfigure names instances by `port`, resolved by DNS.
    #[arg(long, env = "CONSUL_ADDRESS")]
    pub(crate) consul_address: Option<String>,

    /// Consul ACL token, sent as X-Consul-Token on every call to Consul. Given as a flag it
    /// shows in `ps`: prefer the variable, or --consul-token-file.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true, value_name = "TOKEN",
          value_parser = parse_consul_token)]
    pub(crate) consul_token: Option<dfp_consul::ConsulToken>,

    /// A file holding the Consul ACL token (e.g. a Docker secret), instead of --consul-token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE", value_name = "FILE")]
    pub(crate) consul_token_file: Option<PathBuf>,

    /// Data-plane worker threads (default: the number of cores).
    #[arg(long, env = "DFP_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,

    /// Length of the proxy and HTTPS listeners' queues of connections not yet accepted (the
    /// kernel caps it at net.core.somaxconn).
    #[arg(long, env = "DFP_LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
    pub(crate) listen_backlog: u32,

    /// Most client connections open at once, plain and HTTPS together (HAProxy's maxconn);
    /// past it new connections wait in the listen backlog until one closes. Each needs a
    /// file descriptor, and one more while its request is forwarded.
    #[arg(long, env = "DFP_MAX_CONNECTIONS", default_value_t = dfp_proxy::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 32))]
    pub(crate) max_connections: usize,

    /// Consul KV namespace of this proxy's routes; replicas sharing it share routes.
    #[arg(long, env = "PROXY_INSTANCE_NAME", default_value = "docker-flow")]
    pub(crate) instance_name: String,

    /// Standalone mode: the file that keeps routes across restarts (written atomically; its
    /// directory is created if missing) [default: $XDG_STATE_HOME/docker-flow-proxy/state.json,
    /// else ~/.local/state/docker-flow-proxy/state.json]
    #[arg(long, env = "DFP_STATE_FILE")]
    pub(crate) state_file: Option<std::path::PathBuf>,

    /// Standalone mode: how often each service's name is resolved again.
    #[arg(long, env = "DFP_DNS_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub(crate) dns_refresh: Duration,

    /// How long to wait for a connection to an instance (e.g. 5s, 500ms).
    #[arg(long, env = "DFP_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// How long a request waits in a queue for a place when a service's instances are all at
    /// its instanceMaxConn (e.g. 5s) [default: the connect timeout]; 0s: no queue, such a
    /// request is answered 503 at once.
    #[arg(long, env = "DFP_QUEUE_TIMEOUT", value_parser = parse_duration_or_zero)]
    pub(crate) queue_timeout: Option<Duration>,

    /// How long to wait for an instance's response headers before answering 504.
    #[arg(long, env = "DFP_SERVER_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) server_timeout: Duration,

    /// How long a client may take to send a request's headers.
    #[arg(long, env = "DFP_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) header_timeout: Duration,

    /// How long a kept-alive client connection may wait for its next request.
    #[arg(long, env = "DFP_IDLE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,

    /// How long a client may read nothing of a response, or send nothing of a request body,
    /// before its exchange is ended (HAProxy's `timeout client`).
    #[arg(long, env = "DFP_CLIENT_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) client_timeout: Duration,

    /// How long an upgraded connection (WebSocket) may stay open without traffic.
    #[arg(long, env = "DFP_TUNNEL_TIMEOUT", default_value = "3600s", value_parser = parse_duration)]
    pub(crate) tunnel_timeout: Duration,

    /// How long an idle connection to an instance is kept for reuse (0s: none are kept).
    /// Keep it below the instances' own keep-alive timeout.
    #[arg(long, env = "DFP_UPSTREAM_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub(crate) upstream_idle_timeout: Duration,

    /// Log every request (one line, or one JSON object with --log-format json, per request).
    #[arg(long, env = "DFP_ACCESS_LOG")]
    pub(crate) access_log: bool,

    /// Treat `X-Forwarded-Proto: https` from clients as HTTPS for `httpsOnly` services (only
    /// when TLS is terminated by a trusted balancer in front of this proxy).
    #[arg(long, env = "DFP_TRUST_FORWARDED_PROTO")]
    pub(crate) trust_forwarded_proto: bool,

    /// Balancers in front of this proxy, as addresses or CIDR blocks separated by commas.
    /// For a request from one of them, a service's allowedSources/deniedSources check the
    /// right-most X-Forwarded-For entry that is not in this list (nginx's real_ip_recursive).
    /// Empty: the TCP peer is the client.
    #[arg(long, env = "DFP_TRUSTED_PROXIES", value_name = "CIDR,...", value_parser = parse_sources)]
    pub(crate) trusted_proxies: Option<dfp_routing::SourceList>,

    /// L4 balancers that open every connection with a PROXY protocol header (v1 or v2), as
    /// addresses or CIDR blocks separated by commas. On both the proxy and the HTTPS listener,
    /// a connection from one of them must start with the header (before TLS), and the client
    /// it names is the connection's client; one without a valid header is closed. Other peers
    /// are served as usual and never trusted with one. Empty: no header is accepted.
    #[arg(long, env = "DFP_ACCEPT_PROXY", value_name = "CIDR,...", value_parser = parse_sources)]
    pub(crate) accept_proxy: Option<dfp_routing::SourceList>,

    /// A PEM file of the CAs that issue client certificates. The HTTPS listener then asks
    /// every client for a certificate and refuses one these CAs did not issue; services
    /// reconfigured with verifyClientSsl=true answer 403 to requests without one.
    #[arg(long, env = "DFP_CLIENT_CA", value_name = "PEM_FILE")]
    pub(crate) client_ca: Option<std::path::PathBuf>,

    /// How long each call to Consul may take before the next agent is tried.
    #[arg(long, env = "DFP_CONSUL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) consul_timeout: Duration,

    /// How long in-flight requests may run on after SIGTERM or SIGINT.
    #[arg(long, env = "DFP_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub(crate) shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "DFP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,

    /// Basic-auth users for every service without users of its own (and without
    /// ignoreAuthorization=true): `user:password` separated by commas. Docker Flow Proxy's
    /// USERS is read when DFP_USERS is not set.
    #[arg(long, env = "DFP_USERS", hide_env_values = true, value_name = "USER:PASS,...")]
    pub(crate) users: Option<String>,

    /// A file of global users (`user:password` separated by commas or newlines), instead of
    /// --users [default: <secrets-dir>/dfp_users when it exists, Docker Flow Proxy's secret]
    #[arg(long, env = "DFP_USERS_FILE")]
    pub(crate) users_file: Option<PathBuf>,

    /// The global users' passwords are SHA-512 crypt hashes (`mkpasswd -m sha-512`). Docker
    /// Flow Proxy's USERS_PASS_ENCRYPTED is read when DFP_USERS_PASS_ENCRYPTED is not set.
    #[arg(long, env = "DFP_USERS_PASS_ENCRYPTED", value_name = "true|false")]
    pub(crate) users_pass_encrypted: Option<String>,

    /// Directory of Docker secrets: a service's usersSecret=<name> is read from
    /// `dfp_users_<name>` here.
    #[arg(long, env = "DFP_SECRETS_DIR", default_value = dfp_admin::DEFAULT_SECRETS_DIR)]
    pub(crate) secrets_dir: PathBuf,

    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,

    #[command(flatten)]
    pub(crate) acme: acme::AcmeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// URL of the proxy's admin API.
    #[arg(long, env = "DFP_ADMIN", default_value = "http://127.0.0.1:8080")]
    pub(crate) admin: String,

    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,
}

/// The admin API's credentials: `server` requires them, the clients send them. Both read the
/// same environment variables, so a client run inside the server's container just works.
#[derive(Debug, Args)]
pub(crate) struct CredentialArgs {
    /// Admin API basic auth: the user (with --admin-password or --admin-password-file).
    #[arg(long, env = "DFP_ADMIN_USER")]
    pub(crate) admin_user: Option<String>,

    /// Admin API basic auth: the password.
    #[arg(long, env = "DFP_ADMIN_PASSWORD", hide_env_values = true)]
    pub(crate) admin_password: Option<String>,

    /// Admin API basic auth: a file holding the password (e.g. a Docker secret; one trailing
    /// newline is ignored).
    #[arg(long, env = "DFP_ADMIN_PASSWORD_FILE")]
    pub(crate) admin_password_file: Option<PathBuf>,

    /// Admin API bearer token (`Authorization: Bearer <token>`).
    #[arg(long, env = "DFP_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,

    /// Admin API bearer token: a file holding it (e.g. a Docker secret; one trailing newline
    /// is ignored).
    #[arg(long, env = "DFP_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
}

impl CredentialArgs {
    /// The credentials these flags (or their environment variables) name, read and checked:
    /// a user needs a password and a password a user, each secret comes from its flag or its
    /// file but not both, and none is empty.
    pub(crate) fn credentials(&self) -> anyhow::Result<Credentials> {
        let password = secret(
            self.admin_password.as_deref(),
            self.admin_password_file.as_deref(),
            "--admin-password (DFP_ADMIN_PASSWORD)",
            "--admin-password-file (DFP_ADMIN_PASSWORD_FILE)",
        )?;
        let token = secret(
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
            "--admin-token (DFP_ADMIN_TOKEN)",
            "--admin-token-file (DFP_ADMIN_TOKEN_FILE)",
        )?;
        let mut credentials = Credentials::default();
        match (self.admin_user.clone(), password) {
            (Some(user), Some(password)) => {
                credentials = credentials.with_basic(user, password).context(
                    "invalid admin credentials (--admin-user with --admin-password or \
                     --admin-password-file)",
                )?;
            }
            (Some(_), None) => bail!(
                "--admin-user (DFP_ADMIN_USER) is set without a password; give \
                 --admin-password (DFP_ADMIN_PASSWORD) or --admin-password-file \
                 (DFP_ADMIN_PASSWORD_FILE) too"
            ),
            (None, Some(_)) => bail!(
                "an admin password is set without a user; give --admin-user (DFP_ADMIN_USER) \
                 too, or use --admin-token (DFP_ADMIN_TOKEN) for a token without a user"
            ),
            (None, None) => {}
        }
        if let Some(token) = token {
            credentials = credentials
                .with_token(token)
                .context("invalid admin token (--admin-token or --admin-token-file)")?;
        }
        Ok(credentials)
    }
}

impl ServerArgs {
    /// The Consul ACL token, from --consul-token (CONSUL_HTTP_TOKEN) or the file of
    /// --consul-token-file (CONSUL_HTTP_TOKEN_FILE), not both. Errors name the flag or file,
    /// never the token.
    pub(crate) fn consul_token(&self) -> anyhow::Result<Option<dfp_consul::ConsulToken>> {
        match (&self.consul_token, &self.consul_token_file) {
            (Some(_), Some(_)) => bail!(
                "--consul-token (CONSUL_HTTP_TOKEN) and --consul-token-file \
                 (CONSUL_HTTP_TOKEN_FILE) are both set; give only one"
            ),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read the Consul token file {} (--consul-token-file, \
                         CONSUL_HTTP_TOKEN_FILE)",
                        path.display()
                    )
                })?;
                let token = dfp_consul::ConsulToken::new(&text).with_context(|| {
                    format!("the Consul token file {} cannot be used", path.display())
                })?;
                Ok(Some(token))
            }
            (None, None) => Ok(None),
        }
    }

    /// The global users, from (first given) --users-file, --users, Docker Flow Proxy's
    /// `dfp_users` secret in --secrets-dir, or its `USERS` variable; `env` reads the
    /// environment. Errors name the flag, variable or file to fix, never a password.
    pub(crate) fn global_users(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<(Vec<dfp_routing::Credential>, Option<String>)> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (encrypted, encrypted_from) = match &self.users_pass_encrypted {
            Some(value) => {
                (Some(value.clone()), "--users-pass-encrypted (DFP_USERS_PASS_ENCRYPTED)")
            }
            None => (env("USERS_PASS_ENCRYPTED"), "USERS_PASS_ENCRYPTED"),
        };
        let hashed = match encrypted.as_deref().map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => bail!("{encrypted_from} is {v:?}; give true or false"),
        };
        let secret = self.secrets_dir.join("dfp_users");
        let users = match (&self.users_file, &self.users) {
            (Some(_), Some(_)) => bail!(
                "--users (DFP_USERS) and --users-file (DFP_USERS_FILE) are both set; give only one"
            ),
            (Some(path), None) => file_users(path, hashed, "--users-file (DFP_USERS_FILE)")?,
            (None, Some(text)) => text_users(text, hashed, "--users (DFP_USERS)")?,
            (None, None) if secret.is_file() => {
                file_users(&secret, hashed, "Docker Flow Proxy's dfp_users secret")?
            }
            (None, None) => match env("USERS") {
                Some(text) => text_users(&text, hashed, "USERS")?,
                None => return Ok((Vec::new(), None)),
            },
        };
        Ok(users)
    }
}

fn text_users(
    text: &str,
    hashed: bool,
    from: &str,
) -> anyhow::Result<(Vec<dfp_routing::Credential>, Option<String>)> {
    let users = dfp_routing::Credential::parse_list(text, hashed)
        .with_context(|| format!("invalid global users in {from}"))?;
    Ok((users, Some(from.to_owned())))
}

fn file_users(
    path: &std::path::Path,
    hashed: bool,
    from: &str,
) -> anyhow::Result<(Vec<dfp_routing::Credential>, Option<String>)> {
    let users = dfp_admin::read_users_file(path, hashed)
        .with_context(|| format!("invalid global users ({from})"))?;
    Ok((users, Some(format!("{from}: {}", path.display()))))
}

/// A secret given directly or in a file (never both).
fn secret(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    value_flag: &str,
    file_flag: &str,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!("{value_flag} and {file_flag} are both set; give only one"),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(path)) => dfp_admin::secret_from_file(path)
            .map(Some)
            .with_context(|| format!("cannot read the secret of {file_flag}")),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Args)]
pub(crate) struct ReconfigureArgs {
    /// The service to route to: its Consul name (or, standalone, its DNS name).
    #[arg(long)]
    pub(crate) service_name: String,

    /// URL path the service owns; repeat the flag or separate paths with commas. Required
    /// but for a TCP service (`--req-mode tcp` or `sni`), which is routed by `--src-port`.
    #[arg(long, num_args = 1, required_unless_present = "src_port")]
    pub(crate) service_path: Vec<String>,

    /// Standalone mode: the port the service's instances listen on.
    #[arg(long)]
    pub(crate) port: Option<u16>,

    /// Host-based routing: the domain(s) the service answers for.
    #[arg(long)]
    pub(crate) service_domain: Option<String>,

    /// Regular expression applied to the path before forwarding.
    #[arg(long)]
    pub(crate) req_path_search: Option<String>,

    /// Replacement for --req-path-search.
    #[arg(long)]
    pub(crate) req_path_replace: Option<String>,

    /// Redirect plain HTTP requests to HTTPS.
    #[arg(long)]
    pub(crate) https_only: Option<bool>,

    /// Basic-auth users, `user:password` separated by commas.
    #[arg(long)]
    pub(crate) users: Option<String>,

    /// Consul mode: route the instances of `<service-name>-<service-color>` (blue/green).
    #[arg(long)]
    pub(crate) service_color: Option<String>,

    /// Only these methods are let through (others get 403), separated by commas.
    #[arg(long)]
    pub(crate) allowed_methods: Option<String>,

    /// These methods get 403, separated by commas.
    #[arg(long)]
    pub(crate) denied_methods: Option<String>,

    /// Refuse plain-HTTP requests with 403.
    #[arg(long)]
    pub(crate) deny_http: Option<bool>,

    /// Requests without a client certificate issued by the proxy's --client-ca get 403.
    #[arg(long)]
    pub(crate) verify_client_ssl: Option<bool>,

    /// Compress responses on the way to clients that accept it: gzip or deflate (identity:
    /// none).
    #[arg(long)]
    pub(crate) compression_algo: Option<String>,

    /// The media types compressed, separated by spaces (e.g. "text/html text/css"); none:
    /// every type. Needs --compression-algo.
    #[arg(long)]
    pub(crate) compression_type: Option<String>,

    /// Only clients from these addresses or CIDR blocks are let through (others get 403).
    #[arg(long)]
    pub(crate) allowed_sources: Option<String>,

    /// Clients from these addresses or CIDR blocks get 403.
    #[arg(long)]
    pub(crate) denied_sources: Option<String>,

    /// The instances want a PROXY protocol header (v1 or v2) naming the client on each
    /// connection; such connections carry one client's requests only.
    #[arg(long, value_name = "v1|v2")]
    pub(crate) send_proxy_protocol: Option<String>,

    /// The most requests (or TCP connections) each instance may have in flight at once,
    /// over every thread of the proxy: a full instance is passed over, and when every one is
    /// full the request gets 503.
    #[arg(long, value_name = "N")]
    pub(crate) instance_max_conn: Option<u32>,

    /// With --instance-max-conn: how many seconds a request waits for a place when every
    /// instance is full, instead of the proxy's --queue-timeout (0: no queue, 503 at once).
    #[arg(long, value_name = "SECONDS", requires = "instance_max_conn")]
    pub(crate) timeout_queue: Option<u32>,

    /// With --instance-max-conn: the most requests of the service waiting for a place at
    /// once; one more gets 503 at once.
    #[arg(long, value_name = "N", requires = "instance_max_conn")]
    pub(crate) max_queue: Option<u32>,

    /// Docker Flow Proxy's reqMode: `http` (the default), `tcp` (a TCP service on
    /// `--src-port`: every connection to that port of the proxy goes to an instance; with
    /// `--service-domain`, TLS is ended here for that name) or `sni` (TLS connections to
    /// `--src-port` naming `--service-domain` are passed through to an instance).
    #[arg(long, value_parser = ["http", "tcp", "sni"])]
    pub(crate) req_mode: Option<String>,

    /// The proxy's port a TCP service (`--req-mode tcp` or `sni`) is reached on.
    #[arg(long, requires = "req_mode")]
    pub(crate) src_port: Option<u16>,

    /// Any other reconfigure parameter, as `name=value` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub(crate) params: Vec<(String, String)>,

    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `config` and `routes`: what to show and how.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Print the admin API's JSON answer as it is (for scripts) instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The service to stop routing.
    #[arg(long)]
    pub(crate) service_name: String,

    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

impl ReconfigureArgs {
    /// The admin API's query parameters, with Docker Flow Proxy's names.
    pub(crate) fn query(&self) -> Vec<(String, String)> {
        let mut q = vec![("serviceName".to_owned(), self.service_name.clone())];
        if !self.service_path.is_empty() {
            q.push(("servicePath".to_owned(), self.service_path.join(",")));
        }
        let optional = [
            ("port", self.port.map(|p| p.to_string())),
            ("serviceDomain", self.service_domain.clone()),
            ("reqPathSearch", self.req_path_search.clone()),
            ("reqPathReplace", self.req_path_replace.clone()),
            ("httpsOnly", self.https_only.map(|b| b.to_string())),
            ("users", self.users.clone()),
            ("reqMode", self.req_mode.clone()),
            ("srcPort", self.src_port.map(|p| p.to_string())),
            ("serviceColor", self.service_color.clone()),
            ("allowedMethods", self.allowed_methods.clone()),
            ("deniedMethods", self.denied_methods.clone()),
            ("denyHttp", self.deny_http.map(|b| b.to_string())),
            ("verifyClientSsl", self.verify_client_ssl.map(|b| b.to_string())),
            ("compressionAlgo", self.compression_algo.clone()),
            ("compressionType", self.compression_type.clone()),
            ("allowedSources", self.allowed_sources.clone()),
            ("deniedSources", self.denied_sources.clone()),
            ("sendProxyProtocol", self.send_proxy_protocol.clone()),
            ("instanceMaxConn", self.instance_max_conn.map(|n| n.to_string())),
            ("timeoutQueue", self.timeout_queue.map(|n| n.to_string())),
            ("maxQueue", self.max_queue.map(|n| n.to_string())),
        ];
        q.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))));
        q.extend(self.params.iter().cloned());
        q
    }
}

/// Where the HTTPS listener listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsListen {
    Off,
    At(SocketAddr),
}

/// `off` or an address such as `0.0.0.0:443`.
pub(crate) fn parse_tls_listen(text: &str) -> Result<TlsListen, String> {
    match text.trim() {
        "off" => Ok(TlsListen::Off),
        addr => addr
            .parse()
            .map(TlsListen::At)
            .map_err(|_| format!("{text:?} is not an address such as 0.0.0.0:443, nor `off`")),
    }
}

/// `5s`, `500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration such as 5s or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?} has unknown unit {unit:?}; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("a timeout must be longer than zero".to_owned());
    }
    if d > dfp_routing::LONGEST_TIMEOUT {
        return Err(format!(
            "{text:?} is too long: a timeout may be at most 2147483s (~24.8 days, HAProxy's limit)"
        ));
    }
    Ok(d)
}

/// A duration that may be zero (`0s`, `0ms`, `0`: off), for `--queue-timeout`.
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Err(_) if matches!(text.trim(), "0" | "0s" | "0ms" | "0m" | "0h") => Ok(Duration::ZERO),
        parsed => parsed,
    }
}

/// `--consul-token` (CONSUL_HTTP_TOKEN); the message never repeats the token.
fn parse_consul_token(text: &str) -> Result<dfp_consul::ConsulToken, String> {
    dfp_consul::ConsulToken::new(text).map_err(|e| e.to_string())
}

/// `--trusted-proxies`: addresses or CIDR blocks, separated by commas.
fn parse_sources(text: &str) -> Result<dfp_routing::SourceList, String> {
    dfp_routing::SourceList::parse(text).map_err(|e| e.to_string())
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests;
