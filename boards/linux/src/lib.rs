//! xenblk on Linux userspace inside a real Xen domain (dom0, a driver domain or a domU).
//!
//! - [`xs_wire`], [`xenstore`]: the xenstore wire protocol and a client over the xenstored
//!   socket or `/dev/xen/xenbus` (no libxenstore);
//! - [`evtchn`], [`gntdev`], [`gntalloc`]: the `/dev/xen` devices (ioctls in [`sys`],
//!   checked against the kernel's UAPI headers by the tests);
//! - [`platform`]: the driver's platform traits on top of them;
//! - `storage` (with `backend`): a disk image file as the backend's storage;
//! - `nbd` (with `backend`): an NBD export (TCP or Unix socket) as the backend's storage.
//!
//! Status and the rig that exercises this in Xen-in-QEMU: `boards/linux/NOTES.md`.

pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
#[cfg(feature = "backend")]
pub mod nbd;
pub mod platform;
#[cfg(feature = "backend")]
pub mod storage;
pub mod sys;
pub mod xenstore;
pub mod xs_wire;
