//! Reconfigure calls in flight together, as Docker Flow Swarm Listener sends them when a
//! cluster starts: the proxy looks them up side by side and commits the ones queued together
//! in one table change, and that must not be visible to a caller. Each call is answered only
//! once its route is live, a conflict is refused for the one call that has it, and every call
//! answered 200 is stored. Against a real Consul agent, through the real binary.

use tokio::task::JoinSet;

use crate::support::{Consul, Proxy, Upstream};

const SERVICES: usize = 40;

#[tokio::test]
async fn calls_sent_together_are_each_live_when_answered_and_stored() {
    let consul = Consul::start().await;
    let upstream = Upstream::start("burst").await;
    for i in 0..SERVICES {
        consul.register(&format!("svc-{i}"), &format!("svc-{i}-1"), upstream.port(), None).await;
    }
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;

    let mut calls = JoinSet::new();
    for i in 0..SERVICES {
        let client = proxy.client().clone();
        // svc-0 and svc-1 both ask for /shared: whichever is committed first has it.
        let path = if i < 2 { "/shared".to_owned() } else { format!("/svc-{i}") };
        let call = proxy.admin_url(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=svc-{i}&servicePath={path}"
        ));
        let through = proxy.url(&format!("{path}/item"));
        calls.spawn(async move {
            let answer = client.get(call).send().await.expect("the admin API answers");
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap_or_default();
            // Right after the answer, through the proxy.
            let routed = client.get(through).send().await.expect("the proxy answers");
            (i, status, body, routed.status().as_u16())
        });
    }
    let mut refused = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (i, status, body, routed) = done.expect("the call's task ends");
        match status {
            200 => assert_eq!(routed, 200, "svc-{i} answered 200 but not routed yet"),
            409 => {
                assert!(i < 2, "svc-{i} refused: {body}");
                assert!(body.contains("/shared"), "the conflict is named: {body}");
                assert_eq!(routed, 200, "/shared is the other service's");
                refused.push(i);
            }
            other => panic!("svc-{i}: {other} {body}"),
        }
    }
    assert_eq!(refused.len(), 1, "exactly one of the two /shared calls is refused");

    // What was answered 200 is stored, and only that; the table is what was answered.
    for i in 0..SERVICES {
        let stored = consul.kv_get(&format!("docker-flow/services/svc-{i}")).await;
        assert_eq!(stored.is_some(), !refused.contains(&i), "svc-{i} stored: {stored:?}");
    }
    let config = proxy.config().await;
    let routed = config["Services"].as_array().map_or(0, Vec::len);
    assert_eq!(routed, SERVICES - 1, "{config}");
}
