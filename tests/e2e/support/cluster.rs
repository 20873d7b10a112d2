//! A real Consul cluster on loopback: three servers (`-bootstrap-expect=3`) and a client agent
//! joined to them, each on ports of its own, with data directories. Production Consul is such
//! a cluster with agents in front; tests kill its leader or pause (SIGSTOP) a member.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use super::{http_client, Scratch};

const SERVERS: usize = 3;

struct Member {
    child: Option<Child>,
    http_port: u16,
    server_port: u16,
}

/// Three Consul servers and an agent. Every member is killed when dropped.
pub struct ConsulCluster {
    /// The servers, then the agent.
    members: Vec<Member>,
    data: Scratch,
}

impl ConsulCluster {
    /// Starts the cluster and waits until it has a leader and three voting servers, and the
    /// agent sees them (retried on fresh ports if a port was taken meanwhile).
    pub async fn start() -> ConsulCluster {
        for attempt in 1..=3 {
            let mut cluster = Self::spawn();
            if cluster.settled(Duration::from_secs(60)).await {
                return cluster;
            }
            eprintln!("the Consul cluster did not form on attempt {attempt}; retrying");
            cluster.print_logs();
        }
        panic!("the Consul cluster did not elect a leader in 3 attempts");
    }

    fn spawn() -> ConsulCluster {
        let data = Scratch::new();
        // Five ports a member, all distinct: ports taken one at a time and let go can come
        // back twice, and a member that cannot bind exits.
        let mut ports = distinct_ports(5 * (SERVERS + 1)).into_iter();
        let mut port = move || ports.next().expect("enough ports");
        let lan: Vec<u16> = (0..=SERVERS).map(|_| port()).collect();
        let joins: Vec<String> =
            lan[..SERVERS].iter().map(|p| format!("-retry-join=127.0.0.1:{p}")).collect();
        let mut members = Vec::new();
        for (i, lan_port) in lan.iter().enumerate() {
            let (http_port, server_port) = (port(), port());
            let server = i < SERVERS;
            let name = if server { format!("dfp-server-{i}") } else { "dfp-agent".to_owned() };
            let mut args = vec![
                "agent".to_owned(),
                format!("-node={name}"),
                format!("-data-dir={}", data.path(&name).display()),
                "-bind=127.0.0.1".into(),
                "-client=127.0.0.1".into(),
                format!("-http-port={http_port}"),
                "-dns-port=-1".into(),
                "-grpc-port=-1".into(),
                format!("-serf-lan-port={lan_port}"),
                format!("-serf-wan-port={}", port()),
                format!("-server-port={server_port}"),
                "-log-level=warn".into(),
                // A join tried before the others listen is retried in a second, not Consul's 30.
                "-retry-interval=1s".into(),
                "-hcl=performance { raft_multiplier = 1 }".into(),
            ];
            if server {
                args.extend(["-server".into(), format!("-bootstrap-expect={SERVERS}")]);
            }
            args.extend(joins.iter().cloned());
            let log = std::fs::File::create(data.path(&format!("{name}.log"))).expect("log file");
            let child = Command::new("consul")
                .args(&args)
                .stdout(Stdio::from(log.try_clone().expect("log file")))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .expect("consul starts (README.md, section Getting Consul)");
            members.push(Member { child: Some(child), http_port, server_port });
        }
        ConsulCluster { members, data }
    }

    /// Whether, within `within`, the agent sees a leader and three raft peers (false at once
    /// when a member has exited).
    async fn settled(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            let exited = self
                .members
                .iter_mut()
                .filter_map(|m| m.child.as_mut())
                .any(|child| child.try_wait().ok().flatten().is_some());
            if exited {
                return false;
            }
            let peers = self.get_json(&self.agent_url(), "/v1/status/peers").await;
            let leader = self.leader_address().await;
            if peers.as_array().is_some_and(|p| p.len() == SERVERS) && leader.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// The end of each member's log, for a cluster that did not form.
    fn print_logs(&self) {
        for entry in std::fs::read_dir(self.data.path("")).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {}", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }

    async fn get_json(&self, base: &str, path: &str) -> serde_json::Value {
        let client = http_client();
        let answer = client.get(format!("{base}{path}")).timeout(Duration::from_secs(2)).send();
        match answer.await {
            Ok(response) => response.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    async fn leader_address(&self) -> Option<String> {
        let leader = self.get_json(&self.agent_url(), "/v1/status/leader").await;
        leader.as_str().filter(|l| !l.is_empty()).map(str::to_owned)
    }

    /// Which server leads now (as the agent sees it), if one does.
    pub async fn leader(&self) -> Option<usize> {
        let address = self.leader_address().await?;
        self.members[..SERVERS]
            .iter()
            .position(|m| address == format!("127.0.0.1:{}", m.server_port))
    }

    /// The client agent's HTTP address.
    pub fn agent_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.members[SERVERS].http_port)
    }

    /// Server `i`'s HTTP address.
    pub fn server_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].http_port)
    }

    /// Kills server `i` (SIGKILL), as a crashed machine.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) member `i`: alive to the kernel, silent to
    /// everyone (a partitioned or hung agent).
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().and_then(Child::id).expect("member runs");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Registers an instance of `service` at 127.0.0.1:`port` with the agent.
    pub async fn register(&self, service: &str, id: &str, port: u16) {
        let body = json!({ "Name": service, "ID": id, "Address": "127.0.0.1", "Port": port });
        let response = http_client()
            .put(format!("{}/v1/agent/service/register", self.agent_url()))
            .json(&body)
            .send()
            .await
            .expect("the agent answers");
        assert!(response.status().is_success(), "register: {}", response.status());
    }
}

impl Drop for ConsulCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

/// `n` distinct free loopback ports, held together while they are picked.
fn distinct_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}
