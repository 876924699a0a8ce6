//! Conveniences on the contract's generated types.

use crate::bindings::types::{Command, ExecRequest, Spec};

#[allow(clippy::derivable_impls)] // generated type: cannot derive
impl Default for Spec {
    fn default() -> Self {
        Spec {
            image: None,
            name: None,
            env: vec![],
            labels: vec![],
            timeout_secs: None,
            cpu: None,
            memory_mb: None,
            disk_mb: None,
            workdir: None,
            ports: vec![],
            options: vec![],
        }
    }
}

impl ExecRequest {
    /// Runs `command` with a POSIX shell.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::new(Command::Shell(command.into()))
    }

    /// Runs a program with arguments.
    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    fn new(command: Command) -> Self {
        ExecRequest {
            command,
            cwd: None,
            env: vec![],
            timeout_ms: None,
            stdin: None,
        }
    }
}
