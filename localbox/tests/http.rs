//! HTTP API tests: a real server on 127.0.0.1 driving real sandboxes.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use localbox::{Server, ServerConfig};
use serde_json::{json, Value};

const TOKEN: &str = "test-token";

struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        Self::start_with(ServerConfig::new(TOKEN)).await
    }

    async fn start_with(config: ServerConfig) -> Api {
        let (engine, dir) = common::engine();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(localbox::serve(listener, Server::new(engine, config)));
        Api {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap()
    }

    async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let resp = self.send(method, path, body, Some(TOKEN)).await;
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let (status, body) = self.raw(method, path, bytes).await;
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, v)
    }

    async fn create(&self, body: Value) -> String {
        let (s, v) = self.json(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Runs an exec and returns (stdout, stderr, final line).
    async fn exec(&self, id: &str, body: Value) -> (Vec<u8>, Vec<u8>, Value) {
        let (s, raw) = self
            .raw(
                Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&raw));
        let (mut out, mut err, mut last) = (Vec::new(), Vec::new(), Value::Null);
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            assert!(last.is_null(), "nothing may follow the exit line");
            if let Some(s) = v["stdout"].as_str() {
                out.extend(B64.decode(s).unwrap());
            } else if let Some(s) = v["stderr"].as_str() {
                err.extend(B64.decode(s).unwrap());
            } else {
                last = v;
            }
        }
        (out, err, last)
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_auth() {
    let api = Api::start().await;
    let resp = api.send(Method::GET, "/v1/health", vec![], None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    for token in [None, Some("wrong"), Some("")] {
        let resp = api.send(Method::GET, "/v1/sandboxes", vec![], token).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(error_code(&v), "unauthorized");
    }
    let resp = api
        .send(Method::POST, "/v1/sandboxes", b"{}".to_vec(), None)
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "no sandbox without a token"
    );
    let (s, v) = api.json(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"sandboxes": []})));
    let (s, v) = api.json(Method::GET, "/v1/nope", None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle() {
    let api = Api::start().await;
    let (s, v) = api
        .json(Method::POST, "/v1/sandboxes", Some(json!({"name": "web", "image": "python:3", "labels": {"k": "v"}, "env": {"X": "1"}})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            &v["name"],
            &v["state"],
            &v["workdir"],
            &v["labels"],
            &v["image"],
            &v["expires_at_ms"]
        ),
        (
            &json!("web"),
            &json!("running"),
            &json!("/workspace"),
            &json!({"k": "v"}),
            &json!("python:3"),
            &Value::Null
        )
    );
    assert!(v["created_at_ms"].as_u64().unwrap() > 0);
    let (s, v) = api
        .json(Method::POST, "/v1/sandboxes", Some(json!({"name": "web"})))
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (s, v) = api
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"workdir": "/etc"})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, raw) = api
        .raw(Method::POST, "/v1/sandboxes", b"{not json".to_vec())
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let other = api.create(json!({"labels": {"k": "w"}})).await;

    let (_, v) = api.json(Method::GET, "/v1/sandboxes?label=k=v", None).await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1);
    assert_eq!(v["sandboxes"][0]["id"], json!(id));
    let (_, v) = api
        .json(Method::GET, "/v1/sandboxes?label=k%3Dw&label=x=y", None)
        .await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 0);
    let (_, v) = api.json(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 2);
    let (s, v) = api
        .json(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!((s, &v["name"]), (StatusCode::OK, &json!("web")));

    let (s, v) = api
        .json(Method::POST, &format!("/v1/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!((s, &v["state"]), (StatusCode::OK, &json!("paused")));
    let (s, v) = api
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"argv": ["true"]})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (_, v) = api
        .json(Method::POST, &format!("/v1/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(v["state"], json!("running"));
    let (_, v) = api
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/timeout"),
            Some(json!({"seconds": 600})),
        )
        .await;
    assert!(v["expires_at_ms"].as_u64().unwrap() > v["created_at_ms"].as_u64().unwrap() + 500_000);

    let (s, v) = api
        .json(Method::GET, &format!("/v1/sandboxes/{id}/ports/8080"), None)
        .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"url": "http://127.0.0.1:8080"}))
    );
    let (s, _) = api
        .json(Method::GET, &format!("/v1/sandboxes/{id}/ports/0"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, _) = api
        .raw(Method::DELETE, &format!("/v1/sandboxes/{id}"), vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api
        .json(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = api
        .raw(Method::DELETE, &format!("/v1/sandboxes/{other}"), vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_ndjson() {
    let api = Api::start().await;
    let id = api.create(json!({"env": {"GREETING": "hi"}})).await;

    // Output arrives while the command still runs.
    let body = json!({"shell": "echo $GREETING; sleep 1.5; echo late >&2; exit 4"});
    let start = Instant::now();
    let resp = api
        .send(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            serde_json::to_vec(&body).unwrap(),
            Some(TOKEN),
        )
        .await;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "first line after {:?}",
        start.elapsed()
    );
    let first: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(
        B64.decode(first["stdout"].as_str().unwrap()).unwrap(),
        b"hi\n"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    let lines: Vec<Value> = rest
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(
        B64.decode(lines[0]["stderr"].as_str().unwrap()).unwrap(),
        b"late\n"
    );
    assert_eq!(
        lines.last().unwrap(),
        &json!({"exit_code": 4, "timed_out": false})
    );

    let (out, err, last) = api
        .exec(
            &id,
            json!({"argv": ["cat"], "stdin_b64": B64.encode(b"from stdin")}),
        )
        .await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), last),
        (
            b"from stdin".as_slice(),
            b"".as_slice(),
            json!({"exit_code": 0, "timed_out": false})
        )
    );
    let (_, _, last) = api
        .exec(&id, json!({"shell": "sleep 20", "timeout_ms": 300}))
        .await;
    assert_eq!(last, json!({"exit_code": 124, "timed_out": true}));
    let (_, _, last) = api
        .exec(&id, json!({"argv": ["definitely-not-installed"]}))
        .await;
    assert_eq!(last["exit_code"], json!(127));
    let (out, _, _) = api
        .exec(
            &id,
            json!({"shell": "pwd; echo $V", "cwd": "/tmp", "env": {"V": "set"}}),
        )
        .await;
    assert_eq!(out, b"/tmp\nset\n");

    let (s, v) = api
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"argv": ["a"], "shell": "b"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, v) = api
        .json(
            Method::POST,
            "/v1/sandboxes/nope/exec",
            Some(json!({"argv": ["true"]})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_http() {
    let api = Api::start().await;
    let id = api.create(json!({})).await;
    let f = |q: &str| format!("/v1/sandboxes/{id}/files{q}");

    let data: Vec<u8> = (0..10 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (s, _) = api
        .raw(
            Method::PUT,
            &f("?path=/workspace/big.bin&mode=384"),
            data.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, back) = api.raw(Method::GET, &f("?path=big.bin"), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(back == data, "10 MiB round trip differs");
    let (_, st) = api
        .json(Method::GET, &f("/stat?path=/workspace/big.bin"), None)
        .await;
    assert_eq!(
        (&st["kind"], &st["size"], &st["mode"], &st["name"]),
        (
            &json!("file"),
            &json!(10 << 20),
            &json!(384),
            &json!("big.bin")
        )
    );
    assert!(st["modified_ms"].as_u64().unwrap() > 0);

    let (s, _) = api
        .raw(Method::POST, &f("/mkdir?path=a/b&parents=true"), vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .raw(Method::PUT, &f("?path=a/b/t.txt"), b"text".to_vec())
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api
        .json(Method::GET, &f("/list?path=/workspace"), None)
        .await;
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "big.bin"]);
    assert_eq!(v["entries"][0]["kind"], json!("directory"));
    let (s, v) = api.json(Method::DELETE, &f("?path=a"), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (s, _) = api
        .raw(Method::DELETE, &f("?path=a&recursive=true"), vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    for (method, q) in [
        (Method::GET, "?path=/etc/passwd"),
        (Method::GET, "?path=../../etc/passwd"),
        (Method::PUT, "?path=/etc/x"),
    ] {
        let (s, v) = api.json(method, &f(q), None).await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{q}"
        );
    }
    let (s, v) = api.json(Method::GET, &f("?path=missing"), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = api.json(Method::GET, &f(""), None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_server_is_reachable_on_loopback() {
    let api = Api::start().await;
    let id = api.create(json!({})).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (s, _) = api
        .raw(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=index.html"),
            b"served from the sandbox".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, p) = api
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes"),
            Some(json!({"argv": ["python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(
        (&p["running"], &p["exit_code"]),
        (&json!(true), &Value::Null)
    );
    let pid = p["pid"].as_str().unwrap().to_string();
    let (_, list) = api
        .json(Method::GET, &format!("/v1/sandboxes/{id}/processes"), None)
        .await;
    assert_eq!(list["processes"][0]["pid"], json!(pid));

    let (_, v) = api
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/ports/{port}"),
            None,
        )
        .await;
    let url = format!("{}/index.html", v["url"].as_str().unwrap());
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let page = common::eventually(Duration::from_secs(10), "sandboxed server", || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let resp = client.get(url.parse().unwrap()).await.ok()?;
            Some(resp.into_body().collect().await.ok()?.to_bytes())
        }
    })
    .await;
    assert_eq!(&page[..], b"served from the sandbox");

    // The server logged the request on stderr; poll it by offset.
    let out_path = format!("/v1/sandboxes/{id}/processes/{pid}/output");
    let logged = common::eventually(Duration::from_secs(5), "access log", || async {
        let (_, o) = api
            .json(
                Method::GET,
                &format!("{out_path}?stdout_offset=0&stderr_offset=0"),
                None,
            )
            .await;
        let err = B64.decode(o["stderr_b64"].as_str().unwrap()).unwrap();
        String::from_utf8_lossy(&err)
            .contains("GET /index.html")
            .then_some(o)
    })
    .await;
    let next = logged["stderr_next"].as_u64().unwrap();
    let (_, o) = api
        .json(
            Method::GET,
            &format!("{out_path}?stderr_offset={next}"),
            None,
        )
        .await;
    assert_eq!(
        (&o["stderr_b64"], &o["stderr_next"], &o["running"]),
        (&json!(""), &json!(next), &json!(true))
    );

    let (s, _) = api
        .raw(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes/{pid}/signal"),
            br#"{"signal": 9}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let done = common::eventually(Duration::from_secs(5), "server killed", || async {
        let (_, p) = api
            .json(
                Method::GET,
                &format!("/v1/sandboxes/{id}/processes/{pid}"),
                None,
            )
            .await;
        (p["running"] == json!(false)).then_some(p)
    })
    .await;
    assert_eq!(done["exit_code"], json!(137));
    let (s, _) = api
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/77"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_reports_idleness() {
    let (engine, _dir) = common::engine();
    let server = Server::new(engine.clone(), ServerConfig::new(TOKEN));
    let a = server.activity();
    assert_eq!((a.live_sandboxes, a.running_processes), (0, 0));
    assert!(!a.idle_for(Duration::from_secs(3600)));
    let info = engine.create(Default::default()).await.unwrap();
    let p = engine
        .start_process(&info.id, localbox::ExecRequest::argv(["sleep", "30"]))
        .await
        .unwrap();
    let a = server.activity();
    assert_eq!((a.live_sandboxes, a.running_processes), (1, 1));
    assert!(!a.idle_for(Duration::ZERO));
    engine.signal_process(&info.id, &p.pid, 9).unwrap();
    engine.destroy(&info.id).await.unwrap();
    assert!(server.activity().idle_for(Duration::ZERO));
    tokio::time::timeout(Duration::from_secs(3), engine.wait_idle(Duration::ZERO))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_body_limit_is_enforced() {
    let api = Api::start_with(ServerConfig {
        max_write_bytes: 1024,
        ..ServerConfig::new(TOKEN)
    })
    .await;
    let id = api.create(json!({})).await;
    let (s, _) = api
        .raw(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=ok"),
            vec![1; 1024],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = api
        .raw(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=big"),
            vec![1; 1025],
        )
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, v) = api
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files/stat?path=big"),
            None,
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}
