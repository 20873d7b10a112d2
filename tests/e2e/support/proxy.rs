//! The real `docker-flow-proxy` binary, run as a server and as a CLI client.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::{free_port, http_client};

/// Path of the binary under test (built by cargo for this test target).
pub const BIN: &str = env!("CARGO_BIN_EXE_docker-flow-proxy");

/// The admin API's credential variables: taken out of every process a test starts, so that
/// only what a test gives explicitly counts.
pub const CREDENTIAL_ENV: [&str; 11] = [
    "DFP_ADMIN_USER",
    "DFP_ADMIN_PASSWORD",
    "DFP_ADMIN_PASSWORD_FILE",
    "DFP_ADMIN_TOKEN",
    "DFP_ADMIN_TOKEN_FILE",
    // The global users of the proxied services, Docker Flow Proxy's names and ours.
    "USERS",
    "USERS_PASS_ENCRYPTED",
    "DFP_USERS",
    "DFP_USERS_FILE",
    "DFP_USERS_PASS_ENCRYPTED",
    "DFP_SECRETS_DIR",
];

/// A running `docker-flow-proxy server`. Killed when dropped.
pub struct Proxy {
    child: Option<Child>,
    scratch: Option<Scratch>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS listener (`None` when started with `--tls-listen=off`).
    pub tls_addr: Option<SocketAddr>,
    client: reqwest::Client,
}

impl Proxy {
    /// Starts the server with Consul at `consul` (None: standalone) and extra flags, and waits
    /// until its admin API answers `ping`.
    pub async fn start(consul: Option<&str>, extra: &[&str]) -> Proxy {
        Self::start_logging(consul, extra, "warn").await
    }

    /// As [`Proxy::start`], logging at `level` (the log is kept in a file, see [`Proxy::log`],
    /// and printed if the test fails).
    ///
    /// Every proxy gets an HTTPS listener on a free loopback port (the binary's default,
    /// `0.0.0.0:443`, would collide between tests), unless `extra` has `--tls-listen=...`.
    pub async fn start_logging(consul: Option<&str>, extra: &[&str], level: &str) -> Proxy {
        Self::start_with_env(consul, extra, &[], level).await
    }

    /// As [`Proxy::start_logging`], with environment variables set for the server (static
    /// services, `DFP_SERVICE_*`, for example; the credential variables of [`CREDENTIAL_ENV`]
    /// are otherwise removed). Unless a test gives `--secrets-dir` or `DFP_SECRETS_DIR`,
    /// Docker secrets are looked for in an empty scratch directory, never in the machine's
    /// `/run/secrets`.
    pub async fn start_with_env(
        consul: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        level: &str,
    ) -> Proxy {
        // Ports come from the kernel and are free when picked, but another process may take
        // one before the proxy binds it (tests run in parallel); the proxy then exits at once
        // with an error, and the start is retried on fresh ports.
        Self::start_waiting(consul, extra, env, level, true).await
    }

    /// As [`Proxy::start`], returning as soon as the admin API answers at all, perhaps before
    /// the proxy is ready (`ping` answers 503 while it restores its stored routes).
    pub async fn start_unready(consul: Option<&str>, extra: &[&str]) -> Proxy {
        Self::start_waiting(consul, extra, &[], "warn", false).await
    }

    async fn start_waiting(
        consul: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        level: &str,
        until_ready: bool,
    ) -> Proxy {
        for attempt in 1..=3 {
            match Self::try_start(consul, extra, env, level, until_ready).await {
                Ok(proxy) => return proxy,
                Err(log) => eprintln!("the proxy did not start (attempt {attempt}):\n{log}"),
            }
        }
        panic!("the proxy did not start in 3 attempts on fresh ports");
    }

    async fn try_start(
        consul: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        level: &str,
        until_ready: bool,
    ) -> Result<Proxy, String> {
        let mut command = Command::new(BIN);
        command.arg("server");
        // `--listen=ADDR` in `extra` (a port an ACME test CA checks) replaces a free port.
        let addr: SocketAddr = match extra.iter().find_map(|a| a.strip_prefix("--listen=")) {
            Some(given) => given.parse().expect("--listen=ADDR in a test is an address"),
            None => {
                let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
                command.arg(format!("--listen={addr}"));
                addr
            }
        };
        // `--admin-listen=ADDR` in `extra` (e.g. 0.0.0.0:PORT) replaces the loopback default;
        // the test still talks to it on 127.0.0.1.
        let admin_addr = match extra.iter().find_map(|a| a.strip_prefix("--admin-listen=")) {
            Some(given) => {
                let given: SocketAddr =
                    given.parse().expect("--admin-listen=ADDR in a test is an address");
                ([127, 0, 0, 1], given.port()).into()
            }
            None => {
                let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
                command.arg(format!("--admin-listen={admin_addr}"));
                admin_addr
            }
        };
        for name in CREDENTIAL_ENV {
            command.env_remove(name);
        }
        command
            .args(extra)
            .env_remove("CONSUL_ADDRESS")
            // Consul's ACL token: only what a test gives counts.
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .env("RUST_LOG", level)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(consul) = consul {
            command.arg(format!("--consul-address={consul}"));
        }
        let tls_addr = match extra.iter().find_map(|a| a.strip_prefix("--tls-listen=")) {
            Some("off") => None,
            Some(given) => Some(given.parse().expect("--tls-listen=ADDR in a test is an address")),
            None => {
                let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
                command.arg(format!("--tls-listen={tls_addr}"));
                Some(tls_addr)
            }
        };
        let scratch = Scratch::new();
        if !extra.iter().any(|a| a.starts_with("--secrets-dir")) {
            let secrets = scratch.path("secrets");
            std::fs::create_dir_all(&secrets).expect("scratch secrets dir");
            command.env("DFP_SECRETS_DIR", secrets);
        }
        command.envs(env.iter().copied());
        let log = std::fs::File::create(scratch.path("proxy.log")).expect("log file");
        command.stderr(log);
        // Standalone proxies keep state in a file: give each its own unless the test chose one.
        if !extra.iter().any(|a| a.starts_with("--state-file")) {
            command.arg(format!("--state-file={}", scratch.path("state.json").display()));
        }
        let scratch = Some(scratch);
        let child = command.spawn().expect("the docker-flow-proxy binary starts");
        let proxy = Proxy {
            child: Some(child),
            scratch,
            addr,
            admin_addr,
            tls_addr,
            client: http_client(),
        };
        let mut proxy = proxy;
        let ping = proxy.admin_url("/v1/docker-flow-proxy/ping");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let exited = proxy.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                let log = proxy.log();
                proxy.child = None;
                return Err(log);
            }
            let answered = proxy.client.get(&ping).send().await.ok();
            let answered = answered.filter(|r| r.status() == 200 || !until_ready);
            if answered.is_some() {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out after 20s waiting for the proxy's admin API to answer");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// GET through the proxy: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.expect("the proxy answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("the body arrives whole"))
    }

    /// An admin call: (status, JSON answer).
    pub async fn admin(&self, path_and_query: &str) -> (u16, Value) {
        let response =
            self.client.get(self.admin_url(path_and_query)).send().await.expect("admin answers");
        let status = response.status().as_u16();
        let body = response.text().await.expect("admin body");
        let json =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("admin JSON ({e}): {body}"));
        (status, json)
    }

    /// The admin API's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.admin_url("/metrics")).send().await.expect("metrics");
        response.text().await.expect("metrics text")
    }

    /// The live table as `config` reports it.
    pub async fn config(&self) -> Value {
        let (status, json) = self.admin("/v1/docker-flow-proxy/config").await;
        assert_eq!(status, 200, "{json}");
        json
    }

    /// Routes `/` of this standalone proxy to the instance listening on 127.0.0.1:`port`
    /// (standalone, the service `127.0.0.1` resolves to itself), and checks it was accepted.
    pub async fn route_all_to_port(&self, port: u16) {
        let (status, answer) = self
            .admin(&format!(
                "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={port}"
            ))
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    /// Runs the binary as a CLI client of this proxy: `docker-flow-proxy <args>`, with the
    /// admin address given through `DFP_ADMIN` so the command line stays as a user types it.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[]).await
    }

    /// As [`Proxy::cli`], with these environment variables set (e.g. `DFP_ADMIN_TOKEN`); the
    /// admin credential variables of the test's own environment are never passed on.
    pub async fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(BIN);
        for name in CREDENTIAL_ENV {
            command.env_remove(name);
        }
        command
            .args(args)
            .env("DFP_ADMIN", format!("http://{}", self.admin_addr))
            .envs(env.iter().copied())
            .output()
            .await
            .expect("the CLI runs")
    }

    /// An HTTP client of this proxy (no proxy from the environment), for requests a test
    /// builds itself, e.g. with credentials.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends SIGKILL and waits until the process is gone (a crash, for restart tests).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// What the proxy logged so far (stderr).
    pub fn log(&self) -> String {
        self.scratch
            .as_ref()
            .and_then(|s| std::fs::read_to_string(s.path("proxy.log")).ok())
            .unwrap_or_default()
    }

    /// The proxy's resident memory now and at its peak, in kB (from /proc).
    pub fn memory_kb(&self) -> (u64, u64) {
        let pid = self.child.as_ref().and_then(Child::id).expect("the proxy is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the proxy is running");
        let pid = child.id().expect("running child has a pid");
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the proxy exits within 30 s of SIGTERM")
            .expect("exit status")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- proxy {} log ----\n{}", self.addr, self.log());
        }
    }
}

/// A scratch directory under the system's temp dir, removed when dropped.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dfp-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
