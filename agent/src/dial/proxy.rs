//! Which HTTPS proxy, if any, stands between the agent and the control plane.
//!
//! Settings come from `agent.toml` (`[connection] proxy`, `proxy_password_file`,
//! `no_proxy`) and from the environment (`HTTPS_PROXY`/`https_proxy`,
//! `NO_PROXY`/`no_proxy`). Each config key wins over its environment variable;
//! the password file applies to whichever proxy URL is in effect. The tunnel
//! itself (HTTP CONNECT) is in [`super::tunnel`].
//!
//! A proxy password is a secret: [`ProxyUrl`] keeps it out of `Display` and
//! `Debug`, so it cannot reach a log line, an error or the audit log by accident.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// A proxy for HTTP CONNECT: `http://[user[:password]@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyUrlError(String);

impl ProxyUrl {
    /// Parses a proxy URL. A missing scheme means `http`; the port defaults to 80.
    pub fn parse(text: &str) -> Result<Self, ProxyUrlError> {
        let bad = |why: &str| ProxyUrlError(why.to_string());
        let text = text.trim();
        let rest = match text.split_once("://") {
            None => text,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(bad(
                    "a TLS connection to the proxy itself (https://) is not supported: write http://host:port \
                     (the tunnel still carries the agent's own TLS 1.3 session end to end)",
                ));
            }
            Some((scheme, _)) => {
                return Err(ProxyUrlError(format!(
                    "scheme {scheme:?} is not supported: expected http://[user[:password]@]host[:port]"
                )));
            }
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if !path.is_empty() && path != "/" {
            return Err(bad(
                "a proxy URL has no path: expected http://[user[:password]@]host[:port]",
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(bad("the proxy URL has a password but no user name"));
                }
                (Some(decode(user)?), password.map(decode).transpose()?)
            }
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("expected host or host:port after http://"))?;
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(bad("the proxy URL has no valid host"));
        }
        Ok(Self {
            host,
            port: port.unwrap_or(80),
            user,
            password,
        })
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The value of a `Proxy-Authorization` header, when the URL has a user.
    pub fn basic_auth(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let pair = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    }

    /// `host:port` (IPv6 literals in brackets).
    pub fn address(&self) -> String {
        super::authority(&self.host, self.port)
    }
}

/// Shows the proxy without its password: `http://user@host:port`.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "http://{u}@{}", self.address()),
            None => write!(f, "http://{}", self.address()),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn decode(s: &str) -> Result<String, ProxyUrlError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ProxyUrlError("the proxy user name or password is not UTF-8 once percent-decoded".into()))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_string(), port));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Some((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

/// Hosts to reach directly, as in `NO_PROXY`: `*`, domain names (which also
/// match their subdomains; a leading `.` or `*.` is allowed), IP addresses,
/// CIDR blocks, each optionally with `:port`. Names are compared as names: no
/// DNS look-up is made, so `localhost` does not match `127.0.0.1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<Rule>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    All,
    Domain(String, Option<u16>),
    Net(IpAddr, u8, Option<u16>),
}

impl NoProxy {
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, ProxyUrlError> {
        let mut rules = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            rules.push(Rule::parse(entry).ok_or_else(|| {
                ProxyUrlError(format!(
                    "{entry:?} is not a host name, IP address or CIDR block (each optionally with :port), nor *"
                ))
            })?);
        }
        Ok(Self(rules))
    }

    /// True when `host:port` must be reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|rule| match rule {
            Rule::All => true,
            Rule::Domain(d, p) => {
                p.is_none_or(|p| p == port)
                    && ip.is_none()
                    && (name == *d || name.strip_suffix(d.as_str()).is_some_and(|s| s.ends_with('.')))
            }
            Rule::Net(net, len, p) => p.is_none_or(|p| p == port) && ip.is_some_and(|ip| in_net(ip, *net, *len)),
        })
    }
}

impl Rule {
    fn parse(entry: &str) -> Option<Self> {
        if entry == "*" {
            return Some(Self::All);
        }
        if let Some((addr, len)) = entry.split_once('/') {
            let addr: IpAddr = addr.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return (len <= max).then_some(Self::Net(addr, len, None));
        }
        let (host, port) = split_host_port(entry)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Self::Net(ip, if ip.is_ipv4() { 32 } else { 128 }, port));
        }
        let domain = host
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .trim_end_matches('.');
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        valid.then(|| Self::Domain(domain.to_ascii_lowercase(), port))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl<'de> Deserialize<'de> for NoProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        Self::parse(entries.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Config => f.write_str("agent.toml"),
            Source::Env(name) => f.write_str(name),
        }
    }
}

/// The proxy settings in effect, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    pub proxy: Option<(ProxyUrl, Source)>,
    pub no_proxy: NoProxy,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("{source_name}: the proxy URL is not valid: {error}")]
    BadUrl { source_name: String, error: ProxyUrlError },
    #[error("{source_name}: {error}")]
    BadNoProxy { source_name: String, error: ProxyUrlError },
    #[error("connection.proxy_password_file {}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        problem: PasswordFileProblem,
    },
}

/// What is wrong with `connection.proxy_password_file`.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileProblem {
    #[error("the proxy {0} has no user name for this password")]
    NoUser(String),
    #[error("the proxy URL already has a password: keep it in one place only (the file), as http://{0}")]
    AlsoInUrl(String),
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("mode {0:o} lets other users read or change it; make it 0600 (or 0640)")]
    Mode(u32),
    #[error("the file is empty: its first line is the proxy password")]
    Empty,
}

impl ProxySettings {
    /// Combines the config's keys with the environment (`env` looks a variable
    /// up; an empty value counts as unset). Config keys win over their
    /// variables: `proxy` over `HTTPS_PROXY`, then `https_proxy`; `no_proxy`
    /// over `NO_PROXY`, then `no_proxy`.
    pub fn resolve(
        cfg: &super::ConnectionConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProxyConfigError> {
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        };
        let proxy = match &cfg.proxy {
            Some(p) => Some((p.clone(), Source::Config)),
            None => match first(&["HTTPS_PROXY", "https_proxy"]) {
                None => None,
                Some((name, value)) => {
                    let url = ProxyUrl::parse(&value).map_err(|error| ProxyConfigError::BadUrl {
                        source_name: name.to_string(),
                        error,
                    })?;
                    Some((url, Source::Env(name)))
                }
            },
        };
        let no_proxy = match &cfg.no_proxy {
            Some(n) => n.clone(),
            None => match first(&["NO_PROXY", "no_proxy"]) {
                None => NoProxy::default(),
                Some((name, value)) => {
                    NoProxy::parse(value.split(',')).map_err(|error| ProxyConfigError::BadNoProxy {
                        source_name: name.to_string(),
                        error,
                    })?
                }
            },
        };
        let mut settings = Self { proxy, no_proxy };
        if let (Some(path), Some((url, _))) = (&cfg.proxy_password_file, settings.proxy.as_mut()) {
            let bad = |problem| ProxyConfigError::PasswordFile {
                path: path.clone(),
                problem,
            };
            if url.user.is_none() {
                return Err(bad(PasswordFileProblem::NoUser(url.to_string())));
            }
            if url.has_password() {
                return Err(bad(PasswordFileProblem::AlsoInUrl(format!(
                    "{}@{}",
                    url.user.as_deref().unwrap_or_default(),
                    url.address()
                ))));
            }
            url.password = Some(read_password(path).map_err(bad)?);
        }
        Ok(settings)
    }

    /// The proxy to use for `host:port`, or None to connect directly.
    pub fn route(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        let (url, _) = self.proxy.as_ref()?;
        (!self.no_proxy.matches(host, port)).then_some(url)
    }

    /// How `host:port` is reached, for the log: never shows a password.
    pub fn describe(&self, host: &str, port: u16) -> String {
        match (&self.proxy, self.route(host, port)) {
            (None, _) => "direct".to_string(),
            (Some((url, source)), Some(_)) => format!("through the proxy {url} (from {source})"),
            (Some(_), None) => "direct (no_proxy matches the control plane)".to_string(),
        }
    }
}

/// The first line of `path`, which must not be readable by other users.
fn read_password(path: &Path) -> Result<String, PasswordFileProblem> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(PasswordFileProblem::Read)?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(PasswordFileProblem::Mode(mode & 0o777));
        }
    }
    let text = std::fs::read_to_string(path).map_err(PasswordFileProblem::Read)?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(PasswordFileProblem::Empty);
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_percent_decoded_credentials_and_never_show_the_password() {
        let u = ProxyUrl::parse("http://al%40ice:p%3Ass@proxy.corp:3128/").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref()),
            ("proxy.corp", 3128, Some("al@ice"))
        );
        assert_eq!(u.basic_auth().as_deref(), Some("Basic YWxAaWNlOnA6c3M="));
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("p:ss") && !shown.contains("p%3Ass"), "{shown}");
        assert_eq!(u.to_string(), "http://al@ice@proxy.corp:3128");

        let u = ProxyUrl::parse("[::1]:8080").expect("bare v6");
        assert_eq!((u.host.as_str(), u.port, u.basic_auth()), ("::1", 8080, None));
        assert_eq!(u.to_string(), "http://[::1]:8080");
        assert_eq!(ProxyUrl::parse("HTTP://proxy").expect("default port").port, 80);

        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy:99999",
            "http://:pw@proxy:1",
            "http://proxy:3128/path",
            "http://",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        let err = ProxyUrl::parse("https://u:secret@proxy:3128").expect_err("https");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn no_proxy_matches_like_curl_and_go() {
        let n = NoProxy::parse(".corp.example, internal:8443, 10.0.0.0/8, 192.168.1.7, [fd00::]/8, ::1".split(','))
            .expect("parse");
        assert!(n.matches("corp.example", 443));
        assert!(n.matches("cp.CORP.example.", 443));
        assert!(!n.matches("notcorp.example", 443));
        assert!(n.matches("internal", 8443));
        assert!(n.matches("a.internal", 8443));
        assert!(!n.matches("internal", 443), "the port is part of the entry");
        assert!(n.matches("10.200.3.4", 1));
        assert!(!n.matches("11.0.0.1", 1));
        assert!(n.matches("192.168.1.7", 7443));
        assert!(!n.matches("192.168.1.8", 7443));
        assert!(n.matches("[fd12::1]", 1));
        assert!(n.matches("::1", 1));
        assert!(!n.matches("localhost", 1), "no DNS look-up: names are names");
        assert!(NoProxy::parse(["*"]).expect("all").matches("anything", 1));
        assert!(NoProxy::parse(["0.0.0.0/0"]).expect("all v4").matches("8.8.8.8", 1));
        assert!(!NoProxy::default().matches("x", 1));
        for bad in ["10.0.0.0/33", "host:port", "a b", "[::1"] {
            assert!(NoProxy::parse([bad]).is_err(), "{bad} was accepted");
        }
    }

    fn cfg(proxy: Option<&str>, no_proxy: Option<&[&str]>) -> crate::dial::ConnectionConfig {
        crate::dial::ConnectionConfig {
            proxy: proxy.map(|p| ProxyUrl::parse(p).expect("url")),
            no_proxy: no_proxy.map(|n| NoProxy::parse(n.iter().copied()).expect("no_proxy")),
            ..Default::default()
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn config_keys_win_over_their_environment_variables() {
        let vars = [
            ("HTTPS_PROXY", "http://env:3128"),
            ("https_proxy", "http://lower:3128"),
            ("NO_PROXY", "skip.example"),
        ];
        let s = ProxySettings::resolve(&cfg(None, None), env(&vars)).expect("env");
        assert_eq!(s.route("cp.example", 443).map(|u| u.host.as_str()), Some("env"));
        assert_eq!(s.route("skip.example", 443), None);
        assert!(s.describe("cp.example", 443).contains("from HTTPS_PROXY"));

        let s =
            ProxySettings::resolve(&cfg(Some("http://conf:8080"), Some(&["other.example"])), env(&vars)).expect("cfg");
        assert_eq!(s.route("skip.example", 443).map(|u| u.host.as_str()), Some("conf"));
        assert_eq!(s.route("other.example", 443), None);

        let s = ProxySettings::resolve(
            &cfg(None, None),
            env(&[("https_proxy", "lower:1"), ("HTTPS_PROXY", " ")]),
        )
        .expect("lower");
        assert_eq!(s.route("cp", 443).map(|u| u.host.as_str()), Some("lower"));
        assert!(
            ProxySettings::resolve(&cfg(None, None), env(&[]))
                .expect("none")
                .route("cp", 443)
                .is_none()
        );

        let err = ProxySettings::resolve(&cfg(None, None), env(&[("HTTPS_PROXY", "socks5://u:hunter2@p:1")]))
            .expect_err("bad env");
        assert!(err.to_string().starts_with("HTTPS_PROXY"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = ProxySettings::resolve(&cfg(None, None), env(&[("NO_PROXY", "10.0.0.0/40")])).expect_err("bad");
        assert!(err.to_string().starts_with("NO_PROXY"), "{err}");
    }

    #[test]
    fn the_password_file_fills_in_the_password_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = cfg(Some("http://alice@proxy:3128"), None);
        c.proxy_password_file = Some(path.clone());
        let s = ProxySettings::resolve(&c, env(&[])).expect("resolve");
        let url = s.route("cp", 443).expect("proxied");
        assert_eq!(url.basic_auth().as_deref(), Some("Basic YWxpY2U6czNjcmV0"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ProxySettings::resolve(&c, env(&[])).expect_err("world-readable");
        assert!(byoc_errors::chain(&err).contains("0600"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut twice = cfg(Some("http://alice:other@proxy:3128"), None);
        twice.proxy_password_file = Some(path);
        let err = ProxySettings::resolve(&twice, env(&[])).expect_err("two passwords");
        assert!(byoc_errors::chain(&err).contains("one place"), "{err}");
        assert!(!byoc_errors::chain(&err).contains("other"), "{err}");
    }
}
