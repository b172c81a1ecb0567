//! The services: what the gateway and the binary call. Each holds the narrow things it needs
//! (the [`Sandboxes`](crate::sandbox::sandboxes::Sandboxes) handle, the store, its config, the
//! streams), never the [`Platform`](crate::platform::Platform) that wires them.
//!
//! - [`execute`]: [`Executor`](execute::Executor), the execute service (its stateful modes are
//!   compositions of the instances service's operations: execute → instances, never back).
//! - [`instances`]: [`Instances`](instances::Instances): instances, their files, snapshots,
//!   restores, branches and forks.
//! - [`functions`]: [`Functions`](functions::Functions): deployed functions, sync invokes and
//!   the async queue.
//! - [`streams`]: [`Streams`](streams::Streams): live output of running executions, and their
//!   records.
//! - [`tenants`]: [`Tenants`](tenants::Tenants): API keys and authentication, tenants and
//!   their quotas and request rates, usage reports and the audit trail.
//! - [`run`]: what execute and instances share of running a command and answering for it.

pub mod execute;
pub mod functions;
pub mod instances;
pub(crate) mod run;
pub mod streams;
pub mod tenants;
