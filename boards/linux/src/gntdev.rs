//! Mapping and copying foreign grants over `/dev/xen/gntdev`.
//!
//! `IOCTL_GNTDEV_MAP_GRANT_REF` reserves `count` pages and returns an offset; the grants are
//! actually mapped when that offset range of the fd is `mmap`ed (read-only if the mapping is
//! not writable). Unmapping is `munmap` then `IOCTL_GNTDEV_UNMAP_GRANT_REF`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use xenblk::platform::{PlatformError, Result};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef};
use xenblk::proto::shmem::SharedMem;

use crate::evtchn::last_err;
use crate::sys::{self, PAGE};

/// Device path.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// A mapped run of foreign pages.
#[derive(Debug)]
pub struct GntMap {
    /// Start of the mapping.
    pub ptr: *mut u8,
    /// Pages.
    pub count: u32,
    /// The gntdev offset (the unmap handle).
    pub index: u64,
}

/// An open `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct Gntdev {
    f: File,
}

/// One side of a grant copy.
#[derive(Clone, Copy, Debug)]
pub enum CopySide {
    /// A foreign page.
    Foreign {
        /// Granting domain.
        domid: DomId,
        /// Reference.
        gref: GrantRef,
        /// Byte offset.
        offset: u16,
    },
    /// Local memory (must not cross a page boundary for the copy length).
    Local(*mut u8),
}

impl Gntdev {
    /// Opens the device.
    pub fn open() -> Result<Gntdev> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(GNTDEV_PATH)
            .map_err(|_| last_err())?;
        Ok(Gntdev { f })
    }

    fn fd(&self) -> RawFd {
        self.f.as_raw_fd()
    }

    /// Maps `grefs` of `domid` as one contiguous region.
    pub fn map(&self, domid: DomId, grefs: &[GrantRef], writable: bool) -> Result<GntMap> {
        if grefs.is_empty() {
            return Err(PlatformError::Invalid);
        }
        // The argument: head + count refs, built in u64 words for alignment.
        let head = size_of::<sys::GntdevMapGrantRefHead>();
        let bytes = head + grefs.len() * size_of::<sys::GntdevGrantRef>();
        let mut words = vec![0u64; bytes.div_ceil(8)];
        let base = words.as_mut_ptr().cast::<u8>();
        // SAFETY: `words` holds at least `bytes` bytes, 8-aligned; the head sits at offset 0
        // and the refs array right after it (its C offset, checked by the sys tests).
        unsafe {
            base.cast::<sys::GntdevMapGrantRefHead>().write(sys::GntdevMapGrantRefHead {
                count: grefs.len() as u32,
                pad: 0,
                index: 0,
            });
            let refs = base.add(head).cast::<sys::GntdevGrantRef>();
            for (i, g) in grefs.iter().enumerate() {
                refs.add(i).write(sys::GntdevGrantRef { domid: domid.0.into(), gref: g.0 });
            }
        }
        // SAFETY: the buffer is a valid `ioctl_gntdev_map_grant_ref` with `count` refs; the
        // kernel reads the refs and writes `index` only within it.
        let r = unsafe { libc::ioctl(self.fd(), sys::IOCTL_GNTDEV_MAP_GRANT_REF, base) };
        if r < 0 {
            return Err(last_err());
        }
        // SAFETY: the head was just written by the kernel and is properly aligned.
        let index = unsafe { base.cast::<sys::GntdevMapGrantRefHead>().read().index };
        let len = grefs.len() * PAGE;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: maps a fresh region (addr NULL) of the reserved gntdev range; no existing
        // Rust memory is affected.
        let p =
            unsafe { libc::mmap(core::ptr::null_mut(), len, prot, libc::MAP_SHARED, self.fd(), index as libc::off_t) };
        if p == libc::MAP_FAILED {
            let e = last_err();
            self.release(index, grefs.len() as u32);
            return Err(e);
        }
        Ok(GntMap { ptr: p.cast(), count: grefs.len() as u32, index })
    }

    fn release(&self, index: u64, count: u32) {
        let mut a = sys::GntdevUnmapGrantRef { index, count, pad: 0 };
        // SAFETY: `a` is a valid `ioctl_gntdev_unmap_grant_ref` for the call.
        unsafe { libc::ioctl(self.fd(), sys::IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut a as *mut _) };
    }

    /// Unmaps a mapping from [`map`](Self::map).
    ///
    /// # Safety
    /// No reference into the mapping may be used afterwards.
    pub unsafe fn unmap(&self, m: GntMap) -> Result<()> {
        // SAFETY: `m` came from `map`, so `ptr..ptr+count*PAGE` is our mmap; the caller
        // guarantees it is no longer used.
        let r = unsafe { libc::munmap(m.ptr.cast(), m.count as usize * PAGE) };
        if r != 0 {
            return Err(last_err());
        }
        self.release(m.index, m.count);
        Ok(())
    }

    /// The mapping as driver shared memory.
    pub fn shared(m: &GntMap) -> SharedMem {
        // SAFETY: the mapping stays valid until `unmap`, which the owner calls only after the
        // driver stops using it; the peer may write it concurrently, which `SharedMem` allows.
        unsafe { SharedMem::new(m.ptr, m.count as usize * PAGE) }
    }

    /// Performs grant copies; `status[i]` receives each segment's status.
    pub fn copy(&self, ops: &[(CopySide, CopySide, u16)], status: &mut [GntStatus]) -> Result<()> {
        let mut segs: Vec<sys::GntdevGrantCopySegment> = ops
            .iter()
            .map(|(src, dst, len)| {
                let mut flags = 0;
                let mut side = |s: &CopySide, bit: u16| match *s {
                    CopySide::Foreign { domid, gref, offset } => {
                        flags |= bit;
                        sys::GntdevCopyPtr { foreign: sys::GntdevCopyForeign { gref: gref.0, offset, domid: domid.0 } }
                    }
                    CopySide::Local(p) => sys::GntdevCopyPtr { virt: p.cast() },
                };
                let source = side(src, sys::GNTCOPY_SOURCE_GREF);
                let dest = side(dst, sys::GNTCOPY_DEST_GREF);
                sys::GntdevGrantCopySegment { source, dest, len: *len, flags, status: 0 }
            })
            .collect();
        let mut a = sys::GntdevGrantCopy { count: segs.len() as libc::c_uint, segments: segs.as_mut_ptr() };
        // SAFETY: `a` points at `count` valid segments that live across the call; the kernel
        // writes only their `status` fields and the local buffers the caller designated.
        let r = unsafe { libc::ioctl(self.fd(), sys::IOCTL_GNTDEV_GRANT_COPY, &mut a as *mut _) };
        if r < 0 {
            return Err(last_err());
        }
        for (s, seg) in status.iter_mut().zip(&segs) {
            *s = GntStatus::from_i16(seg.status);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fails_cleanly_without_xen() {
        if std::path::Path::new(GNTDEV_PATH).exists() {
            return;
        }
        assert!(matches!(Gntdev::open(), Err(PlatformError::NotFound)));
    }
}
