//! The `sandbox-host` command line: argument parsing (`args`), building a [`Host`] for one
//! invocation, the localbox daemon the local provider needs (`daemon`), the commands (`info`,
//! `lifecycle`, `exec`, `files`) and their output (`output`, JSON shapes in `docs/cli-json.md`).
//!
//! Exit codes follow docker's and timeout(1)'s conventions: a command run in a sandbox passes
//! its own code through (126/127 included), 124 when it timed out, 130 after Ctrl-C, 125 for
//! errors of sandbox-host or the provider (usage errors too), 1 when `doctor` found a problem.

mod args;
mod daemon;
mod exec;
mod files;
mod info;
mod lifecycle;
mod output;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;

use sandbox_host::config::Config;
use sandbox_host::registry::{SessionStore, SqliteStore};
use sandbox_host::{Host, HostBuilder};

use args::{Cli, Command};

/// Exit code for errors of sandbox-host itself or of the provider.
pub const EXIT_HOST: i32 = 125;
/// Exit code after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A failure reported as one line (or one JSON object) on stderr, exit code 125.
#[derive(Debug)]
pub struct Failure {
    /// The provider error's code (`not_found`, `unauthorized`, …) or `host`.
    pub code: String,
    pub message: String,
}

pub type Res<T> = Result<T, Failure>;

impl Failure {
    pub fn host(message: impl Into<String>) -> Self {
        Failure {
            code: "host".into(),
            message: message.into(),
        }
    }
}

impl From<sandbox_host::Error> for Failure {
    fn from(e: sandbox_host::Error) -> Self {
        let code = e.provider_error().map_or("host", |p| p.code());
        Failure {
            code: code.into(),
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::host(format!("{e:#}"))
    }
}

impl From<sandbox_host::config::ConfigError> for Failure {
    fn from(e: sandbox_host::config::ConfigError) -> Self {
        Failure::host(e.to_string())
    }
}

/// Runs the CLI with the process's arguments; returns the exit code.
pub async fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_HOST } else { 0 };
        }
    };
    let daemon = matches!(cli.command, Command::Localbox { daemon: true, .. });
    init_tracing(cli.verbose, daemon);
    let json = cli.json;
    match dispatch(cli).await {
        Ok(code) => code,
        Err(f) => {
            output::print_error(&f.code, &f.message, json);
            EXIT_HOST
        }
    }
}

/// Logs to stderr: warnings by default, `-v` info, `-vv` debug, `-vvv` trace; `RUST_LOG`
/// overrides. Colours only on a terminal and without `NO_COLOR`.
fn init_tracing(verbose: u8, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::new(level),
    };
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// The configuration and where it came from.
pub struct Setup {
    pub home: PathBuf,
    /// The file read (or looked for, when not given explicitly).
    pub config_file: PathBuf,
    pub config_explicit: bool,
    pub config_found: bool,
    pub config: Config,
}

fn setup(cli: &Cli) -> Res<Setup> {
    let home = sandbox_host::default_home();
    let (config_file, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (home.join("config.toml"), false),
    };
    let config = Config::load(&config_file, !explicit)?;
    Ok(Setup {
        config_found: config_file.is_file(),
        home,
        config_file,
        config_explicit: explicit,
        config,
    })
}

/// How the local provider's localbox was arranged for this invocation.
#[derive(Debug, Clone)]
pub enum Localbox {
    /// The command does not involve the local provider.
    NotNeeded,
    /// The operator pointed the local plugin at a localbox of their own.
    Operator,
    /// The CLI's daemon.
    Daemon(daemon::DaemonInfo),
    /// Starting the daemon failed (for commands that go on without it, e.g. `doctor`).
    Failed(String),
}

/// Everything a command needs.
pub struct Ctx {
    pub host: Host,
    pub json: bool,
    pub setup: Setup,
    pub localbox: Localbox,
}

impl Ctx {
    /// A loaded provider; the error names the directories searched.
    pub fn provider(&self, name: &str) -> Res<sandbox_host::Provider> {
        self.host.provider(name).map_err(|e| {
            let mut f = Failure::from(e);
            let dirs: Vec<String> = self
                .host
                .plugin_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            f.message.push_str(&format!(
                " (plugin directories: {}; see `sandbox-host plugins`)",
                dirs.join(", ")
            ));
            f
        })
    }

    /// Resolves a sandbox id (with `--provider` to disambiguate).
    pub fn sandbox(&self, target: &args::Target) -> Res<sandbox_host::Sandbox> {
        Ok(self.host.sandbox(&target.id, target.provider.as_deref())?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    No,
    /// The command needs localbox: failing to start it is an error.
    Yes,
    /// The command reports on localbox (doctor, plugins, ls --all): it goes on without it.
    Optional,
}

/// Looks up sandbox ids in the registry before the host is built (the local plugin's settings
/// are resolved when it loads, so whether localbox is needed must be known first).
struct Lookup(Option<SqliteStore>);

impl Lookup {
    fn open(setup: &Setup) -> Lookup {
        let state_dir = setup
            .config
            .host
            .state_dir
            .clone()
            .unwrap_or_else(|| setup.home.clone());
        let db = state_dir.join("sessions.db");
        Lookup(if db.is_file() {
            SqliteStore::open(&db).ok()
        } else {
            None
        })
    }

    /// Providers that know this id (restricted to `provider` when given).
    fn providers_of(&self, id: &str, provider: Option<&str>) -> Vec<String> {
        let Some(store) = &self.0 else { return vec![] };
        store
            .find(id)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.provider)
            .filter(|p| provider.is_none_or(|want| want == p))
            .collect()
    }
}

const LOCAL: &str = "local";

fn target_need(lookup: &Lookup, id: &str, provider: Option<&str>) -> Need {
    match provider {
        Some(p) if p == LOCAL => Need::Yes,
        Some(_) => Need::No,
        None if lookup.providers_of(id, None).iter().any(|p| p == LOCAL) => Need::Yes,
        None => Need::No,
    }
}

fn local_need(cmd: &Command, lookup: &Lookup) -> Need {
    let all_or_local = |p: &Option<String>| {
        if p.as_deref().is_none_or(|p| p == LOCAL) {
            Need::Optional
        } else {
            Need::No
        }
    };
    match cmd {
        Command::Plugins => Need::Optional,
        Command::Doctor { provider } => all_or_local(provider),
        Command::Ls {
            provider,
            all: true,
            ..
        } => all_or_local(provider),
        Command::Ls { .. }
        | Command::Config { .. }
        | Command::Localbox { .. }
        | Command::Serve { .. } => Need::No,
        Command::Create(c) | Command::Run { create: c, .. } => {
            if c.provider == LOCAL {
                Need::Yes
            } else {
                Need::No
            }
        }
        Command::Attach { provider, .. } => {
            if provider == LOCAL {
                Need::Yes
            } else {
                Need::No
            }
        }
        Command::Inspect(t)
        | Command::Ps(t)
        | Command::Pause(t)
        | Command::Resume(t)
        | Command::Rm(t) => target_need(lookup, &t.id, t.provider.as_deref()),
        Command::Exec { target: t, .. }
        | Command::Kill { target: t, .. }
        | Command::Files { target: t, .. }
        | Command::RmPath { target: t, .. }
        | Command::Mkdir { target: t, .. }
        | Command::Port { target: t, .. }
        | Command::Timeout { target: t, .. } => target_need(lookup, &t.id, t.provider.as_deref()),
        Command::Cp {
            src, dst, provider, ..
        } => {
            let local = [src, dst]
                .iter()
                .filter_map(|op| op.split_once(':'))
                .any(|(id, _)| {
                    lookup
                        .providers_of(id, provider.as_deref())
                        .iter()
                        .any(|p| p == LOCAL)
                });
            if local {
                Need::Yes
            } else {
                Need::No
            }
        }
    }
}

/// Points the local plugin at localbox: the operator's, or the CLI's daemon (started if needed).
fn arrange_localbox(setup: &mut Setup, need: Need) -> Res<Localbox> {
    if need == Need::No {
        return Ok(Localbox::NotNeeded);
    }
    if sandbox_host::local::operator_localbox(&setup.config) {
        return Ok(Localbox::Operator);
    }
    let explicit = setup.config_explicit.then_some(setup.config_file.as_path());
    match daemon::ensure(&setup.home, explicit) {
        Ok(info) => {
            sandbox_host::local::configure_local_plugin(&mut setup.config, &info.url, &info.token);
            Ok(Localbox::Daemon(info))
        }
        Err(e) if need == Need::Optional => Ok(Localbox::Failed(format!(
            "cannot start the localbox daemon: {e:#}"
        ))),
        Err(e) => Err(Failure::host(format!(
            "cannot start the localbox daemon: {e:#}"
        ))),
    }
}

async fn build_host(cli: &Cli, setup: &Setup) -> Res<Host> {
    let mut builder = HostBuilder::new()
        .home(&setup.home)
        .config(setup.config.clone())
        .hot_reload(false);
    if let Some(dir) = &cli.plugins {
        builder = builder.plugins_dir(dir);
    }
    let host = builder.build().await?;
    for e in host.load_errors() {
        tracing::warn!("{e}");
    }
    Ok(host)
}

async fn dispatch(cli: Cli) -> Res<i32> {
    let mut setup = setup(&cli)?;
    if let Command::Localbox {
        listen,
        token,
        action,
        daemon,
    } = &cli.command
    {
        return info::localbox(
            &setup,
            cli.json,
            listen.as_deref(),
            token.clone(),
            action.as_ref(),
            *daemon,
        )
        .await;
    }
    if let Command::Serve { listen } = &cli.command {
        let opts = sandbox_host::serve::ServeOptions {
            listen: listen.clone(),
            home: setup.home.clone(),
            config: setup.config.clone(),
            plugins_dir: cli.plugins.clone(),
            cache_dir: None,
        };
        sandbox_host::serve::run(opts).await?;
        return Ok(0);
    }
    let need = local_need(&cli.command, &Lookup::open(&setup));
    let localbox = arrange_localbox(&mut setup, need)?;
    let host = build_host(&cli, &setup).await?;
    let ctx = Ctx {
        host,
        json: cli.json,
        setup,
        localbox,
    };
    let result = command(&ctx, cli.command).await;
    // Cleanup plugins left to the host (e.g. a daytona exec's session) must not die with us.
    if !ctx.host.settle(SETTLE).await {
        tracing::warn!("requests plugins left to finish were still running at exit");
    }
    result
}

/// How long the CLI waits at exit for requests plugins let go of.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

async fn command(ctx: &Ctx, command: Command) -> Res<i32> {
    match command {
        Command::Plugins => info::plugins(ctx),
        Command::Doctor { provider } => info::doctor(ctx, provider.as_deref()).await,
        Command::Config {
            what: args::ConfigCommand::Show,
        } => info::config_show(ctx),
        Command::Create(c) => lifecycle::create(ctx, &c).await,
        Command::Attach { provider, id } => lifecycle::attach(ctx, &provider, &id).await,
        Command::Inspect(t) => lifecycle::inspect(ctx, &t).await,
        Command::Ls {
            provider,
            labels,
            all,
        } => lifecycle::ls(ctx, provider.as_deref(), &labels, all).await,
        Command::Pause(t) => lifecycle::pause(ctx, &t).await,
        Command::Resume(t) => lifecycle::resume(ctx, &t).await,
        Command::Rm(t) => lifecycle::rm(ctx, &t).await,
        Command::Timeout { target, secs } => lifecycle::timeout(ctx, &target, secs).await,
        Command::Port { target, port } => lifecycle::port(ctx, &target, port).await,
        Command::Exec {
            target,
            cwd,
            env,
            timeout,
            detach,
            stdin,
            command,
        } => {
            let opts = exec::ExecOpts {
                cwd,
                env,
                timeout,
                stdin,
                command,
            };
            exec::exec(ctx, &target, opts, detach).await
        }
        Command::Ps(t) => exec::ps(ctx, &t).await,
        Command::Kill {
            target,
            pid,
            signal,
        } => exec::kill(ctx, &target, &pid, &signal).await,
        Command::Run {
            create,
            exec_timeout,
            command,
        } => exec::run(ctx, &create, exec_timeout, command).await,
        Command::Cp {
            recursive,
            src,
            dst,
            provider,
        } => files::cp(ctx, &src, &dst, recursive, provider.as_deref()).await,
        Command::Files { target, path } => files::files(ctx, &target, &path).await,
        Command::RmPath {
            target,
            path,
            recursive,
        } => files::rm_path(ctx, &target, &path, recursive).await,
        Command::Mkdir { target, path } => files::mkdir(ctx, &target, &path).await,
        Command::Localbox { .. } | Command::Serve { .. } => {
            unreachable!("handled before the host is built")
        }
    }
}

/// Parses `K=V`.
pub fn parse_kv(s: &str, what: &str) -> Res<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Failure::host(format!("invalid {what} {s:?}: expected K=V"))),
    }
}

/// Parses `--env` values: `K=V`, or `K` alone to pass this program's value of K through.
pub fn parse_env(items: &[String]) -> Res<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some(_) => parse_kv(s, "--env"),
            None => match std::env::var(s) {
                Ok(v) if !s.is_empty() => Ok((s.clone(), v)),
                _ => Err(Failure::host(format!(
                    "invalid --env {s:?}: expected K=V (or K set in this environment)"
                ))),
            },
        })
        .collect()
}
