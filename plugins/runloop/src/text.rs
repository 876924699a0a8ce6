//! Reading Runloop's output-carrying JSON without losing bytes: command output arrives in JSON
//! strings, where the emulator writes bytes that are not UTF-8 as lone surrogate escapes
//! (`\udcXX`, Python's "surrogateescape"). serde_json refuses those, so the few fields that
//! carry output are read here; everything else goes through serde. Also the SSE framing.

/// The bytes of the JSON string value of top-level `key` in the object `json`, if any.
/// `\udc80`–`\udcff` become the raw bytes 0x80–0xff; other escapes decode as usual.
pub fn string_field(json: &[u8], key: &str) -> Option<Vec<u8>> {
    let start = value_start(json, key)?;
    if json.get(start) != Some(&b'"') {
        return None;
    }
    decode_string(&json[start + 1..]).map(|(bytes, _)| bytes)
}

/// The integer value of top-level `key`, if any (null and non-numbers give `None`).
pub fn int_field(json: &[u8], key: &str) -> Option<i64> {
    let start = value_start(json, key)?;
    let end = json[start..]
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'-'))
        .map_or(json.len(), |i| start + i);
    std::str::from_utf8(&json[start..end]).ok()?.parse().ok()
}

/// The boolean value of top-level `key`, if any.
pub fn bool_field(json: &[u8], key: &str) -> Option<bool> {
    let rest = &json[value_start(json, key)?..];
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

/// Where the value of top-level `key` starts (after `:` and whitespace). Skips strings so a
/// key-like text inside a value does not match; nested objects are skipped by depth.
fn value_start(json: &[u8], key: &str) -> Option<usize> {
    let mut i = 0;
    let mut depth = 0i32;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                i += 1;
            }
            b'"' => {
                let (s, used) = decode_string(&json[i + 1..])?;
                let after = i + 1 + used;
                let mut j = after;
                while j < json.len() && json[j].is_ascii_whitespace() {
                    j += 1;
                }
                if depth == 1 && json.get(j) == Some(&b':') && s == key.as_bytes() {
                    j += 1;
                    while j < json.len() && json[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    return Some(j);
                }
                i = after;
            }
            _ => i += 1,
        }
    }
    None
}

/// Decodes a JSON string body (after the opening quote): the bytes and how many input bytes
/// were used, closing quote included.
fn decode_string(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some((out, i + 1)),
            b'\\' => {
                let c = *s.get(i + 1)?;
                i += 2;
                match c {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'u' => {
                        let hex = |at: usize| -> Option<u32> {
                            u32::from_str_radix(std::str::from_utf8(s.get(at..at + 4)?).ok()?, 16)
                                .ok()
                        };
                        let u = hex(i)?;
                        i += 4;
                        if (0xDC80..=0xDCFF).contains(&u) {
                            out.push((u - 0xDC00) as u8);
                            continue;
                        }
                        let ch = if (0xD800..0xDC00).contains(&u)
                            && s.get(i) == Some(&b'\\')
                            && s.get(i + 1) == Some(&b'u')
                        {
                            let lo = hex(i + 2)?;
                            i += 6;
                            char::from_u32(
                                0x10000 + ((u - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF),
                            )
                        } else {
                            char::from_u32(u)
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(
                            ch.unwrap_or('\u{FFFD}').encode_utf8(&mut buf).as_bytes(),
                        );
                    }
                    other => out.push(other),
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// One SSE event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub name: Option<String>,
    pub data: Vec<u8>,
}

/// Splits an SSE byte stream into events as bytes arrive.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            let mut ev = Event::default();
            let mut has_data = false;
            for line in block[..end].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(v) = line.strip_prefix(b"data:") {
                    if has_data {
                        ev.data.push(b'\n');
                    }
                    ev.data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
                    has_data = true;
                } else if let Some(v) = line.strip_prefix(b"event:") {
                    ev.name = Some(String::from_utf8_lossy(v).trim().to_string());
                }
            }
            if has_data || ev.name.is_some() {
                events.push(ev);
            }
        }
        events
    }
}

fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_surrogate_escaped_bytes() {
        let j = br#"{"devbox_id":"d","stdout":"a\u0000\udcff\udcfe\n\"q\"","exit_status":3,"nested":{"stdout":"no"}}"#;
        assert_eq!(string_field(j, "stdout").unwrap(), b"a\0\xff\xfe\n\"q\"");
        assert_eq!(int_field(j, "exit_status"), Some(3));
        assert_eq!(string_field(j, "missing"), None);
        assert_eq!(
            string_field(br#"{"output":"\ud83d\ude00 \u00e9"}"#, "output").unwrap(),
            "😀 é".as_bytes()
        );
        assert_eq!(int_field(br#"{"exit_status":null}"#, "exit_status"), None);
        assert_eq!(bool_field(br#"{"a": true, "b":false}"#, "a"), Some(true));
        assert_eq!(bool_field(br#"{"a": true, "b":false}"#, "b"), Some(false));
    }

    #[test]
    fn sse_events_across_pushes() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"output\":\"a\",\"off").is_empty());
        let ev = p.push(b"set\":0}\n\nevent: error\ndata: {\"code\":408}\r\n\r\n");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, b"{\"output\":\"a\",\"offset\":0}");
        assert_eq!(
            (ev[1].name.as_deref(), ev[1].data.as_slice()),
            (Some("error"), &b"{\"code\":408}"[..])
        );
    }
}
