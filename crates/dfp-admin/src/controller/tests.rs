//! The controller's unit tests: reconfigure, remove, names in other cases, and store sync,
//! without HTTP. Moved out of `controller.rs` unchanged.

use super::*;

fn request(name: &str, paths: &[&str], port: u16) -> ReconfigureRequest {
    let port = port.to_string();
    let joined = paths.join(",");
    ReconfigureRequest::from_pairs([
        ("serviceName", name),
        ("servicePath", joined.as_str()),
        ("port", port.as_str()),
    ])
    .expect("valid request")
}

// Standalone discovery with an IP literal as the "name" needs no DNS server.
fn controller() -> Controller {
    Controller::new(
        TableHandle::default(),
        Discovery::Dns,
        RouteStore::Memory,
        FollowConfig::default(),
    )
}

#[tokio::test]
async fn reconfigure_publishes_and_reports() {
    let c = controller();
    let report = c.reconfigure(request("127.0.0.1", &["/api"], 8080)).await.expect("valid");
    assert_eq!(report.table_version, 1);
    assert_eq!(report.instances, ["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]);
    let live = c.table().load();
    assert_eq!(live.lookup("/api/x").map(|m| m.backend.service()), Some("127.0.0.1"));
}

#[tokio::test]
async fn conflicts_and_bad_requests_leave_the_table_alone() {
    let c = controller();
    c.reconfigure(request("127.0.0.1", &["/api"], 8080)).await.expect("valid");
    let before = c.table().snapshot();

    let err =
        c.reconfigure(request("127.0.0.2", &["/other", "/api/"], 8080)).await.expect_err("taken");
    assert_eq!(err.status(), 409);
    assert!(err.to_string().contains("/api"), "{err}");

    let mut no_port = request("127.0.0.2", &["/other"], 1);
    no_port.port = None;
    assert_eq!(c.reconfigure(no_port).await.expect_err("port is required").status(), 400);
    assert_eq!(c.remove("nope").await.expect_err("not routed").status(), 404);

    let after = c.table().snapshot();
    assert!(Arc::ptr_eq(&before, &after), "no failed call publishes a table");
    assert_eq!(c.counters().reconfigure_failed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn reconfigure_again_replaces_paths_and_remove_drops_them() {
    let c = controller();
    c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
    c.reconfigure(request("127.0.0.1", &["/b"], 2)).await.expect("same service again");
    {
        let live = c.table().load();
        assert!(live.lookup("/a").is_none());
        let b = live.lookup("/b").expect("moved");
        assert_eq!(
            b.backend.addrs().collect::<Vec<_>>(),
            ["127.0.0.1:2".parse::<SocketAddr>().expect("addr")]
        );
    }
    let removed = c.remove("127.0.0.1").await.expect("routed");
    assert_eq!(removed.table_version, 3);
    assert!(c.table().load().lookup("/b").is_none());
}

#[tokio::test]
async fn a_name_in_another_case_is_the_same_service() {
    let c = controller();
    c.reconfigure(request("localhost", &["/a"], 1)).await.expect("valid");
    // The same service in another case: it moves (no 409 against itself, no second
    // route), and keeps the name it was first given.
    let report = c.reconfigure(request("LocalHost", &["/b"], 1)).await.expect("same service");
    assert_eq!(report.service_name, "localhost");
    let live = c.table().snapshot();
    assert_eq!(live.services().len(), 1);
    assert!(live.lookup("/a").is_none());
    assert_eq!(live.lookup("/b").map(|m| m.backend.service()), Some("localhost"));
    assert_eq!(c.remove("LOCALHOST").await.expect("routed").service_name, "localhost");
    assert_eq!(c.table().snapshot().services().len(), 0);
}

#[tokio::test]
async fn a_store_naming_one_service_in_two_cases_serves_it_once() {
    let c = controller();
    let mut desired = BTreeMap::new();
    for (name, path) in [("LocalHost", "/a"), ("localhost", "/b")] {
        desired.insert(name.to_owned(), request(name, &[path], 80).params.to_map());
    }
    c.sync_from_store(desired).await;
    let live = c.table().snapshot();
    assert_eq!(live.services().len(), 1, "one service, not two routes to the same instances");
    assert_eq!(live.lookup("/a").map(|m| m.backend.service()), Some("LocalHost"));
    assert!(live.lookup("/b").is_none(), "the copy in another case is ignored");
    c.remove("localhost").await.expect("routed, in any case");
    assert_eq!(c.inner.state.lock().await.shadowed.len(), 0, "its copies are deleted too");
}

#[tokio::test]
async fn a_listing_older_than_a_local_write_does_not_undo_it() {
    let c = controller();
    let before = c.inner.store.mark();
    c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
    // A listing requested before the write, answered without it.
    let deferred = c.inner.sync_from_store(BTreeMap::new(), Some(before)).await;
    assert!(deferred, "the follower is told to read again");
    assert!(c.table().load().lookup("/a").is_some(), "the local write stands");
    // A listing requested after the write is the truth.
    let after = c.inner.store.mark();
    assert!(!c.inner.sync_from_store(BTreeMap::new(), Some(after)).await);
    assert!(c.table().load().lookup("/a").is_none());
}

#[tokio::test]
async fn store_sync_adds_updates_removes_in_one_swap_and_skips_conflicts() {
    let c = controller();
    c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
    let mut desired = BTreeMap::new();
    for (name, path) in [("127.0.0.2", "/b"), ("127.0.0.3", "/c"), ("127.0.0.4", "/b")] {
        desired.insert(name.to_owned(), request(name, &[path], 80).params.to_map());
    }
    c.sync_from_store(desired).await;
    let live = c.table().load();
    assert_eq!(live.version(), 2, "one swap for the whole batch");
    assert!(live.lookup("/a").is_none(), "a service gone from the store is removed");
    assert_eq!(live.lookup("/c").map(|m| m.backend.service()), Some("127.0.0.3"));
    // The two services claiming /b conflict: both are left out, the rest is served.
    assert!(live.lookup("/b").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_together_are_each_answered_live_and_refused_one_by_one() {
    let c = controller();
    let mut calls = tokio::task::JoinSet::new();
    for i in 1..=16_u8 {
        let c = c.clone();
        calls.spawn(async move {
            let name = format!("127.0.0.{i}");
            // The last two claim the same path: the first committed has it.
            let path = if i >= 15 { "/shared".to_owned() } else { format!("/s{i}") };
            let result = c.reconfigure(request(&name, &[&path], 80)).await;
            let routed = c.table().load().lookup(&path).map(|m| m.backend.service().to_owned());
            (name, result, routed)
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(done) = calls.join_next().await {
        let (name, result, routed) = done.expect("the call's task ends");
        match result {
            Ok(report) => {
                accepted += 1;
                assert_eq!(routed.as_deref(), Some(name.as_str()), "answered only once live");
                assert!(c.table().load().version() >= report.table_version);
            }
            Err(err) => {
                refused += 1;
                assert_eq!(err.status(), 409, "{name}: {err}");
                assert!(routed.is_some_and(|owner| owner != name), "the other one has /shared");
            }
        }
    }
    assert_eq!((accepted, refused), (15, 1));
    assert_eq!(c.table().load().services().len(), 15);
    assert_eq!(c.counters().reconfigure_ok.load(Ordering::Relaxed), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_called_many_times_at_once_ends_as_one_of_its_calls() {
    let c = controller();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let c = c.clone();
        calls.spawn(
            async move { c.reconfigure(request("127.0.0.1", &[&format!("/v{i}")], 80)).await },
        );
    }
    while let Some(done) = calls.join_next().await {
        done.expect("the call's task ends").expect("a service never conflicts with itself");
    }
    let live = c.table().snapshot();
    let routes: Vec<String> =
        live.services().flat_map(|s| s.prefixes.iter().map(|p| p.as_str().to_owned())).collect();
    assert_eq!(routes.len(), 1, "one service, one path: {routes:?}");
    let state = c.inner.state.lock().await;
    let kept = &state.services["127.0.0.1"].request.service_paths;
    assert_eq!(
        kept.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        routes,
        "what is routed is what is kept"
    );
}
