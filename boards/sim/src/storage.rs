//! Block stores for the backend: [`RamDisk`] (memory) and [`FileDisk`] (a file with
//! `pread`/`pwrite` straight into and out of the shared page, `fdatasync` on flush).
//!
//! Both are cheap-to-clone handles on shared state, so a test can keep one to inspect the
//! contents, resize the disk or inject I/O errors while a backend thread serves it.
//!
//! The types always exist; their `xenblk::modes::storage::Storage` implementations need the
//! sim's `backend` feature (default; it enables xenblk's `backend` role). The inherent
//! `read_sectors`/`write_sectors`/`flush`/`discard` methods do the same work with
//! [`DiskError`], for builds without the backend role.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[cfg(feature = "backend")]
use xenblk::modes::storage::{Storage, StorageError, StorageInfo};
use xenblk::proto::shmem::SharedMem;

use crate::fault::{Injector, Trigger};
use crate::stats::{bump, bump_n};

/// Why a disk operation failed (mirrors `xenblk::modes::storage::StorageError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The range lies (partly) past the end of the disk.
    OutOfRange,
    /// The disk is read-only.
    ReadOnly,
    /// Not offered by this disk.
    Unsupported,
    /// The device failed (or an injected fault).
    Io,
}

#[cfg(feature = "backend")]
impl From<DiskError> for StorageError {
    fn from(e: DiskError) -> StorageError {
        match e {
            DiskError::OutOfRange => StorageError::OutOfRange,
            DiskError::ReadOnly => StorageError::ReadOnly,
            DiskError::Unsupported => StorageError::Unsupported,
            DiskError::Io => StorageError::Io,
        }
    }
}

/// Sector unit of the blkif protocol.
pub const SECTOR: u64 = 512;
/// Largest [`RamDisk`].
pub const MAX_RAMDISK_BYTES: u64 = 1 << 30;

/// Counters of a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Flushes (RamDisk: no-op but counted).
    pub flushes: u64,
    /// Successful discards.
    pub discards: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Operations refused or failed (range, read-only, injected, OS errors).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
}

/// Properties shared by both disks.
#[derive(Debug)]
struct Common {
    sectors: AtomicU64,
    read_only: AtomicBool,
    sector_size: AtomicU32,
    physical_sector_size: AtomicU32,
    flush: AtomicBool,
    discard: AtomicBool,
    discard_secure: AtomicBool,
    fault: Injector,
    c: Counters,
}

impl Common {
    fn new(sectors: u64, read_only: bool, discard: bool) -> Common {
        Common {
            sectors: AtomicU64::new(sectors),
            read_only: AtomicBool::new(read_only),
            sector_size: AtomicU32::new(512),
            physical_sector_size: AtomicU32::new(512),
            flush: AtomicBool::new(true),
            discard: AtomicBool::new(discard),
            discard_secure: AtomicBool::new(false),
            fault: Injector::default(),
            c: Counters::default(),
        }
    }

    #[cfg(feature = "backend")]
    fn info(&self) -> StorageInfo {
        let ss = self.sector_size.load(Ordering::Relaxed);
        StorageInfo {
            sectors: self.sectors.load(Ordering::Relaxed),
            sector_size: ss,
            physical_sector_size: self.physical_sector_size.load(Ordering::Relaxed),
            read_only: self.read_only.load(Ordering::Relaxed),
            flush: self.flush.load(Ordering::Relaxed),
            discard: self.discard.load(Ordering::Relaxed),
            discard_granularity: ss,
            discard_secure: self.discard_secure.load(Ordering::Relaxed),
        }
    }

    fn stats(&self) -> DiskStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            reads: l(&self.c.reads),
            writes: l(&self.c.writes),
            flushes: l(&self.c.flushes),
            discards: l(&self.c.discards),
            bytes_read: l(&self.c.bytes_read),
            bytes_written: l(&self.c.bytes_written),
            errors: l(&self.c.errors),
        }
    }

    fn err(&self, e: DiskError) -> DiskError {
        bump(&self.c.errors);
        e
    }

    /// Checks an operation: injected fault, read-only (for writes), range. Returns the byte
    /// range.
    fn check(&self, sector: u64, len: u64, write: bool) -> Result<(u64, u64), DiskError> {
        if self.fault.hit() {
            return Err(self.err(DiskError::Io));
        }
        if write && self.read_only.load(Ordering::Relaxed) {
            return Err(self.err(DiskError::ReadOnly));
        }
        let size = self.sectors.load(Ordering::Relaxed) * SECTOR;
        match sector.checked_mul(SECTOR).and_then(|o| o.checked_add(len).map(|e| (o, e))) {
            Some((o, e)) if e <= size => Ok((o, e)),
            _ => Err(self.err(DiskError::OutOfRange)),
        }
    }
}

macro_rules! common_methods {
    () => {
        /// Refuses (or allows again) writes.
        pub fn set_read_only(&self, ro: bool) {
            self.inner.common.read_only.store(ro, Ordering::Relaxed);
        }

        /// Sets the logical and physical block sizes advertised (default 512/512).
        pub fn set_sector_size(&self, logical: u32, physical: u32) {
            self.inner.common.sector_size.store(logical, Ordering::Relaxed);
            self.inner.common.physical_sector_size.store(physical, Ordering::Relaxed);
        }

        /// Whether `StorageInfo::flush` is advertised (default true).
        pub fn set_flush(&self, on: bool) {
            self.inner.common.flush.store(on, Ordering::Relaxed);
        }

        /// Whether `StorageInfo::discard` is advertised.
        pub fn set_discard(&self, on: bool) {
            self.inner.common.discard.store(on, Ordering::Relaxed);
        }

        /// Whether `StorageInfo::discard_secure` is advertised (default false; a secure
        /// discard zeroes the range like any other).
        pub fn set_discard_secure(&self, on: bool) {
            self.inner.common.discard_secure.store(on, Ordering::Relaxed);
        }

        /// Makes reads, writes, flushes and discards fail with `DiskError::Io` per
        /// `trigger` (counting every such operation from now).
        pub fn set_fault(&self, trigger: Trigger) {
            self.inner.common.fault.set(trigger);
        }

        /// Size in 512-byte sectors.
        pub fn sectors(&self) -> u64 {
            self.inner.common.sectors.load(Ordering::Relaxed)
        }

        /// Counters.
        pub fn stats(&self) -> DiskStats {
            self.inner.common.stats()
        }
    };
}

/// A RAM disk's bytes, laid out as a kernel's RAM disk is (Linux `brd`: whole pages, read and
/// written through the kernel's direct map of large pages):
///
/// * they start on a page boundary. A plain `Vec<u8>` of 128 KiB or more comes from `mmap` 16
///   bytes past one, so every 4 KiB block read into a page-aligned granted page would be a
///   copy between different page offsets: each source line split across two cache lines, 65
///   lines and two pages touched instead of 64 and one;
/// * the kernel is asked for 2 MiB pages (`MADV_HUGEPAGE`, a hint: with transparent huge
///   pages off it stays 4 KiB pages), so a random block read costs no TLB miss, as a read
///   through the direct map costs none. With 4 KiB pages the benchmark's 15 disks alone need
///   1,920 TLB entries.
///
/// Resizing allocates anew and copies (test only).
#[derive(Debug)]
struct DiskBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl DiskBytes {
    const HUGE: usize = 2 << 20;

    fn zeroed(len: usize) -> DiskBytes {
        // Whole huge pages, and one more so that the start can be moved to a boundary.
        let span = len.div_ceil(Self::HUGE) * Self::HUGE;
        let buf = vec![0u8; span + Self::HUGE];
        let off = buf.as_ptr().align_offset(Self::HUGE).min(Self::HUGE);
        // SAFETY: `off + span <= buf.len()`, so the advice covers only memory this Vec owns;
        // MADV_HUGEPAGE changes how the kernel backs the pages, never their contents (they
        // stay zero until written), and its failure (THP not built in) is harmless.
        unsafe {
            libc::madvise(buf.as_ptr().add(off) as *mut libc::c_void, span, libc::MADV_HUGEPAGE);
        }
        DiskBytes { buf, off, len }
    }

    /// Grows or shrinks to `len` bytes; new bytes read as zero.
    fn resize(&mut self, len: usize) {
        let mut n = DiskBytes::zeroed(len);
        let keep = len.min(self.len);
        n[..keep].copy_from_slice(&self[..keep]);
        *self = n;
    }
}

impl core::ops::Deref for DiskBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl core::ops::DerefMut for DiskBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

#[derive(Debug)]
struct RamInner {
    data: Mutex<DiskBytes>,
    common: Common,
}

/// A disk in memory (up to [`MAX_RAMDISK_BYTES`]); new and grown areas read as zero. Clones
/// share the disk. Flush is a no-op (counted); discard zeroes the range.
#[derive(Clone, Debug)]
pub struct RamDisk {
    inner: Arc<RamInner>,
}

impl RamDisk {
    /// A writable disk of `sectors` 512-byte sectors. Panics above 1 GiB.
    pub fn new(sectors: u64) -> RamDisk {
        RamDisk::try_new(sectors).expect("RamDisk larger than 1 GiB")
    }

    /// A writable disk of `sectors` sectors, or `OutOfRange` above 1 GiB.
    pub fn try_new(sectors: u64) -> Result<RamDisk, DiskError> {
        let bytes = Self::bytes(sectors)?;
        Ok(RamDisk {
            inner: Arc::new(RamInner {
                data: Mutex::new(DiskBytes::zeroed(bytes)),
                common: Common::new(sectors, false, true),
            }),
        })
    }

    /// This disk, read-only.
    pub fn read_only(self) -> RamDisk {
        self.set_read_only(true);
        self
    }

    fn bytes(sectors: u64) -> Result<usize, DiskError> {
        match sectors.checked_mul(SECTOR) {
            Some(b) if b <= MAX_RAMDISK_BYTES => Ok(b as usize),
            _ => Err(DiskError::OutOfRange),
        }
    }

    common_methods!();

    /// Resizes the disk (growth reads as zero). A backend notices through `Storage::info`.
    pub fn set_sectors(&self, sectors: u64) -> Result<(), DiskError> {
        let bytes = Self::bytes(sectors)?;
        let mut d = self.inner.data.lock().unwrap();
        d.resize(bytes);
        self.inner.common.sectors.store(sectors, Ordering::Relaxed);
        Ok(())
    }

    /// Test access: reads `buf.len()` bytes at byte offset `off`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let d = self.inner.data.lock().unwrap();
        let src =
            usize::try_from(off).ok().and_then(|o| d.get(o..o.checked_add(buf.len())?)).ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Test access: writes `buf` at byte offset `off` (ignores read-only).
    pub fn write_at(&self, off: u64, buf: &[u8]) -> Result<(), DiskError> {
        let mut d = self.inner.data.lock().unwrap();
        let dst = usize::try_from(off)
            .ok()
            .and_then(|o| d.get_mut(o..o.checked_add(buf.len())?))
            .ok_or(DiskError::OutOfRange)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
}

impl RamDisk {
    /// Reads `dst.len()` bytes at 512-byte sector `sector` into `dst`.
    pub fn read_sectors(&self, sector: u64, dst: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, dst.len() as u64, false)?;
        let d = self.inner.data.lock().unwrap();
        let src = d.get(o as usize..e as usize).ok_or_else(|| c.err(DiskError::OutOfRange))?;
        dst.copy_from_private(0, src);
        bump(&c.c.reads);
        bump_n(&c.c.bytes_read, e - o);
        Ok(())
    }

    /// Writes `src` at `sector`.
    pub fn write_sectors(&self, sector: u64, src: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, src.len() as u64, true)?;
        let mut d = self.inner.data.lock().unwrap();
        let dst = d.get_mut(o as usize..e as usize).ok_or_else(|| c.err(DiskError::OutOfRange))?;
        src.copy_to_private(0, dst);
        bump(&c.c.writes);
        bump_n(&c.c.bytes_written, e - o);
        Ok(())
    }

    /// Flushes (counted).
    pub fn flush(&self) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if c.fault.hit() {
            return Err(c.err(DiskError::Io));
        }
        bump(&c.c.flushes);
        Ok(())
    }

    /// Discards `nr_sectors` from `sector` (reads as zero afterwards).
    pub fn discard(&self, sector: u64, nr_sectors: u64, _secure: bool) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if !c.discard.load(Ordering::Relaxed) {
            return Err(c.err(DiskError::Unsupported));
        }
        let len = nr_sectors.checked_mul(SECTOR).ok_or_else(|| c.err(DiskError::OutOfRange))?;
        let (o, e) = c.check(sector, len, true)?;
        let mut d = self.inner.data.lock().unwrap();
        if let Some(r) = d.get_mut(o as usize..e as usize) {
            r.fill(0);
        }
        bump(&c.c.discards);
        Ok(())
    }
}

/// The driver's `Storage` trait for a sim disk: every sim disk has the same inherent
/// `info`/`read_sectors`/`write_sectors`/`flush`/`discard` and `DiskError` converts.
macro_rules! sim_storage {
    ($t:ident) => {
        #[cfg(feature = "backend")]
        impl Storage for $t {
            fn info(&self) -> StorageInfo {
                self.inner.common.info()
            }

            fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError> {
                Ok(self.read_sectors(sector, dst)?)
            }

            fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError> {
                Ok(self.write_sectors(sector, src)?)
            }

            fn flush(&mut self) -> Result<(), StorageError> {
                Ok($t::flush(self)?)
            }

            fn discard(&mut self, sector: u64, nr_sectors: u64, secure: bool) -> Result<(), StorageError> {
                Ok($t::discard(self, sector, nr_sectors, secure)?)
            }
        }
    };
}

sim_storage!(RamDisk);

#[derive(Debug)]
struct FileInner {
    file: File,
    file_writable: bool,
    common: Common,
}

/// A disk in a file: `pread`/`pwrite` move data directly between the file and the shared
/// page; flush is `fdatasync`; discard punches a hole. Reads past the end of a file shorter
/// than the disk return zeros. Clones share the disk.
#[derive(Clone, Debug)]
pub struct FileDisk {
    inner: Arc<FileInner>,
}

impl FileDisk {
    /// Opens `path`; the disk has `file length / 512` sectors.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileDisk> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, !read_only, read_only)
    }

    /// Creates (or truncates) `path` as a writable disk of `sectors` sectors (sparse).
    pub fn create(path: impl AsRef<Path>, sectors: u64) -> io::Result<FileDisk> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(sectors * SECTOR)?;
        Self::from_file(file, true, false)
    }

    /// Wraps an open file (`file_writable`: it was opened for writing).
    pub fn from_file(file: File, file_writable: bool, read_only: bool) -> io::Result<FileDisk> {
        let sectors = file.metadata()?.len() / SECTOR;
        Ok(FileDisk {
            inner: Arc::new(FileInner {
                file,
                file_writable,
                common: Common::new(sectors, read_only || !file_writable, true),
            }),
        })
    }

    common_methods!();

    /// Resizes the disk: the file's length when it is writable, else only the size
    /// advertised (the rest reads as zero).
    pub fn set_sectors(&self, sectors: u64) -> Result<(), DiskError> {
        let bytes = sectors.checked_mul(SECTOR).ok_or(DiskError::OutOfRange)?;
        if self.inner.file_writable {
            self.inner.file.set_len(bytes).map_err(|_| DiskError::Io)?;
        }
        self.inner.common.sectors.store(sectors, Ordering::Relaxed);
        Ok(())
    }

    fn fd(&self) -> libc::c_int {
        self.inner.file.as_raw_fd()
    }
}

impl FileDisk {
    /// Reads `dst.len()` bytes at 512-byte sector `sector` into `dst`.
    pub fn read_sectors(&self, sector: u64, dst: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, dst.len() as u64, false)?;
        let len = (e - o) as usize;
        let mut done = 0usize;
        while done < len {
            // SAFETY: `dst` describes `len` mapped bytes (the SharedMem contract); the kernel
            // writes into `done..len` of it like a device would, no Rust reference exists to
            // that memory, and a read-only mapping makes the call fail with EFAULT, not UB.
            let r = unsafe {
                libc::pread(
                    self.fd(),
                    dst.as_ptr().add(done) as *mut libc::c_void,
                    len - done,
                    (o as usize + done) as libc::off_t,
                )
            };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(c.err(DiskError::Io));
            }
            if r == 0 {
                // Past the end of the file: the disk reads as zero there.
                dst.zero(done, len - done);
                break;
            }
            done += r as usize;
        }
        bump(&c.c.reads);
        bump_n(&c.c.bytes_read, len as u64);
        Ok(())
    }

    /// Writes `src` at `sector`.
    pub fn write_sectors(&self, sector: u64, src: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, src.len() as u64, true)?;
        let len = (e - o) as usize;
        let mut done = 0usize;
        while done < len {
            // SAFETY: `src` describes `len` mapped, readable bytes; the kernel only reads them.
            let r = unsafe {
                libc::pwrite(
                    self.fd(),
                    src.as_ptr().add(done) as *const libc::c_void,
                    len - done,
                    (o as usize + done) as libc::off_t,
                )
            };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(c.err(DiskError::Io));
            }
            if r == 0 {
                return Err(c.err(DiskError::Io));
            }
            done += r as usize;
        }
        bump(&c.c.writes);
        bump_n(&c.c.bytes_written, len as u64);
        Ok(())
    }

    /// Flushes (counted).
    pub fn flush(&self) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if c.fault.hit() {
            return Err(c.err(DiskError::Io));
        }
        self.inner.file.sync_data().map_err(|_| c.err(DiskError::Io))?;
        bump(&c.c.flushes);
        Ok(())
    }

    /// Discards `nr_sectors` from `sector` (reads as zero afterwards).
    pub fn discard(&self, sector: u64, nr_sectors: u64, _secure: bool) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if !c.discard.load(Ordering::Relaxed) {
            return Err(c.err(DiskError::Unsupported));
        }
        let len = nr_sectors.checked_mul(SECTOR).ok_or_else(|| c.err(DiskError::OutOfRange))?;
        let (o, e) = c.check(sector, len, true)?;
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o as libc::off_t,
                (e - o) as libc::off_t,
            )
        };
        if r != 0 {
            let err = io::Error::last_os_error();
            return Err(c.err(if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                DiskError::Unsupported
            } else {
                DiskError::Io
            }));
        }
        bump(&c.c.discards);
        Ok(())
    }
}

sim_storage!(FileDisk);

// ------------------------------------------------------------------ volatile write cache

#[derive(Debug)]
struct CachedInner {
    /// What survives a power cut.
    media: Mutex<Vec<u8>>,
    /// Writes not yet on the media, in arrival order: (byte offset, data).
    cache: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Flush does nothing (a disk that lies about its cache; for tests of the checkers).
    lying_flush: AtomicBool,
    common: Common,
}

/// A disk with a volatile write cache, like a real drive with its cache enabled: writes land
/// in the cache (and are readable from there at once); [`flush`](CachedDisk::flush) writes
/// the cache to the media; a [`power_cut`](CachedDisk::power_cut) loses whatever the drive
/// had not written back. Before a cut the drive may already have written back any subset of
/// its cache, in any order: the cut takes a seed that picks that subset. Discard is a cached
/// write of zeros. Clones share the disk.
#[derive(Clone, Debug)]
pub struct CachedDisk {
    inner: Arc<CachedInner>,
}

impl CachedDisk {
    /// A writable disk of `sectors` sectors (at most 1 GiB), empty cache.
    pub fn new(sectors: u64) -> CachedDisk {
        let bytes = RamDisk::bytes(sectors).expect("CachedDisk larger than 1 GiB");
        CachedDisk {
            inner: Arc::new(CachedInner {
                media: Mutex::new(vec![0u8; bytes]),
                cache: Mutex::new(Vec::new()),
                lying_flush: AtomicBool::new(false),
                common: Common::new(sectors, false, true),
            }),
        }
    }

    common_methods!();

    /// Makes flush a no-op that still reports success (a lying drive), or honest again.
    pub fn set_lying_flush(&self, lie: bool) {
        self.inner.lying_flush.store(lie, Ordering::Relaxed);
    }

    /// Writes not yet on the media.
    pub fn cached_writes(&self) -> usize {
        self.inner.cache.lock().unwrap().len()
    }

    /// Power cut: every cached write is written back or lost, each with probability 1/2
    /// (xorshift seeded by `seed`; 0 loses them all); the cache is empty afterwards.
    /// Returns (written back, lost).
    pub fn power_cut(&self, seed: u64) -> (usize, usize) {
        let mut cache = self.inner.cache.lock().unwrap();
        let mut media = self.inner.media.lock().unwrap();
        let mut x = seed;
        let (mut kept, mut lost) = (0, 0);
        for (off, data) in cache.drain(..) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if seed != 0 && x & 1 == 1 {
                media[off as usize..off as usize + data.len()].copy_from_slice(&data);
                kept += 1;
            } else {
                lost += 1;
            }
        }
        (kept, lost)
    }

    /// Test access: reads what is on the media (what a power cut now would leave).
    pub fn durable_read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let m = self.inner.media.lock().unwrap();
        let src =
            usize::try_from(off).ok().and_then(|o| m.get(o..o.checked_add(buf.len())?)).ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Test access: reads through the cache (what the drive returns to a read).
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.durable_read_at(off, buf)?;
        let cache = self.inner.cache.lock().unwrap();
        overlay(&cache, off, buf);
        Ok(())
    }

    /// Reads `dst.len()` bytes at `sector` (media overlaid with the cache).
    pub fn read_sectors(&self, sector: u64, dst: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, dst.len() as u64, false)?;
        let mut buf = vec![0u8; (e - o) as usize];
        self.read_at(o, &mut buf)?;
        dst.copy_from_private(0, &buf);
        bump(&c.c.reads);
        bump_n(&c.c.bytes_read, e - o);
        Ok(())
    }

    /// Writes `src` at `sector` into the cache.
    pub fn write_sectors(&self, sector: u64, src: SharedMem) -> Result<(), DiskError> {
        let c = &self.inner.common;
        let (o, e) = c.check(sector, src.len() as u64, true)?;
        let mut buf = vec![0u8; (e - o) as usize];
        src.copy_to_private(0, &mut buf);
        self.inner.cache.lock().unwrap().push((o, buf));
        bump(&c.c.writes);
        bump_n(&c.c.bytes_written, e - o);
        Ok(())
    }

    /// Writes the cache to the media, in order (unless the flush lies).
    pub fn flush(&self) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if c.fault.hit() {
            return Err(c.err(DiskError::Io));
        }
        bump(&c.c.flushes);
        if self.inner.lying_flush.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut cache = self.inner.cache.lock().unwrap();
        let mut media = self.inner.media.lock().unwrap();
        for (off, data) in cache.drain(..) {
            media[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    /// Discards (a cached write of zeros).
    pub fn discard(&self, sector: u64, nr_sectors: u64, _secure: bool) -> Result<(), DiskError> {
        let c = &self.inner.common;
        if !c.discard.load(Ordering::Relaxed) {
            return Err(c.err(DiskError::Unsupported));
        }
        let len = nr_sectors.checked_mul(SECTOR).ok_or_else(|| c.err(DiskError::OutOfRange))?;
        let (o, e) = c.check(sector, len, true)?;
        self.inner.cache.lock().unwrap().push((o, vec![0u8; (e - o) as usize]));
        bump(&c.c.discards);
        Ok(())
    }
}

fn overlay(cache: &[(u64, Vec<u8>)], off: u64, buf: &mut [u8]) {
    let end = off + buf.len() as u64;
    for (o, data) in cache {
        let (lo, hi) = ((*o).max(off), (*o + data.len() as u64).min(end));
        if lo < hi {
            buf[(lo - off) as usize..(hi - off) as usize].copy_from_slice(&data[(lo - o) as usize..(hi - o) as usize]);
        }
    }
}

sim_storage!(CachedDisk);

#[cfg(test)]
mod cached_tests {
    use super::*;

    #[test]
    fn cache_is_lost_on_power_cut_unless_flushed() {
        let d = CachedDisk::new(16);
        let mut page = vec![0u64; 64];
        // SAFETY: `page` outlives `m` and is only accessed through it.
        let m = unsafe { SharedMem::new(page.as_mut_ptr() as *mut u8, 512) };
        m.copy_from_private(0, &[7u8; 512]);
        d.write_sectors(1, m).unwrap();
        let mut b = [0u8; 512];
        d.read_at(512, &mut b).unwrap();
        assert_eq!(b, [7u8; 512], "a cached write reads back at once");
        d.durable_read_at(512, &mut b).unwrap();
        assert_eq!(b, [0u8; 512], "not on the media before a flush");
        assert_eq!(d.power_cut(0), (0, 1));
        d.read_at(512, &mut b).unwrap();
        assert_eq!(b, [0u8; 512], "lost in the power cut");
        d.write_sectors(2, m).unwrap();
        d.flush().unwrap();
        d.power_cut(0);
        d.read_at(1024, &mut b).unwrap();
        assert_eq!(b, [7u8; 512], "flushed writes survive");
        d.set_lying_flush(true);
        d.write_sectors(3, m).unwrap();
        d.flush().unwrap();
        assert_eq!(d.cached_writes(), 1, "a lying flush leaves the cache alone");
    }
}

#[cfg(test)]
mod ram_tests {
    use super::*;

    #[test]
    fn ram_disk_bytes_start_on_a_page_and_resize_keeps_the_prefix_and_zeroes_the_rest() {
        for len in [0, 512, 4096, 512 * 1024, (2 << 20) + 512] {
            let mut d = DiskBytes::zeroed(len);
            assert_eq!(d.len(), len);
            assert!((d.as_ptr() as usize).is_multiple_of(4096), "len {len}: not page-aligned");
            assert!(d.iter().all(|&b| b == 0), "len {len}: not zero");
            d.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 + 1);
            d.resize(len / 2);
            assert!((d.as_ptr() as usize).is_multiple_of(4096));
            assert!(d.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8 + 1), "len {len}: prefix lost");
            d.resize(len);
            assert!(d[..len / 2].iter().enumerate().all(|(i, &b)| b == (i % 251) as u8 + 1));
            assert!(d[len / 2..].iter().all(|&b| b == 0), "len {len}: regrown bytes not zero");
        }
    }

    #[test]
    fn a_ram_disk_block_is_read_from_one_page() {
        // The block at sector 8 starts at a page boundary of the process's memory, so the
        // copy into a granted page is page-aligned on both sides.
        let d = RamDisk::new(64);
        let data = d.inner.data.lock().unwrap();
        assert!((data[8 * 512..].as_ptr() as usize).is_multiple_of(4096));
    }
}
