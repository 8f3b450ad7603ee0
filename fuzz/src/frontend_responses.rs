//! The frontend fed by a hostile backend: requests are submitted through the real
//! `Frontend`; the fuzzer writes the response slots and `rsp_prod` (and may rewrite the
//! request slots the frontend published), notifies, and the frontend polls.
//!
//! Input: commands until the input ends (see [`run`]).
//!
//! Invariants:
//! * no panic;
//! * a completion only for a tag that was submitted and not yet completed (never twice);
//! * the frontend's in-flight count equals submitted minus completed;
//! * once the device failed (a protocol violation), every in-flight request has completed
//!   with an error and new submissions are refused.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use xenblk::modes::frontend::{Frontend, FrontendConfig, Io, Phase, Status};
use xenblk::platform::{EventChannels, GrantMapper};
use xenblk::proto::blkif::{Protocol, Response, encode_response};
use xenblk::proto::grant::{DomId, GrantRef};
use xenblk::proto::ring::{HEADER_SIZE, ring_size};
use xenblk_sim::peers::RawBackend;
use xenblk_sim::{DomainConfig, HvConfig, Hypervisor, RamDisk, VbdSpec};

use crate::Bytes;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    // A small dom0 (the default is 256 MiB): setting up a hypervisor per input dominates.
    let hv = Hypervisor::with_config(HvConfig { dom0_pages: 512, dom0_grant_frames: 4, ..HvConfig::default() })
        .expect("hypervisor");
    let mut dom0 = hv.take_dom0().expect("dom0");
    let mut guest = hv.create_domain_with(DomainConfig { pages: 256, grant_frames: 4 }).expect("guest");
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).expect("vbd");
    let flags = b.u8();
    let mut raw = RawBackend::new(&mut dom0, &spec.backend_path(), RamDisk::new(512), flags & 1 != 0);
    let fcfg = FrontendConfig { persistent: flags & 2 != 0, ..Default::default() };
    let mut f = Frontend::attach(&mut guest, &spec.frontend_path(), fcfg, 1).expect("attach");
    for _ in 0..6 {
        raw.step(&mut dom0);
        f.on_xenstore(&mut guest);
    }
    assert_eq!(f.phase(), Phase::Connected, "handshake");
    let port = raw.port().expect("bound");
    // A second view of the ring for the fuzzer (the reference backend never serves it).
    let fdir = spec.frontend_path();
    let rref: u32 = hv.xs_read_string(&format!("{fdir}/ring-ref")).unwrap().parse().unwrap();
    let map = dom0.map_ring(guest.id(), &[GrantRef(rref)]).expect("map ring");
    let ring = map.mem;
    let abi = Protocol::native().abi();
    let entry = abi.entry_size();
    let slots = ring_size(4096, entry);
    let layout = abi.layout();

    let mut submitted: HashSet<u64> = HashSet::new();
    let mut completed: HashSet<u64> = HashSet::new();
    let mut next_tag = 1u64;
    let mut rsp_prod = 0u32;
    let data = vec![0x5au8; 8 * 4096];
    let mut steps = 0;
    while !b.is_empty() && steps < 96 {
        steps += 1;
        match b.u8() % 8 {
            // Submit a request.
            0 | 1 => {
                let sel = b.u8();
                let sector = b.u8() as u64 * 2;
                let n = (sel as usize >> 3) % 8 + 1;
                let io = match sel % 5 {
                    0 => Io::Read { sector, sectors: n as u32 * 3 },
                    1 => Io::Write { sector, data: &data[..n * 512 * 3] },
                    2 => Io::Flush,
                    3 => Io::Barrier { sector, data: &data[..512] },
                    _ => Io::Discard { sector, sectors: n as u64, secure: false },
                };
                let failed = matches!(f.phase(), Phase::Failed(_));
                if f.submit(&mut guest, io, next_tag).is_ok() {
                    assert!(!failed, "a failed device accepted a request");
                    submitted.insert(next_tag);
                    next_tag += 1;
                }
                f.kick(&mut guest);
            }
            // A response naming one of the ids in the published request slots.
            2 | 3 => {
                let req_prod = ring.load_u32(0, Ordering::Acquire);
                let k = b.u8() as u32;
                let idx = req_prod.wrapping_sub(1 + k % 8);
                let off = HEADER_SIZE + (idx % slots) as usize * entry;
                let mut id = [0u8; 8];
                ring.read_bytes(off + layout.req_id, &mut id);
                let mut op = [0u8; 1];
                ring.read_bytes(off, &mut op);
                let sel = b.u8();
                let op = if sel & 0x80 != 0 { sel & 7 } else { op[0] };
                let status = [0i16, -1, -2, 1, i16::MIN][(sel as usize >> 3) % 5];
                let rsp = Response { id: u64::from_le_bytes(id), op, status };
                let off = HEADER_SIZE + (rsp_prod % slots) as usize * entry;
                ring.write_bytes(off, encode_response(abi, &rsp).as_bytes());
                rsp_prod = rsp_prod.wrapping_add(1);
                ring.store_u32(8, rsp_prod, Ordering::Release);
            }
            // Raw response bytes.
            4 => {
                let off = HEADER_SIZE + (rsp_prod % slots) as usize * entry;
                let bytes = b.take(layout.response);
                ring.write_bytes(off, bytes);
                rsp_prod = rsp_prod.wrapping_add(1);
                ring.store_u32(8, rsp_prod, Ordering::Release);
            }
            // rsp_prod: any value, or a step.
            5 => {
                let v = b.u8();
                rsp_prod = if v < 128 { rsp_prod.wrapping_add(v as u32 % 4) } else { b.u32() };
                ring.store_u32(8, rsp_prod, Ordering::Release);
            }
            // Scribble over the frontend's own fields: req_prod, req_event, rsp_event, a
            // request slot.
            6 => {
                let off =
                    [0usize, 4, 12, HEADER_SIZE + (b.u8() as usize % slots as usize) * entry][b.u8() as usize % 4];
                ring.store_u32(off, b.u32(), Ordering::Relaxed);
            }
            // Notify and poll.
            _ => {
                let _ = dom0.notify(port);
                poll(&mut f, &mut guest, &submitted, &mut completed);
            }
        }
    }
    let _ = dom0.notify(port);
    poll(&mut f, &mut guest, &submitted, &mut completed);
    dom0.unmap_ring(map);
    let _ = (&hv, &fdir);
}

fn poll(f: &mut Frontend, guest: &mut xenblk_sim::Dom, submitted: &HashSet<u64>, completed: &mut HashSet<u64>) {
    let mut rd = vec![0u8; 64 * 1024];
    f.poll(guest, |c| {
        assert!(submitted.contains(&c.tag), "completion for tag {} never submitted", c.tag);
        assert!(completed.insert(c.tag), "tag {} completed twice", c.tag);
        if c.status == Status::Ok {
            c.read_data(&mut rd);
        }
    });
    assert_eq!(f.in_flight(), submitted.len() - completed.len(), "in-flight accounting");
    if matches!(f.phase(), Phase::Failed(_)) {
        assert_eq!(f.in_flight(), 0, "a failed device still holds requests");
    }
}
