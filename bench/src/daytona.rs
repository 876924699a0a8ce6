//! Daytona: the SDK-shaped scenario (create, 20 × `exec echo`, write + read a 1 MiB file,
//! destroy) through sandbox-host + the daytona plugin vs the official Python SDK (`daytona`
//! 0.226.1), both against one `sandbox-emulator daytona --isolation none` process, in one run.
//!
//! Each side runs the scenario once to warm up, then timed: wall time, and the CPU time of the
//! client's own process (ours: every thread of this process, read from `/proc/self/task/*/
//! schedstat`; theirs: `time.process_time()` in the Python process), excluding process start and
//! imports. The emulator's own CPU is in neither.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::Provider;

const EXECS: usize = 20;
const FILE_BYTES: usize = 1 << 20;

/// CPU time of every live thread of this process (ns precision).
fn process_cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let root = sandbox_tests::workspace();
    ["target/release", "target/debug"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.exists())
}

/// The emulator as a separate process; killed on drop.
struct Emulator {
    child: std::process::Child,
    url: String,
    /// Kept open: the emulator's stdout must not become a broken pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Emulator {
    fn start(bin: &PathBuf) -> anyhow::Result<Emulator> {
        let mut child = Command::new(bin)
            .args(["daytona", "--listen", "127.0.0.1:0", "--isolation", "none"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: with isolation `none`, ending a session command signals
            // process groups, and the bench's own group must never be among them.
            .process_group(0)
            .spawn()?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line)?;
        Ok(Emulator {
            child,
            url: line.trim().to_string(),
            _stdout: stdout,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scenario(provider: &Provider) -> anyhow::Result<()> {
    let sb = provider.create(Spec::default()).await?;
    for _ in 0..EXECS {
        let r = sb.exec(ExecRequest::argv(["echo", "hello"]), None).await?;
        anyhow::ensure!(
            r.stdout_tail == b"hello\n",
            "exec output {:?}",
            r.stdout_tail
        );
    }
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    sb.write_file("bench.bin", data.clone(), None).await?;
    anyhow::ensure!(
        sb.read_file("bench.bin").await? == data,
        "1 MiB round trip differs"
    );
    sb.destroy().await?;
    Ok(())
}

const SDK_SCRIPT: &str = r#"
import json, sys, time
from daytona import Daytona, DaytonaConfig
d = Daytona(DaytonaConfig(api_key="bench", api_url=sys.argv[1]))
data = bytes((i * 7 % 251) for i in range(1 << 20))
def scenario():
    sb = d.create()
    for _ in range(20):
        r = sb.process.exec("echo hello")
        assert r.result == "hello\n", r.result
    sb.fs.upload_file(data, "bench.bin")
    assert sb.fs.download_file("bench.bin") == data
    d.delete(sb)
scenario()
w, c = time.perf_counter(), time.process_time()
scenario()
print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c}))
"#;

async fn ours(url: &str) -> anyhow::Result<(Duration, Duration)> {
    let home = tempfile::tempdir()?;
    let dir = home.path().join("plugins");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        sandbox_tests::plugin_file("daytona"),
        dir.join("daytona.wasm"),
    )?;
    let config = format!(
        "[plugins.daytona]\nsettings.api-url = \"{url}/api\"\n\
         secrets.api-key = {{ env = \"SANDBOX_HOST_BENCH_UNSET_KEY\", default = \"bench\", hosts = [\"http://127.0.0.1:*\"] }}\n"
    );
    let host = sandbox_host::HostBuilder::new()
        .home(home.path())
        .plugins_dir(&dir)
        .config(sandbox_host::config::Config::from_toml(&config, "bench")?)
        .hot_reload(false)
        .build()
        .await?;
    let provider = host.provider("daytona")?;
    scenario(&provider).await?;
    let (w, c) = (Instant::now(), process_cpu());
    scenario(&provider).await?;
    Ok((w.elapsed(), process_cpu().saturating_sub(c)))
}

fn theirs(url: &str) -> anyhow::Result<(Duration, Duration)> {
    let python = sandbox_tests::workspace().join(".venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", SDK_SCRIPT, &format!("{url}/api")])
        .env("NO_PROXY", "127.0.0.1")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "SDK scenario failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let secs = |k: &str| -> anyhow::Result<Duration> {
        let at = text
            .find(&format!("\"{k}\": "))
            .ok_or_else(|| anyhow::anyhow!("no {k} in {text:?}"))?;
        let rest = &text[at + k.len() + 4..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Ok(Duration::from_secs_f64(rest[..end].trim().parse()?))
    };
    Ok((secs("wall")?, secs("cpu")?))
}

/// Prints the Daytona scenario: host + plugin vs the official SDK on the same emulator.
pub async fn run() {
    println!("\n## Daytona: create, {EXECS} × exec echo, 1 MiB write + read, destroy (emulator, isolation none)");
    let Some(bin) = find_binary("sandbox-emulator") else {
        println!("  skipped: build the emulator first (`cargo build -p sandbox-emulator`)");
        return;
    };
    let emulator = match Emulator::start(&bin) {
        Ok(e) => e,
        Err(e) => return println!("  skipped: emulator did not start: {e}"),
    };
    let ours = match ours(&emulator.url).await {
        Ok(r) => r,
        Err(e) => return println!("  failed (sandbox-host): {e:#}"),
    };
    let theirs = match tokio::task::spawn_blocking({
        let url = emulator.url.clone();
        move || theirs(&url)
    })
    .await
    .unwrap()
    {
        Ok(r) => r,
        Err(e) => return println!("  official SDK side failed: {e:#}"),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("  {:<28} {:>10} {:>12}", "", "wall", "client CPU");
    println!(
        "  {:<28} {:>8.1}ms {:>10.1}ms",
        "sandbox-host + plugin",
        ms(ours.0),
        ms(ours.1)
    );
    println!(
        "  {:<28} {:>8.1}ms {:>10.1}ms",
        "official Python SDK",
        ms(theirs.0),
        ms(theirs.1)
    );
    println!(
        "  ratio (ours / SDK)           {:>9.2}x {:>11.2}x   (goals: wall ≤ 0.5x, CPU ≤ 0.2x)",
        ours.0.as_secs_f64() / theirs.0.as_secs_f64(),
        ours.1.as_secs_f64() / theirs.1.as_secs_f64()
    );
}
