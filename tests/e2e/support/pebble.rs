//! A real ACME CA for the tests: Let's Encrypt's test server `pebble` (Debian's package), with
//! its companion `pebble-challtestsrv` as the DNS server that tells pebble every name is
//! 127.0.0.1. pebble checks HTTP-01 challenges at `<name>:<httpPort>`: the proxy's plain
//! listener, given here.
//!
//! Its own HTTPS (the ACME directory) uses a certificate from the tests' CA, which the proxy
//! is told to trust with `--acme-ca-cert`; what it issues chains to a root of its own, made at
//! each start and read from its management API ([`Pebble::issuing_root`]).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{eventually, free_port, Scratch};
use crate::tls::Ca;

/// pebble and its DNS server, stopped when dropped.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Option<Child>,
    scratch: Scratch,
    pub acme_port: u16,
    management_port: u16,
    dns_port: u16,
    http_port: u16,
    tls_port: u16,
    validity: Duration,
    /// The tests' CA (pebble's own HTTPS certificate is issued by it).
    pub ca_file: std::path::PathBuf,
    client: reqwest::Client,
}

impl Pebble {
    /// Starts pebble, checking HTTP-01 challenges on 127.0.0.1:`http_port` and issuing
    /// certificates valid for `validity` (whole seconds).
    pub async fn start(http_port: u16, validity: Duration) -> Pebble {
        Self::start_with(http_port, free_port(), validity).await
    }

    /// As [`Pebble::start`], checking TLS-ALPN-01 challenges on 127.0.0.1:`tls_port`.
    pub async fn start_with(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        let scratch = Scratch::new();
        let ca = Ca::new();
        let issued = ca.issue(&["localhost", "127.0.0.1"]);
        let server_pem = scratch.path("pebble-server.pem");
        std::fs::write(&server_pem, &issued.pem).expect("pebble's certificate file");
        let ca_file = scratch.path("tests-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("the tests' CA file");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA PEM")])
            .build()
            .expect("reqwest client builds");
        let mut pebble = Pebble {
            pebble: None,
            dns: None,
            scratch,
            acme_port: free_port(),
            management_port: free_port(),
            dns_port: free_port(),
            http_port,
            tls_port,
            validity,
            ca_file,
            client,
        };
        let dns_log = std::fs::File::create(pebble.scratch.path("dns.log")).expect("log file");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{}", pebble.dns_port))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-management")
            .arg(format!("127.0.0.1:{}", free_port()))
            .stdout(dns_log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv starts (apt-get install pebble)");
        pebble.dns = Some(dns);
        pebble.spawn(&server_pem).await;
        pebble
    }

    async fn spawn(&mut self, server_pem: &std::path::Path) {
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.acme_port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": server_pem,
            "privateKey": server_pem,
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": self.validity.as_secs(),
        }});
        let config_file = self.scratch.path("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("pebble's config");
        let log = std::fs::File::create(self.scratch.path("pebble.log")).expect("log file");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            // Validate at once (pebble otherwise sleeps up to 15 s before each validation).
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Accept every nonce (pebble otherwise rejects 5% of good ones to test clients).
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble starts (apt-get install pebble)");
        self.pebble = Some(child);
        let directory = self.directory();
        let client = self.client.clone();
        eventually(Duration::from_secs(20), "pebble's ACME directory answers", || {
            let (client, directory) = (client.clone(), directory.clone());
            async move { client.get(&directory).send().await.ok().filter(|r| r.status() == 200) }
        })
        .await;
    }

    /// The ACME directory URL the proxy is given.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The flags that point a proxy at this pebble.
    pub fn proxy_flags(&self) -> Vec<String> {
        vec![
            "--acme-agree-tos".to_owned(),
            format!("--acme-directory={}", self.directory()),
            format!("--acme-ca-cert={}", self.ca_file.display()),
            "--acme-email=ops@example.com".to_owned(),
            "--acme-check-every=1s".to_owned(),
            "--acme-retry-after=2s".to_owned(),
        ]
    }

    /// The root the issued certificates chain to (PEM), for a client that verifies them.
    pub async fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let response = self.client.get(&url).send().await.expect("pebble's management API");
        assert_eq!(response.status(), 200, "pebble's root");
        response.text().await.expect("the root's PEM")
    }

    /// Stops pebble (its DNS server stays): the CA is down.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [self.pebble.as_mut(), self.dns.as_mut()].into_iter().flatten() {
            let _ = child.start_kill();
        }
    }
}
