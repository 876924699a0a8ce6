//! sandbox-host: one host, many sandbox providers.
//!
//! Provider adapters are WebAssembly components implementing the `sandbox:provider` contract
//! (`wit/provider.wit`). The host loads them from a directory, gives each nothing but outbound
//! HTTP to the hosts the operator granted, a clock and randomness, keeps every API key on the
//! host side, and enforces per-call limits. See [`HostBuilder`] to embed it.

mod bindings;
pub mod config;
mod error;
mod host;
pub mod json;
pub mod local;
pub mod outbound;
pub mod plugin;
pub mod plugins;
pub mod policy;
pub mod registry;
pub mod registry_pg;
pub mod retry;
mod sandbox;
pub mod serve;
mod types_ext;

pub use error::{describe as describe_provider_error, Error, PluginFault, ProviderError};
pub use host::{default_home, default_plugin_dirs, Host, HostBuilder, RuntimeStatus, StatusEvent};
pub use plugin::runtime::EngineOptions;
pub use plugin::state::OutputSink;
pub use sandbox::{state_name, Provider, Sandbox, SandboxInfo};

/// The contract's types, as the host sees them.
pub mod types {
    pub use crate::bindings::types::*;
}
