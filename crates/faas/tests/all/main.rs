//! Full-stack tests: the real `faas serve` binary on a free port, over HTTP, against the real
//! Docker daemon. One binary with a module per area.

mod cli;
mod cli_procs;
mod errors;
mod execute;
mod functions;
mod instances;
mod lifecycle;
mod native;
mod network;
mod ports;
mod processes;
mod support;
mod tenants;
mod tls;
