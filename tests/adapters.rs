//! The frontend's blocking conveniences and its `embedded-io` byte cursor, against a
//! backend thread on the sim.
#![cfg(all(feature = "frontend", feature = "backend"))]

mod common;

use embedded_io::{Read, Seek, SeekFrom, Write};
use xenblk::modes::adapters::Disk;
use xenblk::modes::backend::BackendConfig;
use xenblk::modes::frontend::{Frontend, FrontendConfig};
use xenblk_sim::RamDisk;

const MSG: &[u8] = b"unaligned bytes across a sector boundary";

#[test]
fn blocking_read_write_and_unaligned_cursor() {
    let disk = RamDisk::new(4096);
    let (_hv, mut guest, spec, back) = common::guest_with_backend(disk.clone(), BackendConfig::default());
    let mut front = Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap();
    assert!(front.wait_connected(&mut guest, 200));

    // Blocking, larger than one request (split internally).
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 253) as u8).collect();
    front.write_blocking(&mut guest, 64, &big).unwrap();
    let mut back_buf = vec![0u8; big.len()];
    front.read_blocking(&mut guest, 64, &mut back_buf).unwrap();
    assert!(back_buf == big);
    front.flush_blocking(&mut guest).unwrap();

    // The byte cursor: unaligned writes are read-modify-write of whole sectors.
    {
        let mut d = Disk::new(&mut front, &mut guest);
        assert_eq!(d.len(), 4096 * 512);
        d.seek(SeekFrom::Start(1000)).unwrap();
        d.write_all(MSG).unwrap();
        d.flush().unwrap();
        d.seek(SeekFrom::Start(990)).unwrap();
        let mut got = [0u8; 60];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got[10..10 + MSG.len()], MSG);
        assert_eq!(&got[..10], &[0u8; 10]);
        // Past the end: writes fail, reads return 0.
        d.seek(SeekFrom::End(0)).unwrap();
        assert!(d.write(b"x").is_err());
        assert_eq!(d.read(&mut got).unwrap(), 0);
        assert!(d.seek(SeekFrom::Current(-(4096 * 512 + 1))).is_err());
    }
    let mut raw = vec![0u8; MSG.len()];
    disk.read_at(1000, &mut raw).unwrap();
    assert_eq!(raw, MSG);
    front.close(&mut guest);
    assert_eq!(back.stop(), 0);
}
