//! The one error type of the engine and the HTTP API.

use std::fmt;
use std::io;

/// Error category; maps 1:1 to an HTTP status and to the `code` field of JSON errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidArgument,
    Conflict,
    Unauthorized,
    Forbidden,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The wire name (`not_found`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status code used for this category.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a category plus a human-readable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }

    /// Maps an OS error met while working on `what` (usually a sandbox path) to a category.
    ///
    /// `EXDEV`/`ELOOP` are what `openat2(RESOLVE_BENEATH)` and `O_NOFOLLOW` report for escapes.
    pub fn from_io(err: io::Error, what: &str) -> Self {
        let code = match err.raw_os_error() {
            Some(libc::ENOENT) => ErrorCode::NotFound,
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) | Some(libc::EBUSY) => ErrorCode::Conflict,
            Some(libc::EXDEV) | Some(libc::ELOOP) => {
                return Error::forbidden(format!("{what}: path escapes the sandbox"))
            }
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => ErrorCode::Forbidden,
            Some(libc::ENOTDIR)
            | Some(libc::EISDIR)
            | Some(libc::ENAMETOOLONG)
            | Some(libc::EINVAL)
            | Some(libc::ENXIO) => ErrorCode::InvalidArgument,
            Some(libc::EAGAIN) | Some(libc::ENOSPC) | Some(libc::EMFILE) | Some(libc::ENFILE)
            | Some(libc::EDQUOT) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        Error::new(code, format!("{what}: {err}"))
    }
}
