//! Pure helpers: percent-encoding and URL building, POSIX shell quoting, base64, output tails
//! and line splitting. No WASI calls: unit-tested on the native target.

use crate::error::{invalid_argument, Result};
use crate::types::Command;
use base64::Engine as _;

/// Percent-encodes everything except RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
/// Right for a path segment, a query key or a query value (a space becomes `%20`).
pub fn encode_component(s: &str) -> String {
    encode(s, |_| false)
}

/// Percent-encodes a path, keeping its `/` separators: `a b/c` → `a%20b/c`.
/// A leading `/` is kept too.
pub fn encode_path(path: &str) -> String {
    encode(path, |b| b == b'/')
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`). Invalid escapes are kept as they are.
pub fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `base` (no trailing slash needed) joined with percent-encoded path segments:
/// `url("http://h:1/api/", &["sandboxes", "a b"])` → `http://h:1/api/sandboxes/a%20b`.
pub fn url(base: &str, segments: &[&str]) -> String {
    let mut out = base.trim_end_matches('/').to_string();
    for s in segments {
        out.push('/');
        out.push_str(&encode_component(s));
    }
    out
}

/// Appends `key=value` pairs (percent-encoded) to a URL that may already have a query.
pub fn with_query<K: AsRef<str>, V: AsRef<str>>(url: &str, params: &[(K, V)]) -> String {
    let mut out = url.to_string();
    for (k, v) in params {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&encode_component(k.as_ref()));
        out.push('=');
        out.push_str(&encode_component(v.as_ref()));
    }
    out
}

/// A URL split the way wasi:http wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// Lower-case scheme, e.g. `https`.
    pub scheme: String,
    /// `host[:port]` (userinfo is rejected).
    pub authority: String,
    /// Path and query, always starting with `/`; the fragment is dropped.
    pub path_with_query: String,
}

/// Splits an absolute `scheme://authority/path?query` URL.
pub fn parse_url(url: &str) -> Result<UrlParts> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid_argument(format!("not an absolute URL: {url:?}")))?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(invalid_argument(format!("bad URL scheme in {url:?}")));
    }
    let rest = rest.split('#').next().unwrap_or("");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(invalid_argument(format!("bad URL authority in {url:?}")));
    }
    let mut path = rest[end..].to_string();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(invalid_argument(format!(
            "URL path must be percent-encoded: {url:?}"
        )));
    }
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
        authority: authority.to_string(),
        path_with_query: path,
    })
}

/// Quotes one word for a POSIX shell: safe words stay as they are, others get single quotes
/// (`'` becomes `'\''`), the empty word becomes `''`.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes an argv into one POSIX shell command line: `["echo", "a b"]` → `echo 'a b'`.
pub fn quote_argv<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command as one shell string (argv is quoted), for providers that take a command line.
pub fn command_line(command: &Command) -> String {
    match command {
        Command::Argv(argv) => quote_argv(argv),
        Command::Shell(s) => s.clone(),
    }
}

/// The command as an argv (a shell string becomes `sh -c <string>`), for providers that
/// take an argv.
pub fn command_argv(command: &Command) -> Vec<String> {
    match command {
        Command::Argv(argv) => argv.clone(),
        Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
    }
}

/// Standard base64 with padding.
pub fn b64_encode(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64 (padding optional). A bad input is the provider's fault:
/// `provider(0, ...)`.
pub fn b64_decode(data: impl AsRef<[u8]>) -> Result<Vec<u8>> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT
        .decode(data)
        .map_err(|e| crate::error::provider(0, format!("invalid base64: {e}")))
}

/// Keeps the last `cap` bytes written to it: the `stdout-tail`/`stderr-tail` of an exec.
#[derive(Debug, Clone)]
pub struct Tail {
    cap: usize,
    buf: Vec<u8>,
}

/// The tail size the kit's users default to.
pub const DEFAULT_TAIL_BYTES: usize = 64 * 1024;

impl Default for Tail {
    fn default() -> Self {
        Tail::new(DEFAULT_TAIL_BYTES)
    }
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: Vec::new(),
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if overflow > 0 {
            self.buf.drain(..overflow);
        }
        self.buf.extend_from_slice(data);
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Splits a byte stream into `\n`-terminated lines (NDJSON, SSE). Feed chunks with
/// [`push`](LineSplitter::push), take complete lines with [`next_line`](LineSplitter::next_line),
/// and the unterminated rest with [`finish`](LineSplitter::finish).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    start: usize,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }
    /// The next complete line without its `\n` (and without a `\r` before it).
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf[self.start..].iter().position(|&b| b == b'\n')?;
        let mut line = self.buf[self.start..self.start + pos].to_vec();
        self.start += pos + 1;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Some(line)
    }
    /// What is left after the last `\n`, if anything.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        let rest = self.buf.split_off(self.start);
        (!rest.is_empty()).then_some(rest)
    }
}

/// Where `needle` first occurs in `hay` at or after `from` (memmem: a 1 MiB part is searched
/// in linear time, not byte by byte with a compare at each).
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    memchr::memmem::find(&hay[from..], needle).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_locates_needles_from_an_offset() {
        assert_eq!(find(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find(b"abcabc", b"bd", 0), None);
        assert_eq!(find(b"abc", b"c", 3), None);
        assert_eq!(find(b"abc", b"c", 9), None);
        assert_eq!(find(b"abc", b"", 0), None);
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(encode_component("a b/c?d=e&f%"), "a%20b%2Fc%3Fd%3De%26f%25");
        assert_eq!(encode_component("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(encode_path("/tmp/a b/c#"), "/tmp/a%20b/c%23");
        assert_eq!(decode_component("a%20b%2Fc%C3%A9%zz%4"), "a b/cé%zz%4");
        let tricky = "k=v&x y/é%";
        assert_eq!(decode_component(&encode_component(tricky)), tricky);
    }

    #[test]
    fn url_building() {
        assert_eq!(
            url("http://h:1/api/", &["sandboxes", "a b"]),
            "http://h:1/api/sandboxes/a%20b"
        );
        assert_eq!(url("http://h", &[]), "http://h");
        assert_eq!(
            with_query("http://h/x", &[("label", "a=b"), ("q", "1 2")]),
            "http://h/x?label=a%3Db&q=1%202"
        );
        assert_eq!(
            with_query("http://h/x?a=1", &[("b", "2")]),
            "http://h/x?a=1&b=2"
        );
    }

    #[test]
    fn url_parsing() {
        let p = parse_url("HTTP://127.0.0.1:8080/a/b?c=d#frag").unwrap();
        assert_eq!(p.scheme, "http");
        assert_eq!(p.authority, "127.0.0.1:8080");
        assert_eq!(p.path_with_query, "/a/b?c=d");
        let p = parse_url("https://example.com?x=1").unwrap();
        assert_eq!(p.path_with_query, "/?x=1");
        assert_eq!(
            parse_url("https://example.com").unwrap().path_with_query,
            "/"
        );
        assert!(parse_url("example.com/x").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("http://u:p@h/").is_err());
        assert!(parse_url("http://h/a b").is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("--flag=x/y.z,1:2@3%4+5"), "--flag=x/y.z,1:2@3%4+5");
        assert_eq!(
            quote_argv(&["echo", "hello world", "", "'"]),
            r#"echo 'hello world' '' ''\'''"#
        );
        let empty: [&str; 0] = [];
        assert_eq!(quote_argv(&empty), "");
    }

    #[test]
    fn commands() {
        let argv = Command::Argv(vec!["ls".into(), "-l".into(), "my dir".into()]);
        assert_eq!(command_line(&argv), "ls -l 'my dir'");
        assert_eq!(command_argv(&argv), vec!["ls", "-l", "my dir"]);
        let sh = Command::Shell("echo $HOME | wc".into());
        assert_eq!(command_line(&sh), "echo $HOME | wc");
        assert_eq!(command_argv(&sh), vec!["sh", "-c", "echo $HOME | wc"]);
    }

    #[test]
    fn base64_roundtrip() {
        assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(b64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(b64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(b64_decode("!!").is_err());
    }

    #[test]
    fn tail_keeps_last_bytes() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!(t.as_bytes(), b"abc");
        t.push(b"def");
        assert_eq!(t.as_bytes(), b"bcdef");
        t.push(b"0123456789");
        assert_eq!(t.as_bytes(), b"56789");
        t.push(b"");
        assert_eq!(t.clone().into_vec(), b"56789");
    }

    #[test]
    fn line_splitting() {
        let mut s = LineSplitter::new();
        s.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(s.next_line().unwrap(), b"{\"a\":1}");
        assert_eq!(s.next_line(), None);
        s.push(b":2}\r\n\nlast");
        assert_eq!(s.next_line().unwrap(), b"{\"b\":2}");
        assert_eq!(s.next_line().unwrap(), b"");
        assert_eq!(s.next_line(), None);
        assert_eq!(s.finish().unwrap(), b"last");
        let s = LineSplitter::new();
        assert_eq!(s.finish(), None);
    }
}
