//! The control plane's keys: its CAs (they issue agent and server certificates)
//! and its Ed25519 operation-signing key. Made on first start, in the data
//! directory, private keys with mode 0600.
//!
//! ```text
//! ca-state.json                 which CA is active and which is previous (the commit point)
//! ca/<sha256>.der, <sha256>.key every CA held: the active one, and the previous one during a rotation
//! ca.der                        a copy of the active CA certificate, for operators and scripts
//! operation-signing.pk8         the Ed25519 operation key
//! ```
//!
//! **Rotation** ([`Pki::rotate`], [`Pki::finish`]): a new CA becomes *active*
//! (it issues every certificate from then on) and the old one *previous*. During
//! the overlap the server still presents a leaf issued by the previous CA, so
//! agents that trust only it keep connecting and receive the new trust bundle in
//! band; the chain also carries the previous CA certified by the active one (a
//! cross-certificate) and the active CA, so an agent that trusts only the new CA
//! (or enrolls with a token pinning it) verifies the same leaf. Client
//! certificates of both CAs are accepted. `finish` drops the previous CA: the
//! leaf comes from the active CA and only its client certificates are accepted.
//!
//! Every change is committed by one atomic write of `ca-state.json`; key files
//! are written before it, and files it no longer names are removed at the next
//! load, so a crash at any point leaves either the old or the new set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot make the certificate")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid")]
    BadCsr(#[source] rcgen::Error),
    #[error("TLS configuration")]
    Tls(#[from] byoc_proto::transport::TransportError),
    #[error(
        "a CA rotation is already under way (since {since}): finish it with `byoc-control ca finish` before starting another"
    )]
    AlreadyRotating { since: String },
    #[error("no CA rotation is under way: start one with `byoc-control ca rotate`")]
    NotRotating,
    #[error(transparent)]
    Rng(#[from] crate::sys::RngUnavailable),
}

/// One CA: its certificate and the key that signs with it.
struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: [u8; 32],
    subject: String,
    not_after_unix_ms: i64,
}

/// The CAs in force and the TLS configuration they make.
struct CaSet {
    active: Ca,
    previous: Option<Ca>,
    overlap_since_unix_ms: Option<i64>,
    tls: Arc<ServerConfig>,
}

/// `ca-state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaState {
    active: String,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    overlap_since_unix_ms: Option<i64>,
}

/// What `ca status` shows of one CA.
#[derive(Debug, Clone)]
pub struct CaSummary {
    pub sha256: String,
    pub subject: String,
    pub active: bool,
    pub not_after_unix_ms: i64,
}

/// The CAs, server identity and operation key of one control plane.
pub struct Pki {
    dir: PathBuf,
    server_names: Vec<String>,
    pub op_key: Ed25519KeyPair,
    cas: RwLock<Arc<CaSet>>,
    /// Serialises rotate and finish.
    changing: Mutex<()>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.into(),
        source,
    }
}

fn corrupt(path: &Path, message: impl ToString) -> PkiError {
    PkiError::Corrupt {
        path: path.into(),
        message: message.to_string(),
    }
}

/// Writes `path` atomically and durably with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    byoc_wal::write_atomic(path, bytes, mode).map_err(io_err(path))
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(io_err(path))
}

fn now_ms() -> i64 {
    crate::sys::now_ms()
}

/// Parameters of a CA named `cn`. A CA made by a rotation may certify its
/// predecessor (the cross-certificate), hence one level of path below it.
fn ca_params(cn: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    p
}

impl Ca {
    fn generate(cn: &str, path_len: u8) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cn, path_len).self_signed(&key)?;
        let pem = key.serialize_pem();
        Ok((Self::from_parts(cert.der().clone(), key, Path::new("(new CA)"))?, pem))
    }

    fn from_parts(der: CertificateDer<'static>, key: KeyPair, path: &Path) -> Result<Self, PkiError> {
        let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| corrupt(path, e))?;
        let subject = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let not_after_unix_ms = x509.validity().not_after.timestamp().saturating_mul(1000);
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| corrupt(path, e))?;
        Ok(Self {
            fingerprint: byoc_proto::transport::fingerprint(&der),
            der,
            issuer,
            subject,
            not_after_unix_ms,
        })
    }

    fn load(dir: &Path, fp: &str) -> Result<Self, PkiError> {
        let (key_path, der_path) = (dir.join(format!("{fp}.key")), dir.join(format!("{fp}.der")));
        let pem = String::from_utf8(read(&key_path)?).map_err(|e| corrupt(&key_path, e))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| corrupt(&key_path, e))?;
        let ca = Self::from_parts(CertificateDer::from(read(&der_path)?), key, &der_path)?;
        if hex::encode(ca.fingerprint) != fp {
            return Err(corrupt(&der_path, "its SHA-256 is not the one its name says"));
        }
        Ok(ca)
    }

    fn store(&self, dir: &Path, key_pem: &str) -> Result<(), PkiError> {
        let fp = hex::encode(self.fingerprint);
        write_atomic(&dir.join(format!("{fp}.key")), key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(format!("{fp}.der")), &self.der, 0o644)
    }

    fn summary(&self, active: bool) -> CaSummary {
        CaSummary {
            sha256: hex::encode(self.fingerprint),
            subject: self.subject.clone(),
            active,
            not_after_unix_ms: self.not_after_unix_ms,
        }
    }
}

impl CaSet {
    /// The server certificate and TLS configuration for `active` and `previous`.
    fn build(
        active: Ca,
        previous: Option<Ca>,
        overlap_since_unix_ms: Option<i64>,
        server_names: &[String],
    ) -> Result<Self, PkiError> {
        let server_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(server_names.to_vec())?;
        sp.distinguished_name.push(DnType::CommonName, "byoc-control");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        sp.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(90);
        let (chain, client_cas) = match &previous {
            None => {
                let leaf = sp.signed_by(&server_key, &active.issuer)?;
                (vec![leaf.der().clone(), active.der.clone()], vec![active.der.clone()])
            }
            Some(prev) => {
                // Agents not yet told of the new CA trust only the previous one.
                let leaf = sp.signed_by(&server_key, &prev.issuer)?;
                let cross = cross_certify(prev, &active)?;
                (
                    vec![leaf.der().clone(), prev.der.clone(), cross, active.der.clone()],
                    vec![active.der.clone(), prev.der.clone()],
                )
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let tls = byoc_proto::transport::server_config_trusting(chain, key, &client_cas)?;
        Ok(Self {
            active,
            previous,
            overlap_since_unix_ms,
            tls: Arc::new(tls),
        })
    }
}

/// `prev`'s name and public key, certified by `active`: lets a verifier that
/// trusts only `active` accept a certificate `prev` issued.
fn cross_certify(prev: &Ca, active: &Ca) -> Result<CertificateDer<'static>, PkiError> {
    // Same name as `prev` (rcgen encodes both alike), so that the previous
    // CA's leaf names this certificate's subject as its issuer.
    let mut p = ca_params(&prev.subject, 0);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    Ok(p.signed_by(prev.issuer.key(), &active.issuer)?.der().clone())
}

impl Pki {
    /// Loads the keys from `dir`, making any that are missing (and moving a
    /// data directory from before rotation existed to the layout above). The
    /// server certificate is issued anew on every start for `server_names`.
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Self, PkiError> {
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).map_err(io_err(&ca_dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&ca_dir))?;
        }
        let state_path = dir.join("ca-state.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<CaState>(&bytes).map_err(|e| corrupt(&state_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::first_state(dir, &ca_dir)?,
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        let active = Ca::load(&ca_dir, &state.active)?;
        let previous = state.previous.as_deref().map(|fp| Ca::load(&ca_dir, fp)).transpose()?;
        collect_garbage(&ca_dir, &state);
        let op_key = load_or_create_op_key(&dir.join("operation-signing.pk8"))?;
        let pki = Self {
            dir: dir.to_path_buf(),
            server_names: server_names.to_vec(),
            op_key,
            cas: RwLock::new(Arc::new(CaSet::build(
                active,
                previous,
                state.overlap_since_unix_ms,
                server_names,
            )?)),
            changing: Mutex::new(()),
        };
        pki.write_active_copy()?;
        Ok(pki)
    }

    /// The state of a data directory without `ca-state.json`: its legacy
    /// `ca.key`/`ca.der` moved into `ca/`, or a new CA.
    fn first_state(dir: &Path, ca_dir: &Path) -> Result<CaState, PkiError> {
        let legacy_key = dir.join("ca.key");
        let (ca, pem) = if legacy_key.exists() {
            let pem = String::from_utf8(read(&legacy_key)?).map_err(|e| corrupt(&legacy_key, e))?;
            let key = KeyPair::from_pem(&pem).map_err(|e| corrupt(&legacy_key, e))?;
            let der_path = dir.join("ca.der");
            (
                Ca::from_parts(CertificateDer::from(read(&der_path)?), key, &der_path)?,
                pem,
            )
        } else {
            Ca::generate("byoc-control CA", 0)?
        };
        ca.store(ca_dir, &pem)?;
        let state = CaState {
            active: hex::encode(ca.fingerprint),
            previous: None,
            overlap_since_unix_ms: None,
        };
        write_state(dir, &state)?;
        // The key now lives in ca/; the legacy copy goes (ca.der stays, as the copy).
        if legacy_key.exists() {
            std::fs::remove_file(&legacy_key).map_err(io_err(&legacy_key))?;
        }
        Ok(state)
    }

    fn set(&self) -> Arc<CaSet> {
        self.cas.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The TLS configuration to accept the next connection with.
    pub fn server_tls(&self) -> Arc<ServerConfig> {
        self.set().tls.clone()
    }

    /// SHA-256 of the active CA certificate, as new enrollment tokens pin it.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.set().active.fingerprint
    }

    /// The CA certificate a token pinned (hex SHA-256), if it is still held;
    /// else the active one (the enrolling agent then refuses it, as it must).
    /// A token from before rotation existed names none: it pinned the oldest CA.
    pub fn ca_der_for(&self, pinned: &str) -> CertificateDer<'static> {
        let set = self.set();
        let oldest = set.previous.as_ref().unwrap_or(&set.active);
        [Some(&set.active), set.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|ca| hex::encode(ca.fingerprint) == pinned)
            .unwrap_or(if pinned.is_empty() { oldest } else { &set.active })
            .der
            .clone()
    }

    /// The CAs agents should trust, the active one first (sent in `Welcome`
    /// and `RenewResponse`).
    pub fn trust_bundle(&self) -> Vec<Vec<u8>> {
        let set = self.set();
        std::iter::once(&set.active)
            .chain(set.previous.as_ref())
            .map(|ca| ca.der.to_vec())
            .collect()
    }

    /// The CAs, active first, and when the overlap started (if one is running).
    pub fn status(&self) -> (Vec<CaSummary>, Option<i64>) {
        let set = self.set();
        let mut cas = vec![set.active.summary(true)];
        cas.extend(set.previous.as_ref().map(|p| p.summary(false)));
        (cas, set.overlap_since_unix_ms)
    }

    /// Issues a client certificate for `agent_id` over the key in `csr_der`,
    /// with the active CA. Only the CSR's public key is used; subject, lifetime
    /// and usages are ours. Returns the certificate, its expiry, and the hex
    /// SHA-256 of the CA that issued it.
    pub fn issue_client_cert(
        &self,
        agent_id: &str,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, SystemTime, String), PkiError> {
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
        let set = self.set();
        let cert = csr.signed_by(&set.active.issuer)?;
        Ok((cert.der().clone(), not_after, hex::encode(set.active.fingerprint)))
    }

    /// Starts a rotation: a new CA becomes active, the current one previous.
    pub fn rotate(&self) -> Result<(), PkiError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let set = self.set();
        if let Some(since) = set.overlap_since_unix_ms {
            return Err(PkiError::AlreadyRotating { since: fmt_ms(since) });
        }
        // A distinct name, so that verifiers building paths by name never
        // confuse the two CAs.
        let cn = format!("byoc-control CA {}", crate::sys::random_hex(4)?);
        let (new, pem) = Ca::generate(&cn, 1)?;
        new.store(&self.dir.join("ca"), &pem)?;
        let since = now_ms();
        write_state(
            &self.dir,
            &CaState {
                active: hex::encode(new.fingerprint),
                previous: Some(hex::encode(set.active.fingerprint)),
                overlap_since_unix_ms: Some(since),
            },
        )?;
        // Committed: build the new set from disk, as a restart would.
        self.reload()?;
        self.write_active_copy()
    }

    /// Ends the overlap: the previous CA is dropped.
    pub fn finish(&self) -> Result<(), PkiError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let set = self.set();
        let Some(prev) = &set.previous else {
            return Err(PkiError::NotRotating);
        };
        let state = CaState {
            active: hex::encode(set.active.fingerprint),
            previous: None,
            overlap_since_unix_ms: None,
        };
        write_state(&self.dir, &state)?;
        self.reload()?;
        collect_garbage(&self.dir.join("ca"), &state);
        tracing::warn!(dropped = %hex::encode(prev.fingerprint), "previous CA dropped");
        Ok(())
    }

    fn reload(&self) -> Result<(), PkiError> {
        let state_path = self.dir.join("ca-state.json");
        let state: CaState = serde_json::from_slice(&read(&state_path)?).map_err(|e| corrupt(&state_path, e))?;
        let ca_dir = self.dir.join("ca");
        let active = Ca::load(&ca_dir, &state.active)?;
        let previous = state.previous.as_deref().map(|fp| Ca::load(&ca_dir, fp)).transpose()?;
        let set = CaSet::build(active, previous, state.overlap_since_unix_ms, &self.server_names)?;
        *self.cas.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// `ca.der`: a copy of the active CA certificate for operators and scripts.
    fn write_active_copy(&self) -> Result<(), PkiError> {
        let der = self.set().active.der.clone();
        let path = self.dir.join("ca.der");
        if std::fs::read(&path).ok().as_deref() != Some(der.as_ref()) {
            write_atomic(&path, &der, 0o644)?;
        }
        Ok(())
    }
}

fn write_state(dir: &Path, state: &CaState) -> Result<(), PkiError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| corrupt(&dir.join("ca-state.json"), e))?;
    write_atomic(&dir.join("ca-state.json"), &bytes, 0o600)
}

/// Removes CA files that `state` does not name: a rotation that never
/// committed, or the CA a finished rotation dropped.
fn collect_garbage(ca_dir: &Path, state: &CaState) {
    let keep: Vec<&str> = std::iter::once(state.active.as_str())
        .chain(state.previous.as_deref())
        .collect();
    let Ok(entries) = std::fs::read_dir(ca_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let stem = name.split('.').next().unwrap_or("");
        if keep.contains(&stem) {
            continue;
        }
        if let Err(err) = std::fs::remove_file(e.path()) {
            tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a dropped CA file");
        }
    }
}

fn load_or_create_op_key(path: &Path) -> Result<Ed25519KeyPair, PkiError> {
    if !path.exists() {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| corrupt(path, "key generation failed"))?;
        write_atomic(path, pkcs8.as_ref(), 0o600)?;
    }
    Ed25519KeyPair::from_pkcs8(&read(path)?).map_err(|e| corrupt(path, e))
}

pub fn fmt_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
