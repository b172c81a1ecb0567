//! Backend implementations.

pub mod docker;
pub mod native;
