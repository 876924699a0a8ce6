//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sandbox-host",
    version,
    about = "Drive sandboxes on any provider through sandboxed wasm plugins"
)]
pub struct Cli {
    /// Operator configuration file (default $SANDBOX_HOST_HOME/config.toml).
    #[arg(long, global = true, env = "SANDBOX_HOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plugin directory (default $SANDBOX_HOST_HOME/plugins and plugins/ beside the executable's directory).
    #[arg(long, global = true, env = "SANDBOX_HOST_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Machine-readable output (JSON; NDJSON events for exec); errors as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct CreateArgs {
    /// Provider plugin name (see `sandbox-host plugins`).
    #[arg(long, short = 'p')]
    pub provider: String,
    /// Image or template.
    #[arg(long)]
    pub image: Option<String>,
    /// A stable name to find the sandbox again.
    #[arg(long)]
    pub name: Option<String>,
    /// Environment variable for every command, K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Label K=V (repeatable).
    #[arg(long = "label", short = 'l', value_name = "K=V")]
    pub labels: Vec<String>,
    /// Seconds until the provider may stop the sandbox.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Provider-specific option K=V (repeatable; see `plugins`).
    #[arg(long = "option", short = 'o', value_name = "K=V")]
    pub options: Vec<String>,
}

/// Selects a sandbox by id; `--provider` disambiguates an id known under several providers.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Sandbox id (as the provider names it).
    pub id: String,
    #[arg(long, short = 'p')]
    pub provider: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List loaded provider plugins.
    Plugins,
    /// Check plugins, credentials and settings without creating anything.
    Doctor {
        #[arg(long, short = 'p')]
        provider: Option<String>,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// Register a sandbox that exists on the provider (created elsewhere).
    Attach {
        #[arg(long, short = 'p')]
        provider: String,
        id: String,
    },
    /// Show a sandbox: registry record, the provider's view, state history.
    Inspect(Target),
    /// List sandboxes in the registry (`--all`: also ask the providers).
    Ls {
        #[arg(long, short = 'p')]
        provider: Option<String>,
        #[arg(long = "label", short = 'l', value_name = "K=V")]
        labels: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Run a command in a sandbox, streaming its output; exits with the command's code.
    Exec {
        #[command(flatten)]
        target: Target,
        /// Working directory (default: the sandbox workdir).
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        #[arg(long = "env", short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Seconds until the command is killed (exit code 124).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Start in the background and print the process id.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Pipe this program's stdin into the command.
        #[arg(short = 'i', long = "interactive")]
        stdin: bool,
        /// The command; one argument is run by a shell, several as argv.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List background processes.
    Ps(Target),
    /// Signal a background process.
    Kill {
        #[command(flatten)]
        target: Target,
        pid: String,
        /// Signal name or number (default TERM).
        #[arg(long, short = 's', default_value = "TERM")]
        signal: String,
    },
    /// Create a sandbox, run one command, destroy it (even on failure or Ctrl-C).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, value_name = "SECS")]
        exec_timeout: Option<f64>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy files: `cp [-r] SRC DST`, with `ID:PATH` on either side.
    Cp {
        #[arg(short = 'r', long)]
        recursive: bool,
        src: String,
        dst: String,
        #[arg(long, short = 'p')]
        provider: Option<String>,
    },
    /// List a directory (or show a file) in a sandbox.
    Files {
        #[command(flatten)]
        target: Target,
        path: String,
    },
    /// Remove a path in a sandbox.
    RmPath {
        #[command(flatten)]
        target: Target,
        path: String,
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Make a directory (and its parents) in a sandbox.
    Mkdir {
        #[command(flatten)]
        target: Target,
        path: String,
    },
    /// Print a URL that reaches PORT inside the sandbox.
    Port {
        #[command(flatten)]
        target: Target,
        port: u16,
    },
    /// Set the sandbox timeout to SECS from now.
    Timeout {
        #[command(flatten)]
        target: Target,
        secs: u64,
    },
    Pause(Target),
    Resume(Target),
    /// Destroy a sandbox.
    Rm(Target),
    /// Serve the HTTP API (/v1, SSE, /metrics, /openapi.json) until SIGTERM.
    Serve {
        /// IP:PORT to listen on (default [serve] listen, else 127.0.0.1:8080). A non-loopback
        /// address needs tokens in [serve].
        #[arg(long)]
        listen: Option<String>,
    },
    /// The local sandbox engine: run it standalone, or stop the CLI's daemon.
    Localbox {
        /// Listen here (e.g. 0.0.0.0:7070) and serve until Ctrl-C.
        #[arg(long)]
        listen: Option<String>,
        /// API token (default: $LOCALBOX_TOKEN, else a new one is printed).
        #[arg(long, env = "LOCALBOX_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: Option<LocalboxCommand>,
        /// Internal: run as the CLI's background daemon.
        #[arg(long, hide = true)]
        daemon: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Show,
}

#[derive(Subcommand, Debug)]
pub enum LocalboxCommand {
    /// Stop the CLI's localbox daemon (sandboxes stay on disk).
    Stop,
    /// Show whether the daemon runs, and where.
    Status,
}
