//! The agent's identity on disk, made at enrollment:
//!
//! ```text
//! <data_dir>/identity/
//!   agent.key            private key (PKCS#8 PEM, mode 0600); never leaves the host
//!   agent.der            client certificate issued by the control plane's CA
//!   ca.der               the control plane's CA certificate, pinned at enrollment
//!   ca-bundle.pem        the CAs trusted since the control plane rotated its CA
//!                        (replaces ca.der as the trust store once present)
//!   operation-key.pub    raw Ed25519 public key that must sign every operation
//!   enrollment.json      agent id, control plane URL, certificate expiry
//! ```

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub agent_id: String,
    pub control_plane: String,
    pub certificate_not_after_unix_ms: i64,
    /// When the current certificate was issued: it is renewed once two thirds
    /// of its lifetime have passed.
    pub certificate_issued_unix_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this agent is not enrolled (no {}): run `byoc-agent enroll` first", .0.display())]
    NotEnrolled(PathBuf),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is damaged: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// Everything needed to open a mutual-TLS session.
pub struct Identity {
    pub dir: PathBuf,
    pub enrollment: Enrollment,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// The CAs trusted for the control plane: `ca-bundle.pem`, else `ca.der`.
    pub trust: Vec<CertificateDer<'static>>,
    pub operation_key: Vec<u8>,
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.into(),
        source,
    })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync
/// of the directory), with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    byoc_wal::write_atomic(path, bytes, mode).map_err(|source| IdentityError::Io {
        path: path.into(),
        source,
    })
}

/// Completes a renewal interrupted by a crash. The certificate is written
/// after the key, so a complete `agent.der.next` means the key was written
/// too: roll forward. A lone `agent.key.next` is a renewal that never got its
/// certificate: drop it.
fn recover_renewal(dir: &Path) -> Result<(), IdentityError> {
    let io = |path: &Path, source| IdentityError::Io {
        path: path.into(),
        source,
    };
    let (key_next, cert_next) = (dir.join("agent.key.next"), dir.join("agent.der.next"));
    if cert_next.exists() {
        if key_next.exists() {
            std::fs::rename(&key_next, dir.join("agent.key")).map_err(|e| io(&key_next, e))?;
        }
        std::fs::rename(&cert_next, dir.join("agent.der")).map_err(|e| io(&cert_next, e))?;
        byoc_wal::sync_dir(&cert_next).map_err(|e| io(dir, e))?;
    } else if key_next.exists() {
        std::fs::remove_file(&key_next).map_err(|e| io(&key_next, e))?;
    }
    Ok(())
}

impl Identity {
    pub fn is_enrolled(data_dir: &Path) -> bool {
        dir(data_dir).join("enrollment.json").exists()
    }

    pub fn load(data_dir: &Path) -> Result<Self, IdentityError> {
        let dir = dir(data_dir);
        recover_renewal(&dir)?;
        let enrollment_path = dir.join("enrollment.json");
        if !enrollment_path.exists() {
            return Err(IdentityError::NotEnrolled(enrollment_path));
        }
        let enrollment: Enrollment =
            serde_json::from_slice(&read(&enrollment_path)?).map_err(|e| IdentityError::Corrupt {
                path: enrollment_path.clone(),
                message: e.to_string(),
            })?;
        let key_path = dir.join("agent.key");
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| IdentityError::Corrupt {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let operation_key = read(&dir.join("operation-key.pub"))?;
        if operation_key.len() != 32 {
            return Err(IdentityError::Corrupt {
                path: dir.join("operation-key.pub"),
                message: format!("{} bytes, expected a 32-byte Ed25519 public key", operation_key.len()),
            });
        }
        Ok(Self {
            cert: CertificateDer::from(read(&dir.join("agent.der"))?),
            trust: load_trust(&dir)?,
            key,
            operation_key,
            enrollment,
            dir,
        })
    }

    /// Stores a renewed certificate (and its key) in place of the current one.
    pub fn store_renewal(
        &mut self,
        key_pem: &str,
        cert: Vec<u8>,
        not_after_ms: i64,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        // Both files are written in full under `.next` names before either
        // replaces the current one; `recover_renewal` at the next load finishes
        // (or discards) a renewal a crash interrupted, so the key and the
        // certificate on disk always belong together.
        write_atomic(&self.dir.join("agent.key.next"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join("agent.der.next"), &cert, 0o644)?;
        let io = |path: &Path, source| IdentityError::Io {
            path: path.into(),
            source,
        };
        std::fs::rename(self.dir.join("agent.key.next"), self.dir.join("agent.key")).map_err(|e| io(&self.dir, e))?;
        std::fs::rename(self.dir.join("agent.der.next"), self.dir.join("agent.der")).map_err(|e| io(&self.dir, e))?;
        byoc_wal::sync_dir(&self.dir.join("agent.der")).map_err(|e| io(&self.dir, e))?;
        self.enrollment.certificate_not_after_unix_ms = not_after_ms;
        self.enrollment.certificate_issued_unix_ms = now_ms;
        self.save_enrollment()?;
        let reloaded = Self::load(self.dir.parent().unwrap_or(Path::new(".")))?;
        *self = reloaded;
        Ok(())
    }

    pub fn save_enrollment(&self) -> Result<(), IdentityError> {
        let bytes = serde_json::to_vec_pretty(&self.enrollment).unwrap_or_default();
        write_atomic(&self.dir.join("enrollment.json"), &bytes, 0o644)
    }

    /// TLS client configuration: trust only the control plane's CAs, present
    /// our certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, byoc_proto::transport::TransportError> {
        byoc_proto::transport::client_config_trusting(
            &self.trust,
            Some((vec![self.cert.clone()], self.key.clone_key())),
        )
    }

    /// Replaces the trusted CAs, durably (`ca-bundle.pem`, atomically).
    pub fn store_trust(&mut self, bundle: crate::trust::AcceptedBundle) -> Result<(), IdentityError> {
        let pem = crate::trust::to_pem(bundle.certs());
        write_atomic(&self.dir.join("ca-bundle.pem"), pem.as_bytes(), 0o644)?;
        self.trust = bundle.certs().to_vec();
        Ok(())
    }
}

/// `ca-bundle.pem` if present, else the CA pinned at enrollment.
fn load_trust(dir: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bundle = dir.join("ca-bundle.pem");
    match std::fs::read(&bundle) {
        Ok(pem) => {
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| IdentityError::Corrupt {
                    path: bundle.clone(),
                    message: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(IdentityError::Corrupt {
                    path: bundle,
                    message: "no certificate in it".into(),
                });
            }
            Ok(certs)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(vec![CertificateDer::from(read(&dir.join("ca.der"))?)])
        }
        Err(source) => Err(IdentityError::Io { path: bundle, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_renewal_is_finished_or_dropped_whole() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        std::fs::write(dir.join("agent.key"), "old key").expect("w");
        std::fs::write(dir.join("agent.der"), "old cert").expect("w");
        // Crash after the key was renamed into place, before the certificate.
        std::fs::write(dir.join("agent.key"), "new key").expect("w");
        std::fs::write(dir.join("agent.der.next"), "new cert").expect("w");
        recover_renewal(dir).expect("recover");
        assert_eq!(std::fs::read_to_string(dir.join("agent.der")).expect("r"), "new cert");
        // Crash after writing only the new key.
        std::fs::write(dir.join("agent.key.next"), "newer key").expect("w");
        recover_renewal(dir).expect("recover");
        assert_eq!(std::fs::read_to_string(dir.join("agent.key")).expect("r"), "new key");
        assert!(!dir.join("agent.key.next").exists());
    }
}
