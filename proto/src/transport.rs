//! TLS settings both ends of the wire share: rustls with the aws-lc provider,
//! TLS 1.3 only, HTTP/2 by ALPN. There is deliberately no way to build a
//! configuration that skips verification.

use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The one crypto provider: aws-lc.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a DER certificate: the fingerprint an enrollment token pins.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, cert);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

const ALPN_H2: &[u8] = b"h2";

/// Client configuration trusting only `ca` (DER), optionally presenting a
/// client certificate (mutual TLS).
pub fn client_config(
    ca: CertificateDer<'static>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TransportError> {
    client_config_trusting(&[ca], identity)
}

/// Client configuration trusting only the CAs of `bundle` (a control plane's
/// CAs during a rotation), optionally presenting a client certificate.
pub fn client_config_trusting(
    bundle: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TransportError> {
    let mut roots = RootCertStore::empty();
    for ca in bundle {
        roots.add(ca.clone())?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Client configuration for enrollment: the agent has no CA yet, only the
/// SHA-256 fingerprint of it from the token. The server must present that CA
/// in its chain, and its certificate must verify against it.
pub fn pinned_ca_client_config(ca_fingerprint: [u8; 32]) -> Result<ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // a stricter verifier, not a weaker one: see PinnedCaVerifier
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Server configuration presenting `chain` (leaf first, then the CA, so an
/// enrolling agent can find the CA it pinned). Client certificates are verified
/// against `client_ca`; they are optional at the TLS layer because `Enroll`
/// runs before the agent has one, and every other RPC checks for one.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
) -> Result<ServerConfig, TransportError> {
    server_config_trusting(chain, key, &[client_ca])
}

/// As [`server_config`], accepting client certificates from any of `client_cas`
/// (both CAs during a CA rotation).
pub fn server_config_trusting(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: &[CertificateDer<'static>],
) -> Result<ServerConfig, TransportError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca.clone())?;
    }
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Why a client certificate the control plane issued cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateProblem {
    #[error("the certificate is not valid DER X.509")]
    Parse,
    #[error("the certificate is for another key than the one this agent made for it")]
    WrongKey,
    #[error("the certificate's validity ends before it begins")]
    Validity,
    #[error("the CA certificate is not valid DER X.509")]
    Ca(#[source] rustls::Error),
    #[error("no CA to check the certificate against")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the certificate does not chain to a trusted CA for client authentication, or is not valid now")]
    Chain(#[source] rustls::Error),
}

/// Checks a client certificate the control plane issued (at enrollment or
/// renewal) before it is stored: it parses, certifies `public_key` (the raw
/// public key this agent made), chains to one of `trusted` with the
/// clientAuth purpose, and is valid at `now_ms`. Returns its notAfter in
/// Unix milliseconds: the certificate's own, not what the response says.
pub fn check_client_certificate(
    cert_der: &[u8],
    trusted: &[CertificateDer<'_>],
    public_key: &[u8],
    now_ms: i64,
) -> Result<i64, CertificateProblem> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| CertificateProblem::Parse)?;
    if cert.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(CertificateProblem::WrongKey);
    }
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_after < not_before {
        return Err(CertificateProblem::Validity);
    }
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add(ca.clone().into_owned()).map_err(CertificateProblem::Ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(CertificateProblem::Verifier)?;
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(u64::try_from(now_ms).unwrap_or(0)));
    verifier
        .verify_client_cert(&CertificateDer::from(cert_der), &[], now)
        .map_err(CertificateProblem::Chain)?;
    Ok(not_after.saturating_mul(1000))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The pinned CA is the only trust anchor; the other certificates are
        // candidate intermediates. During a CA rotation the server's leaf is
        // still issued by the previous CA, and a token made after the rotation
        // pins the new one: the path is leaf <- previous CA certified by the
        // new CA (a cross-certificate in the chain) <- pinned CA.
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| fingerprint(c.as_ref()) != self.fingerprint)
            .cloned()
            .collect();
        inner.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is ever negotiated.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
