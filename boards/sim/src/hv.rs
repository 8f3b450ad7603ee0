//! The hypervisor: the domain table, the xenstore, domain creation and destruction, and the
//! toolstack's (dom0's) privileged helpers.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use xenblk::platform::{Result, Tx};
use xenblk::proto::grant::{DomId, GrantTableV1};
use xenblk::proto::shmem::SharedMem;

use crate::dom::Dom;
use crate::domain::Domain;
use crate::evtchn;
use crate::fault::FaultPlan;
use crate::stats::DomStats;
use crate::xenstore::{Perm, Perms, Store, XsLimits, home};

/// First reserved domain id (`DOMID_FIRST_RESERVED`); ids below it are usable.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

/// Hypervisor-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvConfig {
    /// Memory of dom0 in 4 KiB pages (default 65536 = 256 MiB; memfd pages are allocated by
    /// the kernel only when touched).
    pub dom0_pages: usize,
    /// Grant-table frames of dom0 (512 entries each).
    pub dom0_grant_frames: usize,
    /// Xenstore quotas.
    pub xs_limits: XsLimits,
}

impl Default for HvConfig {
    fn default() -> Self {
        HvConfig { dom0_pages: 65536, dom0_grant_frames: 32, xs_limits: XsLimits::default() }
    }
}

/// Settings of one new domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Memory in 4 KiB pages.
    pub pages: usize,
    /// Grant-table frames (512 entries each; refs 0..8 are reserved). Default 32.
    pub grant_frames: usize,
}

impl DomainConfig {
    /// `pages` pages and the default 32 grant frames.
    pub fn new(pages: usize) -> DomainConfig {
        DomainConfig { pages, grant_frames: 32 }
    }
}

#[derive(Debug)]
pub(crate) struct HvInner {
    /// Indexed by domid. Destroyed domains stay (marked dead) so that memory others still
    /// reference through raw views stays valid for the hypervisor's lifetime.
    domains: RwLock<Vec<Arc<Domain>>>,
    pub(crate) store: Mutex<Store>,
    dom0_taken: AtomicBool,
}

impl HvInner {
    /// A live or dead domain.
    pub(crate) fn domain(&self, id: DomId) -> Option<Arc<Domain>> {
        self.domains.read().unwrap().get(id.0 as usize).cloned()
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }
}

impl Drop for HvInner {
    fn drop(&mut self) {
        // Break the reference cycles (ports name their peers, watches their domains).
        for d in self.domains.get_mut().unwrap().iter() {
            d.ports.lock().unwrap().ports.clear();
        }
        self.store.get_mut().unwrap().clear_watches();
    }
}

/// A Xen hypervisor inside this process. Cheap to clone (a shared handle).
#[derive(Clone, Debug)]
pub struct Hypervisor {
    pub(crate) inner: Arc<HvInner>,
}

impl Default for Hypervisor {
    fn default() -> Self {
        Hypervisor::new()
    }
}

impl Hypervisor {
    /// A hypervisor with dom0 (privileged) and the default settings.
    pub fn new() -> Hypervisor {
        Hypervisor::with_config(HvConfig::default()).expect("xenblk-sim: cannot create dom0")
    }

    /// A hypervisor with dom0 and the given settings.
    pub fn with_config(cfg: HvConfig) -> io::Result<Hypervisor> {
        let dom0 = Arc::new(Domain::new(DomId::DOM0, cfg.dom0_pages, cfg.dom0_grant_frames)?);
        let hv = Hypervisor {
            inner: Arc::new(HvInner {
                domains: RwLock::new(vec![dom0]),
                store: Mutex::new(Store::new(cfg.xs_limits)),
                dom0_taken: AtomicBool::new(false),
            }),
        };
        {
            let mut s = hv.inner.store();
            for p in ["/local", "/local/domain", "/local/domain/0", "/tool"] {
                s.write(DomId::DOM0, Tx::NONE, p, b"").expect("fresh store");
            }
            s.write(DomId::DOM0, Tx::NONE, "/local/domain/0/domid", b"0").expect("fresh store");
            s.write(DomId::DOM0, Tx::NONE, "/local/domain/0/name", b"Domain-0").expect("fresh store");
        }
        Ok(hv)
    }

    /// The owner handle of dom0, once (`None` on later calls).
    pub fn take_dom0(&self) -> Option<Dom> {
        if self.inner.dom0_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Dom::new(self.inner.clone(), self.inner.domain(DomId::DOM0).expect("dom0 exists")))
    }

    /// Creates an unprivileged domain with `npages` pages of memory and 32 grant frames,
    /// and returns its owner handle. Panics if the OS refuses the memory.
    pub fn create_domain(&self, npages: usize) -> Dom {
        self.create_domain_with(DomainConfig::new(npages)).expect("xenblk-sim: create_domain failed")
    }

    /// Creates a domain. Its xenstore home `/local/domain/<id>` is owned by dom0 and readable
    /// by the domain, with writable (domain-owned) `device`, `data`, `control` and `drivers`
    /// directories, `domid` and `name`, as libxl makes them. Fires `@introduceDomain`.
    pub fn create_domain_with(&self, cfg: DomainConfig) -> io::Result<Dom> {
        let d = {
            let mut ds = self.inner.domains.write().unwrap();
            let id = ds.len();
            if id >= DOMID_FIRST_RESERVED as usize {
                return Err(io::Error::other("out of domain ids"));
            }
            let d = Arc::new(Domain::new(DomId(id as u16), cfg.pages, cfg.grant_frames.max(1))?);
            ds.push(d.clone());
            d
        };
        let id = d.id;
        {
            let mut s = self.inner.store();
            let h = home(id);
            let w = |s: &mut Store, p: &str, v: &[u8]| s.write(DomId::DOM0, Tx::NONE, p, v).expect("dom0 write");
            w(&mut s, &h, b"");
            s.set_perms(DomId::DOM0, Tx::NONE, &h, &Perms::owned_by(DomId::DOM0).with(id, Perm::Read)).expect("dom0");
            w(&mut s, &format!("{h}/domid"), id.0.to_string().as_bytes());
            w(&mut s, &format!("{h}/name"), format!("dom{}", id.0).as_bytes());
            for sub in ["device", "data", "control", "drivers"] {
                let p = format!("{h}/{sub}");
                w(&mut s, &p, b"");
                s.set_perms(DomId::DOM0, Tx::NONE, &p, &Perms::owned_by(id)).expect("dom0");
            }
            s.fire_special("@introduceDomain");
        }
        Ok(Dom::new(self.inner.clone(), d))
    }

    /// Destroys a domain: marks it dead (new grant maps of its pages fail with
    /// `GNTST_bad_domain`; its own operations fail), closes its event channels (each peer port
    /// becomes unbound, is reported in the peer's `WakeReason::closed` and the peer is woken),
    /// removes `/local/domain/<id>` (firing watches), drops its watches and transactions,
    /// fires `@releaseDomain`, and wakes the domain's own waiter (`destroyed`).
    ///
    /// Mappings other domains hold of its pages stay valid memory until they unmap them.
    /// Mappings it holds of others' pages are released when its [`Dom`] is dropped.
    /// Returns `false` for dom0, an unknown or an already destroyed domain.
    pub fn destroy_domain(&self, id: DomId) -> bool {
        if id == DomId::DOM0 {
            return false;
        }
        let Some(d) = self.inner.domain(id) else { return false };
        if d.dead.swap(true, Ordering::AcqRel) {
            return false;
        }
        evtchn::close_all(&d);
        {
            let mut s = self.inner.store();
            let _ = s.remove(DomId::DOM0, Tx::NONE, &home(id));
            s.forget_domain(id);
            s.fire_special("@releaseDomain");
        }
        d.wake();
        true
    }

    /// Whether `id` exists and is not destroyed.
    pub fn domain_exists(&self, id: DomId) -> bool {
        self.inner.domain(id).is_some_and(|d| !d.is_dead())
    }

    /// Ids of the live domains (dom0 first).
    pub fn domains(&self) -> Vec<DomId> {
        self.inner.domains.read().unwrap().iter().filter(|d| !d.is_dead()).map(|d| d.id).collect()
    }

    /// Counters of a domain (live or destroyed).
    pub fn stats(&self, id: DomId) -> Option<DomStats> {
        self.inner.domain(id).map(|d| d.stats.snapshot())
    }

    /// Installs a fault plan for a domain (as the caller of grant and event operations).
    pub fn set_fault_plan(&self, id: DomId, plan: FaultPlan) -> bool {
        self.inner.domain(id).map(|d| d.faults.set(plan)).is_some()
    }

    /// Wakes the domain's [`Dom::wait`] with `kicked` set.
    pub fn kick(&self, id: DomId) -> bool {
        self.inner.domain(id).map(|d| d.kick()).is_some()
    }

    /// Raw view of a domain's frame (tests playing a hostile peer or inspecting memory).
    /// Valid while the hypervisor or any handle of it lives. `None` if out of range.
    pub fn raw_page(&self, id: DomId, frame: u64) -> Option<SharedMem> {
        let d = self.inner.domain(id)?;
        ((frame as usize) < d.npages).then(|| d.page(frame))
    }

    /// Raw access to a domain's grant table (tests playing a hostile granter).
    pub fn grant_table(&self, id: DomId) -> Option<GrantTableV1> {
        self.inner.domain(id).map(|d| d.gnt)
    }

    /// Nodes of the xenstore owned by `id` (what its quota counts).
    pub fn xs_nodes_owned(&self, id: DomId) -> usize {
        self.inner.store().owned(id)
    }

    // ---- xenstore as dom0 (the toolstack) ----

    /// Reads `path` as dom0.
    pub fn xs_read(&self, path: &str) -> Result<Vec<u8>> {
        self.inner.store().read(DomId::DOM0, Tx::NONE, path)
    }

    /// Reads `path` as dom0, as UTF-8 (lossy).
    pub fn xs_read_string(&self, path: &str) -> Result<String> {
        self.xs_read(path).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Whether `path` exists.
    pub fn xs_exists(&self, path: &str) -> bool {
        self.xs_read(path).is_ok()
    }

    /// Writes `path` as dom0 (creating missing parents; new nodes inherit the parent's
    /// permissions).
    pub fn xs_write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.inner.store().write(DomId::DOM0, Tx::NONE, path, value.as_ref())
    }

    /// Removes `path` and everything below it, as dom0.
    pub fn xs_remove(&self, path: &str) -> Result<()> {
        self.inner.store().remove(DomId::DOM0, Tx::NONE, path)
    }

    /// Lists the children of `path`, as dom0.
    pub fn xs_directory(&self, path: &str) -> Result<Vec<String>> {
        self.inner.store().directory(DomId::DOM0, Tx::NONE, path)
    }

    /// Permissions of `path`.
    pub fn xs_get_perms(&self, path: &str) -> Result<Perms> {
        self.inner.store().get_perms(DomId::DOM0, Tx::NONE, path)
    }

    /// Sets the permissions of `path`, as dom0.
    pub fn xs_set_perms(&self, path: &str, perms: &Perms) -> Result<()> {
        self.inner.store().set_perms(DomId::DOM0, Tx::NONE, path, perms)
    }

    pub(crate) fn xs_locked(&self) -> MutexGuard<'_, Store> {
        self.inner.store()
    }
}
