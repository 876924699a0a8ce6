//! The control plane (REST/JSON, `X-API-Key` set by the host): create, get, list, pause,
//! connect, timeout, kill.

use std::collections::BTreeMap;

use kit::http::{Method, Response};
use kit::{Result, Sandbox, SandboxState};
use serde::Deserialize;

use crate::config::{self, api};
use crate::token::Token;

/// The metadata key holding the contract's stable sandbox name (E2B has no names).
pub const NAME_KEY: &str = "sandbox-host.name";
/// Most pages `list` follows.
const MAX_PAGES: usize = 100;

/// `Sandbox` (create, connect) and `SandboxDetail` / `ListedSandbox` (get, list): one
/// shape with the fields each may lack optional.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ApiSandbox {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "templateID", default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub envd_access_token: Option<String>,
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub started_at: Option<String>,
}

impl ApiSandbox {
    pub fn token(&self) -> Token {
        Token {
            access: self.envd_access_token.clone(),
            traffic: self.traffic_access_token.clone(),
            domain: self.domain.clone(),
        }
    }

    /// The contract's sandbox; `state` when the answer has none (create, connect: running).
    pub fn into_sandbox(self, default_state: SandboxState, with_token: bool) -> Sandbox {
        let token = with_token.then(|| self.token().encode());
        let mut metadata = self.metadata.unwrap_or_default();
        let name = metadata.remove(NAME_KEY);
        Sandbox {
            id: self.sandbox_id,
            name,
            state: self
                .state
                .as_deref()
                .map(kit::sandbox_state)
                .unwrap_or(default_state),
            workdir: config::home(),
            labels: metadata.into_iter().collect(),
            image: self.template_id,
            created_at_ms: self.started_at.as_deref().and_then(parse_rfc3339_ms),
            token,
        }
    }
}

/// `2024-05-01T12:00:00.123Z` (or with an offset) → Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time_end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    let offset_min = match zone.chars().next() {
        Some(sign @ ('+' | '-')) => {
            let (oh, om) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
            let v = oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?;
            if sign == '+' {
                v
            } else {
                -v
            }
        }
        _ => 0,
    };
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 - offset_min * 60;
    let ms = secs as f64 * 1000.0 + sec * 1000.0;
    (ms >= 0.0).then_some(ms as u64)
}

/// A control-plane answer as the contract's result: `Should-Retry: false` makes a retryable
/// status final, `Should-Retry: true` makes any failure retryable; 502 says the sandbox is not
/// running.
pub fn check(resp: Response) -> Result<Response> {
    if resp.is_success() {
        return Ok(resp);
    }
    let should_retry = resp
        .header("should-retry")
        .map(|v| v.trim().eq_ignore_ascii_case("true"));
    let status = resp.status();
    let e = resp.into_error();
    let e = match (should_retry, e) {
        (Some(false), e @ (kit::Error::RateLimited(_) | kit::Error::Unavailable(_))) => {
            kit::provider(status, e.message().to_string())
        }
        (Some(true), e)
            if !matches!(e, kit::Error::RateLimited(_) | kit::Error::Unavailable(_)) =>
        {
            kit::unavailable(e.message().to_string())
        }
        (_, kit::Error::Unavailable(m)) if status == 502 => {
            kit::unavailable(format!("sandbox not running: {m}"))
        }
        (_, e) => e,
    };
    Err(e)
}

pub fn send(req: kit::http::Request) -> Result<Response> {
    check(req.send()?)
}

pub fn sandbox_path(id: &str, tail: &[&str]) -> String {
    let mut p = format!("/sandboxes/{}", kit::encode_component(id));
    for t in tail {
        p.push('/');
        p.push_str(t);
    }
    p
}

pub fn get(id: &str) -> Result<ApiSandbox> {
    send(api(Method::Get, &sandbox_path(id, &[])))?.json()
}

/// Every sandbox whose metadata has all of `filter`, following `X-Next-Token`.
pub fn list(filter: &[(String, String)]) -> Result<Vec<ApiSandbox>> {
    // The filter is `k=v&k2=v2` (each part URL-encoded), sent as one parameter.
    let metadata: Vec<String> = filter
        .iter()
        .map(|(k, v)| format!("{}={}", kit::encode_component(k), kit::encode_component(v)))
        .collect();
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut req = api(Method::Get, "/v2/sandboxes").query("limit", "100");
        if !metadata.is_empty() {
            req = req.query("metadata", metadata.join("&"));
        }
        if let Some(t) = &next {
            req = req.query("nextToken", t.clone());
        }
        let resp = send(req)?;
        next = resp
            .header("x-next-token")
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        out.extend(resp.json::<Vec<ApiSandbox>>()?);
        if next.is_none() {
            return Ok(out);
        }
    }
    Err(kit::provider(
        0,
        format!("list: more than {MAX_PAGES} pages"),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_rfc3339() {
        assert_eq!(
            super::parse_rfc3339_ms("1970-01-01T00:00:01.5Z"),
            Some(1500)
        );
        assert_eq!(
            super::parse_rfc3339_ms("2024-05-01T12:00:00.123Z"),
            Some(1_714_564_800_123)
        );
        assert_eq!(
            super::parse_rfc3339_ms("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000)
        );
    }
}
