//! Dialing the control plane: TCP (directly, or through an HTTP CONNECT tunnel
//! of a proxy, [`proxy`]), then rustls (TLS 1.3, our configuration, end
//! to end with the control plane), then HTTP/2 with keepalive. The agent only
//! ever dials out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use serde::Deserialize;

pub mod proxy;
pub mod tunnel;

use proxy::{ProxyConfigError, ProxySettings};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("control plane URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the control plane at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    /// True when the control plane was reached but the certificate it
    /// presented was not accepted (as opposed to it being unreachable).
    /// Decided on the TLS library's error type, never on text.
    pub fn is_certificate_rejected(&self) -> bool {
        matches!(
            byoc_errors::find::<rustls::Error>(self),
            Some(rustls::Error::InvalidCertificate(_))
        )
    }
}

/// Host and port of an `https://host:port` URL.
pub fn parse_url(url: &str) -> Result<(String, u16), ConnectError> {
    let bad = |reason: &str| ConnectError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("expected https://host:port"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "the scheme must be https: the agent never talks to a control plane in plaintext",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// First wait before reconnecting; doubles (with jitter) up to `max_backoff`.
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTPS proxy to the control plane (HTTP CONNECT),
    /// `http://[user[:password]@]host[:port]`; wins over `HTTPS_PROXY`.
    #[serde(default)]
    pub proxy: Option<proxy::ProxyUrl>,
    /// A file whose first line is the proxy password (mode 0600), so that it
    /// need not sit in agent.toml; the proxy URL then names only the user.
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// Hosts reached without the proxy (`NO_PROXY` syntax, as a list); wins
    /// over `NO_PROXY`.
    #[serde(default)]
    pub no_proxy: Option<proxy::NoProxy>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            connect_timeout: default_connect_timeout(),
            proxy: None,
            proxy_password_file: None,
            no_proxy: None,
        }
    }
}

fn default_min_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How the agent dials: its connect timeout and proxy settings.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub connect_timeout: Duration,
    pub proxy: Arc<ProxySettings>,
}

/// A byte stream to the control plane: a TCP connection or a proxy tunnel.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Dialer {
    /// From the `[connection]` settings and this process's environment
    /// (`HTTPS_PROXY`, `NO_PROXY`, ...).
    pub fn from_config(cfg: &ConnectionConfig) -> Result<Self, ProxyConfigError> {
        Ok(Self {
            connect_timeout: cfg.connect_timeout,
            proxy: Arc::new(ProxySettings::resolve(cfg, |name| std::env::var(name).ok())?),
        })
    }

    /// How `url` is reached (direct or through which proxy), for the log.
    pub fn describe(&self, url: &str) -> String {
        match parse_url(url) {
            Ok((host, port)) => self.proxy.describe(&host, port),
            Err(_) => "direct".into(),
        }
    }

    /// Opens a gRPC channel to `url` with `tls`, through the proxy when one
    /// applies. Fails fast when the control plane (or the proxy) is down.
    pub async fn channel(&self, url: &str, tls: rustls::ClientConfig) -> Result<Channel, ConnectError> {
        Ok(self.channel_observed(url, tls).await?.0)
    }

    /// As [`Dialer::channel`], also returning the certificate chain the
    /// control plane presented (on the channel's latest connection, which
    /// `tls` verified).
    pub async fn channel_observed(
        &self,
        url: &str,
        tls: rustls::ClientConfig,
    ) -> Result<(Channel, ServerChain), ConnectError> {
        let observed = ServerChain::default();
        let channel = channel(url, tls, self.connect_timeout, self.proxy.clone(), observed.clone()).await?;
        Ok((channel, observed))
    }
}

/// The certificate chain the control plane presented, leaf first.
#[derive(Debug, Clone, Default)]
pub struct ServerChain(Arc<std::sync::Mutex<Vec<CertificateDer<'static>>>>);

impl ServerChain {
    pub fn get(&self) -> Vec<CertificateDer<'static>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, chain: Vec<CertificateDer<'static>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = chain;
    }
}

async fn channel(
    url: &str,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    proxy: Arc<ProxySettings>,
    observed: ServerChain,
) -> Result<Channel, ConnectError> {
    let (host, port) = parse_url(url)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::BadUrl {
        url: url.to_string(),
        reason: "host is not a DNS name or IP address".into(),
    })?;
    let connector = TlsConnector::from(Arc::new(tls));
    // The endpoint's own URI is only a label: the connector below dials and
    // does TLS itself, with our configuration.
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(&host, port)))
        .map_err(|e| ConnectError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let host = host.clone();
            let proxy = proxy.clone();
            let observed = observed.clone();
            async move {
                let io: Box<dyn Io> = match proxy.route(&host, port) {
                    Some(p) => Box::new(
                        tokio::time::timeout(connect_timeout, tunnel::open(p, &host, port))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("the proxy {p} did not open a tunnel within {connect_timeout:?}"),
                                )
                            })?
                            .map_err(std::io::Error::other)?,
                    ),
                    None => {
                        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                        tcp.set_nodelay(true)?;
                        Box::new(tcp)
                    }
                };
                let tls = connector.connect(server_name, io).await?;
                let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
                observed.set(chain.iter().map(|c| c.clone().into_owned()).collect());
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|source| ConnectError::Unreachable {
            url: url.to_string(),
            source,
        })
}

/// `host:port`, with an IPv6 literal in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
