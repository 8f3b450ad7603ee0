//! Closing against a backend that unmaps late, in Linux blkback's order: on our Closing it
//! only answers Closing and keeps the ring and every persistent grant mapped; it unmaps
//! and goes Closed once it sees our Closed. Our teardown (which runs before we write
//! Closed) therefore finds everything still mapped and must park it, then release it when
//! the backend lets go. Found by the PV guest in the rig against Linux 6.1 blkback: before
//! the fix the ring and all pool pages stayed granted forever.
#![cfg(feature = "frontend")]

use xenblk::modes::frontend::{Frontend, FrontendConfig, Io, Phase, Status};
use xenblk::proto::grant::{DomId, GTF_TYPE_MASK, GrantRef};
use xenblk_sim::peers::RawBackend;
use xenblk_sim::{Hypervisor, RamDisk, VbdSpec};

fn live_grants(t: &xenblk::proto::grant::GrantTableV1) -> usize {
    (0..t.len()).filter(|&r| t.read(GrantRef(r)).is_some_and(|e| e.flags & GTF_TYPE_MASK != 0)).count()
}

#[test]
fn pages_the_backend_still_maps_at_teardown_are_released_when_it_lets_go() {
    let hv = Hypervisor::new();
    let mut dom0 = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(512);
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).unwrap();
    let mut back = RawBackend::new(&mut dom0, &spec.backend_path(), RamDisk::new(4096), true);
    back.unmap_on_front_closed = true;
    let mut f = Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap();
    for _ in 0..10 {
        back.step(&mut dom0);
        f.on_xenstore(&mut guest);
    }
    assert_eq!(f.phase(), Phase::Connected);
    assert!(f.negotiated().persistent, "the test needs persistent grants");

    // A few writes so that pool pages are granted and cached by the backend.
    let data = vec![0x5au8; 3 * 4096];
    let mut done = 0;
    for tag in 0..4u64 {
        f.submit(&mut guest, Io::Write { sector: tag * 24, data: &data }, tag).unwrap();
    }
    f.kick(&mut guest);
    while done < 4 {
        assert!(back.process(&mut dom0) > 0 || done > 0, "backend saw no requests");
        f.poll(&mut guest, |c| {
            assert_eq!(c.status, Status::Ok);
            done += 1;
        });
    }
    let table = guest.grant_table();
    let granted = live_grants(&table);
    assert!(granted >= 2, "ring and pool pages should be granted, found {granted}");
    assert!(back.maps > 0);

    // Close: the backend answers Closing but keeps everything mapped.
    f.close(&mut guest);
    back.step(&mut dom0);
    f.on_xenstore(&mut guest);
    assert_eq!(f.phase(), Phase::Closed);
    let parked = f.parked_pages();
    assert!(parked >= 2, "the teardown found the ring and pool pages mapped: parked {parked}");
    assert_eq!(live_grants(&table), parked, "still-mapped pages keep their grants");

    // Now the backend sees our Closed, unmaps and goes Closed; the next event releases all.
    back.step(&mut dom0);
    assert_eq!(back.unmaps, back.maps, "the backend unmapped everything");
    f.on_xenstore(&mut guest);
    assert_eq!(f.parked_pages(), 0);
    assert_eq!(live_grants(&table), 0, "no grant may outlive the connection");
    f.shutdown(&mut guest);
}
