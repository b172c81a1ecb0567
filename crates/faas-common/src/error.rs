//! The error-code table: every error the API returns has one stable `code` and one status.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not JSON, or JSON of the wrong shape.
    InvalidJson,
    /// Well-formed but invalid input (empty command, unknown mode, limits out of range...).
    InvalidRequest,
    NotFound,
    ImageNotFound,
    /// The target's state forbids it now (exec in a stopped instance, deleting a snapshot
    /// something depends on).
    Conflict,
    MethodNotAllowed,
    PayloadTooLarge,
    /// No API key, or one that is unknown, expired or revoked.
    Unauthenticated,
    /// The key may not do this (a member asking for an admin operation).
    Forbidden,
    /// A limit was reached (the tenant's request rate, a function's concurrency); try again
    /// later.
    RateLimited,
    /// One of the tenant's quotas is used up; the message names it.
    QuotaExceeded,
    /// The request names a feature this server or backend does not have.
    Unsupported,
    /// The backend the request needs is not available on this host right now.
    BackendUnavailable,
    /// Nothing listens on the instance's port a request was for.
    PortClosed,
    /// The instance's server on that port did not answer with HTTP that can be passed on.
    BadGateway,
    /// The platform could not finish the request in time (not a command's own timeout).
    Timeout,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::PortClosed => "port_closed",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidRequest => 400,
            ErrorCode::NotFound | ErrorCode::ImageNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unsupported => 501,
            ErrorCode::PortClosed | ErrorCode::BadGateway => 502,
            ErrorCode::BackendUnavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_string(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_string() {
        for c in [
            ErrorCode::ImageNotFound,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unsupported,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(ErrorCode::Unsupported.status(), 501);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
    }
}
