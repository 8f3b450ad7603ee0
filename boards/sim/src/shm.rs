//! Owned mappings of shared memory, handed to the driver as [`SharedMem`] views, and the
//! memfds that hold each domain's memory.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use xenblk::proto::shmem::SharedMem;

/// Size of a Xen page.
pub const PAGE_SIZE: usize = 4096;

/// An anonymous memory file (`memfd_create`) of a fixed size.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    len: usize,
}

impl Memfd {
    /// Creates a memfd named `name` of `len` bytes (rounded up to pages). Its pages are
    /// allocated lazily by the kernel and read as zero until written.
    pub fn new(name: &CStr, len: usize) -> io::Result<Memfd> {
        let len = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: `name` is a valid NUL-terminated string; the call has no memory effects.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Memfd { fd, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file is empty (never: lengths are rounded up to a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A mapping, unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain shared memory; all access goes through `SharedMem`'s volatile
// and atomic accessors, which tolerate concurrent access.
unsafe impl Send for MappedRegion {}
// SAFETY: as above.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// A fresh zeroed anonymous shared mapping of `len` bytes (rounded up to pages).
    pub fn anonymous(len: usize) -> io::Result<MappedRegion> {
        let len = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: anonymous mapping with no address hint; the kernel picks a free range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedRegion { ptr: p as *mut u8, len })
    }

    /// Reserves `pages` pages of address space with no access (`PROT_NONE`), to be filled
    /// with [`map_fixed`](Self::map_fixed) (a virtually contiguous view of scattered pages).
    pub fn reserve(pages: usize) -> io::Result<MappedRegion> {
        let len = pages.max(1) * PAGE_SIZE;
        // SAFETY: a new inaccessible anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedRegion { ptr: p as *mut u8, len })
    }

    /// Maps `len` bytes of `fd` at `offset` (both page multiples), read-write or read-only.
    pub fn map_fd(fd: BorrowedFd<'_>, offset: u64, len: usize, writable: bool) -> io::Result<MappedRegion> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new mapping of a caller-owned fd; no existing memory is affected.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), offset as libc::off_t)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedRegion { ptr: p as *mut u8, len })
    }

    /// Replaces page `index` of this region with page `offset` (a page multiple) of `fd`,
    /// `MAP_SHARED|MAP_FIXED`, read-write or read-only.
    pub fn map_fixed(&self, index: usize, fd: BorrowedFd<'_>, offset: u64, writable: bool) -> io::Result<()> {
        assert!(index < self.len / PAGE_SIZE, "map_fixed: page {index} outside the region");
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: the target page lies inside this region, which we own and which no Rust
        // reference points into; MAP_FIXED atomically replaces only that page.
        let p = unsafe {
            libc::mmap(
                self.ptr.add(index * PAGE_SIZE) as *mut libc::c_void,
                PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The driver's view. Valid while `self` lives; callers must drop every use before.
    ///
    /// A read-only mapping (`map_fd(.., false)`) yields a view whose writes fault
    /// (`SIGSEGV`), exactly as a guest writing through a read-only grant mapping would.
    pub fn shared(&self) -> SharedMem {
        // SAFETY: the mapping is live, page aligned and `len` bytes long until `self` drops.
        unsafe { SharedMem::new(self.ptr, self.len) }
    }

    /// Base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: lengths are rounded up to a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped exactly once.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}
