//! Helpers shared by the integration tests (real processes, real bubblewrap).
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use localbox::{Engine, EngineConfig, ExecRequest};

/// A fresh engine over a temporary root directory (kept alive by the returned guard).
pub fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(config(dir.path())).unwrap();
    (engine, dir)
}

pub fn config(root: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::new(root);
    c.reaper_interval = Duration::from_millis(200);
    c
}

/// Polls `check` every 50 ms until it yields `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Host pids whose real uid is `uid`.
/// Live (non-zombie) processes whose real uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        // Zombies hold nothing; they wait for the machine's init to reap them.
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"))
        {
            continue;
        }
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            if line.split_whitespace().nth(1) == Some(uid.to_string().as_str()) {
                out.push(pid);
            }
        }
    }
    out
}

/// Runs a shell command and returns (exit code, stdout, stderr) as strings.
pub async fn sh(engine: &Engine, id: &str, script: &str) -> (i32, String, String) {
    let out = engine.exec(id, ExecRequest::shell(script)).await.unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout_tail).into_owned(),
        String::from_utf8_lossy(&out.stderr_tail).into_owned(),
    )
}

/// The uid commands of the sandbox run as.
pub async fn sandbox_uid(engine: &Engine, id: &str) -> u32 {
    sh(engine, id, "id -u").await.1.trim().parse().unwrap()
}
