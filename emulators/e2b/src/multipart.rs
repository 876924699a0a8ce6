//! Just enough `multipart/form-data` parsing for envd's `POST /files` (one part per file,
//! `filename` carrying the destination path when no `path` query is given).

use emulator_common::find;

/// One part: its `filename` (if any) and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_string())
    })
}

/// The parts of `body`, or `None` when it is not well-formed.
pub fn parse(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delim = format!("--{boundary}").into_bytes();
    let mut next_delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos = find(body, &delim, 0)? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Some(parts);
        }
        pos += 2; // CRLF after the delimiter
        let head_end = find(body, b"\r\n\r\n", pos)?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let start = head_end + 4;
        let end = find(body, &next_delim, start)?;
        let filename = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            value.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == "filename").then(|| v.trim_matches('"').to_string())
            })
        });
        parts.push(Part {
            filename,
            data: body[start..end].to_vec(),
        });
        pos = end + next_delim.len();
        if pos > body.len() {
            return None;
        }
        next_delim.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/a.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n\x00\x01\r\n--XX--\r\n";
        assert_eq!(
            boundary("multipart/form-data; boundary=XX").as_deref(),
            Some("XX")
        );
        let parts = parse(body, "XX").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            Part {
                filename: Some("/home/user/a.txt".into()),
                data: b"hello".to_vec()
            }
        );
        assert_eq!(parts[1].data, vec![0, 1]);
    }
}
