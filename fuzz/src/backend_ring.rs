//! The backend fed by a hostile frontend: the fuzzer writes ring slots, ring indices and
//! indirect pages directly in the shared pages, notifies, and lets `Backend::process` run.
//!
//! Input: byte 0 = flags (bit 0: persistent, bit 1: x86_32 protocol, bit 2: a read-only
//! disk), then commands until the input ends (see [`run`]).
//!
//! Invariants checked after every `process` and at the end:
//! * no panic (libFuzzer reports one as a crash);
//! * every response carries an id that some request slot held at some time, and the backend
//!   never publishes more responses than requests it answered (`stats.requests`), nor more
//!   than one ring's worth between two frontend moves;
//! * mappings stay bounded: after `process` only the ring and the persistent cache remain;
//! * after `shutdown` the backend domain holds no mapping at all.

use std::collections::HashSet;

use xenblk::modes::backend::{BackPhase, Backend, BackendConfig};
use xenblk::platform::{EventChannels, Grants, Page, Pages, Port, Tx, XenStore};
use xenblk::proto::blkif::{Abi, Protocol, Segment, decode_response};
use xenblk::proto::grant::{DomId, GrantRef};
use xenblk::proto::ring::{FrontRing, HEADER_SIZE, ring_size};
use xenblk_sim::{Dom, DomainConfig, HvConfig, Hypervisor, RamDisk, VbdSpec};

use crate::Bytes;

/// Data pages granted to the backend (some read-only), and indirect pages.
const DATA_PAGES: usize = 6;
const INDIRECT_PAGES: usize = 3;

struct Rig {
    _hv: Hypervisor,
    dom0: Dom,
    guest: Dom,
    back: Backend<RamDisk>,
    ring: Page,
    port: Port,
    abi: Abi,
    /// Valid grant references the fuzzer can name by index: data pages, then indirect pages.
    grefs: Vec<GrantRef>,
    indirect: Vec<Page>,
}

fn setup(flags: u8) -> Option<Rig> {
    // A small dom0 (the default is 256 MiB): setting up a hypervisor per input dominates.
    let hv = Hypervisor::with_config(HvConfig { dom0_pages: 256, dom0_grant_frames: 4, ..HvConfig::default() }).ok()?;
    let mut dom0 = hv.take_dom0()?;
    let mut guest = hv.create_domain_with(DomainConfig { pages: 64, grant_frames: 4 }).ok()?;
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).ok()?;
    let disk = RamDisk::new(256);
    if flags & 4 != 0 {
        disk.set_read_only(true);
    }
    let bcfg = BackendConfig { persistent: true, max_grants: 4, ..Default::default() };
    let mut back = Backend::probe(&mut dom0, &spec.backend_path(), bcfg, disk, 1).ok()?;
    let proto = if flags & 2 != 0 { Protocol::X86_32 } else { Protocol::X86_64 };
    let abi = proto.abi();
    // A hand-made frontend handshake (the fuzzer owns the ring afterwards).
    let ring = guest.alloc_page().ok()?;
    FrontRing::init(ring.mem, abi).ok()?;
    let rg = guest.grant(ring.frame, DomId::DOM0, false).ok()?;
    let port = guest.alloc_unbound(DomId::DOM0).ok()?;
    let d = spec.frontend_path();
    let persistent = if flags & 1 != 0 { "1" } else { "0" };
    for (k, v) in [
        ("ring-ref", rg.0.to_string()),
        ("event-channel", port.0.to_string()),
        ("protocol", proto.as_str().to_string()),
        ("feature-persistent", persistent.to_string()),
        ("state", "3".to_string()),
    ] {
        guest.write(Tx::NONE, &format!("{d}/{k}"), v.as_bytes()).ok()?;
    }
    for _ in 0..4 {
        back.on_xenstore(&mut dom0);
    }
    if back.phase() != BackPhase::Connected {
        return None;
    }
    let mut grefs = Vec::new();
    for i in 0..DATA_PAGES {
        let p = guest.alloc_page().ok()?;
        p.mem.copy_from_private(0, &[i as u8; 4096]);
        grefs.push(guest.grant(p.frame, DomId::DOM0, i % 3 == 2).ok()?);
    }
    let mut indirect = Vec::new();
    for _ in 0..INDIRECT_PAGES {
        let p = guest.alloc_page().ok()?;
        grefs.push(guest.grant(p.frame, DomId::DOM0, true).ok()?);
        indirect.push(p);
    }
    Some(Rig { _hv: hv, dom0, guest, back, ring, port, abi, grefs, indirect })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.u8();
    let Some(mut r) = setup(flags) else { panic!("rig setup failed") };
    let entry = r.abi.entry_size();
    let slots = ring_size(4096, entry);
    let layout = r.abi.layout();
    // Ids ever present in a request slot (the zeroed ring holds id 0).
    let mut ids: HashSet<u64> = HashSet::from([0]);
    let mut req_prod = 0u32;
    let mut rsp_seen = 0u32;
    let mut responses = 0u64;
    let mut steps = 0;
    while !b.is_empty() && steps < 64 {
        steps += 1;
        match b.u8() % 7 {
            // Raw bytes into one slot.
            0 => {
                let slot = (b.u8() as u32) % slots;
                let off = HEADER_SIZE + slot as usize * entry;
                let n = (b.u8() as usize).min(entry);
                let bytes = b.take(n);
                r.ring.mem.write_bytes(off, bytes);
                let mut id = [0u8; 8];
                r.ring.mem.read_bytes(off + layout.req_id, &mut id);
                ids.insert(u64::from_le_bytes(id));
            }
            // A well-formed-looking request at req_prod, with valid grants where asked.
            1 => {
                let mut img = [0u8; 112];
                let op = b.u8() % 8;
                img[0] = op;
                let nseg = b.u8();
                img[1] = if op == 6 { b.u8() % 3 } else { nseg % 13 };
                let id = b.u8() as u64 | ((b.u8() as u64) << 8);
                img[layout.req_id..layout.req_id + 8].copy_from_slice(&id.to_le_bytes());
                let sector = (b.u8() as u64) * 4 + if b.u8() & 1 == 0 { 0 } else { 250 };
                img[layout.req_sector..layout.req_sector + 8].copy_from_slice(&sector.to_le_bytes());
                if op == 6 {
                    let n = (nseg as u16 % 40) + 1;
                    img[2..4].copy_from_slice(&n.to_le_bytes());
                    for k in 0..2 {
                        let g = r.grefs[DATA_PAGES + (b.u8() as usize % INDIRECT_PAGES)].0;
                        let o = layout.indirect_grefs + 4 * k;
                        img[o..o + 4].copy_from_slice(&g.to_le_bytes());
                    }
                } else {
                    for k in 0..(nseg as usize % 12) {
                        let sel = b.u8() as usize;
                        let g = if sel < 240 { r.grefs[sel % DATA_PAGES].0 } else { sel as u32 * 977 };
                        let f = b.u8();
                        let s = Segment { gref: g, first_sect: f & 7, last_sect: (f >> 3) & 7 | (f >> 6) << 3 };
                        let o = layout.req_seg + 8 * k;
                        img[o..o + 8].copy_from_slice(&s.encode());
                    }
                }
                let off = HEADER_SIZE + (req_prod % slots) as usize * entry;
                r.ring.mem.write_bytes(off, &img[..layout.request]);
                ids.insert(id);
                req_prod = req_prod.wrapping_add(1);
                r.ring.mem.store_u32(0, req_prod, std::sync::atomic::Ordering::Release);
            }
            // req_prod: a small step, or any value.
            2 => {
                let v = b.u8();
                req_prod = if v < 200 { req_prod.wrapping_add((v % 40) as u32) } else { b.u32() };
                r.ring.mem.store_u32(0, req_prod, std::sync::atomic::Ordering::Release);
            }
            // The frontend's other index fields (req_event, rsp_event) and the padding.
            3 => {
                let off = [4usize, 12, 16, 60][b.u8() as usize % 4];
                r.ring.mem.store_u32(off, b.u32(), std::sync::atomic::Ordering::Relaxed);
            }
            // Indirect page contents: raw bytes or segments naming valid grants.
            4 => {
                let page = &r.indirect[b.u8() as usize % INDIRECT_PAGES];
                let idx = (b.u16() as usize) % 512;
                let sel = b.u8() as usize;
                let f = b.u8();
                let g = if sel < 230 { r.grefs[sel % DATA_PAGES].0 } else { b.u32() };
                let s = Segment { gref: g, first_sect: f & 7, last_sect: (f >> 3) & 15 };
                page.mem.write_bytes(idx * 8, &s.encode());
            }
            // Fill one indirect page with consecutive valid segments.
            5 => {
                let page = &r.indirect[b.u8() as usize % INDIRECT_PAGES];
                let n = b.u8() as usize;
                for i in 0..n.min(512) {
                    let s = Segment { gref: r.grefs[i % DATA_PAGES].0, first_sect: 0, last_sect: 7 };
                    page.mem.write_bytes(i * 8, &s.encode());
                }
            }
            // Notify and let the backend run.
            _ => {
                let _ = r.guest.notify(r.port);
                process(&mut r, &mut ids, slots, &mut rsp_seen, &mut responses);
            }
        }
    }
    let _ = r.guest.notify(r.port);
    process(&mut r, &mut ids, slots, &mut rsp_seen, &mut responses);
    r.back.shutdown(&mut r.dom0);
    assert_eq!(r.dom0.live_mappings(), 0, "mappings left after shutdown");
}

fn process(r: &mut Rig, ids: &mut HashSet<u64>, slots: u32, rsp_seen: &mut u32, responses: &mut u64) {
    // Whatever sits in a slot now may be consumed as a request (including earlier
    // responses that the frontend re-published by moving req_prod).
    let (entry, id_off) = (r.abi.entry_size(), r.abi.layout().req_id);
    for s in 0..slots as usize {
        let mut id = [0u8; 8];
        r.ring.mem.read_bytes(HEADER_SIZE + s * entry + id_off, &mut id);
        ids.insert(u64::from_le_bytes(id));
    }
    r.back.process(&mut r.dom0);
    // Bounded mappings: the ring plus the persistent cache (max_grants = 4), nothing
    // transient left over.
    let live = r.dom0.live_mappings();
    assert!(live <= 1 + 4, "{live} mappings held after process");
    let prod = r.ring.mem.load_u32(8, std::sync::atomic::Ordering::Acquire);
    let new = prod.wrapping_sub(*rsp_seen);
    assert!(new <= slots, "backend published {new} responses at once");
    let len = r.abi.layout().response;
    for i in 0..new {
        let off = HEADER_SIZE + (rsp_seen.wrapping_add(i) % slots) as usize * entry;
        let mut buf = [0u8; 16];
        r.ring.mem.read_bytes(off, &mut buf[..len]);
        let rsp = decode_response(r.abi, &buf[..len]).expect("response decodes");
        assert!(ids.contains(&rsp.id), "response for id {} that no request carried", rsp.id);
        assert!((-2..=0).contains(&rsp.status), "status {}", rsp.status);
    }
    *responses += new as u64;
    *rsp_seen = prod;
    assert!(*responses <= r.back.stats().requests, "more responses than requests answered");
}
