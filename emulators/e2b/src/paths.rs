//! Where a request is going (which sandbox, which port) and the mapping between E2B's home
//! directory and localbox's workspace.

use axum::http::HeaderMap;

/// The E2B user's home; relative paths resolve against it.
pub const HOME: &str = "/home/user";
/// Where that home is in a localbox sandbox.
pub const WORKSPACE: &str = "/workspace";

/// `(sandbox id, port)` of a request addressed to a sandbox: from the `E2b-Sandbox-Id` /
/// `E2b-Sandbox-Port` headers, else from a `Host` of the form `<port>-<id>.<domain>`.
pub fn target(headers: &HeaderMap) -> Option<(String, u16)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("e2b-sandbox-id") {
        let port = header("e2b-sandbox-port")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(crate::ENVD_PORT);
        return Some((id.trim().to_string(), port));
    }
    let host = header("host")?;
    let first = host.split('.').next()?;
    if !host.contains('.') || first.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    let (port, id) = first.split_once('-')?;
    let port: u16 = port.parse().ok()?;
    let id_ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric());
    id_ok.then(|| (id.to_string(), port))
}

/// An E2B path as localbox sees it: relative → under the home; `/home/user` → `/workspace`.
pub fn to_local(path: &str) -> String {
    if path.is_empty() || path == "~" {
        return WORKSPACE.to_string();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return format!("{WORKSPACE}/{rest}");
    }
    if !path.starts_with('/') {
        return format!("{WORKSPACE}/{path}");
    }
    match path.strip_prefix(HOME) {
        Some("") => WORKSPACE.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{WORKSPACE}{rest}"),
        _ => path.to_string(),
    }
}

/// A localbox path as the client should see it: back under `/home/user` when the client
/// asked in those terms (`home_view`), unchanged otherwise.
pub fn to_remote(path: &str, home_view: bool) -> String {
    if !home_view {
        return path.to_string();
    }
    match path.strip_prefix(WORKSPACE) {
        Some("") => HOME.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{HOME}{rest}"),
        _ => path.to_string(),
    }
}

/// Whether the client speaks of the home as `/home/user` (or relatively) in this path.
pub fn home_view(path: &str) -> bool {
    !path.starts_with('/') || path == HOME || path.starts_with("/home/user/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_home_both_ways() {
        assert_eq!(to_local("a.txt"), "/workspace/a.txt");
        assert_eq!(to_local("/home/user"), "/workspace");
        assert_eq!(to_local("/home/user/d/x"), "/workspace/d/x");
        assert_eq!(to_local("/home/username"), "/home/username");
        assert_eq!(to_local("/tmp/x"), "/tmp/x");
        assert_eq!(to_remote("/workspace/d", true), "/home/user/d");
        assert_eq!(to_remote("/workspace/d", false), "/workspace/d");
    }

    #[test]
    fn targets_from_headers_and_host() {
        let mut h = HeaderMap::new();
        h.insert("host", "8000-abc123.e2b.app".parse().unwrap());
        assert_eq!(target(&h), Some(("abc123".into(), 8000)));
        h.insert("host", "127.0.0.1:4000".parse().unwrap());
        assert_eq!(target(&h), None);
        h.insert("e2b-sandbox-id", "xyz".parse().unwrap());
        assert_eq!(target(&h), Some(("xyz".into(), 49983)));
        h.insert("e2b-sandbox-port", "49999".parse().unwrap());
        assert_eq!(target(&h), Some(("xyz".into(), 49999)));
    }
}
