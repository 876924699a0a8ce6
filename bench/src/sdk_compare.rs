//! The SDK comparison every provider shares: one scenario (create, 20 × `exec echo` with
//! streamed stdout, write + read a 1 MiB file, destroy) through sandbox-host + the provider's
//! plugin (library API, this process) and through the official Python SDK (one Python process),
//! both against the provider's emulator running as its own process with isolation `none`, in
//! the same run. Every side (our host on a 2-worker and on a current-thread runtime, the SDK)
//! warms up with one round, then they take turns for [`ROUNDS`] timed rounds each; process
//! start-up and imports are outside the measurement. Printed: mean wall time and the client
//! process's CPU time per round (ours: `getrusage`, every thread; theirs: `time.process_time()`),
//! the emulator's CPU per round (its process and the commands it ran: work both clients wait
//! on, so the floor under either side's wall time), and the ratios against the goals
//! (wall ≤ 0.5x, CPU ≤ 0.2x).
//!
//! Where a provider has one ([`Comparison::native`]), a native client sends the plugin's
//! requests from plain hyper against the host's emulator too: what any client pays here.
//!
//! For finding where time goes: `BENCH_STEPS=1` prints each round's per-step times,
//! `BENCH_ROUNDS=N` changes the number of timed rounds, `BENCH_ONLY_OURS=1` skips the SDK side.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
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
    /// The plugin's requests sent natively (see [`crate::native`]), where written.
    pub native: Option<crate::native::Scenario>,
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
    sys.stdin.readline()  # the bench's turn signal: the sides alternate round by round
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
    fn plus(self, other: EmuCpu) -> EmuCpu {
        EmuCpu {
            own: self.own + other.own,
            commands: self.commands + other.commands,
        }
    }

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
async fn scenario(side: &str, provider: &Provider, data: &[u8]) -> anyhow::Result<()> {
    let mut steps = Steps::new(side);
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
    side: String,
    last: (Instant, Duration),
    took: Vec<(&'static str, Duration, Duration)>,
}

impl Steps {
    fn new(side: &str) -> Steps {
        Steps {
            on: std::env::var_os("BENCH_STEPS").is_some(),
            side: side.to_string(),
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
        let mut line = format!("    {} steps:", self.side);
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

/// What one timed round of a side reports: its wall time and its client's CPU time.
type Timed = anyhow::Result<(Duration, Duration)>;

/// One side of the comparison on a thread of its own, warmed up and waiting to be told to run
/// a round: the sides take turns round by round, so that a slow phase of this shared machine
/// lands on all of them instead of on whichever side happened to be running.
struct Side {
    name: &'static str,
    go: tokio::sync::mpsc::UnboundedSender<()>,
    done: std::sync::mpsc::Receiver<Timed>,
    emu_pid: u32,
    walls: Vec<Duration>,
    cpus: Vec<Duration>,
    emu: EmuCpu,
}

impl Side {
    /// Starts `body` on its own thread; it first warms up (and sends `Ok` or why not), then
    /// times one round per `()` it receives.
    fn start(
        name: &'static str,
        emu_pid: u32,
        body: impl FnOnce(tokio::sync::mpsc::UnboundedReceiver<()>, std::sync::mpsc::Sender<Timed>)
            + Send
            + 'static,
    ) -> anyhow::Result<Side> {
        let (go, go_rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("bench {name}"))
            .spawn(move || body(go_rx, done_tx))?;
        let side = Side {
            name,
            go,
            done,
            emu_pid,
            walls: Vec::new(),
            cpus: Vec::new(),
            emu: EmuCpu::default(),
        };
        side.wait()
            .map_err(|e| e.context(format!("{name}: warm-up")))?;
        Ok(side)
    }

    fn wait(&self) -> Timed {
        self.done
            .recv()
            .map_err(|_| anyhow::anyhow!("{}: the side's thread ended", self.name))?
    }

    /// Times one round, with the emulator's CPU over it.
    fn round(&mut self) -> anyhow::Result<()> {
        let emu_before = emulator_cpu(self.emu_pid);
        self.go
            .send(())
            .map_err(|_| anyhow::anyhow!("{}: the side's thread ended", self.name))?;
        let (wall, cpu) = self.wait()?;
        self.emu = self
            .emu
            .plus(emulator_cpu(self.emu_pid).since(emu_before, 1));
        self.walls.push(wall);
        self.cpus.push(cpu);
        Ok(())
    }

    fn means(&self) -> Round {
        let n = self.walls.len().max(1) as u32;
        let emu = EmuCpu {
            own: self.emu.own / n,
            commands: self.emu.commands / n,
        };
        (mean(&self.walls), mean(&self.cpus), emu)
    }
}

/// Our side: a host with the default engine options on a runtime built by `runtime`, this
/// process's CPU time per round.
fn ours(
    name: &'static str,
    c: Comparison,
    url: String,
    emu_pid: u32,
    runtime: fn() -> std::io::Result<tokio::runtime::Runtime>,
) -> anyhow::Result<Side> {
    Side::start(name, emu_pid, move |mut go, done| {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return drop(done.send(Err(e.into()))),
        };
        rt.block_on(async move {
            let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + 3) as u8).collect();
            let home = tempfile::tempdir().unwrap();
            let host = crate::host(&[c.provider], &(c.host_config)(&url), true, home.path()).await;
            let provider = match host.provider(c.provider) {
                Ok(p) => p,
                Err(e) => return drop(done.send(Err(e.into()))),
            };
            let warm = scenario(name, &provider, &data).await;
            let _ = done.send(warm.map(|()| Default::default()));
            while go.recv().await.is_some() {
                let (w, cpu) = (Instant::now(), process_cpu());
                let r = scenario(name, &provider, &data).await;
                let timed = (w.elapsed(), process_cpu().saturating_sub(cpu));
                if done.send(r.map(|()| timed)).is_err() {
                    break;
                }
            }
        })
    })
}

/// The native client's side: the plugin's requests from plain hyper on a current-thread
/// runtime, this process's CPU time per round.
fn native(scenario: crate::native::Scenario, url: String, emu_pid: u32) -> anyhow::Result<Side> {
    Side::start(NATIVE, emu_pid, move |mut go, done| {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return drop(done.send(Err(e.into()))),
        };
        rt.block_on(async move {
            let data: Arc<Vec<u8>> = Arc::new((0..FILE_BYTES).map(|i| (i * 7 + 3) as u8).collect());
            let http = Arc::new(crate::native::Http::new("Bearer bench"));
            let round = || scenario(http.clone(), url.clone(), data.clone());
            let warm = round().await;
            let _ = done.send(warm.map(|()| Default::default()));
            while go.recv().await.is_some() {
                let (w, cpu) = (Instant::now(), process_cpu());
                let r = round().await;
                let timed = (w.elapsed(), process_cpu().saturating_sub(cpu));
                if done.send(r.map(|()| timed)).is_err() {
                    break;
                }
            }
        })
    })
}

const NATIVE: &str = "native client (no plugin)";
const SDK: &str = "official SDK";

/// The official SDK's side: one Python process that warms up, then runs a round per line on
/// its stdin and prints its wall and CPU time (timed inside Python).
fn theirs(c: Comparison, py: &Path, url: &str, emu_pid: u32) -> anyhow::Result<Side> {
    let home = tempfile::tempdir()?;
    let script = format!("{}{}{}", SDK_HARNESS.0, c.sdk_code, SDK_HARNESS.1);
    let mut cmd = Command::new(py);
    cmd.args(["-c", &script])
        .args([rounds(), EXECS, FILE_BYTES].map(|n| n.to_string()))
        .env("HOME", home.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in (c.sdk_env)(url, home.path()) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    Side::start(SDK, emu_pid, move |mut go, done| {
        let _home = home;
        let mut stdin = child.stdin.take().expect("piped");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        // The SDK's failure, with what Python printed on stderr (once it has ended).
        let failed = |child: &mut Child, what: String| {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            let _ = child.wait();
            anyhow::anyhow!("the SDK scenario failed ({what}): {stderr}")
        };
        match lines.next() {
            Some(Ok(l)) if l == "warm" => {
                let _ = done.send(Ok(Default::default()));
            }
            other => {
                let _ = done.send(Err(failed(&mut child, format!("{other:?} before `warm`"))));
                return;
            }
        }
        while go.blocking_recv().is_some() {
            let line = std::io::Write::write_all(&mut stdin, b"go\n")
                .and_then(|()| std::io::Write::flush(&mut stdin))
                .ok()
                .and_then(|()| lines.next())
                .and_then(|l| l.ok());
            let timed: Option<Vec<f64>> = line.as_deref().map(|l| {
                l.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            });
            let timed = match timed.as_deref() {
                Some(&[wall, cpu]) => {
                    Ok((Duration::from_secs_f64(wall), Duration::from_secs_f64(cpu)))
                }
                _ => Err(failed(&mut child, format!("a round printed {line:?}"))),
            };
            let failed = timed.is_err();
            if done.send(timed).is_err() || failed {
                return;
            }
        }
        drop(stdin);
        let _ = child.wait();
    })
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

/// Starts the sides (our host on a 2-worker and on a current-thread runtime; the SDK unless
/// `BENCH_ONLY_OURS`), each warmed up, then times their rounds in turn; their means.
fn take_turns(c: Comparison, bin: &Path, py: &Path) -> anyhow::Result<Vec<(&'static str, Round)>> {
    // One emulator per client, so that neither inherits the other's sandboxes.
    let emu = EmulatorProcess::start(bin, c.provider)?;
    let pid = emu.child.id();
    let mut sides = vec![
        ours("host, 2-worker runtime", c, emu.url.clone(), pid, || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })?,
        // How a single-threaded embedder or the CLI drives the host: calls run in place, no
        // hand-over to the host's call threads.
        ours(
            "host, current-thread runtime",
            c,
            emu.url.clone(),
            pid,
            || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            },
        )?,
    ];
    if let Some(scenario) = c.native {
        sides.push(native(scenario, emu.url.clone(), pid)?);
    }
    let sdk_emu = match std::env::var_os("BENCH_ONLY_OURS") {
        Some(_) => None,
        None => {
            let sdk_emu = EmulatorProcess::start(bin, c.provider)?;
            sides.push(theirs(c, py, &sdk_emu.url, sdk_emu.child.id())?);
            Some(sdk_emu)
        }
    };
    // Each round starts with the next side, so that no side always follows the same one.
    for round in 0..rounds() {
        for k in 0..sides.len() {
            let n = sides.len();
            sides[(round + k) % n].round()?;
        }
    }
    let rows = sides.iter().map(|s| (s.name, s.means())).collect();
    drop(sides);
    drop((emu, sdk_emu));
    Ok(rows)
}

async fn compare(c: &Comparison, bin: &Path, py: &Path) -> anyhow::Result<()> {
    let (c, bin, py) = (*c, bin.to_path_buf(), py.to_path_buf());
    let rows = tokio::task::spawn_blocking(move || take_turns(c, &bin, &py)).await??;
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
    let Some(&(_, sdk)) = rows.iter().find(|(name, _)| *name == SDK) else {
        return Ok(());
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    for (name, (wall, cpu, _)) in rows.iter().filter(|(name, _)| *name != SDK) {
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
