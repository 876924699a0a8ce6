//! The SDK comparison every provider shares: one scenario (create, 20 × `exec echo` with
//! streamed stdout, write + read a 1 MiB file, destroy) through sandbox-host + the provider's
//! plugin (library API, this process) and through the official Python SDK (one Python process),
//! both against the provider's emulator running as its own process with isolation `none`, in
//! the same run. Both sides warm up with one round, then run [`ROUNDS`] timed rounds; process
//! start-up and imports are outside the measurement. Printed: mean wall time and the client
//! process's CPU time per round (ours: `getrusage`, every thread; theirs: `time.process_time()`),
//! the emulator's CPU per round (its process and the commands it ran: work both clients wait
//! on, so the floor under either side's wall time), and the ratios against the goals
//! (wall ≤ 0.5x, CPU ≤ 0.2x).
//!
//! For finding where time goes: `BENCH_STEPS=1` prints each round's per-step times,
//! `BENCH_ROUNDS=N` changes the number of timed rounds, `BENCH_ONLY_OURS=1` skips the SDK side.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::Provider;

/// Timed rounds per side (after one warm-up round); `BENCH_ROUNDS` overrides (for profiling).
/// Ten, not five: the SDK's rounds vary by ±15% (Python), and a mean of five moved the ratios
/// by several hundredths between runs.
const ROUNDS: usize = 10;

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
}
pub const EXECS: usize = 20;
pub const FILE_BYTES: usize = 1 << 20;

/// One provider's half of the comparison.
#[derive(Clone, Copy)]
pub struct Comparison {
    /// The plugin and the emulator's name.
    pub provider: &'static str,
    /// `[plugins.NAME]` configuration pointing the plugin at the emulator's base URL.
    pub host_config: fn(url: &str) -> String,
    /// Python defining `scenario()` with the official SDK; `DATA`, `EXECS` are defined.
    pub sdk_code: &'static str,
    /// The SDK process's environment, given the emulator's base URL and a scratch HOME.
    pub sdk_env: fn(url: &str, home: &Path) -> Vec<(&'static str, String)>,
}

/// What wraps every `sdk_code`: the shared data and the timing loop (one `wall cpu` line,
/// in seconds, per timed round).
const SDK_HARNESS: (&str, &str) = (
    r#"
import sys, time
ROUNDS, EXECS, SIZE = map(int, sys.argv[1:4])
DATA = bytes((i * 7 + 3) % 256 for i in range(SIZE))
"#,
    r#"
scenario()  # warm-up: connections, lazy imports
print("warm", flush=True)
for _ in range(ROUNDS):
    w, c = time.perf_counter(), time.process_time()
    scenario()
    print(time.perf_counter() - w, time.process_time() - c, flush=True)
"#,
);

fn workspace() -> PathBuf {
    sandbox_tests::workspace()
}

/// The emulator binary: `SANDBOX_EMULATOR_BIN`, else the release build, else the debug one.
pub fn emulator_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SANDBOX_EMULATOR_BIN") {
        return Some(p.into());
    }
    [
        "target/release/sandbox-emulator",
        "target/debug/sandbox-emulator",
    ]
    .iter()
    .map(|p| workspace().join(p))
    .find(|p| p.exists())
}

/// The Python with the pinned SDKs: `SDK_PYTHON`, else the repo's venv.
fn python() -> Option<PathBuf> {
    std::env::var_os("SDK_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(workspace().join(".venv/bin/python")).filter(|p| p.exists()))
}

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

/// User + system CPU time of this whole process, every thread (also those that ended).
pub fn process_cpu() -> Duration {
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

/// CPU time of process `pid` and of its children it waited for (`/proc/PID/stat` utime,
/// stime, cutime, cstime; 10 ms ticks): the emulator's own work and the commands it ran.
fn emulator_cpu(pid: u32) -> EmuCpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    // utime stime cutime cstime: its own, then its reaped children's (the commands it ran).
    let ticks: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse::<u64>().unwrap_or(0))
        .collect();
    let ms = |a: usize, b: usize| {
        Duration::from_millis(10 * (ticks.get(a).unwrap_or(&0) + ticks.get(b).unwrap_or(&0)))
    };
    EmuCpu {
        own: ms(0, 1),
        commands: ms(2, 3),
    }
}

/// The emulator's CPU: its own, and that of the commands it ran.
#[derive(Clone, Copy, Default)]
struct EmuCpu {
    own: Duration,
    commands: Duration,
}

impl EmuCpu {
    /// Used between `earlier` and now, per round.
    fn since(self, earlier: EmuCpu, rounds: u32) -> EmuCpu {
        EmuCpu {
            own: self.own.saturating_sub(earlier.own) / rounds,
            commands: self.commands.saturating_sub(earlier.commands) / rounds,
        }
    }
}

/// The emulator as its own process (and process group); killed on drop.
pub struct EmulatorProcess {
    child: Child,
    pub url: String,
    /// Kept open: the emulator's stdout must not become a broken pipe.
    _stdout: BufReader<ChildStdout>,
}

impl EmulatorProcess {
    /// Starts `sandbox-emulator PROVIDER` with isolation `none` and reads its URL.
    pub fn start(bin: &Path, provider: &str) -> anyhow::Result<EmulatorProcess> {
        let mut child = Command::new(bin)
            .args([provider, "--listen", "127.0.0.1:0", "--isolation", "none"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // With isolation `none` an emulator may signal process groups when it ends a
            // command; the bench's own group must never be among them.
            .process_group(0)
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(EmulatorProcess {
            child,
            url: line.trim().to_string(),
            _stdout: stdout,
        })
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scenario on our side: create, 20 × `echo`, write and read 1 MiB, destroy.
/// `BENCH_STEPS=1` prints how long each step took (to find where a round's time goes).
async fn scenario(provider: &Provider, data: &[u8]) -> anyhow::Result<()> {
    let mut steps = Steps::new();
    let sandbox = provider.create(Spec::default()).await?;
    steps.mark("create");
    for i in 0..EXECS {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let r = sandbox
            .exec(
                ExecRequest::shell(format!("echo {i}")),
                Some(Box::new(move |_, b: &[u8]| {
                    sink.lock().unwrap().extend_from_slice(b)
                })),
            )
            .await?;
        anyhow::ensure!(
            r.exit_code == 0 && *out.lock().unwrap() == format!("{i}\n").into_bytes(),
            "echo {i}: {r:?}"
        );
        steps.mark("exec");
    }
    sandbox.write_file("bench.bin", data.to_vec(), None).await?;
    steps.mark("write");
    anyhow::ensure!(
        sandbox.read_file("bench.bin").await? == data,
        "the 1 MiB file came back different"
    );
    steps.mark("read");
    sandbox.destroy().await?;
    steps.mark("destroy");
    steps.print();
    Ok(())
}

/// Per-step wall times of one round, kept only when `BENCH_STEPS` is set.
struct Steps {
    on: bool,
    last: (Instant, Duration),
    took: Vec<(&'static str, Duration, Duration)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            on: std::env::var_os("BENCH_STEPS").is_some(),
            last: (Instant::now(), process_cpu()),
            took: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        if self.on {
            let now = (Instant::now(), process_cpu());
            self.took
                .push((step, now.0 - self.last.0, now.1 - self.last.1));
            self.last = now;
        }
    }

    fn print(&self) {
        if !self.on {
            return;
        }
        let mut line = String::from("    steps:");
        let mut names: Vec<&str> = self.took.iter().map(|(n, ..)| *n).collect();
        names.dedup();
        for name in names {
            let of = |n: &&(&str, Duration, Duration)| n.0 == name;
            let wall: Duration = self.took.iter().filter(of).map(|t| t.1).sum();
            let cpu: Duration = self.took.iter().filter(of).map(|t| t.2).sum();
            let count = self.took.iter().filter(of).count();
            line += &format!(" | {name} {:.2} ms (CPU {:.2})", ms(wall), ms(cpu));
            if count > 1 {
                line += &format!(" {count}×");
            }
        }
        println!("{line}");
    }
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Means per round: wall time, the client's CPU, the emulator's CPU (with its commands).
type Round = (Duration, Duration, EmuCpu);

/// Means per round on our side (a host with the default engine options).
async fn ours(c: &Comparison, url: &str, emu_pid: u32) -> anyhow::Result<Round> {
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    let home = tempfile::tempdir()?;
    let host = crate::host(&[c.provider], &(c.host_config)(url), true, home.path()).await;
    let provider = host.provider(c.provider)?;
    scenario(&provider, &data).await?;
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    let emu_cpu = emulator_cpu(emu_pid);
    for _ in 0..rounds() {
        let (w, cpu) = (Instant::now(), process_cpu());
        scenario(&provider, &data).await?;
        walls.push(w.elapsed());
        cpus.push(process_cpu().saturating_sub(cpu));
    }
    let emu_cpu = emulator_cpu(emu_pid).since(emu_cpu, rounds() as u32);
    Ok((mean(&walls), mean(&cpus), emu_cpu))
}

/// Means per round on the official SDK's side (its rounds timed inside Python; the emulator's
/// CPU sampled as each round's line arrives).
async fn theirs(c: &Comparison, py: &Path, url: &str, emu_pid: u32) -> anyhow::Result<Round> {
    let home = tempfile::tempdir()?;
    let script = format!("{}{}{}", SDK_HARNESS.0, c.sdk_code, SDK_HARNESS.1);
    let mut cmd = Command::new(py);
    cmd.args(["-c", &script])
        .args([rounds(), EXECS, FILE_BYTES].map(|n| n.to_string()))
        .env("HOME", home.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in (c.sdk_env)(url, home.path()) {
        cmd.env(k, v);
    }
    let (walls, cpus, emu_cpu, status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn()?;
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        let mut emu_start = None;
        let mut emu_end = EmuCpu::default();
        for line in stdout.lines() {
            let line = line?;
            if line == "warm" {
                emu_start = Some(emulator_cpu(emu_pid));
                continue;
            }
            let f: Vec<f64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [wall, cpu] = f[..] {
                emu_end = emulator_cpu(emu_pid);
                walls.push(Duration::from_secs_f64(wall));
                cpus.push(Duration::from_secs_f64(cpu));
            }
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)?;
        let status = child.wait()?;
        let emu_cpu = emu_end.since(emu_start.unwrap_or(emu_end), rounds() as u32);
        anyhow::Ok((walls, cpus, emu_cpu, status, stderr))
    })
    .await??;
    anyhow::ensure!(status.success(), "the SDK scenario failed: {stderr}");
    anyhow::ensure!(
        walls.len() == rounds(),
        "the SDK scenario printed {} rounds",
        walls.len()
    );
    Ok((mean(&walls), mean(&cpus), emu_cpu))
}

/// Runs and prints one provider's comparison; a missing emulator or venv is reported, not fatal.
pub async fn run(c: Comparison) {
    println!(
        "\n## {}: host + plugin vs the official Python SDK, same emulator (isolation none)",
        c.provider
    );
    println!(
        "   create, {EXECS} × exec echo, write + read {} MiB, destroy; mean of {} rounds after a warm-up",
        FILE_BYTES >> 20,
        rounds()
    );
    let (Some(bin), Some(py)) = (emulator_bin(), python()) else {
        println!("   skipped: needs target/*/sandbox-emulator (cargo build -p sandbox-emulator) and .venv (make venv)");
        return;
    };
    if let Err(e) = compare(&c, &bin, &py).await {
        println!("   failed: {e:#}");
    }
}

async fn compare(c: &Comparison, bin: &Path, py: &Path) -> anyhow::Result<()> {
    // One emulator per side, so that neither inherits the other's sandboxes.
    let emu = EmulatorProcess::start(bin, c.provider)?;
    let pid = emu.child.id();
    let multi = ours(c, &emu.url, pid).await?;
    // The same host on a current-thread runtime of its own (how a single-threaded embedder or
    // the CLI drives it): calls run in place, no hand-over to the host's call threads.
    let single = {
        let url = emu.url.clone();
        let c = *c;
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(ours(&c, &url, pid))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the current-thread run panicked"))??
    };
    drop(emu);
    let mut rows = vec![
        ("host, 2-worker runtime", multi),
        ("host, current-thread runtime", single),
    ];
    if std::env::var_os("BENCH_ONLY_OURS").is_none() {
        let emu = EmulatorProcess::start(bin, c.provider)?;
        rows.push((
            "official SDK",
            theirs(c, py, &emu.url, emu.child.id()).await?,
        ));
    }
    println!(
        "   {:<30} {:>10} {:>12} {:>14} {:>14}",
        "", "wall", "client CPU", "emulator CPU", "commands CPU"
    );
    for (name, (wall, cpu, emu)) in &rows {
        println!(
            "   {name:<30} {:>8.1}ms {:>10.1}ms {:>12.0}ms {:>12.0}ms",
            ms(*wall),
            ms(*cpu),
            ms(emu.own),
            ms(emu.commands)
        );
    }
    let Some(&(_, sdk)) = rows.get(2) else {
        return Ok(());
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    for (name, (wall, cpu, _)) in &rows[..2] {
        println!(
            "   ratio {name:<30} / SDK  wall {:>5.2}x (goal ≤ 0.5x)   CPU {:>5.2}x (goal ≤ 0.2x)",
            ratio(*wall, sdk.0),
            ratio(*cpu, sdk.1)
        );
    }
    let floor = |r: &Round| r.2.own + r.2.commands;
    println!(
        "   (emulator CPU: the emulator process; commands CPU: the commands it ran for that client; \
         10 ms ticks. A client waits on both, so its round cannot be shorter than their sum: \
         for the host {:.2}x the SDK's wall, for the SDK {:.2}x)",
        ratio(floor(&rows[1].1), sdk.0),
        ratio(floor(&sdk), sdk.0)
    );
    Ok(())
}
