//! The contract's `error` variant: constructors, HTTP status mapping and message extraction.
//!
//! Everything here is pure Rust (no WASI calls), so it is unit-tested on the native target.

use crate::types::{Error, ProviderFailure, RateLimit};

/// The longest message taken from a response body that is not JSON.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// `Result` with the contract's error.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// The human-readable message of any case.
    pub fn message(&self) -> &str {
        match self {
            Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::InvalidArgument(m)
            | Error::Unsupported(m)
            | Error::QuotaExceeded(m)
            | Error::Unavailable(m)
            | Error::Timeout(m) => m,
            Error::RateLimited(r) => &r.message,
            Error::Provider(p) => &p.message,
        }
    }

    /// The case's name as the WIT spells it (`not-found`, `rate-limited`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) => "conflict",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::Unsupported(_) => "unsupported",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::RateLimited(_) => "rate-limited",
            Error::Unavailable(_) => "unavailable",
            Error::Timeout(_) => "timeout",
            Error::Provider(_) => "provider",
        }
    }

    /// Prefixes the message with some context: `"create sandbox: <message>"`.
    pub fn context(mut self, what: &str) -> Error {
        let prefix = |m: &mut String| *m = format!("{what}: {m}");
        match &mut self {
            Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::InvalidArgument(m)
            | Error::Unsupported(m)
            | Error::QuotaExceeded(m)
            | Error::Unavailable(m)
            | Error::Timeout(m) => prefix(m),
            Error::RateLimited(r) => prefix(&mut r.message),
            Error::Provider(p) => prefix(&mut p.message),
        }
        self
    }
}

impl From<serde_json::Error> for Error {
    /// A JSON (de)serialization failure: the provider answered something this plugin does not
    /// understand (status 0: not an HTTP failure).
    fn from(e: serde_json::Error) -> Self {
        provider(0, format!("invalid JSON: {e}"))
    }
}

pub fn unauthorized(msg: impl Into<String>) -> Error {
    Error::Unauthorized(msg.into())
}
pub fn forbidden(msg: impl Into<String>) -> Error {
    Error::Forbidden(msg.into())
}
pub fn not_found(msg: impl Into<String>) -> Error {
    Error::NotFound(msg.into())
}
pub fn conflict(msg: impl Into<String>) -> Error {
    Error::Conflict(msg.into())
}
/// Whether writing to a process's stdin was refused for the process's state (it ended, or its
/// stdin is closed) rather than failed: the process's own end is then the result to report.
pub fn input_refused(e: &Error) -> bool {
    matches!(e, Error::Conflict(_) | Error::NotFound(_))
}
pub fn invalid_argument(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}
/// `unsupported("pause")` → "pause is not supported by this plugin".
pub fn unsupported(what: &str) -> Error {
    Error::Unsupported(format!("{what} is not supported by this plugin"))
}
pub fn quota_exceeded(msg: impl Into<String>) -> Error {
    Error::QuotaExceeded(msg.into())
}
pub fn rate_limited(retry_after_ms: Option<u64>, msg: impl Into<String>) -> Error {
    Error::RateLimited(RateLimit {
        retry_after_ms,
        message: msg.into(),
    })
}
pub fn unavailable(msg: impl Into<String>) -> Error {
    Error::Unavailable(msg.into())
}
pub fn timeout(msg: impl Into<String>) -> Error {
    Error::Timeout(msg.into())
}
pub fn provider(status: u16, msg: impl Into<String>) -> Error {
    Error::Provider(ProviderFailure {
        status,
        message: msg.into(),
    })
}

/// Maps a non-success HTTP answer to the contract's error.
///
/// `retry_after` is the raw `Retry-After` header (only delay-seconds are understood; an
/// HTTP-date gives `None`). The message comes from [`message_from_body`].
pub fn error_from_status(status: u16, retry_after: Option<&str>, body: &[u8]) -> Error {
    let message = message_from_body(status, body);
    match status {
        401 => Error::Unauthorized(message),
        403 => Error::Forbidden(message),
        404 => Error::NotFound(message),
        409 => Error::Conflict(message),
        400 | 422 => Error::InvalidArgument(message),
        429 => rate_limited(retry_after.and_then(parse_retry_after_ms), message),
        502 | 503 => Error::Unavailable(message),
        504 => Error::Timeout(message),
        _ => provider(status, message),
    }
}

/// Classifies a transport failure known only by its text (wasi `io/error.to-debug-string`,
/// when `http-error-code` has nothing): body-size limits → `provider(0)` (retrying will not
/// help), timeouts → `timeout`, denials → `forbidden`, anything else → `unavailable`.
pub fn error_from_io_message(context: &str, text: &str) -> Error {
    let lower = text.to_ascii_lowercase();
    let message = format!("{context}: {text}");
    if lower.contains("size exceeds limit") || lower.contains("too large") {
        provider(0, message)
    } else if lower.contains("timeout") || lower.contains("timed out") {
        timeout(message)
    } else if lower.contains("request denied") {
        forbidden(message)
    } else {
        unavailable(message)
    }
}

/// `Retry-After: 2` → `Some(2000)`. HTTP-dates and garbage give `None`.
pub fn parse_retry_after_ms(value: &str) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    // Some APIs send fractional seconds; accept them.
    match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Some((secs * 1000.0).ceil() as u64),
        _ => None,
    }
}

/// The error message in a provider's error body: the JSON fields `message`, `error` (a string),
/// `error.message`, `detail` (in that order; `detail` may be any JSON value), else the body as
/// text cut to [`MAX_MESSAGE_CHARS`], else `HTTP <status>`.
pub fn message_from_body(status: u16, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = json_message(&v) {
            return m;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("HTTP {status}");
    }
    truncate_chars(text, MAX_MESSAGE_CHARS)
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
    let obj = v.as_object()?;
    if let Some(m) = obj
        .get("message")
        .and_then(|m| m.as_str())
        .and_then(non_empty)
    {
        return Some(m);
    }
    match obj.get("error") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => return Some(s.clone()),
        Some(serde_json::Value::Object(e)) => {
            if let Some(m) = e
                .get("message")
                .and_then(|m| m.as_str())
                .and_then(non_empty)
            {
                return Some(m);
            }
        }
        _ => {}
    }
    match obj.get("detail") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => non_empty(s),
        Some(other) => Some(truncate_chars(&other.to_string(), MAX_MESSAGE_CHARS)),
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert!(matches!(
            error_from_status(401, None, b""),
            Error::Unauthorized(_)
        ));
        assert!(matches!(
            error_from_status(403, None, b""),
            Error::Forbidden(_)
        ));
        assert!(matches!(
            error_from_status(404, None, b""),
            Error::NotFound(_)
        ));
        assert!(matches!(
            error_from_status(409, None, b""),
            Error::Conflict(_)
        ));
        assert!(matches!(
            error_from_status(400, None, b""),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            error_from_status(422, None, b""),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            error_from_status(502, None, b""),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            error_from_status(503, None, b""),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            error_from_status(504, None, b""),
            Error::Timeout(_)
        ));
        match error_from_status(500, None, b"boom") {
            Error::Provider(p) => {
                assert_eq!(p.status, 500);
                assert_eq!(p.message, "boom");
            }
            e => panic!("{e:?}"),
        }
        match error_from_status(418, None, b"") {
            Error::Provider(p) => assert_eq!(p.message, "HTTP 418"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn rate_limit_retry_after() {
        match error_from_status(429, Some("3"), br#"{"message":"slow down"}"#) {
            Error::RateLimited(r) => {
                assert_eq!(r.retry_after_ms, Some(3000));
                assert_eq!(r.message, "slow down");
            }
            e => panic!("{e:?}"),
        }
        match error_from_status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"") {
            Error::RateLimited(r) => assert_eq!(r.retry_after_ms, None),
            e => panic!("{e:?}"),
        }
        match error_from_status(429, None, b"") {
            Error::RateLimited(r) => assert_eq!(r.retry_after_ms, None),
            e => panic!("{e:?}"),
        }
        assert_eq!(parse_retry_after_ms(" 0 "), Some(0));
        assert_eq!(parse_retry_after_ms("1.5"), Some(1500));
        assert_eq!(parse_retry_after_ms("-1"), None);
        assert_eq!(parse_retry_after_ms("soon"), None);
    }

    #[test]
    fn messages_from_json_bodies() {
        assert_eq!(message_from_body(400, br#"{"message":"a"}"#), "a");
        assert_eq!(message_from_body(400, br#"{"error":"b"}"#), "b");
        assert_eq!(
            message_from_body(400, br#"{"error":{"message":"c","code":7}}"#),
            "c"
        );
        assert_eq!(message_from_body(400, br#"{"detail":"d"}"#), "d");
        assert_eq!(
            message_from_body(422, br#"{"detail":[{"loc":["x"],"msg":"bad"}]}"#),
            r#"[{"loc":["x"],"msg":"bad"}]"#
        );
        // `message` wins over `error`; an object without known fields falls back to the text.
        assert_eq!(
            message_from_body(400, br#"{"error":"x","message":"m"}"#),
            "m"
        );
        assert_eq!(message_from_body(400, br#"{"code":1}"#), r#"{"code":1}"#);
        assert_eq!(message_from_body(400, br#"["x"]"#), r#"["x"]"#);
    }

    #[test]
    fn messages_from_text_bodies() {
        assert_eq!(
            message_from_body(500, b"  plain failure\n"),
            "plain failure"
        );
        assert_eq!(message_from_body(500, b""), "HTTP 500");
        let long = "é".repeat(600);
        let m = message_from_body(500, long.as_bytes());
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn io_messages() {
        let e = error_from_io_message("GET x", "HTTP response body size exceeds limit: 10 bytes");
        assert_eq!(e.kind(), "provider");
        assert_eq!(
            e.message(),
            "GET x: HTTP response body size exceeds limit: 10 bytes"
        );
        assert_eq!(
            error_from_io_message("c", "connection read timeout").kind(),
            "timeout"
        );
        assert_eq!(
            error_from_io_message("c", "HTTP request denied").kind(),
            "forbidden"
        );
        assert_eq!(
            error_from_io_message("c", "connection terminated").kind(),
            "unavailable"
        );
    }

    #[test]
    fn helpers() {
        let e = not_found("sandbox x").context("get");
        assert_eq!(e.message(), "get: sandbox x");
        assert_eq!(e.kind(), "not-found");
        assert_eq!(
            unsupported("pause").message(),
            "pause is not supported by this plugin"
        );
        let j: Error = serde_json::from_str::<u32>("x").unwrap_err().into();
        assert_eq!(j.kind(), "provider");
    }
}
