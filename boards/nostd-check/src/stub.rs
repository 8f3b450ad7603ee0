//! A stub platform: static page frames, a real v1 grant table on a static frame, a tiny
//! fixed xenstore, and event channels and grant mappings that do nothing. Enough for the
//! driver's code to run its attach/probe paths and for every role's generic code to be
//! monomorphised and linked.

use core::cell::UnsafeCell;

use xenblk::platform::{
    CopyOp, EventChannels, GrantMapper, Grants, MapRequest, Mapping, Page, Pages, PlatformError, Port, Result, Tx,
    XenStore,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef, GrantTableV1, NR_RESERVED_ENTRIES, RevokeError};
use xenblk::proto::shmem::SharedMem;

/// Page frames available to the stub.
pub const FRAMES: usize = 64;
const PAGE: usize = 4096;

#[repr(C, align(4096))]
struct Frames(UnsafeCell<[[u8; PAGE]; FRAMES + 1]>);

// SAFETY: the frames are only reached through `SharedMem` views (volatile/atomic accesses),
// and the program is single-threaded.
unsafe impl Sync for Frames {}

/// Frame `FRAMES` holds the grant table; the others are handed out by `Pages`.
static MEMORY: Frames = Frames(UnsafeCell::new([[0; PAGE]; FRAMES + 1]));

/// A view of static frame `i` .. `i + n`.
pub fn frames(i: usize, n: usize) -> SharedMem {
    assert!(i + n <= FRAMES + 1);
    let base = MEMORY.0.get() as *mut u8;
    // SAFETY: the range lies inside the static, page-aligned `MEMORY`, which lives forever
    // and is never accessed through Rust references.
    unsafe { SharedMem::new(base.add(i * PAGE), n * PAGE) }
}

/// The stub domain.
pub struct Stub {
    used: [bool; FRAMES],
    table: GrantTableV1,
    /// The xenstore: `(path suffix, value)`.
    store: &'static [(&'static str, &'static str)],
}

impl Stub {
    pub fn new(store: &'static [(&'static str, &'static str)]) -> Stub {
        Stub { used: [false; FRAMES], table: GrantTableV1::new(frames(FRAMES, 1)), store }
    }

    /// The grant table's memory (to play the hypervisor's part on its flags).
    pub fn table_memory(&self) -> SharedMem {
        self.table.memory()
    }

    /// Number of frames currently allocated.
    pub fn pages_in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }

    /// Number of live grant entries.
    pub fn grants_in_use(&self) -> usize {
        (NR_RESERVED_ENTRIES..self.table.len())
            .filter(|&r| self.table.read(GrantRef(r)).is_some_and(|e| e.flags != 0))
            .count()
    }
}

impl Pages for Stub {
    fn alloc_page(&mut self) -> Result<Page> {
        let i = self.used.iter().position(|u| !u).ok_or(PlatformError::NoSpace)?;
        self.used[i] = true;
        let mem = frames(i, 1);
        mem.zero(0, PAGE);
        Ok(Page { mem, frame: i as u64 })
    }

    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        if n == 0 || n > 16 {
            return Err(PlatformError::Invalid);
        }
        let start = (0..=FRAMES - n).find(|&s| self.used[s..s + n].iter().all(|u| !u)).ok_or(PlatformError::NoSpace)?;
        let mut list = [0u64; 16];
        for (k, f) in list.iter_mut().enumerate().take(n) {
            self.used[start + k] = true;
            *f = (start + k) as u64;
        }
        let mem = frames(start, n);
        mem.zero(0, n * PAGE);
        Ok((mem, list))
    }

    fn free_page(&mut self, page: Page) {
        if let Some(u) = self.used.get_mut(page.frame as usize) {
            *u = false;
        }
    }

    fn free_pages_contiguous(&mut self, _mem: SharedMem, frames: &[u64]) {
        for &f in frames {
            if let Some(u) = self.used.get_mut(f as usize) {
                *u = false;
            }
        }
    }
}

impl Grants for Stub {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        for r in NR_RESERVED_ENTRIES..self.table.len() {
            if self.table.grant(GrantRef(r), domid, frame as u32, readonly) {
                return Ok(GrantRef(r));
            }
        }
        Err(PlatformError::NoSpace)
    }

    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        self.table.revoke(gref)
    }

    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        self.table.in_use(gref)
    }
}

impl GrantMapper for Stub {
    fn map_batch(&mut self, _domid: DomId, _reqs: &[MapRequest], out: &mut [core::result::Result<Mapping, GntStatus>]) {
        out.iter_mut().for_each(|o| *o = Err(GntStatus::BadGntref));
    }
    fn unmap_batch(&mut self, _maps: &[Mapping], status: &mut [GntStatus]) {
        status.iter_mut().for_each(|s| *s = GntStatus::Okay);
    }
    fn map_ring(&mut self, _domid: DomId, _grefs: &[GrantRef]) -> Result<Mapping> {
        Err(PlatformError::Grant(GntStatus::BadGntref))
    }
    fn unmap_ring(&mut self, _map: Mapping) {}
    fn copy_batch(&mut self, _ops: &[CopyOp], status: &mut [GntStatus]) {
        status.iter_mut().for_each(|s| *s = GntStatus::BadGntref);
    }
}

impl EventChannels for Stub {
    fn alloc_unbound(&mut self, _remote: DomId) -> Result<Port> {
        Ok(Port(7))
    }
    fn bind_interdomain(&mut self, _remote: DomId, _remote_port: Port) -> Result<Port> {
        Ok(Port(8))
    }
    fn notify(&mut self, _port: Port) -> Result<()> {
        Ok(())
    }
    fn unbind(&mut self, _port: Port) {}
}

impl XenStore for Stub {
    fn read(&mut self, _tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
        let (_, v) = self.store.iter().find(|(k, _)| path.ends_with(k)).ok_or(PlatformError::NotFound)?;
        let dst = buf.get_mut(..v.len()).ok_or(PlatformError::Invalid)?;
        dst.copy_from_slice(v.as_bytes());
        Ok(v.len())
    }
    fn write(&mut self, _tx: Tx, _path: &str, _value: &[u8]) -> Result<()> {
        Ok(())
    }
    fn remove(&mut self, _tx: Tx, _path: &str) -> Result<()> {
        Ok(())
    }
    fn transaction_start(&mut self) -> Result<Tx> {
        Ok(Tx(1))
    }
    fn transaction_end(&mut self, _tx: Tx, _commit: bool) -> Result<()> {
        Ok(())
    }
    fn watch(&mut self, _path: &str, _token: u32) -> Result<()> {
        Ok(())
    }
    fn unwatch(&mut self, _path: &str, _token: u32) -> Result<()> {
        Ok(())
    }
    fn own_domid(&mut self) -> DomId {
        DomId(1)
    }
}
