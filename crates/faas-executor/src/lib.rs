//! The executor: everything between an API request and a process running in a box.
//!
//! - [`backend`]: the [`Backend`] trait that creates isolated boxes from a [`SandboxSpec`], and
//!   the [`Sandbox`] handle it returns.
//! - [`backends`]: the implementations (`docker` on the Docker Engine API).
//! - [`agent`]: the host side of the in-sandbox agent protocol ([`AgentClient`]).
//! - [`pool`]: warm pools of started, clean sandboxes per image.
//! - [`service`]: [`Executor`], the execute service the gateway (and later the worker) calls.
//! - [`functions`]: deployed functions, sync invokes and the async queue.
//! - [`metrics`]: counters, counted where things happen.

pub mod agent;
pub mod backend;
pub mod backends;
pub mod error;
pub mod functions;
pub mod images;
pub mod instances;
pub mod metrics;
pub mod pool;
pub mod reaper;
pub mod service;
pub mod streams;

pub use agent::AgentClient;
pub use backend::{Backend, Limits, Sandbox, SandboxSpec};
pub use error::{Error, Result};
pub use service::{Executor, ExecutorConfig};
