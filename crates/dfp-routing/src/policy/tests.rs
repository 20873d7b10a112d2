//! Unit tests of `policy.rs`, apart from the code so each file stays readable on its own.

use super::*;

#[test]
fn proxy_protocol_versions() {
    for (value, want) in [
        ("v1", Some(ProxyProtocol::V1)),
        (" V2 ", Some(ProxyProtocol::V2)),
        ("v3", None),
        ("1", None),
        ("", None),
        ("true", None),
    ] {
        assert_eq!(ProxyProtocol::parse(value).ok(), want, "{value:?}");
    }
    assert_eq!(ProxyProtocol::V2.token(), "v2");
}

#[test]
fn domains() {
    assert_eq!(Domain::parse("Shop.Example.com."), Ok(Domain::Exact("shop.example.com".into())));
    assert_eq!(Domain::parse("*.example.com"), Ok(Domain::Wildcard("example.com".into())));
    for bad in ["", "*.", "a..b", "-a.b", "a b", "*.*.b", "a/b", "ex ample.com"] {
        assert!(Domain::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn domain_matching_and_redirect_targets() {
    let exact = Domain::parse("old.example.com").expect("valid");
    let wild = Domain::parse("*.example.com").expect("valid");
    for (domain, host, expected) in [
        (&exact, "old.example.com", true),
        (&exact, "OLD.example.com.", true),
        (&exact, "x.old.example.com", false),
        (&wild, "a.example.com", true),
        (&wild, "example.com", false),
        (&wild, "a.b.example.com", false),
        (&wild, ".example.com", false),
    ] {
        assert_eq!(domain.matches(host), expected, "{domain} {host}");
    }
    assert!(DomainRedirect::new(vec![exact.clone()], &wild).is_err());
    let redirect =
        DomainRedirect::new(vec![exact], &Domain::parse("new.example.com").expect("valid"))
            .expect("exact target");
    assert_eq!(redirect.to(), "new.example.com");
    assert!(redirect.applies_to("old.example.com"));
    assert!(!redirect.applies_to("new.example.com"));
}

#[test]
fn cookie_names() {
    assert!(StickySession::new("DFP_SERVER").is_ok());
    assert!(StickySession::new("books-ms.v1").is_ok());
    for bad in ["", "a b", "a=b", "a;b", "é", &"x".repeat(65)] {
        assert!(StickySession::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rewrites_accept_haproxy_and_rust_groups() {
    let r = PathRewrite::new("^/api/v1/(.*)", "/\\1").expect("valid");
    assert_eq!(r.apply("/api/v1/books/7").as_deref(), Some("/books/7"));
    assert_eq!(r.apply("/other"), None);
    let r = PathRewrite::new("^/old", "/new$0").expect("valid");
    assert_eq!(r.apply("/old/x").as_deref(), Some("/new/old/x"));
    assert!(PathRewrite::new("(", "x").is_err());
}

fn basic(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {token}")).expect("valid")
}

#[test]
fn basic_auth_plain_and_sha512() {
    // `mkpasswd -m sha-512 -S saltsalt secret` (glibc crypt).
    let hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    let users = vec![
        Credential::new("alice", "wonderland", false).expect("plain"),
        Credential::new("bob", hash, false).expect("hash"),
    ];
    let policy = ServicePolicy {
        auth: Authentication::Users { users: users.into(), from: UsersFrom::Service },
        ..ServicePolicy::default()
    };
    assert!(policy.authorizes(Some(&basic("alice", "wonderland"))));
    assert!(policy.authorizes(Some(&basic("bob", "secret"))));
    assert!(!policy.authorizes(Some(&basic("bob", "wrong"))));
    assert!(!policy.authorizes(Some(&basic("alice", "secret"))));
    assert!(!policy.authorizes(Some(&basic("carol", "wonderland"))));
    assert!(!policy.authorizes(None));
    assert!(!policy.authorizes(Some(&HeaderValue::from_static("Basic !!!"))));
    assert!(ServicePolicy::default().authorizes(None));
    assert!(Credential::new("x", "$6$bad", false).is_err());
    assert!(Credential::new("", "p", false).is_err());
}

#[test]
fn users_lists_read_commas_and_newlines_and_hide_passwords_in_errors() {
    let users =
        Credential::parse_list(" alice:a , bob:b\ncarol:c:d\n\n", false).expect("valid list");
    let names: Vec<&str> = users.iter().map(Credential::user).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let policy = ServicePolicy {
        auth: Authentication::Users { users: users.into(), from: UsersFrom::Global },
        ..ServicePolicy::default()
    };
    assert!(policy.authorizes(Some(&basic("carol", "c:d"))), "a password may hold ':'");
    for (text, expected) in [
        ("alice:a,s3cret", PolicyError::BadUsersEntry(2)),
        ("alice:", PolicyError::BadUsersEntry(1)),
        (":pw", PolicyError::BadUsersEntry(1)),
        (" , \n", PolicyError::NoUsers),
    ] {
        let err = Credential::parse_list(text, false).expect_err(text);
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(err, expected, "{text:?}");
    }
    assert_eq!(
        Credential::parse_list("bob:not-a-hash", true).expect_err("hashed"),
        PolicyError::BadHash("bob".to_owned())
    );
}

#[test]
fn authentication_open_ignored_and_nobody() {
    let nobody = ServicePolicy {
        auth: Authentication::Users {
            users: Arc::from(Vec::new()),
            from: UsersFrom::Secret("gone".into()),
        },
        ..ServicePolicy::default()
    };
    assert!(nobody.auth.required());
    assert!(!nobody.authorizes(Some(&basic("any", "thing"))));
    assert!(!nobody.authorizes(None));
    let ignored = ServicePolicy { auth: Authentication::Ignored, ..ServicePolicy::default() };
    assert!(!ignored.auth.required());
    assert!(ignored.authorizes(None));
}

#[test]
fn header_edits_delete_set_add() {
    let mut h = http::HeaderMap::new();
    h.insert("x-drop", HeaderValue::from_static("1"));
    h.insert("x-env", HeaderValue::from_static("old"));
    let edits = HeaderEdits {
        delete: vec![HeaderEdits::parse_name("X-Drop").expect("name")],
        set: vec![HeaderEdits::parse_pair("X-Env production").expect("pair")],
        add: vec![HeaderEdits::parse_pair("X-Tag a b").expect("pair")],
    };
    edits.apply(&mut h);
    assert!(h.get("x-drop").is_none());
    assert_eq!(h["x-env"], "production");
    assert_eq!(h["x-tag"], "a b");
    assert!(HeaderEdits::parse_pair("NoValue").is_err());
    assert!(HeaderEdits::parse_pair("Bad\u{1}Name v").is_err());
}
