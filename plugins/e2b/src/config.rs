//! Settings and the URLs they give: the control plane, envd, and exposed ports.

use kit::http::Request;

/// Setting names.
pub const DOMAIN: &str = "domain";
pub const API_URL: &str = "api-url";
pub const SANDBOX_URL: &str = "sandbox-url";
pub const HOME: &str = "home";

/// envd's port in every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// E2B's own domains, served by one edge host that routes on headers.
const KNOWN_DOMAINS: &[&str] = &["e2b.app", "e2b.dev", "e2b-staging.dev", "e2b.local"];

/// The configured base domain (`e2b.app` by default).
pub fn domain() -> String {
    kit::setting(DOMAIN)
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| "e2b.app".into())
}

/// The control plane's base URL: the `api-url` setting, else `https://api.<domain>`.
pub fn api_base() -> String {
    match kit::setting(API_URL).filter(|u| !u.trim().is_empty()) {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("https://api.{}", domain()),
    }
}

/// The sandbox user's home: where relative paths and commands start.
pub fn home() -> String {
    kit::setting(HOME)
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| "/home/user".into())
}

/// An absolute path in the sandbox (relative ones are under the home).
pub fn absolute(path: &str) -> kit::Result<String> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    Ok(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", home().trim_end_matches('/'))
    })
}

/// Where `port` of sandbox `id` is reached, and the headers that route there. The fact
/// sheet's rule: a `sandbox-url` setting (one origin for every sandbox and port) first; E2B's
/// own domains through the shared edge host `sandbox.<domain>`; any other domain at
/// `<port>-<id>.<domain>`. The routing headers are always sent, as the SDK does.
pub fn sandbox_base(id: &str, domain: &str, port: u16) -> (String, Vec<(String, String)>) {
    let headers = vec![
        ("e2b-sandbox-id".to_string(), id.to_string()),
        ("e2b-sandbox-port".to_string(), port.to_string()),
    ];
    if let Some(u) = kit::setting(SANDBOX_URL).filter(|u| !u.trim().is_empty()) {
        return (u.trim_end_matches('/').to_string(), headers);
    }
    if port == ENVD_PORT && KNOWN_DOMAINS.contains(&domain) {
        return (format!("https://sandbox.{domain}"), headers);
    }
    (format!("https://{port}-{id}.{domain}"), headers)
}

/// A control-plane request to `path` (already percent-encoded segments).
pub fn api(method: kit::http::Method, path: &str) -> Request {
    Request::new(method, format!("{}{path}", api_base()))
        .connect_timeout(std::time::Duration::from_secs(30))
        .first_byte_timeout(std::time::Duration::from_secs(120))
}
