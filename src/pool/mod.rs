//! Persistent-grant pools: the frontend's pool of granted pages, the backend's cache of
//! mapped grants, and the in-flight id tables.

#[cfg(feature = "backend")]
pub mod back;
#[cfg(feature = "frontend")]
pub mod front;
pub mod ids;

#[cfg(test)]
pub(crate) mod mock;
