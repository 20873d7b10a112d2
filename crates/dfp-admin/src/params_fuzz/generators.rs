//! The fuzz model's generators: parameter names and values made for each parameter, near
//! misses, whole calls (valid by construction or anything at all) and raw query strings.
//! Apart from the model and its properties (`params_fuzz.rs`), which say what must hold.

use super::*;

/// A huge value: a short piece repeated up to 20 000 times.
pub(super) fn huge() -> impl Strategy<Value = String> {
    ("\\PC{1,3}", 1usize..20_000).prop_map(|(piece, n)| piece.repeat(n))
}

/// Any value at all.
pub(super) fn anything() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "\\PC{0,16}",
        2 => any::<String>(),
        1 => "[ ,]{0,4}",
        1 => huge(),
    ]
}

/// A comma-separated list of `item`s, with blanks around the commas now and then.
pub(super) fn list(item: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((item, "[ \t]{0,1}", "[ ]{0,1}"), 0..5).prop_map(|items| {
        items
            .into_iter()
            .map(|(i, before, after)| format!("{before}{i}{after}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

pub(super) fn path_item() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        16 => "[a-zA-Z0-9_~-]{1,6}",
        1 => prop::sample::select(vec![
            "", ".", "..", "...", "%2e", "%2F", "%zz", "%", "%4", "a?b", "a#b", "{x}", "a b",
            "é", ";v=1", "@", "*", "'",
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        24 => (prop::collection::vec(segment, 0..5), any::<bool>()).prop_map(|(s, slash)| {
            let mut path = format!("/{}", s.join("/"));
            if slash && path.len() > 1 {
                path.push('/');
            }
            path
        }),
        1 => "[a-z/]{0,6}",
        1 => (1000usize..1030).prop_map(|n| format!("/{}", "a".repeat(n))),
        1 => anything(),
    ]
}

pub(super) fn domain_item() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => "(\\*\\.)?([a-zA-Z0-9_-]{1,8}\\.){0,3}[a-zA-Z]{1,6}\\.?",
        1 => prop::sample::select(vec![
            "*", "*.", "a..b", "-a.com", "a-.com", ".", "..", "*.*.a.com", "a.*.com", "bücher.de",
            "a b.com", "localhost", "LOCALHOST.", "x:80",
        ])
        .prop_map(str::to_owned),
        1 => (60usize..66, 0usize..5).prop_map(|(n, labels)| format!("{}.com", "a".repeat(n)).repeat(labels + 1)),
        1 => anything(),
    ]
}

pub(super) fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[0-9]{1,5}",
        1 => "[ ]{0,1}[+-]?[0-9]{1,22}s{0,2}[ ]{0,1}",
        1 => prop::sample::select(vec!["0", "1", "65535", "65536", "301", "302", "308", "304", "0s", "s", "2147483", "2147484"])
            .prop_map(str::to_owned),
        1 => anything(),
    ]
}

pub(super) fn boolean() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["true", "false", "TRUE", "False", "1", "0", " true ", "yes", "on", ""])
            .prop_map(str::to_owned),
        1 => anything(),
    ]
}

pub(super) fn user_item() -> impl Strategy<Value = String> {
    let hash = ("[a-zA-Z0-9./]{0,20}", "[a-zA-Z0-9./]{84,88}", prop::option::of(0u32..2_000_000))
        .prop_map(|(salt, hash, rounds)| match rounds {
            Some(n) => format!("$6$rounds={n}${salt}${hash}"),
            None => format!("$6${salt}${hash}"),
        });
    prop_oneof![
        8 => ("[a-z]{1,6}", "[ -~&&[^,]]{0,8}").prop_map(|(u, p)| format!("{u}:{p}")),
        2 => ("[a-z]{1,6}", hash).prop_map(|(u, h)| format!("{u}:{h}")),
        1 => anything(),
    ]
}

pub(super) fn header_item() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[A-Za-z-]{1,10}:?[ ]{1,2}[ -~&&[^,]]{0,12}",
        1 => "[A-Za-z-]{0,10}",
        1 => "\\PC{0,6} \\PC{0,6}",
        1 => "[A-Za-z]{1,4}[\u{0}-\u{1f}\u{7f}][ ][a-z]{0,4}",
        1 => anything(),
    ]
}

pub(super) fn regex() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "^/api", "/v1/(.*)", "^/(?P<rest>.*)$", "(", "[", ")", "*", "\\", "a{1000000}",
            "(a+)+$", "(?i)/A", "\\p{Greek}", "$", "",
        ])
        .prop_map(str::to_owned),
        1 => "[\\^$/a-z().*+?\\[\\]{}|\\\\0-9]{0,16}",
        1 => anything(),
    ]
}

/// A value as a client might send it for `name`, right or wrong.
pub(super) fn value_for(name: &'static str) -> BoxedStrategy<String> {
    match name {
        "serviceName" => prop_oneof![
            16 => "[ ]{0,1}[a-zA-Z0-9._-]{1,12}[ ]{0,1}",
            1 => (250usize..260).prop_map(|n| "s".repeat(n)),
            1 => anything(),
        ]
        .boxed(),
        "servicePath" | "servicePathExclude" => list(path_item()).boxed(),
        "serviceDomain" => list(domain_item()).boxed(),
        "port" | "httpsRedirectCode" | "timeoutServer" | "timeoutTunnel" | "instanceMaxConn"
        | "timeoutQueue" | "maxQueue" => number().boxed(),
        "isDefaultBackend" | "httpsOnly" | "usersPassEncrypted" | "denyHttp"
        | "ignoreAuthorization" | "verifyClientSsl" | "letsEncrypt" => boolean().boxed(),
        "usersSecret" => prop_oneof![
            6 => "[a-z0-9._-]{1,12}",
            1 => prop::sample::select(vec!["../x", "a/b", ".hidden", " s ", ""]).prop_map(str::to_owned),
            1 => anything(),
        ]
        .boxed(),
        "sendProxyProtocol" => prop_oneof![
            4 => prop::sample::select(vec!["v1", "v2", " V2 ", "v3", "1", "true", ""])
                .prop_map(str::to_owned),
            1 => anything(),
        ]
        .boxed(),
        "compressionAlgo" => prop_oneof![
            4 => prop::sample::select(vec!["gzip", " GZIP ", "deflate", "identity", "br", "br gzip", "gzip,br", "brotli", "raw-deflate", ""])
                .prop_map(str::to_owned),
            1 => anything(),
        ]
        .boxed(),
        "compressionType" => prop_oneof![
            4 => "([a-zA-Z]{1,6}/[a-z0-9+.-]{1,8}(;q=1)?[ ,\t]{1,2}){0,3}",
            1 => anything(),
        ]
        .boxed(),
        "reqPathSearch" | "reqPathReplace" => regex().boxed(),
        "users" => list(user_item()).boxed(),
        "addReqHeader" | "setReqHeader" | "addResHeader" | "setResHeader" | "delReqHeader"
        | "delResHeader" => list(header_item()).boxed(),
        "reqMode" => prop_oneof![
            6 => prop::sample::select(vec!["http", "HTTP", " http ", "tcp", "sni", ""]).prop_map(str::to_owned),
            1 => anything(),
        ]
        .boxed(),
        _ => anything().boxed(),
    }
}

/// One parameter: mostly a supported name with a value made for it, or a near miss, or
/// anything at all.
pub(super) fn pair() -> impl Strategy<Value = (String, String)> {
    let known = prop::sample::select(SUPPORTED)
        .prop_flat_map(|name| (Just(name.to_owned()), value_for(name)));
    let near_miss = (
        prop::sample::select(vec![
            "servicename",
            "ServiceName",
            "serviceName ",
            " servicePath",
            "service_path",
            "",
            "distribute",
            "servicecolor",
            "servicePath[]",
            "port\u{0}",
        ]),
        anything(),
    )
        .prop_map(|(k, v)| (k.to_owned(), v));
    let indexed = (prop::sample::select(SUPPORTED), 0u8..12)
        .prop_flat_map(|(name, n)| (Just(format!("{name}.{n}")), value_for(name)));
    prop_oneof![
        8 => known,
        2 => indexed,
        1 => near_miss,
        1 => (anything(), anything()),
    ]
}

/// A call: often a valid core (name and path) so that the rest gets read, then parameters
/// of any kind, repeats included, in any order.
pub(super) fn call() -> impl Strategy<Value = Pairs> {
    let core = prop::option::weighted(
        0.8,
        ("[a-z][a-z0-9-]{0,10}", "(/[a-z0-9]{1,5}){1,3}").prop_map(|(name, path)| {
            vec![("serviceName".to_owned(), name), ("servicePath".to_owned(), path)]
        }),
    );
    (core, prop::collection::vec(pair(), 0..10), any::<prop::sample::Index>()).prop_map(
        |(core, mut pairs, at)| {
            if let Some(core) = core {
                let at = at.index(pairs.len() + 1);
                pairs.splice(at..at, core);
            }
            pairs
        },
    )
}

/// A call that is valid by construction, and what it must be read as.
pub(super) fn valid_call() -> impl Strategy<Value = (Pairs, Vec<String>, Option<u16>, Vec<String>)>
{
    (
        "[a-zA-Z0-9._-]{1,40}",
        prop::collection::vec("(/[a-zA-Z0-9._~!$&'()*+;=:@-]{1,8}){1,4}/?", 1..5),
        prop::option::of(1u16..=u16::MAX),
        prop::collection::vec("(\\*\\.)?([a-z0-9]{1,8}\\.){0,3}[a-z]{1,6}", 0..4),
        prop::collection::vec(pair(), 0..4),
    )
        .prop_map(|(name, paths, port, domains, extra)| {
            // Segments of dots only are not valid prefixes: make them valid.
            let paths: Vec<String> = paths
                .into_iter()
                .map(|p| {
                    p.split('/')
                        .map(
                            |s| if s.bytes().all(|b| b == b'.') && !s.is_empty() { "x" } else { s },
                        )
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let mut pairs: Pairs = extra
                .into_iter()
                .filter(|(k, _)| {
                    let base = k.rsplit_once('.').map_or(k.as_str(), |(base, _)| base);
                    !SUPPORTED.contains(&k.as_str()) && !SUPPORTED.contains(&base)
                })
                .collect();
            pairs.push(("serviceName".to_owned(), name));
            pairs.push(("servicePath".to_owned(), paths.join(",")));
            if let Some(port) = port {
                pairs.push(("port".to_owned(), port.to_string()));
            }
            if !domains.is_empty() {
                pairs.push(("serviceDomain".to_owned(), domains.join(",")));
            }
            let normal = paths
                .iter()
                .map(|p| if p.len() > 1 { p.trim_end_matches('/') } else { p }.to_owned())
                .fold(Vec::new(), |mut seen: Vec<String>, p| {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                    seen
                });
            (pairs, normal, port, domains)
        })
}

/// Raw query strings, as the admin API receives them.
pub(super) fn query() -> impl Strategy<Value = String> {
    let byte_escape = any::<u8>().prop_map(|b| format!("%{b:02X}"));
    let piece = prop_oneof![
        prop::sample::select(vec![
            "&",
            "=",
            "+",
            "%",
            "%2",
            "%zz",
            "serviceName=",
            "servicePath=",
            "&&",
            "=="
        ])
        .prop_map(str::to_owned),
        byte_escape,
        "\\PC{1,4}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}
