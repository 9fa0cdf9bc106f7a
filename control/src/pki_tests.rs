//! CA rotation on disk and on the wire: what survives a restart, what a crash
//! leaves, and which agents can verify the server at each step.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};

use super::*;

fn names() -> Vec<String> {
    vec!["127.0.0.1".to_string()]
}

fn ca_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("ca"))
        .expect("ca dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Completes a TLS handshake between `client` and the control plane's
/// current server configuration, in memory.
async fn handshake(pki: &Pki, client: ClientConfig) -> Result<(), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls());
    let server = tokio::spawn(async move { acceptor.accept(s).await.map(|_| ()) });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let result = connector.connect(name, c).await.map(|_| ()).map_err(|e| e.to_string());
    let _ = server.await;
    result
}

fn trusting(cas: &[CertificateDer<'static>]) -> ClientConfig {
    byoc_proto::transport::client_config_trusting(cas, None).expect("client config")
}

fn pinned(fp: [u8; 32]) -> ClientConfig {
    byoc_proto::transport::pinned_ca_client_config(fp).expect("pinned config")
}

#[tokio::test]
async fn during_the_overlap_agents_trusting_either_ca_verify_the_server_and_after_it_only_the_new_one() {
    let d = tempfile::tempdir().expect("tempdir");
    let pki = Pki::load_or_create(d.path(), &names()).expect("pki");
    let old = pki.set().active.der.clone();
    let old_fp = pki.ca_fingerprint();
    assert!(handshake(&pki, trusting(std::slice::from_ref(&old))).await.is_ok());

    pki.rotate().expect("rotate");
    let new = pki.set().active.der.clone();
    let new_fp = pki.ca_fingerprint();
    assert_ne!(old_fp, new_fp);
    assert_eq!(pki.trust_bundle(), vec![new.to_vec(), old.to_vec()]);
    for (what, cfg) in [
        (
            "an agent that trusts only the previous CA",
            trusting(std::slice::from_ref(&old)),
        ),
        (
            "an agent that trusts only the new CA",
            trusting(std::slice::from_ref(&new)),
        ),
        ("an agent that trusts both", trusting(&[new.clone(), old.clone()])),
        ("an enrollment pinning the new CA", pinned(new_fp)),
        ("an enrollment pinning the previous CA", pinned(old_fp)),
    ] {
        assert!(
            handshake(&pki, cfg).await.is_ok(),
            "{what} cannot verify the server during the overlap"
        );
    }
    assert!(matches!(pki.rotate(), Err(PkiError::AlreadyRotating { .. })));

    pki.finish().expect("finish");
    assert_eq!(pki.trust_bundle(), vec![new.to_vec()]);
    assert!(handshake(&pki, trusting(std::slice::from_ref(&new))).await.is_ok());
    assert!(handshake(&pki, pinned(new_fp)).await.is_ok());
    let err = handshake(&pki, trusting(std::slice::from_ref(&old)))
        .await
        .expect_err("an agent that trusts only the dropped CA still verifies the server");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(handshake(&pki, pinned(old_fp)).await.is_err());
    assert!(matches!(pki.finish(), Err(PkiError::NotRotating)));
}

#[test]
fn a_rotation_survives_a_restart_and_finish_removes_the_previous_ca_from_disk() {
    let d = tempfile::tempdir().expect("tempdir");
    let first = Pki::load_or_create(d.path(), &names()).expect("pki");
    let old = hex::encode(first.ca_fingerprint());
    first.rotate().expect("rotate");
    let new = hex::encode(first.ca_fingerprint());
    drop(first);

    let again = Pki::load_or_create(d.path(), &names()).expect("reload");
    let (cas, since) = again.status();
    assert_eq!(
        cas.iter().map(|c| c.sha256.clone()).collect::<Vec<_>>(),
        vec![new.clone(), old.clone()]
    );
    assert!(cas[0].active && !cas[1].active && since.is_some());
    assert_ne!(cas[0].subject, cas[1].subject, "the two CAs must have distinct names");
    assert_eq!(
        std::fs::read(d.path().join("ca.der")).expect("ca.der"),
        again.set().active.der.to_vec()
    );
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    };
    assert_eq!(mode(&d.path().join("ca").join(format!("{new}.key"))), 0o600);

    again.finish().expect("finish");
    assert_eq!(ca_files(d.path()), vec![format!("{new}.der"), format!("{new}.key")]);
    let last = Pki::load_or_create(d.path(), &names()).expect("reload");
    assert_eq!(last.status().0.len(), 1);
    assert_eq!(hex::encode(last.ca_fingerprint()), new);
}

#[test]
fn a_rotation_a_crash_left_uncommitted_is_discarded() {
    let d = tempfile::tempdir().expect("tempdir");
    let pki = Pki::load_or_create(d.path(), &names()).expect("pki");
    let fp = hex::encode(pki.ca_fingerprint());
    drop(pki);
    // New CA files written, ca-state.json not yet: the crash came first.
    let (stray, pem) = Ca::generate("byoc-control CA x", 1).expect("ca");
    stray.store(&d.path().join("ca"), &pem).expect("store");
    let pki = Pki::load_or_create(d.path(), &names()).expect("reload");
    assert_eq!(hex::encode(pki.ca_fingerprint()), fp);
    assert_eq!(ca_files(d.path()), vec![format!("{fp}.der"), format!("{fp}.key")]);
}

#[test]
fn a_data_directory_from_before_rotation_keeps_its_ca() {
    let d = tempfile::tempdir().expect("tempdir");
    let key = KeyPair::generate().expect("key");
    let cert = ca_params("byoc-control CA", 0).self_signed(&key).expect("ca");
    std::fs::write(d.path().join("ca.key"), key.serialize_pem()).expect("write");
    std::fs::write(d.path().join("ca.der"), cert.der()).expect("write");
    let pki = Pki::load_or_create(d.path(), &names()).expect("pki");
    assert_eq!(pki.ca_fingerprint(), byoc_proto::transport::fingerprint(cert.der()));
    assert!(!d.path().join("ca.key").exists(), "the key now lives in ca/ only");
    assert_eq!(
        std::fs::read(d.path().join("ca.der")).expect("ca.der"),
        cert.der().to_vec()
    );
}
