//! The operator CLI's client: the admin API over the data directory's Unix socket.

use std::path::Path;

use anyhow::Context as _;
use byoc_proto::control::v1::admin_service_client::AdminServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn connect(data_dir: &Path) -> anyhow::Result<AdminServiceClient<Channel>> {
    let sock = crate::server::admin_socket(data_dir);
    if !sock.exists() {
        anyhow::bail!(
            "no control plane is running with data directory {} (no {}): start one with `byoc-control serve`",
            data_dir.display(),
            sock.display()
        );
    }
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://control.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
        }))
        .await
        .with_context(|| {
            format!(
                "connecting to the control plane's admin socket in {}",
                data_dir.display()
            )
        })?;
    Ok(AdminServiceClient::new(channel))
}
