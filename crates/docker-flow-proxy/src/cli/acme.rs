//! The `--acme-*` flags: certificates from an ACME CA (Let's Encrypt by default).

use std::path::PathBuf;
use std::time::Duration;

use super::parse_duration;

/// ACME: the proxy obtains and renews certificates for the `serviceDomain` names of services
/// reconfigured with `letsEncrypt=true` (or of every service, with --acme-all-domains).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AcmeArgs {
    /// Agree to the ACME CA's terms of service, and turn ACME on (nothing is ordered without
    /// it). Let's Encrypt's terms: https://letsencrypt.org/repository/
    #[arg(long, env = "DFP_ACME_AGREE_TOS")]
    pub(crate) acme_agree_tos: bool,

    /// The ACME account's contact email (the CA writes about expiring certificates and
    /// problems with the account).
    #[arg(long, env = "DFP_ACME_EMAIL", value_name = "EMAIL")]
    pub(crate) acme_email: Option<String>,

    /// The ACME CA's directory URL [default: Let's Encrypt's production directory]
    #[arg(long, env = "DFP_ACME_DIRECTORY", value_name = "URL", conflicts_with = "acme_staging")]
    pub(crate) acme_directory: Option<String>,

    /// Use Let's Encrypt's staging directory (untrusted certificates, generous limits): for
    /// trying a setup out.
    #[arg(long, env = "DFP_ACME_STAGING")]
    pub(crate) acme_staging: bool,

    /// A PEM file of CA certificates to trust for the ACME CA's own HTTPS besides the
    /// system's (a private CA, or a test CA such as pebble).
    #[arg(long, env = "DFP_ACME_CA_CERT", value_name = "PEM_FILE")]
    pub(crate) acme_ca_cert: Option<PathBuf>,

    /// Obtain certificates for every service's serviceDomain, not only for services
    /// reconfigured with letsEncrypt=true.
    #[arg(long, env = "DFP_ACME_ALL_DOMAINS")]
    pub(crate) acme_all_domains: bool,

    /// How often the names to certify are compared with the certificates served.
    #[arg(long, env = "DFP_ACME_CHECK_EVERY", default_value = "10s", value_parser = parse_duration)]
    pub(crate) acme_check_every: Duration,

    /// How long to wait after a failed attempt for a name before the next (doubled after each
    /// further failure, at most a day).
    #[arg(long, env = "DFP_ACME_RETRY_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub(crate) acme_retry_after: Duration,

    /// The challenge that proves the names: http-01 (the CA fetches a token over the plain
    /// listener, port 80) or tls-alpn-01 (the CA handshakes with the HTTPS listener, port
    /// 443, offering the protocol acme-tls/1).
    #[arg(long, env = "DFP_ACME_CHALLENGE", default_value = "http-01", value_parser = ["http-01", "tls-alpn-01"])]
    pub(crate) acme_challenge: String,

    /// How long a challenge is given to reach every replica before the CA is asked to check
    /// it.
    #[arg(long, env = "DFP_ACME_PROPAGATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) acme_propagation: Duration,
}

impl AcmeArgs {
    /// The ACME setup, or None when ACME is off.
    pub(crate) fn config(&self) -> Result<Option<dfp_admin::AcmeConfig>, String> {
        let asked = self.acme_email.is_some()
            || self.acme_directory.is_some()
            || self.acme_staging
            || self.acme_ca_cert.is_some()
            || self.acme_all_domains;
        if !self.acme_agree_tos {
            if asked {
                return Err("the --acme-* flags need --acme-agree-tos (DFP_ACME_AGREE_TOS=true): \
                            agreeing to the CA's terms of service is what turns ACME on"
                    .to_owned());
            }
            return Ok(None);
        }
        let directory = match (&self.acme_directory, self.acme_staging) {
            (Some(url), _) => url.clone(),
            (None, true) => dfp_admin::LETS_ENCRYPT_STAGING.to_owned(),
            (None, false) => dfp_admin::LETS_ENCRYPT.to_owned(),
        };
        if !directory.starts_with("https://") {
            return Err(format!(
                "--acme-directory {directory:?} is not an https:// URL (ACME is spoken over HTTPS)"
            ));
        }
        if let Some(email) = &self.acme_email {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(format!("--acme-email {email:?} is not an email address"));
            }
        }
        Ok(Some(dfp_admin::AcmeConfig {
            directory,
            email: self.acme_email.clone(),
            ca_cert: self.acme_ca_cert.clone(),
            all_domains: self.acme_all_domains,
            check_every: self.acme_check_every.max(Duration::from_secs(1)),
            retry_after: self.acme_retry_after.max(Duration::from_secs(1)),
            propagation: self.acme_propagation,
            challenge: dfp_admin::ChallengeKind::parse(&self.acme_challenge).ok_or_else(|| {
                format!(
                    "--acme-challenge takes http-01 or tls-alpn-01, not {:?}",
                    self.acme_challenge
                )
            })?,
        }))
    }
}
