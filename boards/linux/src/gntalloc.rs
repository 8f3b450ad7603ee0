//! Granting own pages over `/dev/xen/gntalloc`: the kernel allocates the pages and the grant
//! references together; the pages are reached by `mmap` at the returned offset.
//!
//! Caveat for the frontend: gntalloc grants a page when it is allocated, to one domain, and
//! revokes it only when it is deallocated and unmapped; there is no "end access but keep the
//! page" and no way to ask whether the grantee maps it. How `LinuxFrontend` maps the
//! driver's grant semantics onto that: `platform.rs` and NOTES.md.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use xenblk::platform::{PlatformError, Result};
use xenblk::proto::grant::{DomId, GrantRef};

use crate::evtchn::last_err;
use crate::sys::{self, PAGE};

/// Device path.
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";

/// Granted pages.
#[derive(Debug)]
pub struct GntAlloc {
    /// Start of the mapping.
    pub ptr: *mut u8,
    /// The references, one per page.
    pub grefs: Vec<GrantRef>,
    /// The gntalloc offset (the dealloc handle).
    pub index: u64,
}

/// An open `/dev/xen/gntalloc`.
#[derive(Debug)]
pub struct Gntalloc {
    f: File,
}

impl Gntalloc {
    /// Opens the device.
    pub fn open() -> Result<Gntalloc> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(GNTALLOC_PATH)
            .map_err(|_| last_err())?;
        Ok(Gntalloc { f })
    }

    fn fd(&self) -> RawFd {
        self.f.as_raw_fd()
    }

    /// Allocates `count` zeroed pages granted to `domid`, and maps them.
    pub fn alloc(&self, domid: DomId, count: usize, writable: bool) -> Result<GntAlloc> {
        let (index, grefs) = self.alloc_grefs(domid, count, writable)?;
        // SAFETY: maps a fresh region of the gntalloc range just allocated.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                count * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd(),
                index as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_err();
            self.dealloc_index(index, count as u32);
            return Err(e);
        }
        Ok(GntAlloc { ptr: p.cast(), grefs, index })
    }

    /// Allocates one page granted to `domid` and maps it at `addr` in place of whatever
    /// was mapped there (`MAP_FIXED`); the page's previous contents are not carried over
    /// (the caller copies them). Returns the reference and the gntalloc index.
    ///
    /// # Safety
    /// `addr` must be page-aligned and be one page of a mapping the caller owns and whose
    /// old contents no one else uses from now on.
    pub unsafe fn alloc_at(&self, domid: DomId, writable: bool, addr: *mut u8) -> Result<(GrantRef, u64)> {
        let (index, grefs) = self.alloc_grefs(domid, 1, writable)?;
        // SAFETY: the caller owns the page at `addr`; MAP_FIXED replaces exactly that page.
        let p = unsafe {
            libc::mmap(
                addr.cast(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd(),
                index as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED || p.cast::<u8>() != addr {
            let e = last_err();
            self.dealloc_index(index, 1);
            return Err(e);
        }
        Ok((grefs[0], index))
    }

    /// Drops the file's reference to the pages at `index` (see [`free`](Self::free)): the
    /// grant ends once no mapping of them is left.
    pub fn dealloc(&self, index: u64, count: u32) {
        self.dealloc_index(index, count)
    }

    fn alloc_grefs(&self, domid: DomId, count: usize, writable: bool) -> Result<(u64, Vec<GrantRef>)> {
        if count == 0 {
            return Err(PlatformError::Invalid);
        }
        let head = size_of::<sys::GntallocAllocGrefHead>();
        let bytes = (head + 4 * count).max(sys::GNTALLOC_ALLOC_GREF_SIZE);
        let mut words = vec![0u64; bytes.div_ceil(8)];
        let base = words.as_mut_ptr().cast::<u8>();
        // SAFETY: `words` holds `bytes` bytes, 8-aligned; the head is at offset 0.
        unsafe {
            base.cast::<sys::GntallocAllocGrefHead>().write(sys::GntallocAllocGrefHead {
                domid: domid.0,
                flags: if writable { sys::GNTALLOC_FLAG_WRITABLE } else { 0 },
                count: count as u32,
                index: 0,
            })
        };
        // SAFETY: the buffer is a valid `ioctl_gntalloc_alloc_gref` with room for `count`
        // gref ids, which the kernel writes along with `index`.
        let r = unsafe { libc::ioctl(self.fd(), sys::IOCTL_GNTALLOC_ALLOC_GREF, base) };
        if r < 0 {
            return Err(last_err());
        }
        // SAFETY: written by the kernel above; aligned and in bounds.
        let index = unsafe { base.cast::<sys::GntallocAllocGrefHead>().read().index };
        let grefs = (0..count)
            // SAFETY: id `i` lies at `head + 4 i`, inside the buffer.
            .map(|i| GrantRef(unsafe { base.add(head + 4 * i).cast::<u32>().read() }))
            .collect();
        Ok((index, grefs))
    }

    fn dealloc_index(&self, index: u64, count: u32) {
        let mut a = sys::GntallocDeallocGref { index, count };
        // SAFETY: `a` is a valid `ioctl_gntalloc_dealloc_gref` for the call.
        unsafe { libc::ioctl(self.fd(), sys::IOCTL_GNTALLOC_DEALLOC_GREF, &mut a as *mut _) };
    }

    /// Ungrants and frees pages. The grant is revoked once the pages are unmapped here and
    /// the grantee no longer maps them (the kernel defers it until then).
    ///
    /// # Safety
    /// No reference into the pages may be used afterwards.
    pub unsafe fn free(&self, a: GntAlloc) {
        let count = a.grefs.len();
        self.dealloc_index(a.index, count as u32);
        // SAFETY: `a.ptr..+count*PAGE` is our mapping from `alloc`; the caller guarantees it
        // is unused.
        unsafe { libc::munmap(a.ptr.cast(), count * PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fails_cleanly_without_xen() {
        if std::path::Path::new(GNTALLOC_PATH).exists() {
            return;
        }
        assert!(matches!(Gntalloc::open(), Err(PlatformError::NotFound)));
    }
}
