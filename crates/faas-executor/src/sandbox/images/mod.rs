//! The image store of the native backend: images imported from the local Docker daemon, OCI
//! image layouts, `docker save` tarballs, and rootfs tarballs or directories; layers unpacked
//! once, content-addressed by digest (see [`store`]), through the one safe routine
//! ([`unpack`]).

pub mod store;
pub mod unpack;

pub use store::{ImageRecord, ImageStore};
pub use unpack::{Trust, UnpackError, UnpackPolicy};
