//! Mounts a FAT volume made by `mkfs.vfat` (Debian dosfstools) through the frontend's
//! `embedded_sdmmc::BlockDevice`, on the sim, writes and reads files, remounts and reads
//! them again, then checks the image with `fsck.fat`.

mod common;

use std::process::Command;

use embedded_sdmmc::{Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use xenblk::modes::adapters::SdmmcDevice;
use xenblk::modes::backend::BackendConfig;
use xenblk::modes::frontend::{Frontend, FrontendConfig};
use xenblk_sim::RamDisk;

struct Clock;
impl TimeSource for Clock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 11,
            zero_indexed_day: 0,
            hours: 12,
            minutes: 0,
            seconds: 0,
        }
    }
}

const DISK_MIB: u64 = 32;
const PART_START: u64 = 2048;

/// A 32 MiB image: MBR with one FAT16 partition at sector 2048, formatted by mkfs.vfat.
fn make_image(dir: &std::path::Path) -> Vec<u8> {
    let img = dir.join("fat.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(DISK_MIB << 20).unwrap();
    drop(f);
    let kib = ((DISK_MIB << 20) - PART_START * 512) / 1024;
    let out = Command::new("mkfs.vfat")
        .args(["-F", "16", "-n", "XENBLK", "--offset", &PART_START.to_string()])
        .arg(&img)
        .arg(kib.to_string())
        .output()
        .expect("mkfs.vfat (Debian dosfstools) must be installed: apt-get install dosfstools");
    assert!(out.status.success(), "mkfs.vfat failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut data = std::fs::read(&img).unwrap();
    // The partition table embedded-sdmmc looks for.
    let e = &mut data[446..462];
    e.fill(0);
    e[4] = 0x0e; // FAT16 (LBA)
    e[8..12].copy_from_slice(&(PART_START as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(((DISK_MIB << 20) / 512 - PART_START) as u32).to_le_bytes());
    data[510] = 0x55;
    data[511] = 0xaa;
    data
}

#[test]
fn fat_volume_through_the_frontend() {
    let tmp = std::env::temp_dir().join(format!("xenblk-fat-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let image = make_image(&tmp);
    let disk = RamDisk::new(image.len() as u64 / 512);
    disk.write_at(0, &image).unwrap();

    let (_hv, mut guest, spec, back) = common::guest_with_backend(disk.clone(), BackendConfig::default());

    let mut front = Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap();
    assert!(front.wait_connected(&mut guest, 200), "frontend did not connect: {:?}", front.phase());
    assert_eq!(front.negotiated().sectors, image.len() as u64 / 512);

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dev = SdmmcDevice::new(front, guest);
    {
        let vm = VolumeManager::new(dev, Clock);
        let vol = vm.open_volume(VolumeIdx(0)).expect("open volume");
        let root = vol.open_root_dir().expect("root dir");
        let f = root.open_file_in_dir("HELLO.TXT", Mode::ReadWriteCreateOrTruncate).unwrap();
        f.write(b"hello from a xenblk frontend\n").unwrap();
        f.close().unwrap();
        let f = root.open_file_in_dir("BIG.BIN", Mode::ReadWriteCreateOrTruncate).unwrap();
        for chunk in payload.chunks(7000) {
            f.write(chunk).unwrap();
        }
        f.close().unwrap();
        drop(root);
        vol.close().unwrap();
        let dev = vm.free().0;
        // Remount from scratch and read everything back.
        let vm = VolumeManager::new(dev, Clock);
        let vol = vm.open_volume(VolumeIdx(0)).expect("reopen volume");
        let root = vol.open_root_dir().unwrap();
        let f = root.open_file_in_dir("HELLO.TXT", Mode::ReadOnly).unwrap();
        let mut buf = [0u8; 64];
        let n = f.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello from a xenblk frontend\n");
        f.close().unwrap();
        let f = root.open_file_in_dir("BIG.BIN", Mode::ReadOnly).unwrap();
        let mut back = Vec::new();
        let mut b = [0u8; 4096];
        while !f.is_eof() {
            let n = f.read(&mut b).unwrap();
            back.extend_from_slice(&b[..n]);
        }
        assert!(back == payload, "BIG.BIN read back differs ({} bytes)", back.len());
        f.close().unwrap();
        drop(root);
        vol.close().unwrap();
        let (mut front, mut guest) = vm.free().0.into_inner();
        front.close(&mut guest);
        for _ in 0..200 {
            if front.phase() == xenblk::modes::frontend::Phase::Closed {
                break;
            }
            let _ = xenblk::platform::Wait::wait(&mut guest, Some(10));
            front.on_xenstore(&mut guest);
        }
        assert_eq!(front.phase(), xenblk::modes::frontend::Phase::Closed);
        front.shutdown(&mut guest);
    }
    assert_eq!(back.stop(), 0, "backend kept mappings after shutdown");

    // The image the backend holds is a valid FAT volume with both files.
    let mut img = vec![0u8; image.len()];
    disk.read_at(0, &mut img).unwrap();
    let part = tmp.join("part.img");
    std::fs::write(&part, &img[PART_START as usize * 512..]).unwrap();
    let out = Command::new("fsck.fat").args(["-n", "-l"]).arg(&part).output().expect("fsck.fat");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fsck.fat found problems:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("/HELLO.TXT") && text.contains("/BIG.BIN"), "fsck.fat does not list both files: {text}");
    let _ = std::fs::remove_dir_all(&tmp);
}
