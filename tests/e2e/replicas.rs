//! Replicas at CI's size (the point 6 asks for 5 proxies and 1,000 services; here 5
//! and 60): proxies sharing one instance name serve a reconfigure sent to any of them, and a
//! replica started cold serves every stored route from its first request.

use std::time::Duration;

use crate::support::{eventually, Consul, Proxy, Upstream};

const REPLICAS: usize = 5;
const SERVICES: usize = 60;
/// How long a route sent to one replica may take to reach the others here. The design target
/// is well under 1 s (a blocking query on the KV prefix answers at once); the slack is for
/// loaded CI machines.
const FOLLOW: Duration = Duration::from_secs(10);

async fn routed(proxy: &Proxy) -> usize {
    proxy.config().await["Services"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_reconfigure_sent_to_any_replica_is_served_by_all_and_a_cold_one_serves_everything() {
    let consul = Consul::start().await;
    let upstream = Upstream::start("svc").await;
    for i in 0..SERVICES {
        consul.register(&format!("svc-{i}"), &format!("svc-{i}-1"), upstream.port(), None).await;
    }
    let mut replicas = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        replicas.push(Proxy::start(Some(&consul.url()), &[]).await);
    }

    // Each service is sent to one replica, in turn; every replica serves it.
    for i in 0..SERVICES {
        let sent_to = &replicas[i % REPLICAS];
        let call =
            format!("/v1/docker-flow-proxy/reconfigure?serviceName=svc-{i}&servicePath=/svc-{i}");
        let (status, answer) = sent_to.admin(&call).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(sent_to.get(&format!("/svc-{i}")).await.0, 200, "live on the one called");
        for (r, replica) in replicas.iter().enumerate() {
            eventually(FOLLOW, &format!("replica {r} to serve /svc-{i}"), || async move {
                (replica.get(&format!("/svc-{i}")).await.0 == 200).then_some(())
            })
            .await;
        }
    }
    for replica in &replicas {
        assert_eq!(routed(replica).await, SERVICES);
    }

    // A remove sent to one replica is gone from all.
    let (status, _) = replicas[3].admin("/v1/docker-flow-proxy/remove?serviceName=svc-7").await;
    assert_eq!(status, 200);
    for (r, replica) in replicas.iter().enumerate() {
        eventually(FOLLOW, &format!("replica {r} to drop /svc-7"), || async move {
            (replica.get("/svc-7").await.0 == 404).then_some(())
        })
        .await;
    }

    // A replica started now restores every route before it serves: its first requests
    // already reach every service.
    let cold = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(routed(&cold).await, SERVICES - 1);
    for i in (0..SERVICES).filter(|&i| i != 7) {
        assert_eq!(cold.get(&format!("/svc-{i}")).await.0, 200, "/svc-{i} on the cold replica");
    }
    assert_eq!(cold.get("/svc-7").await.0, 404);
}

/// The replicas listed in `config?stats=true` (`Proxy.Replicas`): (admin address, `This`).
async fn listed_replicas(proxy: &Proxy) -> Option<Vec<(String, bool)>> {
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/config?stats=true").await;
    assert_eq!(status, 200, "{answer}");
    let listed = answer["Proxy"]["Replicas"].as_array()?;
    Some(
        listed
            .iter()
            .map(|r| (r["Admin"].as_str().unwrap_or_default().to_owned(), r["This"] == true))
            .collect(),
    )
}

#[tokio::test]
async fn the_dashboard_lists_the_replicas_sharing_an_instance_name() {
    let consul = Consul::start().await;
    let a = Proxy::start(Some(&consul.url()), &[]).await;
    let mut b = Proxy::start(Some(&consul.url()), &[]).await;
    let other = Proxy::start(Some(&consul.url()), &["--instance-name=elsewhere"]).await;
    let (a_admin, b_admin) = (a.admin_addr.to_string(), b.admin_addr.to_string());

    let both = eventually(Duration::from_secs(20), "both replicas listed by the first", || async {
        listed_replicas(&a).await.filter(|l| l.len() == 2)
    })
    .await;
    assert!(both.contains(&(a_admin.clone(), true)), "{both:?}");
    assert!(both.contains(&(b_admin.clone(), false)), "{both:?}");
    // Another instance name is another set of replicas.
    let alone = eventually(Duration::from_secs(20), "the other instance lists itself", || async {
        listed_replicas(&other).await.filter(|l| !l.is_empty())
    })
    .await;
    assert_eq!(alone, vec![(other.admin_addr.to_string(), true)]);

    // A replica that stops takes its mark with it.
    assert!(b.terminate().await.success());
    let one =
        eventually(Duration::from_secs(20), "the stopped replica gone from the list", || async {
            listed_replicas(&a).await.filter(|l| l.len() == 1)
        })
        .await;
    assert_eq!(one, vec![(a_admin, true)]);

    // Standalone there is no list.
    let standalone = Proxy::start(None, &[]).await;
    assert_eq!(listed_replicas(&standalone).await, None);
}
