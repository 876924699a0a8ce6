//! The API's one error shape, `{"error": {"code", "message"}}` (the CLI's, `json::error`), and
//! the HTTP status each library error maps to. Extractor rejections (bad JSON, bad path or
//! query) become the same shape, so no client ever sees a plain-text or HTML error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::error::ProviderError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_secs: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn too_many(code: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after_secs = Some(1);
        e
    }
}

impl ApiError {
    /// The code an error maps to (for metrics' outcome label).
    pub fn from_ref(e: &Error) -> String {
        match e {
            Error::UnknownProvider(_) => "unknown_provider",
            Error::UnknownSandbox(_) => "not_found",
            Error::AmbiguousSandbox { .. } => "ambiguous",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Plugin { .. } => "plugin",
            Error::Provider { error, .. } => error.code(),
            _ => "internal",
        }
        .to_string()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code) = match &e {
            Error::UnknownProvider(_) => (S::NOT_FOUND, "unknown_provider"),
            Error::UnknownSandbox(_) => (S::NOT_FOUND, "not_found"),
            Error::AmbiguousSandbox { .. } => (S::CONFLICT, "ambiguous"),
            Error::InvalidArgument(_) => (S::BAD_REQUEST, "invalid_argument"),
            Error::Plugin { .. } => (S::BAD_GATEWAY, "plugin"),
            Error::Provider { error, .. } => {
                let status = match error {
                    ProviderError::NotFound(_) => S::NOT_FOUND,
                    ProviderError::InvalidArgument(_) => S::BAD_REQUEST,
                    ProviderError::Conflict(_) => S::CONFLICT,
                    ProviderError::Forbidden(_) => S::FORBIDDEN,
                    ProviderError::Unsupported(_) => S::NOT_IMPLEMENTED,
                    ProviderError::QuotaExceeded(_) | ProviderError::RateLimited(_) => {
                        S::TOO_MANY_REQUESTS
                    }
                    ProviderError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
                    ProviderError::Timeout(_) => S::GATEWAY_TIMEOUT,
                    // The host's credentials, not the caller's: a gateway problem.
                    ProviderError::Unauthorized(_) | ProviderError::Provider(_) => S::BAD_GATEWAY,
                };
                let mut err = ApiError::new(status, error.code(), message);
                if let ProviderError::RateLimited(r) = error {
                    err.retry_after_secs = Some(r.retry_after_ms.map_or(1, |ms| ms.div_ceil(1000)));
                }
                return err;
            }
            Error::Load { .. } | Error::Config(_) | Error::Registry(_) | Error::Internal(_) => {
                (S::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(crate::json::error(&self.code, &self.message)),
        )
            .into_response();
        if let Some(s) = self.retry_after_secs {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// `Json<T>` whose rejections are API errors (400 malformed, 413 too large, 415 wrong type).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let code = match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_json",
    };
    ApiError::new(r.status(), code, r.body_text())
}

/// `Path<T>` with API errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| ApiError::bad_request(r.body_text()))
    }
}

/// `Query<T>` with API errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError::bad_request(r.body_text()))
    }
}
