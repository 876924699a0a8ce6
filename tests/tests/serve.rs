//! `sandbox-host serve` end to end: a real server process on loopback (its own temp home,
//! registry and localbox), driven over HTTP. Every route incl. SSE order, auth and tenant
//! isolation, restart and re-attach, two replicas on one Postgres, SIGTERM during an exec,
//! malformed requests, hot reload, the OpenAPI document, the idle reaper, the Python client.
//!
//! Needs the built binary (`cargo build -p sandbox-host`), the `local` and `example` plugins
//! (`make plugins`) and bubblewrap. Every wait is bounded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use sandbox_tests::serve_support::{sha256_hex, Client, LocalboxProcess, Postgres, ServeHome};

const ADMIN: &str = "admin-secret-token";
const TA: &str = "tenant-a-token";
const TB: &str = "tenant-b-token";

fn tokens_config(extra_a: &str) -> String {
    format!(
        "[serve]\nadmin_token_sha256 = \"{}\"\n[serve.tenants.a]\ntoken_sha256 = [\"{}\"]\n{extra_a}\n[serve.tenants.b]\ntoken_sha256 = [\"{}\"]\n",
        sha256_hex(ADMIN),
        sha256_hex(TA),
        sha256_hex(TB)
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_route_end_to_end() {
    let home = ServeHome::new(&["local"], "");
    let serve = home.start();
    let c = serve.client(None);

    assert_eq!(c.get("/healthz").json()["status"], "ok");
    assert_eq!(c.get("/readyz").json()["status"], "ready");
    let providers = c.get("/v1/providers").json();
    let local = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local")
        .expect("local listed")
        .clone();
    assert!(local["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("streaming")));
    assert!(local["settings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "localbox-url"));
    let pre = c.post("/v1/providers/local/preflight", &json!({}));
    assert_eq!(pre.status, 200, "{}", pre.text());
    assert!(pre.json()["checks"].is_array());

    // Status events: subscribe before creating.
    let (st, events) = c.sse("GET", "/v1/events", None);
    assert_eq!(st, 200);
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in events {
            if etx.send(e).is_err() {
                return;
            }
        }
    });

    let id = c.create(
        "local",
        json!({ "labels": { "team": "blue" }, "env": { "GREETING": "hi" } }),
    );
    let other = c.create("local", json!({ "labels": { "team": "red" } }));
    let mut statuses = vec![];
    let started = Instant::now();
    while !statuses.contains(&"ready".to_string()) && started.elapsed() < Duration::from_secs(20) {
        if let Ok(e) = erx.recv_timeout(Duration::from_millis(200)) {
            let v = e.json();
            if v["sandbox_id"] == json!(id) || v["sandbox_id"].is_null() {
                statuses.push(v["status"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(
        statuses.starts_with(&["starting".to_string()]),
        "events: {statuses:?}"
    );
    assert!(
        statuses.contains(&"started".to_string()) && statuses.contains(&"ready".to_string()),
        "events: {statuses:?}"
    );

    // Get, list with label filter and pagination.
    let got = c.get(&format!("/v1/sandboxes/{id}")).json();
    assert_eq!(got["id"], json!(id));
    assert_eq!(got["state"], "running");
    let blue = c.get("/v1/sandboxes?label=team=blue").json();
    assert_eq!(blue["sandboxes"].as_array().unwrap().len(), 1);
    assert_eq!(blue["sandboxes"][0]["id"], json!(id));
    let page1 = c.get("/v1/sandboxes?provider=local&limit=1").json();
    assert_eq!(page1["sandboxes"].as_array().unwrap().len(), 1);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let page2 = c
        .get(&format!(
            "/v1/sandboxes?provider=local&limit=1&cursor={cursor}"
        ))
        .json();
    assert_eq!(page2["sandboxes"].as_array().unwrap().len(), 1);
    assert_ne!(page1["sandboxes"][0]["id"], page2["sandboxes"][0]["id"]);
    assert!(page2["next_cursor"].is_null());

    // Exec: JSON result, argv, env, cwd, stdin, timeout.
    let base = format!("/v1/sandboxes/{id}");
    let r = c.post(&format!("{base}/exec"), &json!({ "command": "echo out; echo err >&2; echo $GREETING $X; exit 3", "env": { "X": "there" } })).json();
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "out\nhi there\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["timed_out"], false);
    let r = c
        .post(
            &format!("{base}/exec"),
            &json!({ "argv": ["cat"], "stdin": "from stdin" }),
        )
        .json();
    assert_eq!(r["stdout"], "from stdin");
    c.post(
        &format!("{base}/exec"),
        &json!({ "command": "mkdir -p sub" }),
    );
    let r = c
        .post(
            &format!("{base}/exec"),
            &json!({ "command": "pwd", "cwd": "sub" }),
        )
        .json();
    assert!(
        r["stdout"].as_str().unwrap().trim_end().ends_with("/sub"),
        "{r}"
    );
    let r = c
        .post(
            &format!("{base}/exec"),
            &json!({ "command": "sleep 10", "timeout_secs": 0.5 }),
        )
        .json();
    assert_eq!(r["timed_out"], true);

    // SSE exec: chunks in order, as they happen, exit last.
    let (st, events) = c.sse(
        "POST",
        &format!("{base}/exec"),
        Some(&json!({ "command": "echo one; sleep 1; echo two >&2; sleep 0.2; echo three" })),
    );
    assert_eq!(st, 200);
    let events: Vec<_> = events.collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["stdout", "stderr", "stdout", "exit"], "{events:?}");
    assert_eq!(events[0].json()["data"], "one\n");
    assert_eq!(events[1].json()["data"], "two\n");
    assert_eq!(events[2].json()["data"], "three\n");
    assert_eq!(events[3].json()["exit_code"], 0);
    assert!(
        events[1].at.duration_since(events[0].at) > Duration::from_millis(700),
        "first chunk was not streamed before the rest"
    );

    // Background processes.
    let p = c.post(
        &format!("{base}/processes"),
        &json!({ "command": "echo started; sleep 30" }),
    );
    assert_eq!(p.status, 201, "{}", p.text());
    let pid = p.json()["pid"].as_str().unwrap().to_string();
    let listed = c.get(&format!("{base}/processes")).json();
    assert!(listed["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"] == json!(pid)));
    wait_for("background output", Duration::from_secs(10), || {
        c.get(&format!(
            "{base}/processes/{pid}/output?stdout_offset=0&stderr_offset=0"
        ))
        .json()["stdout"]
            == "started\n"
    });
    let out = c
        .get(&format!("{base}/processes/{pid}/output?stdout_offset=8"))
        .json();
    assert_eq!(out["stdout"], "");
    assert_eq!(out["stdout_next"], 8);
    assert_eq!(
        c.get(&format!("{base}/processes/{pid}")).json()["running"],
        true
    );
    assert_eq!(
        c.post(
            &format!("{base}/processes/{pid}/kill"),
            &json!({ "signal": 9 })
        )
        .status,
        204
    );
    wait_for("process to exit", Duration::from_secs(10), || {
        c.get(&format!("{base}/processes/{pid}")).json()["running"] == false
    });

    // Files.
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    assert_eq!(
        c.post(&format!("{base}/dirs?path=data"), &json!({})).status,
        201
    );
    assert_eq!(
        c.put_bytes(
            &format!("{base}/files?path=data/blob.bin&mode=600"),
            &payload
        )
        .status,
        204
    );
    let back = c.get(&format!("{base}/files?path=data/blob.bin"));
    assert_eq!(back.status, 200);
    assert_eq!(back.body, payload);
    let dir = c.get(&format!("{base}/dirs?path=data")).json();
    let entry = &dir["entries"][0];
    assert_eq!(entry["name"], "blob.bin");
    assert_eq!(entry["size"], 300_000);
    assert_eq!(entry["mode"].as_u64().unwrap() & 0o777, 0o600);
    assert_eq!(
        c.delete(&format!("{base}/files?path=data&recursive=true"))
            .status,
        204
    );
    assert_eq!(
        c.get(&format!("{base}/files?path=data/blob.bin")).status,
        404
    );

    // Ports, timeout, pause/resume.
    let ep = c.get(&format!("{base}/ports/8000")).json();
    assert!(ep["url"].as_str().unwrap().starts_with("http"), "{ep}");
    assert_eq!(
        c.post(&format!("{base}/timeout"), &json!({ "seconds": 600 }))
            .status,
        200
    );
    assert_eq!(
        c.post(&format!("{base}/pause"), &json!({})).json()["state"],
        "paused"
    );
    assert_eq!(c.get(&base).json()["state"], "paused");
    assert_eq!(
        c.post(&format!("{base}/resume"), &json!({})).json()["state"],
        "running"
    );
    assert_eq!(
        c.post(&format!("{base}/exec"), &json!({ "command": "true" }))
            .json()["exit_code"],
        0
    );

    // Metrics saw the calls.
    let m = c.get("/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains("sandbox_host_calls_total{provider=\"local\",op=\"exec\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("sandbox_host_call_duration_seconds_bucket{provider=\"local\",op=\"create\",le=\"+Inf\"} 2"), "{text}");
    assert!(text.contains("sandbox_host_calls_in_flight 0"));
    assert!(text.contains("sandbox_host_plugin_events_total{event=\"loaded\",plugin=\"local\"} 1"));

    // Destroy: gone afterwards, and a destroyed event was sent.
    assert_eq!(c.delete(&base).status, 204);
    assert_eq!(c.get(&base).error_code(), "not_found");
    assert_eq!(c.delete(&format!("/v1/sandboxes/{other}")).status, 204);
    let started = Instant::now();
    let mut destroyed = false;
    while !destroyed && started.elapsed() < Duration::from_secs(10) {
        if let Ok(e) = erx.recv_timeout(Duration::from_millis(200)) {
            let v = e.json();
            destroyed = v["sandbox_id"] == json!(id)
                && v["status"] == "disconnected"
                && v["message"] == "destroyed";
        }
    }
    assert!(destroyed, "no disconnected event for the destroyed sandbox");
}

#[test]
fn auth_and_tenant_isolation() {
    let home = ServeHome::new(
        &["local"],
        &tokens_config("max_sandboxes = 2\nmax_concurrent_calls = 2"),
    );
    let serve = home.start();
    let anon = serve.client(None);
    let a = serve.client(Some(TA));
    let b = serve.client(Some(TB));
    let admin = serve.client(Some(ADMIN));

    // Public routes stay public; everything else needs a valid token.
    assert_eq!(anon.get("/healthz").status, 200);
    assert_eq!(anon.get("/openapi.json").status, 200);
    for (method, path) in [
        ("GET", "/v1/providers"),
        ("GET", "/v1/sandboxes"),
        ("POST", "/v1/sandboxes"),
        ("GET", "/metrics"),
        ("GET", "/v1/events"),
    ] {
        let r = anon.request(method, path, Some(b"{}"), &[]);
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.error_code(), "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = serve
            .client(Some("wrong"))
            .request(method, path, Some(b"{}"), &[]);
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
    }
    // The config holds digests only: the digest itself is not a token.
    assert_eq!(
        serve
            .client(Some(&sha256_hex(TA)))
            .get("/v1/sandboxes")
            .status,
        401
    );
    let cfg = std::fs::read_to_string(home.path().join("config.toml")).unwrap();
    assert!(!cfg.contains(TA) && !cfg.contains(ADMIN));

    // Admin-only routes.
    assert_eq!(a.get("/metrics").status, 403);
    assert_eq!(
        a.post("/v1/providers/local/preflight", &json!({})).status,
        403
    );
    assert_eq!(admin.get("/metrics").status, 200);
    assert_eq!(a.get("/v1/providers").status, 200);

    let id = a.create("local", json!({}));
    let base = format!("/v1/sandboxes/{id}");
    a.put_bytes(&format!("{base}/files?path=secret.txt"), b"tenant a's");

    // B cannot see, list, exec in, read files of, or delete A's sandbox: 404 as if absent.
    assert!(b.get("/v1/sandboxes").json()["sandboxes"]
        .as_array()
        .unwrap()
        .is_empty());
    for r in [
        b.get(&base),
        b.post(&format!("{base}/exec"), &json!({ "command": "true" })),
        b.get(&format!("{base}/files?path=secret.txt")),
        b.put_bytes(&format!("{base}/files?path=x"), b"x"),
        b.get(&format!("{base}/dirs?path=.")),
        b.post(&format!("{base}/pause"), &json!({})),
        b.get(&format!("{base}/ports/80")),
        b.delete(&base),
    ] {
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.error_code(), "not_found");
    }
    let ghost = b.get("/v1/sandboxes/no-such-sandbox");
    assert_eq!(ghost.status, 404);
    assert_eq!(
        ghost.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace("no-such-sandbox", &id),
        b.get(&base).json()["error"]["message"].as_str().unwrap()
    );
    // A still has it, untouched; the admin sees it with its owner.
    assert_eq!(
        a.get(&format!("{base}/files?path=secret.txt")).body,
        b"tenant a's"
    );
    assert_eq!(a.get("/v1/sandboxes").json()["sandboxes"][0]["owner"], "a");
    assert!(admin.get("/v1/sandboxes").json()["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == json!(id)));

    // B's event stream does not carry A's sandboxes.
    let (_, b_events) = b.sse("GET", "/v1/events", None);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in b_events {
            let _ = tx.send(e);
        }
    });
    let id2 = a.create("local", json!({}));
    let b_own = b.create("local", json!({}));
    let started = Instant::now();
    let mut seen = vec![];
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(e.json());
        }
        if seen
            .iter()
            .any(|v| v["sandbox_id"] == json!(b_own) && v["status"] == "ready")
        {
            break;
        }
    }
    assert!(
        seen.iter().any(|v| v["sandbox_id"] == json!(b_own)),
        "B saw none of its own events: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|v| v["sandbox_id"] == json!(id) || v["sandbox_id"] == json!(id2)),
        "B saw A's events: {seen:?}"
    );

    // A's limit of 2 sandboxes.
    let over = a.post("/v1/sandboxes", &json!({ "provider": "local" }));
    assert_eq!(over.status, 429, "{}", over.text());
    assert_eq!(over.error_code(), "quota_exceeded");
    // A's limit of 2 calls in flight.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let a: Client = a.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                a.post(&format!("{base}/exec"), &json!({ "command": "sleep 2" }))
                    .status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let third = a.get("/v1/sandboxes");
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(third.header("retry-after").is_some());
    // B is not affected by A's limit.
    assert_eq!(b.get("/v1/sandboxes").status, 200);
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(a.get("/v1/sandboxes").status, 200);
    for (cl, sid) in [(&a, &id), (&a, &id2), (&b, &b_own)] {
        assert_eq!(cl.delete(&format!("/v1/sandboxes/{sid}")).status, 204);
    }
}

#[test]
fn refuses_a_public_address_without_tokens() {
    let home = ServeHome::new(&["local"], "");
    let out = std::process::Command::new(sandbox_tests::serve_support::binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--plugins"])
        .arg(home.plugin_dir())
        .arg("--config")
        .arg(home.path().join("config.toml"))
        .env("SANDBOX_HOST_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
}

#[test]
fn bad_requests_get_clear_json_4xx() {
    let home = ServeHome::new(
        &["local"],
        "[serve]\nmax_json_kib = 64\n[plugins.local]\nlimits = { file_mb = 1 }\n",
    );
    let serve = home.start();
    let c = serve.client(None);
    let id = c.create("local", json!({}));
    let base = format!("/v1/sandboxes/{id}");
    // (method, path, body, headers, expected status, expected error code)
    type Case<'a> = (
        &'a str,
        String,
        Option<Vec<u8>>,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/sandboxes".into(),
            Some(b"{not json".to_vec()),
            vec![],
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            Some(b"{}".to_vec()),
            vec![("Content-Type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            Some(br#"{"provider":"nope"}"#.to_vec()),
            vec![],
            404,
            "unknown_provider",
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            Some(br#"{"provider":"local","spec":{"bogus":1}}"#.to_vec()),
            vec![],
            422,
            "invalid_json",
        ),
        (
            "POST",
            format!("{base}/exec"),
            Some(format!(r#"{{"command":"{}"}}"#, "x".repeat(100 << 10)).into_bytes()),
            vec![],
            413,
            "too_large",
        ),
        (
            "POST",
            format!("{base}/exec"),
            Some(br#"{"command":"true","argv":["true"]}"#.to_vec()),
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "POST",
            format!("{base}/exec"),
            Some(br#"{}"#.to_vec()),
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "POST",
            format!("{base}/exec"),
            Some(br#"{"command":"true","timeout_secs":-1}"#.to_vec()),
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "PUT",
            format!("{base}/files?path=big"),
            Some(vec![0u8; (1 << 20) + 1]),
            vec![("Content-Type", "application/octet-stream")],
            413,
            "too_large",
        ),
        (
            "PUT",
            format!("{base}/files?path=x&mode=999"),
            Some(b"x".to_vec()),
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            format!("{base}/files"),
            None,
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            format!("{base}/files?path=../../../etc/passwd"),
            None,
            vec![],
            403,
            "forbidden",
        ),
        (
            "GET",
            format!("{base}/files?path=/etc/passwd"),
            None,
            vec![],
            403,
            "forbidden",
        ),
        (
            "GET",
            format!("{base}/files?path=nope.txt"),
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "GET",
            format!("{base}/ports/notaport"),
            None,
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            format!("{base}/ports/70000"),
            None,
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            "/v1/sandboxes?limit=0".into(),
            None,
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            "/v1/sandboxes?label=novalue".into(),
            None,
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "GET",
            "/v1/sandboxes/unknown-id".into(),
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/nothing-here".into(),
            None,
            vec![],
            404,
            "no_route",
        ),
        (
            "PATCH",
            "/v1/sandboxes".into(),
            Some(b"{}".to_vec()),
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("{base}/processes/nope/kill"),
            Some(br#"{"signal":999}"#.to_vec()),
            vec![],
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/providers/nope/preflight".into(),
            None,
            vec![],
            404,
            "unknown_provider",
        ),
    ];
    for (method, path, body, headers, status, code) in cases {
        let r = c.request(method, &path, body.as_deref(), &headers);
        assert_eq!(
            r.status,
            status,
            "{method} {}: {}",
            &path[..path.len().min(80)],
            r.text()
        );
        assert_eq!(r.error_code(), code, "{method} {path}");
    }
    // The server is still healthy and the sandbox still works.
    assert_eq!(
        c.post(&format!("{base}/exec"), &json!({ "command": "true" }))
            .json()["exit_code"],
        0
    );
    assert!(!serve.log().contains("panicked"), "{}", serve.log());
    c.delete(&base);
}

#[test]
fn restart_keeps_sandboxes_and_marks_vanished_ones_lost() {
    let home = ServeHome::new(&["local"], &tokens_config(""));
    let serve = home.start();
    let a = serve.client(Some(TA));
    let id = a.create("local", json!({ "labels": { "keep": "yes" } }));
    let base = format!("/v1/sandboxes/{id}");
    assert_eq!(
        a.put_bytes(&format!("{base}/files?path=note.txt"), b"persisted")
            .status,
        204
    );
    assert_eq!(serve.stop(), Some(0));

    // A record whose sandbox vanished while the server was down.
    {
        let db =
            sandbox_host::registry::SqliteStore::open(&home.path().join("sessions.db")).unwrap();
        use sandbox_host::registry::SessionStore;
        let mut ghost = db.get("local", &id).unwrap().unwrap();
        ghost.sandbox_id = "vanished-sandbox".into();
        db.put(&ghost).unwrap();
    }
    let serve = home.start();
    let a = serve.client(Some(TA));
    let listed = a.get("/v1/sandboxes").json();
    let states: std::collections::BTreeMap<String, String> = listed["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states.get(&id).map(String::as_str),
        Some("running"),
        "{listed}"
    );
    assert_eq!(
        states.get("vanished-sandbox").map(String::as_str),
        Some("lost"),
        "{listed}"
    );
    assert_eq!(
        a.get(&format!("{base}/files?path=note.txt")).body,
        b"persisted"
    );
    assert_eq!(
        a.post(
            &format!("{base}/exec"),
            &json!({ "command": "cat note.txt" })
        )
        .json()["stdout"],
        "persisted"
    );
    assert_eq!(a.delete(&base).status, 204);
}

#[test]
fn sigterm_during_exec_loses_nothing() {
    let home = ServeHome::new(&["local"], "");
    let mut serve = home.start();
    let c = serve.client(None);
    let id = c.create("local", json!({}));
    let base = format!("/v1/sandboxes/{id}");
    let running = {
        let c = c.clone();
        let base = base.clone();
        std::thread::spawn(move || {
            c.post(
                &format!("{base}/exec"),
                &json!({ "command": "sleep 2; echo finished; echo done > marker" }),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    serve.sigterm();
    let r = running.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "finished\n");
    let status = serve
        .wait_exit(Duration::from_secs(30))
        .expect("serve exited after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", serve.log());
    // The sandbox and the command's effect survive into the next start.
    drop(serve);
    let serve = home.start();
    let c = serve.client(None);
    assert_eq!(c.get(&format!("{base}/files?path=marker")).body, b"done\n");
    c.delete(&base);
}

#[test]
fn two_replicas_share_one_postgres() {
    let Some(pg) = Postgres::start() else { return };
    // Replicas reach the same provider: here one standalone localbox both point at.
    let lb_home = ServeHome::new(&[], "");
    let lb = LocalboxProcess::start(&lb_home);
    let cfg = format!(
        "[host]\ndatabase_url = \"{}\"\n{}\n{}",
        pg.url,
        lb.config_toml(),
        tokens_config("")
    );
    let home1 = ServeHome::new(&["local"], &cfg);
    let r1 = home1.start();
    let a1 = r1.client(Some(TA));
    let id = a1.create("local", json!({ "labels": { "shared": "1" } }));
    assert_eq!(
        a1.put_bytes(
            &format!("/v1/sandboxes/{id}/files?path=from1.txt"),
            b"replica 1"
        )
        .status,
        204
    );
    // Replica 2: another home, same registry; it re-attaches what replica 1 created.
    let home2 = ServeHome::new(&["local"], &cfg);
    let r2 = home2.start();
    let a2 = r2.client(Some(TA));
    let b2 = r2.client(Some(TB));
    let listed = a2.get("/v1/sandboxes?label=shared=1").json();
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["sandboxes"][0]["id"], json!(id));
    assert_eq!(listed["sandboxes"][0]["owner"], "a");
    assert_eq!(listed["sandboxes"][0]["state"], "running");
    let r = a2
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({ "command": "cat from1.txt" }),
        )
        .json();
    assert_eq!(r["stdout"], "replica 1");
    // Tenancy holds across replicas.
    assert!(b2.get("/v1/sandboxes").json()["sandboxes"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(b2.get(&format!("/v1/sandboxes/{id}")).status, 404);
    // Created on 2, seen on 1; destroyed on 1, gone on 2.
    let id2 = a2.create("local", json!({}));
    assert!(a1.get("/v1/sandboxes").json()["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == json!(id2)));
    assert_eq!(a1.delete(&format!("/v1/sandboxes/{id}")).status, 204);
    assert_eq!(a2.get(&format!("/v1/sandboxes/{id}")).status, 404);
    assert_eq!(a1.delete(&format!("/v1/sandboxes/{id2}")).status, 204);
    assert!(a2.get("/v1/sandboxes").json()["sandboxes"]
        .as_array()
        .unwrap()
        .is_empty());
    // The registry really is in Postgres: nothing in either replica's SQLite file.
    assert!(
        !home1.path().join("sessions.db").exists() && !home2.path().join("sessions.db").exists()
    );
}

#[test]
fn hot_reload_shows_a_new_provider() {
    let home = ServeHome::new(&["local"], "");
    let serve = home.start();
    let c = serve.client(None);
    let names = |c: &Client| -> Vec<String> {
        c.get("/v1/providers").json()["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&c), ["local"]);
    // Copy under a hidden name, then rename: the watcher sees a complete file.
    let tmp = home.plugin_dir().join(".example.wasm.tmp");
    std::fs::copy(sandbox_tests::plugin_file("example"), &tmp).unwrap();
    std::fs::rename(&tmp, home.plugin_dir().join("example.wasm")).unwrap();
    wait_for("example in /v1/providers", Duration::from_secs(30), || {
        names(&c).contains(&"example".to_string())
    });
    // The local provider kept serving meanwhile.
    let id = c.create("local", json!({}));
    assert_eq!(
        c.post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({ "command": "true" })
        )
        .json()["exit_code"],
        0
    );
    assert!(c
        .get("/metrics")
        .text()
        .contains("sandbox_host_plugin_events_total{event=\"loaded\",plugin=\"example\"} 1"));

    // Replacing a plugin while one of its calls runs: the call finishes on the old version.
    let slow = {
        let c = c.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            c.post(
                &format!("/v1/sandboxes/{id}/exec"),
                &json!({ "command": "sleep 2; echo survived" }),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // New bytes, same plugin: a custom section appended to the component.
    let mut bytes = std::fs::read(sandbox_tests::plugin_file("local")).unwrap();
    bytes.extend_from_slice(&[0, 9, 8]);
    bytes.extend_from_slice(b"reloaded");
    let tmp = home.plugin_dir().join(".local.wasm.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, home.plugin_dir().join("local.wasm")).unwrap();
    wait_for("local reloaded", Duration::from_secs(30), || {
        c.get("/metrics")
            .text()
            .contains("sandbox_host_plugin_events_total{event=\"reloaded\",plugin=\"local\"} 1")
    });
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "survived\n");
    assert_eq!(
        c.post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({ "command": "echo new" })
        )
        .json()["stdout"],
        "new\n"
    );
    c.delete(&format!("/v1/sandboxes/{id}"));
}

/// Resolves a `$ref` in the document, failing on a dangling one.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let path = r.strip_prefix("#/").expect("local ref");
                let mut cur = doc;
                for seg in path.split('/') {
                    cur = cur.get(seg).unwrap_or_else(|| panic!("dangling $ref {r}"));
                }
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[test]
fn openapi_validates_and_lists_every_route() {
    let home = ServeHome::new(&["local"], "");
    let serve = home.start();
    let c = serve.client(None);
    let doc = c.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    check_refs(&doc, &doc);
    let paths = doc["paths"].as_object().unwrap();
    let mut op_ids = std::collections::BTreeSet::new();
    let id = c.create("local", json!({}));
    let mut count = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            count += 1;
            assert!(
                ["get", "post", "put", "delete"].contains(&method.as_str()),
                "{method}"
            );
            assert!(
                op_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId"
            );
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            // Every templated path parameter is declared.
            for seg in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            {
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == seg && p["in"] == "path"),
                    "{path}: {seg}"
                );
            }
            // And the server really has the route (not the fallback's no_route / 405).
            if path == "/v1/events" {
                continue; // a stream; covered elsewhere
            }
            let concrete = path
                .replace("{id}", &id)
                .replace("{name}", "local")
                .replace("{pid}", "nope")
                .replace("{port}", "8000");
            let r = c.request(&method.to_uppercase(), &concrete, Some(b"{}"), &[]);
            if r.status == 404 || r.status == 405 {
                let code = r.error_code();
                assert!(
                    code != "no_route" && code != "method_not_allowed",
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
    // The documented set is the routed set: spot-check routes the document must list.
    for (m, p) in [
        ("post", "/v1/sandboxes/{id}/exec"),
        ("get", "/v1/events"),
        ("get", "/metrics"),
        ("put", "/v1/sandboxes/{id}/files"),
        ("post", "/v1/sandboxes/{id}/processes/{pid}/kill"),
    ] {
        assert!(
            paths.get(p).and_then(|i| i.get(m)).is_some(),
            "{m} {p} missing"
        );
    }
    assert!(count >= 26, "{count} operations");
    c.delete(&format!("/v1/sandboxes/{id}"));
}

#[test]
fn idle_sandboxes_are_reaped() {
    let home = ServeHome::new(
        &["local"],
        "[serve]\nidle_timeout_secs = 2\nreap_interval_secs = 1\nidle_action = \"pause\"\n",
    );
    let serve = home.start();
    let c = serve.client(None);
    let idle = c.create("local", json!({}));
    let busy = c.create("local", json!({}));
    let started = Instant::now();
    let mut paused = false;
    while started.elapsed() < Duration::from_secs(15) && !paused {
        // Keep one sandbox busy; the other nobody calls.
        c.post(
            &format!("/v1/sandboxes/{busy}/exec"),
            &json!({ "command": "true" }),
        );
        let all = c.get("/v1/sandboxes").json();
        let state = |id: &str| {
            all["sandboxes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == json!(id))
                .unwrap()["state"]
                .clone()
        };
        paused = state(&idle) == "paused";
        if paused {
            assert_eq!(state(&busy), "running", "a busy sandbox was reaped");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(paused, "the idle sandbox was not paused");
    c.delete(&format!("/v1/sandboxes/{idle}"));
    c.delete(&format!("/v1/sandboxes/{busy}"));
}

#[test]
fn python_client_against_a_real_server() {
    let py = sandbox_tests::workspace().join(".venv/bin/python");
    let has_httpx = py.exists()
        && std::process::Command::new(&py)
            .args(["-c", "import httpx, pytest"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_httpx {
        eprintln!("\n*** SKIPPED: .venv with httpx and pytest is missing (`make venv`); the Python client was not tested ***\n");
        return;
    }
    let home = ServeHome::new(&["local"], &tokens_config(""));
    let serve = home.start();
    let out = std::process::Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(sandbox_tests::workspace().join("clients/python"))
        .env("SANDBOX_HOST_URL", &serve.url)
        .env("SANDBOX_HOST_TOKEN", TA)
        .env("SANDBOX_HOST_OTHER_TOKEN", TB)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
}

/// The Postgres store keeps the `SessionStore` contract exactly as SQLite does (the registry's
/// own unit test, replayed), and migrating twice (a second replica starting) is harmless.
#[test]
fn postgres_store_keeps_the_session_store_contract() {
    use sandbox_host::registry::{now_ms, SessionRecord, SessionStore};
    use sandbox_host::registry_pg::PostgresStore;
    let Some(pg) = Postgres::start() else { return };
    let rec = |provider: &str, id: &str, labels: &[(&str, &str)]| SessionRecord {
        provider: provider.into(),
        sandbox_id: id.into(),
        name: Some("n".into()),
        token: Some("t0".into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workdir: "/w".into(),
        image: None,
        state: "running".into(),
        owner: Some("a".into()),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
    };
    let url = pg.url.clone();
    // The store blocks on its connection threads: drive it from a plain thread.
    std::thread::spawn(move || {
        let db = PostgresStore::connect(&url).unwrap();
        let db2 = PostgresStore::connect(&url).unwrap();
        db.put(&rec("local", "a", &[("team", "x"), ("k", "v")]))
            .unwrap();
        db.put(&rec("e2b", "a", &[])).unwrap();
        db.set_token("local", "a", "t1").unwrap();
        db.set_state("local", "a", "paused", "first").unwrap();
        db.set_state("local", "a", "running", "second").unwrap();
        let got = db2.get("local", "a").unwrap().unwrap();
        assert_eq!(got.token.as_deref(), Some("t1"));
        assert_eq!(got.state, "running");
        assert_eq!(got.owner.as_deref(), Some("a"));
        assert_eq!(got.labels.len(), 2);
        let h = db2.history("local", "a").unwrap();
        assert_eq!(
            h.iter().map(|c| c.detail.as_str()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert_eq!(db2.find("a").unwrap().len(), 2);
        let team = std::collections::BTreeMap::from([("team".to_string(), "x".to_string())]);
        assert_eq!(db2.list(None, &team).unwrap().len(), 1);
        let wrong = std::collections::BTreeMap::from([("team".to_string(), "y".to_string())]);
        assert!(db2.list(None, &wrong).unwrap().is_empty());
        assert_eq!(db2.list(Some("e2b"), &Default::default()).unwrap().len(), 1);
        // put replaces.
        let mut r = rec("local", "a", &[]);
        r.state = "stopped".into();
        db.put(&r).unwrap();
        assert_eq!(db2.get("local", "a").unwrap().unwrap().state, "stopped");
        db.remove("local", "a").unwrap();
        assert!(db2.get("local", "a").unwrap().is_none());
        assert!(db2.history("local", "a").unwrap().is_empty());
    })
    .join()
    .unwrap();
}
