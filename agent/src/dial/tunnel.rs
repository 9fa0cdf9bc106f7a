//! An HTTP CONNECT tunnel through a proxy (RFC 9110 §9.3.6), made with hyper's
//! HTTP/1 client. The agent's TLS session then runs inside the tunnel, end to
//! end with the control plane: the proxy relays ciphertext only.
//!
//! hyper-util's `Tunnel` connector does the same handshake but reports every
//! refusal as "unsuccessful", without the proxy's status line, which is what an
//! operator needs to tell a wrong password (407) from a blocked port (403).

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HOST, HeaderValue, PROXY_AUTHORIZATION};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::proxy::ProxyUrl;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the proxy {proxy}")]
    Unreachable {
        proxy: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the proxy {proxy} refused the credentials for the tunnel to {target}: {status_line} \
         (check the proxy user name and password)"
    )]
    AuthRefused {
        proxy: String,
        target: String,
        status_line: String,
    },
    #[error("the proxy {proxy} refused the tunnel to {target}: {status_line}")]
    Refused {
        proxy: String,
        target: String,
        status_line: String,
    },
    #[error("the proxy {proxy} failed while opening the tunnel to {target}")]
    Protocol {
        proxy: String,
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the proxy credentials cannot be sent in an HTTP header")]
    BadCredentials,
    #[error("cannot build a CONNECT request for {target}")]
    BadRequest {
        target: String,
        #[source]
        source: hyper::http::Error,
    },
}

/// Connects to `proxy` and asks it for a tunnel to `host:port`. The proxy
/// resolves `host` itself (the agent's VPC may have no DNS for it).
pub async fn open(proxy: &ProxyUrl, host: &str, port: u16) -> Result<TokioIo<Upgraded>, TunnelError> {
    let target = super::authority(host, port);
    let name = proxy.to_string();
    let tcp = tokio::net::TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| TunnelError::Unreachable {
            proxy: name.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let protocol = |source| TunnelError::Protocol {
        proxy: name.clone(),
        target: target.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(protocol)?;
    // Drives the proxy connection until the tunnel is handed over (or fails;
    // the request below then reports why).
    tokio::spawn(conn.with_upgrades());

    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.as_str())
        .header(HOST, target.as_str());
    if let Some(auth) = proxy.basic_auth() {
        let mut value = HeaderValue::from_str(&auth).map_err(|_| TunnelError::BadCredentials)?;
        value.set_sensitive(true);
        req = req.header(PROXY_AUTHORIZATION, value);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|source| TunnelError::BadRequest {
            target: target.clone(),
            source,
        })?;
    let res = sender.send_request(req).await.map_err(protocol)?;
    let status = res.status();
    if status.is_success() {
        return hyper::upgrade::on(res).await.map(TokioIo::new).map_err(protocol);
    }
    let reason = res
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| status.canonical_reason().map(str::to_string))
        .unwrap_or_default();
    let status_line = format!("{:?} {} {reason}", res.version(), status.as_u16());
    // 407 is the proxy's own challenge; some proxies (tinyproxy) answer wrong
    // credentials with 401.
    Err(
        if matches!(
            status,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED | StatusCode::UNAUTHORIZED
        ) {
            TunnelError::AuthRefused {
                proxy: name,
                target,
                status_line,
            }
        } else {
            TunnelError::Refused {
                proxy: name,
                target,
                status_line,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A one-shot proxy: reads one request head, answers `reply`, then echoes.
    async fn scripted_proxy(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tcp = BufReader::new(tcp);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if tcp.read_line(&mut line).await.expect("read") == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            tcp.get_mut().write_all(reply.as_bytes()).await.expect("reply");
            let mut buf = [0u8; 5];
            if tcp.read_exact(&mut buf).await.is_ok() {
                tcp.get_mut().write_all(&buf).await.expect("echo");
            }
            head
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_after_a_200_with_the_credentials_sent_once() {
        let (port, proxy) = scripted_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let url = ProxyUrl::parse(&format!("http://bob:pw@127.0.0.1:{port}")).expect("url");
        let mut io = open(&url, "cp.example", 7443).await.expect("tunnel");
        io.write_all(b"hello").await.expect("write");
        let mut back = [0u8; 5];
        io.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"hello");
        let head = proxy.await.expect("proxy");
        assert!(head.starts_with("CONNECT cp.example:7443 HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("host: cp.example:7443"), "{head}");
        assert!(head.contains("Basic Ym9iOnB3"), "{head}");
    }

    #[tokio::test]
    async fn refusals_name_the_proxy_and_its_status_line_but_not_the_password() {
        let (port, _p) =
            scripted_proxy("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
        let url = ProxyUrl::parse(&format!("http://bob:hunter2@127.0.0.1:{port}")).expect("url");
        let err = open(&url, "cp.example", 7443).await.expect_err("407");
        let msg = err.to_string();
        assert!(matches!(err, TunnelError::AuthRefused { .. }), "{msg}");
        assert!(msg.contains(&format!("http://bob@127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("HTTP/1.1 407 Proxy Authentication Required"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");

        let (port, _p) = scripted_proxy("HTTP/1.1 403 Access violation\r\nContent-Length: 0\r\n\r\n").await;
        let url = ProxyUrl::parse(&format!("127.0.0.1:{port}")).expect("url");
        let msg = open(&url, "::1", 7443).await.expect_err("403").to_string();
        assert!(
            msg.contains("refused the tunnel to [::1]:7443: HTTP/1.1 403 Access violation"),
            "{msg}"
        );

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let url = ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let err = open(&url, "cp", 1).await.expect_err("unreachable");
        assert!(matches!(err, TunnelError::Unreachable { .. }), "{err}");
    }
}
