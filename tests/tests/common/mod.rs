//! Shared by security.rs and robustness.rs: certificates made at test time
//! (never committed), a gRPC channel dialed the way the agent dials
//! (agent/src/dial/mod.rs), and the test-only raw protocol of tests/proto.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

/// The test-only raw protocol (tests/proto/byoc_test/raw_agent.proto).
#[allow(clippy::all, missing_docs)]
pub mod raw {
    tonic::include_proto!("byoc.agent.v1");
}

/// A certificate authority made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let der = p.self_signed(&key).expect("CA certificate").der().clone();
        Self {
            issuer: Issuer::new(p, key),
            der,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: the chain (leaf, then
    /// this CA, as the real control plane presents it) and its key.
    pub fn server(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("names");
        p.distinguished_name.push(DnType::CommonName, "scripted control plane");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = p.signed_by(&key, &self.issuer).expect("server certificate");
        (vec![cert.der().clone(), self.der.clone()], pkcs8(&key))
    }

    /// A client certificate with subject CN `cn`, and its key pair.
    pub fn client(&self, cn: &str) -> (CertificateDer<'static>, KeyPair) {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("client key");
        let cert = p.signed_by(&key, &self.issuer).expect("client certificate");
        (cert.der().clone(), key)
    }
}

pub fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// Dials `url` (https://127.0.0.1:port) with `tls`, as agent/src/dial/mod.rs
/// does: TCP, then tokio-rustls with our configuration, then HTTP/2.
pub async fn channel(url: &str, tls: rustls::ClientConfig) -> Result<Channel, tonic::transport::Error> {
    let addr = url.strip_prefix("https://").expect("an https URL").to_string();
    let host = addr.rsplit_once(':').expect("host:port").0.to_string();
    let server_name = ServerName::try_from(host).expect("server name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, server_name, addr) = (connector.clone(), server_name.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// Awaits `f`, or fails the test naming `what` after `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}
