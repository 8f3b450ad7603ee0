//! Event channels: per-domain port tables, pending bitmaps, and the blocking wait.
//!
//! `notify` sets the peer's pending bit with one atomic `fetch_or` and then looks at the
//! peer's "waiting" flag; only a peer that is blocked in [`Dom::wait`](crate::Dom::wait) is
//! woken (mutex + condition variable). A running peer costs one atomic RMW and one load. The
//! waiter publishes "waiting" before re-checking its pending state (both `SeqCst`), so a
//! notification can never be lost between the check and the sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use xenblk::platform::{PlatformError, Port, Result};
use xenblk::proto::grant::DomId;

use crate::domain::Domain;
use crate::stats::bump;

/// Ports per domain (port 0 is never valid, as in Xen).
pub const MAX_PORTS: u32 = 1024;
pub(crate) const PORT_WORDS: usize = MAX_PORTS as usize / 64;
// The domain's selector word has a bit per word of its pending and closed sets.
const _: () = assert!(2 * PORT_WORDS <= 64);

/// A set of ports, as a bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSet {
    words: [u64; PORT_WORDS],
}

impl PortSet {
    /// The empty set.
    pub const fn new() -> PortSet {
        PortSet { words: [0; PORT_WORDS] }
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: Port) -> bool {
        port.0 < MAX_PORTS && self.words[port.0 as usize / 64] & (1 << (port.0 % 64)) != 0
    }

    /// Adds `port` (ignored if out of range).
    pub fn insert(&mut self, port: Port) {
        if port.0 < MAX_PORTS {
            self.words[port.0 as usize / 64] |= 1 << (port.0 % 64);
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Number of ports in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The ports, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Port> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            core::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(Port(i as u32 * 64 + b))
            })
        })
    }

    /// Atomically takes (and clears) every bit of the words of `bits` that `words` selects
    /// (bit `i` for word `i`).
    pub(crate) fn take(bits: &[AtomicU64; PORT_WORDS], mut words: u64) -> PortSet {
        let mut s = PortSet::new();
        while words != 0 {
            let i = words.trailing_zeros() as usize;
            words &= words - 1;
            if let (Some(w), Some(a)) = (s.words.get_mut(i), bits.get(i)) {
                *w = a.swap(0, Ordering::SeqCst);
            }
        }
        s
    }
}

impl core::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter().map(|p| p.0)).finish()
    }
}

/// Why [`Dom::wait`](crate::Dom::wait) (or [`Dom::poll_pending`](crate::Dom::poll_pending))
/// returned. Everything reported is consumed: pending bits are cleared, `kicked` is reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeReason {
    /// Ports that were notified (pending bits, now cleared). Several notifies of one port
    /// before the wait coalesce into one bit, as in Xen. Binding an interdomain channel also
    /// sets the new local port pending once (Xen does this so that notifications sent before
    /// the bind are not lost).
    pub ports: PortSet,
    /// Ports whose remote domain was destroyed (they are now unbound; a notify on them is a
    /// silent no-op).
    pub closed: PortSet,
    /// Xenstore watch events are pending: fetch them with
    /// [`Dom::take_watch_events`](crate::Dom::take_watch_events). This stays true (and
    /// `wait` returns at once) until they are taken.
    pub watches: bool,
    /// Someone called a [`Kicker`](crate::Kicker) of this domain.
    pub kicked: bool,
    /// This domain has been destroyed.
    pub destroyed: bool,
    /// The timeout passed with nothing to report.
    pub timed_out: bool,
}

impl WakeReason {
    /// Whether there is nothing to report (no port, watch, kick or destruction).
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.closed.is_empty() && !self.watches && !self.kicked && !self.destroyed
    }
}

/// State of one port.
#[derive(Clone, Debug, Default)]
pub(crate) enum PortState {
    #[default]
    Free,
    /// Allocated by `alloc_unbound`, waiting for `remote` to bind.
    Unbound { remote: DomId },
    /// Connected to `peer`'s port `peer_port`.
    Interdomain { peer: Arc<Domain>, peer_port: u32 },
}

/// A domain's port table.
#[derive(Debug, Default)]
pub(crate) struct PortTable {
    pub(crate) ports: Vec<PortState>,
}

impl PortTable {
    pub(crate) fn alloc(&mut self, st: PortState) -> Option<u32> {
        if self.ports.is_empty() {
            // Port 0 is reserved.
            self.ports.push(PortState::Free);
        }
        if let Some(i) = self.ports.iter().skip(1).position(|p| matches!(p, PortState::Free)) {
            self.ports[i + 1] = st;
            return Some(i as u32 + 1);
        }
        if self.ports.len() as u32 >= MAX_PORTS {
            return None;
        }
        self.ports.push(st);
        Some(self.ports.len() as u32 - 1)
    }

    pub(crate) fn get(&self, port: u32) -> Option<&PortState> {
        if port == 0 {
            return None;
        }
        self.ports.get(port as usize)
    }

    pub(crate) fn get_mut(&mut self, port: u32) -> Option<&mut PortState> {
        if port == 0 {
            return None;
        }
        self.ports.get_mut(port as usize)
    }
}

/// Locks two domains' port tables in domid order (one lock when they are the same domain).
fn lock_pair<'a>(a: &'a Domain, b: &'a Domain) -> (MutexGuard<'a, PortTable>, Option<MutexGuard<'a, PortTable>>) {
    if a.id == b.id {
        (a.ports.lock().unwrap(), None)
    } else if a.id < b.id {
        let ga = a.ports.lock().unwrap();
        let gb = b.ports.lock().unwrap();
        (ga, Some(gb))
    } else {
        let gb = b.ports.lock().unwrap();
        let ga = a.ports.lock().unwrap();
        (ga, Some(gb))
    }
}

pub(crate) fn alloc_unbound(local: &Domain, remote: DomId) -> Result<Port> {
    local.ports.lock().unwrap().alloc(PortState::Unbound { remote }).map(Port).ok_or(PlatformError::NoSpace)
}

pub(crate) fn bind_interdomain(local: &Arc<Domain>, remote: &Arc<Domain>, remote_port: u32) -> Result<Port> {
    let (mut gl, mut gr) = lock_pair(local, remote);
    let check = |t: &PortTable| match t.get(remote_port) {
        Some(PortState::Unbound { remote: r }) if *r == local.id => Ok(()),
        Some(PortState::Unbound { .. }) => Err(PlatformError::Denied),
        Some(PortState::Interdomain { .. }) => Err(PlatformError::Invalid),
        _ => Err(PlatformError::NotFound),
    };
    check(gr.as_deref().unwrap_or(&gl))?;
    let lp = gl
        .alloc(PortState::Interdomain { peer: remote.clone(), peer_port: remote_port })
        .ok_or(PlatformError::NoSpace)?;
    let rt = match gr.as_deref_mut() {
        Some(r) => r,
        None => &mut gl,
    };
    *rt.get_mut(remote_port).expect("checked") = PortState::Interdomain { peer: local.clone(), peer_port: lp };
    drop(gr);
    drop(gl);
    // As Xen does: notifications sent to the unbound port may have been lost, so the new
    // local port starts pending.
    local.set_pending(lp);
    Ok(Port(lp))
}

/// Closes `port` of `local`. The remote end of an interdomain channel becomes unbound (bound
/// to `local` again); with `tell_peer` it is also reported in the peer's `closed` set and
/// the peer is woken (domain destruction).
pub(crate) fn close(local: &Domain, port: u32, tell_peer: bool) -> Result<()> {
    loop {
        let peer = {
            let mut g = local.ports.lock().unwrap();
            match g.get_mut(port) {
                None | Some(PortState::Free) => return Err(PlatformError::NotFound),
                Some(p @ PortState::Unbound { .. }) => {
                    *p = PortState::Free;
                    return Ok(());
                }
                Some(PortState::Interdomain { peer, peer_port }) => (peer.clone(), *peer_port),
            }
        };
        let (peer, pp) = peer;
        let (mut gl, mut gp) = lock_pair(local, &peer);
        match gl.get(port) {
            Some(PortState::Interdomain { peer: p2, peer_port }) if p2.id == peer.id && *peer_port == pp => {}
            // Changed while unlocked: look again.
            _ => continue,
        }
        *gl.get_mut(port).expect("checked") = PortState::Free;
        let pt = match gp.as_deref_mut() {
            Some(t) => t,
            None => &mut gl,
        };
        if let Some(slot) = pt.get_mut(pp)
            && matches!(slot, PortState::Interdomain { peer, peer_port } if peer.id == local.id && *peer_port == port)
        {
            *slot = PortState::Unbound { remote: local.id };
            if tell_peer {
                peer.set_closed(pp);
            }
        }
        return Ok(());
    }
}

/// Closes every port of `d` (destruction), telling the peers.
pub(crate) fn close_all(d: &Domain) {
    let n = d.ports.lock().unwrap().ports.len() as u32;
    for p in 1..n {
        let _ = close(d, p, true);
    }
}

/// Sends a notification on `port` of `local`.
#[inline]
pub(crate) fn notify(local: &Domain, port: u32) -> Result<()> {
    let g = local.ports.lock().unwrap();
    match g.get(port) {
        None | Some(PortState::Free) => Err(PlatformError::NotFound),
        Some(PortState::Unbound { .. }) => {
            bump(&local.stats.notifies_unbound);
            Ok(())
        }
        Some(PortState::Interdomain { peer, peer_port }) => {
            bump(&local.stats.notifies);
            bump(&peer.stats.events);
            peer.set_pending(*peer_port);
            Ok(())
        }
    }
}
