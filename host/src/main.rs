//! The `sandbox-host` command line (see `cli`).

mod cli;

#[tokio::main]
async fn main() {
    std::process::exit(cli::main().await)
}
