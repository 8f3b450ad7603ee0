//! The wire layer: shared ring, requests and responses per ABI, xenbus states and keys,
//! grant entries. Pure code with no I/O; the only `unsafe` is in [`shmem`].

pub mod blkif;
pub mod grant;
pub mod ring;
pub mod shmem;
pub mod xenbus;

pub use blkif::{Abi, Protocol, ReqKind, Request, Response, RwOp, Segment};
pub use grant::{DomId, GrantRef};
pub use ring::{BackRing, FrontRing, RingError};
pub use shmem::SharedMem;
pub use xenbus::XenbusState;
