//! A real Consul agent on loopback, on ports of its own: `-dev` (in memory), or a one-node
//! server with a data directory, for tests that stop and restart Consul and need its state
//! (services, checks, KV) to survive as it does in production. Either may have ACLs on
//! (default deny), the test's own calls then carrying the master token.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use super::{free_port, http_client};

/// A running Consul agent. Stopped (killed) when dropped.
pub struct Consul {
    child: Option<Child>,
    http_port: u16,
    args: Vec<String>,
    /// Sent as `X-Consul-Token` on the test's own calls (the master token, with ACLs on).
    token: Option<String>,
    _data: Option<super::Scratch>,
}

impl Consul {
    /// Starts a dev agent and waits until it has elected itself leader.
    pub async fn start() -> Consul {
        Self::start_with(vec!["-dev".into()], None).await
    }

    /// Starts a dev agent with ACLs on and every call denied unless a token allows it
    /// (`default_policy = "deny"`). `master` is the master token, which the agent also uses
    /// for itself and this guard sends on the test's own calls (registrations, KV reads).
    pub async fn start_with_acl(master: &str) -> Consul {
        let acl = format!(
            r#"-hcl=acl {{ enabled = true default_policy = "deny" tokens {{ master = "{master}" agent = "{master}" }} }}"#
        );
        let mut consul = Self::start_with(vec!["-dev".into(), acl], None).await;
        consul.token = Some(master.to_owned());
        consul
    }

    /// Creates an ACL policy with these `rules` (HCL) and a token holding it, with the master
    /// token; returns the token's SecretID (what `CONSUL_HTTP_TOKEN` takes).
    pub async fn create_token(&self, policy: &str, rules: &str) -> String {
        let answer = self
            .send(reqwest::Method::PUT, "/v1/acl/policy", json!({ "Name": policy, "Rules": rules }))
            .await;
        assert!(answer.get("ID").is_some(), "consul created no policy: {answer}");
        let token = self
            .send(
                reqwest::Method::PUT,
                "/v1/acl/token",
                json!({ "Policies": [{ "Name": policy }] }),
            )
            .await;
        token["SecretID"].as_str().expect("a token has a SecretID").to_owned()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let response = self.request(method, path).json(&body).send().await.expect("consul answers");
        let status = response.status();
        let text = response.text().await.expect("consul's answer");
        assert!(status.is_success(), "consul refused {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("consul JSON ({e}): {text}"))
    }

    /// A request to the agent, with the master token when ACLs are on.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = http_client().request(method, format!("{}{path}", self.url()));
        match &self.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    /// Starts a one-node server whose state lives in a data directory, so that
    /// [`Consul::stop`] then [`Consul::restart`] keeps services, checks and KV.
    pub async fn start_persistent() -> Consul {
        let data = super::Scratch::new();
        let args = vec![
            "-server".into(),
            "-bootstrap-expect=1".into(),
            format!("-data-dir={}", data.path("consul").display()),
            "-hcl=performance { raft_multiplier = 1 }".into(),
        ];
        Self::start_with(args, Some(data)).await
    }

    /// Starts an agent on ports the kernel just handed out. A port can be taken again by
    /// someone else before the agent binds it (tests run in parallel), and the agent then
    /// exits: so a start that does not end with a live leader is retried on fresh ports.
    async fn start_with(mode: Vec<String>, data: Option<super::Scratch>) -> Consul {
        let mut consul =
            Consul { child: None, http_port: 0, args: Vec::new(), token: None, _data: data };
        for attempt in 1..=3 {
            consul.http_port = free_port();
            consul.args = vec!["agent".into()];
            consul.args.extend(mode.iter().cloned());
            consul.args.extend([
                "-bind=127.0.0.1".into(),
                "-client=127.0.0.1".into(),
                format!("-http-port={}", consul.http_port),
                "-dns-port=-1".into(),
                "-grpc-port=-1".into(),
                format!("-serf-lan-port={}", free_port()),
                format!("-serf-wan-port={}", free_port()),
                format!("-server-port={}", free_port()),
                "-log-level=warn".into(),
            ]);
            if consul.try_spawn(Duration::from_secs(15)).await {
                return consul;
            }
            eprintln!("consul did not start on attempt {attempt} (a port was taken?); retrying");
            consul.stop().await;
        }
        panic!("consul did not elect a leader in 3 attempts on fresh ports");
    }

    async fn spawn(&mut self) {
        assert!(
            self.try_spawn(Duration::from_secs(20)).await,
            "consul did not elect a leader within 20 s of a restart on its ports"
        );
    }

    /// Starts the agent and waits up to `within` for it to be alive with a leader.
    async fn try_spawn(&mut self, within: Duration) -> bool {
        let child = Command::new("consul")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start `consul` ({err}): these tests need a real Consul agent on PATH; \
                     README.md, section Getting Consul, says how to install one"
                )
            });
        self.child = Some(child);
        let url = format!("{}/v1/status/leader", self.url());
        let client = http_client();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            // An agent that could not bind its ports has exited: no point waiting.
            if let Some(child) = self.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    return false;
                }
            }
            let leader = match client.get(&url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if !leader.trim().is_empty() && leader.trim() != "\"\"" {
                // Still ours? (If another agent held our HTTP port, ours has exited by now.)
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The agent's HTTP address, as given to `--consul-address`.
    /// The agent's HTTP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.http_port).into()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Registers a service instance at 127.0.0.1:`port`. With `check_passing` set, the
    /// instance gets a TTL check in that state (false: critical, so it is not passing).
    pub async fn register(&self, service: &str, id: &str, port: u16, check_passing: Option<bool>) {
        let mut body = json!({ "Name": service, "ID": id, "Address": "127.0.0.1", "Port": port });
        if let Some(passing) = check_passing {
            body["Check"] = json!({
                "CheckID": format!("{id}-ttl"),
                "TTL": "10m",
                "Status": if passing { "passing" } else { "critical" },
            });
        }
        self.put("/v1/agent/service/register", body).await;
    }

    async fn put(&self, path: &str, body: serde_json::Value) {
        let mut request = self.request(reqwest::Method::PUT, path);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("consul answers");
        assert!(response.status().is_success(), "consul refused {path}: {}", response.status());
    }

    /// Stops the agent (SIGKILL) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the agent again on the same ports (and data directory, if persistent).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.spawn().await;
    }

    /// Removes a service instance.
    pub async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), json!(null)).await;
    }

    /// Sets an instance's TTL check (registered with `check_passing`) to passing or critical.
    pub async fn set_check(&self, id: &str, passing: bool) {
        let verb = if passing { "pass" } else { "fail" };
        self.put(&format!("/v1/agent/check/{verb}/{id}-ttl"), json!(null)).await;
    }

    /// A raw KV value, if the key exists.
    /// The key's `ModifyIndex`: it moves with every write, even of the same value.
    pub async fn kv_modify_index(&self, key: &str) -> Option<u64> {
        let response = self
            .request(reqwest::Method::GET, &format!("/v1/kv/{key}"))
            .send()
            .await
            .expect("consul answers");
        if response.status() == 404 {
            return None;
        }
        let entries: serde_json::Value = response.json().await.expect("kv JSON");
        entries[0]["ModifyIndex"].as_u64()
    }

    pub async fn kv_get(&self, key: &str) -> Option<String> {
        let response = self
            .request(reqwest::Method::GET, &format!("/v1/kv/{key}?raw"))
            .send()
            .await
            .expect("consul answers");
        if response.status() == 404 {
            return None;
        }
        Some(response.text().await.expect("kv body"))
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
