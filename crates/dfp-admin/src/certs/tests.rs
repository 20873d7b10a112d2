//! Unit tests of `certs.rs`, apart from the code so each file stays readable on its own.

use std::time::Duration;

use dfp_consul::{Indexed, KvEntry};

use super::*;

fn pem(names: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("names")
            .self_signed(&key)
            .expect("signs");
    format!("{}{}", cert.pem(), key.serialize_pem()).into_bytes()
}

fn served(admin: &CertAdmin) -> Vec<String> {
    admin.inner.live.load().iter().map(|c| c.name().to_owned()).collect()
}

#[tokio::test]
async fn uploads_are_stored_as_private_files_restored_and_deleted() {
    let dir = std::env::temp_dir().join(format!("dfp-certs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = RouteStore::File(dir.join("state.json"));
    let admin = CertAdmin::new(CertStore::new(), &store, Vec::new(), &FollowConfig::default());
    admin.start().await.expect("an empty start");
    assert!(served(&admin).is_empty());

    admin.upload(&[("certName", "shop")], Bytes::from(pem(&["shop.example"]))).await.expect("ok");
    let file = dir.join("certs").join("shop.pem");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).expect("written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is readable by the proxy's user only");

    let bad = admin.upload(&[("certName", "bad")], Bytes::from_static(b"nope")).await;
    assert!(matches!(bad, Err(AdminError::InvalidCert { .. })), "{bad:?}");
    let bad = admin.upload(&[("certName", "../x")], Bytes::from(pem(&["x.example"]))).await;
    assert!(matches!(bad, Err(AdminError::InvalidParameter { .. })), "{bad:?}");
    assert_eq!(served(&admin), ["shop"], "bad input changes nothing");

    let restarted = CertAdmin::new(CertStore::new(), &store, Vec::new(), &FollowConfig::default());
    restarted.start().await.expect("restores");
    assert_eq!(served(&restarted), ["shop"]);
    let listed = restarted.list().await;
    assert_eq!(listed.certs[0].dns_names, ["shop.example"]);
    assert!(listed.certs[0].default);

    restarted.delete(&[("certName", "shop")]).await.expect("deleted");
    assert!(!file.exists());
    assert!(served(&restarted).is_empty());
    let missing = restarted.delete(&[("certName", "shop")]).await;
    assert!(matches!(missing, Err(AdminError::NoSuchCert(_))), "{missing:?}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn certs_dir_certificates_come_first_and_cannot_be_deleted() {
    let from_dir = Certificate::from_pem("static", &pem(&["static.example"])).expect("valid");
    let admin = CertAdmin::new(
        CertStore::new(),
        &RouteStore::Memory,
        vec![from_dir],
        &FollowConfig::default(),
    );
    admin.start().await.expect("starts");
    admin.upload(&[("certName", "later")], Bytes::from(pem(&["later.example"]))).await.expect("ok");
    assert_eq!(served(&admin), ["static", "later"]);
    let refused = admin.delete(&[("certName", "static")]).await;
    assert!(matches!(refused, Err(AdminError::CertFromDir { .. })), "{refused:?}");

    // An upload under the directory certificate's name takes its place, and deleting it
    // brings the directory's one back.
    admin.upload(&[("certName", "static")], Bytes::from(pem(&["new.example"]))).await.expect("ok");
    let live = admin.inner.live.load();
    assert_eq!(
        live.get("static").map(|c| c.dns_names().to_vec()),
        Some(vec!["new.example".to_owned()])
    );
    admin.delete(&[("certName", "static")]).await.expect("deleted");
    let live = admin.inner.live.load();
    assert_eq!(
        live.get("static").map(|c| c.dns_names().to_vec()),
        Some(vec!["static.example".to_owned()])
    );
}

#[test]
fn store_sync_parses_only_what_changed_and_skips_what_is_refused() {
    let mut state = State::default();
    let a = pem(&["a.example"]);
    let mut desired =
        BTreeMap::from([("a".to_owned(), Pem(a.clone())), ("b".to_owned(), Pem(b"junk".to_vec()))]);
    let synced = |changed, deferred| Synced { changed, deferred };
    assert_eq!(state.sync(desired.clone(), |_| false), synced(true, false));
    assert_eq!(state.order, ["a"]);
    assert!(state.refused.contains_key("b"));
    assert!(!format!("{state:?}").contains("PRIVATE"), "Debug never shows a key");
    assert_eq!(state.sync(desired.clone(), |_| false), synced(false, false), "no swap");
    desired.remove("a");
    // Written here since the listing was asked for: left, and the store read again.
    assert_eq!(state.sync(desired.clone(), |n| n == "a"), synced(false, true));
    assert_eq!(state.order, ["a"]);
    assert_eq!(state.sync(desired, |_| false), synced(true, false));
    assert!(state.stored.is_empty() && state.order.is_empty());
}

type Listing = Result<Indexed<Vec<KvEntry>>, ConsulError>;

/// One listing the follower asked for: at which index, for how long, and where to answer.
type Ask = (u64, Duration, tokio::sync::oneshot::Sender<Listing>);

/// The follower of `admin`, listing through the test: each listing it asks for arrives on
/// the receiver, and waits there until the test answers it. So the test orders a
/// listing against uploads and deletes exactly as a slow Consul answer would.
fn scripted_follower(
    admin: &CertAdmin,
    index: u64,
) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<Ask>) {
    let (asks_tx, asks) = tokio::sync::mpsc::unbounded_channel::<Ask>();
    let list = move |index, wait| {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let asked = asks_tx.send((index, wait, answer)).is_ok();
        async move {
            match answered.await {
                Ok(listing) if asked => listing,
                _ => Err(ConsulError::NoAddress),
            }
        }
    };
    let task = tokio::spawn(crate::mirror::follow_with(
        Arc::downgrade(&admin.inner),
        "dfp/certs/".to_owned(),
        index,
        list,
    ));
    (task, asks)
}

fn listing(certs: &[(&str, &[u8])], index: u64) -> Listing {
    let value = certs
        .iter()
        .map(|(name, pem)| KvEntry { key: format!("dfp/certs/{name}"), value: pem.to_vec() })
        .collect();
    Ok(Indexed { value, index })
}

#[tokio::test]
async fn a_listing_asked_for_before_an_upload_or_delete_does_not_undo_it() {
    let wait = Duration::from_secs(7);
    let follow = FollowConfig { consul_wait: wait, ..FollowConfig::default() };
    let admin = CertAdmin::new(CertStore::new(), &RouteStore::Memory, Vec::new(), &follow);
    admin.start().await.expect("starts");
    let (task, mut asks) = scripted_follower(&admin, 5);

    // The follower asks, blocking for the configured wait (not the default 30 s) ...
    let (index, asked_wait, answer) = asks.recv().await.expect("the follower lists");
    assert_eq!((index, asked_wait), (5, wait));
    // ... an upload lands meanwhile, and Consul's answer predates it.
    let a = pem(&["a.example"]);
    admin.upload(&[("certName", "a")], Bytes::from(a.clone())).await.expect("ok");
    answer.send(listing(&[], 6)).expect("the follower waits");
    // The follower reads again at once, and the upload was never unpublished.
    let (index, asked_wait, answer) = asks.recv().await.expect("reads again");
    assert_eq!((index, asked_wait), (0, wait), "read again without blocking");
    assert_eq!(served(&admin), ["a"], "the stale listing did not unpublish the upload");
    // A listing asked for after the upload decides: with it, nothing changes ...
    answer.send(listing(&[("a", &a)], 7)).expect("the follower waits");
    let (index, _, answer) = asks.recv().await.expect("blocks again");
    assert_eq!(index, 7);
    assert_eq!(served(&admin), ["a"]);

    // The same for a delete: a listing asked for before it, answered with the
    // certificate, does not bring it back.
    admin.delete(&[("certName", "a")]).await.expect("deleted");
    answer.send(listing(&[("a", &a)], 8)).expect("the follower waits");
    let (index, _, answer) = asks.recv().await.expect("reads again");
    assert_eq!(index, 0);
    assert!(served(&admin).is_empty(), "the stale listing did not bring it back");

    // Another replica's changes are followed as before.
    let b = pem(&["b.example"]);
    answer.send(listing(&[("b", &b)], 9)).expect("the follower waits");
    let (index, _, answer) = asks.recv().await.expect("blocks again");
    assert_eq!(index, 9);
    assert_eq!(served(&admin), ["b"]);
    answer.send(listing(&[], 10)).expect("the follower waits");
    let (index, _, _answer) = asks.recv().await.expect("blocks again");
    assert_eq!(index, 10);
    assert!(served(&admin).is_empty(), "another replica's delete is followed");
    task.abort();
}
