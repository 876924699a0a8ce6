//! Hot reload: a new version swaps in while calls are in flight, a corrupt file keeps the old
//! version serving, a removed file unloads.

use std::path::Path;
use std::time::Duration;

use sandbox_host::plugins::PluginEvent;
use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::Error;
use sandbox_tests::example_server;
use sandbox_tests::{host_with, plugin_file};
use tokio::sync::broadcast::Receiver;

/// Writes like an installer would: a temp file, then an atomic rename.
fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The same component with a custom section appended: valid, and a different sha256.
fn new_version(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"reload-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8); // LEB128, < 128
    out.extend(payload);
    out
}

async fn next_event(rx: &mut Receiver<PluginEvent>) -> PluginEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no plugin event within 20 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_atomically_keeps_old_on_corrupt_and_unloads_on_removal() {
    let server = example_server::start().await;
    let config = format!(
        "[plugins.example]\nsettings.base-url = \"{}\"\nsecrets.api-key = \"{}\"\n",
        server.url(),
        server.api_key()
    );
    let t = host_with(&["example"], &config).await;
    let dir = t.plugin_dir();
    let mut events = t.host.plugin_events();
    let original = std::fs::read(plugin_file("example")).unwrap();
    let sha_before = t.host.plugins()[0].sha256.clone();

    // A call in flight when the new version lands finishes on the version it started with.
    let sandbox = t
        .host
        .provider("example")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    let in_flight = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            sandbox
                .exec(ExecRequest::shell("sleep 1.5; echo finished"), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    install(&dir, "example.wasm", &new_version(&original, "v2"));
    match next_event(&mut events).await {
        PluginEvent::Reloaded { name, .. } => assert_eq!(name, "example"),
        other => panic!("expected a reload, got {other:?}"),
    }
    assert!(
        !in_flight.is_finished(),
        "the reload should land while the call is still running"
    );
    let result = in_flight.await.unwrap().unwrap();
    assert_eq!(result.stdout_tail, b"finished\n");
    let sha_v2 = t.host.plugins()[0].sha256.clone();
    assert_ne!(sha_v2, sha_before);
    // New calls use the new version.
    sandbox
        .exec(ExecRequest::shell("true"), None)
        .await
        .unwrap();

    // A corrupt file is refused and the previous version keeps serving.
    install(
        &dir,
        "example.wasm",
        b"\0asm\x0d\0\x01\0this is not a component",
    );
    match next_event(&mut events).await {
        PluginEvent::Failed { error, .. } => {
            assert!(error.contains("not a valid component"), "{error}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(t.host.plugins()[0].sha256, sha_v2);
    assert_eq!(
        sandbox
            .exec(ExecRequest::shell("echo still here"), None)
            .await
            .unwrap()
            .stdout_tail,
        b"still here\n"
    );

    // Removal unloads.
    std::fs::remove_file(dir.join("example.wasm")).unwrap();
    match next_event(&mut events).await {
        PluginEvent::Unloaded { name, .. } => assert_eq!(name, "example"),
        other => panic!("expected an unload, got {other:?}"),
    }
    assert!(matches!(
        t.host.provider("example"),
        Err(Error::UnknownProvider(_))
    ));

    // A new file is picked up without a restart.
    install(&dir, "example.wasm", &original);
    assert!(matches!(
        next_event(&mut events).await,
        PluginEvent::Loaded { .. }
    ));
    assert!(t.host.provider("example").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_with_one_name_is_a_load_error() {
    let t = host_with(&["hostile"], "").await;
    let mut events = t.host.plugin_events();
    install(
        &t.plugin_dir(),
        "hostile-copy.wasm",
        &new_version(&std::fs::read(plugin_file("hostile")).unwrap(), "copy"),
    );
    match next_event(&mut events).await {
        PluginEvent::Failed { error, .. } => {
            assert!(error.contains("already provided by"), "{error}")
        }
        other => panic!("expected a duplicate-name failure, got {other:?}"),
    }
    assert_eq!(t.host.plugins().len(), 1);
    assert!(t.host.plugins()[0].path.ends_with("hostile.wasm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_pin_refuses_other_bytes() {
    let bytes = std::fs::read(plugin_file("hostile")).unwrap();
    let t = host_with(
        &[],
        &format!("[plugins.hostile]\nsha256 = \"{}\"\n", "0".repeat(64)),
    )
    .await;
    let path = t.plugin_dir().join("hostile.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let err = t.host.load_plugin(&path).await.unwrap_err().to_string();
    assert!(err.contains("does not match the pinned"), "{err}");
}

/// A component exporting the contract's interface under the right names but with signatures
/// that do not match: refused when it loads (every export is checked then, once), naming the
/// function, instead of failing calls later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_with_wrong_signatures_are_refused_at_load() {
    let names = [
        "describe",
        "preflight",
        "create",
        "get",
        "list",
        "pause",
        "resume",
        "set-timeout",
        "destroy",
        "exec",
        "start-process",
        "list-processes",
        "process-status",
        "process-output",
        "signal-process",
        "read-file",
        "write-file",
        "list-dir",
        "stat",
        "remove",
        "mkdir",
        "port-url",
    ];
    let exports: String = names
        .iter()
        .map(|n| format!("(export \"{n}\" (func $f))"))
        .collect();
    // Every function takes nothing and returns nothing.
    let component = wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $api {exports})
            (export "sandbox:provider/provider@0.1.0" (instance $api)))"#
    ))
    .unwrap();
    let t = host_with(&[], "").await;
    let path = t.plugin_dir().join("mismatched.wasm");
    std::fs::write(&path, &component).unwrap();
    let err = t.host.load_plugin(&path).await.unwrap_err().to_string();
    assert!(err.contains("export `describe`"), "{err}");
    assert!(t.host.plugins().is_empty());
}
