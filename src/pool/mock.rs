//! A minimal in-memory platform for the pools' unit tests: one granting domain whose grant
//! table is a real v1 table, and a mapper that marks entries mapped the way Xen does.

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use crate::platform::*;
use crate::proto::grant::{DomId, GntStatus, GrantRef, GrantTableV1, RevokeError};
use crate::proto::shmem::SharedMem;

pub struct Mock {
    pub table: GrantTableV1,
    next_ref: u32,
    free_refs: Vec<u32>,
    frames: Vec<SharedMem>,
    pub unmapped: Vec<u64>,
    pub mapped: usize,
    /// Play a board that cannot see mappings (`Grants::observes_mappings` = false).
    pub opaque: bool,
    /// Calls of `end_access`.
    pub end_calls: usize,
}

impl Mock {
    pub fn new() -> Mock {
        let words: &'static mut [u64] = Box::leak(vec![0u64; 512 * 4].into_boxed_slice());
        Mock {
            table: GrantTableV1::new(SharedMem::from_static_words(words)),
            next_ref: 8,
            free_refs: Vec::new(),
            frames: Vec::new(),
            unmapped: Vec::new(),
            mapped: 0,
            opaque: false,
            end_calls: 0,
        }
    }
    /// Plays the backend: marks `g` mapped (or not).
    #[cfg(feature = "frontend")]
    pub fn set_mapped(&self, g: GrantRef, on: bool) {
        use crate::proto::grant::{GTF_READING, GTF_WRITING};
        let off = g.0 as usize * 8;
        if on {
            self.table.memory().fetch_or_u16(off, GTF_READING | GTF_WRITING);
        } else {
            self.table.memory().fetch_and_u16(off, !(GTF_READING | GTF_WRITING));
        }
    }
    pub fn fake_mapping(&mut self, handle: u64) -> Mapping {
        self.mapped += 1;
        Mapping {
            mem: self
                .frames
                .first()
                .copied()
                .unwrap_or_else(|| SharedMem::from_static_words(Box::leak(vec![0u64; 512].into_boxed_slice()))),
            handle,
        }
    }
}

impl Pages for Mock {
    fn alloc_page(&mut self) -> Result<Page> {
        let mem = SharedMem::from_static_words(Box::leak(vec![0u64; 512].into_boxed_slice()));
        self.frames.push(mem);
        Ok(Page { mem, frame: self.frames.len() as u64 - 1 })
    }
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        let mem = SharedMem::from_static_words(Box::leak(vec![0u64; 512 * n].into_boxed_slice()));
        Ok((mem, [0; 16]))
    }
    fn free_page(&mut self, _page: Page) {}
    fn free_pages_contiguous(&mut self, _mem: SharedMem, _frames: &[u64]) {}
}

impl Grants for Mock {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        let r = self.free_refs.pop().unwrap_or_else(|| {
            self.next_ref += 1;
            self.next_ref - 1
        });
        if self.table.grant(GrantRef(r), domid, frame as u32, readonly) {
            Ok(GrantRef(r))
        } else {
            Err(PlatformError::NoSpace)
        }
    }
    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        self.end_calls += 1;
        self.table.revoke(gref)?;
        self.free_refs.push(gref.0);
        Ok(())
    }
    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        self.table.in_use(gref)
    }
    fn observes_mappings(&self) -> bool {
        !self.opaque
    }
}

impl GrantMapper for Mock {
    fn map_batch(&mut self, _domid: DomId, reqs: &[MapRequest], out: &mut [core::result::Result<Mapping, GntStatus>]) {
        for (i, r) in reqs.iter().enumerate() {
            out[i] = Ok(self.fake_mapping(r.gref.0 as u64));
        }
    }
    fn unmap_batch(&mut self, maps: &[Mapping], status: &mut [GntStatus]) {
        for (i, m) in maps.iter().enumerate() {
            self.unmapped.push(m.handle);
            status[i] = GntStatus::Okay;
        }
    }
    fn map_ring(&mut self, _domid: DomId, _grefs: &[GrantRef]) -> Result<Mapping> {
        Err(PlatformError::Unsupported)
    }
    fn unmap_ring(&mut self, _map: Mapping) {}
    fn copy_batch(&mut self, _ops: &[CopyOp], status: &mut [GntStatus]) {
        status.fill(GntStatus::Okay);
    }
}

impl EventChannels for Mock {
    fn alloc_unbound(&mut self, _remote: DomId) -> Result<Port> {
        Ok(Port(1))
    }
    fn bind_interdomain(&mut self, _remote: DomId, p: Port) -> Result<Port> {
        Ok(p)
    }
    fn notify(&mut self, _port: Port) -> Result<()> {
        Ok(())
    }
    fn unbind(&mut self, _port: Port) {}
}

impl XenStore for Mock {
    fn read(&mut self, _tx: Tx, _path: &str, _buf: &mut [u8]) -> Result<usize> {
        Err(PlatformError::NotFound)
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
