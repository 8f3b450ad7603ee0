//! `xenblk-sim`: a Xen hypervisor inside one process, faithful where it matters.
//!
//! * **Domains** ([`Hypervisor::create_domain`]) have their memory in a memfd, mapped once
//!   into the process as the domain's own view; pages come from a free list and are zeroed
//!   before they are handed out. Each domain has a v1 grant table (default 32 frames) and
//!   runs as a thread owning its [`Dom`] handle, which implements the driver's platform
//!   traits.
//! * **Grants** write real v1 entries. A grant map is an `mmap(MAP_SHARED)` of the
//!   granter's memfd page (read-only when asked) and sets `GTF_reading`/`GTF_writing` in the
//!   granter's entry; an unmap is `munmap` and clears them with the last mapping. Costs
//!   (page tables, TLB shootdowns, `mmap_lock`) are the machine's own: no sleeps, no
//!   models. Grant copy copies through the granter's own view (Xen's direct map), pinning
//!   the entry for the copy. Per-element `GNTST_*` statuses as Xen reports them.
//! * **Event channels** with per-domain ports; `notify` is one atomic `fetch_or` plus a
//!   wake-up only if the peer is blocked in [`Dom::wait`].
//! * **Xenstore** ([`xenstore`]): tree, permissions, transactions, coalesced watches,
//!   quotas. **Toolstack** helpers: [`Hypervisor::add_vbd`], [`Hypervisor::remove_vbd`].
//! * **Storage** for backends: [`RamDisk`], [`FileDisk`], [`CachedDisk`] (a volatile write
//!   cache lost on a power cut unless flushed) (their `Storage` impls need the
//!   `backend` feature, on by default).
//! * **Fault injection** ([`FaultPlan`]) and raw access ([`Dom::raw_page`],
//!   [`Dom::grant_table`]) for hostile-peer tests.
//!
//! Locks: the xenstore has one lock (xenstored is one process too); everything on the data
//! path is per domain (the granter's active-entry table for map/unmap/copy bookkeeping, the
//! caller's port table for notify) or lock-free.

extern crate self as xenblk_sim;

#[cfg(all(feature = "frontend", feature = "backend"))]
pub mod bench;
#[cfg(all(feature = "frontend", feature = "backend"))]
pub mod calibrate;
mod dom;
mod domain;
mod evtchn;
mod fault;
mod group;
pub mod harness;
mod hv;
#[cfg(all(feature = "frontend", feature = "backend"))]
pub mod micro;
pub mod peers;
pub mod plot;
pub mod shm;
mod stats;
pub mod storage;
mod toolstack;
mod wait;
pub mod xenstore;

pub use dom::{Dom, Kicker, MAX_RING_PAGES};
pub use evtchn::{MAX_PORTS, PortSet, WakeReason};
pub use fault::{FaultPlan, Trigger};
pub use group::WaitGroup;
pub use hv::{DOMID_FIRST_RESERVED, DomainConfig, HvConfig, Hypervisor};
pub use stats::DomStats;
pub use storage::{CachedDisk, DiskError, DiskStats, FileDisk, RamDisk};
pub use toolstack::{VbdSpec, backend_path, frontend_path};
pub use xenstore::{Perm, Perms, XsLimits};

/// The owner handle of a domain (the brief's name for [`Dom`]).
pub type DomainHandle = Dom;

// The handles cross threads: a domain's `Dom` moves into its thread; the rest are shared.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Dom>();
    send_sync::<Hypervisor>();
    send_sync::<Kicker>();
    send_sync::<RamDisk>();
    send_sync::<FileDisk>();
    send_sync::<CachedDisk>();
};
