//! E2B: the same scenario (create, 20 × `exec echo`, write + read a 1 MiB file, destroy)
//! through sandbox-host + the e2b plugin and through the official Python SDK, against one E2B
//! emulator (`sandbox-emulator e2b --isolation none`, a separate process) in the same run.
//!
//! Each side runs in one process, warms up with one scenario, then runs [`ROUNDS`] measured
//! scenarios: wall time per scenario (median) and the client process's CPU time per scenario
//! (user + system, all threads: `getrusage(RUSAGE_SELF)` here, `time.process_time()` in
//! Python). Process start-up and imports are outside the measurement on both sides.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_host::config::Config;
use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::HostBuilder;
use sandbox_tests::{plugin_file, workspace};

/// Measured scenarios per side (after one warm-up).
const ROUNDS: usize = 5;
const EXECS: usize = 20;
const FILE_BYTES: usize = 1 << 20;

/// The SDK side: the same scenario, timed inside the Python process.
const SDK_SCRIPT: &str = r#"
import sys, time
from e2b import Sandbox

ROUNDS, EXECS, SIZE = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
DATA = bytes((i * 7 + 3) % 256 for i in range(SIZE))

def scenario():
    s = Sandbox.create()
    for _ in range(EXECS):
        r = s.commands.run("echo hi")
        assert r.stdout == "hi\n"
    s.files.write("/home/user/bench.bin", DATA)
    assert s.files.read("/home/user/bench.bin", format="bytes") == DATA
    s.kill()

scenario()  # warm-up: connections, lazy imports
walls = []
cpu0 = time.process_time()
for _ in range(ROUNDS):
    t = time.perf_counter()
    scenario()
    walls.append(time.perf_counter() - t)
cpu = time.process_time() - cpu0
walls.sort()
print(walls[len(walls) // 2], cpu / ROUNDS)
"#;

#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i64,
}

/// `struct rusage` (Linux, 64-bit): two timevals, then 14 longs.
#[repr(C)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    _rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// User + system CPU time of this whole process (every thread).
fn process_cpu() -> Duration {
    let mut u = Rusage {
        utime: Timeval { sec: 0, usec: 0 },
        stime: Timeval { sec: 0, usec: 0 },
        _rest: [0; 14],
    };
    // SAFETY: `u` is a valid, writable `struct rusage`; RUSAGE_SELF is 0.
    let rc = unsafe { getrusage(0, &mut u) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: &Timeval| Duration::from_secs(t.sec as u64) + Duration::from_micros(t.usec as u64);
    tv(&u.utime) + tv(&u.stime)
}

/// The emulator as its own process; killed on drop.
struct EmulatorProcess {
    child: Child,
    url: String,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/release/sandbox-emulator`, built if needed (a no-op when it is fresh).
fn emulator_binary() -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "sandbox-emulator"])
        .current_dir(workspace())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bin = workspace().join("target/release/sandbox-emulator");
    (built || bin.exists())
        .then_some(bin)
        .filter(|b| b.exists())
}

fn start_emulator(bin: &PathBuf) -> EmulatorProcess {
    let mut child = Command::new(bin)
        .args(["e2b", "--listen", "127.0.0.1:0", "--isolation", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting sandbox-emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("emulator URL");
    EmulatorProcess {
        child,
        url: line.trim().to_string(),
    }
}

/// Our side: (median wall per scenario, CPU per scenario).
async fn ours(url: &str, pooling: bool) -> (Duration, Duration) {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin_file("e2b"), dir.join("e2b.wasm")).unwrap();
    let config = format!(
        "[plugins.e2b]\nsettings.api-url = \"{url}\"\nsettings.sandbox-url = \"{url}\"\n\
         settings.home = \"/workspace\"\nsecrets.api-key = \"e2b_bench\"\n"
    );
    let host = HostBuilder::new()
        .home(home.path())
        .plugins_dir(&dir)
        .config(Config::from_toml(&config, "bench").unwrap())
        .engine_options(sandbox_host::EngineOptions { pooling })
        .hot_reload(false)
        .build()
        .await
        .unwrap();
    let provider = host.provider("e2b").unwrap();
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| ((i * 7 + 3) % 256) as u8).collect();
    let scenario = || async {
        let sandbox = provider.create(Spec::default()).await.unwrap();
        for _ in 0..EXECS {
            let r = sandbox
                .exec(ExecRequest::shell("echo hi"), None)
                .await
                .unwrap();
            assert_eq!(r.stdout_tail, b"hi\n");
        }
        sandbox
            .write_file("/workspace/bench.bin", data.clone(), None)
            .await
            .unwrap();
        assert!(sandbox.read_file("/workspace/bench.bin").await.unwrap() == data);
        sandbox.destroy().await.unwrap();
    };
    scenario().await; // warm-up
    let mut walls = Vec::with_capacity(ROUNDS);
    let cpu0 = process_cpu();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        scenario().await;
        walls.push(t.elapsed());
    }
    let cpu = process_cpu() - cpu0;
    walls.sort();
    (walls[ROUNDS / 2], cpu / ROUNDS as u32)
}

/// The SDK's side, or why it could not run.
fn theirs(url: &str) -> Result<(Duration, Duration), String> {
    let python = workspace().join(".venv/bin/python");
    if !python.exists() {
        return Err(format!("{} is missing (make venv)", python.display()));
    }
    let out = Command::new(&python)
        .args([
            "-c",
            SDK_SCRIPT,
            &ROUNDS.to_string(),
            &EXECS.to_string(),
            &FILE_BYTES.to_string(),
        ])
        .env("E2B_API_KEY", "e2b_bench")
        .env("E2B_API_URL", url)
        .env("E2B_SANDBOX_URL", url)
        .env_remove("E2B_DEBUG")
        .output()
        .map_err(|e| format!("running python: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the SDK scenario failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // One line: "<median wall s> <cpu per round s>".
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [wall, cpu] => Ok((Duration::from_secs_f64(wall), Duration::from_secs_f64(cpu))),
        _ => Err(format!("unexpected SDK output {text:?}")),
    }
}

/// The floor no client can go under: the emulator (isolation `none`) starts every command as
/// `/usr/bin/env -- /bin/bash -l -c CMD`; spawning those 20 directly, one after another.
fn spawn_floor() -> Option<Duration> {
    let t = Instant::now();
    for _ in 0..EXECS {
        let ok = Command::new("/usr/bin/env")
            .args([
                "-i",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOME=/tmp",
                "/bin/bash",
                "-l",
                "-c",
                "echo hi",
            ])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return None;
        }
    }
    Some(t.elapsed())
}

/// Prints the comparison.
pub async fn run() {
    println!(
        "\n## E2B scenario: sandbox-host + e2b plugin vs the official Python SDK (same emulator)"
    );
    println!("   create, {EXECS} × exec `echo hi`, write + read {} MiB, destroy; {ROUNDS} rounds after a warm-up", FILE_BYTES >> 20);
    let Some(bin) = emulator_binary() else {
        println!("   skipped: target/release/sandbox-emulator could not be built");
        return;
    };
    let emulator = start_emulator(&bin);
    let (our_wall, our_cpu) = ours(&emulator.url, false).await;
    let (pool_wall, pool_cpu) = ours(&emulator.url, true).await;
    let (sdk_wall, sdk_cpu) = match theirs(&emulator.url) {
        Ok(v) => v,
        Err(why) => {
            println!("   host+plugin: wall {our_wall:.2?}, client CPU {our_cpu:.2?}; SDK side skipped: {why}");
            return;
        }
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "   {:<32} {:>12} {:>17}",
        "", "wall/round", "client CPU/round"
    );
    for (name, wall, cpu) in [
        ("host + e2b plugin", our_wall, our_cpu),
        ("host (pooling) + e2b plugin", pool_wall, pool_cpu),
        ("official Python SDK", sdk_wall, sdk_cpu),
    ] {
        println!("   {name:<32} {wall:>12.2?} {cpu:>17.2?}");
    }
    if let Some(floor) = spawn_floor() {
        println!("   of which the commands' own start-up (20 × `bash -l -c` spawned directly): {floor:.2?} per round");
    }
    for (name, wall, cpu) in [
        ("default host", our_wall, our_cpu),
        ("pooling host", pool_wall, pool_cpu),
    ] {
        println!(
            "   ratio ({name} / SDK)   wall {:.2}x (goal ≤ 0.5x), client CPU {:.2}x (goal ≤ 0.2x)",
            ratio(wall, sdk_wall),
            ratio(cpu, sdk_cpu)
        );
    }
}
