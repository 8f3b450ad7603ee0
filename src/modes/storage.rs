//! What a backend serves: a block store addressed in 512-byte sectors.
//!
//! Data buffers are [`SharedMem`] views (a mapped grant, or a bounce page of the backend's
//! own), never Rust references, so a store can move data straight into or out of the
//! frontend's page with no copy of its own.

use crate::proto::shmem::SharedMem;

/// Error of a storage operation. Every error becomes `BLKIF_RSP_ERROR` or, for
/// [`StorageError::Unsupported`], `BLKIF_RSP_EOPNOTSUPP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// The range lies (partly) past the end of the disk.
    OutOfRange,
    /// The disk is read-only.
    ReadOnly,
    /// The operation is not offered by this store.
    Unsupported,
    /// The device failed.
    Io,
}

/// Properties a backend advertises for a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StorageInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes (512 or 4096): requests must be aligned to it.
    pub sector_size: u32,
    /// Physical block size in bytes.
    pub physical_sector_size: u32,
    /// Refuse writes.
    pub read_only: bool,
    /// The store has a volatile cache that [`Storage::flush`] commits.
    pub flush: bool,
    /// [`Storage::discard`] is available.
    pub discard: bool,
    /// Discard granularity in bytes (when `discard`).
    pub discard_granularity: u32,
    /// Secure discard is honoured.
    pub discard_secure: bool,
}

/// A block store.
pub trait Storage {
    /// The store's properties (may change: resize).
    fn info(&self) -> StorageInfo;
    /// Reads `dst.len()` bytes starting at 512-byte sector `sector` into `dst`.
    fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError>;
    /// Writes `src` at `sector`. The data may sit in a volatile cache until [`flush`](Self::flush).
    fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError>;
    /// Makes every completed write durable. Returns only when it is.
    fn flush(&mut self) -> Result<(), StorageError>;
    /// Discards `nr_sectors` from `sector` (reads of discarded sectors return zero or old data).
    fn discard(&mut self, sector: u64, nr_sectors: u64, secure: bool) -> Result<(), StorageError> {
        let _ = (sector, nr_sectors, secure);
        Err(StorageError::Unsupported)
    }
}
