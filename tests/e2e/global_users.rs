//! Basic auth as Docker Flow Proxy users set it up: global users (`USERS`, a users file)
//! protecting every service without users of its own, `ignoreAuthorization=true` opening one,
//! a service's own `users` replacing the global ones, `usersSecret` read from a Docker
//! secrets directory, and a `users` entry without a password taking the global user's. Through the real binary (standalone), over plain HTTP/1.1 and over
//! TLS with HTTP/1.1 and HTTP/2, before and after a restart from the state file.

use crate::support::{proxy::Proxy, Scratch, Upstream};
use crate::tls::{https, upload, Ca};

/// `mkpasswd -m sha-512 -S saltsalt secret` (glibc crypt).
const HASH_OF_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

/// The services: `(name, path, options)`. Standalone names resolve to 127.0.0.1 (`127.1` and
/// `127.0.1` are its short forms), so one upstream serves all four.
const SERVICES: [(&str, &str, &str); 4] = [
    ("127.0.0.1", "/global", ""),
    ("127.1", "/open", "&ignoreAuthorization=true"),
    ("127.0.1", "/own", "&users=own:own-pw-3"),
    ("localhost", "/secret", "&usersSecret=monitoring"),
];

/// The credentials tried on each path.
const GLOBAL: (&str, &str) = ("admin", "admin-pw-1");
const OWN: (&str, &str) = ("own", "own-pw-3");
const SECRET: (&str, &str) = ("mon", "mon-pw-4");

/// Status of a GET of `url` with the credentials, if any.
async fn status(client: &reqwest::Client, url: &str, user: Option<(&str, &str)>) -> u16 {
    let mut request = client.get(url);
    if let Some((user, password)) = user {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.expect("the proxy answers").status().as_u16()
}

/// Every path with no credentials, the global ones, the service's own and the secret's, as
/// answered over plain HTTP/1.1, HTTPS with HTTP/1.1 and HTTPS with HTTP/2. The three
/// transports must agree; returns their common answer.
async fn answers(proxy: &Proxy, ca: &Ca) -> Vec<(&'static str, [u16; 4])> {
    let plain = crate::support::http_client();
    let h1 = ca.client(proxy, &["shop.example"], true);
    let h2 = ca.client(proxy, &["shop.example"], false);
    let mut all = Vec::new();
    for (_, path, _) in SERVICES {
        let mut by_transport = Vec::new();
        for (client, url) in [
            (&plain, proxy.url(path)),
            (&h1, https(proxy, "shop.example", path)),
            (&h2, https(proxy, "shop.example", path)),
        ] {
            let mut row = [0; 4];
            for (slot, user) in row.iter_mut().zip([None, Some(GLOBAL), Some(OWN), Some(SECRET)]) {
                *slot = status(client, &url, user).await;
            }
            by_transport.push(row);
        }
        assert!(by_transport.windows(2).all(|w| w[0] == w[1]), "{path}: {by_transport:?}");
        all.push((path, by_transport[0]));
    }
    all
}

/// What each path answers to (none, global, own, secret) with the secret readable.
const EXPECTED: [(&str, [u16; 4]); 4] = [
    ("/global", [401, 200, 401, 401]),
    ("/open", [200, 200, 200, 200]),
    ("/own", [401, 401, 200, 401]),
    ("/secret", [401, 401, 401, 200]),
];

async fn start(state: &str, secrets: &str) -> Proxy {
    let users = format!("{}:{}, ops:{HASH_OF_SECRET}", GLOBAL.0, GLOBAL.1);
    let args = [state, secrets];
    Proxy::start_with_env(None, &args, &[("USERS", &users)], "info").await
}

#[tokio::test]
async fn global_users_from_users_protect_services_unless_ignored_own_or_secret_over_h1_and_h2() {
    let web = Upstream::start("web-1").await;
    let ca = Ca::new();
    let scratch = Scratch::new();
    let secrets_dir = scratch.path("secrets");
    std::fs::create_dir_all(&secrets_dir).expect("secrets dir");
    std::fs::write(
        secrets_dir.join("dfp_users_monitoring"),
        format!("{}:{}\n", SECRET.0, SECRET.1),
    )
    .expect("secret");
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let secrets = format!("--secrets-dir={}", secrets_dir.display());
    let mut proxy = start(&state, &secrets).await;
    let cert = ca.issue(&["shop.example"]);
    assert_eq!(upload(&proxy, "shop", &cert.pem).await.0, 200);
    for (name, path, options) in SERVICES {
        let query = format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName={name}&servicePath={path}&port={}{options}",
            web.port()
        );
        let (code, answer) = proxy.admin(&query).await;
        assert_eq!(code, 200, "{query}: {answer}");
        assert!(answer.to_string().contains("\"OK\""), "{answer}");
    }
    assert_eq!(answers(&proxy, &ca).await, EXPECTED);
    // The hashed global user (USERS may mix plain passwords and `$6$` hashes).
    let plain = crate::support::http_client();
    assert_eq!(status(&plain, &proxy.url("/global"), Some(("ops", "secret"))).await, 200);
    // The instance never sees the proxy's credentials.
    let _ = status(&plain, &proxy.url("/global/x"), Some(GLOBAL)).await;
    assert!(!web.last_headers().expect("seen").contains_key("authorization"));

    // `config` names where users come from, never a password or hash.
    let config = proxy.config().await;
    let text = config.to_string();
    for secret in [GLOBAL.1, OWN.1, SECRET.1, HASH_OF_SECRET, "saltsalt"] {
        assert!(!text.contains(secret), "config shows a password: {text}");
    }
    let service = |path: &str| {
        config["Services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["ServicePath"][0] == path))
            .cloned()
            .unwrap_or_else(|| panic!("{path} in {config}"))
    };
    assert_eq!(service("/global")["UsersFrom"], "global");
    assert_eq!(service("/global")["Users"], serde_json::json!(["admin", "ops"]));
    assert_eq!(service("/open")["IgnoreAuthorization"], true);
    assert!(service("/open").get("Users").is_none(), "{}", service("/open"));
    assert_eq!(service("/own")["UsersFrom"], "service");
    assert_eq!(service("/secret")["UsersFrom"], "secret");
    assert_eq!(service("/secret")["UsersSecret"], "monitoring");
    assert_eq!(service("/secret")["Users"], serde_json::json!(["mon"]));

    // A secret that is not there, or a bad option, is a 400 naming it; nothing changes.
    for (bad, needle) in [
        ("&usersSecret=absent", "dfp_users_absent"),
        ("&usersSecret=../monitoring", "usersSecret"),
        ("&ignoreAuthorization=true&users=a:b", "ignoreAuthorization"),
        ("&ignoreAuthorization=maybe", "ignoreAuthorization"),
    ] {
        let query = format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/global&port={}{bad}",
            web.port()
        );
        let (code, answer) = proxy.admin(&query).await;
        assert_eq!(code, 400, "{bad}: {answer}");
        let message = answer["Message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{bad}: {message}");
        if bad.contains("absent") {
            let path = secrets_dir.join("dfp_users_absent").display().to_string();
            assert!(message.contains(&path), "the path is named: {message}");
        }
    }
    assert_eq!(proxy.config().await["Services"], config["Services"], "nothing changed");

    // A restart restores every service with its users: the secret is read again.
    proxy.terminate().await;
    let mut proxy = start(&state, &secrets).await;
    assert_eq!(upload(&proxy, "shop", &cert.pem).await.0, 200);
    assert_eq!(answers(&proxy, &ca).await, EXPECTED);
    let stored = std::fs::read_to_string(scratch.path("state.json")).expect("state file");
    assert!(stored.contains("monitoring") && !stored.contains(SECRET.1), "{stored}");

    // The secret gone at restart: the service still asks for credentials, nobody has them.
    proxy.terminate().await;
    std::fs::remove_file(secrets_dir.join("dfp_users_monitoring")).expect("secret removed");
    let proxy = start(&state, &secrets).await;
    assert_eq!(upload(&proxy, "shop", &cert.pem).await.0, 200);
    let mut closed = EXPECTED;
    closed[3].1 = [401, 401, 401, 401];
    assert_eq!(answers(&proxy, &ca).await, closed);
    assert!(proxy.log().contains("dfp_users_monitoring"), "the warning names the file");
    assert_eq!(proxy.config().await["Services"][3]["UsersSecret"], "monitoring");
}

#[tokio::test]
async fn global_users_from_a_file_and_a_bad_one_stops_the_start() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let file = scratch.path("users");
    std::fs::write(&file, format!("file-user:file-pw\n\nhashed:{HASH_OF_SECRET}\n")).expect("file");
    let users_file = format!("--users-file={}", file.display());
    let proxy = Proxy::start(None, &[&users_file]).await;
    proxy.route_all_to_port(web.port()).await;
    let client = crate::support::http_client();
    let url = proxy.url("/");
    assert_eq!(status(&client, &url, None).await, 401);
    assert_eq!(status(&client, &url, Some(("file-user", "file-pw"))).await, 200);
    assert_eq!(status(&client, &url, Some(("hashed", "secret"))).await, 200);
    assert_eq!(status(&client, &url, Some(("hashed", HASH_OF_SECRET))).await, 401);
    drop(proxy);

    // A users file or USERS that cannot be used stops the start, naming what to fix.
    std::fs::write(&file, "no-password-here\n").expect("file");
    for (args, env, needle) in [
        (vec![users_file.clone()], vec![], file.display().to_string()),
        (
            vec!["--users-file=/nonexistent/dfp-users".to_owned()],
            vec![],
            "/nonexistent/dfp-users".to_owned(),
        ),
        (vec![], vec![("USERS", "a:b,c")], "USERS".to_owned()),
        (
            vec![],
            vec![("USERS", "a:b"), ("USERS_PASS_ENCRYPTED", "yes")],
            "USERS_PASS_ENCRYPTED".to_owned(),
        ),
    ] {
        let mut command = tokio::process::Command::new(crate::support::proxy::BIN);
        for name in crate::support::proxy::CREDENTIAL_ENV {
            command.env_remove(name);
        }
        let out = command
            .args([
                "server",
                "--listen=127.0.0.1:0",
                "--admin-listen=127.0.0.1:0",
                "--tls-listen=off",
            ])
            .arg(format!("--state-file={}", scratch.path("state.json").display()))
            .arg(format!("--secrets-dir={}", scratch.path("no-secrets").display()))
            .args(&args)
            .envs(env.iter().copied())
            .env_remove("CONSUL_ADDRESS")
            .output()
            .await
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started: {stderr}");
        assert!(stderr.contains(&needle), "{args:?} {env:?}: {stderr}");
    }
}

/// `users=admin,bob:bob-pw,ops`: the bare names take the global users' passwords (plain or
/// hashed as given there), the call is stored with the bare names only, a restart resolves
/// them again against the global users it starts with, and a bare name no global user has is
/// a 400 naming the entry by position that changes nothing.
#[tokio::test]
async fn a_bare_name_in_users_takes_the_global_users_password() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let users = format!("--users={}:{},ops:{HASH_OF_SECRET}", GLOBAL.0, GLOBAL.1);
    let mut proxy = Proxy::start_logging(None, &[&state, &users], "info").await;
    let reconfigure = |users: &str| {
        format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/bare&port={}\
             &users={users}",
            web.port()
        )
    };
    let (code, answer) = proxy.admin(&reconfigure("admin,bob:bob-pw,ops")).await;
    assert_eq!(code, 200, "{answer}");
    let client = crate::support::http_client();
    let url = proxy.url("/bare");
    for (user, expected) in [
        (None, 401),
        (Some(GLOBAL), 200),
        (Some(("bob", "bob-pw")), 200),
        (Some(("ops", "secret")), 200),
        (Some(("ops", HASH_OF_SECRET)), 401),
        (Some(("admin", "bob-pw")), 401),
    ] {
        assert_eq!(status(&client, &url, user).await, expected, "{user:?}");
    }
    let config = proxy.config().await;
    assert_eq!(config["Services"][0]["Users"], serde_json::json!(["admin", "bob", "ops"]));
    assert_eq!(config["Services"][0]["UsersFrom"], "service");
    let stored = std::fs::read_to_string(scratch.path("state.json")).expect("state file");
    assert!(stored.contains("admin,bob:bob-pw,ops"), "the call as sent: {stored}");
    assert!(!stored.contains(GLOBAL.1) && !stored.contains("saltsalt"), "{stored}");

    // A bare name that no global user has: a 400 naming the entry, never its text.
    let (code, answer) = proxy.admin(&reconfigure("bob:bob-pw,zed")).await;
    assert_eq!(code, 400, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("users entry 2 ") && message.contains("global users"), "{message}");
    assert!(!message.contains("zed") && !message.contains("bob-pw"), "{message}");
    assert_eq!(proxy.config().await["Services"], config["Services"], "nothing changed");
    assert_eq!(status(&client, &url, Some(GLOBAL)).await, 200);

    // Restarted with other global users: the bare names are resolved against those.
    proxy.terminate().await;
    let users = format!("--users={}:new-pw", GLOBAL.0);
    let proxy = Proxy::start_logging(None, &[&state, &users], "info").await;
    let url = proxy.url("/bare");
    for (user, expected) in [
        (Some((GLOBAL.0, "new-pw")), 200),
        (Some(GLOBAL), 401),
        (Some(("bob", "bob-pw")), 200),
        (Some(("ops", "secret")), 401),
    ] {
        assert_eq!(status(&client, &url, user).await, expected, "after a restart: {user:?}");
    }
    assert!(proxy.log().contains("users entry 3 "), "the restore warns: {}", proxy.log());
}
