//! The `runloop` plugin end to end: sandbox-host → runloop.wasm → the Runloop emulator
//! (in-process, commands really run in localbox under bubblewrap) on a loopback port.
//! Needs target/plugins/runloop.wasm (`make plugins`).
//!
//! Besides the conformance suite: faults survived through the host with no duplicate devbox
//! (429 with retry-after-ms, 5xx and a dropped answer on create, a dropped SSE stream
//! mid-command, slow and 408 long polls).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator_common::FaultRule;
use sandbox_host::types::{Capabilities, ExecRequest, OutputStream, Spec};
use sandbox_host::{Provider, ProviderError};
use sandbox_tests::conformance::assert_conformance;
use sandbox_tests::emulator_support::InProcessEmulator;
use sandbox_tests::host_with;
use sandbox_tests::localbox_support::random_hex;

/// The Runloop emulator in-process (see [`InProcessEmulator`]).
struct Emulator(InProcessEmulator);

impl std::ops::Deref for Emulator {
    type Target = InProcessEmulator;
    fn deref(&self) -> &InProcessEmulator {
        &self.0
    }
}

impl Emulator {
    async fn start() -> Emulator {
        Emulator(InProcessEmulator::start(emulator_runloop::router).await)
    }

    /// The `[plugins.runloop]` section pointing at this emulator.
    fn config(&self) -> String {
        format!(
            "[plugins.runloop]\nsettings.base-url = \"{}\"\nsettings.workdir = \"/workspace\"\nsettings.tunnel-url = \"{{base}}/tunnel/{{key}}/{{port}}\"\nsecrets.api-key = \"test-key\"\n",
            self.url
        )
    }

    /// The runloop-specific 429 switch (`retry-after-ms`).
    async fn rate_limit(&self, count: u32, retry_after_ms: u64, path: &str) {
        let body =
            serde_json::json!({ "count": count, "retry_after_ms": retry_after_ms, "path": path });
        let status = self.admin("/_emulator/runloop/rate_limit", &body).await;
        assert_eq!(status, 204);
    }

    async fn stop(self) {
        self.0.shutdown().await;
    }
}

async fn get(url: &str) -> String {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .request(http::Request::get(url).body(Empty::new()).unwrap())
        .await
        .unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// Devboxes carrying `label=value`, through the plugin.
async fn with_label(provider: &Provider, value: &str) -> Vec<String> {
    let labels = BTreeMap::from([("test".to_string(), value.to_string())]);
    provider
        .list(&labels)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn labelled(value: &str) -> Spec {
    Spec {
        labels: vec![("test".into(), value.into())],
        ..Spec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runloop_plugin_passes_the_conformance_suite() {
    let emu = Emulator::start().await;
    let t = host_with(&["runloop"], &emu.config()).await;
    let provider = t.host.provider("runloop").unwrap();
    let report = assert_conformance(&provider).await;
    assert_eq!(report.skipped, Vec::<String>::new());
    assert!(
        emu.engine.list(&Default::default()).is_empty(),
        "the suite left devboxes running"
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_preflight_and_auth() {
    let emu = Emulator::start().await;
    let t = host_with(&["runloop"], &emu.config()).await;
    let provider = t.host.provider("runloop").unwrap();
    let info = provider.info().unwrap();
    assert_eq!(
        (info.name.as_str(), info.contract_version.as_str()),
        ("runloop", "0.1.0")
    );
    assert!(info
        .capabilities
        .contains(Capabilities::IDEMPOTENT_CREATE | Capabilities::STREAMING | Capabilities::PORTS));
    let cred = &info.credentials[0];
    assert_eq!(
        (
            cred.secret.as_str(),
            cred.header.as_str(),
            cred.format.as_str()
        ),
        ("api-key", "authorization", "Bearer {}")
    );
    let checks = provider.preflight().await.unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");

    // Without the key, the emulator refuses (401 → unauthorized) and preflight says so.
    let config = emu.config().replace("secrets.api-key = \"test-key\"\n", "");
    let t = host_with(&["runloop"], &config).await;
    let provider = t.host.provider("runloop").unwrap();
    let checks = provider.preflight().await.unwrap();
    assert!(
        checks
            .iter()
            .any(|c| !c.ok && c.detail.contains("unauthorized")),
        "{checks:?}"
    );
    match provider.create(Spec::default()).await {
        Err(e) => assert!(
            matches!(e.provider_error(), Some(ProviderError::Unauthorized(_))),
            "{e}"
        ),
        Ok(s) => panic!("created {} without a key", s.id()),
    }
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_survives_429_5xx_drops_and_slow_waits_without_duplicates() {
    let emu = Emulator::start().await;
    let t = host_with(&["runloop"], &emu.config()).await;
    let provider = t.host.provider("runloop").unwrap();

    // 429 twice with retry-after-ms 300: honoured (not the 1 s+ backoff), one devbox.
    let run = random_hex(4);
    emu.rate_limit(2, 300, "/v1/devboxes").await;
    let started = Instant::now();
    let a = provider.create(labelled(&run)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "retry-after-ms not waited: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "create took {took:?}");
    assert_eq!(with_label(&provider, &run).await, [a.id().to_string()]);
    a.destroy().await.unwrap();

    // 503 twice, then an answer cut off after the devbox was made: retried with the same
    // x-request-id, and the emulator answers the first devbox.
    let run = random_hex(4);
    emu.fault("status:503,count=2,path=/v1/devboxes,method=POST");
    emu.fault("drop:0,count=1,path=/v1/devboxes,method=POST");
    let b = provider.create(labelled(&run)).await.unwrap();
    assert_eq!(
        with_label(&provider, &run).await,
        [b.id().to_string()],
        "a retried create made a second devbox"
    );
    assert_eq!(emu.engine.list(&Default::default()).len(), 1);

    // Slow and 408 long polls: the plugin asks again.
    let run = random_hex(4);
    emu.fault("latency:1500,count=1,path=/v1/devboxes/,method=POST");
    emu.faults.push(FaultRule {
        kind: emulator_common::FaultKind::Status {
            status: 408,
            retry_after: None,
        },
        path: Some("/v1/devboxes/".into()),
        method: Some("POST".into()),
        count: Some(2),
    });
    let c = provider.create(labelled(&run)).await.unwrap();
    assert_eq!(
        c.info().await.unwrap().state,
        sandbox_host::types::SandboxState::Running
    );
    assert_eq!(with_label(&provider, &run).await, [c.id().to_string()]);
    b.destroy().await.unwrap();
    c.destroy().await.unwrap();
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_output_stream_resumes_at_the_right_offset() {
    let emu = Emulator::start().await;
    let t = host_with(&["runloop"], &emu.config()).await;
    let provider = t.host.provider("runloop").unwrap();
    let sandbox = provider.create(Spec::default()).await.unwrap();
    // The first two stdout streams break after 3 frames each, while the command runs.
    let status = emu
        .admin(
            "/_emulator/runloop/cut_streams",
            &serde_json::json!({ "count": 2, "after_frames": 3 }),
        )
        .await;
    assert_eq!(status, 204);
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = chunks.clone();
    let result = sandbox
        .exec(
            // 1.8 s: past the 1 s `execute` holds, so the rest is streamed (and cut).
            ExecRequest::shell("for i in $(seq 1 60); do echo line-$i; sleep 0.03; done"),
            Some(Box::new(move |s, b: &[u8]| {
                if s == OutputStream::Stdout {
                    sink.lock().unwrap().extend_from_slice(b)
                }
            })),
        )
        .await
        .unwrap();
    assert_eq!(result.exit_code, 0);
    let expected: String = (1..=60).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&chunks.lock().unwrap()),
        expected,
        "streamed output lost or repeated lines"
    );
    assert_eq!(String::from_utf8_lossy(&result.stdout_tail), expected);
    assert_eq!(
        get(&format!("{}/_emulator/runloop/cut_streams", emu.url)).await,
        "null",
        "the cuts were not exercised"
    );
    sandbox.destroy().await.unwrap();
    emu.stop().await;
}

/// `exec` starts with `execute` (one request for a quick command): a start whose answer is
/// cut off is retried without running the command twice; the emulator keys commands by their
/// UUIDv7 `command_id`, as the API does; `exec-hold-seconds` chooses between that one request
/// and streaming from the first byte, and a bad value is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_starts_are_idempotent_and_the_hold_is_a_setting() {
    let emu = Emulator::start().await;
    let t = host_with(&["runloop"], &emu.config()).await;
    let provider = t.host.provider("runloop").unwrap();
    let sandbox = provider.create(Spec::default()).await.unwrap();
    let id = sandbox.id().to_string();

    // The first answer to `execute` is cut after the command started: the retry finds it.
    emu.fault(&format!(
        "drop:0,count=1,path=/v1/devboxes/{id}/execute,method=POST"
    ));
    let r = sandbox
        .exec(
            ExecRequest::shell("echo run >> /workspace/runs; wc -l < /workspace/runs"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout_tail).trim(),
        "1",
        "a retried start ran the command again"
    );
    assert!(emu.faults.list().is_empty(), "the cut was not exercised");

    // The same command_id under two request ids: one execution, one run.
    let auth = [("authorization", "Bearer test-key")];
    let path = format!("/v1/devboxes/{id}/execute");
    let body = serde_json::json!({
        "command": "echo x >> /workspace/by-id",
        "command_id": "01923456-789a-7012-b456-789abcdef012",
    });
    let (s1, a) = emu
        .post(&path, &[auth[0], ("x-request-id", "one")], &body)
        .await;
    let (s2, b) = emu
        .post(&path, &[auth[0], ("x-request-id", "two")], &body)
        .await;
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    let eid =
        |v: &str| serde_json::from_str::<serde_json::Value>(v).unwrap()["execution_id"].clone();
    assert_eq!(eid(&a), eid(&b));
    let lines = sandbox
        .exec(ExecRequest::shell("wc -l < /workspace/by-id"), None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&lines.stdout_tail).trim(), "1");
    let bad = serde_json::json!({ "command": "true", "command_id": "not-a-uuid" });
    assert_eq!(emu.post(&path, &auth, &bad).await.0, 400);

    // Hold 0: `first` streams at once; the default 1 s hold delivers it about a second in.
    let held = first_output_lead(&provider, &id).await;
    let t0 = host_with(
        &["runloop"],
        &format!("{}settings.exec-hold-seconds = \"0\"\n", emu.config()),
    )
    .await;
    let live = first_output_lead(&t0.host.provider("runloop").unwrap(), &id).await;
    assert!(
        live >= Duration::from_millis(1500) && held < Duration::from_millis(1500),
        "output before the end: {live:?} with hold 0, {held:?} with the default hold"
    );

    let tbad = host_with(
        &["runloop"],
        &format!("{}settings.exec-hold-seconds = \"soon\"\n", emu.config()),
    )
    .await;
    let err = tbad
        .host
        .provider("runloop")
        .unwrap()
        .attach(sandbox.id())
        .await
        .unwrap()
        .exec(ExecRequest::shell("true"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.provider_error(),
            Some(ProviderError::InvalidArgument(_))
        ) && err.to_string().contains("exec-hold-seconds"),
        "{err:?}"
    );
    sandbox.destroy().await.unwrap();
    emu.stop().await;
}

/// How long before the end of a 2 s command its first output arrived.
async fn first_output_lead(provider: &Provider, id: &str) -> Duration {
    let sandbox = provider.attach(id).await.unwrap();
    let first = Arc::new(Mutex::new(None));
    let seen = first.clone();
    let started = Instant::now();
    sandbox
        .exec(
            ExecRequest::shell("printf first; sleep 2; printf second"),
            Some(Box::new(move |_, _: &[u8]| {
                seen.lock().unwrap().get_or_insert(started.elapsed());
            })),
        )
        .await
        .unwrap();
    let first = first.lock().unwrap().expect("no output streamed");
    started.elapsed() - first
}
