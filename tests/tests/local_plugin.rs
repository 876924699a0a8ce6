//! The `local` provider plugin end to end: sandbox-host → local.wasm → localbox (in-process,
//! real bubblewrap) on a loopback port. Needs `make plugins` (target/plugins/local.wasm).

use sandbox_host::types::{Capabilities, ExecRequest, Spec};
use sandbox_host::ProviderError;
use sandbox_tests::conformance::assert_conformance;
use sandbox_tests::localbox_support::{local_plugin_config, LocalboxServer};
use sandbox_tests::{host_with, provider_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_plugin_passes_the_conformance_suite() {
    let lb = LocalboxServer::start().await;
    let t = host_with(&["local"], &lb.config_toml()).await;
    let provider = t.host.provider("local").unwrap();
    let report = assert_conformance(&provider).await;
    assert!(
        report.skipped.is_empty(),
        "local declares every capability the suite checks: {:?}",
        report.skipped
    );
    assert!(
        lb.engine.list(&Default::default()).is_empty(),
        "the suite left sandboxes behind"
    );
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_declares_what_localbox_does() {
    let lb = LocalboxServer::start().await;
    let t = host_with(&["local"], &lb.config_toml()).await;
    let info = t.host.provider("local").unwrap().info().unwrap();
    assert_eq!(info.name, "local");
    assert_eq!(info.contract_version, "0.1.0");
    assert_eq!(
        info.capabilities,
        Capabilities::PAUSE_RESUME
            | Capabilities::STREAMING
            | Capabilities::STDIN
            | Capabilities::BACKGROUND
            | Capabilities::PORTS
            | Capabilities::SET_TIMEOUT
            | Capabilities::LIST_BY_LABELS
            | Capabilities::FILES
    );
    assert!(!info.capabilities.contains(Capabilities::IDEMPOTENT_CREATE));
    assert_eq!(info.settings.len(), 1);
    assert_eq!(info.settings[0].name, "localbox-url");
    assert!(info.settings[0].required);
    assert_eq!(info.credentials.len(), 1);
    let cred = &info.credentials[0];
    assert_eq!(
        (
            cred.secret.as_str(),
            cred.header.as_str(),
            cred.format.as_str()
        ),
        ("localbox-token", "authorization", "Bearer {}")
    );
    assert_eq!(cred.hosts, ["http://127.0.0.1:*", "http://localhost:*"]);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_checks_reachability_and_token() {
    let lb = LocalboxServer::start().await;

    let t = host_with(&["local"], &lb.config_toml()).await;
    let checks = t.host.provider("local").unwrap().preflight().await.unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    assert_eq!(
        checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["localbox-url", "localbox", "localbox-token"]
    );

    // A wrong token: preflight says so, and calls fail as unauthorized.
    let t = host_with(&["local"], &local_plugin_config(&lb.url(), "wrong-token")).await;
    let provider = t.host.provider("local").unwrap();
    let checks = provider.preflight().await.unwrap();
    let token = checks.iter().find(|c| c.name == "localbox-token").unwrap();
    assert!(
        !token.ok && token.detail.contains("unauthorized"),
        "{token:?}"
    );
    assert!(matches!(
        provider_error(provider.create(Spec::default()).await),
        ProviderError::Unauthorized(_)
    ));

    // Nothing listening: unreachable, and calls fail as unavailable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = host_with(
        &["local"],
        &local_plugin_config(&format!("http://127.0.0.1:{port}"), &lb.token),
    )
    .await;
    let provider = t.host.provider("local").unwrap();
    let checks = provider.preflight().await.unwrap();
    let reach = checks.iter().find(|c| c.name == "localbox").unwrap();
    assert!(!reach.ok, "{checks:?}");
    let e = provider_error(provider.list(&Default::default()).await);
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localbox_errors_map_to_the_contract() {
    let lb = LocalboxServer::start().await;
    let t = host_with(&["local"], &lb.config_toml()).await;
    let provider = t.host.provider("local").unwrap();

    // Unknown sandbox → not-found.
    assert!(matches!(
        provider_error(provider.attach("no-such-sandbox").await),
        ProviderError::NotFound(_)
    ));

    // A live name taken → conflict.
    let name = format!("dup-{}", sandbox_tests::localbox_support::random_hex(4));
    let spec = Spec {
        name: Some(name.clone()),
        image: Some("ignored:latest".into()),
        ..Spec::default()
    };
    let sandbox = provider.create(spec.clone()).await.unwrap();
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.name.as_deref(), Some(name.as_str()));
    assert_eq!(info.image.as_deref(), Some("ignored:latest"));
    assert!(info.token.is_none());
    assert!(matches!(
        provider_error(provider.create(spec).await),
        ProviderError::Conflict(_)
    ));

    // Bad arguments → invalid-argument.
    let bad = Spec {
        workdir: Some("relative/dir".into()),
        ..Spec::default()
    };
    assert!(matches!(
        provider_error(provider.create(bad).await),
        ProviderError::InvalidArgument(_)
    ));
    let bad = Spec {
        options: vec![("gpu".into(), "1".into())],
        ..Spec::default()
    };
    assert!(matches!(
        provider_error(provider.create(bad).await),
        ProviderError::InvalidArgument(_)
    ));
    assert!(matches!(
        provider_error(
            sandbox
                .exec(ExecRequest::argv(Vec::<String>::new()), None)
                .await
        ),
        ProviderError::InvalidArgument(_)
    ));
    assert!(matches!(
        provider_error(sandbox.read_file("../../etc/passwd").await),
        ProviderError::InvalidArgument(_) | ProviderError::Forbidden(_)
    ));

    // Exec in a paused sandbox → conflict; a missing process → not-found.
    sandbox.pause().await.unwrap();
    assert!(matches!(
        provider_error(sandbox.exec(ExecRequest::shell("true"), None).await),
        ProviderError::Conflict(_)
    ));
    sandbox.resume().await.unwrap();
    assert!(matches!(
        provider_error(sandbox.process_status("999999").await),
        ProviderError::NotFound(_)
    ));

    sandbox.destroy().await.unwrap();
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_workdir_timeout_and_set_timeout_reach_localbox() {
    let lb = LocalboxServer::start().await;
    let t = host_with(&["local"], &lb.config_toml()).await;
    let provider = t.host.provider("local").unwrap();
    let spec = Spec {
        workdir: Some("/workspace/project".into()),
        timeout_secs: Some(3600),
        ..Spec::default()
    };
    let sandbox = provider.create(spec).await.unwrap();
    let info = lb.engine.get(sandbox.id()).unwrap();
    assert_eq!(info.workdir, "/workspace/project");
    let expires = info.expires_at_ms.expect("timeout_secs forwarded");
    assert!(expires.abs_diff(info.created_at_ms + 3_600_000) < 5_000);
    let out = sandbox.exec(ExecRequest::shell("pwd"), None).await.unwrap();
    assert_eq!(out.stdout_tail, b"/workspace/project\n");

    sandbox.set_timeout(60).await.unwrap();
    let expires = lb.engine.get(sandbox.id()).unwrap().expires_at_ms.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        expires.abs_diff(now + 60_000) < 5_000,
        "expires {expires}, now {now}"
    );
    sandbox.destroy().await.unwrap();
    lb.shutdown().await;
}
