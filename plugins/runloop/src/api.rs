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

/// A fresh UUIDv7, `execute`'s `command_id` (the API's idempotency key for a command).
pub fn uuid7() -> String {
    uuid7_from(kit::now_ms(), &kit::random_hex(10))
}

/// A UUIDv7 from Unix milliseconds and 20 random hex digits (RFC 9562: 48 bits of time, the
/// version nibble 7, 12 random bits, the variant bits 10, 62 random bits).
fn uuid7_from(ms: u64, random_hex: &str) -> String {
    let t = format!("{:012x}", ms & 0xffff_ffff_ffff);
    let nibble = char::from(random_hex.as_bytes()[3])
        .to_digit(16)
        .unwrap_or(0);
    let variant = b"89ab"[(nibble & 3) as usize] as char;
    format!(
        "{}-{}-7{}-{variant}{}-{}",
        &t[..8],
        &t[8..],
        &random_hex[..3],
        &random_hex[4..7],
        &random_hex[7..19]
    )
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
/// 408), which are returned without retrying. Non-GETs get `request_id` (or a fresh one). The
/// answer's head is returned as is (a stream is read by the caller); see [`send_read`] for
/// answers read whole.
pub fn send(req: Request, request_id: Option<&str>, pass: &[u16]) -> Result<Response> {
    send_then(req, request_id, pass, Ok)
}

/// [`send`], then the whole body; a connection lost while reading it is retried like one lost
/// before the head (as the SDK does: the request id, or `execute`'s command id, makes a
/// repeat of a POST that already took effect answer the first one).
pub fn send_read(req: Request, request_id: Option<&str>, pass: &[u16]) -> Result<Vec<u8>> {
    send_then(req, request_id, pass, Response::bytes)
}

fn send_then<T>(
    req: Request,
    request_id: Option<&str>,
    pass: &[u16],
    read: impl Fn(Response) -> Result<T>,
) -> Result<T> {
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
        let failed = match sent {
            Ok(resp) if resp.is_success() || pass.contains(&resp.status()) => match read(resp) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            },
            Ok(resp) => match verdict(&resp, attempt) {
                Verdict::Retry(d) => {
                    kit::debug!(
                        "{} answered {}; retrying in {d:?}",
                        resp.context(),
                        resp.status()
                    );
                    drop(resp);
                    kit::sleep(d);
                    attempt += 1;
                    continue;
                }
                Verdict::Fail => return Err(into_error(resp)),
            },
            Err(e) => e,
        };
        if !(transient(&failed) && attempt < MAX_RETRIES) {
            return Err(failed);
        }
        kit::debug!("{failed:?}; retrying");
        kit::sleep(backoff(attempt));
        attempt += 1;
    }
}

/// [`send`] a GET and parse the JSON answer.
pub fn get_json<T: serde::de::DeserializeOwned>(url: String) -> Result<T> {
    send_then(request(Method::Get, url), None, &[], Response::json)
}

/// [`send`] a POST with a JSON body and parse the JSON answer.
pub fn post_json<T: serde::de::DeserializeOwned>(
    url: String,
    body: &serde_json::Value,
    request_id: Option<&str>,
) -> Result<T> {
    send_then(
        request(Method::Post, url).json(body),
        request_id,
        &[],
        Response::json,
    )
}

/// A bodiless POST (`suspend`, `shutdown`, …), answer parsed as JSON.
pub fn post_empty<T: serde::de::DeserializeOwned>(url: String) -> Result<T> {
    send_then(
        request(Method::Post, url).header("content-type", "application/json"),
        None,
        &[],
        Response::json,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid7_layout() {
        let u = super::uuid7_from(0x0192_3456_789a, "0123456789abcdef0123");
        assert_eq!(u, "01923456-789a-7012-b456-789abcdef012");
        let u = super::uuid7_from(u64::MAX, "fffcffffffffffffffff");
        assert_eq!(&u[..14], "ffffffff-ffff-");
        assert_eq!(
            &u[14..20],
            "7fff-8",
            "version 7; variant bits 10 under any digit (c = 1100)"
        );
    }
}
