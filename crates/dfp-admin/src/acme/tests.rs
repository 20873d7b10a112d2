use super::*;

#[test]
fn a_certificate_is_renewed_two_thirds_through_its_life() {
    // 90 days from day 0: renewed on day 60.
    let day = 24 * 3600;
    assert_eq!(renew_after((0, 90 * day)), 60 * day);
    // A short-lived one (the test CA's 30 s): 20 s in.
    assert_eq!(renew_after((1_000, 1_030)), 1_020);
    // A certificate whose dates are the wrong way round is due at once.
    assert_eq!(renew_after((2_000, 1_000)), 2_000);
}

#[test]
fn failures_wait_longer_each_time_up_to_a_day() {
    let first = Duration::from_secs(300);
    assert_eq!(backoff(first, 1), Duration::from_secs(300));
    assert_eq!(backoff(first, 2), Duration::from_secs(600));
    assert_eq!(backoff(first, 4), Duration::from_secs(2400));
    assert_eq!(backoff(first, 30), MAX_BACKOFF);
    assert_eq!(backoff(first, u32::MAX), MAX_BACKOFF);
    // Let's Encrypt allows 5 failed validations per name an hour: from a 5-minute start the
    // fifth failure comes after 5 + 10 + 20 + 40 = 75 minutes.
    let first_four: Duration = (1..=4).map(|n| backoff(first, n)).sum();
    assert!(first_four >= Duration::from_secs(3600));
}

#[test]
fn obtained_certificates_have_names_the_store_takes() {
    assert_eq!(cert_name("shop.example.com"), "acme-shop.example.com");
    assert!(dfp_tls::valid_name(&cert_name("a-b_c.example.com")));
}

#[test]
fn the_view_shows_names_dates_and_results_never_keys() {
    let status = AcmeStatus::new(LETS_ENCRYPT_STAGING, ChallengeKind::TlsAlpn01);
    {
        let mut names = status.lock();
        names.names.insert(
            "shop.example.com".to_owned(),
            NameState {
                service: "shop".to_owned(),
                state: "failed",
                not_after: Some(90 * 24 * 3600),
                last_result: Some("the ACME CA: connection refused".to_owned()),
                ..NameState::default()
            },
        );
        names.skipped.push(("*.example.com".to_owned(), "shop".to_owned(), "wildcard"));
    }
    let json = serde_json::to_value(status.view()).expect("serialises");
    assert_eq!(json["Directory"], LETS_ENCRYPT_STAGING);
    assert_eq!(json["Challenge"], "tls-alpn-01");
    assert_eq!(json["Names"][0]["Name"], "shop.example.com");
    assert_eq!(json["Names"][0]["CertName"], "acme-shop.example.com");
    assert_eq!(json["Names"][0]["State"], "failed");
    assert_eq!(json["Names"][0]["NotAfter"], "1970-04-01T00:00:00Z");
    assert_eq!(json["Skipped"][0]["Name"], "*.example.com");
    let text = json.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.contains("key_pkcs8"));
}

#[test]
fn a_tls_alpn_challenge_certificate_names_the_domain_and_carries_the_digest() {
    let digest = [7u8; 32];
    let pem = alpn_certificate("shop.example.com", &digest).expect("made");
    let key = dfp_tls::challenge_key(pem.as_bytes()).expect("servable");
    assert_eq!(key.cert.len(), 1, "self-signed, alone");
    let der = &key.cert[0];
    // The name, as a dNSName in the subjectAltName.
    let name = b"shop.example.com";
    assert!(der
        .windows(name.len() + 2)
        .any(|w| w[0] == 0x82 && usize::from(w[1]) == name.len() && &w[2..] == name));
    // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), marked critical, around an OCTET STRING of
    // the 32-byte digest (RFC 8737 §3).
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
    let at = der.windows(oid.len()).position(|w| w == oid).expect("the acmeIdentifier extension");
    let rest = &der[at + oid.len()..];
    assert_eq!(&rest[..3], [0x01, 0x01, 0xff], "critical");
    assert_eq!(&rest[3..7], [0x04, 0x22, 0x04, 0x20], "an OCTET STRING holding the 32-byte digest");
    assert_eq!(&rest[7..39], digest);
}

#[test]
fn challenge_kinds_read_as_the_flag_gives_them() {
    assert_eq!(ChallengeKind::parse("http-01"), Some(ChallengeKind::Http01));
    assert_eq!(ChallengeKind::parse("tls-alpn-01"), Some(ChallengeKind::TlsAlpn01));
    assert_eq!(ChallengeKind::parse("dns-01"), None);
    for kind in [ChallengeKind::Http01, ChallengeKind::TlsAlpn01] {
        assert_eq!(ChallengeKind::parse(kind.name()), Some(kind));
    }
}
