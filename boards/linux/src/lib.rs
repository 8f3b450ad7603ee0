//! xenblk on Linux userspace inside a real Xen domain (dom0, a driver domain or a domU).
//!
//! - [`xs_wire`], [`xenstore`]: the xenstore wire protocol and a client over the xenstored
//!   socket or `/dev/xen/xenbus` (no libxenstore);
//! - [`evtchn`], [`gntdev`], [`gntalloc`]: the `/dev/xen` devices (ioctls in [`sys`],
//!   checked against the kernel's UAPI headers by the tests);
//! - [`platform`]: the driver's platform traits on top of them ([`platform::LinuxBackend`],
//!   [`platform::LinuxFrontend`]);
//! - [`md5`]: a streaming MD5 so that `xenblk-front` can print what dom0's `md5sum` checks;
//! - `storage` (with `backend`): a disk image file as the backend's storage;
//! - `nbd` (with `backend`): an NBD export (TCP or Unix socket) as the backend's storage.
//!
//! Status and the rig that exercises this in Xen-in-QEMU: `boards/linux/NOTES.md`.

pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
pub mod md5;
#[cfg(feature = "backend")]
pub mod nbd;
pub mod platform;
#[cfg(feature = "backend")]
pub mod storage;
pub mod sys;
pub mod xenstore;
pub mod xs_wire;
