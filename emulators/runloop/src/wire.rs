//! Wire helpers: JSON answers and errors, command output as JSON text, SSE events, multipart.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use emulator_common::find;
use serde_json::Value;

use crate::state::ApiError;

/// A JSON answer.
pub(crate) fn json(value: Value) -> Response {
    json_text(value.to_string())
}

/// An already serialized JSON answer.
pub(crate) fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "message": self.message }).to_string(),
        )
            .into_response();
        // Real conflicts and client errors are final: without this the SDK retries 409s.
        if self.status.is_client_error() {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

/// `408` for a long-poll that did not see the status in time (clients ask again).
pub(crate) fn long_poll_timeout() -> Response {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "the status was not reached within timeout_seconds",
    )
    .into_response()
}

/// Bytes as a JSON string literal (quotes included). Valid UTF-8 is written as text; a byte
/// that is not part of valid UTF-8 becomes the lone surrogate escape `\udcXX` (Python's
/// "surrogateescape"), so binary output survives for clients that undo it and reads as text
/// everywhere else.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_escaped(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_escaped(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("\\udc{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out.push('"');
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// One SSE event carrying a chunk of output that starts at byte `offset` of its stream.
pub(crate) fn sse_event(offset: usize, chunk: &[u8]) -> String {
    format!(
        "data: {{\"output\":{},\"offset\":{offset}}}\n\n",
        escape_bytes(chunk)
    )
}

/// A `text/event-stream` answer.
pub(crate) fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap()
}

/// A part of a `multipart/form-data` body.
pub(crate) struct Part {
    pub name: String,
    pub data: Vec<u8>,
}

/// Splits a `multipart/form-data` body (boundary from the content type).
pub(crate) fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, ApiError> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| ApiError::bad("multipart body without a boundary"))?;
    let delim = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut pos = find(body, &delim, 0)
        .ok_or_else(|| ApiError::bad("multipart: no first boundary"))?
        + delim.len();
    loop {
        if body[pos..].starts_with(b"--") {
            break;
        }
        pos += 2; // CRLF after the boundary
        let head_end = find(body, b"\r\n\r\n", pos)
            .ok_or_else(|| ApiError::bad("multipart: part without headers"))?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).to_string();
        let data_start = head_end + 4;
        let mut next_delim = b"\r\n".to_vec();
        next_delim.extend_from_slice(&delim);
        let data_end = find(body, &next_delim, data_start)
            .ok_or_else(|| ApiError::bad("multipart: unterminated part"))?;
        let name = head
            .split([';', '\n'])
            .filter_map(|p| p.trim().strip_prefix("name="))
            .next()
            .map(|n| n.trim().trim_matches('"').to_string())
            .unwrap_or_default();
        parts.push(Part {
            name,
            data: body[data_start..data_end].to_vec(),
        });
        pos = data_end + next_delim.len();
        if pos >= body.len() {
            break;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_escape_as_text_or_surrogates() {
        assert_eq!(escape_bytes(b"a\"b\n"), r#""a\"b\n""#);
        assert_eq!(
            escape_bytes(&[0, 1, 0xff, 0xfe]),
            r#""\u0000\u0001\udcff\udcfe""#
        );
        assert_eq!(escape_bytes("é".as_bytes()), "\"é\"");
    }

    #[test]
    fn multipart_parts() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/a/b\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\r\n\xff\r\n--XX--\r\n";
        let parts = multipart("multipart/form-data; boundary=XX", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].data.as_slice()),
            ("path", &b"/a/b"[..])
        );
        assert_eq!(
            (parts[1].name.as_str(), parts[1].data.as_slice()),
            ("file", &b"\x00\r\n\xff"[..])
        );
    }
}
