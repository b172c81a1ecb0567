//! The executor: everything between an API request and a process running in a box, in two
//! layers and a composition root.
//!
//! - [`sandbox`]: the sandbox layer. The [`Backend`] trait that creates isolated boxes from a
//!   [`SandboxSpec`], the [`Sandbox`] handle it returns, the backends (`docker`, `native`), the
//!   image store, the host side of the agent protocol ([`AgentClient`]), warm pools, the orphan
//!   reaper, and [`Sandboxes`], the handle the services hold. It knows nothing of instances as
//!   records, functions or the store.
//! - [`services`]: what the gateway and the binary call: the execute service
//!   ([`services::execute::Executor`]), instances and snapshots
//!   ([`services::instances::Instances`]), functions and the async queue
//!   ([`services::functions::Functions`]), and live output ([`services::streams::Streams`]).
//! - [`platform`]: [`Platform`], the composition root: builds the services, recovers after a
//!   restart, runs the background tasks, shuts down.
//! - [`config`], [`error`] and [`metrics`]: shared by both layers (one error table, one metrics
//!   registry).
//!
//! Dependencies point one way: `platform` → `services` → `sandbox`; a test (`layers`) reads the
//! sources and fails on an import against that direction or on any cycle between files.

pub mod config;
pub mod error;
pub mod metrics;
pub mod platform;
pub mod sandbox;
pub mod services;

#[cfg(test)]
mod layers;

pub use config::PlatformConfig;
pub use error::{Error, Result};
pub use platform::Platform;
pub use sandbox::agent::AgentClient;
pub use sandbox::sandboxes::Sandboxes;
pub use sandbox::{Backend, Limits, Sandbox, SandboxSpec};
