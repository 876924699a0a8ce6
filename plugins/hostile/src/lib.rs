//! `hostile`: a test fixture that misbehaves on purpose, to prove the host's limits hold.
//!
//! `exec` picks an attack from the command's first word (argv[0], or the first word of a shell
//! string); the URL argument defaults to the `target-url` setting:
//!
//! | command | what it does |
//! |---|---|
//! | `ok` | exit 0, stdout-tail `ok` (the well-behaved control) |
//! | `spin` | loops forever without I/O (the CPU budget must trap it) |
//! | `alloc N` | allocates and touches N MiB (default 1024) in 1 MiB blocks; then exit 0 |
//! | `egress URL` | GET URL; stdout-tail is the status, or the error is returned |
//! | `steal URL` | looks for the bound secret everywhere it can (env, args, settings, its own `authorization` header, the response) and reports all it saw in stdout-tail and the log |
//! | `huge URL` | GET URL and reads the whole body; `Err` with what happened when it is cut |
//! | `trap` | executes `unreachable` |
//! | `hang` | blocks for an hour on a monotonic-clock pollable (the wall-clock timeout must end it) |
//! | `emit N` | emits N stdout chunks (default 10), then exit 0 |
//! | `trailers URL` | GET URL, reads the body, then the trailers (HTTP/2, gRPC); stdout-tail lists them |
//! | `token` | stdout-tail is the sandbox token the host passed in |
//! | `refresh T` | hands the host a refreshed token `T` |
//!
//! `create` answers a fake sandbox `h1` (workdir `/`), `get` the same, `destroy` succeeds;
//! the other calls are `unsupported`.

use std::hint::black_box;
use std::time::Duration;

use kit::http::Request;
use kit::{
    Capabilities, Command, Error, ExecOutput, ExecRequest, ExecResult, PluginInfo, Result, Sandbox,
    SandboxRef, SandboxState, Spec,
};

struct Hostile;

fn fake_sandbox(id: &str) -> Sandbox {
    Sandbox {
        id: id.into(),
        name: Some("hostile".into()),
        state: SandboxState::Running,
        workdir: "/".into(),
        labels: vec![],
        image: None,
        created_at_ms: None,
        token: None,
    }
}

fn done(stdout: impl AsRef<[u8]>) -> Result<ExecResult> {
    Ok(ExecResult {
        exit_code: 0,
        timed_out: false,
        stdout_tail: stdout.as_ref().to_vec(),
        stderr_tail: vec![],
    })
}

/// The URL argument, or the `target-url` setting.
fn target(args: &[String]) -> Result<String> {
    match args.first() {
        Some(u) => Ok(u.clone()),
        None => kit::setting("target-url")
            .ok_or_else(|| kit::invalid_argument("give a URL or set `target-url`")),
    }
}

fn number(args: &[String], default: u64) -> Result<u64> {
    match args.first() {
        None => Ok(default),
        Some(n) => n
            .parse()
            .map_err(|_| kit::invalid_argument(format!("not a number: {n:?}"))),
    }
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

fn alloc(mib: u64) -> Result<ExecResult> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        // `vec![n; len]` with n != 0 writes every byte: the pages are really touched.
        blocks.push(black_box(vec![(i % 251 + 1) as u8; 1 << 20]));
    }
    black_box(&blocks);
    done(format!("allocated {mib} MiB"))
}

fn egress(url: &str) -> Result<ExecResult> {
    let resp = Request::get(url).send()?;
    done(resp.status().to_string())
}

/// `detach N URL`: lets go of N requests at once, leaving them to the host.
fn detach(args: &[String]) -> Result<ExecResult> {
    let n = number(args, 1)?;
    let url = target(&args[1.min(args.len())..])?;
    for _ in 0..n {
        Request::get(&url).send_detached()?;
    }
    done(format!("let go of {n}"))
}

fn steal(url: &str) -> Result<ExecResult> {
    let mut seen: Vec<String> = Vec::new();
    let mut note = |s: String| {
        kit::warn!("hostile steal: {s}");
        seen.push(s);
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    note(format!("env: {} variables", vars.len()));
    for (k, v) in vars {
        note(format!("env {k}={v}"));
    }
    let args: Vec<String> = std::env::args().collect();
    note(format!("args: {args:?}"));
    for name in [
        "api-key",
        "api_key",
        "API_KEY",
        "secret",
        "token",
        "authorization",
        "target-url",
    ] {
        note(format!("setting {name}: {:?}", kit::setting(name)));
    }

    let forged = Request::get(url)
        .header("authorization", "Bearer stolen")
        .send();
    let mut response = match forged {
        Ok(r) => {
            note("own authorization header: accepted by the host".into());
            r
        }
        Err(e @ Error::Forbidden(_)) if e.message().contains("header") => {
            note(format!(
                "own authorization header: refused ({})",
                e.message()
            ));
            Request::get(url).send().map_err(|e| e.context("steal"))?
        }
        Err(e) => return Err(e.context("steal")),
    };
    note(format!("status: {}", response.status()));
    for (k, v) in response.headers().to_vec() {
        note(format!("response header {k}: {v}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.read_chunk()? {
        if body.len() < 64 * 1024 {
            body.extend_from_slice(&chunk);
        }
    }
    note(format!("response body: {}", String::from_utf8_lossy(&body)));
    done(seen.join("\n"))
}

fn huge(url: &str) -> Result<ExecResult> {
    let mut response = Request::get(url).send()?;
    let status = response.status();
    let mut total: u64 = 0;
    loop {
        match response.read_chunk() {
            Ok(Some(chunk)) => total += chunk.len() as u64,
            Ok(None) => break,
            Err(e) => {
                kit::warn!("hostile huge: cut after {total} bytes: {e:?}");
                return Err(e.context(&format!("huge: status {status}, cut after {total} bytes")));
            }
        }
    }
    done(format!("read {total} bytes, status {status}"))
}

fn trailers(url: &str) -> Result<ExecResult> {
    let mut response = Request::get(url).header("te", "trailers").send()?;
    let mut len = 0;
    while let Some(chunk) = response.read_chunk()? {
        len += chunk.len();
    }
    let status = response.status();
    let trailers = response.trailers()?.unwrap_or_default();
    let list: Vec<String> = trailers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    done(format!(
        "status {status}, body {len} bytes, trailers: {}",
        list.join(", ")
    ))
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    unreachable!("trap");
}

fn hang() -> Result<ExecResult> {
    kit::sleep(Duration::from_secs(3600));
    done("woke up after an hour")
}

fn emit(n: u64) -> Result<ExecResult> {
    let mut out = ExecOutput::new();
    for i in 0..n {
        out.stdout(format!("chunk {i}\n").as_bytes());
    }
    Ok(out.finish(0, false))
}

impl kit::Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Test fixture: misbehaves on purpose to prove the host's limits.".into(),
            capabilities: Capabilities::STREAMING,
            settings: vec![kit::setting_spec(
                "target-url",
                false,
                None,
                "Default URL for the egress, steal and huge attacks",
            )],
            credentials: vec![kit::credential(
                "api-key",
                "authorization",
                "Bearer {}",
                &["http://127.0.0.1:*"],
                "A secret the plugin must never see",
            )],
            hosts: vec!["http://127.0.0.1:*".into()],
            options: vec![],
        }
    }

    fn create(_spec: Spec, _idempotency_key: String) -> Result<Sandbox> {
        Ok(fake_sandbox("h1"))
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        Ok(fake_sandbox(&sandbox.id))
    }

    fn destroy(_sandbox: SandboxRef) -> Result<()> {
        Ok(())
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        let words: Vec<String> = match request.command {
            Command::Argv(argv) => argv,
            Command::Shell(s) => s.split_whitespace().map(String::from).collect(),
        };
        let (attack, args) = match words.split_first() {
            Some((a, rest)) => (a.as_str(), rest),
            None => return Err(kit::invalid_argument("empty command")),
        };
        kit::info!("hostile: {attack} {args:?}");
        match attack {
            "ok" => done("ok"),
            "spin" => spin(),
            "alloc" => alloc(number(args, 1024)?),
            "egress" => egress(&target(args)?),
            "detach" => detach(args),
            "steal" => steal(&target(args)?),
            "huge" => huge(&target(args)?),
            "trap" => trap(),
            "hang" => hang(),
            "emit" => emit(number(args, 10)?),
            "trailers" => trailers(&target(args)?),
            "token" => done(sandbox.token.unwrap_or_default()),
            "refresh" => {
                kit::refresh_token(args.first().map_or("", String::as_str));
                done("refreshed")
            }
            other => Err(kit::invalid_argument(format!("unknown attack {other:?}"))),
        }
    }
}

kit::export!(Hostile);
