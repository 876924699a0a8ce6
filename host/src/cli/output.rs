//! Output of the CLI: every JSON shape is built here, once (documented in `docs/cli-json.md`),
//! and the human renderings read those same values. The contract's generated types have no
//! serde, so they are converted by hand.
//!
//! Writes ignore errors: a closed pipe (`sandbox-host ls | head -1`) is not a failure.

use std::io::Write;

use serde_json::{json, Map, Value};

use sandbox_host::types::OutputStream;

// ----- writing -------------------------------------------------------------------------------

/// Writes to stdout and flushes.
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Writes raw bytes to stdout or stderr and flushes (exec output).
pub fn raw(stream: OutputStream, data: &[u8]) {
    let _ = match stream {
        OutputStream::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|_| o.flush())
        }
        OutputStream::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|_| e.flush())
        }
    };
}

/// A line on stdout.
pub fn line(text: impl AsRef<str>) {
    out(&format!("{}\n", text.as_ref()));
}

/// A JSON document on stdout (pretty-printed).
pub fn print_json(v: &Value) {
    line(serde_json::to_string_pretty(v).expect("JSON values serialize"));
}

/// One NDJSON line on stdout.
pub fn print_ndjson(v: &Value) {
    line(serde_json::to_string(v).expect("JSON values serialize"));
}

fn err_line(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.write_all(b"\n");
    let _ = e.flush();
}

/// The one line an error gets on stderr.
pub fn print_error(code: &str, message: &str, json_mode: bool) {
    if json_mode {
        err_line(&serde_json::to_string(&error(code, message)).expect("JSON values serialize"));
    } else {
        err_line(&format!("sandbox-host: error: {message}"));
    }
}

/// A warning on stderr (the command goes on).
pub fn warn(message: &str, json_mode: bool) {
    if json_mode {
        err_line(
            &serde_json::to_string(&json!({ "warning": { "message": message } }))
                .expect("JSON values serialize"),
        );
    } else {
        err_line(&format!("sandbox-host: warning: {message}"));
    }
}

// ----- JSON shapes (in the library, shared with `serve`) -----------------------------------

pub use sandbox_host::json::*;

// ----- human renderings ----------------------------------------------------------------------

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn opt_text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "-".into(),
    }
}

/// `k=v,k2=v2` from a JSON object.
pub fn labels_text(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut text = String::new();
    let mut push = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            text.push_str(c);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        text.push('\n');
    };
    push(headers.to_vec());
    for r in rows {
        push(r.iter().map(String::as_str).collect());
    }
    text
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: i64) -> String {
    let d = (sandbox_host::registry::now_ms() - ms).max(0) / 1000;
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// Permission bits as `0644`.
pub fn mode_octal(mode: u64) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The `ls` table from ls entries (Record or Sandbox values with `registered`).
pub fn render_ls(entries: &[Value], show_registered: bool) -> String {
    let mut headers = vec!["ID", "PROVIDER", "NAME", "STATE", "LABELS", "CREATED"];
    if show_registered {
        headers.push("REGISTERED");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                s(e, "id").to_string(),
                s(e, "provider").to_string(),
                opt_text(e, "name"),
                s(e, "state").to_string(),
                labels_text(&e["labels"]),
                e["created_at_ms"].as_i64().map_or("-".into(), ago),
            ];
            if show_registered {
                row.push(
                    if e["registered"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                );
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// `inspect` from its JSON value.
pub fn render_inspect(v: &Value) -> String {
    let r = &v["record"];
    let mut t = String::new();
    let mut kv = |k: &str, val: String| t.push_str(&format!("{:<10} {val}\n", format!("{k}:")));
    kv("id", s(r, "id").into());
    kv("provider", s(r, "provider").into());
    kv("name", opt_text(r, "name"));
    kv("image", opt_text(r, "image"));
    kv("workdir", opt_text(r, "workdir"));
    kv("labels", labels_text(&r["labels"]));
    kv(
        "created",
        r["created_at_ms"].as_i64().map_or("-".into(), utc),
    );
    kv(
        "updated",
        r["updated_at_ms"].as_i64().map_or("-".into(), utc),
    );
    kv("state", format!("{} (registry)", s(r, "state")));
    match (&v["provider_view"], &v["provider_error"]) {
        (p, _) if p.is_object() => kv(
            "observed",
            format!("{} (the provider's view now)", s(p, "state")),
        ),
        (_, e) if e.is_object() => kv("observed", format!("error: {}", s(e, "message"))),
        _ => {}
    }
    t.push_str("history:\n");
    for h in v["history"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "  {}  {:<10} {}\n",
            h["at_ms"].as_i64().map_or("-".into(), utc),
            s(h, "state"),
            s(h, "detail")
        ));
    }
    t
}

/// `files` table from Stat values.
pub fn render_files(entries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut name = s(e, "name").to_string();
            if s(e, "kind") == "directory" {
                name.push('/');
            }
            vec![
                s(e, "kind").to_string(),
                mode_octal(e["mode"].as_u64().unwrap_or(0)),
                e["size"].as_u64().unwrap_or(0).to_string(),
                name,
            ]
        })
        .collect();
    table(&["KIND", "MODE", "SIZE", "NAME"], &rows)
}

/// `ps` table from Process values.
pub fn render_processes(entries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|p| {
            let running = p["running"].as_bool() == Some(true);
            vec![
                s(p, "pid").to_string(),
                if running {
                    "running".into()
                } else {
                    "exited".into()
                },
                if running {
                    "-".into()
                } else {
                    opt_text(p, "exit_code")
                },
                s(p, "command").to_string(),
            ]
        })
        .collect();
    table(&["PID", "STATUS", "EXIT", "COMMAND"], &rows)
}

fn list_text(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

/// `plugins` from Plugin values.
pub fn render_plugins(plugins: &[Value]) -> String {
    let mut t = String::new();
    for p in plugins {
        let sha = s(p, "sha256");
        t.push_str(&format!(
            "{} {} (contract {})  sha256 {}\n",
            s(p, "name"),
            s(p, "version"),
            s(p, "contract_version"),
            &sha[..sha.len().min(12)]
        ));
        if !s(p, "description").is_empty() {
            t.push_str(&format!("  {}\n", s(p, "description")));
        }
        t.push_str(&format!("  path:         {}\n", s(p, "path")));
        t.push_str(&format!(
            "  capabilities: {}\n",
            list_text(&p["capabilities"])
        ));
        t.push_str(&format!("  allow:        {}\n", list_text(&p["allow"])));
    }
    if plugins.is_empty() {
        t.push_str("no plugins loaded\n");
    }
    t
}

/// `doctor` from its JSON value.
pub fn render_doctor(v: &Value) -> String {
    let mut t = String::new();
    for p in v["plugins"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "{} {}: {}\n",
            s(p, "name"),
            opt_text(p, "version"),
            s(p, "status")
        ));
        if let Some(allow) = p.get("allow") {
            t.push_str(&format!("  allow: {}\n", list_text(allow)));
        }
        for c in p["checks"].as_array().into_iter().flatten() {
            let mark = match s(c, "status") {
                "ok" => "[ok]  ",
                "skip" => "[skip]",
                _ => "[FAIL]",
            };
            t.push_str(&format!("  {mark} {}: {}\n", s(c, "name"), s(c, "detail")));
        }
    }
    for e in v["load_errors"].as_array().into_iter().flatten() {
        t.push_str(&format!("[FAIL] load: {}\n", e.as_str().unwrap_or("")));
    }
    t.push_str(if v["ok"].as_bool() == Some(true) {
        "all checks passed\n"
    } else {
        "some checks failed\n"
    });
    t
}

/// A TOML value (strings quoted; JSON string escapes are valid TOML basic-string escapes for
/// the characters that appear in configuration).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        Value::String(k.into()).to_string()
    }
}

fn toml_section(t: &mut String, name: &str, m: &Map<String, Value>) {
    t.push_str(&format!("\n[{name}]\n"));
    if m.values().all(Value::is_null) {
        t.push_str("# defaults\n");
    }
    for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
        t.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
    }
}

/// `config show` as TOML (secrets appear as their source, never their value).
pub fn render_config(v: &Value) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "# configuration file: {}{}\n",
        s(v, "config_file"),
        if v["config_file_found"].as_bool() == Some(true) {
            ""
        } else {
            " (not found; presets and defaults only)"
        }
    ));
    t.push_str(&format!("# state directory: {}\n", s(v, "home")));
    t.push_str(&format!(
        "# plugin directories: {}\n",
        list_text(&v["plugin_dirs"])
    ));
    let empty = Map::new();
    toml_section(&mut t, "host", v["host"].as_object().unwrap_or(&empty));
    toml_section(
        &mut t,
        "defaults.limits",
        v["defaults"]["limits"].as_object().unwrap_or(&empty),
    );
    toml_section(
        &mut t,
        "localbox",
        v["localbox"].as_object().unwrap_or(&empty),
    );
    for (name, p) in v["plugins"].as_object().unwrap_or(&empty) {
        t.push_str(&format!("\n[plugins.{}]\n", toml_key(name)));
        t.push_str(&format!(
            "# {}\n",
            if p["loaded"].as_bool() == Some(true) {
                "plugin loaded"
            } else {
                "plugin not loaded"
            }
        ));
        if let Some(note) = p.get("note").and_then(Value::as_str) {
            t.push_str(&format!("# {note}\n"));
        }
        for key in ["allow", "allow_from_settings", "h2c", "sha256", "ca_files"] {
            if let Some(val) = p.get(key).filter(|x| !x.is_null()) {
                t.push_str(&format!("{key} = {}\n", toml_value(val)));
            }
        }
        for (k, st) in p["settings"].as_object().unwrap_or(&empty) {
            match &st["value"] {
                Value::Null => t.push_str(&format!(
                    "# settings.{} is unset (from {})\n",
                    toml_key(k),
                    s(st, "source")
                )),
                val => t.push_str(&format!(
                    "settings.{} = {}  # from {}\n",
                    toml_key(k),
                    toml_value(val),
                    s(st, "source")
                )),
            }
        }
        for (k, sec) in p["secrets"].as_object().unwrap_or(&empty) {
            t.push_str(&format!(
                "secrets.{} = {}  # {}\n",
                toml_key(k),
                toml_value(&sec["source"]),
                s(sec, "status")
            ));
        }
        if let Some(l) = p.get("limits") {
            t.push_str(&format!("limits = {}\n", toml_value(l)));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_763_900_000_123), "2025-11-23 12:13:20 UTC");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn toml_values_quote_and_inline() {
        assert_eq!(
            toml_value(&json!({"a": 1, "b c": "x", "n": null})),
            r#"{ a = 1, "b c" = "x" }"#
        );
        assert_eq!(toml_value(&json!(["h", 2])), r#"["h", 2]"#);
    }
}
