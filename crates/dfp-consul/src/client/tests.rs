use super::*;

#[test]
fn addresses_parse() {
    let agents =
        parse_addresses("http://consul:8500, 10.0.0.2:8500,https://c.example/").expect("valid");
    let got: Vec<_> = agents.iter().map(Url::as_str).collect();
    assert_eq!(got, ["http://consul:8500/", "http://10.0.0.2:8500/", "https://c.example/"]);
}

#[test]
fn bad_addresses_say_which() {
    for bad in ["", " , ", "ftp://consul:8500", "http://", "http://c:99999", "http://c:8500/?x=1"] {
        let err = parse_addresses(bad).expect_err(bad);
        assert!(!err.to_string().is_empty(), "{bad}");
    }
    let err = parse_addresses("ok:1,ftp://x").expect_err("second is bad");
    assert!(err.to_string().contains("ftp://x"), "{err}");
}

#[test]
fn endpoints_escape_names() {
    let agent = Url::parse("http://c:8500/prefix/").expect("valid");
    let url =
        endpoint(&agent, &["v1", "health", "service", "a/b c"], &[("passing", "true".to_owned())]);
    assert_eq!(url.as_str(), "http://c:8500/prefix/v1/health/service/a%2Fb%20c?passing=true");
}

#[test]
fn tokens_are_checked_and_never_shown() {
    let token = ConsulToken::new(" 5b29457f-f9f3-f470-f96c-a1d02debd0dc\n").expect("valid");
    assert_eq!(format!("{token:?}"), "ConsulToken(<redacted>)");
    let client = ConsulClient::new("127.0.0.1:1", Duration::from_secs(1))
        .and_then(|c| c.with_token(token))
        .expect("valid");
    let shown = format!("{client:?}");
    assert!(!shown.contains("5b29457f") && shown.contains("<redacted>"), "{shown}");
    for bad in ["", " \n", "a b", "tok\u{e9}n", "a\u{7f}"] {
        assert!(ConsulToken::new(bad).is_err(), "{bad:?}");
    }
}

/// Consul 1.8.7's answers to a 403 (the body is all there is): each message names the
/// call and the rule, and says whether the token is unknown or lacks the rule.
#[test]
fn refusals_name_the_call_and_the_rule() {
    let agent = Url::parse("http://127.0.0.1:8500/").expect("valid");
    let bare = ConsulClient::new("127.0.0.1:8500", Duration::from_secs(1)).expect("valid");
    let with_token = ConsulClient::new("127.0.0.1:8500", Duration::from_secs(1))
        .and_then(|c| c.with_token(ConsulToken::new("secret-token").expect("valid")))
        .expect("valid");
    let segments = ["v1", "kv", "docker-flow", "services", "web"];
    let mut put = Call::get(&segments);
    put.method = reqwest::Method::PUT;
    put.needs = Needs::KeyWrite("docker-flow/services/web");
    let url = endpoint(&agent, put.segments, &put.query);
    let health = ["v1", "health", "service", "web"];
    let mut read = Call::get(&health);
    read.needs = Needs::Service("web");
    let read_url = endpoint(&agent, read.segments, &read.query);
    let cases = [
        (
            &with_token,
            &put,
            &url,
            "Permission denied",
            "the Consul token needs key:write on \"docker-flow/services/web\"",
        ),
        (&bare, &put, &url, "Permission denied", "no token was given"),
        (&with_token, &read, &read_url, "ACL not found", "Consul knows no such token"),
        (&bare, &read, &read_url, "ACL not found", "service:read on \"web\" and node:read"),
    ];
    for (client, call, url, answer, expected) in cases {
        let err = client.denied(call, url, answer.to_owned());
        let msg = err.to_string();
        assert!(matches!(err, ConsulError::PermissionDenied { .. }), "{msg}");
        assert!(msg.contains(expected) && msg.contains(answer), "{msg}");
        assert!(msg.contains(&format!("{} {}", call.method, url.path())), "{msg}");
        assert!(!msg.contains("secret-token"), "{msg}");
    }
}

#[tokio::test]
async fn unreachable_agents_are_all_named() {
    // Port 1 on loopback refuses at once.
    let client = ConsulClient::new("127.0.0.1:1,127.0.0.1:2", Duration::from_secs(2))
        .expect("valid addresses");
    let err = client.lookup_service("books-ms").await.expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(matches!(err, ConsulError::Unreachable { .. }), "{msg}");
    assert!(msg.contains("127.0.0.1:1") && msg.contains("127.0.0.1:2"), "{msg}");
}
