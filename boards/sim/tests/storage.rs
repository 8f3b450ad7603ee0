//! RamDisk and FileDisk.
#![cfg(feature = "backend")]

use xenblk::modes::storage::{Storage, StorageError};
use xenblk::proto::shmem::SharedMem;
use xenblk_sim::shm::MappedRegion;
use xenblk_sim::{DiskError, FileDisk, RamDisk, Trigger};

fn buf(pages: usize) -> MappedRegion {
    MappedRegion::anonymous(pages * 4096).unwrap()
}

fn exercise(disk: &mut dyn Storage) {
    let sectors = disk.info().sectors;
    let a = buf(2);
    let m: SharedMem = a.shared();
    let pattern: Vec<u8> = (0..8192).map(|i| (i * 7 % 251) as u8).collect();
    m.write_bytes(0, &pattern);
    disk.write(8, m).unwrap();
    disk.write(sectors - 1, m.slice(0, 512)).unwrap();
    let b = buf(2);
    disk.read(8, b.shared()).unwrap();
    let mut back = vec![0u8; 8192];
    b.shared().read_bytes(0, &mut back);
    assert_eq!(back, pattern);
    // Unwritten sectors read as zero.
    disk.read(100, b.shared().slice(0, 512)).unwrap();
    let mut z = [1u8; 512];
    b.shared().read_bytes(0, &mut z);
    assert!(z.iter().all(|&x| x == 0));
    // Out of range.
    assert_eq!(disk.read(sectors, b.shared().slice(0, 512)), Err(StorageError::OutOfRange));
    assert_eq!(disk.write(sectors - 1, m.slice(0, 1024)), Err(StorageError::OutOfRange));
    assert_eq!(disk.read(u64::MAX / 2, b.shared().slice(0, 512)), Err(StorageError::OutOfRange));
    disk.flush().unwrap();
    // Discard zeroes (or is unsupported).
    match disk.discard(8, 8, false) {
        Ok(()) => {
            disk.read(8, b.shared()).unwrap();
            let mut d = vec![1u8; 4096];
            b.shared().read_bytes(0, &mut d);
            assert!(d.iter().all(|&x| x == 0));
        }
        Err(e) => assert_eq!(e, StorageError::Unsupported),
    }
}

#[test]
fn ramdisk_round_trip_range_readonly_resize() {
    let mut d = RamDisk::new(2048);
    assert_eq!(d.info().sectors, 2048);
    assert_eq!(d.info().sector_size, 512);
    exercise(&mut d);
    let s = d.stats();
    assert_eq!((s.writes, s.flushes, s.discards), (2, 1, 1));
    assert_eq!(s.errors, 3);
    // Test access sees the same bytes.
    let mut b = [0u8; 4];
    d.read_at(8 * 512 + 4, &mut b).unwrap();
    assert_eq!(b, [0; 4], "discarded");
    d.write_at(0, b"boot").unwrap();
    // Read-only.
    let mut ro = d.clone().read_only();
    assert!(ro.info().read_only);
    let m = buf(1);
    assert_eq!(ro.write(0, m.shared()), Err(StorageError::ReadOnly));
    ro.read(0, m.shared()).unwrap();
    let mut h = [0u8; 4];
    m.shared().read_bytes(0, &mut h);
    assert_eq!(&h, b"boot");
    d.set_read_only(false);
    // Resize.
    d.set_sectors(4096).unwrap();
    assert_eq!(d.info().sectors, 4096);
    d.write(4095, m.shared().slice(0, 512)).unwrap();
    d.set_sectors(16).unwrap();
    assert_eq!(d.read(16, m.shared().slice(0, 512)), Err(StorageError::OutOfRange));
    assert_eq!(d.set_sectors((1 << 30) / 512 + 1), Err(DiskError::OutOfRange));
    assert!(RamDisk::try_new((1 << 30) / 512 + 1).is_err());
    // Injected errors.
    d.set_fault(Trigger::Nth(2));
    d.read(0, m.shared().slice(0, 512)).unwrap();
    assert_eq!(d.read(0, m.shared().slice(0, 512)), Err(StorageError::Io));
    d.read(0, m.shared().slice(0, 512)).unwrap();
}

#[test]
fn ramdisk_of_one_gib_is_lazy() {
    let mut d = RamDisk::new((1 << 30) / 512);
    let m = buf(1);
    m.shared().write_bytes(0, b"end");
    d.write((1 << 30) / 512 - 8, m.shared()).unwrap();
    let mut b = [0u8; 3];
    d.read_at((1 << 30) - 4096, &mut b).unwrap();
    assert_eq!(&b, b"end");
}

#[test]
fn filedisk_round_trip_range_readonly_resize() {
    let dir = std::env::temp_dir().join(format!("xenblk-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let mut d = FileDisk::create(&path, 2048).unwrap();
    assert_eq!(d.info().sectors, 2048);
    exercise(&mut d);
    assert_eq!(d.stats().flushes, 1);
    // Data is in the file.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 2048 * 512);
    assert_eq!(bytes[2047 * 512 + 1], 7);
    // Read-only open.
    let mut ro = FileDisk::open(&path, true).unwrap();
    assert!(ro.info().read_only);
    let m = buf(1);
    assert_eq!(ro.write(0, m.shared()), Err(StorageError::ReadOnly));
    ro.read(2047, m.shared().slice(0, 512)).unwrap();
    let mut b = [0u8; 2];
    m.shared().read_bytes(0, &mut b);
    assert_eq!(b, [0, 7]);
    // Resize grows the file; reads of the new part are zero.
    d.set_sectors(4096).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 * 512);
    d.read(4000, m.shared()).unwrap();
    // A read-only disk over a shorter file reads zeros past its end.
    ro.set_sectors(8192).unwrap();
    m.shared().write_bytes(0, &[9u8; 4096]);
    ro.read(8184, m.shared()).unwrap();
    let mut z = vec![1u8; 4096];
    m.shared().read_bytes(0, &mut z);
    assert!(z.iter().all(|&x| x == 0));
    // Writing into a read-only mapping fails cleanly (EFAULT), it does not crash.
    let f = std::fs::File::open(&path).unwrap();
    let rom = MappedRegion::map_fd(std::os::fd::AsFd::as_fd(&f), 0, 4096, false).unwrap();
    assert_eq!(d.read(0, rom.shared()), Err(StorageError::Io));
    std::fs::remove_dir_all(&dir).unwrap();
}
