//! Adapters from the frontend to common `no_std` storage traits.
//!
//! * [`Disk`]: an [`embedded_io`] `Read + Write + Seek` byte cursor over the virtual disk
//!   (for byte-stream consumers such as `simple-fatfs`). Unaligned writes are done as
//!   read-modify-write of whole logical sectors.
//! * [`SdmmcDevice`] (feature `embedded-sdmmc`): `embedded_sdmmc::BlockDevice`, the trait the
//!   `embedded-sdmmc` FAT stack mounts.
//!
//! Both use the frontend's blocking conveniences and so need a board that implements
//! [`Wait`]. They assume nothing else is in flight on the frontend.

use core::fmt;

use crate::modes::frontend::{Frontend, Status};
use crate::platform::{FrontendPlatform, Wait};
use crate::proto::blkif::SECTOR_SIZE;

/// Error of an adapter operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DiskError {
    /// The backend answered with an error (or the device failed).
    Io,
    /// The backend does not support the operation.
    Unsupported,
    /// The position or range lies outside the disk.
    OutOfRange,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskError::Io => "virtual disk I/O error",
            DiskError::Unsupported => "operation not supported by the backend",
            DiskError::OutOfRange => "outside the virtual disk",
        })
    }
}

impl core::error::Error for DiskError {}

impl embedded_io::Error for DiskError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            DiskError::Io => embedded_io::ErrorKind::Other,
            DiskError::Unsupported => embedded_io::ErrorKind::Unsupported,
            DiskError::OutOfRange => embedded_io::ErrorKind::InvalidInput,
        }
    }
}

fn status_err(s: Status) -> DiskError {
    match s {
        Status::NotSupported => DiskError::Unsupported,
        _ => DiskError::Io,
    }
}

/// Largest logical sector the adapters handle (a bounce buffer of this size lives in each).
pub const MAX_LOGICAL_SECTOR: usize = 4096;

/// A byte cursor over the virtual disk.
pub struct Disk<'a, P: FrontendPlatform + Wait> {
    front: &'a mut Frontend,
    plat: &'a mut P,
    pos: u64,
}

impl<'a, P: FrontendPlatform + Wait> Disk<'a, P> {
    /// A cursor at byte 0.
    pub fn new(front: &'a mut Frontend, plat: &'a mut P) -> Self {
        Disk { front, plat, pos: 0 }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.front.negotiated().sectors.saturating_mul(SECTOR_SIZE as u64)
    }

    /// Whether the disk is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn block(&self) -> usize {
        (self.front.negotiated().sector_size as usize).clamp(SECTOR_SIZE, MAX_LOGICAL_SECTOR)
    }

    fn io(&mut self, buf: &mut [u8], write: bool) -> Result<usize, DiskError> {
        let len = self.len();
        if self.pos >= len || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.block() as u64;
        let avail = (len - self.pos).min(buf.len() as u64) as usize;
        let off = (self.pos % bs) as usize;
        let sector = (self.pos - off as u64) / SECTOR_SIZE as u64;
        let n;
        if off == 0 && avail >= bs as usize {
            // Aligned: transfer whole blocks directly, up to one request's worth.
            let max = self.front.max_request_bytes().max(bs as usize);
            n = (avail / bs as usize * bs as usize).min(max / bs as usize * bs as usize);
            let r = if write {
                self.front.write_blocking(self.plat, sector, &buf[..n])
            } else {
                self.front.read_blocking(self.plat, sector, &mut buf[..n])
            };
            r.map_err(status_err)?;
        } else {
            // Partial block: read it, patch it, write it back.
            let b = bs as usize;
            n = avail.min(b - off);
            let mut tmp = [0u8; MAX_LOGICAL_SECTOR];
            self.front.read_blocking(self.plat, sector, &mut tmp[..b]).map_err(status_err)?;
            if write {
                tmp[off..off + n].copy_from_slice(&buf[..n]);
                self.front.write_blocking(self.plat, sector, &tmp[..b]).map_err(status_err)?;
            } else {
                buf[..n].copy_from_slice(&tmp[off..off + n]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<P: FrontendPlatform + Wait> embedded_io::ErrorType for Disk<'_, P> {
    type Error = DiskError;
}

impl<P: FrontendPlatform + Wait> embedded_io::Read for Disk<'_, P> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DiskError> {
        self.io(buf, false)
    }
}

impl<P: FrontendPlatform + Wait> embedded_io::Write for Disk<'_, P> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, DiskError> {
        if !buf.is_empty() && self.pos >= self.len() {
            return Err(DiskError::OutOfRange);
        }
        // `io` only reads from `buf` when writing; give it a private copy chunk by chunk.
        let mut chunk = [0u8; 4096];
        let n = buf.len().min(chunk.len());
        chunk[..n].copy_from_slice(&buf[..n]);
        self.io(&mut chunk[..n], true)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if !self.front.negotiated().flush {
            return Ok(());
        }
        self.front.flush_blocking(self.plat).map_err(status_err)
    }
}

impl<P: FrontendPlatform + Wait> embedded_io::Seek for Disk<'_, P> {
    fn seek(&mut self, pos: embedded_io::SeekFrom) -> Result<u64, DiskError> {
        let len = self.len() as i128;
        let new = match pos {
            embedded_io::SeekFrom::Start(p) => p as i128,
            embedded_io::SeekFrom::End(d) => len + d as i128,
            embedded_io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > u64::MAX as i128 {
            return Err(DiskError::OutOfRange);
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

#[cfg(feature = "embedded-sdmmc")]
pub use sdmmc::SdmmcDevice;

#[cfg(feature = "embedded-sdmmc")]
mod sdmmc {
    use core::cell::RefCell;

    use embedded_sdmmc_types::{Block, BlockCount, BlockDevice, BlockIdx};

    use super::{DiskError, status_err};
    use crate::modes::frontend::Frontend;
    use crate::platform::{FrontendPlatform, Wait};

    /// `embedded_sdmmc::BlockDevice` over a connected frontend (512-byte blocks; the
    /// backend's logical sector size must be 512).
    pub struct SdmmcDevice<P: FrontendPlatform + Wait> {
        inner: RefCell<(Frontend, P)>,
    }

    impl<P: FrontendPlatform + Wait> SdmmcDevice<P> {
        /// Wraps a connected frontend and its platform.
        pub fn new(front: Frontend, plat: P) -> Self {
            SdmmcDevice { inner: RefCell::new((front, plat)) }
        }
        /// Gives them back.
        pub fn into_inner(self) -> (Frontend, P) {
            self.inner.into_inner()
        }
    }

    /// 512-byte logical sectors only, and the whole run inside the disk.
    fn check_range(front: &Frontend, start: BlockIdx, n: usize) -> Result<(), DiskError> {
        if front.negotiated().sector_size != 512 {
            return Err(DiskError::Unsupported);
        }
        if start.0 as u64 + n as u64 > front.negotiated().sectors {
            return Err(DiskError::OutOfRange);
        }
        Ok(())
    }

    fn as_bytes_mut(blocks: &mut [Block]) -> impl Iterator<Item = &mut [u8; 512]> {
        blocks.iter_mut().map(|b| &mut b.contents)
    }

    impl<P: FrontendPlatform + Wait> BlockDevice for SdmmcDevice<P> {
        type Error = DiskError;

        fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), DiskError> {
            let mut g = self.inner.borrow_mut();
            let (front, plat) = &mut *g;
            check_range(front, start, blocks.len())?;
            // One request per block run that fits: read into a private buffer.
            let mut buf = [0u8; 16 * 512];
            let mut sector = start.0 as u64;
            let mut it = as_bytes_mut(blocks).peekable();
            while it.peek().is_some() {
                let mut run: heapless::Vec<&mut [u8; 512], 16> = heapless::Vec::new();
                while run.len() < 16 {
                    match it.next() {
                        Some(b) => {
                            let _ = run.push(b);
                        }
                        None => break,
                    }
                }
                let n = run.len() * 512;
                front.read_blocking(plat, sector, &mut buf[..n]).map_err(status_err)?;
                for (i, b) in run.iter_mut().enumerate() {
                    b.copy_from_slice(&buf[i * 512..(i + 1) * 512]);
                }
                sector += run.len() as u64;
            }
            Ok(())
        }

        fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), DiskError> {
            let mut g = self.inner.borrow_mut();
            let (front, plat) = &mut *g;
            check_range(front, start, blocks.len())?;
            let mut buf = [0u8; 16 * 512];
            for (k, run) in blocks.chunks(16).enumerate() {
                for (i, b) in run.iter().enumerate() {
                    buf[i * 512..(i + 1) * 512].copy_from_slice(&b.contents);
                }
                let sector = start.0 as u64 + (k * 16) as u64;
                front.write_blocking(plat, sector, &buf[..run.len() * 512]).map_err(status_err)?;
            }
            Ok(())
        }

        fn num_blocks(&self) -> Result<BlockCount, DiskError> {
            let g = self.inner.borrow();
            Ok(BlockCount(g.0.negotiated().sectors.min(u32::MAX as u64) as u32))
        }
    }
}
