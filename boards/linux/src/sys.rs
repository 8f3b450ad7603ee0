//! Linux UAPI for `/dev/xen/{evtchn,gntdev,gntalloc}`: ioctl numbers and argument layouts.
//!
//! Numbers and layouts are taken from the kernel's public headers (`linux-libc-dev`:
//! `/usr/include/xen/{evtchn,gntdev,gntalloc}.h`); the unit tests compile those headers with
//! `gcc` (when present) and compare every number, size and offset.

/// `_IOC(_IOC_NONE, ty, nr, size)` as the asm-generic ioctl encoding defines it
/// (`dir << 30 | size << 16 | type << 8 | nr`; `_IOC_NONE` = 0).
pub const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindInterdomain {
    /// Remote domain.
    pub remote_domain: u32,
    /// Remote port.
    pub remote_port: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindUnboundPort {
    /// Domain allowed to bind the new port.
    pub remote_domain: u32,
}

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify` (same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnPort {
    /// Local port.
    pub port: u32,
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`; returns the local port.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong = ioc_none(b'E', 1, size_of::<EvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`; returns the local port.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong = ioc_none(b'E', 2, size_of::<EvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, size_of::<EvtchnPort>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, size_of::<EvtchnPort>());

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntdevGrantRef {
    /// Granting domain.
    pub domid: u32,
    /// Reference.
    pub gref: u32,
}

/// Fixed head of `struct ioctl_gntdev_map_grant_ref` (followed by `count` refs; the C
/// struct declares `refs[1]`, so its `sizeof` is this head plus one ref).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntdevMapGrantRefHead {
    /// Number of refs that follow.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// Out: the `mmap` offset of the mapping.
    pub index: u64,
}

/// `sizeof(struct ioctl_gntdev_map_grant_ref)` (with its one-element `refs`).
pub const GNTDEV_MAP_GRANT_REF_SIZE: usize = size_of::<GntdevMapGrantRefHead>() + size_of::<GntdevGrantRef>();

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntdevUnmapGrantRef {
    /// The offset from the map ioctl.
    pub index: u64,
    /// Number of pages.
    pub count: u32,
    /// Padding.
    pub pad: u32,
}

/// The `foreign` member of the source/dest union of `struct gntdev_grant_copy_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntdevCopyForeign {
    /// Reference.
    pub gref: u32,
    /// Byte offset in the page.
    pub offset: u16,
    /// Granting domain.
    pub domid: u16,
}

/// The source/dest union of `struct gntdev_grant_copy_segment`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union GntdevCopyPtr {
    /// A local virtual address (must not cross a page boundary for `len`).
    pub virt: *mut libc::c_void,
    /// A foreign page.
    pub foreign: GntdevCopyForeign,
}

/// `struct gntdev_grant_copy_segment`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GntdevGrantCopySegment {
    /// Source.
    pub source: GntdevCopyPtr,
    /// Destination.
    pub dest: GntdevCopyPtr,
    /// Bytes.
    pub len: u16,
    /// `GNTCOPY_source_gref` / `GNTCOPY_dest_gref`.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
}

/// `GNTCOPY_source_gref` (xen/grant_table.h).
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GntdevGrantCopy {
    /// Number of segments.
    pub count: libc::c_uint,
    /// The segments.
    pub segments: *mut GntdevGrantCopySegment,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong = ioc_none(b'G', 0, GNTDEV_MAP_GRANT_REF_SIZE);
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: libc::c_ulong = ioc_none(b'G', 1, size_of::<GntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: libc::c_ulong = ioc_none(b'G', 8, size_of::<GntdevGrantCopy>());

/// Fixed head of `struct ioctl_gntalloc_alloc_gref` (followed by `count` u32 gref ids).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntallocAllocGrefHead {
    /// Domain that may map the pages.
    pub domid: u16,
    /// `GNTALLOC_FLAG_WRITABLE`.
    pub flags: u16,
    /// Number of pages.
    pub count: u32,
    /// Out: the `mmap` offset.
    pub index: u64,
}

/// `sizeof(struct ioctl_gntalloc_alloc_gref)`: head + `gref_ids[1]`, padded to 8.
pub const GNTALLOC_ALLOC_GREF_SIZE: usize = size_of::<GntallocAllocGrefHead>() + 8;
/// `GNTALLOC_FLAG_WRITABLE`.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GntallocDeallocGref {
    /// The offset from the alloc ioctl.
    pub index: u64,
    /// Number of pages.
    pub count: u32,
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub const IOCTL_GNTALLOC_ALLOC_GREF: libc::c_ulong = ioc_none(b'G', 5, GNTALLOC_ALLOC_GREF_SIZE);
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub const IOCTL_GNTALLOC_DEALLOC_GREF: libc::c_ulong = ioc_none(b'G', 6, size_of::<GntallocDeallocGref>());

/// Page size assumed by the grant interfaces.
pub const PAGE: usize = 4096;

#[cfg(test)]
pub(crate) mod ctest {
    //! Compile a C program against the system headers and collect `name value` lines.
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;

    /// Returns `None` (the caller skips) when gcc or a header is missing.
    pub fn probe(name: &str, headers: &[&str], body: &str) -> Option<HashMap<String, u64>> {
        for h in headers {
            if !Path::new("/usr/include").join(h).exists() {
                eprintln!("skip: /usr/include/{h} missing");
                return None;
            }
        }
        let dir = std::env::temp_dir().join(format!("xenblk-linux-ctest-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut src = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <sys/ioctl.h>\n\
             typedef uint16_t domid_t;\ntypedef uint32_t grant_ref_t;\n",
        );
        for h in headers {
            src.push_str(&format!("#include <{h}>\n"));
        }
        src.push_str("#define P(n, v) printf(\"%s %llu\\n\", n, (unsigned long long)(v))\nint main(void) {\n");
        src.push_str(body);
        src.push_str("return 0; }\n");
        let c = dir.join("t.c");
        let exe = dir.join("t");
        std::fs::write(&c, src).ok()?;
        let out = match Command::new("gcc").arg("-o").arg(&exe).arg(&c).output() {
            Ok(o) => o,
            Err(_) => {
                eprintln!("skip: no gcc");
                return None;
            }
        };
        assert!(out.status.success(), "gcc failed: {}", String::from_utf8_lossy(&out.stderr));
        let run = Command::new(&exe).output().expect("run probe");
        let _ = std::fs::remove_dir_all(&dir);
        let mut m = HashMap::new();
        for line in String::from_utf8_lossy(&run.stdout).lines() {
            let (k, v) = line.split_once(' ').expect("probe line");
            m.insert(k.to_string(), v.parse().expect("probe value"));
        }
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    /// An ioctl number as the probe prints it.
    #[allow(clippy::unnecessary_cast)]
    fn ul(v: libc::c_ulong) -> u64 {
        v as u64
    }

    #[test]
    fn evtchn_matches_uapi_header() {
        let Some(m) = ctest::probe(
            "evtchn",
            &["xen/evtchn.h"],
            r#"P("bind_interdomain", IOCTL_EVTCHN_BIND_INTERDOMAIN);
               P("bind_unbound", IOCTL_EVTCHN_BIND_UNBOUND_PORT);
               P("unbind", IOCTL_EVTCHN_UNBIND);
               P("notify", IOCTL_EVTCHN_NOTIFY);
               P("sz_bi", sizeof(struct ioctl_evtchn_bind_interdomain));
               P("off_rport", offsetof(struct ioctl_evtchn_bind_interdomain, remote_port));"#,
        ) else {
            return;
        };
        assert_eq!(m["bind_interdomain"], ul(IOCTL_EVTCHN_BIND_INTERDOMAIN));
        assert_eq!(m["bind_unbound"], ul(IOCTL_EVTCHN_BIND_UNBOUND_PORT));
        assert_eq!(m["unbind"], ul(IOCTL_EVTCHN_UNBIND));
        assert_eq!(m["notify"], ul(IOCTL_EVTCHN_NOTIFY));
        assert_eq!(m["sz_bi"], size_of::<EvtchnBindInterdomain>() as u64);
        assert_eq!(m["off_rport"], offset_of!(EvtchnBindInterdomain, remote_port) as u64);
    }

    #[test]
    fn gntdev_matches_uapi_header() {
        let Some(m) = ctest::probe(
            "gntdev",
            &["xen/gntdev.h"],
            r#"P("map", IOCTL_GNTDEV_MAP_GRANT_REF);
               P("unmap", IOCTL_GNTDEV_UNMAP_GRANT_REF);
               P("copy", IOCTL_GNTDEV_GRANT_COPY);
               P("sz_map", sizeof(struct ioctl_gntdev_map_grant_ref));
               P("off_index", offsetof(struct ioctl_gntdev_map_grant_ref, index));
               P("off_refs", offsetof(struct ioctl_gntdev_map_grant_ref, refs));
               P("sz_ref", sizeof(struct ioctl_gntdev_grant_ref));
               P("sz_unmap", sizeof(struct ioctl_gntdev_unmap_grant_ref));
               P("sz_seg", sizeof(struct gntdev_grant_copy_segment));
               P("off_dest", offsetof(struct gntdev_grant_copy_segment, dest));
               P("off_len", offsetof(struct gntdev_grant_copy_segment, len));
               P("off_flags", offsetof(struct gntdev_grant_copy_segment, flags));
               P("off_status", offsetof(struct gntdev_grant_copy_segment, status));
               P("off_foff", offsetof(struct gntdev_grant_copy_segment, source.foreign.offset));
               P("off_fdom", offsetof(struct gntdev_grant_copy_segment, source.foreign.domid));
               P("sz_copy", sizeof(struct ioctl_gntdev_grant_copy));
               P("off_segs", offsetof(struct ioctl_gntdev_grant_copy, segments));"#,
        ) else {
            return;
        };
        assert_eq!(m["map"], ul(IOCTL_GNTDEV_MAP_GRANT_REF));
        assert_eq!(m["unmap"], ul(IOCTL_GNTDEV_UNMAP_GRANT_REF));
        assert_eq!(m["copy"], ul(IOCTL_GNTDEV_GRANT_COPY));
        assert_eq!(m["sz_map"], GNTDEV_MAP_GRANT_REF_SIZE as u64);
        assert_eq!(m["off_index"], offset_of!(GntdevMapGrantRefHead, index) as u64);
        assert_eq!(m["off_refs"], size_of::<GntdevMapGrantRefHead>() as u64);
        assert_eq!(m["sz_ref"], size_of::<GntdevGrantRef>() as u64);
        assert_eq!(m["sz_unmap"], size_of::<GntdevUnmapGrantRef>() as u64);
        assert_eq!(m["sz_seg"], size_of::<GntdevGrantCopySegment>() as u64);
        assert_eq!(m["off_dest"], offset_of!(GntdevGrantCopySegment, dest) as u64);
        assert_eq!(m["off_len"], offset_of!(GntdevGrantCopySegment, len) as u64);
        assert_eq!(m["off_flags"], offset_of!(GntdevGrantCopySegment, flags) as u64);
        assert_eq!(m["off_status"], offset_of!(GntdevGrantCopySegment, status) as u64);
        assert_eq!(m["off_foff"], offset_of!(GntdevCopyForeign, offset) as u64);
        assert_eq!(m["off_fdom"], offset_of!(GntdevCopyForeign, domid) as u64);
        assert_eq!(m["sz_copy"], size_of::<GntdevGrantCopy>() as u64);
        assert_eq!(m["off_segs"], offset_of!(GntdevGrantCopy, segments) as u64);
    }

    #[test]
    fn gntalloc_matches_uapi_header() {
        let Some(m) = ctest::probe(
            "gntalloc",
            &["xen/gntalloc.h"],
            r#"P("alloc", IOCTL_GNTALLOC_ALLOC_GREF);
               P("dealloc", IOCTL_GNTALLOC_DEALLOC_GREF);
               P("sz_alloc", sizeof(struct ioctl_gntalloc_alloc_gref));
               P("off_count", offsetof(struct ioctl_gntalloc_alloc_gref, count));
               P("off_index", offsetof(struct ioctl_gntalloc_alloc_gref, index));
               P("off_ids", offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids));
               P("sz_dealloc", sizeof(struct ioctl_gntalloc_dealloc_gref));
               P("writable", GNTALLOC_FLAG_WRITABLE);"#,
        ) else {
            return;
        };
        assert_eq!(m["alloc"], ul(IOCTL_GNTALLOC_ALLOC_GREF));
        assert_eq!(m["dealloc"], ul(IOCTL_GNTALLOC_DEALLOC_GREF));
        assert_eq!(m["sz_alloc"], GNTALLOC_ALLOC_GREF_SIZE as u64);
        assert_eq!(m["off_count"], offset_of!(GntallocAllocGrefHead, count) as u64);
        assert_eq!(m["off_index"], offset_of!(GntallocAllocGrefHead, index) as u64);
        assert_eq!(m["off_ids"], size_of::<GntallocAllocGrefHead>() as u64);
        assert_eq!(m["sz_dealloc"], size_of::<GntallocDeallocGref>() as u64);
        assert_eq!(m["writable"], u64::from(GNTALLOC_FLAG_WRITABLE));
    }

    #[test]
    fn grant_copy_flags_match_xen_header() {
        let Some(m) = ctest::probe(
            "gnttab",
            &["xen/grant_table.h"],
            r#"P("src", GNTCOPY_source_gref); P("dst", GNTCOPY_dest_gref);"#,
        ) else {
            return;
        };
        assert_eq!(m["src"], u64::from(GNTCOPY_SOURCE_GREF));
        assert_eq!(m["dst"], u64::from(GNTCOPY_DEST_GREF));
    }
}
