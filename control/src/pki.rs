//! The control plane's keys: its CA (issues agent and server certificates) and
//! its Ed25519 operation-signing key. Made on first start, in the data
//! directory, private keys with mode 0600.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
}

/// The CA, server identity and operation key of one control plane.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
    pub op_key: Ed25519KeyPair,
}

/// Creates `path` (it must not exist) with `mode`, durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "byoc-control CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    p
}

impl Pki {
    /// Loads the keys from `dir`, making any that are missing. The server
    /// certificate is re-issued on every start for `server_names`.
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Self, PkiError> {
        let ca_key_path = dir.join("ca.key");
        let ca_cert_path = dir.join("ca.der");
        let op_key_path = dir.join("operation-signing.pk8");
        if !ca_key_path.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_new(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_new(&ca_cert_path, cert.der(), 0o644)?;
        }
        if !op_key_path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| PkiError::Corrupt {
                path: op_key_path.clone(),
                message: "key generation failed".into(),
            })?;
            write_new(&op_key_path, pkcs8.as_ref(), 0o600)?;
        }
        let ca_pem = String::from_utf8(read(&ca_key_path)?).map_err(|e| PkiError::Corrupt {
            path: ca_key_path.clone(),
            message: e.to_string(),
        })?;
        let ca_key = KeyPair::from_pem(&ca_pem).map_err(|e| PkiError::Corrupt {
            path: ca_key_path.clone(),
            message: e.to_string(),
        })?;
        let ca_der = CertificateDer::from(read(&ca_cert_path)?);
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| PkiError::Corrupt {
            path: ca_cert_path.clone(),
            message: e.to_string(),
        })?;
        let op_key = Ed25519KeyPair::from_pkcs8(&read(&op_key_path)?).map_err(|e| PkiError::Corrupt {
            path: op_key_path.clone(),
            message: e.to_string(),
        })?;

        let server_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(server_names.to_vec())?;
        sp.distinguished_name.push(DnType::CommonName, "byoc-control");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        sp.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(90);
        let server_cert = sp.signed_by(&server_key, &issuer)?;
        Ok(Self {
            server_chain: vec![server_cert.der().clone(), ca_der.clone()],
            server_key_der: server_key.serialize_der(),
            issuer,
            ca_der,
            op_key,
        })
    }

    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()))
    }

    /// SHA-256 of the CA certificate, as carried in enrollment tokens.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        byoc_proto::transport::fingerprint(&self.ca_der)
    }

    /// Issues a client certificate for `agent_id` over the key in `csr_der`.
    /// Only the CSR's public key is used; subject, lifetime and usages are ours.
    pub fn issue_client_cert(
        &self,
        agent_id: &str,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, SystemTime), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(PkiError::BadCsr)?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, agent_id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        let lifetime_secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        p.not_after = now + time::Duration::seconds(lifetime_secs);
        let not_after = SystemTime::now() + lifetime;
        csr.params = p;
        let cert = csr.signed_by(&self.issuer)?;
        Ok((cert.der().clone(), not_after))
    }
}
