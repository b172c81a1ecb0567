//! Backend implementations, and `usage`: reading what a box used from its cgroup (both
//! backends' boxes are cgroups of this host).

pub mod docker;
pub mod native;
pub(crate) mod usage;
