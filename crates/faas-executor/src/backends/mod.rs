//! Backend implementations.

pub mod docker;
