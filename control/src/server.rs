//! `byoc-control serve`: the TLS listener for agents and the Unix socket for
//! operators, over one store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use byoc_proto::agent::v1::agent_service_server::AgentServiceServer;
use byoc_proto::control::v1::admin_service_server::AdminServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tracing::{debug, info, warn};

use crate::admin::AdminApi;
use crate::hub::Hub;
use crate::pki::Pki;
use crate::service::{AgentApi, ServiceConfig};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Names and addresses the server certificate is valid for.
    pub server_names: Vec<String>,
    pub cert_lifetime: Duration,
    pub heartbeat_interval: Duration,
}

/// The operator socket in a data directory.
pub fn admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The longest client certificate lifetime `serve` accepts.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Runs the control plane until `shutdown` resolves.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if cfg.heartbeat_interval < Duration::from_secs(1) || cfg.heartbeat_interval > Duration::from_secs(300) {
        anyhow::bail!("--heartbeat-interval must be between 1s and 5m (agents clamp to that range too)");
    }
    if cfg.cert_lifetime < Duration::from_secs(5) || cfg.cert_lifetime > MAX_CERT_LIFETIME {
        anyhow::bail!(
            "--cert-lifetime must be between 5s and 365days: agents renew at two thirds of it, so a short one costs \
             little, and a longer one would outlive any reasonable CA rotation"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", cfg.data_dir.display()))?;
    }
    // One control plane per data directory, held until the process ends.
    let _lock = byoc_wal::DirLock::acquire(&cfg.data_dir, "control plane")?;
    let pki = Arc::new(Pki::load_or_create(&cfg.data_dir, &cfg.server_names)?);
    let store = Store::open(&cfg.data_dir.join("state.log"))?;
    let api = AgentApi {
        store,
        hub: Hub::default(),
        pki: pki.clone(),
        cfg: Arc::new(ServiceConfig {
            cert_lifetime: cfg.cert_lifetime,
            heartbeat_interval: cfg.heartbeat_interval,
            // From the operation key, which a CA rotation does not change.
            control_plane_id: format!(
                "byoc-control-{}",
                &hex::encode(byoc_proto::transport::fingerprint(&byoc_proto::signing::public_key(
                    &pki.op_key
                )))[..12]
            ),
        }),
    };

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let accept_pki = pki.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // The CAs in force now: a rotation changes them for new connections.
            let acceptor = TlsAcceptor::from(accept_pki.server_tls());
            let conn_tx = conn_tx.clone();
            // Handshakes run apart, so a slow or hostile client cannot stall others.
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let sock = admin_socket(&cfg.data_dir);
    let _ = std::fs::remove_file(&sock);
    // The socket is made inside the data directory, which is 0700 already,
    // so no other user can reach it between the bind and the chmod.
    let uds = UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    }
    // And each connection's peer is checked, not only the file's mode: the
    // data directory's owner or root, as the kernel reports the peer.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&cfg.data_dir)?.uid()
    };
    let admin = tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(AdminApi(api.clone())))
        .serve_with_incoming(admin_peers(uds, owner));
    tokio::spawn(admin);

    // The address file is the readiness signal for scripts and tests.
    let url = format!("https://{addr}");
    let addr_file = cfg.data_dir.join("listen.url");
    byoc_wal::write_atomic(&addr_file, url.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", addr_file.display()))?;
    info!(%url, data_dir = %cfg.data_dir.display(), ca_fingerprint = %hex::encode(pki.ca_fingerprint()), "control plane listening");

    let agent_svc = AgentServiceServer::new(api)
        .max_decoding_message_size(byoc_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(byoc_proto::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(agent_svc)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown)
        .await?;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// The admin socket's connections whose peer is `owner` (the data
/// directory's owner) or root; others are closed unanswered, with a warning.
fn admin_peers(
    uds: UnixListener,
    owner: u32,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    use tokio_stream::StreamExt;
    UnixListenerStream::new(uds).filter(move |conn| match conn {
        Err(_) => true,
        Ok(stream) => match stream.peer_cred() {
            Ok(cred) if cred.uid() == owner || cred.uid() == 0 => true,
            Ok(cred) => {
                warn!(uid = cred.uid(), pid = ?cred.pid(), "admin socket: refused a connection from another user");
                false
            }
            Err(e) => {
                warn!(error = %e, "admin socket: refused a connection whose peer is unknown");
                false
            }
        },
    })
}
