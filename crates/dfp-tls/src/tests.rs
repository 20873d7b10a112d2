//! Validation and SNI resolution, on certificates made here with rcgen.

use std::sync::Arc;

use rcgen::{date_time_ymd, CertificateParams, DnType, KeyPair};

use super::*;

/// A self-signed certificate for `names` with its key, as one PEM text (certificate first).
fn pem(names: &[&str]) -> String {
    pem_with(names, |_| {})
}

fn pem_with(names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate().expect("ring makes a P-256 key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("valid names");
    edit(&mut params);
    let cert = params.self_signed(&key).expect("rcgen signs");
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn cert(name: &str, names: &[&str]) -> Arc<Certificate> {
    Arc::new(Certificate::from_pem(name, pem(names).as_bytes()).expect("a valid certificate"))
}

fn err(name: &str, pem: &str) -> CertError {
    Certificate::from_pem(name, pem.as_bytes()).expect_err("refused")
}

#[test]
fn a_valid_pem_is_read_with_its_names_and_validity() {
    let text = pem_with(&["Shop.Example", "*.api.example"], |p| {
        p.not_before = date_time_ymd(2020, 1, 2);
        p.not_after = date_time_ymd(2099, 12, 31);
    });
    let c = Certificate::from_pem("shop", text.as_bytes()).expect("valid");
    assert_eq!(c.name(), "shop");
    assert_eq!(c.dns_names(), ["shop.example", "*.api.example"]);
    assert_eq!(c.not_after_rfc3339(), "2099-12-31T00:00:00Z");
    assert_eq!(der::rfc3339(c.not_before()), "2020-01-02T00:00:00Z");

    // Key first, then the certificate: the order of sections does not matter.
    let (cert_part, key_part) = text.split_at(text.find("-----BEGIN PRIVATE KEY").expect("key"));
    let swapped = format!("{key_part}{cert_part}");
    assert!(Certificate::from_pem("shop", swapped.as_bytes()).is_ok());
}

#[test]
fn the_common_name_is_the_fallback_when_there_is_no_san() {
    let text = pem_with(&[], |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Example Org");
        p.distinguished_name.push(DnType::CommonName, "legacy.example");
    });
    let c = Certificate::from_pem("legacy", text.as_bytes()).expect("valid");
    assert_eq!(c.dns_names(), ["legacy.example"]);
}

/// What is sent, and how it must be refused.
type Refusal = (&'static str, String, fn(&CertError) -> bool);

#[test]
fn bad_input_is_refused_with_a_reason() {
    let good = pem(&["a.example"]);
    let (cert_part, key_part) = good.split_at(good.find("-----BEGIN PRIVATE KEY").expect("key"));
    let other = pem(&["a.example"]);
    let other_key = &other[other.find("-----BEGIN PRIVATE KEY").expect("key")..];
    let truncated = &good[..good.len() - 30];
    let corrupt = good.replacen("MII", "M!I", 1);

    let cases: [Refusal; 8] = [
        ("not PEM", "hello".to_owned(), |e| matches!(e, CertError::NotPem)),
        ("no END line", truncated.to_owned(), |e| matches!(e, CertError::InvalidPem(_))),
        ("bad base64", corrupt, |e| {
            matches!(e, CertError::InvalidPem(_) | CertError::BadCertificate(_))
        }),
        ("key only", key_part.to_owned(), |e| matches!(e, CertError::NoCertificate)),
        ("certificate only", cert_part.to_owned(), |e| matches!(e, CertError::NoKey)),
        ("two keys", format!("{good}{other_key}"), |e| matches!(e, CertError::SeveralKeys(2))),
        ("another certificate's key", format!("{cert_part}{other_key}"), |e| {
            matches!(e, CertError::KeyMismatch)
        }),
        (
            "garbage certificate",
            format!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{key_part}"),
            |e| matches!(e, CertError::BadCertificate(_)),
        ),
    ];
    for (what, text, expected) in cases {
        let e = err("x", &text);
        assert!(expected(&e), "{what}: {e:?}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn certificates_outside_their_validity_are_refused() {
    let expired = pem_with(&["old.example"], |p| {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2001, 1, 1);
    });
    let e = err("old", &expired);
    assert!(matches!(e, CertError::Expired { .. }), "{e:?}");
    assert!(e.to_string().contains("2001-01-01T00:00:00Z"), "{e}");

    let future = pem_with(&["new.example"], |p| {
        p.not_before = date_time_ymd(2090, 1, 1);
        p.not_after = date_time_ymd(2091, 1, 1);
    });
    assert!(matches!(err("new", &future), CertError::NotYetValid { .. }));
    // The same certificate is fine at a time inside its window.
    let inside = 3_786_912_000 + 86_400; // 2090-01-02
    assert!(Certificate::from_pem_at("new", future.as_bytes(), inside).is_ok());
}

#[test]
fn names_are_checked_because_they_become_files_and_keys() {
    for good in ["default", "shop.example", "a_b-c.1", "X"] {
        assert!(valid_name(good), "{good}");
    }
    let long = "a".repeat(129);
    for bad in ["", ".hidden", "a/b", "..", "a b", "ä", long.as_str()] {
        assert!(!valid_name(bad), "{bad}");
        assert!(matches!(err(bad, &pem(&["a.example"])), CertError::InvalidName(_)));
    }
}

/// Which certificate a handshake asking for `sni` gets, by name.
fn pick(set: &CertSet, sni: Option<&str>) -> Option<String> {
    set.resolve(sni).map(|c| c.name().to_owned())
}

#[test]
fn sni_picks_exact_then_wildcard_one_label_deep_then_default() {
    let set = CertSet::new([
        cert("first", &["first.example"]),
        cert("shop", &["shop.example", "www.shop.example"]),
        cert("wild", &["*.shop.example"]),
        cert("api", &["API.example."]),
    ]);
    let table: [(Option<&str>, &str); 10] = [
        (Some("shop.example"), "shop"),
        (Some("www.shop.example"), "shop"), // exact beats the wildcard
        (Some("img.shop.example"), "wild"),
        (Some("IMG.Shop.Example."), "wild"), // case and a trailing dot do not matter
        (Some("a.img.shop.example"), "first"), // a wildcard covers one label only
        (Some("api.example"), "api"),
        (Some("example"), "first"),
        (Some("unknown.example"), "first"),
        (Some("first.example"), "first"),
        (None, "first"), // no SNI (a client that dialled an IP): the default
    ];
    for (sni, expected) in table {
        assert_eq!(pick(&set, sni).as_deref(), Some(expected), "{sni:?}");
    }
}

#[test]
fn a_certificate_named_default_is_the_default() {
    let set = CertSet::new([cert("first", &["first.example"]), cert("default", &["d.example"])]);
    assert_eq!(pick(&set, Some("nothing.example")).as_deref(), Some("default"));
    assert_eq!(pick(&set, None).as_deref(), Some("default"));
    assert_eq!(pick(&set, Some("first.example")).as_deref(), Some("first"));
    assert!(CertSet::new([]).resolve(Some("a.example")).is_none(), "nothing to serve");
}

#[test]
fn the_same_name_replaces_in_place_and_the_longest_valid_certificate_wins() {
    let short = Arc::new(
        Certificate::from_pem(
            "old",
            pem_with(&["both.example"], |p| p.not_after = date_time_ymd(2090, 1, 1)).as_bytes(),
        )
        .expect("valid"),
    );
    let long = Arc::new(
        Certificate::from_pem(
            "renewed",
            pem_with(&["both.example"], |p| p.not_after = date_time_ymd(2095, 1, 1)).as_bytes(),
        )
        .expect("valid"),
    );
    for order in [[short.clone(), long.clone()], [long.clone(), short.clone()]] {
        let set = CertSet::new(order);
        assert_eq!(pick(&set, Some("both.example")).as_deref(), Some("renewed"));
    }

    let set = CertSet::new([cert("a", &["a.example"]), cert("b", &["b.example"])]);
    let replaced = CertSet::new(set.iter().cloned().chain([cert("a", &["a2.example"])]));
    let names: Vec<&str> = replaced.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["a", "b"], "a replaced name keeps its place (and stays the default)");
    assert_eq!(pick(&replaced, Some("a2.example")).as_deref(), Some("a"));
    assert_eq!(pick(&replaced, Some("a.example")).as_deref(), Some("a"), "the default");
}

#[test]
fn the_store_swaps_whole_sets() {
    let store = CertStore::new();
    assert!(store.load().is_empty());
    let before = store.load();
    store.publish(CertSet::new([cert("a", &["a.example"])]));
    assert!(before.is_empty(), "a loaded set never changes");
    assert_eq!(store.load().len(), 1);
}

#[test]
fn a_directory_loads_in_name_order_and_a_bad_file_is_named() {
    let dir = std::env::temp_dir().join(format!("dfp-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("b.pem"), pem(&["b.example"])).expect("write");
    std::fs::write(dir.join("a.pem"), pem(&["a.example"])).expect("write");
    std::fs::write(dir.join("notes.txt"), "not a certificate").expect("write");
    let loaded = load_dir(&dir).expect("loads");
    let names: Vec<&str> = loaded.iter().map(Certificate::name).collect();
    assert_eq!(names, ["a", "b"]);

    std::fs::write(dir.join("c.pem"), "hello").expect("write");
    let e = load_dir(&dir).expect_err("a bad file stops the load");
    assert!(e.to_string().contains("c.pem") && e.to_string().contains("not PEM"), "{e}");
    assert!(load_dir(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).expect("clean up");
}
