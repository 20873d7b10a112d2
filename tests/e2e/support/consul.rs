//! A real `consul agent -dev` on loopback, on ports of its own.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use super::{eventually, free_port, http_client};

/// A running Consul dev agent. Stopped (killed) when dropped.
pub struct Consul {
    child: Option<Child>,
    http_port: u16,
    args: Vec<String>,
}

impl Consul {
    /// Starts an agent and waits until it has elected itself leader.
    pub async fn start() -> Consul {
        let http_port = free_port();
        let args: Vec<String> = vec![
            "agent".into(),
            "-dev".into(),
            "-bind=127.0.0.1".into(),
            "-client=127.0.0.1".into(),
            format!("-http-port={http_port}"),
            "-dns-port=-1".into(),
            "-grpc-port=-1".into(),
            format!("-serf-lan-port={}", free_port()),
            format!("-serf-wan-port={}", free_port()),
            format!("-server-port={}", free_port()),
            "-log-level=warn".into(),
        ];
        let mut consul = Consul {
            child: None,
            http_port,
            args,
        };
        consul.spawn().await;
        consul
    }

    async fn spawn(&mut self) {
        let child = Command::new("consul")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start `consul` ({err}): these tests need a real Consul agent on PATH; \
                     install it with ../shared/bin/install-consul (or from your OS packages)"
                )
            });
        self.child = Some(child);
        let url = format!("{}/v1/status/leader", self.url());
        let client = http_client();
        eventually(Duration::from_secs(20), "consul to elect a leader", || {
            let request = client.get(&url).send();
            async move {
                let body = request.await.ok()?.text().await.ok()?;
                (body.trim() != "\"\"" && !body.trim().is_empty()).then_some(())
            }
        })
        .await;
    }

    /// The agent's HTTP address, as given to `--consul-address`.
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
        let mut request = http_client().put(format!("{}{path}", self.url()));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("consul answers");
        assert!(
            response.status().is_success(),
            "consul refused {path}: {}",
            response.status()
        );
    }

    /// Stops the agent (SIGKILL) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
