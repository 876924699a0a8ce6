//! The `e2b` provider plugin end to end: sandbox-host → e2b.wasm → the E2B emulator
//! (in-process, real bubblewrap through localbox) on a loopback port. Needs
//! `target/plugins/e2b.wasm` (`make plugins`).
//!
//! - the conformance suite passes;
//! - errors map to the contract (unknown sandbox, bad key, envd's Connect codes);
//! - faults (429 + Retry-After, 5xx, dropped connections) are absorbed by the host's retries
//!   within their budget, a create is never duplicated, and non-idempotent calls surface typed.

use std::time::{Duration, Instant};

use emulator_e2b::Emulator;
use sandbox_host::types::{Capabilities, ExecRequest, Spec};
use sandbox_host::ProviderError;
use sandbox_tests::conformance::assert_conformance;
use sandbox_tests::emulator_support::InProcessEmulator;
use sandbox_tests::{host_with, provider_error, TestHost};

/// The E2B emulator in-process (see [`InProcessEmulator`]), with its state.
struct E2bEmulator {
    inner: InProcessEmulator,
    emu: Emulator,
}

impl std::ops::Deref for E2bEmulator {
    type Target = InProcessEmulator;
    fn deref(&self) -> &InProcessEmulator {
        &self.inner
    }
}

impl E2bEmulator {
    async fn start() -> E2bEmulator {
        let mut emu = None;
        let inner = InProcessEmulator::start(|opts| {
            let e = Emulator::new(opts);
            emu = Some(e.clone());
            emulator_e2b::router_with(e)
        })
        .await;
        E2bEmulator {
            inner,
            emu: emu.expect("the router was built"),
        }
    }

    /// `[plugins.e2b]` pointing at this emulator, with `key` as the API key.
    fn config(&self, key: &str) -> String {
        let url = &self.url;
        format!(
            "[plugins.e2b]\nsettings.api-url = \"{url}\"\nsettings.sandbox-url = \"{url}\"\n\
             settings.home = \"/workspace\"\nsecrets.api-key = \"{key}\"\n"
        )
    }

    async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

async fn host(emu: &E2bEmulator) -> TestHost {
    host_with(&["e2b"], &emu.config("e2b_test_key")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_plugin_passes_the_conformance_suite() {
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();
    let report = assert_conformance(&provider).await;
    assert!(
        report.skipped.is_empty(),
        "e2b declares every capability the suite checks: {:?}",
        report.skipped
    );
    assert!(
        emu.emu.sandboxes().is_empty(),
        "the suite left sandboxes behind"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_declares_what_e2b_does() {
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let info = t.host.provider("e2b").unwrap().info().unwrap();
    assert_eq!(
        (info.name.as_str(), info.contract_version.as_str()),
        ("e2b", "0.1.0")
    );
    assert!(info.capabilities.contains(
        Capabilities::IDEMPOTENT_CREATE | Capabilities::PAUSE_RESUME | Capabilities::STDIN
    ));
    let cred = &info.credentials[0];
    assert_eq!(
        (
            cred.secret.as_str(),
            cred.header.as_str(),
            cred.format.as_str()
        ),
        ("api-key", "x-api-key", "{}")
    );
    assert!(
        cred.hosts
            .iter()
            .all(|h| !h.contains('*') || h.contains("127.0.0.1") || h.contains("localhost")),
        "{:?}",
        cred.hosts
    );
    let checks = t.host.provider("e2b").unwrap().preflight().await.unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_the_contract() {
    let emu = E2bEmulator::start().await;

    // No API key reaches the emulator: unauthorized, and preflight says so.
    let t = host_with(
        &["e2b"],
        &emu.config("").replace("secrets.api-key = \"\"\n", ""),
    )
    .await;
    let provider = t.host.provider("e2b").unwrap();
    assert!(matches!(
        provider_error(provider.create(Spec::default()).await),
        ProviderError::Unauthorized(_)
    ));
    let checks = provider.preflight().await.unwrap();
    assert!(
        checks.iter().any(|c| c.name == "api-key" && !c.ok),
        "{checks:?}"
    );

    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();
    assert!(matches!(
        provider_error(provider.attach("nosuchsandbox000000").await),
        ProviderError::NotFound(_)
    ));

    // Names ride in metadata: found again, and a live name is taken.
    let spec = Spec {
        name: Some("e2b-named".into()),
        labels: vec![("team".into(), "blue".into())],
        ..Spec::default()
    };
    let sandbox = provider.create(spec.clone()).await.unwrap();
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.name.as_deref(), Some("e2b-named"));
    assert_eq!(info.labels, vec![("team".to_string(), "blue".to_string())]);
    assert!(matches!(
        provider_error(provider.create(spec).await),
        ProviderError::Conflict(_)
    ));
    let bad = Spec {
        options: vec![("gpu".into(), "1".into())],
        ..Spec::default()
    };
    assert!(matches!(
        provider_error(provider.create(bad).await),
        ProviderError::InvalidArgument(_)
    ));

    // Attaching by id alone (no token): the plugin fetches envd's token from the API.
    let attached = t.host.sandbox(sandbox.id(), None).unwrap();
    let out = attached
        .exec(ExecRequest::shell("echo attached"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"attached\n");

    // envd's Connect codes: a missing file, a missing process, an unsupported signal.
    assert!(matches!(
        provider_error(sandbox.read_file("missing.txt").await),
        ProviderError::NotFound(_)
    ));
    assert!(matches!(
        provider_error(sandbox.process_status("sbh-0000").await),
        ProviderError::NotFound(_)
    ));
    assert!(matches!(
        provider_error(sandbox.signal_process("sbh-0000", 2).await),
        ProviderError::Unsupported(_)
    ));

    // A paused sandbox's envd answers 502: unavailable ("not running").
    sandbox.pause().await.unwrap();
    sandbox.pause().await.unwrap(); // already paused: still fine
    match provider_error(sandbox.exec(ExecRequest::shell("true"), None).await) {
        ProviderError::Unavailable(m) => {
            assert!(m.contains("not running") || m.contains("paused"), "{m}")
        }
        other => panic!("exec in a paused sandbox: {other:?}"),
    }
    sandbox.resume().await.unwrap();
    sandbox.destroy().await.unwrap();
    assert!(matches!(
        provider_error(provider.attach(sandbox.id()).await),
        ProviderError::NotFound(_)
    ));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_really_expire() {
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();
    let sandbox = provider
        .create(Spec {
            timeout_secs: Some(1),
            ..Spec::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !emu.emu.sandboxes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandbox outlived its 1 s timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(
        provider_error(provider.attach(sandbox.id()).await),
        ProviderError::NotFound(_)
    ));
    emu.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_5xx_are_retried_within_budget() {
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();

    // create: a 429 with Retry-After 1, then a 503: retried with the same Idempotency-Key.
    emu.fault("status:429,retry_after=1,count=1,path=/v2/sandboxes,method=POST");
    emu.fault("status:503,count=1,path=/v2/sandboxes,method=POST");
    let started = Instant::now();
    let sandbox = provider.create(Spec::default()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was not honoured: {:?}",
        started.elapsed()
    );
    assert!(emu.faults.list().is_empty(), "both faults were hit");
    assert_eq!(emu.emu.creates(), 1);

    // Idempotent calls through envd and the control plane ride out 502/503/429 too.
    emu.fault("status:502,count=2,path=/files");
    sandbox
        .write_file("f.txt", b"data".to_vec(), None)
        .await
        .unwrap();
    emu.fault("status:429,retry_after=0,count=1,path=/filesystem.Filesystem/Stat");
    assert_eq!(sandbox.stat("f.txt").await.unwrap().size, 4);
    emu.fault("status:503,count=2,path=/sandboxes/");
    assert_eq!(sandbox.info().await.unwrap().id, sandbox.id());
    assert!(emu.faults.list().is_empty());

    // Past the budget (4 attempts), the typed error surfaces.
    emu.fault("status:503,count=10,path=/sandboxes/");
    assert!(matches!(
        provider_error(sandbox.info().await),
        ProviderError::Unavailable(_)
    ));
    emu.faults.set(vec![]);

    // exec is not idempotent: one 503 surfaces as unavailable, and nothing ran.
    emu.fault("status:503,count=1,path=/process.Process/Start");
    assert!(matches!(
        provider_error(
            sandbox
                .exec(ExecRequest::shell("echo ran >> ran.txt"), None)
                .await
        ),
        ProviderError::Unavailable(_)
    ));
    assert!(matches!(
        provider_error(sandbox.read_file("ran.txt").await),
        ProviderError::NotFound(_)
    ));
    // A 429 on exec surfaces as rate-limited with its Retry-After.
    emu.fault("status:429,retry_after=3,count=1,path=/process.Process/Start");
    match provider_error(sandbox.exec(ExecRequest::shell("true"), None).await) {
        ProviderError::RateLimited(r) => assert_eq!(r.retry_after_ms, Some(3000)),
        other => panic!("{other:?}"),
    }
    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_never_duplicate_a_create() {
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();

    // The create happens on the emulator but its answer is cut mid-body: the host retries with
    // the same key and gets the same sandbox back.
    emu.fault("drop:10,count=2,path=/v2/sandboxes,method=POST");
    let sandbox = provider
        .create(Spec {
            labels: vec![("fault".into(), "drop".into())],
            ..Spec::default()
        })
        .await
        .unwrap();
    assert!(emu.faults.list().is_empty(), "both drops were hit");
    assert_eq!(
        emu.emu.creates(),
        1,
        "a retried create made a second sandbox"
    );
    let live = emu.emu.sandboxes();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, sandbox.id());

    // Idempotent reads ride out dropped bodies.
    sandbox
        .write_file("big.bin", vec![7u8; 1 << 20], None)
        .await
        .unwrap();
    emu.fault("drop:1000,count=2,path=/files,method=GET");
    assert_eq!(
        sandbox.read_file("big.bin").await.unwrap(),
        vec![7u8; 1 << 20]
    );
    emu.fault("drop:5,count=1,path=/v2/sandboxes,method=GET");
    let listed = provider
        .list(
            &[("fault".to_string(), "drop".to_string())]
                .into_iter()
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [sandbox.id()]
    );

    // An exec whose stream is cut surfaces as unavailable (not retried: it may have run).
    emu.fault("drop:20,count=1,path=/process.Process/Start");
    assert!(matches!(
        provider_error(
            sandbox
                .exec(ExecRequest::shell("echo once >> once.txt"), None)
                .await
        ),
        ProviderError::Unavailable(_)
    ));
    let out = sandbox
        .exec(ExecRequest::shell("cat once.txt"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"once\n", "the cut exec ran exactly once");

    sandbox.destroy().await.unwrap();
    assert_eq!(emu.emu.creates(), 1);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_without_faults_counts_one_per_call() {
    // The counter the fault tests rely on counts real creates (so it can show a duplicate).
    let emu = E2bEmulator::start().await;
    let t = host(&emu).await;
    let provider = t.host.provider("e2b").unwrap();
    let a = provider.create(Spec::default()).await.unwrap();
    let b = provider.create(Spec::default()).await.unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(emu.emu.creates(), 2);
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
    emu.shutdown().await;
}
