use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dfp-mirror-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn keys(stored: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    stored.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn the_state_file_is_changed_per_key_and_never_overwritten_unread() {
    let dir = scratch("state");
    let path = dir.join("state.json");
    let mirror = StoreMirror::new(Backend::StateFile(path.clone()), "route", Duration::ZERO);

    assert!(mirror.load().await.expect("a missing file is empty").0.is_empty());
    mirror.put("web", br#"{"serviceName":"web"}"#, "web").await.expect("writes");
    mirror.put("api", br#"{"serviceName":"api"}"#, "api").await.expect("writes");
    let (stored, _) = mirror.load().await.expect("reads back");
    assert_eq!(keys(&stored), ["api", "web"], "each write keeps what else the file holds");
    assert_eq!(stored["web"], br#"{"serviceName":"web"}"#);
    mirror.delete("web", "web").await.expect("deletes");
    assert_eq!(keys(&mirror.load().await.expect("reads back").0), ["api"]);

    std::fs::write(&path, b"{ not json").expect("corrupt it");
    let err = mirror.load().await.expect_err("a corrupt file is an error");
    let msg = err.to_string();
    assert!(msg.contains("state.json") && msg.contains("not valid JSON"), "{msg}");
    let err = mirror.put("web", b"{}", "web").await.expect_err("and is not written over");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert_eq!(std::fs::read(&path).expect("still there"), b"{ not json");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn pem_files_are_private_and_only_pem_files_are_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("pem").join("certs");
    let mirror = StoreMirror::new(Backend::PemDir(dir.clone()), "certificate", Duration::ZERO);
    assert!(mirror.load().await.expect("a missing directory is empty").0.is_empty());
    mirror.put("site", b"PEM", "site").await.expect("writes");
    let mode = std::fs::metadata(dir.join("site.pem")).expect("written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "readable by the proxy's user only");
    std::fs::write(dir.join("notes.txt"), b"x").expect("a stray file");
    assert_eq!(keys(&mirror.load().await.expect("reads").0), ["site"]);
    mirror.delete("site", "site").await.expect("deletes");
    mirror.delete("site", "site").await.expect("deleting what is gone is fine");
    assert!(mirror.load().await.expect("reads").0.is_empty());
    std::fs::remove_dir_all(dir.parent().expect("scratch")).expect("clean up");
}

#[tokio::test]
async fn every_write_is_numbered_for_the_follower() {
    let mirror = StoreMirror::new(Backend::Memory, "route", Duration::ZERO);
    let mark = mirror.mark();
    mirror.put("Books", b"{}", "books").await.expect("writes");
    assert!(mirror.written_since("books", mark), "recorded under the owner's name");
    assert!(!mirror.written_since("Books", mark) && !mirror.written_since("other", mark));
    let later = mirror.mark();
    assert!(!mirror.written_since("books", later));
    mirror.delete("Books", "books").await.expect("deletes");
    assert!(mirror.written_since("books", later), "a delete counts too");
}

#[test]
fn a_listing_keeps_the_keys_directly_under_the_prefix() {
    let entry = |key: &str| KvEntry { key: key.to_owned(), value: b"v".to_vec() };
    let entries = [
        entry("docker-flow/services/books"),
        entry("docker-flow/services/"),
        entry("docker-flow/services/a/b"),
        entry("docker-flow/other"),
    ];
    assert_eq!(keys(&children(&entries, "docker-flow/services/")), ["books"]);
}
