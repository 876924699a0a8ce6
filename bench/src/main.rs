//! `make bench`: each number is printed beside its baseline, measured in the same run, as a
//! ratio. Nothing here asserts a time; the budgets are in DESIGN.md.

mod daytona;
mod modal;
mod native;
mod runloop;
mod sdk_compare;
mod serve;

use std::path::Path;
use std::time::{Duration, Instant};

use sandbox_host::config::Config;
use sandbox_host::plugin::cache::{sha256_hex, CompileCache};
use sandbox_host::plugin::runtime::Runtime;
use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::{EngineOptions, Host, HostBuilder};
use sandbox_tests::localbox_support::LocalboxServer;
use sandbox_tests::plugin_file;
use sandbox_tests::servers::TestServer;

mod e2b;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn host(plugins: &[&str], config: &str, pooling: bool, home: &Path) -> Host {
    let dir = home.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for p in plugins {
        std::fs::copy(plugin_file(p), dir.join(format!("{p}.wasm"))).unwrap();
    }
    HostBuilder::new()
        .home(home)
        // One compile cache for every host the bench builds: compiling is measured on its own.
        .cache_dir(sandbox_tests::workspace().join("target/bench-cache"))
        .plugins_dir(&dir)
        .config(Config::from_toml(config, "bench").unwrap())
        .engine_options(EngineOptions {
            pooling,
            ..EngineOptions::default()
        })
        .hot_reload(false)
        .build()
        .await
        .unwrap()
}

/// The plugin's `describe` done natively: the floor a wasm call is compared with.
fn native_describe() -> sandbox_host::types::PluginInfo {
    sandbox_host::types::PluginInfo {
        name: "hostile".into(),
        version: "0.1.0".into(),
        contract_version: "0.1.0".into(),
        description: "Test fixture: misbehaves on purpose to prove the host's limits.".into(),
        capabilities: sandbox_host::types::Capabilities::STREAMING,
        settings: vec![],
        credentials: vec![],
        hosts: vec!["http://127.0.0.1:*".into()],
        options: vec![],
    }
}

/// `n` timed `describe` calls after a warm-up.
async fn describe_times(plugin: &sandbox_host::plugin::LoadedPlugin, n: usize) -> Vec<Duration> {
    let once = || {
        plugin.call("describe", None, Duration::ZERO, |g, s| {
            Box::pin(g.call_describe(s))
        })
    };
    for _ in 0..200 {
        once().await.unwrap();
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        once().await.unwrap();
        times.push(t.elapsed());
    }
    times
}

async fn call_overhead() {
    println!("## Plugin call overhead (new Store + instantiate + describe + drop, no I/O)");
    const N: usize = 5000;
    let mut native = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        std::hint::black_box(native_describe());
        native.push(t.elapsed());
    }
    let floor = us(median(native));
    println!("native describe (floor):                  median {floor:8.2} µs");
    for pooling in [false, true] {
        // The call itself: from a current-thread runtime, which runs it in place.
        let inline = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let home = tempfile::tempdir().unwrap();
                let h = host(&["hostile"], "", pooling, home.path()).await;
                describe_times(&h.plugins()[0], N).await
            })
        })
        .join()
        .unwrap();
        println!(
            "wasm call, pooling={pooling:<5}:                 median {:8.2} µs  p99 {:8.2} µs  ({:.0}x native; budget: median < 20 µs)",
            us(median(inline.clone())),
            us(pct(&inline, 0.99)),
            us(median(inline)) / floor.max(0.001)
        );
    }
    // From a multi-thread runtime the call is handed to the plugin's call thread and back.
    let home = tempfile::tempdir().unwrap();
    let h = host(&["hostile"], "", true, home.path()).await;
    let handed = describe_times(&h.plugins()[0], N).await;
    println!(
        "  same, from a 2-worker runtime (2 thread switches): median {:8.2} µs  p99 {:8.2} µs",
        us(median(handed.clone())),
        us(pct(&handed, 0.99))
    );
}

fn compile_vs_cache() {
    println!("\n## Compile vs cached load");
    let runtime = Runtime::new(&EngineOptions::default()).unwrap();
    for name in ["example", "hostile", "local"] {
        let Ok(bytes) = std::fs::read(plugin_file(name)) else {
            continue;
        };
        let sha = sha256_hex(&bytes);
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(Some(dir.path().to_path_buf()), runtime.fingerprint());
        let t = Instant::now();
        cache.load(&runtime.engine, &bytes, &sha).unwrap();
        let compile = t.elapsed();
        let mut cached = vec![];
        for _ in 0..50 {
            let t = Instant::now();
            let (_, origin) = cache.load(&runtime.engine, &bytes, &sha).unwrap();
            cached.push(t.elapsed());
            assert_eq!(origin, sandbox_host::plugin::cache::Origin::Cached);
        }
        println!(
            "{name:8} {:5} KB: compile {:8.1} ms, cached load median {:6.3} ms ({:.0}x faster; budget < 1 ms)",
            bytes.len() / 1024,
            compile.as_secs_f64() * 1e3,
            median(cached.clone()).as_secs_f64() * 1e3,
            compile.as_secs_f64() / median(cached).as_secs_f64()
        );
    }
}

async fn host_start() {
    println!("\n## Host start (cached plugins)");
    let home = tempfile::tempdir().unwrap();
    // The six plugins this repo ships: the budget is for six.
    let plugins = ["local", "example", "e2b", "daytona", "runloop", "modal"];
    let warm = host(&plugins, "", false, home.path()).await; // warms the compile cache
    assert_eq!(
        warm.plugins().len(),
        plugins.len(),
        "{:?}",
        warm.load_errors()
    );
    drop(warm);
    let mut times = vec![];
    for _ in 0..10 {
        let t = Instant::now();
        drop(host(&plugins, "", false, home.path()).await);
        times.push(t.elapsed());
    }
    println!(
        "{} plugins: median {:.1} ms (budget: 6 plugins < 100 ms)",
        plugins.len(),
        median(times).as_secs_f64() * 1e3
    );
}

async fn concurrency() {
    println!("\n## 1,000 concurrent in-flight calls against a loopback server");
    let server = TestServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        "[plugins.hostile]\nallow = [\"http://127.0.0.1:{}\"]\n",
        server.addr.port()
    );
    let h = host(&["hostile"], &config, true, home.path()).await;
    let sandbox = h
        .provider("hostile")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    let url = server.url("/ok");
    let rss_before = rss_kib("VmRSS:");
    let t = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (s, url) = (sandbox.clone(), url.clone());
            tokio::spawn(async move {
                s.exec(ExecRequest::argv(["egress", url.as_str()]), None)
                    .await
            })
        })
        .collect();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) if r.stdout_tail == b"200" => {}
            other => {
                errors += 1;
                first_error.get_or_insert(format!("{other:?}"));
            }
        }
    }
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    let elapsed = t.elapsed();
    println!(
        "1000 calls: {errors} errors, {:.0} calls/s, {} TCP connections, peak RSS {} MiB (RSS before {} MiB)",
        1000.0 / elapsed.as_secs_f64(),
        server.accepts(),
        rss_kib("VmHWM:") / 1024,
        rss_before / 1024
    );

    let plugin = h.plugins()[0].clone();
    let before = rss_kib("VmRSS:");
    let mut idle = vec![];
    for _ in 0..200 {
        idle.push(plugin.idle_instance().await.unwrap());
    }
    let after = rss_kib("VmRSS:");
    println!(
        "memory per idle instance: {:.1} KiB (200 instances alive)",
        (after.saturating_sub(before)) as f64 / 200.0
    );
}

async fn local_exec() {
    println!(
        "\n## One `exec true` through the local plugin vs the same bubblewrapped command directly"
    );
    let lb = LocalboxServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = host(&["local"], &lb.config_toml(), false, home.path()).await;
    let sandbox = h
        .provider("local")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    const N: usize = 100;
    let mut plugin_times = vec![];
    let mut engine_times = vec![];
    let mut direct_times = vec![];
    let engine_id = sandbox.id().to_string();
    let ws = tempfile::tempdir().unwrap();
    for _ in 0..N {
        // Interleaved so machine noise hits all three alike.
        let t = Instant::now();
        let r = sandbox
            .exec(ExecRequest::argv(["true"]), None)
            .await
            .unwrap();
        plugin_times.push(t.elapsed());
        assert_eq!(r.exit_code, 0);

        let t = Instant::now();
        lb.engine
            .exec(&engine_id, localbox::ExecRequest::argv(["true"]))
            .await
            .unwrap();
        engine_times.push(t.elapsed());

        let t = Instant::now();
        let status = tokio::process::Command::new("bwrap")
            .args([
                "--unshare-user",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--die-with-parent",
            ])
            .args([
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
            ])
            .args([
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
            ])
            .arg("--bind")
            .arg(ws.path())
            .args(["/workspace", "--chdir", "/workspace", "true"])
            .status()
            .await
            .unwrap();
        direct_times.push(t.elapsed());
        assert!(status.success());
    }
    let (p, e, d) = (
        median(plugin_times),
        median(engine_times),
        median(direct_times),
    );
    println!(
        "direct bwrap spawn:           median {:7.2} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "localbox engine (no HTTP):    median {:7.2} ms ({:.2}x direct)",
        e.as_secs_f64() * 1e3,
        e.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "local plugin (wasm + HTTP):   median {:7.2} ms ({:.2}x direct; budget < 2x)",
        p.as_secs_f64() * 1e3,
        p.as_secs_f64() / d.as_secs_f64()
    );
    sandbox.destroy().await.unwrap();
    lb.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "sandbox-host benchmarks ({} build, {} cores)\n",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `sandbox-bench [NAME…]` runs only the named sections (e.g. `make bench ARGS=runloop`).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if want("overhead") {
        call_overhead().await;
    }
    if want("cpu") {
        call_cpu().await;
        // The same calls made in place, from a current-thread runtime.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(call_cpu())
        })
        .join()
        .unwrap();
    }
    if want("cache") {
        compile_vs_cache();
    }
    if want("start") {
        host_start().await;
    }
    if want("concurrency") {
        concurrency().await;
    }
    if want("local") {
        local_exec().await;
    }
    if want("e2b") {
        e2b::run().await;
    }
    if want("daytona") {
        daytona::run().await;
    }
    if want("serve") {
        serve::run().await;
    }
    if want("runloop") {
        runloop::run().await;
    }
    if want("modal") {
        modal::run().await;
    }
}

/// CPU per call, sequential: a plugin call with no I/O, and one with one HTTP request to an
/// out-of-process server (the e2b emulator), to see what a provider call costs the host.
async fn call_cpu() {
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    println!("\n## CPU per sequential call (host process only; {flavor:?} runtime)");
    let Some(emu) = sdk_compare::emulator_bin()
        .and_then(|bin| sdk_compare::EmulatorProcess::start(&bin, "e2b").ok())
    else {
        println!("skipped: needs target/*/sandbox-emulator");
        return;
    };
    let url = emu.url.clone();
    native_get(&format!("{url}/health")).await;
    let home = tempfile::tempdir().unwrap();
    let config = format!("[plugins.hostile]\nallow = [\"{url}\"]\n");
    for pooling in [false, true] {
        let h = host(&["hostile"], &config, pooling, home.path()).await;
        let sandbox = h
            .provider("hostile")
            .unwrap()
            .create(Spec::default())
            .await
            .unwrap();
        for (name, argv) in [
            ("exec ok (no I/O)", vec!["ok".to_string()]),
            (
                "exec egress (1 GET)",
                vec!["egress".into(), format!("{url}/health")],
            ),
        ] {
            per_call(pooling, name, 50, 500, &sandbox, argv).await;
        }
        // A real provider call: the e2b plugin's exec (one streamed Connect-RPC POST) of `true`
        // in the emulator, whose own work (spawning the command) is not in this process.
        let e2b_home = tempfile::tempdir().unwrap();
        let e2b = host(
            &["e2b"],
            &crate::e2b::host_config(&url),
            pooling,
            e2b_home.path(),
        )
        .await;
        let sandbox = e2b
            .provider("e2b")
            .unwrap()
            .create(Spec::default())
            .await
            .unwrap();
        let name = "e2b exec (1 streamed POST)";
        per_call(pooling, name, 20, 200, &sandbox, vec!["true".into()]).await;
        sandbox.destroy().await.unwrap();
    }
    drop(emu);
}

/// The floor under `exec egress`: the same GET from a plain pooled hyper client on this
/// runtime, no wasm.
async fn native_get(url: &str) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = url.parse().unwrap();
    let get = || async {
        let resp = client.get(uri.clone()).await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.into_body().collect().await.unwrap();
    };
    for _ in 0..50 {
        get().await;
    }
    let n = 500;
    let (t, c) = (Instant::now(), crate::sdk_compare::process_cpu());
    for _ in 0..n {
        get().await;
    }
    let (w, cpu) = (t.elapsed() / n, (crate::sdk_compare::process_cpu() - c) / n);
    println!(
        "native hyper GET (the floor under egress) wall {:7.1} µs  CPU {:7.1} µs",
        us(w),
        us(cpu)
    );
}

/// Wall and CPU time per sequential `exec` of `argv` (after `warm` unmeasured ones); `calls`
/// timed ones unless `BENCH_CALLS` says otherwise.
async fn per_call(
    pooling: bool,
    name: &str,
    warm: u32,
    calls: u32,
    sandbox: &sandbox_host::Sandbox,
    argv: Vec<String>,
) {
    let n: u32 = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(calls);
    let exec = || sandbox.exec(ExecRequest::argv(argv.clone()), None);
    for _ in 0..warm {
        exec().await.unwrap();
    }
    let (t, c) = (Instant::now(), crate::sdk_compare::process_cpu());
    for _ in 0..n {
        assert_eq!(exec().await.unwrap().exit_code, 0, "{name}");
    }
    let (w, cpu) = (t.elapsed() / n, (crate::sdk_compare::process_cpu() - c) / n);
    println!(
        "pooling={pooling:<5} {name:<26} wall {:7.1} µs  CPU {:7.1} µs",
        us(w),
        us(cpu)
    );
}
