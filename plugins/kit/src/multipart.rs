//! `multipart/form-data` both ways: a [`Form`] to send (text fields and files, binary intact)
//! and [`parse`] for a multipart answer (e.g. a bulk download). Pure Rust, unit-tested natively.
//!
//! ```
//! use kit::multipart::{Form, parse, boundary_of};
//! let form = Form::new("b0undary").text("files[0].path", "/tmp/a").file("files[0].file", "/tmp/a", b"\x00\xff");
//! let content_type = form.content_type();
//! let parts = parse(&form.finish(), &boundary_of(&content_type).unwrap()).unwrap();
//! assert_eq!(parts[1].data, b"\x00\xff");
//! assert_eq!(parts[1].filename.as_deref(), Some("/tmp/a"));
//! ```

use crate::error::{provider, Result};

/// A form body under construction: finished pieces (files added by value stay pieces of their
/// own), then the piece being written.
#[derive(Debug, Clone)]
pub struct Form {
    boundary: String,
    parts: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl Form {
    /// A form with this boundary (pick one that cannot occur in the data, e.g. random hex).
    pub fn new(boundary: impl Into<String>) -> Form {
        Form {
            boundary: boundary.into(),
            parts: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A form with a random boundary from the host's randomness (inside a plugin only).
    pub fn random() -> Form {
        let hex: String = crate::random_bytes(16)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Form::new(format!("sandbox-host-{hex}"))
    }

    /// The `content-type` header value for this form.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn head(&mut self, disposition: &str, content_type: Option<&str>) {
        self.body.extend_from_slice(b"--");
        self.body.extend_from_slice(self.boundary.as_bytes());
        self.body
            .extend_from_slice(b"\r\nContent-Disposition: form-data; ");
        self.body.extend_from_slice(disposition.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        if let Some(ct) = content_type {
            self.body.extend_from_slice(b"Content-Type: ");
            self.body.extend_from_slice(ct.as_bytes());
            self.body.extend_from_slice(b"\r\n");
        }
        self.body.extend_from_slice(b"\r\n");
    }

    /// Adds a text field.
    pub fn text(mut self, name: &str, value: &str) -> Form {
        self.head(&format!("name=\"{}\"", escape(name)), None);
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn file_head(&mut self, name: &str, filename: &str) {
        self.head(
            &format!(
                "name=\"{}\"; filename=\"{}\"",
                escape(name),
                escape(filename)
            ),
            Some("application/octet-stream"),
        );
    }

    /// Adds a file field (`application/octet-stream`).
    pub fn file(mut self, name: &str, filename: &str, data: &[u8]) -> Form {
        self.file_head(name, filename);
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// Adds a file field taking the data by value: it is sent as a piece of its own, never
    /// copied (see [`finish_parts`](Form::finish_parts) and `Request::body_parts`).
    pub fn file_owned(mut self, name: &str, filename: &str, data: Vec<u8>) -> Form {
        self.file_head(name, filename);
        self.parts.push(std::mem::take(&mut self.body));
        self.parts.push(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// The finished body, in pieces to send one after the other.
    pub fn finish_parts(mut self) -> Vec<Vec<u8>> {
        self.body.extend_from_slice(b"--");
        self.body.extend_from_slice(self.boundary.as_bytes());
        self.body.extend_from_slice(b"--\r\n");
        self.parts.push(self.body);
        self.parts
    }

    /// The finished body.
    pub fn finish(self) -> Vec<u8> {
        self.finish_parts().concat()
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(['\r', '\n'], " ")
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `name` of the Content-Disposition.
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// The `boundary` parameter of a `multipart/*` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A `key="value"` (or unquoted) parameter of a header value.
fn param(value: &str, key: &str) -> Option<String> {
    let mut rest = value;
    while let Some(i) = rest.find(';') {
        rest = rest[i + 1..].trim_start();
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let end = v.find(';').unwrap_or(v.len());
            (v[..end].trim().to_string(), &v[end..])
        };
        if k.trim().eq_ignore_ascii_case(key) {
            return Some(val);
        }
        rest = tail;
    }
    None
}

/// Splits a multipart body into its parts.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>> {
    let bad = |what: &str| provider(0, format!("malformed multipart answer: {what}"));
    let delim = format!("--{boundary}").into_bytes();
    let next_delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos =
        crate::util::find(body, &delim, 0).ok_or_else(|| bad("no opening boundary"))? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        // The rest of the boundary line.
        let line_end = crate::util::find(body, b"\r\n", pos).ok_or_else(|| bad("boundary line"))?;
        let head_start = line_end + 2;
        let head_end = crate::util::find(body, b"\r\n\r\n", head_start)
            .map(|i| (i, i + 4))
            .or_else(|| {
                body[head_start..]
                    .starts_with(b"\r\n")
                    .then_some((head_start, head_start + 2))
            })
            .ok_or_else(|| bad("part headers"))?;
        let headers = String::from_utf8_lossy(&body[head_start..head_end.0]);
        let data_start = head_end.1;
        let data_end = crate::util::find(body, &next_delim, data_start)
            .ok_or_else(|| bad("no closing boundary"))?;
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data: body[data_start..data_end].to_vec(),
        };
        for line in headers.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            if k == "content-disposition" {
                part.name = param(v, "name").unwrap_or_default();
                part.filename = param(v, "filename");
            } else if k == "content-type" {
                part.content_type = Some(v.trim().to_string());
            }
        }
        parts.push(part);
        pos = data_end + next_delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_files_make_the_same_body_in_pieces() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let copied = Form::new("b")
            .text("path", "/x")
            .file("file", "x", &data)
            .finish();
        let pieces = Form::new("b")
            .text("path", "/x")
            .file_owned("file", "x", data.clone())
            .finish_parts();
        assert_eq!(pieces.len(), 3, "head, the file itself, tail");
        assert_eq!(pieces[1], data);
        assert_eq!(pieces.concat(), copied);
    }

    #[test]
    fn round_trip_binary() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let form = Form::new("xyz").text("files[0].path", "/a \"q\".bin").file(
            "files[0].file",
            "/a \"q\".bin",
            &data,
        );
        let b = boundary_of(&form.content_type()).unwrap();
        let parts = parse(&form.finish(), &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "files[0].path");
        assert_eq!(parts[0].data, b"/a \"q\".bin");
        assert_eq!(parts[1].filename.as_deref(), Some("/a \"q\".bin"));
        assert_eq!(parts[1].data, data);
    }

    #[test]
    fn parses_foreign_answers() {
        let body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/x\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n-Bx\r\n--B\r\nContent-Disposition: form-data; name=error; filename=\"/y\"\r\n\r\n{\"statusCode\":404}\r\n--B--\r\n";
        let parts = parse(body, "B").unwrap();
        assert_eq!(parts[0].data, b"\r\n-Bx");
        assert_eq!(parts[1].name, "error");
        assert_eq!(parts[1].filename.as_deref(), Some("/y"));
        assert_eq!(parts[1].data, b"{\"statusCode\":404}");
        assert_eq!(
            boundary_of("multipart/form-data; boundary=\"ab c\""),
            Some("ab c".into())
        );
        assert_eq!(boundary_of("application/json"), None);
        assert!(parse(b"garbage", "B").is_err());
    }
}
