//! Per-domain counters (atomic, relaxed). Read them with `Dom::stats` or
//! `Hypervisor::stats`; subtract two snapshots for a delta.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// A snapshot of one domain's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct DomStats {
            $($(#[$m])* pub $name: u64,)*
        }

        #[derive(Debug, Default)]
        pub(crate) struct AtomicStats {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl AtomicStats {
            pub(crate) fn snapshot(&self) -> DomStats {
                DomStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }

            pub(crate) fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }

        impl core::ops::Sub for DomStats {
            type Output = DomStats;
            /// Field-wise difference (`later - earlier`), saturating at zero.
            fn sub(self, earlier: DomStats) -> DomStats {
                DomStats { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }
        }
    };
}

stats! {
    /// Pages handed out by `Pages::alloc_page` / `alloc_pages_contiguous` (per page).
    pages_allocated,
    /// Pages returned (per page).
    pages_freed,
    /// Successful `Grants::grant` calls.
    grants,
    /// Successful `Grants::end_access` calls.
    revokes,
    /// `end_access` refused because the grantee still maps the page (`RevokeError::InUse`).
    revokes_busy,
    /// Successful single-page grant maps by this domain (`map_batch` elements).
    maps,
    /// Successful single-page grant unmaps by this domain (`unmap_batch` elements).
    unmaps,
    /// `map_batch` elements that failed (any status, injected faults included).
    map_failures,
    /// `unmap_batch` elements that failed (bad handle).
    unmap_failures,
    /// Pages mapped by `map_ring` (a 4-page ring counts 4).
    ring_maps,
    /// Pages unmapped by `unmap_ring`.
    ring_unmaps,
    /// `map_ring` calls that failed.
    ring_map_failures,
    /// Successful grant-copy elements performed by this domain.
    copies,
    /// Grant-copy elements that failed.
    copy_failures,
    /// Bytes moved by successful grant copies.
    copy_bytes,
    /// `EventChannels::notify` calls that were delivered to a bound peer.
    notifies,
    /// Notifies dropped by the fault plan (the call still returned `Ok`).
    notifies_dropped,
    /// Notifies on a port whose remote end is not bound (silently dropped, as Xen does).
    notifies_unbound,
    /// Notifications that arrived on this domain's ports (one per peer `notify`, even when
    /// several coalesce into one pending bit).
    events,
    /// Blocking waits: `Dom::wait` calls that actually went to sleep.
    blocks,
    /// Blocking waits ended by an event (notification, watch, kick, destroy), not a timeout.
    wakeups,
    /// Watch events queued for this domain (after coalescing).
    watch_events,
    /// Watch firings merged into an already pending event of the same (watch, token).
    watch_coalesced,
    /// Faults injected by this domain's `FaultPlan` (maps, ring maps, copies, notifies).
    faults_injected,
    /// Xenstore requests made by this domain.
    xs_requests,
}

/// Adds one to a counter.
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn bump_n(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
