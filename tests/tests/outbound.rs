//! Outbound HTTP through the host's hook: connection reuse, HTTP/2 with trailers over h2c, TLS
//! with a CA from the config (ALPN h2), Retry-After honoured by the host's retries, and the
//! registry surviving a host restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::{Error, HostBuilder, ProviderError};
use sandbox_tests::example_server;
use sandbox_tests::servers::TestServer;
use sandbox_tests::{host_with, hostile_sandbox, workspace};

fn text(r: Result<sandbox_host::types::ExecResult, Error>) -> String {
    String::from_utf8(r.unwrap().stdout_tail).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_across_calls() {
    let server = TestServer::start().await;
    let (_t, sandbox) = hostile_sandbox(&format!(
        "[plugins.hostile]\nallow = [\"http://127.0.0.1:{}\"]",
        server.addr.port()
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(
            text(
                sandbox
                    .exec(ExecRequest::argv(["egress", &server.url("/ok")]), None)
                    .await
            ),
            "200"
        );
    }
    assert_eq!(server.requests().len(), 20);
    assert_eq!(
        server.accepts(),
        1,
        "20 calls, each in a fresh instance, should share one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_reach_the_plugin_over_h2c() {
    let server = TestServer::start().await;
    let grant = format!("http://127.0.0.1:{}", server.addr.port());
    let (_t, sandbox) = hostile_sandbox(&format!(
        "[plugins.hostile]\nallow = [\"{grant}\"]\nh2c = [\"{grant}\"]"
    ))
    .await;
    let out = text(
        sandbox
            .exec(ExecRequest::argv(["trailers", &server.url("/grpc")]), None)
            .await,
    );
    assert!(out.contains("body 11 bytes"), "{out}");
    assert!(
        out.contains("grpc-status=0") && out.contains("grpc-message=ok"),
        "{out}"
    );
    assert_eq!(server.requests()[0].version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_configured_ca_negotiates_h2() {
    let server = TestServer::start_tls().await;
    let url = server.https_url("/ok");
    let grant = format!("https://localhost:{}", server.addr.port());
    let ca = server.ca_file.as_ref().unwrap().display().to_string();

    // Without the CA the certificate is refused.
    let (_t, sandbox) = hostile_sandbox(&format!("[plugins.hostile]\nallow = [\"{grant}\"]")).await;
    let err = sandbox
        .exec(ExecRequest::argv(["egress", &url]), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("tls") || err.to_string().contains("certificate"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 0);

    let (_t, sandbox) = hostile_sandbox(&format!(
        "[plugins.hostile]\nallow = [\"{grant}\"]\nca_files = [\"{ca}\"]"
    ))
    .await;
    assert_eq!(
        text(
            sandbox
                .exec(ExecRequest::argv(["egress", &url]), None)
                .await
        ),
        "200"
    );
    assert_eq!(
        server.requests()[0].version,
        http::Version::HTTP_2,
        "ALPN should pick h2"
    );
}

fn example_config(server: &example_server::ExampleServer) -> String {
    format!(
        "[plugins.example]\nsettings.base-url = \"{}\"\nsecrets.api-key = \"{}\"\n",
        server.url(),
        server.api_key()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_for_idempotent_calls_only() {
    let server = example_server::start().await;
    let t = host_with(&["example"], &example_config(&server)).await;
    let provider = t.host.provider("example").unwrap();

    server.fail_next(429, Some(1), 1);
    let started = Instant::now();
    provider
        .list(&BTreeMap::new())
        .await
        .expect("list is retried after the 429");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not waited for"
    );
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/sandboxes"))
            .count(),
        2
    );

    // exec is not idempotent: the 503 comes straight back.
    let sandbox = provider.create(Spec::default()).await.unwrap();
    server.fail_next(503, None, 1);
    let err = sandbox
        .exec(ExecRequest::shell("echo once"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.provider_error(), Some(ProviderError::Unavailable(_))),
        "{err}"
    );

    // create is retried with the same idempotency key when the plugin forwards it.
    server.clear_requests();
    server.fail_next(503, None, 1);
    provider.create(Spec::default()).await.unwrap();
    let keys: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_survives_a_host_restart_and_attach_registers_foreign_sandboxes() {
    let server = example_server::start().await;
    let t = host_with(&["example"], &example_config(&server)).await;
    let labels = Spec {
        labels: vec![("team".into(), "blue".into())],
        ..Spec::default()
    };
    let id = t
        .host
        .provider("example")
        .unwrap()
        .create(labels)
        .await
        .unwrap()
        .id()
        .to_string();
    let home = t.home.path().to_path_buf();
    let plugins = t.plugin_dir();
    drop(t.host);

    let config = sandbox_host::config::Config::from_toml(&example_config(&server), "test").unwrap();
    let build = || {
        HostBuilder::new()
            .home(&home)
            .plugins_dir(&plugins)
            .config(config.clone())
            .cache_dir(workspace().join("target/test-cache"))
            .hot_reload(false)
            .build()
    };
    let host = build().await.unwrap();
    let sandbox = host
        .sandbox(&id, None)
        .expect("the sandbox is still registered");
    assert_eq!(
        sandbox
            .exec(ExecRequest::shell("echo back"), None)
            .await
            .unwrap()
            .stdout_tail,
        b"back\n"
    );
    let team = BTreeMap::from([("team".to_string(), "blue".to_string())]);
    assert_eq!(host.registered(None, &team).unwrap().len(), 1);
    let history: Vec<String> = host
        .sessions()
        .history("example", &id)
        .unwrap()
        .into_iter()
        .map(|h| h.state)
        .collect();
    assert_eq!(history, ["running"]);

    // A sandbox created behind the host's back is attached by id.
    let foreign = {
        let provider = host.provider("example").unwrap();
        let created = provider.create(Spec::default()).await.unwrap();
        let fid = created.id().to_string();
        host.sessions().remove("example", &fid).unwrap();
        fid
    };
    assert!(matches!(
        host.sandbox(&foreign, None),
        Err(Error::UnknownSandbox(_))
    ));
    host.provider("example")
        .unwrap()
        .attach(&foreign)
        .await
        .unwrap();
    host.sandbox(&foreign, None)
        .unwrap()
        .destroy()
        .await
        .unwrap();
    assert!(host.sandbox(&foreign, None).is_err());
    drop(host);
    assert!(build().await.unwrap().sandbox(&foreign, None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_is_persisted_and_passed_back() {
    let (t, sandbox) = hostile_sandbox("").await;
    assert_eq!(
        text(sandbox.exec(ExecRequest::argv(["token"]), None).await),
        ""
    );
    assert_eq!(
        text(
            sandbox
                .exec(ExecRequest::argv(["refresh", "tok-2"]), None)
                .await
        ),
        "refreshed"
    );
    assert_eq!(sandbox.record().unwrap().token.as_deref(), Some("tok-2"));
    assert_eq!(
        text(sandbox.exec(ExecRequest::argv(["token"]), None).await),
        "tok-2"
    );
    drop(t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_reports_runtime_status_events() {
    use sandbox_host::RuntimeStatus;
    let t = host_with(&["hostile"], "").await;
    let mut events = t.host.status_events();
    let sandbox = t
        .host
        .provider("hostile")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    let mut seen = vec![];
    while let Ok(e) = events.try_recv() {
        seen.push((e.status, e.sandbox_id));
    }
    let id = Some(sandbox.id().to_string());
    assert_eq!(
        seen,
        [
            (RuntimeStatus::Starting, None),
            (RuntimeStatus::Started, id.clone()),
            (RuntimeStatus::Ready, id)
        ]
    );
}
