//! Static services from the environment: `DFP_SERVICE_<PARAM>` and `DFP_SERVICE_<N>_<PARAM>`,
//! Docker Flow Proxy's (1.272) way to route services nobody will call reconfigure for (a
//! service outside the swarm, a proxy that must route something before any listener runs).
//!
//! Each group of variables is one reconfigure call: `<PARAM>` is the parameter's name in
//! upper snake case (`SERVICE_PATH` for `servicePath`, as [`crate::parity::env_name`] makes
//! it), and `<PARAM>_<I>` its indexed form (`SERVICE_PATH_1` is `servicePath.1`). The binary
//! reads them at start and applies them like a reconfigure, through the same validation.
//!
//! Unlike Docker Flow Proxy, which skipped what it could not read, a variable under the prefix
//! that names no parameter, or a group without `SERVICE_NAME`, is an error naming the
//! variable: a typo must not silently leave a service unrouted. Groups need not be contiguous
//! (`DFP_SERVICE_1_…` and `DFP_SERVICE_3_…` are two services).

use std::collections::BTreeMap;

use crate::parity::{self, PARAMETERS};

/// The prefix every variable of a static service starts with.
pub const PREFIX: &str = "DFP_SERVICE_";

/// One service defined by environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvService {
    /// `DFP_SERVICE` or `DFP_SERVICE_<N>`: what the variables of this service start with.
    pub prefix: String,
    /// The reconfigure parameters, in variable-name order.
    pub pairs: Vec<(String, String)>,
    /// The variable each parameter came from.
    variables: BTreeMap<String, String>,
}

impl EnvService {
    /// The variable that set `param`, if one did.
    pub fn variable(&self, param: &str) -> Option<&str> {
        self.variables.get(param).map(String::as_str)
    }
}

/// Why the environment does not define valid static services.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvServiceError {
    #[error(
        "environment variable {variable} names no reconfigure parameter; write the parameter \
         in upper snake case after {prefix}_ (e.g. {prefix}_SERVICE_PATH for servicePath) or \
         unset it"
    )]
    UnknownParameter { variable: String, prefix: String },
    #[error(
        "environment variables {prefix}_* define a service without a name; set \
         {prefix}_SERVICE_NAME"
    )]
    MissingName { prefix: String },
}

/// The static services the variables `vars` define, unindexed group first, then by number.
/// Variables outside [`PREFIX`] are not looked at; empty values are as if unset.
pub fn services_from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvService>, EnvServiceError> {
    let by_env: BTreeMap<String, &str> =
        PARAMETERS.iter().map(|p| (parity::env_name(p.name), p.name)).collect();
    let mut groups: BTreeMap<u32, EnvService> = BTreeMap::new();
    let mut vars: Vec<(String, String)> =
        vars.into_iter().filter(|(name, _)| name.starts_with(PREFIX)).collect();
    vars.sort();
    for (variable, value) in vars {
        let rest = &variable[PREFIX.len()..];
        let (group, prefix, param) = match rest.split_once('_') {
            Some((n, param)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                match n.parse::<u32>() {
                    Ok(n) if n > 0 => (n, format!("DFP_SERVICE_{n}"), param),
                    _ => (0, "DFP_SERVICE".to_owned(), rest),
                }
            }
            _ => (0, "DFP_SERVICE".to_owned(), rest),
        };
        let name = match by_env.get(param) {
            Some(name) => (*name).to_owned(),
            None => match param.rsplit_once('_') {
                Some((base, index))
                    if !index.is_empty()
                        && index.bytes().all(|b| b.is_ascii_digit())
                        && by_env.contains_key(base) =>
                {
                    format!("{}.{index}", by_env[base])
                }
                _ => return Err(EnvServiceError::UnknownParameter { variable, prefix }),
            },
        };
        if value.trim().is_empty() {
            continue;
        }
        let service = groups.entry(group).or_insert_with(|| EnvService {
            prefix: prefix.clone(),
            pairs: Vec::new(),
            variables: BTreeMap::new(),
        });
        service.variables.insert(name.clone(), variable);
        service.pairs.push((name, value));
    }
    let services: Vec<EnvService> = groups.into_values().collect();
    if let Some(nameless) = services.iter().find(|s| s.variable("serviceName").is_none()) {
        return Err(EnvServiceError::MissingName { prefix: nameless.prefix.clone() });
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Vec<EnvService>, EnvServiceError> {
        services_from_env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    fn pairs(s: &EnvService) -> Vec<(&str, &str)> {
        s.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn variables_become_docker_flow_proxy_parameters() {
        let services = env(&[
            ("DFP_SERVICE_SERVICE_NAME", "books-ms"),
            ("DFP_SERVICE_SERVICE_PATH", "/api/v1/books"),
            ("DFP_SERVICE_PORT", "8080"),
            ("DFP_SERVICE_ACL_NAME", "05-books"),
            ("DFP_SERVICE_2_SERVICE_NAME", "web"),
            ("DFP_SERVICE_2_IS_DEFAULT_BACKEND", "true"),
            ("DFP_SERVICE_10_SERVICE_NAME", "ten"),
            ("DFP_SERVICE_10_SERVICE_PATH_1", "/ten"),
            ("DFP_SERVICE_2_SERVICE_DOMAIN", ""),
            ("DFP_STATE_FILE", "/x"),
            ("PATH", "/bin"),
        ])
        .expect("valid");
        assert_eq!(services.len(), 3);
        assert_eq!(services[0].prefix, "DFP_SERVICE");
        assert_eq!(
            pairs(&services[0]),
            [
                ("aclName", "05-books"),
                ("port", "8080"),
                ("serviceName", "books-ms"),
                ("servicePath", "/api/v1/books")
            ]
        );
        assert_eq!(services[0].variable("servicePath"), Some("DFP_SERVICE_SERVICE_PATH"));
        assert_eq!(services[1].prefix, "DFP_SERVICE_2");
        assert_eq!(pairs(&services[1]), [("isDefaultBackend", "true"), ("serviceName", "web")]);
        assert_eq!(services[2].prefix, "DFP_SERVICE_10");
        assert_eq!(pairs(&services[2]), [("serviceName", "ten"), ("servicePath.1", "/ten")]);
        assert_eq!(services[2].variable("servicePath.1"), Some("DFP_SERVICE_10_SERVICE_PATH_1"));
    }

    #[test]
    fn no_variables_no_services() {
        assert_eq!(env(&[("HOME", "/root")]), Ok(Vec::new()));
    }

    #[test]
    fn mistakes_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("DFP_SERVICE_SERVICE_NAME", "a"), ("DFP_SERVICE_SERVCE_PATH", "/a")],
                "DFP_SERVICE_SERVCE_PATH names no reconfigure parameter",
            ),
            (
                &[("DFP_SERVICE_1_SERVICE_NAME", "a"), ("DFP_SERVICE_1_servicePath", "/a")],
                "DFP_SERVICE_1_servicePath names no reconfigure parameter; write the parameter in upper snake case after DFP_SERVICE_1_",
            ),
            (&[("DFP_SERVICE_2_SERVICE_PATH", "/a")], "set DFP_SERVICE_2_SERVICE_NAME"),
            (
                &[("DFP_SERVICE_SERVICE_NAME", ""), ("DFP_SERVICE_SERVICE_PATH", "/a")],
                "set DFP_SERVICE_SERVICE_NAME",
            ),
        ];
        for (vars, needle) in cases {
            let err = env(vars).expect_err(needle);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    /// Every parameter of the table can be given as a variable, and reads back as itself.
    #[test]
    fn every_parameter_has_a_variable() {
        for p in PARAMETERS {
            let variable = format!("{PREFIX}{}", parity::env_name(p.name));
            let services = env(&[("DFP_SERVICE_SERVICE_NAME", "a"), (&variable, "x")])
                .unwrap_or_else(|e| panic!("{variable}: {e}"));
            assert_eq!(services[0].variable(p.name), Some(variable.as_str()));
        }
    }
}
