//! What the HTTPS tests share with the others: a test CA and its certificates, TLS clients
//! (trusting the CA, or accepting anything to read which certificate was served), uploads.
//! Moved out of `tls.rs` unchanged, to keep that file to its tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{date_time_ymd, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{Proxy, Upstream};

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(super) pem: String,
}

/// A certificate issued by the test CA: the PEM to upload and the leaf's DER to compare.
pub struct Issued {
    pub pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().expect("ring makes a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "dfp test CA");
        let cert = params.self_signed(&key).expect("CA signs itself");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names`, valid from 2020 to 2090.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with(names, |_| {})
    }

    /// A client certificate (extended key usage: client authentication) for `name`, with its
    /// key, as a client presents it: `pem` holds the leaf, then the key.
    pub fn issue_client(&self, name: &str) -> Issued {
        let key = KeyPair::generate().expect("ring makes a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        Issued { pem: format!("{}{}", cert.pem(), key.serialize_pem()), der: cert.der().to_vec() }
    }

    /// A server certificate for `names` with its chain (leaf, CA) and key, as an instance
    /// that ends TLS itself is given them.
    pub fn issue_for_server(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("ring makes a key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid names");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        let ca = rustls::pki_types::pem::PemObject::from_pem_slice(self.pem.as_bytes())
            .expect("the CA's PEM");
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key");
        (vec![cert.der().clone(), ca], key)
    }

    /// A TLS client configuration that trusts this CA only (and checks names), offering no ALPN.
    pub fn verifying_client(&self) -> ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let ca: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(self.pem.as_bytes())
                .expect("the CA's PEM");
        roots.add(ca).expect("the CA is a valid root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// The CA's own certificate, PEM (what `--client-ca` is given).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub(super) fn issue_with(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().expect("ring makes a key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid names");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        // Chain (leaf, then CA) and key in one body, as a user would upload it.
        Issued {
            pem: format!("{}{}{}", cert.pem(), self.pem, key.serialize_pem()),
            der: cert.der().to_vec(),
        }
    }

    /// An HTTPS client that trusts this CA and sends `names` to the proxy's TLS listener.
    pub fn client(&self, proxy: &Proxy, names: &[&str], http1_only: bool) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA PEM");
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .tls_certs_only([root]);
        for name in names {
            builder = builder.resolve(name, tls_addr(proxy));
        }
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("reqwest client builds")
    }
}

pub fn tls_addr(proxy: &Proxy) -> SocketAddr {
    proxy.tls_addr.expect("the proxy has an HTTPS listener")
}

pub fn https(proxy: &Proxy, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", tls_addr(proxy).port())
}

/// Accepts whatever the server presents: these handshakes only look at what was served.
#[derive(Debug)]
pub struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client that accepts any certificate (these tests look at what was served) and offers
/// `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to the proxy asking for `sni` (`None`: no SNI at all, as a client that
/// dialled an IP address), offering HTTP/1.1 only.
pub async fn connect(addr: SocketAddr, sni: Option<&str>) -> std::io::Result<TlsStream<TcpStream>> {
    connect_offering(addr, sni, &[b"http/1.1"]).await
}

/// As [`connect`], offering `alpn` (empty: no ALPN extension at all).
pub async fn connect_offering(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = client_config(alpn);
    // rustls sends no SNI for an IP address.
    let name = match sni {
        Some(sni) => ServerName::try_from(sni.to_owned()).expect("a DNS name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// The leaf certificate the proxy serves to a handshake asking for `sni`.
pub(super) async fn served(proxy: &Proxy, sni: Option<&str>) -> Option<Vec<u8>> {
    let tls = connect(tls_addr(proxy), sni).await.ok()?;
    leaf(&tls)
}

pub(super) fn leaf(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec())
}

/// `PUT cert?certName=NAME` with `pem` as body: (status, answer).
pub async fn upload(proxy: &Proxy, name: &str, pem: &str) -> (u16, Value) {
    let url = proxy.admin_url(&format!("/v1/docker-flow-proxy/cert?certName={name}"));
    let response = crate::support::http_client()
        .put(url)
        .body(pem.to_owned())
        .send()
        .await
        .expect("admin answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

pub(super) async fn delete(proxy: &Proxy, name: &str) -> (u16, Value) {
    let url = proxy.admin_url(&format!("/v1/docker-flow-proxy/cert?certName={name}"));
    let response = crate::support::http_client().delete(url).send().await.expect("admin answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// The names `GET certs` lists, in order.
pub(super) async fn listed(proxy: &Proxy) -> Vec<String> {
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    assert_eq!(status, 200, "{answer}");
    answer["Certs"]
        .as_array()
        .expect("Certs is a list")
        .iter()
        .map(|c| c["CertName"].as_str().expect("CertName").to_owned())
        .collect()
}

/// Routes `/` of a standalone proxy to `upstream` (127.0.0.1 resolves to itself).
pub async fn route_all_to(proxy: &Proxy, upstream: &Upstream) {
    proxy.route_all_to_port(upstream.port()).await;
}

pub(super) fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write a test file");
}
