//! The v1 grant table entry and its flags, grant-table status codes, and the two
//! operations a granting domain performs on its own table: granting and revoking.
//!
//! Entry (8 bytes, 512 per 4 KiB frame): `flags` u16 @0, `domid` u16 @2 (the grantee),
//! `frame` u32 @4 (the granted frame). The hypervisor sets `GTF_reading`/`GTF_writing` while
//! the grantee has the frame mapped; revocation is one compare-exchange of the flags that
//! fails while either is set (XSA-396: check and revoke must be one atomic step).

use core::sync::atomic::{Ordering, fence};

use super::shmem::SharedMem;

/// A grant reference: an index into the granting domain's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GrantRef(pub u32);

/// A domain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DomId(pub u16);

impl DomId {
    /// Domain 0.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`.
    pub const SELF: DomId = DomId(0x7ff0);
}

/// Size of a v1 grant entry.
pub const ENTRY_SIZE: usize = 8;
/// Entries per grant-table frame.
pub const ENTRIES_PER_FRAME: usize = 512;
/// `GNTTAB_NR_RESERVED_ENTRIES`: refs 0..8 are reserved (0 console, 1 xenstore).
pub const NR_RESERVED_ENTRIES: u32 = 8;

/// `GTF_invalid`.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive`.
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the type bits.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: set by Xen while mapped or being read.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: set by Xen while mapped writable or being written.
pub const GTF_WRITING: u16 = 1 << 4;
/// `GTF_PWT`.
pub const GTF_PWT: u16 = 1 << 5;
/// `GTF_PCD`.
pub const GTF_PCD: u16 = 1 << 6;
/// `GTF_PAT`.
pub const GTF_PAT: u16 = 1 << 7;
/// `GTF_sub_page`.
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// `GNTMAP_device_map`.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_application_map`.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_contains_pte`.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

/// `GNTCOPY_source_gref`.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `GNTTABOP_*` command numbers (hypercall 20).
pub mod op {
    /// Map.
    pub const MAP_GRANT_REF: u32 = 0;
    /// Unmap.
    pub const UNMAP_GRANT_REF: u32 = 1;
    /// Set up the table frames.
    pub const SETUP_TABLE: u32 = 2;
    /// Copy.
    pub const COPY: u32 = 5;
    /// Query size.
    pub const QUERY_SIZE: u32 = 6;
    /// Set version.
    pub const SET_VERSION: u32 = 8;
}

/// `GNTST_*`: grant operation status, per element. The discriminants are Xen's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(i16)]
pub enum GntStatus {
    /// Success.
    Okay = 0,
    /// General error.
    GeneralError = -1,
    /// Unknown domain.
    BadDomain = -2,
    /// Unrecognised or inappropriate grant reference.
    BadGntref = -3,
    /// Unrecognised or inappropriate handle.
    BadHandle = -4,
    /// Inappropriate virtual address.
    BadVirtAddr = -5,
    /// Inappropriate device address.
    BadDevAddr = -6,
    /// Out of space in I/O MMU.
    NoDeviceSpace = -7,
    /// Not enough privilege.
    PermissionDenied = -8,
    /// Bad page.
    BadPage = -9,
    /// Copy arguments cross a page boundary.
    BadCopyArg = -10,
    /// Page address size too large.
    AddressTooBig = -11,
    /// Operation not done; try again.
    Eagain = -12,
    /// Out of space (handles).
    NoSpace = -13,
}

impl GntStatus {
    /// From Xen's value; unknown values read as `GeneralError`.
    pub fn from_i16(v: i16) -> GntStatus {
        use GntStatus::*;
        match v {
            0 => Okay,
            -2 => BadDomain,
            -3 => BadGntref,
            -4 => BadHandle,
            -5 => BadVirtAddr,
            -6 => BadDevAddr,
            -7 => NoDeviceSpace,
            -8 => PermissionDenied,
            -9 => BadPage,
            -10 => BadCopyArg,
            -11 => AddressTooBig,
            -12 => Eagain,
            -13 => NoSpace,
            _ => GeneralError,
        }
    }
}

/// A decoded v1 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    /// Flags.
    pub flags: u16,
    /// Grantee.
    pub domid: u16,
    /// Granted frame.
    pub frame: u32,
}

/// Why a revocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RevokeError {
    /// The grantee still maps the frame (GTF_reading/GTF_writing set).
    InUse,
    /// The entry was not an active grant.
    NotGranted,
}

/// A v1 grant table in the granting domain's memory.
#[derive(Clone, Copy, Debug)]
pub struct GrantTableV1 {
    mem: SharedMem,
}

impl GrantTableV1 {
    /// Wraps the table's frames.
    pub fn new(mem: SharedMem) -> GrantTableV1 {
        GrantTableV1 { mem }
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        (self.mem.len() / ENTRY_SIZE) as u32
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn off(&self, r: GrantRef) -> Option<usize> {
        (r.0 < self.len()).then_some(r.0 as usize * ENTRY_SIZE)
    }

    /// Reads an entry (flags atomically).
    pub fn read(&self, r: GrantRef) -> Option<GrantEntry> {
        let off = self.off(r)?;
        let flags = self.mem.load_u16(off, Ordering::Acquire);
        let mut b = [0u8; 6];
        self.mem.read_bytes(off + 2, &mut b);
        Some(GrantEntry {
            flags,
            domid: u16::from_le_bytes([b[0], b[1]]),
            frame: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        })
    }

    /// Grants `frame` to `domid`: domid and frame first, a write barrier, then the flags.
    /// Returns `false` if the ref is out of range or the entry is still live.
    pub fn grant(&self, r: GrantRef, domid: DomId, frame: u32, readonly: bool) -> bool {
        let Some(off) = self.off(r) else { return false };
        if self.mem.load_u16(off, Ordering::Acquire) & (GTF_TYPE_MASK | GTF_READING | GTF_WRITING) != 0 {
            return false;
        }
        self.mem.write_bytes(off + 2, &domid.0.to_le_bytes());
        self.mem.write_bytes(off + 4, &frame.to_le_bytes());
        fence(Ordering::Release);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.mem.store_u16(off, flags, Ordering::Release);
        true
    }

    /// Ends foreign access with one compare-exchange that fails while the frame is mapped.
    pub fn revoke(&self, r: GrantRef) -> Result<(), RevokeError> {
        let off = self.off(r).ok_or(RevokeError::NotGranted)?;
        let mut seen = self.mem.load_u16(off, Ordering::Acquire);
        loop {
            if seen & (GTF_READING | GTF_WRITING) != 0 {
                return Err(RevokeError::InUse);
            }
            if seen & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                return Err(RevokeError::NotGranted);
            }
            match self.mem.cmpxchg_u16(off, seen, GTF_INVALID) {
                Ok(_) => return Ok(()),
                // Flags changed under us (a mapping started): look again.
                Err(now) => seen = now,
            }
        }
    }

    /// Whether the grantee currently maps the entry.
    pub fn in_use(&self, r: GrantRef) -> bool {
        self.read(r).is_some_and(|e| e.flags & (GTF_READING | GTF_WRITING) != 0)
    }

    /// The shared flags word of an entry, for a hypervisor model that sets
    /// `GTF_reading`/`GTF_writing` (boards/sim).
    pub fn memory(&self) -> SharedMem {
        self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_and_revoke() {
        let mut frame = [0u64; 512];
        // SAFETY: `frame` outlives the view.
        let mem = unsafe { SharedMem::new(frame.as_mut_ptr() as *mut u8, 4096) };
        let t = GrantTableV1::new(mem);
        assert_eq!(t.len(), 512);
        assert!(t.grant(GrantRef(9), DomId(3), 0x1234, true));
        assert_eq!(
            t.read(GrantRef(9)),
            Some(GrantEntry { flags: GTF_PERMIT_ACCESS | GTF_READONLY, domid: 3, frame: 0x1234 })
        );
        assert!(!t.grant(GrantRef(9), DomId(3), 1, false), "live entry must not be overwritten");
        mem.fetch_or_u16(9 * 8, GTF_READING);
        assert_eq!(t.revoke(GrantRef(9)), Err(RevokeError::InUse));
        mem.fetch_and_u16(9 * 8, !GTF_READING);
        assert_eq!(t.revoke(GrantRef(9)), Ok(()));
        assert_eq!(t.revoke(GrantRef(9)), Err(RevokeError::NotGranted));
        assert_eq!(t.revoke(GrantRef(600)), Err(RevokeError::NotGranted));
        assert_eq!(GntStatus::from_i16(-8), GntStatus::PermissionDenied);
        assert_eq!(GntStatus::BadCopyArg as i16, -10);
    }
}
