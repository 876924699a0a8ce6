//! `sandbox-emulator PROVIDER [--listen ADDR] [--isolation bubblewrap|none] [--fault RULE]…`
//!
//! Serves a local emulator of a provider's real API; the first line on stdout is its base URL.
//! Sandboxes really run (through localbox); faults are injected on request (see
//! `emulator_common` for the rule syntax and the `/_emulator/faults` admin routes).

use clap::{Parser, Subcommand};
use emulator_common::CommonArgs;

#[derive(Parser)]
#[command(
    name = "sandbox-emulator",
    version,
    about = "Local emulators of sandbox providers' APIs"
)]
struct Cli {
    #[command(subcommand)]
    provider: Provider,
}

#[derive(Subcommand)]
enum Provider {
    /// E2B: control plane and envd (Connect-RPC) on one origin.
    E2b(CommonArgs),
    /// Daytona: API and toolbox.
    Daytona(CommonArgs),
    /// Runloop: devboxes API.
    Runloop(CommonArgs),
    /// Modal: gRPC (h2c) control plane and task command router.
    Modal(CommonArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (args, make): (CommonArgs, fn(emulator_common::Options) -> axum::Router) =
        match cli.provider {
            Provider::E2b(a) => (a, emulator_e2b::router),
            Provider::Daytona(a) => (a, emulator_daytona::router),
            Provider::Runloop(a) => (a, emulator_runloop::router),
            Provider::Modal(a) => (a, emulator_modal::router),
        };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let (opts, _root) = emulator_common::options(&args, base_url.clone())?;
    let faults = opts.faults.clone();
    let router = emulator_common::with_faults(make(opts), faults);
    // The first line of stdout is the base URL: scripts and tests read it.
    println!("{base_url}");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        r = emulator_common::serve(listener, router) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
