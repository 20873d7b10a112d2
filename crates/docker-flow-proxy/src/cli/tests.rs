//! The command line as a user types it: what each subcommand and flag accepts or refuses.

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("").is_err());
    // Up to HAProxy's limit, 2^31-1 ms: a deadline further ahead would not fit the clock.
    assert_eq!(parse_duration("2147483s"), Ok(Duration::from_secs(2_147_483)));
    assert_eq!(parse_duration("2147483647ms"), Ok(Duration::from_millis(2_147_483_647)));
    for too_long in ["2147484s", "2147483648ms", "35792m", "18446744073709551615s", "9999999999h"] {
        let err = parse_duration(too_long).expect_err(too_long);
        assert!(err.contains("at most 2147483s"), "{too_long}: {err}");
    }
}

#[test]
fn the_queue_timeout_may_be_zero_for_no_queue() {
    for off in ["0s", "0ms", "0"] {
        assert_eq!(parse_duration_or_zero(off), Ok(Duration::ZERO), "{off}");
    }
    assert_eq!(parse_duration_or_zero("5s"), Ok(Duration::from_secs(5)));
    assert!(parse_duration_or_zero("0x").is_err());
    assert!(parse_duration_or_zero("soon").is_err());
}

#[test]
fn tls_listen_is_an_address_or_off() {
    assert_eq!(parse_tls_listen("off"), Ok(TlsListen::Off));
    assert_eq!(
        parse_tls_listen("127.0.0.1:8443"),
        Ok(TlsListen::At(([127, 0, 0, 1], 8443).into()))
    );
    assert!(parse_tls_listen("443").is_err());
    assert!(parse_tls_listen("").is_err());
}

#[test]
fn cli_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn reconfigure_query_uses_docker_flow_proxy_names() {
    let cli = Cli::try_parse_from([
        "docker-flow-proxy",
        "reconfigure",
        "--service-name",
        "books-ms",
        "--service-path",
        "/api/v1/books",
        "--service-path",
        "/b",
        "--port",
        "8080",
        "--param",
        "distribute=true",
    ])
    .expect("valid command line");
    let Command::Reconfigure(args) = cli.command else { panic!("parsed as reconfigure") };
    let q = args.query();
    assert!(q.contains(&("serviceName".into(), "books-ms".into())));
    assert!(q.contains(&("servicePath".into(), "/api/v1/books,/b".into())));
    assert!(q.contains(&("port".into(), "8080".into())));
    assert!(q.contains(&("distribute".into(), "true".into())));
}

#[test]
fn reconfigure_queue_flags_go_with_instance_max_conn() {
    let base = ["docker-flow-proxy", "reconfigure", "--service-name", "s", "--service-path", "/s"];
    let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra));
    let cli = with(&["--instance-max-conn", "4", "--timeout-queue", "0", "--max-queue", "50"])
        .expect("valid command line");
    let Command::Reconfigure(args) = cli.command else { panic!("parsed as reconfigure") };
    let q = args.query();
    assert!(q.contains(&("instanceMaxConn".into(), "4".into())));
    assert!(q.contains(&("timeoutQueue".into(), "0".into())));
    assert!(q.contains(&("maxQueue".into(), "50".into())));
    // Without the cap they would change nothing: refused before any call.
    assert!(with(&["--timeout-queue", "5"]).is_err());
    assert!(with(&["--max-queue", "5"]).is_err());
}

fn creds(
    user: Option<&str>,
    password: Option<&str>,
    password_file: Option<&std::path::Path>,
    token: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<Credentials> {
    CredentialArgs {
        admin_user: user.map(str::to_owned),
        admin_password: password.map(str::to_owned),
        admin_password_file: password_file.map(std::path::Path::to_owned),
        admin_token: token.map(str::to_owned),
        admin_token_file: token_file.map(std::path::Path::to_owned),
    }
    .credentials()
}

#[test]
fn credentials_come_in_pairs_from_one_source_each() {
    let dir = std::env::temp_dir().join(format!("dfp-cli-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("secret");
    std::fs::write(&file, "from-file\n").expect("secret file");
    let file = Some(file.as_path());

    let none = creds(None, None, None, None, None).expect("no credentials is fine");
    assert!(none.is_empty());
    let basic = creds(Some("admin"), Some("pw"), None, None, None).expect("basic");
    assert_eq!(basic.basic(), Some(("admin", "pw")));
    let basic = creds(Some("admin"), None, file, None, None).expect("basic from a file");
    assert_eq!(basic.basic(), Some(("admin", "from-file")));
    let token = creds(None, None, None, None, file).expect("token from a file");
    assert_eq!(token.token(), Some("from-file"));
    let both = creds(Some("u"), Some("p"), None, Some("t"), None).expect("both");
    assert_eq!((both.basic(), both.token()), (Some(("u", "p")), Some("t")));

    // Each refusal names the flag and the environment variable to fix.
    let missing = Some(std::path::Path::new("/nonexistent/dfp-secret"));
    for (result, needle) in [
        (creds(Some("admin"), None, None, None, None), "DFP_ADMIN_USER) is set without"),
        (creds(None, Some("pw"), None, None, None), "without a user"),
        (creds(None, None, file, None, None), "without a user"),
        (creds(Some("a"), Some("pw"), file, None, None), "DFP_ADMIN_PASSWORD_FILE) are both"),
        (creds(None, None, None, Some("t"), file), "DFP_ADMIN_TOKEN_FILE) are both"),
        (creds(None, None, None, Some(""), None), "token is empty"),
        (creds(Some(""), Some("pw"), None, None, None), "user is empty"),
        (creds(Some("a"), Some(""), None, None, None), "password is empty"),
        (creds(None, None, None, None, missing), "DFP_ADMIN_TOKEN_FILE"),
    ] {
        let err = format!("{:#}", result.expect_err(needle));
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn global_users_come_from_one_place_and_errors_name_it() {
    let dir = std::env::temp_dir().join(format!("dfp-cli-users-{}", std::process::id()));
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("temp dir");
    let file = dir.join("users");
    std::fs::write(&file, "f1:a\nf2:b\n").expect("users file");
    let server = |args: &[&str]| {
        let cli = Cli::try_parse_from(
            ["docker-flow-proxy", "server", "--secrets-dir"]
                .into_iter()
                .chain([secrets.to_str().expect("utf-8")])
                .chain(args.iter().copied()),
        )
        .expect("valid command line");
        let Command::Server(args) = cli.command else { panic!("parsed as server") };
        args
    };
    let names = |result: anyhow::Result<(Vec<dfp_routing::Credential>, Option<String>)>| {
        let (users, _) = result.expect("valid users");
        users.iter().map(|c| c.user().to_owned()).collect::<Vec<_>>().join(",")
    };
    let dfp_env = |name: &str| match name {
        "USERS" => Some("e1:x, e2:y".to_owned()),
        _ => None,
    };
    let no_env = |_: &str| None;
    let path = file.to_str().expect("utf-8");
    assert_eq!(names(server(&[]).global_users(no_env)), "");
    assert_eq!(names(server(&[]).global_users(dfp_env)), "e1,e2");
    assert_eq!(names(server(&["--users", "u:1"]).global_users(dfp_env)), "u");
    assert_eq!(names(server(&["--users-file", path]).global_users(dfp_env)), "f1,f2");
    std::fs::write(secrets.join("dfp_users"), "s:1").expect("secret");
    assert_eq!(names(server(&[]).global_users(dfp_env)), "s", "DFP: the secret wins");
    let encrypted = |name: &str| (name == "USERS_PASS_ENCRYPTED").then(|| "yes".to_owned());
    for (args, env, needle) in [
        (&["--users", "u:1", "--users-file", path][..], &no_env as &dyn Fn(&str) -> _, "both set"),
        (&["--users", "u:1,p4ss"], &no_env, "--users (DFP_USERS)"),
        (&["--users-file", "/nonexistent/users"], &no_env, "/nonexistent/users"),
        (&["--users", "u:1", "--users-pass-encrypted", "true"], &no_env, "SHA-512"),
        (&["--users", "u:1"], &encrypted, "USERS_PASS_ENCRYPTED is \"yes\""),
    ] {
        let err = format!("{:#}", server(args).global_users(env).expect_err(needle));
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        assert!(!err.contains("p4ss"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn req_mode_offers_only_what_is_accepted() {
    let parse = |mode: &str| {
        Cli::try_parse_from([
            "docker-flow-proxy",
            "reconfigure",
            "--service-name",
            "s",
            "--service-path",
            "/",
            "--req-mode",
            mode,
        ])
    };
    assert!(parse("http").is_ok());
    assert!(parse("tcp").is_ok());
    assert!(parse("sni").is_ok());
    let refused = parse("health").expect_err("no such mode").to_string();
    assert!(refused.contains("[possible values: http, tcp, sni]"), "{refused}");
    use clap::CommandFactory;
    let mut command = Cli::command();
    let help = command
        .find_subcommand_mut("reconfigure")
        .expect("reconfigure exists")
        .render_long_help()
        .to_string();
    assert!(help.contains("[possible values: http, tcp, sni]"), "help offers each value: {help}");

    // A TCP service needs no path: its port routes it.
    let tcp = Cli::try_parse_from([
        "docker-flow-proxy",
        "reconfigure",
        "--service-name",
        "redis",
        "--req-mode",
        "tcp",
        "--src-port",
        "6379",
    ])
    .expect("a TCP service without a path");
    let crate::cli::Command::Reconfigure(args) = tcp.command else { panic!("reconfigure") };
    let query = args.query();
    assert!(query.contains(&("srcPort".to_owned(), "6379".to_owned())), "{query:?}");
    assert!(!query.iter().any(|(k, _)| k == "servicePath"), "{query:?}");
}

#[test]
fn every_admin_client_takes_credentials() {
    for args in [
        &["ping", "--admin-token", "t"][..],
        &["config", "--json", "--admin-token", "t"],
        &["routes", "--admin-user", "u", "--admin-password", "p"],
        &["remove", "--service-name", "s", "--admin-user", "u", "--admin-password", "p"],
        &["reconfigure", "--service-name", "s", "--service-path", "/", "--admin-token-file", "f"],
        &["server", "--admin-user", "u", "--admin-password-file", "f"],
    ] {
        let cli =
            Cli::try_parse_from(std::iter::once("docker-flow-proxy").chain(args.iter().copied()));
        assert!(cli.is_ok(), "{args:?}: {cli:?}");
    }
}

#[test]
fn the_consul_token_comes_from_one_place_and_errors_never_show_it() {
    let dir = std::env::temp_dir().join(format!("dfp-cli-consul-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("token");
    std::fs::write(&file, "from-file\n").expect("token file");
    let server = |flags: &[&str]| {
        let cli = Cli::try_parse_from(["docker-flow-proxy", "server"].iter().chain(flags))
            .expect("valid command line");
        let Command::Server(args) = cli.command else { panic!("parsed as server") };
        args
    };
    let file_flag = format!("--consul-token-file={}", file.display());
    assert!(server(&[]).consul_token().expect("none is fine").is_none());
    assert!(server(&["--consul-token=from-flag"]).consul_token().expect("ok").is_some());
    let from_file = server(&[&file_flag]).consul_token().expect("ok").expect("a token");
    assert_eq!(from_file, dfp_consul::ConsulToken::new("from-file").expect("valid"));
    let both = server(&["--consul-token=from-flag", &file_flag]).consul_token();
    let msg = format!("{:#}", both.expect_err("only one"));
    assert!(msg.contains("give only one") && !msg.contains("from-flag"), "{msg}");
    let bad = Cli::try_parse_from(["docker-flow-proxy", "server", "--consul-token=a b"]);
    let msg = bad.expect_err("a space is refused").to_string();
    assert!(msg.contains("Consul token") && !msg.contains("a b\""), "{msg}");
    std::fs::write(&file, "\n").expect("empty token file");
    let msg = format!("{:#}", server(&[&file_flag]).consul_token().expect_err("empty"));
    assert!(msg.contains("token") && msg.contains("empty"), "{msg}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
