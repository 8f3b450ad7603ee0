//! The role state machines and data paths.

#[cfg(feature = "frontend")]
pub mod adapters;
#[cfg(feature = "backend")]
pub mod backend;
#[cfg(feature = "frontend")]
pub mod frontend;
#[cfg(feature = "backend")]
pub mod storage;
pub(crate) mod xs;
