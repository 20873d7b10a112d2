//! The reconfigure parameters of TCP services (`reqMode=tcp` and `sni`, `srcPort`): what they
//! need, what they refuse, and how stored calls from older versions are restored.

use super::*;

#[test]
fn stored_http_calls_with_tcp_only_parameters_are_restored_without_them() {
    // Versions before TCP services stored srcPort and timeoutClient as ignored.
    let pairs = [
        ("serviceName", "books"),
        ("servicePath", "/b"),
        ("srcPort", "8080"),
        ("timeoutClient", "5"),
    ];
    assert!(parse(&pairs).is_err(), "a new call is told what is wrong");
    let r = ReconfigureRequest::from_stored_pairs(pairs).expect("restored as it was served");
    assert_eq!(r.tcp_port, None);
    assert_eq!(r.ignored, ["srcPort", "timeoutClient"]);
}

#[test]
fn tcp_services_need_a_src_port_and_nothing_http() {
    let r = parse(&[
        ("serviceName", "redis"),
        ("reqMode", "TCP"),
        ("srcPort", "6379"),
        ("port", "6379"),
        ("timeoutClient", "30"),
        ("timeoutServer", "31s"),
        ("timeoutTunnel", "3600"),
        ("allowedSources", "10.0.0.0/8"),
    ])
    .expect("a TCP service needs no servicePath");
    assert_eq!(r.tcp_port, Some(6379));
    assert!(r.service_paths.is_empty());
    assert_eq!(r.policy.client_timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(r.policy.server_timeout, Some(std::time::Duration::from_secs(31)));
    assert_eq!(r.spec().tcp_port, Some(6379));
    assert_eq!(r.params["srcPort"], "6379", "stored as sent, so a restore reopens the port");
    let replayed = ReconfigureRequest::from_stored_pairs(
        r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .expect("replays");
    assert_eq!(replayed.tcp_port, Some(6379));

    let tcp = |extra: &[(&'static str, &'static str)]| {
        let mut q = vec![("serviceName", "redis"), ("reqMode", "tcp"), ("srcPort", "6379")];
        q.extend_from_slice(extra);
        q
    };
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        (vec![("serviceName", "redis"), ("reqMode", "tcp")], &["srcPort is missing"]),
        (tcp(&[("srcPort", "0")]), &["srcPort"]),
        (vec![("serviceName", "redis"), ("reqMode", "tcp"), ("srcPort", "x")], &["srcPort=\"x\""]),
        (books(&[("srcPort", "6379")]), &["srcPort", "give reqMode=tcp or reqMode=sni too"]),
        (books(&[("timeoutClient", "5")]), &["timeoutClient", "--client-timeout"]),
        (books(&[("reqMode", "sni")]), &["serviceDomain is missing"]),
        (books(&[("reqMode", "ssl")]), &["reqMode", "reqMode=sni with srcPort and serviceDomain"]),
        (
            vec![("serviceName", "db"), ("reqMode", "sni"), ("serviceDomain", "db.example.com")],
            &["srcPort is missing"],
        ),
        (
            vec![
                ("serviceName", "db"),
                ("reqMode", "sni"),
                ("srcPort", "443"),
                ("serviceDomain", "db.example.com"),
                ("httpsOnly", "true"),
            ],
            &["leave out httpsOnly"],
        ),
        (
            tcp(&[("servicePath", "/r"), ("users", "a:b"), ("httpsOnly", "true")]),
            &["leave out servicePath, httpsOnly, users"],
        ),
        (tcp(&[("addReqHeader", "X-A:1")]), &["leave out addReqHeader"]),
        (tcp(&[("isDefaultBackend", "true")]), &["leave out isDefaultBackend"]),
        (tcp(&[("compressionAlgo", "gzip")]), &["leave out compressionAlgo"]),
        (tcp(&[("srcPort.1", "6380")]), &["a TCP service has one destination"]),
    ];
    for (query, needles) in cases {
        refused(&query, needles);
    }
}

#[test]
fn tcp_services_with_server_names_pass_tls_through_or_end_it() {
    let sni = parse(&[
        ("serviceName", "db"),
        ("reqMode", "SNI"),
        ("srcPort", "443"),
        ("serviceDomain", "DB.example.com,*.tenants.example.com"),
        ("sendProxyProtocol", "v2"),
    ])
    .expect("valid");
    assert_eq!((sni.tcp_port, sni.stream_tls), (Some(443), StreamTls::Passthrough));
    let names: Vec<String> = sni.domains.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["db.example.com", "*.tenants.example.com"]);
    assert_eq!(sni.spec().stream_tls, StreamTls::Passthrough);
    assert_eq!(sni.spec().domains.len(), 2);

    let terminated = parse(&[
        ("serviceName", "pg"),
        ("reqMode", "tcp"),
        ("srcPort", "5433"),
        ("serviceDomain", "pg.example.com"),
    ])
    .expect("valid");
    assert_eq!((terminated.tcp_port, terminated.stream_tls), (Some(5433), StreamTls::Terminate));
    let replayed = ReconfigureRequest::from_stored_pairs(
        terminated.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .expect("replays");
    assert_eq!(replayed.stream_tls, StreamTls::Terminate);

    let plain =
        parse(&[("serviceName", "redis"), ("reqMode", "tcp"), ("srcPort", "6379")]).expect("valid");
    assert_eq!(plain.stream_tls, StreamTls::Plain);
    refused(
        &[("serviceName", "db"), ("reqMode", "sni"), ("srcPort", "443"), ("serviceDomain", "a b")],
        &["serviceDomain"],
    );
}
