//! Hostile plugins: each attack runs while a well-behaved plugin (`example`) keeps answering,
//! and each must end in the typed error for the limit it broke.

use sandbox_host::types::{ExecRequest, ExecResult, Spec};
use sandbox_host::{Error, PluginFault, ProviderError};
use sandbox_tests::example_server::{self, ExampleServer};
use sandbox_tests::servers::TestServer;
use sandbox_tests::{host_with, hostile_sandbox, TestHost};

const SECRET: &str = "s3cret-value-the-plugin-must-never-see";

struct Fixture {
    t: TestHost,
    upstream: TestServer,
    _example: ExampleServer,
}

async fn fixture() -> Fixture {
    let upstream = TestServer::start().await;
    let example = example_server::start().await;
    let config = format!(
        r#"
        [plugins.hostile]
        allow = ["http://127.0.0.1:{port}"]
        secrets.api-key = "{SECRET}"
        limits = {{ memory_mb = 64, cpu_ms = 300, call_timeout_secs = 2, response_mb = 1 }}

        [plugins.example]
        settings.base-url = "{example_url}"
        secrets.api-key = "{example_key}"
        "#,
        port = upstream.addr.port(),
        example_url = example.url(),
        example_key = example.api_key(),
    );
    let t = host_with(&["hostile", "example"], &config).await;
    Fixture {
        t,
        upstream,
        _example: example,
    }
}

/// Runs the attack while calling the well-behaved plugin in a loop. Returns the attack's
/// result and how many well-behaved calls completed while it ran (each must succeed).
async fn under_attack(f: &Fixture, argv: &[&str]) -> (Result<ExecResult, Error>, usize) {
    let hostile =
        f.t.host
            .provider("hostile")
            .unwrap()
            .create(Spec::default())
            .await
            .unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let attack = tokio::spawn(async move { hostile.exec(ExecRequest::argv(argv), None).await });
    let example = f.t.host.provider("example").unwrap();
    let mut answered = 0;
    while !attack.is_finished() {
        example
            .preflight()
            .await
            .expect("the well-behaved plugin must keep answering during an attack");
        answered += 1;
    }
    let result = attack.await.unwrap();
    // The attacker itself is served again right after: every call gets a fresh instance.
    let again =
        f.t.host
            .sandbox("h1", Some("hostile"))
            .unwrap()
            .exec(ExecRequest::argv(["ok"]), None)
            .await
            .unwrap();
    assert_eq!(again.stdout_tail, b"ok");
    (result, answered)
}

/// Waits (at most 10 s) until `ok` holds.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn fault(r: &Result<ExecResult, Error>) -> &PluginFault {
    match r {
        Err(Error::Plugin { fault, .. }) => fault,
        other => panic!("expected a plugin fault, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_loop_is_stopped_by_the_cpu_budget() {
    let f = fixture().await;
    let (r, answered) = under_attack(&f, &["spin"]).await;
    assert!(matches!(fault(&r), PluginFault::CpuBudget(_)), "{r:?}");
    assert!(
        answered >= 1,
        "no well-behaved call completed during the spin"
    );
}

/// An idle host's epoch ticker sleeps instead of waking a hundred times a second; the next
/// call wakes it, so a spin loop after a quiet spell is still stopped by the CPU budget (were
/// it not woken, the spin would run into the 2 s call timeout instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_budget_holds_after_the_epoch_ticker_slept() {
    let f = fixture().await;
    let hostile = f.t.host.provider("hostile").unwrap();
    let sandbox = hostile.create(Spec::default()).await.unwrap();
    let plugin = f.t.host.plugins().into_iter().next().unwrap();
    let before = plugin.epoch_ticker_parks();
    let quiet = std::time::Instant::now();
    while plugin.epoch_ticker_parks() == before {
        assert!(
            quiet.elapsed() < std::time::Duration::from_secs(10),
            "the ticker never went to sleep on an idle host"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Bounded here too: with the epoch stalled, neither the budget nor the call timeout (which
    // needs the spinning call to yield) would ever end it.
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sandbox.exec(ExecRequest::argv(["spin"]), None),
    )
    .await
    .expect("the spin was never stopped: the epoch ticker did not wake up");
    assert!(matches!(fault(&r), PluginFault::CpuBudget(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_stopped_by_the_memory_limit() {
    let f = fixture().await;
    let (r, _) = under_attack(&f, &["alloc", "1024"]).await;
    assert!(
        matches!(fault(&r), PluginFault::MemoryLimit(m) if *m == 64 << 20),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_contained() {
    let f = fixture().await;
    let (r, _) = under_attack(&f, &["trap"]).await;
    assert!(matches!(fault(&r), PluginFault::Trap(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_returns_hits_the_wall_clock_timeout() {
    let f = fixture().await;
    let (r, answered) = under_attack(&f, &["hang"]).await;
    assert!(
        matches!(fault(&r), PluginFault::Timeout(d) if d.as_secs() == 2),
        "{r:?}"
    );
    assert!(answered >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_outside_the_grant_is_denied_before_connecting() {
    let f = fixture().await;
    let outside = TestServer::start().await;
    let (r, _) = under_attack(&f, &["egress", &outside.url("/ok")]).await;
    match r {
        Err(Error::Provider {
            error: ProviderError::Forbidden(m),
            ..
        }) => assert!(m.contains("not allowed"), "{m}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert_eq!(
        outside.accepts(),
        0,
        "a denied request must not open a connection"
    );
    // The granted host is reachable.
    let (r, _) = under_attack(&f, &["egress", &f.upstream.url("/ok")]).await;
    assert_eq!(r.unwrap().stdout_tail, b"200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_grants_do_not_reach_loopback() {
    let target = TestServer::start().await;
    let (_t, sandbox) =
        hostile_sandbox("[plugins.hostile]\nallow = [\"http://*:*\", \"https://*\"]\n").await;
    for url in [
        target.url("/ok"),
        format!("http://localhost:{}/ok", target.addr.port()),
        "http://169.254.169.254/latest".into(),
    ] {
        let r = sandbox
            .exec(ExecRequest::argv(["egress", url.as_str()]), None)
            .await;
        assert!(
            matches!(
                r,
                Err(Error::Provider {
                    error: ProviderError::Forbidden(_),
                    ..
                })
            ),
            "{url}: {r:?}"
        );
    }
    assert_eq!(target.accepts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_secret_reaches_upstream_but_never_the_plugin() {
    let f = fixture().await;
    let (r, _) = under_attack(&f, &["steal", &f.upstream.url("/ok")]).await;
    let seen = String::from_utf8(r.unwrap().stdout_tail).unwrap();
    assert!(seen.contains("status: 200"), "{seen}");
    assert!(
        !seen.contains(SECRET),
        "the plugin observed the secret:\n{seen}"
    );
    // The upstream got the host's value, not the plugin's forged header.
    let auth: Vec<String> = f
        .upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .collect();
    assert!(!auth.is_empty());
    assert!(
        auth.iter().all(|a| a == &format!("Bearer {SECRET}")),
        "{auth:?}"
    );
}

/// Requests a plugin lets go of (`send_detached`) are finished by the host after the call,
/// under the same policy (allowlist, bound secret, the detach header stripped), and at most
/// `DETACHED_PER_PLUGIN` at once: a flood of them cannot pile up tasks in the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_requests_finish_after_the_call_under_policy_and_a_cap() {
    use sandbox_host::outbound::{DETACHED_PER_PLUGIN, DETACH_HEADER};
    let f = fixture().await;
    let (r, _) = under_attack(&f, &["detach", "3", &f.upstream.url("/ok")]).await;
    assert_eq!(r.unwrap().stdout_tail, b"let go of 3");
    // What a process about to exit waits for (the CLI does).
    assert!(f.t.host.settle(std::time::Duration::from_secs(5)).await);
    assert_eq!(
        f.upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/ok")
            .count(),
        3,
        "settle returned before the detached requests were answered"
    );
    eventually("the detached requests never arrived", || {
        f.upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/ok")
            .count()
            == 3
    })
    .await;
    for seen in f.upstream.requests() {
        assert!(
            !seen.headers.contains_key(DETACH_HEADER),
            "{:?}",
            seen.headers
        );
        assert_eq!(
            seen.headers.get("authorization").unwrap(),
            &format!("Bearer {SECRET}")
        );
    }

    // Past the cap, the rest stay tied to their dropped handles: only the cap's worth arrive
    // (these never get an answer, so they keep their permits).
    let flood = (DETACHED_PER_PLUGIN + 40).to_string();
    let (r, answered) = under_attack(&f, &["detach", &flood, &f.upstream.url("/hang")]).await;
    r.unwrap();
    assert!(answered >= 1);
    eventually("the capped detached requests never arrived", || {
        f.upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/hang")
            .count()
            >= DETACHED_PER_PLUGIN
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let hung = f
        .upstream
        .requests()
        .iter()
        .filter(|r| r.path == "/hang")
        .count();
    assert_eq!(
        hung, DETACHED_PER_PLUGIN,
        "more detached requests ran than the cap"
    );
    assert!(
        !f.t.host.settle(std::time::Duration::from_millis(200)).await,
        "settle claimed requests that never get an answer had finished"
    );

    // A host outside the grant is still denied: nothing connects.
    let other = TestServer::start().await;
    let (r, _) = under_attack(&f, &["detach", "2", &other.url("/ok")]).await;
    r.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        other.accepts(),
        0,
        "a detached request reached a host not granted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_may_set_authorization_where_no_secret_is_bound() {
    let bound = TestServer::start().await;
    let other = TestServer::start().await;
    let config = format!(
        r#"
        [plugins.hostile]
        allow = ["http://127.0.0.1:{a}", "http://127.0.0.1:{b}"]
        secrets.api-key = {{ env = "SANDBOX_HOST_TEST_SECRET_UNUSED", default = "{SECRET}", hosts = ["http://127.0.0.1:{a}"] }}
        "#,
        a = bound.addr.port(),
        b = other.addr.port()
    );
    let (_t, sandbox) = hostile_sandbox(&config).await;
    for server in [&bound, &other] {
        sandbox
            .exec(ExecRequest::argv(["steal", &server.url("/ok")]), None)
            .await
            .unwrap();
    }
    let auth = |s: &TestServer| {
        s.requests()
            .iter()
            .filter_map(|r| r.headers.get("authorization").cloned())
            .collect::<Vec<_>>()
    };
    assert!(
        auth(&bound)
            .iter()
            .all(|a| a == &format!("Bearer {SECRET}")),
        "{:?}",
        auth(&bound)
    );
    assert!(
        auth(&other).contains(&"Bearer stolen".to_string()),
        "{:?}",
        auth(&other)
    );
    assert!(!auth(&other).iter().any(|a| a.contains(SECRET)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_response_is_capped() {
    let f = fixture().await;
    let (r, answered) = under_attack(&f, &["huge", &f.upstream.url("/huge?mb=32")]).await;
    match r {
        Err(Error::Provider { error, .. }) => {
            let text = sandbox_host::describe_provider_error(&error);
            assert!(text.contains("size") || text.contains("limit"), "{text}");
            assert!(!text.contains("read 33554432"), "{text}");
        }
        other => panic!("expected the body to be cut, got {other:?}"),
    }
    assert!(answered >= 1);
}

/// A plugin whose `describe` computes forever, dropped into the watched directory of a running
/// host: the load is refused for its CPU budget (1 s at load) while the other plugins answer
/// throughout, and it never becomes a provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_that_never_returns_is_refused_at_load() {
    use sandbox_host::plugins::PluginEvent;
    let f = fixture().await;
    let mut events = f.t.host.plugin_events();
    let dir = f.t.home.path().join("plugins");
    std::fs::copy(
        sandbox_tests::plugin_file("hostile_load"),
        dir.join("hostile_load.wasm"),
    )
    .unwrap();
    let example = f.t.host.provider("example").unwrap();
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let error = loop {
        tokio::select! {
            event = events.recv() => match event.unwrap() {
                PluginEvent::Failed { path, error } if path.ends_with("hostile_load.wasm") => {
                    break error
                }
                _ => {}
            },
            r = example.preflight() => {
                r.expect("the well-behaved plugin must keep answering during the load");
                answered += 1;
            }
            _ = tokio::time::sleep_until(deadline) => panic!("no load failure reported"),
        }
    };
    assert!(error.contains("CPU budget"), "{error}");
    assert!(answered > 0, "no call was served while the plugin loaded");
    assert!(f.t.host.provider("hostile_load").is_err());
    assert!(f
        .t
        .host
        .plugins()
        .iter()
        .all(|p| p.info.name != "hostile_load"));
}

/// A caller that gives up on a call (drops its future) ends it: the plugin's only call slot is
/// free again at once, not when the hung call would have hit its one-minute timeout. Run from a
/// multi-thread runtime, so the call was on the host's call thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_caller_drops_is_ended_and_frees_its_slot() {
    use std::time::Duration;
    let config = "[plugins.hostile]\nlimits = { call_timeout_secs = 60, max_concurrent = 1 }\n";
    let (_t, sandbox) = hostile_sandbox(config).await;
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        sandbox.exec(ExecRequest::argv(["hang"]), None),
    )
    .await;
    assert!(hung.is_err(), "the hang attack returned: {hung:?}");
    let next = tokio::time::timeout(
        Duration::from_secs(20),
        sandbox.exec(ExecRequest::argv(["ok"]), None),
    )
    .await
    .expect("the slot of the dropped call was never freed")
    .unwrap();
    assert_eq!(next.stdout_tail, b"ok");
}
