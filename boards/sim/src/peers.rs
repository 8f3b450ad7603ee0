//! Reference peers written directly on the wire layer (`xenblk::proto`), independent of
//! the driver's `modes`: a minimal frontend and a minimal backend.
//!
//! They let a build with only one role compile in still be tested end to end (a
//! backend-only build is driven by [`RawFrontend`]; a frontend-only build is served by
//! [`RawBackend`]), and they are the base that hostile-peer tests bend out of shape.
//! They follow the protocol plainly: one page per segment, one-page ring. Public knobs
//! bend them towards other dialects: the ABI and whether `protocol` is written, read-only
//! grants for write data (NetBSD xbd), hand-built indirect requests; on the backend side
//! Connected before the frontend's ring (NetBSD xbdback) and an indirect offer.

use std::collections::HashMap;

use xenblk::platform::{BackendPlatform, FrontendPlatform, MapRequest, Mapping, Page, Port, Tx};
use xenblk::proto::blkif::{
    MAX_SEGMENTS_PER_REQUEST, Protocol, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, ReqKind, Request, Response, RwOp,
    SEGMENTS_PER_INDIRECT_PAGE, SegList, Segment,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef};
use xenblk::proto::ring::{BackRing, FrontRing, HEADER_SIZE};
use xenblk::proto::shmem::SharedMem;
use xenblk::proto::xenbus::{XenbusState, parse_u64};

fn read_u64<X: xenblk::platform::XenStore>(x: &mut X, path: &str) -> Option<u64> {
    let mut b = [0u8; 64];
    let n = x.read(Tx::NONE, path, &mut b).ok()?;
    parse_u64(&b[..n])
}

fn read_string<X: xenblk::platform::XenStore>(x: &mut X, path: &str) -> Option<String> {
    let mut b = [0u8; 256];
    let n = x.read(Tx::NONE, path, &mut b).ok()?;
    String::from_utf8(b[..n].to_vec()).ok()
}

fn state<X: xenblk::platform::XenStore>(x: &mut X, dir: &str) -> XenbusState {
    read_u64(x, &format!("{dir}/state")).and_then(XenbusState::from_u64).unwrap_or(XenbusState::Unknown)
}

/// A completed request of the raw frontend.
#[derive(Debug)]
pub struct RawCompletion {
    /// The request id.
    pub id: u64,
    /// The status.
    pub status: i16,
    /// Read data (reads only).
    pub data: Vec<u8>,
}

struct RawInflight {
    pages: Vec<usize>,
    write: bool,
    bytes: usize,
}

/// A minimal blkif frontend.
pub struct RawFrontend {
    /// Frontend directory.
    pub dir: String,
    /// Backend directory.
    pub backend_dir: String,
    /// Backend domain.
    pub backend_id: DomId,
    /// The ring (public: hostile tests write it directly).
    pub ring: Option<FrontRing>,
    /// Event channel.
    pub port: Option<Port>,
    ring_page: Option<(Page, GrantRef)>,
    persistent: bool,
    pool: Vec<(Page, Option<GrantRef>)>,
    free: Vec<usize>,
    inflight: HashMap<u64, RawInflight>,
    /// Read-only grants of write data in flight, by pool index.
    ro_grants: HashMap<usize, GrantRef>,
    next_id: u64,
    /// Whether the backend agreed to persistence.
    pub negotiated_persistent: bool,
    /// Disk size in sectors.
    pub sectors: u64,
    /// The ABI of the ring (default native).
    pub ring_protocol: Protocol,
    /// Whether to write the `protocol` key (default true; false plays a legacy frontend).
    pub write_protocol: bool,
    /// Grant the pages of write requests read-only (NetBSD xbd; default false).
    pub readonly_writes: bool,
    /// Indirect pages of requests in flight (ended at completion).
    indirect_inflight: HashMap<u64, Vec<(Page, GrantRef)>>,
}

impl RawFrontend {
    /// Reads the toolstack keys of `dir` and goes Initialising.
    pub fn new<P: FrontendPlatform>(plat: &mut P, dir: &str, persistent: bool) -> RawFrontend {
        let backend_dir = read_string(plat, &format!("{dir}/backend")).expect("backend key");
        let backend_id = DomId(read_u64(plat, &format!("{dir}/backend-id")).expect("backend-id") as u16);
        plat.write(Tx::NONE, &format!("{dir}/state"), b"1").expect("state");
        RawFrontend {
            dir: dir.to_string(),
            backend_dir,
            backend_id,
            ring: None,
            port: None,
            ring_page: None,
            persistent,
            pool: Vec::new(),
            free: Vec::new(),
            inflight: HashMap::new(),
            ro_grants: HashMap::new(),
            next_id: 0,
            negotiated_persistent: false,
            sectors: 0,
            ring_protocol: Protocol::native(),
            write_protocol: true,
            readonly_writes: false,
            indirect_inflight: HashMap::new(),
        }
    }

    /// The ring page (hostile tests rewrite slots in place).
    pub fn ring_mem(&self) -> Option<xenblk::proto::shmem::SharedMem> {
        self.ring_page.map(|(p, _)| p.mem)
    }

    /// Queues a READ or WRITE of `bytes` (whole 4 KiB pages) as one `BLKIF_OP_INDIRECT`
    /// request: segment descriptors in `ceil(pages / 512)` indirect pages granted read-only
    /// (as NetBSD and Linux do). Returns the id.
    pub fn submit_indirect<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        sector: u64,
        bytes: usize,
        write: Option<&[u8]>,
    ) -> u64 {
        assert!(bytes > 0 && bytes.is_multiple_of(4096));
        let n = bytes / 4096;
        let mut segs = Vec::new();
        let mut pages = Vec::new();
        for i in 0..n {
            let idx = self.page(plat);
            if let Some(d) = write {
                self.pool[idx].0.mem.copy_from_private(0, &d[i * 4096..(i + 1) * 4096]);
            }
            let g = self.grant_for(plat, idx, write.is_some());
            segs.push(Segment { gref: g.0, first_sect: 0, last_sect: 7 });
            pages.push(idx);
        }
        let mut ind = Vec::new();
        let mut grefs: Vec<u32> = Vec::new();
        for chunk in segs.chunks(SEGMENTS_PER_INDIRECT_PAGE) {
            let p = plat.alloc_page().expect("indirect page");
            for (k, sg) in chunk.iter().enumerate() {
                p.mem.write_bytes(k * 8, &sg.encode());
            }
            let g = plat.grant(p.frame, self.backend_id, true).expect("grant indirect page");
            grefs.push(g.0);
            ind.push((p, g));
        }
        let id = self.next_id;
        self.next_id += 1;
        let op = if write.is_some() { RwOp::Write } else { RwOp::Read };
        let req = Request {
            id,
            handle: 0,
            sector,
            kind: ReqKind::Indirect { op, nr_segments: n as u16, pages: grefs.into_iter().collect() },
        };
        assert!(self.ring.as_mut().unwrap().put_request(&req), "ring full");
        self.inflight.insert(id, RawInflight { pages, write: write.is_some(), bytes });
        self.indirect_inflight.insert(id, ind);
        id
    }

    /// Queues a request of any kind whose segments are `pages` whole data pages (write data
    /// from `data`); for flushes with data, barriers and discards. Returns the id.
    pub fn submit_kind<P: FrontendPlatform>(&mut self, plat: &mut P, sector: u64, op: RwOp, data: &[u8]) -> u64 {
        assert!(data.len().is_multiple_of(4096) && data.len() <= MAX_SEGMENTS_PER_REQUEST * 4096);
        let mut segs = SegList::new();
        let mut pages = Vec::new();
        for chunk in data.chunks(4096) {
            let idx = self.page(plat);
            self.pool[idx].0.mem.copy_from_private(0, chunk);
            let g = self.grant_for(plat, idx, op.is_write());
            segs.push(Segment { gref: g.0, first_sect: 0, last_sect: 7 }).unwrap();
            pages.push(idx);
        }
        let id = self.next_id;
        self.next_id += 1;
        let req = Request { id, handle: 0, sector, kind: ReqKind::Rw { op, segs } };
        assert!(self.ring.as_mut().unwrap().put_request(&req), "ring full");
        self.inflight.insert(id, RawInflight { pages, write: true, bytes: data.len() });
        id
    }

    /// Queues a discard of `nr_sectors` at `sector`. Returns the id.
    pub fn submit_discard(&mut self, sector: u64, nr_sectors: u64, secure: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request { id, handle: 0, sector, kind: ReqKind::Discard { secure, nr_sectors } };
        assert!(self.ring.as_mut().unwrap().put_request(&req), "ring full");
        self.inflight.insert(id, RawInflight { pages: Vec::new(), write: true, bytes: 0 });
        id
    }

    fn grant_for<P: FrontendPlatform>(&mut self, plat: &mut P, idx: usize, write: bool) -> GrantRef {
        let ro = write && self.readonly_writes;
        if let Some(g) = self.pool[idx].1 {
            if !ro || self.negotiated_persistent {
                return g;
            }
            plat.end_access(g).expect("page still mapped");
            self.pool[idx].1 = None;
        }
        let g = plat.grant(self.pool[idx].0.frame, self.backend_id, ro).expect("grant");
        // A read-only grant is never kept for reuse (it could not receive read data).
        if !ro {
            self.pool[idx].1 = Some(g);
        } else {
            self.ro_grants.insert(idx, g);
        }
        g
    }

    /// Advances the handshake; returns true once connected.
    pub fn step<P: FrontendPlatform>(&mut self, plat: &mut P) -> bool {
        let back = state(plat, &self.backend_dir);
        if self.ring.is_none() && matches!(back, XenbusState::InitWait | XenbusState::Connected) {
            let page = plat.alloc_page().expect("ring page");
            let ring = FrontRing::init(page.mem, self.ring_protocol.abi()).expect("ring");
            let g = plat.grant(page.frame, self.backend_id, false).expect("grant ring");
            let port = plat.alloc_unbound(self.backend_id).expect("evtchn");
            let d = self.dir.clone();
            plat.write(Tx::NONE, &format!("{d}/ring-ref"), g.0.to_string().as_bytes()).unwrap();
            plat.write(Tx::NONE, &format!("{d}/event-channel"), port.0.to_string().as_bytes()).unwrap();
            if self.write_protocol {
                plat.write(Tx::NONE, &format!("{d}/protocol"), self.ring_protocol.as_str().as_bytes()).unwrap();
            }
            plat.write(Tx::NONE, &format!("{d}/feature-persistent"), if self.persistent { b"1" } else { b"0" })
                .unwrap();
            plat.write(Tx::NONE, &format!("{d}/state"), b"3").unwrap();
            self.ring = Some(ring);
            self.port = Some(port);
            self.ring_page = Some((page, g));
        }
        if self.ring.is_some() && back == XenbusState::Connected && state(plat, &self.dir) != XenbusState::Connected {
            self.sectors = read_u64(plat, &format!("{}/sectors", self.backend_dir)).unwrap_or(0);
            let bp = read_u64(plat, &format!("{}/feature-persistent", self.backend_dir)).unwrap_or(0) == 1;
            self.negotiated_persistent = bp && self.persistent;
            plat.write(Tx::NONE, &format!("{}/state", self.dir), b"4").unwrap();
        }
        state(plat, &self.dir) == XenbusState::Connected
    }

    fn page<P: FrontendPlatform>(&mut self, plat: &mut P) -> usize {
        if let Some(i) = self.free.pop() {
            return i;
        }
        let p = plat.alloc_page().expect("page");
        self.pool.push((p, None));
        self.pool.len() - 1
    }

    /// Whether a request of `pages` pages fits now.
    pub fn can_submit(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| !r.is_full())
    }

    /// Queues a read (`write == None`) or a write, of whole pages or less; returns the id.
    pub fn submit<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        sector: u64,
        bytes: usize,
        write: Option<&[u8]>,
    ) -> u64 {
        assert!(bytes > 0 && bytes.is_multiple_of(512) && bytes <= MAX_SEGMENTS_PER_REQUEST * 4096);
        let n = bytes.div_ceil(4096);
        let mut segs = SegList::new();
        let mut pages = Vec::new();
        for i in 0..n {
            let idx = self.page(plat);
            let len = (bytes - i * 4096).min(4096);
            if let Some(d) = write {
                self.pool[idx].0.mem.copy_from_private(0, &d[i * 4096..i * 4096 + len]);
            }
            let g = self.grant_for(plat, idx, write.is_some());
            segs.push(Segment { gref: g.0, first_sect: 0, last_sect: (len / 512 - 1) as u8 }).unwrap();
            pages.push(idx);
        }
        let id = self.next_id;
        self.next_id += 1;
        let op = if write.is_some() { RwOp::Write } else { RwOp::Read };
        let req = Request { id, handle: 0, sector, kind: ReqKind::Rw { op, segs } };
        assert!(self.ring.as_mut().unwrap().put_request(&req), "ring full");
        self.inflight.insert(id, RawInflight { pages, write: write.is_some(), bytes });
        id
    }

    /// Publishes and notifies as the ring says.
    pub fn kick<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if self.ring.as_mut().unwrap().push_requests() {
            plat.notify(self.port.unwrap()).unwrap();
        }
    }

    /// Collects completions. Without persistence every grant is ended (and must end).
    pub fn poll<P: FrontendPlatform>(&mut self, plat: &mut P) -> Vec<RawCompletion> {
        let mut out = Vec::new();
        loop {
            while let Some(rsp) = self.ring.as_mut().unwrap().take_response().expect("ring overflow") {
                let inf = self.inflight.remove(&rsp.id).expect("unknown response id");
                let mut data = Vec::new();
                if !inf.write {
                    data = vec![0u8; inf.bytes];
                    for (i, &p) in inf.pages.iter().enumerate() {
                        let len = (inf.bytes - i * 4096).min(4096);
                        self.pool[p].0.mem.copy_to_private(0, &mut data[i * 4096..i * 4096 + len]);
                    }
                }
                for &p in &inf.pages {
                    if let Some(g) = self.ro_grants.remove(&p) {
                        // Read-only grants are never persistent: the backend must let go.
                        plat.end_access(g).expect("backend kept a read-only grant");
                    } else if !self.negotiated_persistent {
                        let g = self.pool[p].1.take().unwrap();
                        plat.end_access(g).expect("backend kept a non-persistent grant");
                    }
                    self.free.push(p);
                }
                for (page, g) in self.indirect_inflight.remove(&rsp.id).unwrap_or_default() {
                    if plat.end_access(g).is_ok() {
                        plat.free_page(page);
                    }
                }
                out.push(RawCompletion { id: rsp.id, status: rsp.status, data });
            }
            if !self.ring.as_mut().unwrap().final_check_for_responses().unwrap() {
                break;
            }
        }
        out
    }

    /// The shared ring page, its frame and its grant, once published (hostile tests write
    /// the page directly).
    pub fn ring_page(&self) -> Option<(SharedMem, u64, GrantRef)> {
        self.ring_page.map(|(p, g)| (p.mem, p.frame, g))
    }

    /// Byte offset of ring slot `idx` (taken modulo the ring size) in the ring page.
    pub fn slot_offset(&self, idx: u32) -> usize {
        let r = self.ring.as_ref().expect("not connected");
        HEADER_SIZE + (idx & (r.size() - 1)) as usize * r.abi().entry_size()
    }

    /// Queues a request slot given as raw bytes (anything at all: hostile tests), published
    /// by [`kick`](Self::kick). Returns the ring index it went to, or `None` if the ring is
    /// full. Its response is not tracked: read it with [`take_raw`](Self::take_raw).
    pub fn put_raw(&mut self, slot: &[u8]) -> Option<u32> {
        let ring = self.ring.as_mut()?;
        let placeholder =
            Request { id: 0, handle: 0, sector: 0, kind: ReqKind::Rw { op: RwOp::Flush, segs: SegList::new() } };
        if !ring.put_request(&placeholder) {
            return None;
        }
        let idx = ring.req_prod_pvt().wrapping_sub(1);
        let len = slot.len().min(ring.abi().entry_size());
        let off = self.slot_offset(idx);
        self.ring_page.unwrap().0.mem.write_bytes(off, &slot[..len]);
        Some(idx)
    }

    /// Takes every available response without any bookkeeping (for requests queued with
    /// [`put_raw`](Self::put_raw) or written straight into the ring).
    pub fn take_raw(&mut self) -> Result<Vec<Response>, xenblk::proto::ring::RingError> {
        let mut out = Vec::new();
        let ring = self.ring.as_mut().expect("not connected");
        loop {
            while let Some(r) = ring.take_response()? {
                out.push(r);
            }
            if !ring.final_check_for_responses()? {
                return Ok(out);
            }
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Front-initiated close: Closing, then (once the backend is Closing or Closed) end
    /// every grant and go Closed. Call repeatedly until it returns true.
    pub fn close<P: FrontendPlatform>(&mut self, plat: &mut P) -> bool {
        if state(plat, &self.dir) != XenbusState::Closing && state(plat, &self.dir) != XenbusState::Closed {
            plat.write(Tx::NONE, &format!("{}/state", self.dir), b"5").unwrap();
        }
        let back = state(plat, &self.backend_dir);
        if !matches!(back, XenbusState::Closing | XenbusState::Closed) {
            return false;
        }
        if let Some(p) = self.port.take() {
            plat.unbind(p);
        }
        // The backend unmaps before it reports Closed; until then a revoke may fail.
        let mut all = true;
        if let Some((_, g)) = self.ring_page {
            all &= plat.end_access(g).is_ok() || !plat.is_mapped(g);
        }
        for (_, g) in self.pool.iter_mut() {
            if let Some(gr) = *g {
                if plat.end_access(gr).is_ok() {
                    *g = None;
                } else {
                    all = false;
                }
            }
        }
        if all {
            self.ring = None;
            plat.write(Tx::NONE, &format!("{}/state", self.dir), b"6").unwrap();
        }
        all && back == XenbusState::Closed
    }
}

/// A minimal blkif backend serving a RAM image.
pub struct RawBackend {
    /// Backend directory.
    pub dir: String,
    /// Frontend directory.
    pub front_dir: String,
    /// Frontend domain.
    pub front_id: DomId,
    /// The disk.
    pub disk: crate::RamDisk,
    persistent: bool,
    /// Whether persistence was negotiated.
    pub negotiated_persistent: bool,
    ring: Option<(BackRing, Mapping, Port)>,
    cache: HashMap<u32, Mapping>,
    /// Grant maps performed.
    pub maps: u64,
    /// Grant unmaps performed.
    pub unmaps: u64,
    /// NetBSD xbdback's order: every key and Connected before the frontend's ring.
    pub connect_early: bool,
    /// `feature-max-indirect-segments` offered (0: none).
    pub max_indirect: u32,
    /// Indirect requests served.
    pub indirect_requests: u64,
    /// Largest request served, in segments.
    pub max_segments_seen: usize,
    /// Close in Linux blkback's order: on the frontend's Closing only answer Closing and
    /// keep every grant mapped; unmap and go Closed when the frontend is Closed.
    pub unmap_on_front_closed: bool,
}

impl RawBackend {
    /// Publishes InitWait for the vbd at `dir`.
    pub fn new<P: BackendPlatform>(plat: &mut P, dir: &str, disk: crate::RamDisk, persistent: bool) -> RawBackend {
        let front_dir = read_string(plat, &format!("{dir}/frontend")).expect("frontend key");
        let front_id = DomId(read_u64(plat, &format!("{dir}/frontend-id")).expect("frontend-id") as u16);
        plat.write(Tx::NONE, &format!("{dir}/state"), b"2").unwrap();
        plat.watch(&format!("{front_dir}/state"), 0x5157).expect("watch");
        RawBackend {
            dir: dir.to_string(),
            front_dir,
            front_id,
            disk,
            persistent,
            negotiated_persistent: false,
            ring: None,
            cache: HashMap::new(),
            maps: 0,
            unmaps: 0,
            connect_early: false,
            max_indirect: 0,
            indirect_requests: 0,
            max_segments_seen: 0,
            unmap_on_front_closed: false,
        }
    }

    /// A backend behaving as NetBSD xbdback: at creation it publishes `sectors`, `info`,
    /// `sector-size` = 512, `feature-flush-cache` = 1 and `feature-max-indirect-segments`
    /// = `max_indirect` (16 in netbsd-10; 0 writes none), never `feature-persistent`, and
    /// goes Connected at once, before the frontend has published its ring.
    pub fn netbsd<P: BackendPlatform>(plat: &mut P, dir: &str, disk: crate::RamDisk, max_indirect: u32) -> RawBackend {
        let mut b = RawBackend::new(plat, dir, disk, false);
        b.connect_early = true;
        b.max_indirect = max_indirect;
        let d = b.dir.clone();
        if max_indirect > 0 {
            plat.write(Tx::NONE, &format!("{d}/feature-max-indirect-segments"), max_indirect.to_string().as_bytes())
                .unwrap();
        }
        for (k, v) in [
            ("sectors", b.disk.sectors().to_string()),
            ("info", "0".into()),
            ("sector-size", "512".into()),
            ("feature-flush-cache", "1".into()),
            ("state", "4".into()),
        ] {
            plat.write(Tx::NONE, &format!("{d}/{k}"), v.as_bytes()).unwrap();
        }
        b
    }

    /// Offers `feature-max-indirect-segments` = `n` (call right after [`new`](Self::new)).
    pub fn offer_indirect<P: BackendPlatform>(&mut self, plat: &mut P, n: u32) {
        self.max_indirect = n;
        plat.write(Tx::NONE, &format!("{}/feature-max-indirect-segments", self.dir), n.to_string().as_bytes()).unwrap();
    }

    /// Advances the handshake (and the close); returns true while connected.
    pub fn step<P: BackendPlatform>(&mut self, plat: &mut P) -> bool {
        let front = state(plat, &self.front_dir);
        if front == XenbusState::Closing && self.unmap_on_front_closed {
            plat.write(Tx::NONE, &format!("{}/state", self.dir), b"5").unwrap();
            return false;
        }
        if matches!(front, XenbusState::Closing | XenbusState::Closed) {
            if let Some((_, m, port)) = self.ring.take() {
                self.clear_cache(plat);
                plat.unbind(port);
                plat.unmap_ring(m);
                plat.write(Tx::NONE, &format!("{}/state", self.dir), b"6").unwrap();
            }
            return false;
        }
        if self.ring.is_none() && matches!(front, XenbusState::Initialised | XenbusState::Connected) {
            let f = self.front_dir.clone();
            let g = read_u64(plat, &format!("{f}/ring-ref")).expect("ring-ref") as u32;
            let ev = read_u64(plat, &format!("{f}/event-channel")).expect("event-channel") as u32;
            let proto = read_string(plat, &format!("{f}/protocol"))
                .and_then(|s| Protocol::parse(&s))
                .unwrap_or(Protocol::X86_32);
            let fp = read_u64(plat, &format!("{f}/feature-persistent")).unwrap_or(0) == 1;
            self.negotiated_persistent = fp && self.persistent;
            let m = plat.map_ring(self.front_id, &[GrantRef(g)]).expect("map ring");
            let port = plat.bind_interdomain(self.front_id, Port(ev)).expect("bind");
            let ring = BackRing::attach(m.mem, proto.abi()).expect("attach");
            let d = self.dir.clone();
            self.ring = Some((ring, m, port));
            if self.connect_early {
                return true;
            }
            for (k, v) in [
                ("sectors", self.disk.sectors().to_string()),
                ("info", "0".into()),
                ("sector-size", "512".into()),
                ("feature-persistent", if self.persistent { "1" } else { "0" }.into()),
                ("feature-flush-cache", "1".into()),
                ("state", "4".into()),
            ] {
                plat.write(Tx::NONE, &format!("{d}/{k}"), v.as_bytes()).unwrap();
            }
        }
        self.ring.is_some()
    }

    /// Serves every pending request; returns how many.
    pub fn process<P: BackendPlatform>(&mut self, plat: &mut P) -> usize {
        let mut n = 0;
        loop {
            loop {
                let Some((ring, _, _)) = self.ring.as_mut() else { return n };
                let Some(req) = ring.take_request(self.max_indirect as usize).expect("ring overflow") else { break };
                let rsp = match req {
                    Err(rej) => Response { id: rej.id, op: rej.op, status: rej.status() },
                    Ok(r) => {
                        let status = self.serve(plat, &r);
                        // Indirect requests are answered with their inner operation.
                        let op = match &r.kind {
                            ReqKind::Indirect { op, .. } => op.code(),
                            _ => r.op_code(),
                        };
                        Response { id: r.id, op, status }
                    }
                };
                let (ring, _, _) = self.ring.as_mut().unwrap();
                ring.put_response(&rsp);
                n += 1;
            }
            let (ring, _, port) = self.ring.as_mut().unwrap();
            if ring.push_responses() {
                plat.notify(*port).unwrap();
            }
            if !ring.final_check_for_requests().unwrap() {
                break;
            }
        }
        n
    }

    fn serve<P: BackendPlatform>(&mut self, plat: &mut P, r: &Request) -> i16 {
        let (op, segs): (RwOp, Vec<Segment>) = match &r.kind {
            ReqKind::Rw { op, segs } => (*op, segs.to_vec()),
            ReqKind::Indirect { op, nr_segments, pages } => {
                self.indirect_requests += 1;
                let n = *nr_segments as usize;
                let mut segs = Vec::new();
                for (pi, &g) in pages.iter().enumerate() {
                    let count = (n - pi * SEGMENTS_PER_INDIRECT_PAGE).min(SEGMENTS_PER_INDIRECT_PAGE);
                    let mut out = [Err(GntStatus::GeneralError)];
                    plat.map_batch(self.front_id, &[MapRequest { gref: GrantRef(g), readonly: true }], &mut out);
                    let Ok(m) = out[0] else { return RSP_ERROR };
                    self.maps += 1;
                    let mut buf = vec![0u8; count * 8];
                    m.mem.copy_to_private(0, &mut buf);
                    let mut st = [GntStatus::Okay];
                    plat.unmap_batch(&[m], &mut st);
                    self.unmaps += 1;
                    for k in 0..count {
                        match xenblk::proto::blkif::decode_indirect_segment(&buf, k) {
                            Some(s) => segs.push(s),
                            None => return RSP_ERROR,
                        }
                    }
                }
                (*op, segs)
            }
            ReqKind::Discard { .. } => return RSP_EOPNOTSUPP,
        };
        self.max_segments_seen = self.max_segments_seen.max(segs.len());
        let op = &op;
        let segs = &segs;
        if *op == RwOp::Flush || *op == RwOp::WriteBarrier && segs.is_empty() {
            return RSP_OKAY;
        }
        // Checked: a hostile or careless frontend may send any sector number.
        let Some(mut off) = r.sector.checked_mul(512) else { return RSP_ERROR };
        for s in segs {
            let len = s.len();
            if off.checked_add(len as u64).is_none_or(|end| end > self.disk.sectors() * 512) {
                return RSP_ERROR;
            }
            let (m, transient) = match self.cache.get(&s.gref) {
                Some(m) => (*m, false),
                None => {
                    let mut out = [Err(GntStatus::GeneralError)];
                    // Persistent mappings must be read-write; otherwise a write only reads the page.
                    let readonly = op.is_write() && !self.negotiated_persistent;
                    plat.map_batch(self.front_id, &[MapRequest { gref: GrantRef(s.gref), readonly }], &mut out);
                    let Ok(m) = out[0] else { return RSP_ERROR };
                    self.maps += 1;
                    if self.negotiated_persistent {
                        self.cache.insert(s.gref, m);
                        (m, false)
                    } else {
                        (m, true)
                    }
                }
            };
            let mut tmp = [0u8; 4096];
            let ok = if op.is_write() {
                m.mem.copy_to_private(s.offset(), &mut tmp[..len]);
                self.disk.write_at(off, &tmp[..len]).is_ok()
            } else {
                let ok = self.disk.read_at(off, &mut tmp[..len]).is_ok();
                m.mem.copy_from_private(s.offset(), &tmp[..len]);
                ok
            };
            if transient {
                let mut st = [GntStatus::Okay];
                plat.unmap_batch(&[m], &mut st);
                self.unmaps += 1;
            }
            if !ok {
                return RSP_ERROR;
            }
            off += len as u64;
        }
        RSP_OKAY
    }

    /// Unmaps every cached grant.
    pub fn clear_cache<P: BackendPlatform>(&mut self, plat: &mut P) {
        let maps: Vec<Mapping> = self.cache.drain().map(|(_, m)| m).collect();
        if !maps.is_empty() {
            let mut st = vec![GntStatus::Okay; maps.len()];
            plat.unmap_batch(&maps, &mut st);
            self.unmaps += maps.len() as u64;
        }
    }

    /// Unmaps everything: cached grants and the ring.
    pub fn shutdown<P: BackendPlatform>(&mut self, plat: &mut P) {
        self.clear_cache(plat);
        if let Some((_, m, port)) = self.ring.take() {
            plat.unbind(port);
            plat.unmap_ring(m);
        }
    }

    /// The ring, once connected (hostile tests consume and answer requests themselves).
    pub fn ring(&mut self) -> Option<&mut BackRing> {
        self.ring.as_mut().map(|r| &mut r.0)
    }

    /// The mapped ring page, once connected (hostile tests write it directly).
    pub fn ring_mem(&self) -> Option<SharedMem> {
        self.ring.as_ref().map(|r| r.1.mem)
    }

    /// Serves one request the way [`process`](Self::process) does and returns its status,
    /// without answering it (a hostile backend decides what to answer).
    pub fn serve_request<P: BackendPlatform>(&mut self, plat: &mut P, r: &Request) -> i16 {
        self.serve(plat, r)
    }

    /// Forgets the ring without unmapping it or unbinding its event channel: a backend that
    /// vanishes or never lets go (hostile tests). Cached grants stay mapped too.
    pub fn abandon(&mut self) {
        self.ring = None;
        self.cache.clear();
    }

    /// The event channel, once connected.
    pub fn port(&self) -> Option<Port> {
        self.ring.as_ref().map(|r| r.2)
    }

    /// Every event channel of the connection (one: this peer serves one queue), like
    /// `Backend::ports`.
    pub fn ports(&self) -> Vec<Port> {
        self.port().into_iter().collect()
    }
}
