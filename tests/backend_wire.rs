//! The backend against a frontend written on the wire layer alone, for what our own
//! frontend never sends: indirect requests built by hand, checked the way Linux blkfront
//! checks their responses.
#![cfg(feature = "backend")]

use xenblk::modes::backend::{Backend, BackendConfig};
use xenblk::platform::{EventChannels, Grants, Pages};
use xenblk::proto::blkif::{OP_WRITE, RSP_OKAY, ReqKind, Request, RwOp, Segment};
use xenblk::proto::grant::DomId;
use xenblk_sim::peers::RawFrontend;
use xenblk_sim::{Hypervisor, RamDisk, VbdSpec};

struct Wire {
    hv: Hypervisor,
    dom0: xenblk_sim::Dom,
    guest: xenblk_sim::Dom,
    spec: VbdSpec,
    disk: RamDisk,
    back: Backend<RamDisk>,
    front: RawFrontend,
}

fn connect() -> Wire {
    let hv = Hypervisor::new();
    let mut dom0 = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(256);
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).unwrap();
    let disk = RamDisk::new(2048);
    let mut back = Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), disk.clone(), 1).unwrap();
    let mut front = RawFrontend::new(&mut guest, &spec.frontend_path(), true);
    for _ in 0..10 {
        front.step(&mut guest);
        back.on_xenstore(&mut dom0);
    }
    assert!(front.step(&mut guest), "raw frontend did not connect");
    let max_ind = hv.xs_read_string(&format!("{}/feature-max-indirect-segments", spec.backend_path())).unwrap();
    assert!(max_ind.parse::<u32>().unwrap() >= 17, "backend offers too few indirect segments for NetBSD");
    Wire { hv, dom0, guest, spec, disk, back, front }
}

fn roundtrip(w: &mut Wire, req: &Request) -> xenblk::proto::Response {
    let ring = w.front.ring.as_mut().unwrap();
    assert!(ring.put_request(req));
    if ring.push_requests() {
        w.guest.notify(w.front.port.unwrap()).unwrap();
    }
    assert_eq!(w.back.process(&mut w.dom0), 1);
    w.front.ring.as_mut().unwrap().take_response().unwrap().expect("no response")
}

#[test]
fn indirect_request_is_answered_with_its_inner_operation() {
    let mut w = connect();
    let (guest, disk) = (&mut w.guest, w.disk.clone());

    // Two data pages described by one indirect page.
    let be = DomId::DOM0;
    let mut grefs = Vec::new();
    for k in 0..2u8 {
        let p = guest.alloc_page().unwrap();
        p.mem.copy_from_private(0, &[0x40 + k; 4096]);
        grefs.push(guest.grant(p.frame, be, false).unwrap());
    }
    let ind = guest.alloc_page().unwrap();
    for (i, g) in grefs.iter().enumerate() {
        ind.mem.write_bytes(i * 8, &Segment { gref: g.0, first_sect: 0, last_sect: 7 }.encode());
    }
    let ig = guest.grant(ind.frame, be, true).unwrap();
    let req = Request {
        id: 77,
        handle: 0,
        sector: 64,
        kind: ReqKind::Indirect { op: RwOp::Write, nr_segments: 2, pages: [ig.0].into_iter().collect() },
    };
    let rsp = roundtrip(&mut w, &req);
    assert_eq!((rsp.id, rsp.status), (77, RSP_OKAY));
    assert_eq!(rsp.op, OP_WRITE, "an indirect request must be answered with its indirect_op");
    let mut b = vec![0u8; 8192];
    disk.read_at(64 * 512, &mut b).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0x40) && b[4096..].iter().all(|&x| x == 0x41));
}

#[test]
fn read_only_write_grants_are_served_without_persistence() {
    // NetBSD grants the pages of write requests read-only; a persistent backend cannot keep
    // them mapped but must still serve the request.
    let mut w = connect();
    assert!(w.back.negotiated().unwrap().persistent);
    let p = w.guest.alloc_page().unwrap();
    p.mem.copy_from_private(0, &[0x5a; 4096]);
    let g = w.guest.grant(p.frame, DomId::DOM0, true).unwrap();
    let mut segs = xenblk::proto::blkif::SegList::new();
    segs.push(Segment { gref: g.0, first_sect: 0, last_sect: 7 }).unwrap();
    let req = Request { id: 5, handle: 0, sector: 8, kind: ReqKind::Rw { op: RwOp::Write, segs } };
    let rsp = roundtrip(&mut w, &req);
    assert_eq!((rsp.id, rsp.op, rsp.status), (5, OP_WRITE, RSP_OKAY));
    assert!(!w.guest.is_mapped(g), "a read-only grant was kept mapped");
    w.guest.end_access(g).expect("grant still in use after the request completed");
    let mut b = vec![0u8; 4096];
    w.disk.read_at(8 * 512, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    let _ = (&w.hv, &w.spec);
}
