//! A disk image file (or block device) as the backend's [`Storage`], with `pread`/`pwrite`
//! through a private bounce buffer (the frontend may change its pages concurrently, so the
//! file is never handed a pointer into shared memory).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use xenblk::modes::storage::{Storage, StorageError, StorageInfo};
use xenblk::proto::shmem::SharedMem;

/// A file-backed disk.
#[derive(Debug)]
pub struct FileStorage {
    f: File,
    sectors: u64,
    read_only: bool,
    buf: Vec<u8>,
}

impl FileStorage {
    /// Opens `path` (read-write unless `read_only`). The size is taken from the file (or the
    /// block device) and rounded down to whole 512-byte sectors.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> std::io::Result<FileStorage> {
        let mut f = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
        Ok(FileStorage { f, sectors: len / 512, read_only, buf: Vec::new() })
    }

    fn range(&self, sector: u64, len: usize) -> Result<u64, StorageError> {
        let end = sector.checked_add((len as u64).div_ceil(512)).ok_or(StorageError::OutOfRange)?;
        if end > self.sectors {
            return Err(StorageError::OutOfRange);
        }
        Ok(sector * 512)
    }
}

impl Storage for FileStorage {
    fn info(&self) -> StorageInfo {
        StorageInfo {
            sectors: self.sectors,
            sector_size: 512,
            physical_sector_size: 4096,
            read_only: self.read_only,
            flush: true,
            discard: false,
            discard_granularity: 0,
            discard_secure: false,
        }
    }
    fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError> {
        let off = self.range(sector, dst.len())?;
        self.buf.resize(dst.len(), 0);
        self.f.read_exact_at(&mut self.buf, off).map_err(|_| StorageError::Io)?;
        dst.copy_from_private(0, &self.buf);
        Ok(())
    }
    fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let off = self.range(sector, src.len())?;
        self.buf.resize(src.len(), 0);
        src.copy_to_private(0, &mut self.buf);
        self.f.write_all_at(&self.buf, off).map_err(|_| StorageError::Io)
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        self.f.sync_data().map_err(|_| StorageError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_bounds() {
        let p = std::env::temp_dir().join(format!("xenblk-linux-storage-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mut s = FileStorage::open(&p, false).unwrap();
        assert_eq!(s.info().sectors, 16);
        let mut words = vec![0u64; 128];
        // SAFETY: `words` outlives `mem` and is not otherwise accessed while `mem` is used.
        let mem = unsafe { SharedMem::new(words.as_mut_ptr().cast(), 1024) };
        mem.copy_from_private(0, &[0xab; 1024]);
        s.write(14, mem).unwrap();
        assert_eq!(s.write(15, mem), Err(StorageError::OutOfRange));
        mem.zero(0, 1024);
        s.read(14, mem).unwrap();
        let mut b = [0u8; 1024];
        mem.copy_to_private(0, &mut b);
        assert_eq!(b, [0xab; 1024]);
        s.flush().unwrap();
        drop(s);
        let mut ro = FileStorage::open(&p, true).unwrap();
        assert_eq!(ro.write(0, mem), Err(StorageError::ReadOnly));
        assert_eq!(std::fs::read(&p).unwrap()[14 * 512], 0xab);
        let _ = std::fs::remove_file(&p);
    }
}
