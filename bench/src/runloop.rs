//! Runloop: one SDK-shaped scenario (create and await running, 20 × `echo` with streamed
//! stdout, write + read a 1 MiB file, shut down) through sandbox-host + the runloop plugin
//! (library API, this process) vs the official Python SDK (`runloop-api-client`, one Python
//! process), both against the same `sandbox-emulator runloop --isolation none` process, both
//! after a warm-up round, without process start-up or imports. Prints wall time and the client
//! process's CPU time for each, and the ratios (goals: wall ≤ 0.5x, CPU ≤ 0.2x).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sdk_compare::{
    cpu_time, emulator_bin, mean, ms, python, scenario, EmulatorProcess, EXECS, FILE_BYTES, ROUNDS,
};

/// The SDK side: the same scenario, timed in-process; one `wall cpu` line (seconds) per round.
const SDK_SCRIPT: &str = r#"
import sys, time
from runloop_api_client import RunloopSDK
rounds, execs, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sdk = RunloopSDK()
data = bytes((i * 7 + 3) % 256 for i in range(size))
def scenario():
    devbox = sdk.devbox.create()
    for i in range(execs):
        out = []
        r = devbox.cmd.exec(f"echo {i}", stdout=out.append)
        assert r.exit_code == 0 and "".join(out).strip() == str(i), (r.exit_code, out)
    devbox.file.upload(path="bench.bin", file=("bench.bin", data))
    assert devbox.file.download(path="bench.bin") == data
    devbox.shutdown()
scenario()
for _ in range(rounds):
    w, c = time.perf_counter(), time.process_time()
    scenario()
    print(time.perf_counter() - w, time.process_time() - c, flush=True)
"#;

/// Prints the comparison; a missing emulator binary or Python SDK is reported, not fatal.
pub async fn run() {
    println!("runloop: create + {EXECS} x exec echo + 1 MiB write/read + destroy, {ROUNDS} rounds after a warm-up");
    let (Some(bin), Some(py)) = (emulator_bin(), python()) else {
        println!("  skipped: needs target/*/sandbox-emulator (cargo build -p sandbox-emulator) and .venv (make venv)\n");
        return;
    };
    if let Err(e) = compare(&bin, &py).await {
        println!("  failed: {e:#}\n");
    }
}

async fn compare(bin: &Path, py: &Path) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + 3) as u8).collect();

    // Ours: host + plugin, in this process.
    let emu = EmulatorProcess::start(bin, "runloop")?;
    let config = format!(
        "[plugins.runloop]\nsettings.base-url = \"{}\"\nsettings.workdir = \"/workspace\"\nsecrets.api-key = \"bench\"\n",
        emu.url
    );
    let home = tempfile::tempdir()?;
    let host = crate::host(&["runloop"], &config, false, home.path()).await;
    let provider = host.provider("runloop")?;
    scenario(&provider, &data).await?;
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (w, c) = (Instant::now(), cpu_time());
        scenario(&provider, &data).await?;
        walls.push(w.elapsed());
        cpus.push(cpu_time().saturating_sub(c));
    }
    drop(emu);

    // Theirs: the official SDK in one Python process, against a fresh emulator.
    let emu = EmulatorProcess::start(bin, "runloop")?;
    let out = tokio::task::spawn_blocking({
        let (py, url) = (py.to_path_buf(), emu.url.clone());
        move || {
            Command::new(py)
                .args([
                    "-c",
                    SDK_SCRIPT,
                    &ROUNDS.to_string(),
                    &EXECS.to_string(),
                    &FILE_BYTES.to_string(),
                ])
                .env("RUNLOOP_BASE_URL", url)
                .env("RUNLOOP_API_KEY", "bench")
                .output()
        }
    })
    .await??;
    drop(emu);
    anyhow::ensure!(
        out.status.success(),
        "the SDK scenario failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut sdk_walls, mut sdk_cpus) = (Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line
            .split_whitespace()
            .map(|x| x.parse::<f64>().unwrap_or(0.0));
        sdk_walls.push(Duration::from_secs_f64(f.next().unwrap_or(0.0)));
        sdk_cpus.push(Duration::from_secs_f64(f.next().unwrap_or(0.0)));
    }
    anyhow::ensure!(
        sdk_walls.len() == ROUNDS,
        "the SDK scenario printed {} rounds",
        sdk_walls.len()
    );

    let (w, c, sw, sc) = (mean(&walls), mean(&cpus), mean(&sdk_walls), mean(&sdk_cpus));
    println!(
        "  host + plugin   wall {:>8.1} ms   client CPU {:>7.1} ms",
        ms(w),
        ms(c)
    );
    println!(
        "  official SDK    wall {:>8.1} ms   client CPU {:>7.1} ms",
        ms(sw),
        ms(sc)
    );
    println!(
        "  ratio           wall {:>8.2}x (goal <= 0.5x)   CPU {:.2}x (goal <= 0.2x)   [emulator {}; our CPU from /proc in 10 ms ticks]\n",
        w.as_secs_f64() / sw.as_secs_f64(),
        c.as_secs_f64() / sc.as_secs_f64().max(1e-9),
        bin.display()
    );
    Ok(())
}
