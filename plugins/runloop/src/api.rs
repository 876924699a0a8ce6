//! Talking to Runloop's API: URLs, the shared request shape, and the SDK's retry rules
//! (408/409/429/5xx and connection failures retried; `x-should-retry` overrides;
//! `retry-after-ms`, then `retry-after`, then exponential backoff; every non-GET carries one
//! `x-request-id` for all its attempts, so the server can deduplicate a retried create).

use std::time::Duration;

use kit::http::{Method, Request, Response};
use kit::{Error, Result};

/// The setting holding the API's base URL.
pub const BASE_URL: &str = "base-url";
/// Retries after the first attempt (the SDK's default is 5; the host retries on top).
const MAX_RETRIES: u32 = 4;
/// Longest server-suggested wait honoured; a longer one is returned as `rate-limited`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of an ordinary answer (execute_sync and file transfers may take long).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// `<base-url>/v1/devboxes/<segments…>`.
pub fn devboxes(segments: &[&str]) -> Result<String> {
    let base = kit::require_setting(BASE_URL)?;
    let mut all = vec!["v1", "devboxes"];
    all.extend_from_slice(segments);
    Ok(kit::url(&base, &all))
}

/// A request with this plugin's timeouts.
pub fn request(method: Method, url: String) -> Request {
    Request::new(method, url)
        .connect_timeout(CONNECT_TIMEOUT)
        .first_byte_timeout(ANSWER_TIMEOUT)
        .between_bytes_timeout(ANSWER_TIMEOUT)
        .header("accept", "application/json")
}

/// A fresh `x-request-id` (the SDK's shape).
pub fn new_request_id() -> String {
    format!("sandbox-host-{}", kit::random_hex(16))
}

/// What to do with a non-success answer.
enum Verdict {
    Retry(Duration),
    Fail,
}

fn header_ms(resp: &Response) -> Option<u64> {
    if let Some(ms) = resp
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(ms.max(0.0) as u64);
    }
    resp.header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s.max(0.0) * 1000.0) as u64)
}

fn backoff(attempt: u32) -> Duration {
    // 0.5 s · 2^n, at most 8 s, minus up to 25 % jitter (as the SDK).
    let base = (500u64 << attempt.min(4)).min(8000);
    let jitter = kit::random_bytes(1)[0] as u64 * base / 4 / 255;
    Duration::from_millis(base - jitter)
}

fn verdict(resp: &Response, attempt: u32) -> Verdict {
    if attempt >= MAX_RETRIES {
        return Verdict::Fail;
    }
    let status = resp.status();
    let retry = match resp.header("x-should-retry") {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    };
    if !retry {
        return Verdict::Fail;
    }
    match header_ms(resp) {
        Some(ms) if ms <= MAX_RETRY_AFTER.as_millis() as u64 => {
            Verdict::Retry(Duration::from_millis(ms))
        }
        Some(_) => Verdict::Fail,
        None => Verdict::Retry(backoff(attempt)),
    }
}

/// The contract's error for a failed answer, with `retry-after-ms` honoured for 429s.
pub fn into_error(resp: Response) -> Error {
    let wait = header_ms(&resp);
    match resp.into_error() {
        Error::RateLimited(mut r) => {
            r.retry_after_ms = wait.or(r.retry_after_ms);
            Error::RateLimited(r)
        }
        e => e,
    }
}

/// Transport failures worth another attempt (the request id makes it safe).
fn transient(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_) | Error::Timeout(_))
}

/// Sends `req` with retries; `Ok` for 2xx, and for the statuses in `pass` (e.g. a long poll's
/// 408), which are returned without retrying. Non-GETs get `request_id` (or a fresh one).
pub fn send(req: Request, request_id: Option<&str>, pass: &[u16]) -> Result<Response> {
    let req = if matches!(req.method(), Method::Get) {
        req
    } else {
        let id = request_id
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        req.header("x-request-id", id)
    };
    let mut attempt = 0;
    loop {
        let sent = req
            .clone()
            .header("x-stainless-retry-count", attempt.to_string())
            .send();
        match sent {
            Ok(resp) if resp.is_success() || pass.contains(&resp.status()) => return Ok(resp),
            Ok(resp) => match verdict(&resp, attempt) {
                Verdict::Retry(d) => {
                    kit::debug!(
                        "{} answered {}; retrying in {d:?}",
                        resp.context(),
                        resp.status()
                    );
                    drop(resp);
                    kit::sleep(d);
                }
                Verdict::Fail => return Err(into_error(resp)),
            },
            Err(e) if transient(&e) && attempt < MAX_RETRIES => {
                kit::debug!("{e:?}; retrying");
                kit::sleep(backoff(attempt));
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
    }
}

/// [`send`] a GET and parse the JSON answer.
pub fn get_json<T: serde::de::DeserializeOwned>(url: String) -> Result<T> {
    send(request(Method::Get, url), None, &[])?.json()
}

/// [`send`] a POST with a JSON body and parse the JSON answer.
pub fn post_json<T: serde::de::DeserializeOwned>(
    url: String,
    body: &serde_json::Value,
    request_id: Option<&str>,
) -> Result<T> {
    send(request(Method::Post, url).json(body), request_id, &[])?.json()
}

/// A bodiless POST (`suspend`, `shutdown`, …), answer parsed as JSON.
pub fn post_empty<T: serde::de::DeserializeOwned>(url: String) -> Result<T> {
    send(
        request(Method::Post, url).header("content-type", "application/json"),
        None,
        &[],
    )?
    .json()
}
