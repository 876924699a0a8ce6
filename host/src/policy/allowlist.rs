//! Outbound host allowlist: which `scheme://host:port` a plugin may reach.
//!
//! Grammar (Spin's `allowed_outbound_hosts`), one entry per string:
//!
//! | entry                          | allows                                                  |
//! |--------------------------------|---------------------------------------------------------|
//! | `https://api.e2b.app`          | that host, port 443                                      |
//! | `http://127.0.0.1:8080`        | that IP, that port                                       |
//! | `https://*.modal.run`          | any subdomain of `modal.run` (not `modal.run` itself), 443 |
//! | `http://127.0.0.1:*`           | that host, any port                                      |
//! | `http://localhost:3000..3010`  | that host, ports 3000 through 3009                        |
//! | `*://example.com:8443`         | http or https to that host and port                      |
//! | `https://*`                    | any public host on 443 (never loopback or link-local)    |
//!
//! The scheme is required; a missing port means the scheme's default. Paths, queries and
//! credentials are rejected at parse time, so a typo fails loudly instead of granting more.
//!
//! Why loopback needs an explicit entry: localbox, emulators and cloud metadata services live on
//! loopback and link-local addresses, and a plugin that may reach "any host" must not reach them.
//! Wildcard hosts therefore never match `localhost`, loopback, link-local or unspecified
//! addresses; only an entry naming that exact host does. The resolver applies the same rule to
//! names that resolve to such addresses (see `outbound::resolve`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: SchemePattern,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SchemePattern {
    Any,
    Exact(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any public host.
    Any,
    /// `*.suffix`: any subdomain of suffix.
    Subdomains(String),
    /// An exact name or IP literal (lowercase; IPv6 without brackets).
    Exact(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortPattern {
    Any,
    /// Inclusive start, exclusive end.
    Range(u16, u32),
}

/// An entry that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid allowed host {entry:?}: {reason}")]
pub struct AllowlistError {
    pub entry: String,
    pub reason: &'static str,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl FromStr for AllowedHost {
    type Err = AllowlistError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let err = |reason| AllowlistError {
            entry: entry.to_string(),
            reason,
        };
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| err("the scheme is required, e.g. https://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => SchemePattern::Any,
            s @ ("http" | "https") => SchemePattern::Exact(s.to_string()),
            _ => return Err(err("scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(err("the host is missing"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err(
                "only scheme://host[:port] is allowed (no path, query or credentials)",
            ));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("malformed host or port"))?;
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(err("a wildcard must be `*` or `*.domain`"));
            }
            HostPattern::Subdomains(suffix.to_string())
        } else if host.contains('*') {
            return Err(err("a wildcard must be `*` or `*.domain`"));
        } else {
            HostPattern::Exact(host)
        };
        let port = match port {
            None => match &scheme {
                SchemePattern::Exact(s) => {
                    let p = default_port(s).ok_or_else(|| err("unknown default port"))?;
                    PortPattern::Range(p, p as u32 + 1)
                }
                SchemePattern::Any => return Err(err("`*://` needs an explicit port")),
            },
            Some("*") => PortPattern::Any,
            Some(p) => {
                if let Some((a, b)) = p.split_once("..") {
                    let a: u16 = a.parse().map_err(|_| err("malformed port range"))?;
                    let b: u32 = b.parse().map_err(|_| err("malformed port range"))?;
                    if b <= a as u32 || b > 65536 {
                        return Err(err("empty port range"));
                    }
                    PortPattern::Range(a, b)
                } else {
                    let p: u16 = p.parse().map_err(|_| err("malformed port"))?;
                    PortPattern::Range(p, p as u32 + 1)
                }
            }
        };
        Ok(AllowedHost { scheme, host, port })
    }
}

/// Splits `host[:port]`, with IPv6 literals in brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?))),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) if !h.is_empty() && !p.is_empty() && !p.contains(':') => {
                Some((h, Some(p)))
            }
            Some(_) => None,
            None => Some((s, None)),
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            SchemePattern::Any => f.write_str("*")?,
            SchemePattern::Exact(s) => f.write_str(s)?,
        }
        f.write_str("://")?;
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Subdomains(s) => write!(f, "*.{s}")?,
            HostPattern::Exact(h) if h.contains(':') => write!(f, "[{h}]")?,
            HostPattern::Exact(h) => f.write_str(h)?,
        }
        match self.port {
            PortPattern::Any => f.write_str(":*"),
            PortPattern::Range(a, b) if b == a as u32 + 1 => write!(f, ":{a}"),
            PortPattern::Range(a, b) => write!(f, ":{a}..{b}"),
        }
    }
}

impl serde::Serialize for AllowedHost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AllowedHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// True for hosts that only an exact entry may grant: `localhost`, loopback, link-local
/// (cloud metadata lives at 169.254.169.254) and unspecified addresses.
pub fn is_sensitive_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(is_sensitive_ip)
}

/// Addresses a wildcard grant never reaches (see the module docs).
pub fn is_sensitive_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_sensitive_ip(IpAddr::V4(v4));
            }
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl AllowedHost {
    /// The host name of an entry that names one exact host (not an IP literal).
    pub fn exact_name(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Exact(h) if h.parse::<IpAddr>().is_err() => Some(h),
            _ => None,
        }
    }

    /// Whether this entry allows `scheme://host:port`. `host` is lowercase-insensitive and may
    /// carry IPv6 brackets.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let SchemePattern::Exact(s) = &self.scheme {
            if !s.eq_ignore_ascii_case(scheme) {
                return false;
            }
        }
        match self.port {
            PortPattern::Any => {}
            PortPattern::Range(a, b) => {
                if port < a || port as u32 >= b {
                    return false;
                }
            }
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        match &self.host {
            HostPattern::Exact(h) => same_host(h, host),
            HostPattern::Any => !is_sensitive_host(host),
            HostPattern::Subdomains(suffix) => {
                !is_sensitive_host(host)
                    && host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

/// Compares two hosts, treating equal IP literals in different spellings as equal.
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The set of entries granted to one plugin. Empty denies everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Allowlist(pub Vec<AllowedHost>);

impl Allowlist {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowlistError> {
        entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Allowlist)
    }

    /// Whether any entry allows the URI. URIs without scheme or host are denied.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let Some(port) = uri.port_u16().or_else(|| default_port(scheme)) else {
            return false;
        };
        self.0.iter().any(|e| e.allows(scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, url: &str) -> bool {
        Allowlist::parse(&[entry])
            .unwrap()
            .allows_uri(&url.parse().unwrap())
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("https://api.e2b.app", "https://api.e2b.app/sandboxes", true),
            ("https://api.e2b.app", "https://API.E2B.APP/x", true),
            ("https://api.e2b.app", "http://api.e2b.app/", false),
            ("https://api.e2b.app", "https://api.e2b.app:8443/", false),
            ("https://api.e2b.app", "https://evil.app/", false),
            (
                "https://api.e2b.app",
                "https://api.e2b.app.evil.com/",
                false,
            ),
            ("https://*.modal.run", "https://a.modal.run/", true),
            ("https://*.modal.run", "https://a.b.modal.run/", true),
            ("https://*.modal.run", "https://modal.run/", false),
            ("https://*.modal.run", "https://evilmodal.run/", false),
            ("http://127.0.0.1:*", "http://127.0.0.1:9999/", true),
            ("http://127.0.0.1:*", "http://127.0.0.2:9999/", false),
            (
                "http://127.0.0.1:8000..8002",
                "http://127.0.0.1:8001/",
                true,
            ),
            (
                "http://127.0.0.1:8000..8002",
                "http://127.0.0.1:8002/",
                false,
            ),
            ("*://example.com:8443", "http://example.com:8443/", true),
            ("*://example.com:8443", "https://example.com:8443/", true),
            ("https://*", "https://anything.example/", true),
            // Wildcards never reach loopback, link-local or localhost.
            ("https://*", "https://127.0.0.1/", false),
            (
                "http://*:*",
                "http://169.254.169.254/latest/meta-data",
                false,
            ),
            ("http://*:*", "http://localhost:80/", false),
            ("http://*:*", "http://[::1]:80/", false),
            ("http://*:*", "http://[::ffff:127.0.0.1]:80/", false),
            ("https://*.localhost", "https://a.localhost/", false),
            // Exact grants do.
            ("http://localhost:3000", "http://localhost:3000/", true),
            ("http://[::1]:8080", "http://[::1]:8080/", true),
            ("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080/", true),
        ];
        for (entry, url, want) in table {
            assert_eq!(allows(entry, url), *want, "{entry} vs {url}");
        }
    }

    #[test]
    fn empty_list_denies() {
        assert!(!Allowlist::default().allows_uri(&"https://example.com/".parse().unwrap()));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/path",
            "https://user@example.com",
            "https://ex*ample.com",
            "https://*.",
            "https://example.com:99999",
            "https://example.com:10..5",
            "*://example.com",
            "https://[::1",
            "https://example.com:",
        ] {
            assert!(
                bad.parse::<AllowedHost>().is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn display_round_trip() {
        for entry in [
            "https://api.e2b.app:443",
            "http://127.0.0.1:*",
            "*://*.x.io:1..5",
            "http://[::1]:80",
        ] {
            let parsed: AllowedHost = entry.parse().unwrap();
            assert_eq!(parsed.to_string(), entry);
            assert_eq!(parsed.to_string().parse::<AllowedHost>().unwrap(), parsed);
        }
        let json = serde_json::to_string(&Allowlist::parse(&["https://a.io"]).unwrap()).unwrap();
        assert_eq!(json, r#"["https://a.io:443"]"#);
    }
}
