//! The role state machines and data paths.

#[cfg(feature = "backend")]
pub mod storage;
#[cfg(feature = "frontend")]
pub mod frontend;
pub(crate) mod xs;
