//! Shared contract of the platform: request/response DTOs of the HTTP API and the table of
//! error codes. No I/O lives here, so the gateway, the CLI and the tests agree on one shape.
//!
//! - [`api`]: execute, prewarm, pools, health bodies.
//! - [`functions`]: functions, invocations.
//! - [`processes`]: processes, terminals and files inside an instance.
//! - [`tenants`]: tenants, API keys, quotas, usage, the audit trail, and the [`Caller`].
//! - [`error`]: [`ErrorCode`], its stable string and HTTP status, and the error body.

pub mod api;
pub mod error;
pub mod functions;
pub mod processes;
pub mod tenants;
pub mod time;

pub use api::*;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use functions::*;
pub use processes::*;
pub use tenants::*;
