//! Shared helpers for the integration tests that need both roles.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use xenblk::modes::backend::{Backend, BackendConfig};
use xenblk::proto::grant::DomId;
use xenblk_sim::{Dom, Hypervisor, RamDisk, VbdSpec};

/// A backend serving one vbd from dom0 in its own thread until stopped.
pub struct BackendThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<usize>>,
}

impl BackendThread {
    /// Stops it; returns the mappings dom0 still held after the backend shut down.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// A hypervisor with one guest and a vbd served by a backend thread.
pub fn guest_with_backend(disk: RamDisk, bcfg: BackendConfig) -> (Hypervisor, Dom, VbdSpec, BackendThread) {
    let hv = Hypervisor::new();
    let mut dom0 = hv.take_dom0().unwrap();
    let guest = hv.create_domain(1024);
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, bdir) = (stop.clone(), spec.backend_path());
    let handle = std::thread::spawn(move || {
        let mut b = Backend::probe(&mut dom0, &bdir, bcfg, disk, 7).unwrap();
        while !stop2.load(Ordering::Relaxed) {
            let w = dom0.wait(Some(Duration::from_millis(10)));
            if w.watches {
                dom0.take_watch_events();
                b.on_xenstore(&mut dom0);
            }
            if b.ports().iter().any(|&p| w.ports.contains(p)) {
                b.process(&mut dom0);
            }
        }
        b.shutdown(&mut dom0);
        dom0.live_mappings()
    });
    (hv, guest, spec, BackendThread { stop, handle: Some(handle) })
}
