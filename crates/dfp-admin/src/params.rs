//! Reconfigure parameters as Docker Flow Proxy names them, read from a query string.

use std::collections::BTreeMap;

use dfp_routing::PathPrefix;

use crate::AdminError;

/// Longest service name accepted: Consul and DNS names are far shorter in practice.
const MAX_SERVICE_NAME: usize = 255;

/// A validated reconfigure request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconfigureRequest {
    /// `serviceName`: the Consul service (or, standalone, the DNS name) to route to.
    pub service_name: String,
    /// `servicePath`: the paths the service owns; repeated or comma-separated.
    pub service_paths: Vec<PathPrefix>,
    /// `port`: standalone mode's instance port.
    pub port: Option<u16>,
    /// Parameters that were sent but that this proxy does not act on, by name.
    pub ignored: Vec<String>,
    /// Every parameter of the call (the supported ones normalised), as stored in Consul KV or
    /// the state file, so a restore or another replica replays exactly this call.
    pub params: BTreeMap<String, String>,
}

impl ReconfigureRequest {
    /// Reads a reconfigure from `key=value` pairs (a decoded query string).
    ///
    /// Every supported parameter is validated; any other parameter is kept by name in
    /// [`ReconfigureRequest::ignored`] so the answer can say it had no effect. Tools such as
    /// Docker Flow Swarm Listener send extra parameters, so an unknown one is not an error.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, AdminError> {
        let mut service_name = None;
        let mut raw_paths = Vec::new();
        let mut port = None;
        let mut ignored: Vec<String> = Vec::new();
        let mut params = BTreeMap::new();
        for (key, value) in pairs {
            if !matches!(key, "serviceName" | "servicePath" | "port") {
                params.insert(key.to_owned(), value.to_owned());
            }
            match key {
                "serviceName" => service_name = Some(value),
                "servicePath" => raw_paths.extend(value.split(',').map(str::trim)),
                "port" => port = Some(value),
                other if !ignored.iter().any(|seen| seen == other) => {
                    ignored.push(other.to_owned())
                }
                _ => {}
            }
        }
        let service_name = validate_service_name(service_name)?;
        let raw_paths: Vec<&str> = raw_paths.into_iter().filter(|p| !p.is_empty()).collect();
        if raw_paths.is_empty() {
            return Err(AdminError::MissingParameter {
                name: "servicePath",
                example: "servicePath=/api/v1/books",
            });
        }
        let mut service_paths = Vec::with_capacity(raw_paths.len());
        for raw in raw_paths {
            let prefix =
                PathPrefix::parse(raw).map_err(|source| AdminError::InvalidPath { source })?;
            if !service_paths.contains(&prefix) {
                service_paths.push(prefix);
            }
        }
        let port = port.map(parse_port).transpose()?;
        params.insert("serviceName".to_owned(), service_name.clone());
        let joined: Vec<&str> = service_paths.iter().map(PathPrefix::as_str).collect();
        params.insert("servicePath".to_owned(), joined.join(","));
        if let Some(port) = port {
            params.insert("port".to_owned(), port.to_string());
        }
        Ok(ReconfigureRequest { service_name, service_paths, port, ignored, params })
    }
}

/// Reads the `serviceName` of a remove.
pub(crate) fn service_name_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, AdminError> {
    let name = pairs.into_iter().find(|(k, _)| *k == "serviceName").map(|(_, v)| v);
    validate_service_name(name)
}

fn validate_service_name(name: Option<&str>) -> Result<String, AdminError> {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(AdminError::MissingParameter {
            name: "serviceName",
            example: "serviceName=books-ms",
        });
    }
    let valid_chars =
        name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_chars || name.len() > MAX_SERVICE_NAME {
        return Err(AdminError::InvalidParameter {
            name: "serviceName",
            value: name.to_owned(),
            reason: "use letters, digits, '-', '_' and '.' only, at most 255 of them".to_owned(),
        });
    }
    Ok(name.to_owned())
}

fn parse_port(value: &str) -> Result<u16, AdminError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(AdminError::InvalidParameter {
            name: "port",
            value: value.to_owned(),
            reason: "give a TCP port between 1 and 65535".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<ReconfigureRequest, AdminError> {
        ReconfigureRequest::from_pairs(query.iter().copied())
    }

    #[test]
    fn paths_may_be_repeated_or_comma_separated() {
        let r = parse(&[
            ("serviceName", "books-ms"),
            ("servicePath", "/api/v1/books, /api/v2/books/"),
            ("servicePath", "/books"),
            ("servicePath", "/books"),
        ])
        .expect("valid");
        let paths: Vec<_> = r.service_paths.iter().map(PathPrefix::as_str).collect();
        assert_eq!(paths, ["/api/v1/books", "/api/v2/books", "/books"]);
        assert_eq!(r.service_name, "books-ms");
        assert_eq!(r.port, None);
        assert!(r.ignored.is_empty());
        assert_eq!(r.params["servicePath"], "/api/v1/books,/api/v2/books,/books");
    }

    #[test]
    fn stored_params_replay_to_the_same_request() {
        let first = parse(&[
            ("serviceName", " books-ms "),
            ("servicePath", "/a/, /b"),
            ("port", "08080"),
            ("distribute", "true"),
        ])
        .expect("valid");
        let replayed = ReconfigureRequest::from_pairs(
            first.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .expect("stored parameters are valid");
        assert_eq!(replayed, first);
        assert_eq!(first.params["port"], "8080");
    }

    #[test]
    fn unsupported_parameters_are_named_not_refused() {
        let r = parse(&[
            ("serviceName", "books-ms"),
            ("servicePath", "/b"),
            ("distribute", "true"),
            ("serviceDomain", "x.example"),
            ("distribute", "true"),
        ])
        .expect("extra parameters are accepted");
        assert_eq!(r.ignored, ["distribute", "serviceDomain"]);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("servicePath", "/b")], "serviceName"),
            (&[("serviceName", ""), ("servicePath", "/b")], "serviceName"),
            (&[("serviceName", "a b"), ("servicePath", "/b")], "serviceName"),
            (&[("serviceName", "books")], "servicePath"),
            (&[("serviceName", "books"), ("servicePath", ",")], "servicePath"),
            (&[("serviceName", "books"), ("servicePath", "api")], "must start with '/'"),
            (&[("serviceName", "books"), ("servicePath", "/b"), ("port", "0")], "port"),
            (&[("serviceName", "books"), ("servicePath", "/b"), ("port", "http")], "port"),
        ];
        for (query, needle) in cases {
            let err = parse(query).expect_err("invalid");
            assert_eq!(err.status(), 400, "{query:?}");
            assert!(err.to_string().contains(needle), "{query:?}: {err}");
        }
    }
}
