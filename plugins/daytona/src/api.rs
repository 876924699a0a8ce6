//! Daytona's control plane (`{api-url}/sandbox...`): requests with the SDK's identifying headers,
//! the Sandbox DTO and its mapping to the contract, the per-sandbox token, and waiting for a
//! lifecycle state by polling with backoff (the plugin cannot open Socket.IO).

use std::collections::BTreeMap;
use std::time::Duration;

use kit::http::{Method, Request};

use kit::{Result, Sandbox, SandboxRef, SandboxState};
use serde::{Deserialize, Serialize};

/// The setting holding the API base, e.g. `https://app.daytona.io/api`.
pub const API_URL: &str = "api-url";
/// The SDK version whose wire protocol this plugin speaks (sent as `X-Daytona-SDK-Version`).
pub const SDK_VERSION: &str = "0.226.1";
/// Where Daytona's snapshots put the user's files when the toolbox cannot tell us.
pub const DEFAULT_WORKDIR: &str = "/home/daytona";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The API base without a trailing slash.
pub fn api_base() -> Result<String> {
    Ok(kit::require_setting(API_URL)?
        .trim_end_matches('/')
        .to_string())
}

/// `{api}/sandbox/<segments>`.
pub fn sandbox_url(segments: &[&str]) -> Result<String> {
    let base = api_base()?;
    let mut all = vec!["sandbox"];
    all.extend_from_slice(segments);
    Ok(kit::url(&base, &all))
}

/// A request carrying the identifying headers the official SDK sends (the key itself is added
/// by the host: `DAYTONA_API_KEY` is a credential binding).
pub fn request(method: Method, url: String) -> Request {
    Request::new(method, url)
        .connect_timeout(CONNECT_TIMEOUT)
        .first_byte_timeout(Duration::from_secs(120))
        .header("x-daytona-source", "sandbox-host")
        .header("x-daytona-sdk-version", SDK_VERSION)
}

/// The Sandbox DTO (the fields this plugin reads).
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ApiSandbox {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error_reason: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub toolbox_proxy_url: Option<String>,
}

impl ApiSandbox {
    pub fn state(&self) -> &str {
        self.state.as_deref().unwrap_or("unknown")
    }
}

/// What the plugin remembers about a sandbox (the contract's opaque token).
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Token {
    /// The toolbox proxy base (`toolboxProxyUrl`).
    #[serde(rename = "tb", default, skip_serializing_if = "Option::is_none")]
    pub toolbox: Option<String>,
    /// The sandbox's working directory (the toolbox's `/work-dir`).
    #[serde(rename = "wd", default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

impl Token {
    pub fn parse(token: Option<&str>) -> Token {
        token
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Daytona's state names in the contract's terms. A stopped sandbox is resumable (pause = stop).
pub fn contract_state(state: &str) -> SandboxState {
    match state {
        "started" => SandboxState::Running,
        "creating" | "starting" | "restoring" | "pulling_snapshot" | "pending_build"
        | "building_snapshot" | "resuming" | "resizing" | "snapshotting" | "forking" => {
            SandboxState::Starting
        }
        "stopped" | "stopping" | "archived" | "archiving" | "paused" | "pausing" => {
            SandboxState::Paused
        }
        "destroyed" | "destroying" => SandboxState::Stopped,
        "error" | "build_failed" => SandboxState::Error,
        _ => SandboxState::Unknown,
    }
}

/// The contract's sandbox record from a DTO and what is known of its token.
pub fn to_sandbox(s: ApiSandbox, mut token: Token) -> Sandbox {
    if let Some(tb) = s.toolbox_proxy_url.as_ref().filter(|u| !u.is_empty()) {
        token.toolbox = Some(tb.clone());
    }
    let workdir = token
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.into());
    Sandbox {
        state: contract_state(s.state()),
        name: s.name.clone(),
        workdir,
        labels: s.labels.into_iter().collect(),
        image: s.snapshot,
        created_at_ms: s.created_at.as_deref().and_then(parse_rfc3339_ms),
        token: Some(token.encode()),
        id: s.id,
    }
}

pub fn get(id: &str) -> Result<ApiSandbox> {
    request(Method::Get, sandbox_url(&[id])?).json_5xx()
}

/// Polls `GET /sandbox/{id}` until its state is one of `targets` (backoff from 50 ms to 1 s).
/// `error`/`build_failed` fail with the sandbox's `errorReason`; a 404 counts as `destroyed`.
pub fn wait_for(id: &str, targets: &[&str], limit: Duration) -> Result<Option<ApiSandbox>> {
    let started = kit::monotonic_ns();
    let mut delay = Duration::from_millis(50);
    loop {
        let elapsed = Duration::from_nanos(kit::monotonic_ns() - started);
        let sandbox = match get(id) {
            Ok(s) => Some(s),
            Err(kit::Error::NotFound(_)) if targets.contains(&"destroyed") => None,
            // A poll is idempotent: ride out transient failures until the limit.
            Err(
                kit::Error::Unavailable(_) | kit::Error::RateLimited(_) | kit::Error::Timeout(_),
            ) if elapsed < limit => {
                kit::sleep(delay);
                delay = (delay * 3 / 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        let state = sandbox
            .as_ref()
            .map_or("destroyed", |s| s.state())
            .to_string();
        let state = state.as_str();
        if targets.contains(&state) {
            return Ok(sandbox);
        }
        if matches!(state, "error" | "build_failed") {
            let reason = sandbox
                .and_then(|s| s.error_reason)
                .unwrap_or_else(|| "no reason given".into());
            return Err(kit::provider(
                0,
                format!("sandbox {id} is in state {state}: {reason}"),
            ));
        }
        if Duration::from_nanos(kit::monotonic_ns() - started) > limit {
            return Err(kit::timeout(format!(
                "sandbox {id} still {state} after {limit:?} (waiting for {targets:?})"
            )));
        }
        kit::sleep(delay);
        delay = (delay * 3 / 2).min(Duration::from_secs(1));
    }
}

/// `2025-01-02T03:04:05.678Z` (or with an offset) → Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 19 {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = digits.parse().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'+') | Some(b'-') => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?)
        }
        _ => 0,
    };
    // Days from civil (Howard Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// The toolbox base of a sandbox (`{toolboxProxyUrl}/{id}`), from its token or the API.
pub fn toolbox_base(sandbox: &SandboxRef) -> Result<String> {
    let token = Token::parse(sandbox.token.as_deref());
    let proxy = match token.toolbox {
        Some(tb) => tb,
        None => {
            let s = get(&sandbox.id)?;
            match s.toolbox_proxy_url.filter(|u| !u.is_empty()) {
                Some(u) => u,
                None => {
                    #[derive(Deserialize)]
                    struct Url {
                        url: String,
                    }
                    let u: Url = request(
                        Method::Get,
                        sandbox_url(&[&sandbox.id, "toolbox-proxy-url"])?,
                    )
                    .json_5xx()?;
                    u.url
                }
            }
        }
    };
    Ok(kit::url(proxy.trim_end_matches('/'), &[&sandbox.id]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:00:00.000Z"),
            Some(1_709_208_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T14:00:00+02:00"),
            Some(1_709_208_000_000)
        );
        assert_eq!(parse_rfc3339_ms("nope"), None);
    }
}

/// A 5xx other than 502/503/504 is a transient provider failure too: `unavailable`, which the
/// host retries for idempotent calls (the kit reports it as `provider(status)`).
pub fn transient(e: kit::Error) -> kit::Error {
    match e {
        kit::Error::Provider(p) if p.status >= 500 => {
            kit::unavailable(format!("HTTP {}: {}", p.status, p.message))
        }
        e => e,
    }
}

/// `send_ok`/`send_json` with [`transient`] applied.
pub trait SendExt {
    fn ok_5xx(self) -> Result<kit::http::Response>;
    fn json_5xx<T: serde::de::DeserializeOwned>(self) -> Result<T>;
}

impl SendExt for Request {
    fn ok_5xx(self) -> Result<kit::http::Response> {
        self.send_ok().map_err(transient)
    }
    fn json_5xx<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        self.send_ok().map_err(transient)?.json()
    }
}
