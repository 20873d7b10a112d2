//! `reconfigure`, `remove`, `ping`, `config` and `routes`: thin clients of a running proxy's
//! admin API.

use std::time::Duration;

use anyhow::{bail, Context as _};
use dfp_admin::Credentials;
use serde_json::Value;

/// Calls `endpoint` on the admin API at `admin` with `query`, sending `credentials` (a bearer
/// token if one is set, else basic auth if a user is); returns the answer's body on success.
///
/// A failure answer (4xx/5xx) becomes an error carrying the server's `Message`, so `main`
/// prints it on stderr and exits non-zero.
pub(crate) async fn call(
    admin: &str,
    credentials: &Credentials,
    endpoint: &str,
    query: &[(String, String)],
) -> anyhow::Result<String> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") { base.to_owned() } else { format!("http://{base}") };
    let url =
        reqwest::Url::parse_with_params(&format!("{base}/v1/docker-flow-proxy/{endpoint}"), query)
            .with_context(|| {
                format!("invalid admin address {admin:?}; give a URL such as http://127.0.0.1:8080")
            })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .context("could not set up the HTTP client")?;
    let mut request = http.get(url);
    if let Some(token) = credentials.token() {
        request = request.bearer_auth(token);
    } else if let Some((user, password)) = credentials.basic() {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.with_context(|| {
        format!(
            "cannot reach the admin API at {base}; is `docker-flow-proxy server` running there? \
             (set --admin or DFP_ADMIN to its admin address)"
        )
    })?;
    let status = response.status();
    let body = response.text().await.context("the admin API's answer was cut off")?;
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("Message").and_then(Value::as_str).map(str::to_owned));
    if !status.is_success() {
        bail!("{} ({status})", message.unwrap_or_else(|| body.trim().to_owned()));
    }
    Ok(body)
}
