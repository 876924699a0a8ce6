//! The CLI's localbox daemon. Sandboxes and their background processes outlive one CLI
//! invocation, so the first command that needs the local provider starts localbox in the
//! background; later invocations find it through `<home>/localbox/daemon.json` (address, token,
//! pid; mode 0600). It exits by itself after an idle period with no live sandboxes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use sandbox_host::config::Config;

/// What a running daemon publishes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

pub fn state_file(home: &Path) -> PathBuf {
    home.join("localbox/daemon.json")
}

fn read_info(home: &Path) -> Option<DaemonInfo> {
    serde_json::from_slice(&std::fs::read(state_file(home)).ok()?).ok()
}

/// A bare HTTP/1.0 health check: no client stack needed for one line.
fn healthy(url: &str) -> bool {
    let Some(addr) = url
        .strip_prefix("http://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/health HTTP/1.0\r\nHost: localbox\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf[9..12] == *b"200")
}

/// The running daemon, if any.
pub fn running(home: &Path) -> Option<DaemonInfo> {
    read_info(home).filter(|i| healthy(&i.url))
}

/// Finds the daemon or starts one, holding a lock so concurrent invocations start only one.
/// `config_file` is the operator file given explicitly (`--config`), passed on to the daemon.
pub fn ensure(home: &Path, config_file: Option<&Path>) -> anyhow::Result<DaemonInfo> {
    if let Some(info) = running(home) {
        return Ok(info);
    }
    let dir = home.join("localbox");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("daemon.lock"))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX);
    }
    if let Some(info) = running(home) {
        return Ok(info);
    }
    let _ = std::fs::remove_file(state_file(home));
    let exe = std::env::current_exe().context("cannot find the sandbox-host executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["localbox", "--daemon"]);
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    cmd.env("SANDBOX_HOST_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal and
    // process group, so Ctrl-C on this command does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the localbox daemon")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Some(info) = running(home) {
            return Ok(info);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the localbox daemon exited at start ({status}); see {}",
                dir.join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!(
        "the localbox daemon did not come up within 15 s; see {}",
        dir.join("daemon.log").display()
    )
}

/// Runs as the daemon: serve on a loopback port, publish where, exit when idle.
pub async fn run(home: &Path, config: &Config) -> anyhow::Result<()> {
    let engine_config = sandbox_host::local::engine_config(&config.localbox, home)?;
    let engine = localbox::Engine::new(engine_config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let info = DaemonInfo {
        url: format!("http://{}", listener.local_addr()?),
        token: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
        pid: std::process::id(),
    };
    let path = state_file(home);
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&info)?)?;
    }
    std::fs::rename(&tmp, &path)?;
    tracing::info!(url = %info.url, "localbox daemon listening");
    let idle = Duration::from_secs(config.localbox.idle_exit_secs.unwrap_or(600));
    let server = localbox::Server::new(
        engine.clone(),
        localbox::ServerConfig::new(info.token.clone()),
    );
    let waiter = engine.clone();
    let stop = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = waiter.wait_idle(idle) => tracing::info!("localbox daemon idle, exiting"),
            _ = term.recv() => tracing::info!("localbox daemon stopping"),
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = localbox::serve_with_shutdown(listener, server, stop).await;
    // Only remove the state file if it is still ours.
    if read_info(home).is_some_and(|i| i.pid == info.pid) {
        let _ = std::fs::remove_file(&path);
    }
    engine.shutdown().await;
    Ok(result?)
}

/// Stops the daemon and waits for it to exit. Returns whether one was running.
pub fn stop(home: &Path) -> anyhow::Result<bool> {
    let Some(info) = read_info(home) else {
        return Ok(false);
    };
    // A stale state file may name a pid the system has since given to another program.
    if !is_daemon_process(info.pid) {
        let _ = std::fs::remove_file(state_file(home));
        return Ok(false);
    }
    // SAFETY: kill(2) with a pid read from our own state file, checked to be our daemon.
    if unsafe { libc::kill(info.pid as i32, libc::SIGTERM) } != 0 {
        let _ = std::fs::remove_file(state_file(home));
        return Ok(false);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if unsafe { libc::kill(info.pid as i32, 0) } != 0 || is_zombie(info.pid) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the localbox daemon (pid {}) did not stop within 15 s",
        info.pid
    )
}

/// An exited process nobody reaped yet (the daemon is reparented when the CLI that started it
/// exits; under an init that does not reap, `kill(pid, 0)` keeps succeeding).
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesized command name, which may itself contain ") ".
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// Whether `pid` runs `… localbox --daemon` (checked before signalling it).
fn is_daemon_process(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"localbox" && w[1] == b"--daemon")
}
