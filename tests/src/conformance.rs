//! The provider conformance suite: one scenario every provider plugin must pass, driven through
//! sandbox-host's typed API ([`Provider`], [`Sandbox`]) exactly as an embedder would.
//!
//! ```text
//! create → get → exec (stdout/stderr apart, exit code, argv quoting, env, cwd, stdin, timeout)
//!   → output streams while the command runs → background processes (output by offset, exit
//!   code, signals) → a server in the sandbox reached through port-url → files (text, binary,
//!   mode, 10 MiB round trip, dirs, stat, remove, not-found) → list by labels → set-timeout
//!   → pause/resume → destroy → get is not-found
//! ```
//!
//! Steps whose capability the plugin does not declare are skipped (and listed as skipped in the
//! [`Report`]). Every wait is bounded: each step has a time limit, polls give up after seconds.
//! The sandboxes it creates carry the label `conformance=<run id>` and are destroyed even when
//! a step fails.
//!
//! Assumptions about the sandbox image: a POSIX `sh` with `printf`, `cat`, `pwd`, `sleep`,
//! `wc`; for the port step `python3` or `busybox`, and that a server listening on a port of the
//! sandbox is reachable at the URL `port-url` returns (for localbox: the host's loopback, so the
//! port is chosen free on this machine).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use sandbox_host::types::{
    Capabilities, Endpoint, ExecRequest, ExecResult, FileKind, OutputStream, SandboxState, Spec,
};
use sandbox_host::{Provider, ProviderError, Sandbox};

/// The label key marking the suite's sandboxes.
pub const LABEL: &str = "conformance";
/// Size of the large file round trip.
pub const BIG_FILE_BYTES: usize = 10 << 20;

/// Longest any one step may take.
const STEP_LIMIT: Duration = Duration::from_secs(90);
/// Longest a poll (process output, process exit, port reachable) waits.
const POLL_LIMIT: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// What ran, how long each step took, and measurements worth printing.
#[derive(Debug, Default)]
pub struct Report {
    pub provider: String,
    pub steps: Vec<(String, Duration)>,
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: Duration = self.steps.iter().map(|(_, d)| *d).sum();
        writeln!(
            f,
            "conformance of `{}`: {} steps passed in {:.2?}",
            self.provider,
            self.steps.len(),
            total
        )?;
        for (name, d) in &self.steps {
            writeln!(f, "  ok   {name:<28} {d:>10.2?}")?;
        }
        for name in &self.skipped {
            writeln!(f, "  skip {name} (capability not declared)")?;
        }
        for note in &self.notes {
            writeln!(f, "  note {note}")?;
        }
        Ok(())
    }
}

impl Report {
    /// Runs one step under [`STEP_LIMIT`], recording its time; failures carry the step's name.
    async fn step<T>(
        &mut self,
        name: &str,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let out = tokio::time::timeout(STEP_LIMIT, fut)
            .await
            .map_err(|_| anyhow!("no result within {STEP_LIMIT:?}"))
            .and_then(|r| r)
            .with_context(|| format!("conformance step `{name}` of `{}`", self.provider))?;
        self.steps.push((name.to_string(), started.elapsed()));
        Ok(out)
    }

    fn skip(&mut self, name: &str) {
        self.skipped.push(name.to_string());
    }
}

/// Runs the whole suite against `provider`, exercising the optional parts `caps` declares
/// (normally `provider.info()?.capabilities`).
/// Runs the suite with the capabilities the provider declares, prints the report and its total
/// time, and panics with the first failure: what each provider's conformance test does.
pub async fn assert_conformance(provider: &Provider) -> Report {
    assert_conformance_with(provider, |_, _| {}).await
}

/// [`assert_conformance`], with `adapt` given the suite's sandbox spec and the port its
/// "port-url" step will serve on: for a provider that exposes only ports declared in its own
/// way (Modal: `unencrypted-ports`, for a tunnel the suite's plain HTTP client can reach).
pub async fn assert_conformance_with(
    provider: &Provider,
    adapt: impl FnOnce(&mut Spec, u16),
) -> Report {
    let caps = provider.info().expect("provider info").capabilities;
    let started = std::time::Instant::now();
    let report = run_conformance(provider, caps, adapt)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{report}total {:.2?}", started.elapsed());
    report
}

pub async fn run_conformance(
    provider: &Provider,
    caps: Capabilities,
    adapt: impl FnOnce(&mut Spec, u16),
) -> anyhow::Result<Report> {
    let mut report = Report {
        provider: provider.name().to_string(),
        ..Default::default()
    };
    let run_id = format!("run-{}", crate::localbox_support::random_hex(6));
    // The port the "port-url" step serves on: free on this machine (providers whose sandboxes
    // share the host's network need that), chosen before the sandbox for `adapt`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut spec = Spec {
        labels: vec![(LABEL.into(), run_id.clone())],
        env: vec![("CONFORMANCE_SPEC_ENV".into(), "from-spec".into())],
        ..Spec::default()
    };
    adapt(&mut spec, port);
    let sandbox = report
        .step("create", async { Ok(provider.create(spec).await?) })
        .await?;
    let result = scenario(provider, &sandbox, caps, &run_id, port, &mut report).await;
    if result.is_err() {
        let _ = sandbox.destroy().await;
    }
    result.map(|()| report)
}

async fn scenario(
    provider: &Provider,
    sandbox: &Sandbox,
    caps: Capabilities,
    run_id: &str,
    port: u16,
    report: &mut Report,
) -> anyhow::Result<()> {
    let workdir = report
        .step("get", async {
            let info = sandbox.info().await?;
            ensure!(info.id == sandbox.id(), "get returned id {:?}", info.id);
            ensure!(
                info.state == SandboxState::Running,
                "state {:?} after create",
                info.state
            );
            ensure!(
                info.labels.contains(&(LABEL.into(), run_id.into())),
                "labels {:?} lack ours",
                info.labels
            );
            ensure!(
                info.workdir.starts_with('/'),
                "workdir {:?} is not absolute",
                info.workdir
            );
            Ok(info.workdir)
        })
        .await?;

    report
        .step("exec: streams and exit code", exec_basics(sandbox))
        .await?;
    report
        .step("exec: env and cwd", exec_env_cwd(sandbox, &workdir))
        .await?;
    if caps.contains(Capabilities::STDIN) {
        report.step("exec: stdin", exec_stdin(sandbox)).await?;
    } else {
        report.skip("exec: stdin");
    }
    report.step("exec: timeout", exec_timeout(sandbox)).await?;
    if caps.contains(Capabilities::STREAMING) {
        let note = report
            .step("exec: output while running", exec_streaming(sandbox))
            .await?;
        report.notes.push(note);
    } else {
        report.skip("exec: output while running");
    }
    if caps.contains(Capabilities::BACKGROUND) {
        report
            .step("background processes", background(sandbox))
            .await?;
    } else {
        report.skip("background processes");
    }
    if caps.contains(Capabilities::BACKGROUND) && caps.contains(Capabilities::PORTS) {
        let note = report
            .step("port-url reaches a server", ports(sandbox, port))
            .await?;
        report.notes.push(note);
    } else {
        report.skip("port-url reaches a server");
    }
    if caps.contains(Capabilities::FILES) {
        report
            .step("files: small, binary, mode", files_small(sandbox, &workdir))
            .await?;
        let note = report
            .step("files: 10 MiB round trip", files_big(sandbox))
            .await?;
        report.notes.push(note);
        report
            .step("files: dirs, stat, remove", files_dirs(sandbox))
            .await?;
    } else {
        report.skip("files");
    }
    report
        .step(
            "list by labels",
            list_by_labels(provider, sandbox, run_id, caps),
        )
        .await?;
    if caps.contains(Capabilities::SET_TIMEOUT) {
        report
            .step("set-timeout", async {
                sandbox.set_timeout(3600).await?;
                let state = sandbox.info().await?.state;
                ensure!(
                    state == SandboxState::Running,
                    "state {state:?} after set-timeout"
                );
                Ok(())
            })
            .await?;
    } else {
        report.skip("set-timeout");
    }
    if caps.contains(Capabilities::PAUSE_RESUME) {
        report
            .step("pause and resume", pause_resume(sandbox, caps))
            .await?;
    } else {
        report.skip("pause and resume");
    }
    report
        .step("destroy, then get is not-found", async {
            sandbox.destroy().await?;
            // Through the provider, not the registry (which forgot the sandbox on destroy).
            match provider.attach(sandbox.id()).await {
                Ok(_) => bail!("get still finds the sandbox after destroy"),
                Err(e) if matches!(e.provider_error(), Some(ProviderError::NotFound(_))) => Ok(()),
                Err(e) => bail!("get after destroy: expected not-found, got {e}"),
            }
        })
        .await
}

// ---------------------------------------------------------------------------------------------
// exec

/// An exec's result with the output chunks streamed to the caller, timed from the call.
struct Captured {
    result: ExecResult,
    chunks: Vec<(Duration, OutputStream, Vec<u8>)>,
    elapsed: Duration,
}

impl Captured {
    fn streamed(&self, stream: OutputStream) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|(_, s, _)| *s == stream)
            .flat_map(|(_, _, b)| b.clone())
            .collect()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.result.stdout_tail).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.result.stderr_tail).into_owned()
    }
    /// Streamed output must be what the tails say (outputs here are far below any tail size).
    fn check_stream_matches_tail(&self) -> anyhow::Result<()> {
        ensure!(
            self.streamed(OutputStream::Stdout) == self.result.stdout_tail,
            "streamed stdout differs from stdout-tail"
        );
        ensure!(
            self.streamed(OutputStream::Stderr) == self.result.stderr_tail,
            "streamed stderr differs from stderr-tail"
        );
        Ok(())
    }
}

async fn run(sandbox: &Sandbox, request: ExecRequest) -> anyhow::Result<Captured> {
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = chunks.clone();
    let started = Instant::now();
    let result = sandbox
        .exec(
            request,
            Some(Box::new(move |stream, bytes: &[u8]| {
                sink.lock()
                    .unwrap()
                    .push((started.elapsed(), stream, bytes.to_vec()))
            })),
        )
        .await?;
    let elapsed = started.elapsed();
    let chunks = std::mem::take(&mut *chunks.lock().unwrap());
    Ok(Captured {
        result,
        chunks,
        elapsed,
    })
}

async fn sh(sandbox: &Sandbox, script: &str) -> anyhow::Result<Captured> {
    run(sandbox, ExecRequest::shell(script)).await
}

/// Runs `script` and requires exit code 0; returns stdout.
async fn sh_ok(sandbox: &Sandbox, script: &str) -> anyhow::Result<String> {
    let c = sh(sandbox, script).await?;
    ensure!(
        c.result.exit_code == 0,
        "`{script}` exited {}: {}",
        c.result.exit_code,
        c.stderr()
    );
    Ok(c.stdout())
}

async fn exec_basics(sandbox: &Sandbox) -> anyhow::Result<()> {
    let c = sh(
        sandbox,
        "printf 'to out\\n'; printf 'to err\\n' >&2; exit 3",
    )
    .await?;
    ensure!(
        c.result.exit_code == 3,
        "exit code {} (expected 3)",
        c.result.exit_code
    );
    ensure!(!c.result.timed_out, "timed-out set on a quick command");
    ensure!(c.stdout() == "to out\n", "stdout {:?}", c.stdout());
    ensure!(c.stderr() == "to err\n", "stderr {:?}", c.stderr());
    c.check_stream_matches_tail()?;

    // A shell syntax error fails that command only; the next one still runs.
    let c = sh(sandbox, "if then fi (").await?;
    ensure!(
        c.result.exit_code != 0 && !c.result.timed_out,
        "a syntax error exited {}",
        c.result.exit_code
    );
    let after = sh_ok(sandbox, "printf still").await?;
    ensure!(after == "still", "after a syntax error: {after:?}");

    // argv words reach the program as they are: no shell splitting or expansion.
    let c = run(
        sandbox,
        ExecRequest::argv(["printf", "%s|%s|%s", "a b", "it's", "$HOME"]),
    )
    .await?;
    ensure!(
        c.result.exit_code == 0,
        "argv printf exited {}: {}",
        c.result.exit_code,
        c.stderr()
    );
    ensure!(
        c.stdout() == "a b|it's|$HOME",
        "argv stdout {:?}",
        c.stdout()
    );

    // Binary output survives the transport.
    let c = sh(sandbox, "printf '\\000\\001\\377\\376'").await?;
    ensure!(
        c.result.stdout_tail == [0, 1, 255, 254],
        "binary stdout {:?}",
        c.result.stdout_tail
    );
    c.check_stream_matches_tail()
}

async fn exec_env_cwd(sandbox: &Sandbox, workdir: &str) -> anyhow::Result<()> {
    let mut req =
        ExecRequest::shell("printf '%s %s' \"$CONFORMANCE_VAR\" \"$CONFORMANCE_SPEC_ENV\"");
    req.env = vec![("CONFORMANCE_VAR".into(), "hello world".into())];
    let c = run(sandbox, req).await?;
    ensure!(
        c.stdout() == "hello world from-spec",
        "env: stdout {:?} (request env, then spec env)",
        c.stdout()
    );

    let pwd = sh_ok(sandbox, "pwd").await?;
    ensure!(
        pwd.trim_end() == workdir,
        "default cwd {:?}, workdir {workdir:?}",
        pwd.trim_end()
    );
    sh_ok(sandbox, "mkdir -p conformance-cwd/inner").await?;
    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some("conformance-cwd/inner".into());
    let c = run(sandbox, req).await?;
    let expected = format!("{}/conformance-cwd/inner", workdir.trim_end_matches('/'));
    ensure!(
        c.stdout().trim_end() == expected,
        "relative cwd: pwd {:?}, expected {expected:?}",
        c.stdout()
    );
    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some(expected.clone());
    let c = run(sandbox, req).await?;
    ensure!(
        c.stdout().trim_end() == expected,
        "absolute cwd: pwd {:?}",
        c.stdout()
    );
    Ok(())
}

async fn exec_stdin(sandbox: &Sandbox) -> anyhow::Result<()> {
    let input: Vec<u8> = b"line one\nline two\n\x00\xff".to_vec();
    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = Some(input.clone());
    let c = run(sandbox, req).await?;
    ensure!(c.result.exit_code == 0, "cat exited {}", c.result.exit_code);
    ensure!(
        c.result.stdout_tail == input,
        "stdin came back as {:?}",
        c.result.stdout_tail
    );
    // Stdin is closed after the bytes: `wc` ends.
    let mut req = ExecRequest::shell("wc -c");
    req.stdin = Some(vec![b'x'; 100_000]);
    let c = run(sandbox, req).await?;
    ensure!(
        c.stdout().trim() == "100000",
        "wc -c of 100000 stdin bytes: {:?}",
        c.stdout()
    );
    // Without stdin, a command that reads it sees its end at once (argv and shell alike).
    for mut req in [
        ExecRequest::argv(["cat"]),
        ExecRequest::shell("cat; echo read-to-end"),
    ] {
        req.timeout_ms = Some(20_000);
        let c = run(sandbox, req).await?;
        ensure!(
            c.result.exit_code == 0 && !c.result.timed_out,
            "a command reading stdin without any: exit {}, timed out {}",
            c.result.exit_code,
            c.result.timed_out
        );
    }
    // A command that ends without reading its stdin (more than a pipe holds): its own result,
    // not an error about the input it left.
    let mut req = ExecRequest::shell("echo early; exit 3");
    req.stdin = Some(vec![b'y'; 4 << 20]);
    let c = run(sandbox, req).await?;
    ensure!(
        (c.result.exit_code, c.stdout().as_str()) == (3, "early\n"),
        "a command that did not read 4 MiB of stdin: exit {}, stdout {:?}",
        c.result.exit_code,
        c.stdout()
    );
    Ok(())
}

async fn exec_timeout(sandbox: &Sandbox) -> anyhow::Result<()> {
    let mut req = ExecRequest::shell("printf before; sleep 30; printf after");
    req.timeout_ms = Some(1000);
    let c = run(sandbox, req).await?;
    ensure!(
        c.result.timed_out,
        "a 30 s command with timeout-ms 1000 did not time out (exit {})",
        c.result.exit_code
    );
    ensure!(
        c.elapsed < Duration::from_secs(10),
        "the timed-out command took {:?} to return",
        c.elapsed
    );
    ensure!(
        c.elapsed >= Duration::from_millis(900),
        "returned after {:?}, before its timeout",
        c.elapsed
    );
    ensure!(
        c.stdout() == "before",
        "stdout of the timed-out command {:?}",
        c.stdout()
    );
    Ok(())
}

/// `printf first; sleep 2; printf second`: the first chunk must reach the caller about 2 s
/// before the call returns.
async fn exec_streaming(sandbox: &Sandbox) -> anyhow::Result<String> {
    // Three seconds: a provider may hold a command's first second to answer quick commands
    // in one request (runloop's `execute`); output after that must flow while it runs.
    let c = sh(sandbox, "printf 'first\\n'; sleep 3; printf 'second\\n'").await?;
    ensure!(
        c.result.exit_code == 0 && c.stdout() == "first\nsecond\n",
        "stdout {:?}",
        c.stdout()
    );
    let arrival = |needle: &str| {
        let mut seen = Vec::new();
        for (t, s, b) in &c.chunks {
            if *s == OutputStream::Stdout {
                seen.extend_from_slice(b);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return Some(*t);
                }
            }
        }
        None
    };
    let first = arrival("first").context("`first` was never streamed")?;
    let second = arrival("second").context("`second` was never streamed")?;
    ensure!(
        c.elapsed.saturating_sub(first) >= Duration::from_millis(1500),
        "`first` arrived at {first:?}, the call returned at {:?}: output was not streamed while the command ran",
        c.elapsed
    );
    ensure!(
        second.saturating_sub(first) >= Duration::from_millis(1500),
        "`first` at {first:?}, `second` at {second:?}"
    );
    Ok(format!(
        "streaming: `first` at {first:.2?}, `second` at {second:.2?}, call returned at {:.2?}",
        c.elapsed
    ))
}

// ---------------------------------------------------------------------------------------------
// background processes and ports

/// Polls `check` every [`POLL_EVERY`] until it gives `Some`, for at most [`POLL_LIMIT`].
async fn eventually<T, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if started.elapsed() > POLL_LIMIT {
            bail!("gave up after {POLL_LIMIT:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Reads a process's output from offset 0 until `done` says enough (or the process ended).
async fn read_output(
    sandbox: &Sandbox,
    pid: &str,
    done: impl Fn(&[u8], &[u8]) -> bool,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let acc = Mutex::new((Vec::new(), Vec::new(), 0u64, 0u64));
    let (acc, done) = (&acc, &done);
    eventually(&format!("output of process {pid}"), || async move {
        let (o, e) = {
            let a = acc.lock().unwrap();
            (a.2, a.3)
        };
        let chunk = sandbox.process_output(pid, o, e).await?;
        let mut a = acc.lock().unwrap();
        ensure!(
            chunk.stdout_next == o + chunk.stdout.len() as u64,
            "stdout-next {} after offset {o} + {} bytes",
            chunk.stdout_next,
            chunk.stdout.len()
        );
        ensure!(
            chunk.stderr_next == e + chunk.stderr.len() as u64,
            "stderr-next {} after offset {e} + {} bytes",
            chunk.stderr_next,
            chunk.stderr.len()
        );
        a.0.extend_from_slice(&chunk.stdout);
        a.1.extend_from_slice(&chunk.stderr);
        a.2 = chunk.stdout_next;
        a.3 = chunk.stderr_next;
        Ok((done(&a.0, &a.1) || !chunk.running).then(|| (a.0.clone(), a.1.clone())))
    })
    .await
}

async fn wait_exit(sandbox: &Sandbox, pid: &str) -> anyhow::Result<Option<i32>> {
    eventually(&format!("process {pid} to end"), || async move {
        let p = sandbox.process_status(pid).await?;
        Ok((!p.running).then_some(p.exit_code))
    })
    .await
}

async fn background(sandbox: &Sandbox) -> anyhow::Result<()> {
    // A short one: output by offsets, then its exit code.
    let short = sandbox
        .start_process(ExecRequest::shell("printf out; printf err >&2; exit 7"))
        .await?;
    ensure!(!short.pid.is_empty(), "empty pid");
    let code = wait_exit(sandbox, &short.pid).await?;
    ensure!(code == Some(7), "exit code {code:?} (expected 7)");
    let (out, err) = read_output(sandbox, &short.pid, |o, e| o == b"out" && e == b"err").await?;
    ensure!(
        out == b"out" && err == b"err",
        "output {:?} / {:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let rest = sandbox.process_output(&short.pid, 3, 3).await?;
    ensure!(
        rest.stdout.is_empty() && rest.stderr.is_empty(),
        "output past the end: {rest:?}"
    );

    // A long one: running, listed, output arrives while it runs, a signal ends it.
    let long = sandbox
        .start_process(ExecRequest::shell("printf 'started\\n'; exec sleep 60"))
        .await?;
    let (out, _) = read_output(sandbox, &long.pid, |o, _| o.starts_with(b"started\n")).await?;
    ensure!(
        out == b"started\n",
        "long process output {:?}",
        String::from_utf8_lossy(&out)
    );
    let status = sandbox.process_status(&long.pid).await?;
    ensure!(
        status.running && status.exit_code.is_none(),
        "status {status:?} of a sleeping process"
    );
    let listed = sandbox.processes().await?;
    ensure!(
        listed.iter().any(|p| p.pid == long.pid && p.running),
        "list-processes {listed:?} lacks {}",
        long.pid
    );
    sandbox.signal_process(&long.pid, 15).await?;
    wait_exit(sandbox, &long.pid).await?;
    Ok(())
}

async fn ports(sandbox: &Sandbox, port: u16) -> anyhow::Result<String> {
    let server = if sh(sandbox, "command -v python3").await?.result.exit_code == 0 {
        "python3 -m http.server"
    } else if sh(sandbox, "command -v busybox").await?.result.exit_code == 0 {
        "busybox httpd -f -p"
    } else {
        bail!("the sandbox has no HTTP server program (python3 or busybox)");
    };
    let token = crate::localbox_support::random_hex(8);
    sh_ok(sandbox, &format!("printf {token} > conformance-port.txt")).await?;
    let proc = sandbox
        .start_process(ExecRequest::shell(format!("exec {server} {port}")))
        .await?;
    let endpoint = sandbox.port_url(port).await?;
    let url = format!(
        "{}/conformance-port.txt",
        endpoint.url.trim_end_matches('/')
    );
    let started = Instant::now();
    let (url_ref, endpoint_ref, pid) = (&url, &endpoint, proc.pid.as_str());
    let fetched = eventually(&format!("GET {url}"), || async move {
        match http_get(url_ref, endpoint_ref).await {
            Ok((200, body)) => Ok(Some(body)),
            _ => {
                let p = sandbox.process_status(pid).await?;
                ensure!(
                    p.running,
                    "the server `{server} {port}` exited ({:?})",
                    p.exit_code
                );
                Ok(None)
            }
        }
    })
    .await;
    let took = started.elapsed();
    sandbox.signal_process(&proc.pid, 9).await?;
    let body = fetched?;
    ensure!(
        body == token.as_bytes(),
        "GET {url} returned {:?}, expected {token:?}",
        String::from_utf8_lossy(&body)
    );
    wait_exit(sandbox, &proc.pid).await?;
    Ok(format!(
        "ports: {} reachable {took:.2?} after start ({server})",
        endpoint.url
    ))
}

/// A plain HTTP GET (no TLS) with the endpoint's headers, bounded to 3 s.
async fn http_get(url: &str, endpoint: &Endpoint) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = http::Request::get(url);
    for (k, v) in &endpoint.headers {
        req = req.header(k, v);
    }
    let req = req.body(Empty::new())?;
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| anyhow!("GET {url}: no answer in 3 s"))?
}

// ---------------------------------------------------------------------------------------------
// files

/// Deterministic pseudo-random bytes (xorshift), so a mismatch is reproducible.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        bail!(
            "{what}: {} bytes back for {} written, first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

async fn files_small(sandbox: &Sandbox, workdir: &str) -> anyhow::Result<()> {
    sandbox
        .write_file("conformance.txt", b"hello files\n".to_vec(), None)
        .await?;
    same_bytes(
        "text file",
        &sandbox.read_file("conformance.txt").await?,
        b"hello files\n",
    )?;
    // Relative paths resolve against the workdir, for exec too.
    let abs = format!("{}/conformance.txt", workdir.trim_end_matches('/'));
    same_bytes(
        "the same file by absolute path",
        &sandbox.read_file(&abs).await?,
        b"hello files\n",
    )?;
    ensure!(
        sh_ok(sandbox, "cat conformance.txt").await? == "hello files\n",
        "exec does not see the written file"
    );

    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    sandbox
        .write_file("conformance.bin", binary.clone(), None)
        .await?;
    same_bytes(
        "binary file",
        &sandbox.read_file("conformance.bin").await?,
        &binary,
    )?;
    // Overwrite truncates.
    sandbox
        .write_file("conformance.bin", b"short".to_vec(), None)
        .await?;
    same_bytes(
        "overwritten file",
        &sandbox.read_file("conformance.bin").await?,
        b"short",
    )?;

    sandbox
        .write_file(
            "conformance.sh",
            b"#!/bin/sh\necho script ran\n".to_vec(),
            Some(0o755),
        )
        .await?;
    let st = sandbox.stat("conformance.sh").await?;
    ensure!(st.kind == FileKind::File, "stat kind {:?}", st.kind);
    ensure!(st.size == 26, "stat size {}", st.size);
    ensure!(
        st.mode & 0o777 == 0o755,
        "mode {:o} (written with 0755)",
        st.mode
    );
    ensure!(st.name == "conformance.sh", "stat name {:?}", st.name);
    ensure!(
        sh_ok(sandbox, "./conformance.sh").await? == "script ran\n",
        "the 0755 script did not run"
    );

    match sandbox.read_file("conformance-missing.txt").await {
        Err(e) if matches!(e.provider_error(), Some(ProviderError::NotFound(_))) => Ok(()),
        Err(e) => bail!("reading a missing file: expected not-found, got {e}"),
        Ok(_) => bail!("reading a missing file succeeded"),
    }
}

async fn files_big(sandbox: &Sandbox) -> anyhow::Result<String> {
    let data = pattern(BIG_FILE_BYTES, 0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    sandbox
        .write_file("conformance-big.bin", data.clone(), None)
        .await?;
    let write = t.elapsed();
    let t = Instant::now();
    let back = sandbox.read_file("conformance-big.bin").await?;
    let read = t.elapsed();
    same_bytes("10 MiB file", &back, &data)?;
    let size = sandbox.stat("conformance-big.bin").await?.size;
    ensure!(size == BIG_FILE_BYTES as u64, "stat size {size}");
    let wc = sh_ok(sandbox, "wc -c < conformance-big.bin").await?;
    ensure!(
        wc.trim() == BIG_FILE_BYTES.to_string(),
        "wc -c in the sandbox says {wc:?}"
    );
    sandbox.remove("conformance-big.bin", false).await?;
    Ok(format!("files: 10 MiB write {write:.2?}, read {read:.2?}"))
}

async fn files_dirs(sandbox: &Sandbox) -> anyhow::Result<()> {
    sandbox.mkdir("conformance-dir/a/b", true).await?;
    sandbox.mkdir("conformance-dir/c", false).await?;
    // With `parents`, an existing directory is fine.
    sandbox.mkdir("conformance-dir/a", true).await?;
    sandbox
        .write_file("conformance-dir/a/b/f.txt", b"deep".to_vec(), None)
        .await?;
    sandbox
        .write_file("conformance-dir/top.txt", b"top".to_vec(), None)
        .await?;

    let entries = sandbox.list_dir("conformance-dir").await?;
    let mut names: Vec<(String, FileKind)> =
        entries.iter().map(|e| (e.name.clone(), e.kind)).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = vec![
        ("a".to_string(), FileKind::Directory),
        ("c".into(), FileKind::Directory),
        ("top.txt".into(), FileKind::File),
    ];
    ensure!(names == expected, "list-dir gave {names:?}");
    let top = entries.iter().find(|e| e.name == "top.txt").unwrap();
    ensure!(
        top.size == 3 && top.path.ends_with("conformance-dir/top.txt"),
        "list-dir entry {top:?}"
    );
    ensure!(
        sandbox.stat("conformance-dir/a").await?.kind == FileKind::Directory,
        "stat of a directory"
    );

    ensure!(
        sandbox.remove("conformance-dir", false).await.is_err(),
        "removing a non-empty directory without recursive succeeded"
    );
    sandbox.remove("conformance-dir/top.txt", false).await?;
    sandbox.remove("conformance-dir", true).await?;
    match sandbox.stat("conformance-dir").await {
        Err(e) if matches!(e.provider_error(), Some(ProviderError::NotFound(_))) => Ok(()),
        Err(e) => bail!("stat after recursive remove: expected not-found, got {e}"),
        Ok(s) => bail!("the directory survived a recursive remove: {s:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// list, pause

async fn list_by_labels(
    provider: &Provider,
    sandbox: &Sandbox,
    run_id: &str,
    caps: Capabilities,
) -> anyhow::Result<()> {
    let other_label = format!("{run_id}-other");
    let other = provider
        .create(Spec {
            labels: vec![(LABEL.into(), other_label.clone())],
            ..Spec::default()
        })
        .await?;
    let checked = async {
        let ids = |labels: &[(&str, &str)]| {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            async move {
                anyhow::Ok(
                    provider
                        .list(&labels)
                        .await?
                        .into_iter()
                        .map(|s| s.id)
                        .collect::<Vec<_>>(),
                )
            }
        };
        let ours = ids(&[(LABEL, run_id)]).await?;
        ensure!(
            ours.contains(&sandbox.id().to_string()),
            "list({LABEL}={run_id}) = {ours:?} lacks {}",
            sandbox.id()
        );
        let theirs = ids(&[(LABEL, &other_label)]).await?;
        ensure!(
            theirs.contains(&other.id().to_string()),
            "list({LABEL}={other_label}) = {theirs:?} lacks {}",
            other.id()
        );
        if caps.contains(Capabilities::LIST_BY_LABELS) {
            ensure!(
                ours == [sandbox.id()],
                "list({LABEL}={run_id}) = {ours:?}, expected only {}",
                sandbox.id()
            );
            ensure!(
                theirs == [other.id()],
                "list({LABEL}={other_label}) = {theirs:?}, expected only {}",
                other.id()
            );
            let none = ids(&[(LABEL, run_id), ("conformance-absent", "x")]).await?;
            ensure!(none.is_empty(), "a label nobody carries matched {none:?}");
        }
        let all = ids(&[]).await?;
        ensure!(
            all.contains(&sandbox.id().to_string()) && all.contains(&other.id().to_string()),
            "list() = {all:?} lacks ours"
        );
        Ok(())
    }
    .await;
    let destroyed = other.destroy().await;
    checked?;
    destroyed?;
    Ok(())
}

async fn pause_resume(sandbox: &Sandbox, caps: Capabilities) -> anyhow::Result<()> {
    sandbox.pause().await?;
    let state = sandbox.info().await?.state;
    ensure!(state == SandboxState::Paused, "state {state:?} after pause");
    let info = sandbox.resume().await?;
    ensure!(
        info.state == SandboxState::Running,
        "resume returned state {:?}",
        info.state
    );
    ensure!(
        sh_ok(sandbox, "printf resumed").await? == "resumed",
        "exec after resume"
    );
    if caps.contains(Capabilities::FILES) {
        same_bytes(
            "a file after pause/resume",
            &sandbox.read_file("conformance.txt").await?,
            b"hello files\n",
        )?;
    }
    Ok(())
}
