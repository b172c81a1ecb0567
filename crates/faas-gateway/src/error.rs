//! `ApiError`: every error the API returns, as `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use faas_common::{ErrorBody, ErrorCode};
use faas_executor::Error;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before trying again (a `Retry-After` header); every 429 has one.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::ImageNotFound(_) => ErrorCode::ImageNotFound,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::BackendUnavailable(_) => ErrorCode::BackendUnavailable,
            Error::PortClosed(_) => ErrorCode::PortClosed,
            Error::Docker(_)
            | Error::Agent { .. }
            | Error::AgentUnreachable { .. }
            | Error::Runtime { .. }
            | Error::RuntimeTimeout { .. }
            | Error::Io { .. }
            | Error::Store(_)
            | Error::Internal(_) => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            // The detail goes to the log; the client learns that something went wrong.
            tracing::error!(error = %e.chain(), "request failed");
            return ApiError::new(code, "internal error; the server log has the details");
        }
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // A quota or rate refusal says when to try again: a quota frees up as work ends.
        let retry = self
            .retry_after_s
            .or((status == StatusCode::TOO_MANY_REQUESTS).then_some(1));
        let mut resp = (status, Json(ErrorBody::new(self.code, self.message))).into_response();
        if let Some(s) = retry {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}
