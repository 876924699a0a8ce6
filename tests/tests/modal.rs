//! The `modal` provider plugin end to end: sandbox-host → modal.wasm (gRPC over wasi:http,
//! HTTP/2 with trailers) → the Modal emulator (in-process, one h2c port for the control plane
//! and the task command router, commands really running in localbox under bubblewrap).
//! Needs `make plugins` (target/plugins/modal.wasm).
//!
//! - the conformance suite;
//! - preflight refusals before any network call (environment unset, `prod` not allowed) and a
//!   missing token;
//! - HTTP/2 only: without the operator's `h2c` entry the host would speak HTTP/1.1, which the
//!   emulator (like any gRPC server) refuses, so calls fail;
//! - faults: UNAVAILABLE and RESOURCE_EXHAUSTED retried, an output stream reset mid-output
//!   resumed by offset with no byte lost or repeated, latency.

use std::time::Instant;

use sandbox_host::types::{Capabilities, ExecRequest, Spec};
use sandbox_host::ProviderError;
use sandbox_tests::conformance::assert_conformance_with;
use sandbox_tests::emulator_support::InProcessEmulator;
use sandbox_tests::{host_with, provider_error};

/// The Modal emulator in-process (see [`InProcessEmulator`]), with its state for the gRPC
/// fault switches.
struct Emulator {
    inner: InProcessEmulator,
    state: std::sync::Arc<emulator_modal::state::Emu>,
}

impl std::ops::Deref for Emulator {
    type Target = InProcessEmulator;
    fn deref(&self) -> &InProcessEmulator {
        &self.inner
    }
}

impl Emulator {
    async fn start() -> Emulator {
        let mut state = None;
        let inner = InProcessEmulator::start(|opts| {
            let emu = std::sync::Arc::new(emulator_modal::state::Emu::new(opts.engine));
            state = Some(emu.clone());
            emulator_modal::router_with(emu)
        })
        .await;
        Emulator {
            inner,
            state: state.expect("the router was built"),
        }
    }

    /// The host configuration pointing the plugin at this emulator over h2c, with `extra` lines.
    fn config_with(&self, h2c: bool, extra: &str) -> String {
        let url = &self.url;
        // `h2c = []` also overrides the bundled preset's loopback entries.
        let h2c = if h2c {
            format!("h2c = [\"{url}\"]\n")
        } else {
            "h2c = []\n".to_string()
        };
        format!(
            "[plugins.modal]\nallow = [\"{url}\"]\n{h2c}settings.server-url = \"{url}\"\n\
             secrets.token-id = {{ env = \"SANDBOX_HOST_TEST_UNSET_MODAL_ID\", default = \"ak-test\", hosts = [\"{url}\"] }}\n\
             secrets.token-secret = {{ env = \"SANDBOX_HOST_TEST_UNSET_MODAL_SECRET\", default = \"as-test\", hosts = [\"{url}\"] }}\n{extra}"
        )
    }

    fn config(&self) -> String {
        self.config_with(true, "settings.environment = \"dev\"\n")
    }

    async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modal_plugin_passes_the_conformance_suite() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let provider = t.host.provider("modal").unwrap();
    // Modal exposes only ports declared at creation; unencrypted, for the suite's plain HTTP.
    let report = assert_conformance_with(&provider, |spec, port| {
        spec.ports.push(port);
        spec.options
            .push(("unencrypted-ports".into(), port.to_string()));
    })
    .await;
    // Modal has no pause/resume or timeout change.
    assert_eq!(
        report.skipped,
        ["set-timeout", "pause and resume"],
        "skipped"
    );
    assert_eq!(emu.live(), 0, "the suite left sandboxes behind");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_binds_the_token_pair_to_the_control_plane() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let info = t.host.provider("modal").unwrap().info().unwrap();
    assert_eq!(info.name, "modal");
    assert!(info.capabilities.contains(
        Capabilities::STREAMING | Capabilities::STDIN | Capabilities::FILES | Capabilities::PORTS
    ));
    let creds: Vec<_> = info
        .credentials
        .iter()
        .map(|c| (c.secret.as_str(), c.header.as_str(), c.format.as_str()))
        .collect();
    assert_eq!(
        creds,
        [
            ("token-id", "x-modal-token-id", "{}"),
            ("token-secret", "x-modal-token-secret", "{}")
        ]
    );
    for c in &info.credentials {
        assert_eq!(c.hosts, ["https://api.modal.com", "https://api.modal2.com"]);
    }
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_before_any_network_call() {
    let emu = Emulator::start().await;
    // Every call would fail if it reached the emulator: prove none does.
    emu.fault("status:500");

    let t = host_with(&["modal"], &emu.config_with(true, "")).await;
    let provider = t.host.provider("modal").unwrap();
    let checks = provider.preflight().await.unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(
        !checks[0].ok && checks[0].name == "environment",
        "{checks:?}"
    );
    assert!(matches!(
        provider_error(provider.create(Spec::default()).await),
        ProviderError::InvalidArgument(_)
    ));

    let t = host_with(
        &["modal"],
        &emu.config_with(true, "settings.environment = \"prod\"\n"),
    )
    .await;
    let provider = t.host.provider("modal").unwrap();
    let checks = provider.preflight().await.unwrap();
    let prod = checks.iter().find(|c| c.name == "not-prod").unwrap();
    assert!(!prod.ok && prod.detail.contains("allow-prod"), "{checks:?}");
    assert_eq!(
        checks.len(),
        2,
        "no token probe after a refusal: {checks:?}"
    );
    let e = provider_error(provider.create(Spec::default()).await);
    assert!(
        matches!(&e, ProviderError::InvalidArgument(m) if m.contains("prod")),
        "{e:?}"
    );
    assert_eq!(emu.live(), 0);

    // Allowed explicitly: the checks pass and the token probe runs (and reaches the emulator).
    emu.faults.set(vec![]);
    let t = host_with(
        &["modal"],
        &emu.config_with(
            true,
            "settings.environment = \"prod\"\nsettings.allow-prod = \"true\"\n",
        ),
    )
    .await;
    let checks = t.host.provider("modal").unwrap().preflight().await.unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_unauthorized() {
    let emu = Emulator::start().await;
    let url = &emu.url;
    let config = format!("[plugins.modal]\nallow = [\"{url}\"]\nh2c = [\"{url}\"]\nsettings.server-url = \"{url}\"\nsettings.environment = \"dev\"\n");
    let t = host_with(&["modal"], &config).await;
    let provider = t.host.provider("modal").unwrap();
    let checks = provider.preflight().await.unwrap();
    let token = checks.iter().find(|c| c.name == "token").unwrap();
    assert!(!token.ok && token.detail.contains("token"), "{checks:?}");
    assert!(matches!(
        provider_error(provider.create(Spec::default()).await),
        ProviderError::Unauthorized(_)
    ));
    emu.shutdown().await;
}

/// A router on another host than the control plane (as Modal's workers are) is reached through
/// its own allowlist entry, and never sees the account token: the credential binding keeps
/// `x-modal-token-*` for the control plane. The same run with the router on the control plane's
/// own origin shows the emulator does see the token when it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_token_never_reaches_a_router_on_another_host() {
    use std::sync::atomic::Ordering::SeqCst;
    let emu = Emulator::start().await;
    let port = emu.url.rsplit(':').next().unwrap().to_string();
    let router = format!("http://localhost:{port}");
    // The router gets an allowlist entry (and h2c) of its own; the secrets stay bound to the
    // control plane's origin only.
    let both = format!("[\"{}\", \"{router}\"]", emu.url);
    let split = emu
        .config()
        .replace(
            &format!("allow = [\"{}\"]", emu.url),
            &format!("allow = {both}"),
        )
        .replace(
            &format!("h2c = [\"{}\"]", emu.url),
            &format!("h2c = {both}"),
        );
    assert!(split.contains(&router), "{split}");
    let run = |config: String| async move {
        let t = host_with(&["modal"], &config).await;
        let sandbox = t
            .host
            .provider("modal")
            .unwrap()
            .create(Spec::default())
            .await
            .unwrap();
        let r = sandbox
            .exec(ExecRequest::shell("printf routed"), None)
            .await
            .unwrap();
        assert_eq!(r.stdout_tail, b"routed");
        sandbox.destroy().await.unwrap();
    };

    // Same origin: the binding covers the router too, and the emulator notices the token.
    run(emu.config()).await;
    assert!(emu.state.router_calls_with_account_token.load(SeqCst) > 0);

    emu.state.router_calls_with_account_token.store(0, SeqCst);
    *emu.state.router_authority.lock().unwrap() = Some(format!("localhost:{port}"));
    run(split).await;
    assert_eq!(
        emu.state.router_calls_with_account_token.load(SeqCst),
        0,
        "the account token reached the router"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_is_never_used_for_grpc() {
    let emu = Emulator::start().await;
    // Without the h2c entry the host's plain-HTTP client speaks HTTP/1.1: the emulator refuses
    // it, so nothing works. With it (the other tests) everything does: HTTP/2 was used.
    let t = host_with(
        &["modal"],
        &emu.config_with(false, "settings.environment = \"dev\"\n"),
    )
    .await;
    let provider = t.host.provider("modal").unwrap();
    let e = provider_error(provider.create(Spec::default()).await);
    assert!(!matches!(e, ProviderError::Unauthorized(_)), "{e:?}");
    assert_eq!(emu.live(), 0);
    let t = host_with(&["modal"], &emu.config()).await;
    let sandbox = t
        .host
        .provider("modal")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

/// What each operation asks of the router: a shell command without stdin gets /dev/null from
/// its shell instead of a stdin write that closes the pipe, and the file helpers follow only
/// the output they use, their error report (stderr) read only after a failed exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_ask_the_router_only_what_they_use() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let provider = t.host.provider("modal").unwrap();
    let sandbox = provider.create(Spec::default()).await.unwrap();
    let calls = || {
        let mut calls: Vec<(String, u64)> =
            std::mem::take(&mut *emu.state.router_calls.lock().unwrap())
                .into_iter()
                .collect();
        calls.sort();
        calls
    };
    let expect = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(m, n)| (m.to_string(), *n)).collect()
    };
    calls();

    // A shell command that reads stdin sees its end at once, without the stdin write.
    let mut req = ExecRequest::shell("cat; echo done >&2");
    req.timeout_ms = Some(20_000);
    let r = sandbox.exec(req, None).await.unwrap();
    assert_eq!((r.exit_code, r.timed_out), (0, false));
    assert_eq!(r.stderr_tail, b"done\n");
    assert_eq!(
        calls(),
        expect(&[
            ("TaskExecStart", 1),
            ("TaskExecStdioRead", 2),
            ("TaskExecWait", 1)
        ]),
        "a shell exec without stdin"
    );
    // An argv has no shell to redirect for it: its stdin is closed by a write.
    let mut req = ExecRequest::argv(["cat"]);
    req.timeout_ms = Some(20_000);
    let r = sandbox.exec(req, None).await.unwrap();
    assert_eq!((r.exit_code, r.timed_out), (0, false));
    assert_eq!(
        calls(),
        expect(&[
            ("TaskExecStart", 1),
            ("TaskExecStdinWrite", 1),
            ("TaskExecStdioRead", 2),
            ("TaskExecWait", 1)
        ]),
        "an argv exec without stdin"
    );

    sandbox
        .write_file("/tmp/counted.bin", b"\x00\x01data".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        calls(),
        expect(&[
            ("TaskExecStart", 1),
            ("TaskExecStdinWrite", 1),
            ("TaskExecWait", 1)
        ]),
        "a file write"
    );
    assert_eq!(
        sandbox.read_file("/tmp/counted.bin").await.unwrap(),
        b"\x00\x01data"
    );
    assert_eq!(
        calls(),
        expect(&[
            ("TaskExecStart", 1),
            ("TaskExecStdioRead", 1),
            ("TaskExecWait", 1)
        ]),
        "a file read"
    );
    // A failure still carries fs-tools' own report, read from stderr after the exit.
    match provider_error(sandbox.read_file("/tmp/no-such-file").await) {
        ProviderError::NotFound(m) => assert!(m.contains("/tmp/no-such-file"), "{m}"),
        other => panic!("reading a missing file: {other:?}"),
    }
    // mkdir under a regular file: whatever kind fs-tools reports, it arrives as a provider error.
    provider_error(sandbox.mkdir("/tmp/counted.bin/sub", false).await);
    assert_eq!(
        calls(),
        expect(&[
            ("TaskExecStart", 2),
            ("TaskExecStdioRead", 3),
            ("TaskExecWait", 2)
        ]),
        "a failed read (stdout, then stderr) and a failed mkdir (stderr)"
    );
    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

/// Background processes beyond the conformance suite: an argv with stdin (its shell hands the
/// exec's stdin on to the command), a signal to a process that already ended, a pid this
/// plugin never gave out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_take_stdin_and_signals_after_the_end() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let provider = t.host.provider("modal").unwrap();
    let sandbox = provider.create(Spec::default()).await.unwrap();

    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = Some(b"to the background\n".to_vec());
    let p = sandbox.start_process(req).await.unwrap();
    assert_eq!(p.command, "cat");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let chunk = loop {
        let chunk = sandbox.process_output(&p.pid, 0, 0).await.unwrap();
        if !chunk.running || Instant::now() > deadline {
            break chunk;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((chunk.running, chunk.exit_code), (false, Some(0)));
    assert_eq!(chunk.stdout, b"to the background\n");
    assert_eq!(chunk.stdout_next, 18);
    let listed = sandbox.processes().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|l| l.pid == p.pid && l.command == "cat" && !l.running),
        "{listed:?}"
    );
    // Ended: a signal changes nothing and is no error.
    sandbox.signal_process(&p.pid, 15).await.unwrap();
    assert_eq!(
        sandbox.process_status(&p.pid).await.unwrap().exit_code,
        Some(0)
    );
    // Not a pid of ours: refused by name, no command run for it.
    provider_error(sandbox.process_status("../../etc/passwd").await);
    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_survived() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let provider = t.host.provider("modal").unwrap();

    // UNAVAILABLE (503) and RESOURCE_EXHAUSTED (429) on the control plane: retried; the create
    // happens once.
    emu.fault("status:503,count=2,path=/modal.client.ModalClient/AppGetOrCreate");
    emu.fault("status:429,count=1,path=/modal.client.ModalClient/SandboxCreateV2");
    let sandbox = provider
        .create(Spec {
            ports: vec![],
            ..Spec::default()
        })
        .await
        .unwrap();
    assert_eq!(emu.live(), 1);
    assert!(
        emu.faults.list().is_empty(),
        "faults not consumed: {:?}",
        emu.faults.list()
    );

    // The same as gRPC statuses (Trailers-Only), on the control plane and the router.
    emu.state.grpc_faults.lock().unwrap().extend([
        // A method this scenario never calls: its fault must be left over.
        grpc_fault("SandboxGetFromNameV2", 14, 1),
        grpc_fault("SandboxTagsGetV2", 14, 2),
        grpc_fault("SandboxWaitV2", 8, 1),
        grpc_fault("TaskExecWait", 14, 1),
    ]);
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.id, sandbox.id());
    assert_eq!(
        sandbox
            .exec(ExecRequest::shell("echo grpc"), None)
            .await
            .unwrap()
            .stdout_tail,
        b"grpc\n"
    );
    let left: Vec<_> = emu
        .state
        .grpc_faults
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.method.clone())
        .collect();
    assert_eq!(left, ["SandboxGetFromNameV2"], "gRPC faults not consumed");
    emu.state.grpc_faults.lock().unwrap().clear();

    // A stream reset in the middle of command output (mid-message, after bytes reached the
    // plugin): resumed from the byte offset, nothing lost or repeated.
    // Two bursts, so the stream carries at least two messages; reset inside the second.
    let script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); [ $i = 1000 ] && sleep 0.3; done; true";
    let expected: String = (0..2000).map(|i| format!("line-{i}\n")).collect();
    emu.state.output_resets.lock().unwrap().push(10_000);
    emu.state.stdio_offsets.lock().unwrap().clear();
    let streamed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = streamed.clone();
    let out = sandbox
        .exec(
            ExecRequest::shell(script),
            Some(Box::new(move |_, b: &[u8]| {
                sink.lock().unwrap().extend_from_slice(b)
            })),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(
        emu.state.output_resets.lock().unwrap().is_empty(),
        "the reset was not injected"
    );
    let offsets = emu.state.stdio_offsets.lock().unwrap().clone();
    assert!(
        offsets.iter().any(|o| *o > 0 && *o < 10_000),
        "no read resumed mid-output: {offsets:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&streamed.lock().unwrap()),
        expected,
        "bytes lost or repeated"
    );
    // The shared `drop` fault (connection cut after some bytes) on the same call.
    emu.fault(
        "drop:3000,count=1,path=/modal.task_command_router.TaskCommandRouter/TaskExecStdioRead",
    );
    let out = sandbox
        .exec(ExecRequest::shell(script), None)
        .await
        .unwrap();
    assert!(emu.faults.list().is_empty(), "the drop was not injected");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout_tail),
        expected,
        "bytes lost or repeated"
    );

    // Router UNAVAILABLE on start, and latency.
    emu.fault("status:503,count=1,path=/modal.task_command_router.TaskCommandRouter/TaskExecStart");
    emu.fault("latency:300,count=1,path=/modal.task_command_router.TaskCommandRouter/TaskExecWait");
    let started = Instant::now();
    let out = sandbox
        .exec(ExecRequest::shell("echo ok"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"ok\n");
    assert!(started.elapsed().as_millis() >= 300);

    sandbox.destroy().await.unwrap();
    assert_eq!(emu.live(), 0);
    emu.shutdown().await;
}

fn grpc_fault(method: &str, code: i32, count: u32) -> emulator_modal::state::GrpcFault {
    emulator_modal::state::GrpcFault {
        method: method.into(),
        code,
        message: String::new(),
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_jwt_is_refreshed_on_unauthenticated() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let sandbox = t
        .host
        .provider("modal")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    // Every router JWT handed out so far is now refused.
    emu.state
        .jwt_epoch
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out = sandbox
        .exec(ExecRequest::shell("echo refreshed"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"refreshed\n");
    // The fresh token was persisted: the next call needs no refresh (a refresh would now fail).
    emu.state
        .grpc_faults
        .lock()
        .unwrap()
        .push(grpc_fault("SandboxGetCommandRouterAccess", 13, 10));
    let out = sandbox
        .exec(ExecRequest::shell("echo again"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"again\n");
    emu.state.grpc_faults.lock().unwrap().clear();
    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_and_attach_by_id() {
    let emu = Emulator::start().await;
    let t = host_with(&["modal"], &emu.config()).await;
    let provider = t.host.provider("modal").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let eport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = Spec {
        ports: vec![port, eport],
        options: vec![("unencrypted-ports".into(), port.to_string())],
        labels: vec![("who".into(), "ports-test".into())],
        name: Some("named-box".into()),
        ..Spec::default()
    };
    let sandbox = provider.create(spec).await.unwrap();
    let endpoint = sandbox.port_url(port).await.unwrap();
    assert_eq!(endpoint.url, format!("http://127.0.0.1:{port}"));

    // The encrypted port: TLS with the emulator's test CA, through to a server in the sandbox.
    let endpoint = sandbox.port_url(eport).await.unwrap();
    let proxy: u16 = endpoint
        .url
        .strip_prefix("https://localhost:")
        .expect("an https URL")
        .parse()
        .unwrap();
    let lb_id = emu.state.sandbox(sandbox.id()).unwrap().lb_id;
    emu.engine
        .write_file(&lb_id, "/workspace/page.txt", b"over tls\n".to_vec(), None)
        .await
        .unwrap();
    emu.engine
        .start_process(
            &lb_id,
            localbox::ExecRequest::shell(format!(
                "exec python3 -m http.server {eport} --bind 127.0.0.1"
            )),
        )
        .await
        .unwrap();
    let ca = emu.state.tls.as_ref().unwrap().ca_der.clone();
    let mut body = Vec::new();
    for _ in 0..100 {
        match https_get(proxy, &ca, "/page.txt").await {
            Ok(b) if b.ends_with(b"over tls\n") => {
                body = b;
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(
        body.starts_with(b"HTTP/1.0 200"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(matches!(
        provider_error(sandbox.port_url(1).await),
        ProviderError::NotFound(_)
    ));

    // Attach by id alone (no token): the plugin fetches task id and router access.
    let attached = provider.attach(sandbox.id()).await.unwrap();
    let out = attached
        .exec(ExecRequest::shell("echo attached"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"attached\n");
    // Without stdin bytes, stdin is closed: `cat` ends at once.
    let out = attached
        .exec(ExecRequest::argv(["cat"]), None)
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.stdout_tail.len()), (0, 0));
    let info = attached.info().await.unwrap();
    assert!(info.labels.contains(&("who".into(), "ports-test".into())));

    // Attach by name.
    let by_name = provider.attach("named-box").await.unwrap();
    assert_eq!(by_name.id(), sandbox.id());
    let out = by_name
        .exec(ExecRequest::shell("echo by-name"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_tail, b"by-name\n");
    assert!(matches!(
        provider_error(provider.attach("no-such-name").await),
        ProviderError::NotFound(_)
    ));

    sandbox.destroy().await.unwrap();
    emu.shutdown().await;
}

/// GET `path` over TLS from 127.0.0.1:`port`, trusting only `ca_der` (for `localhost`).
async fn https_get(port: u16, ca_der: &[u8], path: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        connector.connect(name, tcp),
    )
    .await??;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(3), tls.read_to_end(&mut out)).await??;
    Ok(out)
}
