//! The library's error type. Three kinds are kept apart: a provider's own failure (the WIT
//! `error` variant, `Error::Provider`), a plugin that broke a limit or trapped
//! (`Error::Plugin`), and misuse or misconfiguration of the host (everything else).

use std::path::PathBuf;
use std::time::Duration;

pub use crate::bindings::types::Error as ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no provider plugin named {0:?} is loaded")]
    UnknownProvider(String),
    #[error(
        "sandbox {0:?} is not in the registry (`attach` registers a sandbox created elsewhere)"
    )]
    UnknownSandbox(String),
    #[error("sandbox id {id:?} is known under several providers ({providers}); name the provider")]
    AmbiguousSandbox { id: String, providers: String },
    #[error("{plugin}: {call}: {}", describe(error))]
    Provider {
        plugin: String,
        call: &'static str,
        error: ProviderError,
    },
    #[error("{plugin}: {call}: {fault}")]
    Plugin {
        plugin: String,
        call: &'static str,
        fault: PluginFault,
    },
    #[error("plugin {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("session registry: {0}")]
    Registry(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

/// How a plugin call failed without the provider saying so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    #[error("plugin exceeded its memory limit of {} MiB", .0 >> 20)]
    MemoryLimit(usize),
    #[error("plugin exceeded its CPU budget of {0:?} per call")]
    CpuBudget(Duration),
    #[error("plugin call did not finish within {0:?}")]
    Timeout(Duration),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin returned a malformed answer: {0}")]
    Contract(String),
}

impl Error {
    /// The provider's error, if this is one.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            Error::Provider { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the provider said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.provider_error(), Some(ProviderError::NotFound(_)))
            || matches!(self, Error::UnknownSandbox(_))
    }
}

/// A provider error as one human sentence.
pub fn describe(e: &ProviderError) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let f = &mut s;
    let _ = match e {
        ProviderError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
        ProviderError::Forbidden(m) => write!(f, "forbidden: {m}"),
        ProviderError::NotFound(m) => write!(f, "not found: {m}"),
        ProviderError::Conflict(m) => write!(f, "conflict: {m}"),
        ProviderError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        ProviderError::Unsupported(m) => write!(f, "unsupported: {m}"),
        ProviderError::QuotaExceeded(m) => write!(f, "quota exceeded: {m}"),
        ProviderError::RateLimited(r) => match r.retry_after_ms {
            Some(ms) => write!(f, "rate limited (retry after {ms} ms): {}", r.message),
            None => write!(f, "rate limited: {}", r.message),
        },
        ProviderError::Unavailable(m) => write!(f, "unavailable: {m}"),
        ProviderError::Timeout(m) => write!(f, "timeout: {m}"),
        ProviderError::Provider(p) => {
            write!(f, "provider error (HTTP {}): {}", p.status, p.message)
        }
    };
    s
}

impl ProviderError {
    /// A stable snake_case name of the case, for JSON output and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Unauthorized(_) => "unauthorized",
            ProviderError::Forbidden(_) => "forbidden",
            ProviderError::NotFound(_) => "not_found",
            ProviderError::Conflict(_) => "conflict",
            ProviderError::InvalidArgument(_) => "invalid_argument",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::QuotaExceeded(_) => "quota_exceeded",
            ProviderError::RateLimited(_) => "rate_limited",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Provider(_) => "provider",
        }
    }
}
