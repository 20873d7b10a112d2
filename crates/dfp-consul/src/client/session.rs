//! Consul sessions and the KV locks held by them: what lets replicas that share a store agree
//! that only one of them does a job (talk to the ACME CA for a name), and see which of them are
//! alive (a key held by each replica's session disappears with it).
//!
//! A session lives as long as its holder renews it within its TTL. A key acquired with it is
//! held until released or until the session ends: a replica that dies loses its locks when its
//! TTL runs out, with no one having to clean up.

use std::time::Duration;

use serde::Deserialize;

use super::{kv_path, Call, ConsulClient, ConsulError, Needs};

/// What happens to the keys a session holds when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The keys stay, unlocked (a lock: the next holder finds the last value).
    Release,
    /// The keys are deleted (a presence mark: the key is there while its holder lives).
    Delete,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl ConsulClient {
    /// Creates a session named `name` (shown in Consul's UI) that ends unless renewed within
    /// `ttl` (Consul takes 10 s to 24 h), after which its locks cannot be taken for
    /// `lock_delay`. Returns its ID.
    pub async fn session_create(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        end: SessionEnd,
    ) -> Result<String, ConsulError> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs().max(10)),
            "LockDelay": format!("{}ms", lock_delay.as_millis()),
            "Behavior": match end { SessionEnd::Release => "release", SessionEnd::Delete => "delete" },
        });
        let mut call = Call::get(&["v1", "session", "create"]);
        call.method = reqwest::Method::PUT;
        call.needs = Needs::Fixed("session:write on the agent's node");
        call.body = Some(body.to_string().into_bytes());
        let created: Created = self.call(call).await?.json()?;
        Ok(created.id)
    }

    /// Renews session `id`; false when Consul no longer knows it (it ended: its locks are
    /// gone, and the holder must make a new session and take them again).
    pub async fn session_renew(&self, id: &str) -> Result<bool, ConsulError> {
        let segments = ["v1", "session", "renew", id];
        let mut call = Call::get(&segments);
        call.method = reqwest::Method::PUT;
        call.needs = Needs::Fixed("session:write on the agent's node");
        call.missing_is_empty = true;
        let answer = self.call(call).await?;
        Ok(answer.status != reqwest::StatusCode::NOT_FOUND)
    }

    /// Ends session `id` now (its keys are released or deleted as it was made to).
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        let segments = ["v1", "session", "destroy", id];
        let mut call = Call::get(&segments);
        call.method = reqwest::Method::PUT;
        call.needs = Needs::Fixed("session:write on the agent's node");
        self.call(call).await.map(drop)
    }

    /// Stores `value` at `key` if no other session holds it, and holds it for `session`.
    /// Returns whether this session holds it now (true also when it already did).
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: Vec<u8>,
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.kv_lock_call(key, Some(value), ("acquire", session)).await
    }

    /// Lets go of `key` held by `session` (its value stays). Returns whether it was released.
    pub async fn kv_release(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        self.kv_lock_call(key, None, ("release", session)).await
    }

    async fn kv_lock_call(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        (verb, session): (&'static str, &str),
    ) -> Result<bool, ConsulError> {
        let segments = kv_path(key);
        let mut call = Call::get(&segments);
        call.method = reqwest::Method::PUT;
        call.needs = Needs::KeyWrite(key);
        call.query.push((verb, session.to_owned()));
        call.body = Some(value.unwrap_or_default());
        let answer = self.call(call).await?;
        answer.json::<bool>()
    }

    /// The value of one key, or None when there is no such key.
    pub async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, ConsulError> {
        let segments = kv_path(key);
        let mut call = Call::get(&segments);
        call.needs = Needs::KeyRead(key);
        call.query.push(("raw", "true".to_owned()));
        call.query.push(("consistent", "true".to_owned()));
        call.missing_is_empty = true;
        let answer = self.call(call).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(answer.body.to_vec()))
    }
}
