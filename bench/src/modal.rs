//! Modal: one SDK-shaped scenario (create, 20 × `echo` with streamed stdout, write + read a
//! 1 MiB file, terminate) through sandbox-host + the modal plugin (gRPC over wasi:http h2c;
//! library API, this process) vs the official Python SDK (`modal` 1.6.4, grpclib, one Python
//! process), both against a `sandbox-emulator modal --isolation none` process, both
//! after a warm-up round, without process start-up or imports. Prints wall time and the client
//! process's CPU time for each, and the ratios (goals: wall ≤ 0.5x, CPU ≤ 0.2x).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sdk_compare::{
    cpu_time, emulator_bin, mean, ms, python, scenario, EmulatorProcess, EXECS, FILE_BYTES, ROUNDS,
};

/// The SDK side: the same scenario, timed in-process; one `wall cpu` line (seconds) per round.
const SDK_SCRIPT: &str = r#"
import sys, time
import modal
rounds, execs, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
app = modal.App.lookup("bench", create_if_missing=True)
image = modal.Image.from_registry("python:3.11-slim-bookworm")
data = bytes((i * 7 + 3) % 256 for i in range(size))
def scenario():
    sb = modal.Sandbox.create("sleep", "infinity", app=app, image=image, workdir="/workspace")
    for i in range(execs):
        p = sb.exec("sh", "-c", f"echo {i}")
        out = p.stdout.read()
        assert p.wait() == 0 and out.strip() == str(i), out
    sb.filesystem.write_bytes(data, "/workspace/bench.bin")
    assert sb.filesystem.read_bytes("/workspace/bench.bin") == data
    sb.terminate()
scenario()
for _ in range(rounds):
    w, c = time.perf_counter(), time.process_time()
    scenario()
    print(time.perf_counter() - w, time.process_time() - c, flush=True)
"#;

/// Prints the comparison; a missing emulator binary or Python SDK is reported, not fatal.
pub async fn run() {
    println!("modal: create + {EXECS} x exec echo + 1 MiB write/read + destroy, {ROUNDS} rounds after a warm-up");
    let (Some(bin), Some(py)) = (emulator_bin(), python()) else {
        println!("  skipped: needs target/*/sandbox-emulator (cargo build -p sandbox-emulator) and .venv (make venv)\n");
        return;
    };
    if let Err(e) = compare(&bin, &py).await {
        println!("  failed: {e:#}\n");
    }
}

async fn compare(bin: &PathBuf, py: &PathBuf) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + 3) as u8).collect();

    // Ours: host + plugin, in this process.
    let emu = EmulatorProcess::start(bin, "modal")?;
    let url = &emu.url;
    let config = format!(
        "[plugins.modal]\nallow = [\"{url}\"]\nh2c = [\"{url}\"]\nsettings.server-url = \"{url}\"\nsettings.environment = \"bench\"\n\
         secrets.token-id = {{ env = \"SANDBOX_HOST_BENCH_UNSET_ID\", default = \"ak-bench\", hosts = [\"{url}\"] }}\n\
         secrets.token-secret = {{ env = \"SANDBOX_HOST_BENCH_UNSET_SECRET\", default = \"as-bench\", hosts = [\"{url}\"] }}\n"
    );
    let home = tempfile::tempdir()?;
    let host = crate::host(&["modal"], &config, false, home.path()).await;
    let provider = host.provider("modal")?;
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
    let emu = EmulatorProcess::start(bin, "modal")?;
    let out = tokio::task::spawn_blocking({
        let (py, port) = (
            py.clone(),
            emu.url.rsplit(':').next().unwrap_or("0").to_string(),
        );
        let home = tempfile::tempdir()?;
        move || {
            // `localhost`: the SDK accepts an http:// router URL only for a local server.
            Command::new(py)
                .args([
                    "-c",
                    SDK_SCRIPT,
                    &ROUNDS.to_string(),
                    &EXECS.to_string(),
                    &FILE_BYTES.to_string(),
                ])
                .env("MODAL_SERVER_URL", format!("http://localhost:{port}"))
                .env("MODAL_TOKEN_ID", "ak-bench")
                .env("MODAL_TOKEN_SECRET", "as-bench")
                .env("MODAL_ENVIRONMENT", "bench")
                .env("HOME", home.path())
                .env("MODAL_CONFIG_PATH", home.path().join("modal.toml"))
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
