//! The `daytona` provider plugin end to end: sandbox-host → daytona.wasm → the Daytona emulator
//! (in-process, commands really run in localbox under bubblewrap) on a loopback port.
//! Needs `make plugins` (target/plugins/daytona.wasm).
//!
//! - the conformance suite;
//! - what `describe` declares;
//! - faults survived through the host with no duplicate sandbox: 429 with Retry-After and a
//!   5xx on create, a dropped connection after the sandbox was made, slow state transitions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandbox_host::types::{Capabilities, ExecRequest, SandboxState, Spec};
use sandbox_tests::conformance::assert_conformance;
use sandbox_tests::emulator_support::InProcessEmulator;
use sandbox_tests::host_with;

/// The Daytona emulator in-process (see [`InProcessEmulator`]).
struct Emulator(InProcessEmulator);

impl std::ops::Deref for Emulator {
    type Target = InProcessEmulator;
    fn deref(&self) -> &InProcessEmulator {
        &self.0
    }
}

impl Emulator {
    async fn start() -> Emulator {
        Emulator(InProcessEmulator::start(emulator_daytona::router).await)
    }

    /// The host configuration pointing the plugin at this emulator.
    fn config(&self) -> String {
        format!(
            "[plugins.daytona]\nsettings.api-url = \"{}/api\"\n\
             secrets.api-key = {{ env = \"SANDBOX_HOST_TEST_UNSET_DAYTONA_KEY\", default = \"test-key\", hosts = [\"http://127.0.0.1:*\"] }}\n",
            self.url
        )
    }

    /// Lifecycle transitions take `ms` (0: immediate).
    async fn transitions(&self, ms: u64) {
        let status = self
            .admin(
                "/_emulator/daytona/transitions",
                &serde_json::json!({ "ms": ms }),
            )
            .await;
        assert_eq!(status, 204);
    }

    async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

fn labelled(key: &str, value: &str) -> Spec {
    Spec {
        labels: vec![(key.into(), value.into())],
        ..Spec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daytona_plugin_passes_the_conformance_suite() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    let report = assert_conformance(&provider).await;
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    assert_eq!(emu.live(), 0, "the suite left sandboxes behind");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_declares_daytona() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let info = t.host.provider("daytona").unwrap().info().unwrap();
    assert_eq!(info.name, "daytona");
    assert!(info
        .capabilities
        .contains(Capabilities::IDEMPOTENT_CREATE | Capabilities::PAUSE_RESUME));
    let cred = &info.credentials[0];
    assert_eq!(
        (
            cred.secret.as_str(),
            cred.header.as_str(),
            cred.format.as_str()
        ),
        ("api-key", "authorization", "Bearer {}")
    );
    assert!(
        info.settings
            .iter()
            .any(|s| s.name == "api-url"
                && s.default.as_deref() == Some("https://app.daytona.io/api"))
    );
    let checks = t
        .host
        .provider("daytona")
        .unwrap()
        .preflight()
        .await
        .unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    emu.shutdown().await;
}

/// 429 with Retry-After on the create POST: the host waits and retries; one sandbox results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_survives_rate_limit_without_duplicates() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    emu.fault("status:429,retry_after=1,count=2,path=/api/sandbox,method=POST");
    let started = Instant::now();
    let sb = provider.create(labelled("fault", "429")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "Retry-After not honoured: {:?}",
        started.elapsed()
    );
    assert!(emu.faults.list().is_empty(), "both 429s were served");
    assert_eq!(emu.live(), 1);
    sb.destroy().await.unwrap();
    assert_eq!(emu.live(), 0);
    emu.shutdown().await;
}

/// 5xx answers (a 503 on the create POST, 500s while polling the state) are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_survives_server_errors() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    emu.transitions(300).await;
    emu.fault("status:503,count=1,path=/api/sandbox,method=POST");
    emu.fault("status:500,count=2,path=/api/sandbox/,method=GET");
    let sb = provider.create(labelled("fault", "5xx")).await.unwrap();
    assert!(
        emu.faults.list().is_empty(),
        "every fault was served: {:?}",
        emu.faults.list()
    );
    assert_eq!(emu.live(), 1);
    let out = sb
        .exec(ExecRequest::shell("printf ok"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"ok");
    // Idempotent calls ride out a 500 too.
    emu.fault("status:500,count=1,path=/api/sandbox/,method=GET");
    assert_eq!(sb.info().await.unwrap().state, SandboxState::Running);
    sb.destroy().await.unwrap();
    emu.shutdown().await;
}

/// The connection drops after the emulator made the sandbox: the retried create finds it by
/// its idempotency label instead of making a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_create_answer_makes_no_duplicate() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    emu.fault("drop:5,count=1,path=/api/sandbox,method=POST");
    let sb = provider.create(labelled("fault", "drop")).await.unwrap();
    assert!(emu.faults.list().is_empty(), "the drop was served");
    assert_eq!(emu.live(), 1, "a duplicate sandbox was created");
    let listed = provider
        .list(&BTreeMap::from([("fault".to_string(), "drop".to_string())]))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, sb.id());
    sb.destroy().await.unwrap();
    emu.shutdown().await;
}

/// Slow transitions (creating → started, stopping → stopped, destroying → gone) are waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_state_transitions_are_waited_for() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    emu.transitions(1200).await;
    let started = Instant::now();
    let sb = provider.create(labelled("fault", "slow")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "create returned before `started`"
    );
    assert_eq!(sb.info().await.unwrap().state, SandboxState::Running);
    sb.pause().await.unwrap();
    assert_eq!(sb.info().await.unwrap().state, SandboxState::Paused);
    let info = sb.resume().await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    let started = Instant::now();
    sb.destroy().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "destroy returned before the sandbox was gone"
    );
    assert!(provider.attach(sb.id()).await.is_err());
    emu.shutdown().await;
}

/// The synchronous exec's answer is lost (as when a proxy cuts a long request): the plugin
/// follows the command by polling its exit code and log instead, nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_survives_a_lost_synchronous_answer() {
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    let sb = provider.create(labelled("fault", "exec")).await.unwrap();
    // Only the exec POST has a path under `.../process/session/` (the session create has none).
    emu.fault(&format!(
        "drop:0,count=1,path=/toolbox/{}/process/session/,method=POST",
        sb.id()
    ));
    let r = sb
        .exec(
            ExecRequest::shell("echo one; sleep 0.2; echo two >&2; exit 4"),
            None,
        )
        .await
        .unwrap();
    assert!(emu.faults.list().is_empty(), "the drop was served");
    assert_eq!(
        (
            r.exit_code,
            r.stdout_tail.as_slice(),
            r.stderr_tail.as_slice()
        ),
        (4, &b"one\n"[..], &b"two\n"[..])
    );
    sb.destroy().await.unwrap();
    emu.shutdown().await;
}

/// An exec's session is deleted after its answer (off the caller's wait, as a request the
/// host finishes after the call): none is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sessions_are_deleted_after_the_answer() {
    use http_body_util::{BodyExt, Empty};
    let emu = Emulator::start().await;
    let t = host_with(&["daytona"], &emu.config()).await;
    let provider = t.host.provider("daytona").unwrap();
    let sb = provider.create(labelled("sessions", "gone")).await.unwrap();
    for i in 0..5 {
        let r = sb
            .exec(ExecRequest::shell(format!("echo {i}")), None)
            .await
            .unwrap();
        assert_eq!(r.stdout_tail, format!("{i}\n").into_bytes());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let url = format!("{}/toolbox/{}/process/session", emu.url, sb.id());
    let started = Instant::now();
    loop {
        let req = http::Request::get(&url)
            .header("authorization", "Bearer test-key")
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let sessions: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        if sessions.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sessions left behind: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sb.destroy().await.unwrap();
    emu.shutdown().await;
}
