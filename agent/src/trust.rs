//! Which CAs the agent trusts for its control plane, and the one rule by which
//! that set may change.
//!
//! At enrollment the agent trusts the CA its token pinned. When the control
//! plane rotates its CA it offers a new bundle (in `Welcome` and
//! `RenewResponse`, docs/protocol.md §4.1). An offer is accepted only when
//!
//! 1. the server that made it presented, on this session, a certificate chain
//!    that verifies against the CAs the agent trusts **now** (rustls already
//!    required that to open the session; it is checked again here so the rule
//!    stands on its own), and
//! 2. the offered bundle, made only of CA certificates, verifies that same
//!    chain too, so accepting it cannot lock the agent out of the server that
//!    sent it.
//!
//! [`AcceptedBundle`] can only be made by [`accept_offer`], and
//! `Identity::store_trust` takes nothing else.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// More CAs than a rotation ever needs (two) is an error, not a bundle.
const MAX_BUNDLE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the server that offered new CAs is not authenticated by a CA this agent trusts")]
    NotAuthenticated(#[source] rustls::Error),
    #[error(
        "the offered CAs do not authenticate the server that offered them (accepting them would lock this agent out)"
    )]
    WouldLockOut(#[source] rustls::Error),
    #[error("the offer has {0} certificates; at most {MAX_BUNDLE}")]
    TooLarge(usize),
    #[error("certificate {index} of the offer is not a CA certificate")]
    NotCa {
        index: usize,
        #[source]
        reason: NotCa,
    },
    #[error("no certificate chain of the server was observed on this session")]
    NoServerChain,
}

/// A set of CAs that passed [`accept_offer`].
#[derive(Debug, Clone)]
pub struct AcceptedBundle(Vec<CertificateDer<'static>>);

impl AcceptedBundle {
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.0
    }
}

/// Decides on `offered` (DER certificates, the issuing CA first), made by the
/// server that presented `server_chain` as `server_name`. `Ok(None)`: nothing
/// to change (an empty offer, from a control plane without rotation, or the
/// bundle already trusted).
pub fn accept_offer(
    current: &[CertificateDer<'static>],
    offered: &[Vec<u8>],
    server_chain: &[CertificateDer<'static>],
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<Option<AcceptedBundle>, TrustError> {
    if offered.is_empty() || offered.iter().map(Vec::as_slice).eq(current.iter().map(|c| c.as_ref())) {
        return Ok(None);
    }
    verify_server(current, server_chain, server_name, now).map_err(TrustError::NotAuthenticated)?;
    if offered.len() > MAX_BUNDLE {
        return Err(TrustError::TooLarge(offered.len()));
    }
    let bundle: Vec<CertificateDer<'static>> = offered.iter().map(|d| CertificateDer::from(d.clone())).collect();
    for (index, ca) in bundle.iter().enumerate() {
        is_ca(ca).map_err(|reason| TrustError::NotCa { index, reason })?;
    }
    verify_server(&bundle, server_chain, server_name, now).map_err(TrustError::WouldLockOut)?;
    Ok(Some(AcceptedBundle(bundle)))
}

/// Whether `chain` (leaf first) is a valid server chain for `name` under `trust`.
fn verify_server(
    trust: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(trust)?), byoc_proto::transport::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, intermediates, name, &[], now)
        .map(|_| ())
}

fn roots(trust: &[CertificateDer<'static>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots.add(ca.clone())?;
    }
    Ok(roots)
}

/// Why a certificate offered as a CA is not one.
#[derive(Debug, thiserror::Error)]
pub enum NotCa {
    #[error("it is not an X.509 certificate")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("its basic constraints cannot be read")]
    Constraints(#[source] x509_parser::error::X509Error),
    #[error("it has no CA basic constraint")]
    NotCa,
}

fn is_ca(der: &CertificateDer<'_>) -> Result<(), NotCa> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(NotCa::Parse)?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(NotCa::NotCa),
        Err(e) => Err(NotCa::Constraints(e)),
    }
}

/// Whether `cert` is a valid client certificate issued by `ca` (now).
pub fn issued_by(cert: &CertificateDer<'static>, ca: &CertificateDer<'static>) -> bool {
    let Ok(roots) = roots(std::slice::from_ref(ca)) else {
        return false;
    };
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), byoc_proto::transport::provider())
        .build()
        .is_ok_and(|v| v.verify_client_cert(cert, &[], UnixTime::now()).is_ok())
}

/// Hex SHA-256 of each certificate, for logs and the audit log.
pub fn fingerprints(bundle: &[CertificateDer<'_>]) -> Vec<String> {
    bundle
        .iter()
        .map(|c| hex::encode(byoc_proto::transport::fingerprint(c)))
        .collect()
}

/// `bundle` as PEM `CERTIFICATE` blocks.
pub fn to_pem(bundle: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for cert in bundle {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    fn ca_params(cn: &str, path_len: u8) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    impl TestCa {
        fn new(cn: &str) -> Self {
            let key = KeyPair::generate().expect("key");
            let der = ca_params(cn, 1).self_signed(&key).expect("ca").der().clone();
            Self {
                issuer: Issuer::from_ca_cert_der(&der, key).expect("issuer"),
                der,
            }
        }

        fn leaf(&self, eku: ExtendedKeyUsagePurpose, names: &[&str]) -> CertificateDer<'static> {
            let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("p");
            p.extended_key_usages = vec![eku];
            let key = KeyPair::generate().expect("key");
            p.signed_by(&key, &self.issuer).expect("leaf").der().clone()
        }

        fn server_chain(&self) -> Vec<CertificateDer<'static>> {
            vec![
                self.leaf(ExtendedKeyUsagePurpose::ServerAuth, &["127.0.0.1"]),
                self.der.clone(),
            ]
        }

        /// `prev`'s name and key, certified by this CA.
        fn cross_certify(&self, prev: &TestCa, prev_cn: &str) -> CertificateDer<'static> {
            ca_params(prev_cn, 0)
                .signed_by(prev.issuer.key(), &self.issuer)
                .expect("cross")
                .der()
                .clone()
        }
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("127.0.0.1").expect("name")
    }

    fn offer(cas: &[&TestCa]) -> Vec<Vec<u8>> {
        cas.iter().map(|c| c.der.to_vec()).collect()
    }

    #[test]
    fn a_bundle_offered_by_a_server_the_agent_does_not_trust_is_never_accepted() {
        let ours = TestCa::new("byoc-control CA");
        let attacker = TestCa::new("byoc-control CA");
        // The attacker's server offers its own CA, alone or beside ours.
        for offered in [offer(&[&attacker]), offer(&[&attacker, &ours])] {
            let err = accept_offer(
                std::slice::from_ref(&ours.der),
                &offered,
                &attacker.server_chain(),
                &name(),
                UnixTime::now(),
            )
            .expect_err("accepted from an unauthenticated server");
            assert!(matches!(err, TrustError::NotAuthenticated(_)), "{err}");
        }
        // No chain observed at all: nothing is accepted either.
        let err = accept_offer(
            std::slice::from_ref(&ours.der),
            &offer(&[&attacker]),
            &[],
            &name(),
            UnixTime::now(),
        )
        .expect_err("accepted without a chain");
        assert!(matches!(err, TrustError::NotAuthenticated(_)), "{err}");
    }

    #[test]
    fn an_authenticated_server_may_add_a_ca_then_drop_the_old_one() {
        let old = TestCa::new("byoc-control CA");
        let new = TestCa::new("byoc-control CA 2");
        // Overlap: the leaf is still from the old CA, the chain carries the
        // cross-certificate and the new CA.
        let overlap_chain = vec![
            old.leaf(ExtendedKeyUsagePurpose::ServerAuth, &["127.0.0.1"]),
            old.der.clone(),
            new.cross_certify(&old, "byoc-control CA"),
            new.der.clone(),
        ];
        let both = accept_offer(
            std::slice::from_ref(&old.der),
            &offer(&[&new, &old]),
            &overlap_chain,
            &name(),
            UnixTime::now(),
        )
        .expect("accepted")
        .expect("a change");
        assert_eq!(
            fingerprints(both.certs()),
            fingerprints(&[new.der.clone(), old.der.clone()])
        );
        // An agent that trusts only the new CA verifies the overlap chain too.
        assert!(verify_server(std::slice::from_ref(&new.der), &overlap_chain, &name(), UnixTime::now()).is_ok());
        // Offering what is already trusted changes nothing.
        let same = accept_offer(
            both.certs(),
            &offer(&[&new, &old]),
            &overlap_chain,
            &name(),
            UnixTime::now(),
        );
        assert!(same.expect("same").is_none());
        // After the rotation: the new CA's leaf, and the old CA dropped.
        let only_new = accept_offer(
            both.certs(),
            &offer(&[&new]),
            &new.server_chain(),
            &name(),
            UnixTime::now(),
        )
        .expect("accepted")
        .expect("a change");
        assert_eq!(only_new.certs(), std::slice::from_ref(&new.der));
    }

    #[test]
    fn an_offer_that_would_lock_the_agent_out_or_is_not_made_of_cas_is_refused() {
        let old = TestCa::new("byoc-control CA");
        let other = TestCa::new("another CA");
        let err = accept_offer(
            std::slice::from_ref(&old.der),
            &offer(&[&other]),
            &old.server_chain(),
            &name(),
            UnixTime::now(),
        )
        .expect_err("lock-out accepted");
        assert!(matches!(err, TrustError::WouldLockOut(_)), "{err}");

        let leaf = old.leaf(ExtendedKeyUsagePurpose::ServerAuth, &["127.0.0.1"]);
        let err = accept_offer(
            std::slice::from_ref(&old.der),
            &[old.der.to_vec(), leaf.to_vec()],
            &old.server_chain(),
            &name(),
            UnixTime::now(),
        )
        .expect_err("a leaf as a CA");
        assert!(matches!(err, TrustError::NotCa { index: 1, .. }), "{err}");
        assert!(
            accept_offer(
                std::slice::from_ref(&old.der),
                &[],
                &old.server_chain(),
                &name(),
                UnixTime::now()
            )
            .expect("empty")
            .is_none()
        );
    }

    #[test]
    fn issued_by_tells_which_ca_issued_a_client_certificate() {
        let a = TestCa::new("A");
        let b = TestCa::new("B");
        let cert = a.leaf(ExtendedKeyUsagePurpose::ClientAuth, &[]);
        assert!(issued_by(&cert, &a.der));
        assert!(!issued_by(&cert, &b.der));
    }

    #[test]
    fn pem_round_trips() {
        use rustls_pki_types::pem::PemObject as _;
        let a = TestCa::new("A");
        let b = TestCa::new("B");
        let pem = to_pem(&[a.der.clone(), b.der.clone()]);
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parse");
        assert_eq!(back, vec![a.der, b.der]);
    }
}
