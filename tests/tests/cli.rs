//! The `sandbox-host` CLI end to end on the local provider: every command, exit codes, JSON
//! shapes (`docs/cli-json.md`), and a second invocation reaching a background process started by
//! the first.
//!
//! Runs the built binary `target/debug/sandbox-host` (`make test` builds it first; or set
//! `SANDBOX_HOST_BIN`). Needs the `local` plugin (`make plugins`) and bubblewrap. Each test has
//! its own `SANDBOX_HOST_HOME`, so its own localbox daemon, and removes its sandboxes and stops
//! its daemon when it ends. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use sandbox_tests::{plugin_file, workspace};

/// How long one CLI invocation may take (the first one in a home compiles the plugins).
const CALL_LIMIT: Duration = Duration::from_secs(120);

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            newest = newest.max(newest_mtime(&path));
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            newest = newest.max(
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
        }
    }
    newest
}

/// The CLI binary; refuses a missing or stale one rather than testing old code.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_HOST_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("debug/sandbox-host");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo build -p sandbox-host` first (`make test` does)",
                bin.display()
            )
        });
    for src in ["host/src", "localbox/src"] {
        assert!(
            newest_mtime(&workspace().join(src)) <= built,
            "{} is older than {src}: run `cargo build -p sandbox-host` first (`make test` does)",
            bin.display()
        );
    }
    bin
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn ndjson(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not an NDJSON line ({e}): {l}"))
            })
            .collect()
    }

    fn stderr_json(&self) -> Value {
        serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {}", self.stderr))
    }
}

/// Waits for a child with a deadline; kills it and fails the test when it is exceeded.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Out {
    // Read both pipes meanwhile (when the caller has not taken them), so the child never blocks.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut s = vec![];
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            s
        })
    }
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Out {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// A CLI user with their own state directory.
struct Cli {
    home: tempfile::TempDir,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new() -> Cli {
        Self::with_config("")
    }

    /// With extra configuration appended to the test's `config.toml`.
    fn with_config(extra: &str) -> Cli {
        let home = tempfile::tempdir().unwrap();
        // Sandboxes live under the home (so they go with it); their uids must be able to reach it.
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            "[localbox]\nroot_dir = {:?}\nidle_exit_secs = 300\n{extra}\n",
            home.path().join("sandboxes").display().to_string()
        );
        std::fs::write(home.path().join("config.toml"), config).unwrap();
        // Its own plugin directory: exactly the plugins these tests expect, whatever else is built.
        let plugins = home.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for name in ["local", "example"] {
            std::fs::copy(plugin_file(name), plugins.join(format!("{name}.wasm"))).unwrap();
        }
        Cli {
            home,
            bin: binary(),
            env: vec![],
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let plugins = self.home.path().join("plugins");
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("SANDBOX_HOST_HOME", self.home.path())
            .env("SANDBOX_HOST_PLUGINS", plugins)
            .env("NO_COLOR", "1")
            .env_remove("SANDBOX_HOST_CONFIG")
            .env_remove("LOCALBOX_URL")
            .env_remove("LOCALBOX_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        wait_bounded(
            self.command(args).spawn().unwrap(),
            CALL_LIMIT,
            &args.join(" "),
        )
    }

    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let mut child = self.command(args).stdin(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        wait_bounded(child, CALL_LIMIT, &args.join(" "))
    }

    /// Runs and expects exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.code,
            0,
            "`{}` failed: {}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.code,
            0,
            "`{}` failed: {}{}",
            all.join(" "),
            out.stdout,
            out.stderr
        );
        out.json()
    }

    fn create(&self, extra: &[&str]) -> String {
        let mut args = vec!["create", "--provider", "local"];
        args.extend_from_slice(extra);
        let id = self.ok(&args).trim().to_string();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "create printed {id:?}"
        );
        id
    }

    fn ids(&self) -> Vec<String> {
        self.json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Cli {
    /// Removes the sandboxes left and stops this home's daemon, so no process outlives the test.
    fn drop(&mut self) {
        let listed = self.run(&["--json", "ls"]);
        if let Ok(Value::Array(records)) = serde_json::from_str::<Value>(&listed.stdout) {
            for r in records {
                if let Some(id) = r["id"].as_str() {
                    let _ = self.run(&["rm", id]);
                }
            }
        }
        let stopped = self.run(&["localbox", "stop"]);
        if stopped.code != 0 && !std::thread::panicking() {
            panic!("localbox stop failed: {}{}", stopped.stdout, stopped.stderr);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / over plain HTTP/1.0; the status line.
fn http_get_status(url: &str) -> std::io::Result<String> {
    let authority = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let mut s = TcpStream::connect(authority)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

#[test]
fn exec_streams_output_and_passes_exit_codes_through() {
    let cli = Cli::new();
    let rec = cli.json(&[
        "create",
        "--provider",
        "local",
        "--name",
        "exec-test",
        "--label",
        "team=cli",
        "--env",
        "GREETING=hello",
    ]);
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["provider"], "local");
    assert_eq!(rec["state"], "running");
    assert_eq!(rec["name"], "exec-test");
    assert_eq!(rec["labels"]["team"], "cli");
    assert_eq!(rec["workdir"], "/workspace");
    assert!(rec["created_at_ms"].as_i64().unwrap() > 0);
    assert!(rec.get("token").is_none());

    // stdout and stderr apart, the command's own exit code.
    let out = cli.run(&["exec", &id, "--", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );

    // NDJSON events.
    let out = cli.run(&[
        "--json",
        "exec",
        &id,
        "--",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.code, 3);
    let events = out.ndjson();
    let text = |kind: &str| {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| e["data"].as_str().unwrap())
            .collect::<String>()
    };
    assert_eq!(text("stdout"), "out\n");
    assert_eq!(text("stderr"), "err\n");
    let last = events.last().unwrap();
    assert_eq!(
        (
            last["type"].as_str(),
            last["exit_code"].as_i64(),
            last["timed_out"].as_bool()
        ),
        (Some("exit"), Some(3), Some(false))
    );

    // The sandbox env, request env, argv kept apart, cwd relative to the workdir.
    assert_eq!(cli.ok(&["exec", &id, "--", "echo $GREETING"]), "hello\n");
    assert_eq!(
        cli.ok(&["exec", &id, "--env", "K=V", "--", "echo $K"]),
        "V\n"
    );
    assert_eq!(
        cli.ok(&["exec", &id, "--", "printf", "%s|", "a b", "c"]),
        "a b|c|"
    );
    cli.ok(&["mkdir", &id, "sub/deep"]);
    assert_eq!(
        cli.ok(&["exec", &id, "--cwd", "sub/deep", "--", "pwd"]),
        "/workspace/sub/deep\n"
    );
    assert_eq!(cli.ok(&["exec", &id, "--", "pwd"]), "/workspace\n");

    // stdin with -i.
    let out = cli.run_with_stdin(&["exec", "-i", &id, "--", "cat"], b"line one\nline two\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "line one\nline two\n"));

    // 124 on timeout, quickly; the JSON exit event says so.
    let started = Instant::now();
    let out = cli.run(&["exec", "--timeout", "1", &id, "--", "sleep 30"]);
    assert_eq!(out.code, 124, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "timeout took {:?}",
        started.elapsed()
    );
    let out = cli.run(&["--json", "exec", "--timeout", "0.5", &id, "--", "sleep 30"]);
    assert_eq!(out.code, 124);
    assert_eq!(out.ndjson().last().unwrap()["timed_out"], true);

    // 127 not found (shell string and argv), 126 not executable.
    assert_eq!(
        cli.run(&["exec", &id, "--", "no-such-command-xyz"]).code,
        127
    );
    assert_eq!(
        cli.run(&["exec", &id, "--", "no-such-command-xyz", "arg"])
            .code,
        127
    );
    assert_eq!(
        cli.run(&["exec", &id, "--", "printf 'echo x' > plain; ./plain"])
            .code,
        126
    );

    // 125 and one clear line for errors of the host: unknown id, unknown provider.
    let out = cli.run(&["exec", "no-such-sandbox", "--", "true"]);
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.starts_with("sandbox-host: error: ") && out.stderr.trim().lines().count() == 1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("no-such-sandbox"), "{}", out.stderr);
    let out = cli.run(&["--json", "exec", "no-such-sandbox", "--", "true"]);
    assert_eq!(out.code, 125);
    assert_eq!(out.stderr_json()["error"]["code"], "host");
    assert!(out.stdout.is_empty());
    let out = cli.run(&["--json", "create", "--provider", "no-such-provider"]);
    assert_eq!(out.code, 125);
    assert!(out.stderr_json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-provider"));
    // Usage errors are 125 too (docker's convention).
    assert_eq!(cli.run(&["exec", &id]).code, 125);

    // Output arrives while the command runs, not at its end.
    let mut child = cli
        .command(&["exec", &id, "--", "echo first; sleep 4; echo second"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send((Instant::now(), line.unwrap()));
        }
    });
    let started = Instant::now();
    let (at, first) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("first line");
    assert_eq!(first, "first");
    assert!(
        at.duration_since(started) < Duration::from_secs(3),
        "first line after {:?}",
        at.duration_since(started)
    );
    let (_, second) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("second line");
    assert_eq!(second, "second");
    let out = wait_bounded(child, CALL_LIMIT, "exec (streaming)");
    assert_eq!(out.code, 0);
}

#[test]
fn lifecycle_commands_and_the_registry() {
    let cli = Cli::new();
    let a = cli.create(&["--label", "team=a", "--name", "first"]);
    let b = cli.create(&["--label", "team=b"]);

    let table = cli.ok(&["ls"]);
    let header = table.lines().next().unwrap();
    for col in ["ID", "PROVIDER", "NAME", "STATE", "LABELS", "CREATED"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        table.contains(&a) && table.contains(&b) && table.contains("team=a"),
        "{table}"
    );
    let ls = cli.json(&["ls", "--label", "team=a"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["id"], a.as_str());
    assert_eq!(ls[0]["registered"], true);
    assert_eq!(ls[0]["name"], "first");
    assert!(cli
        .json(&["ls", "--label", "team=none"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        cli.json(&["ls", "--provider", "local"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let all = cli.json(&["ls", "--all", "--provider", "local"]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|e| e["registered"] == true && e["state"] == "running"),
        "{all}"
    );

    let inspect = cli.json(&["inspect", &a]);
    assert_eq!(inspect["record"]["id"], a.as_str());
    assert_eq!(inspect["provider_view"]["state"], "running");
    assert!(inspect["provider_error"].is_null());
    assert_eq!(inspect["history"][0]["detail"], "created");
    assert!(cli.ok(&["inspect", &a]).contains("history:"));

    // Pause refuses commands (a provider error: 125 with its code), resume brings them back.
    assert_eq!(cli.json(&["pause", &a])["state"], "paused");
    let out = cli.run(&["--json", "exec", &a, "--", "true"]);
    assert_eq!(out.code, 125);
    assert_eq!(out.stderr_json()["error"]["code"], "conflict");
    assert_eq!(cli.json(&["ls", "--label", "team=a"])[0]["state"], "paused");
    assert_eq!(cli.json(&["resume", &a])["state"], "running");
    assert_eq!(cli.ok(&["exec", &a, "--", "echo back"]), "back\n");
    let states: Vec<String> = cli.json(&["inspect", &a])["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["running", "paused", "running"]);

    assert_eq!(cli.json(&["timeout", &a, "600"])["timeout_secs"], 600);
    assert_eq!(cli.ok(&["timeout", &b, "600"]).trim(), b);

    assert_eq!(cli.json(&["rm", &a])["removed"], true);
    assert_eq!(cli.ok(&["rm", &b]).trim(), b);
    assert!(cli.ids().is_empty());
    let out = cli.run(&["--json", "rm", &a]);
    assert_eq!(out.code, 125);
    assert_eq!(out.stderr_json()["error"]["code"], "host");
    assert_eq!(cli.run(&["inspect", &a]).code, 125);
}

#[test]
fn files_copy_both_ways() {
    let cli = Cli::new();
    let id = cli.create(&[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(src.join("a/bin"), &binary).unwrap();
    let script = "#!/bin/sh\necho ran\n";
    std::fs::write(src.join("a/b/run.sh"), script).unwrap();
    std::fs::set_permissions(
        src.join("a/b/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    let remote = |p: &str| format!("{id}:{p}");

    // A file up and down, binary intact.
    cli.ok(&["cp", src.join("a/bin").to_str().unwrap(), &remote("up.bin")]);
    let down = local.path().join("down.bin");
    cli.ok(&["cp", &remote("up.bin"), down.to_str().unwrap()]);
    assert_eq!(std::fs::read(&down).unwrap(), binary);
    // Absolute sandbox paths, and into an existing directory keeping the name.
    cli.ok(&["mkdir", &id, "/workspace/into"]);
    cli.ok(&[
        "cp",
        src.join("a/bin").to_str().unwrap(),
        &remote("/workspace/into"),
    ]);
    assert_eq!(cli.json(&["files", &id, "into/bin"])[0]["size"], 300_000);

    // A tree up: modes kept, symlinks skipped with a warning.
    let out = cli.run(&["--json", "cp", "-r", src.to_str().unwrap(), &remote("tree")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(
        (
            summary["files"].as_u64(),
            summary["directories"].as_u64(),
            summary["bytes"].as_u64()
        ),
        (Some(2), Some(3), Some(300_000 + script.len() as u64))
    );
    assert!(
        summary["skipped"][0].as_str().unwrap().ends_with("link"),
        "{summary}"
    );
    assert!(out.stderr.contains("warning"), "{}", out.stderr);
    assert_eq!(cli.ok(&["exec", &id, "--", "tree/a/b/run.sh"]), "ran\n");

    let table = cli.ok(&["files", &id, "tree/a"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("KIND")
            && header.contains("MODE")
            && header.contains("SIZE")
            && header.contains("NAME"),
        "{table}"
    );
    let bin_row = table
        .lines()
        .find(|l| l.ends_with(" bin"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        bin_row.starts_with("file") && bin_row.contains("0644") && bin_row.contains("300000"),
        "{bin_row}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("directory") && l.ends_with(" b/")),
        "{table}"
    );
    let listing = cli.json(&["files", &id, "tree/a/b"]);
    assert_eq!(listing[0]["name"], "run.sh");
    assert_eq!(listing[0]["kind"], "file");
    assert_eq!(listing[0]["mode"], 0o755);
    assert_eq!(listing[0]["path"], "/workspace/tree/a/b/run.sh");

    // And back down, identical (but the symlink).
    let back = local.path().join("back");
    cli.ok(&["cp", "-r", &remote("tree"), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("a/bin")).unwrap(), binary);
    assert_eq!(
        std::fs::read_to_string(back.join("a/b/run.sh")).unwrap(),
        script
    );
    assert_eq!(
        std::fs::metadata(back.join("a/b/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert!(!back.join("link").exists());

    // Errors: a directory without -r, a missing source, no sandbox operand, a path escape.
    assert_eq!(
        cli.run(&["cp", &remote("tree"), back.to_str().unwrap()])
            .code,
        125
    );
    assert_eq!(
        cli.run(&["cp", &remote("nope"), back.to_str().unwrap()])
            .code,
        125
    );
    assert_eq!(
        cli.run(&[
            "cp",
            src.join("a/bin").to_str().unwrap(),
            local.path().join("x").to_str().unwrap()
        ])
        .code,
        125
    );
    let out = cli.run(&[
        "--json",
        "cp",
        &remote("../../../etc/passwd"),
        local.path().join("p").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 125);
    assert_eq!(out.stderr_json()["error"]["code"], "forbidden");

    // rm-path and mkdir.
    assert_eq!(cli.json(&["mkdir", &id, "made/deep"])["path"], "made/deep");
    assert_eq!(cli.json(&["files", &id, "made"])[0]["name"], "deep");
    assert_eq!(
        cli.run(&["rm-path", &id, "tree"]).code,
        125,
        "a non-empty directory needs -r"
    );
    cli.ok(&["rm-path", "-r", &id, "tree"]);
    let out = cli.run(&["--json", "files", &id, "tree"]);
    assert_eq!(out.code, 125);
    assert_eq!(out.stderr_json()["error"]["code"], "not_found");
}

#[test]
fn a_background_process_outlives_the_invocation_that_started_it() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: /usr/bin/python3 is needed for the web server inside the sandbox");
        return;
    }
    let cli = Cli::new();
    let id = cli.create(&[]);
    cli.ok(&["exec", &id, "--", "echo served > index.html"]);
    let port = free_port().to_string();
    let pid = cli
        .ok(&[
            "exec",
            "--detach",
            &id,
            "--",
            "python3",
            "-m",
            "http.server",
            &port,
            "--bind",
            "127.0.0.1",
        ])
        .trim()
        .to_string();
    assert!(!pid.is_empty());

    // A later invocation finds the port; the test reaches it from outside.
    let endpoint = cli.json(&["port", &id, &port]);
    let url = endpoint["url"].as_str().unwrap().to_string();
    assert!(url.ends_with(&port), "{endpoint}");
    assert!(endpoint["headers"].is_object());
    assert_eq!(cli.ok(&["port", &id, &port]).trim(), url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get_status(&url) {
            Ok(status) if status.contains(" 200 ") => break,
            other if Instant::now() > deadline => {
                panic!("the server never answered at {url}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    // And another invocation reaches it from inside the sandbox.
    let fetch = format!("import urllib.request; print(urllib.request.urlopen('{url}/index.html').read().decode().strip())");
    assert_eq!(
        cli.ok(&["exec", &id, "--", "python3", "-c", &fetch]),
        "served\n"
    );

    let ps = cli.json(&["ps", &id]);
    let proc = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid.as_str())
        .unwrap_or_else(|| panic!("{ps}"));
    assert_eq!(proc["running"], true);
    assert!(proc["command"].as_str().unwrap().contains("http.server"));
    assert!(cli.ok(&["ps", &id]).contains("running"));

    // kill: names and numbers; a bad name is refused.
    assert_eq!(cli.run(&["kill", &id, &pid, "--signal", "BOGUS"]).code, 125);
    assert_eq!(
        cli.json(&["kill", &id, &pid, "--signal", "KILL"])["signal"],
        9
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        let ps = cli.json(&["ps", &id]);
        let p = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid.as_str())
            .cloned()
            .unwrap();
        if p["running"] == false {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "still running after SIGKILL: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exited["exit_code"], 128 + 9);
    assert!(http_get_status(&url).is_err(), "the server still answers");
    assert_eq!(
        cli.json(&["exec", "--detach", &id, "--", "sleep 30"])["running"],
        true
    );
}

#[test]
fn run_creates_executes_and_destroys() {
    let cli = Cli::new();
    let out = cli.run(&["run", "--provider", "local", "--", "echo hi; exit 7"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (7, "hi\n"),
        "{}",
        out.stderr
    );
    assert!(cli.ids().is_empty());

    let out = cli.run(&[
        "--json",
        "run",
        "--provider",
        "local",
        "--label",
        "k=v",
        "--",
        "echo hi",
    ]);
    assert_eq!(out.code, 0);
    let events = out.ndjson();
    assert_eq!(events[0]["type"], "created");
    assert_eq!(events[0]["provider"], "local");
    assert!(events[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(events.last().unwrap()["type"], "exit");

    assert_eq!(
        cli.run(&[
            "run",
            "--provider",
            "local",
            "--exec-timeout",
            "1",
            "--",
            "sleep 30"
        ])
        .code,
        124
    );
    assert_eq!(
        cli.run(&["run", "--provider", "local", "--", "no-such-command-xyz"])
            .code,
        127
    );
    assert!(cli.ids().is_empty());

    // Ctrl-C: exit 130, and the sandbox is destroyed all the same.
    let child = cli
        .command(&["run", "--provider", "local", "--", "echo started; sleep 60"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.ids().is_empty() {
        assert!(Instant::now() < deadline, "run never created its sandbox");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, "INT");
    let out = wait_bounded(child, Duration::from_secs(30), "run (interrupted)");
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(cli.ids().is_empty(), "the interrupted run left its sandbox");
}

#[test]
fn plugins_doctor_config_and_the_daemon() {
    let cli = Cli::with_config("[plugins.example]\nsecrets.api-key = \"literal-secret-abc\"\n");
    let plugins = cli.json(&["plugins"]);
    let local = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local")
        .unwrap_or_else(|| panic!("{plugins}"));
    assert_eq!(local["contract_version"], "0.1.0");
    assert!(local["path"].as_str().unwrap().ends_with("local.wasm"));
    assert_eq!(local["sha256"].as_str().unwrap().len(), 64);
    let caps: Vec<&str> = local["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        caps.contains(&"streaming") && caps.contains(&"background"),
        "{caps:?}"
    );
    assert!(
        local["allow"][0]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{local}"
    );
    assert_eq!(local["bound_secrets"][0], "localbox-token");
    let human = cli.ok(&["plugins"]);
    assert!(
        human.contains("local ") && human.contains("capabilities:"),
        "{human}"
    );

    // The daemon the plugins command started.
    let status = cli.json(&["localbox", "status"]);
    assert_eq!(status["running"], true);
    let daemon_pid = status["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{daemon_pid}")).exists());

    let out = cli.run(&["doctor", "--provider", "local"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("all checks passed"), "{}", out.stdout);
    let doctor = cli.json(&["doctor", "--provider", "local"]);
    assert_eq!(doctor["ok"], true);
    let checks = doctor["plugins"][0]["checks"].as_array().unwrap();
    for name in [
        "loaded",
        "setting localbox-url",
        "secret localbox-token",
        "bubblewrap",
        "localbox",
    ] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {doctor}"));
        assert_eq!(c["status"], "ok", "{c}");
    }
    assert!(
        checks
            .iter()
            .any(|c| c["name"].as_str().unwrap().starts_with("preflight ")),
        "{doctor}"
    );
    let out = cli.run(&["--json", "doctor", "--provider", "no-such-provider"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.json()["ok"], false);

    // config show: every preset, secrets as their source and status, never their value.
    let mut show = cli.command(&["--json", "config", "show"]);
    show.env("E2B_API_KEY", "env-secret-xyz");
    let out = wait_bounded(show.spawn().unwrap(), CALL_LIMIT, "config show");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stdout.contains("env-secret-xyz") && !out.stdout.contains("literal-secret-abc"),
        "{}",
        out.stdout
    );
    let config = out.json();
    assert_eq!(config["config_file_found"], true);
    assert!(config["localbox"]["root_dir"]
        .as_str()
        .unwrap()
        .ends_with("sandboxes"));
    let e2b = &config["plugins"]["e2b"];
    assert_eq!(e2b["secrets"]["api-key"]["source"], "env E2B_API_KEY");
    assert_eq!(e2b["secrets"]["api-key"]["status"], "set");
    assert_eq!(e2b["settings"]["domain"]["value"], "e2b.app");
    assert_eq!(e2b["loaded"], false);
    assert_eq!(
        config["plugins"]["example"]["secrets"]["api-key"]["source"],
        "<literal>"
    );
    assert_eq!(config["plugins"]["local"]["loaded"], true);
    assert_eq!(config["plugins"]["local"]["limits"]["file_mb"], 64);
    let human = cli.ok(&["config", "show"]);
    assert!(
        human.contains("[plugins.local]") && human.contains("[localbox]"),
        "{human}"
    );
    assert!(!human.contains("literal-secret-abc"), "{human}");

    // localbox stop ends the daemon; a second stop finds none.
    assert_eq!(cli.json(&["localbox", "stop"])["stopped"], true);
    assert_eq!(cli.json(&["localbox", "status"])["running"], false);
    let gone = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{daemon_pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").unwrap().1.starts_with('Z'))
    {
        assert!(
            Instant::now() < gone,
            "the daemon {daemon_pid} is still alive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cli.ok(&["localbox", "stop"]).contains("no localbox daemon"));
    // The next command that needs it starts a new one.
    let id = cli.create(&[]);
    assert_eq!(cli.ok(&["exec", &id, "--", "echo again"]), "again\n");
}

#[test]
fn a_standalone_localbox_serves_other_homes_and_attach_registers() {
    let server_home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(server_home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        server_home.path().join("config.toml"),
        format!(
            "[localbox]\nroot_dir = {:?}\n",
            server_home.path().join("sb").display().to_string()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = Command::new(binary())
        .args(["localbox", "--listen", &format!("127.0.0.1:{port}")])
        .env("SANDBOX_HOST_HOME", server_home.path())
        .env_remove("LOCALBOX_TOKEN")
        .env_remove("SANDBOX_HOST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut token = None;
    while token.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("localbox --listen printed no token");
        token = line.strip_prefix("token: ").map(str::to_string);
    }
    let token = token.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "localbox --listen is not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}");

    let user = || {
        let mut cli = Cli::new();
        cli.env = vec![
            ("LOCALBOX_URL".into(), url.clone()),
            ("LOCALBOX_TOKEN".into(), token.clone()),
        ];
        cli
    };
    let (a, c) = (user(), user());
    let id = a.create(&["--label", "shared=yes"]);
    // Another home sees it only by asking the provider, then attaches.
    assert!(c.ids().is_empty());
    let all = c.json(&["ls", "--all", "--provider", "local"]);
    let found = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(found["registered"], false);
    assert_eq!(found["labels"]["shared"], "yes");
    let rec = c.json(&["attach", "--provider", "local", &id]);
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(c.ids(), vec![id.clone()]);
    assert_eq!(c.ok(&["exec", &id, "--", "echo attached"]), "attached\n");
    // The operator's localbox was used: no daemon was started.
    assert_eq!(c.json(&["localbox", "status"])["running"], false);
    c.ok(&["rm", &id]);
    // The first home's record is now stale: the provider says not found.
    let inspect = a.json(&["inspect", &id]);
    assert_eq!(inspect["provider_error"]["code"], "not_found");
    a.ok(&["rm", &id]);
    drop((a, c));

    signal(server.id(), "INT");
    let out = wait_bounded(server, Duration::from_secs(30), "localbox --listen");
    assert_eq!(out.code, 0, "{}", out.stderr);
}
