//! What the SDK-comparison benchmarks share: finding the emulator and the venv's Python,
//! running the emulator as its own process, the scenario on our side, and CPU accounting.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sandbox_host::types::{ExecRequest, Spec};
use sandbox_host::Provider;

/// Measured rounds per side (after one warm-up round).
pub const ROUNDS: usize = 5;
pub const EXECS: usize = 20;
pub const FILE_BYTES: usize = 1 << 20;

pub fn workspace() -> PathBuf {
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
pub fn python() -> Option<PathBuf> {
    std::env::var_os("SDK_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(workspace().join(".venv/bin/python")).filter(|p| p.exists()))
}

/// This process's user + system CPU time (from /proc, in clock ticks of 10 ms).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

pub struct EmulatorProcess {
    child: Child,
    pub url: String,
}

impl EmulatorProcess {
    /// Starts `sandbox-emulator PROVIDER` with isolation `none` and reads its URL.
    pub fn start(bin: &Path, provider: &str) -> anyhow::Result<EmulatorProcess> {
        let mut child = Command::new(bin)
            .args([provider, "--listen", "127.0.0.1:0", "--isolation", "none"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        Ok(EmulatorProcess {
            child,
            url: line.trim().to_string(),
        })
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scenario both sides run: create, 20 × `echo`, write and read 1 MiB, destroy.
pub async fn scenario(provider: &Provider, data: &[u8]) -> anyhow::Result<()> {
    let sandbox = provider.create(Spec::default()).await?;
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
    }
    sandbox.write_file("bench.bin", data.to_vec(), None).await?;
    anyhow::ensure!(
        sandbox.read_file("bench.bin").await? == data,
        "the 1 MiB file came back different"
    );
    sandbox.destroy().await?;
    Ok(())
}

pub fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
