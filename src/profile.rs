//! The ring profile chosen by cargo feature: `ring-linux` or `ring-netbsd`.
//!
//! A profile does not change the on-wire layouts (both ABIs are always compiled and picked at
//! runtime from the `protocol` key). It picks the geometry and dialect a build offers and
//! tolerates, following what the real Linux and NetBSD drivers do:
//!
//! | | `ring-linux` | `ring-netbsd` |
//! |---|---|---|
//! | ring pages offered/used | up to 16 (`max-ring-page-order` 4) | 1 (no order key) |
//! | queues | up to 16 | 1 |
//! | ABI when `protocol` is missing | x86_32 (Linux blkback on x86) | native |
//! | backend goes Connected | after mapping the frontend's ring | as soon as the disk is open |
//! | frontend reads backend features | when the backend is Connected | same (NetBSD xbd's attach-time read is not copied; the netbsd backend publishes them before its early Connected) |
//! | write grants from the frontend | read-write (persistence possible) | read-only when not persistent |
//! | `physical-device` | hex `MAJ:MIN` | decimal accepted too |
//! | frontend uses indirect descriptors when offered | more than 11 segments | at least 17 |

use crate::proto::blkif::Protocol;

/// Name of the active profile.
pub const NAME: &str = if cfg!(feature = "ring-netbsd") { "netbsd" } else { "linux" };

/// Largest ring order this build offers as a backend or uses as a frontend.
pub const MAX_RING_ORDER: u32 = if cfg!(feature = "ring-netbsd") { 0 } else { 4 };

/// Largest number of queues.
pub const MAX_QUEUES: u32 = if cfg!(feature = "ring-netbsd") { 1 } else { 16 };

/// The ABI a backend assumes when the frontend wrote no `protocol` key.
pub const DEFAULT_PROTOCOL: Protocol =
    if cfg!(feature = "ring-netbsd") { Protocol::native() } else { Protocol::X86_32 };

/// Whether the backend announces Connected before the frontend published its ring
/// (NetBSD xbdback) rather than after mapping it (Linux blkback).
pub const BACKEND_CONNECTS_EARLY: bool = cfg!(feature = "ring-netbsd");

/// Fewest indirect segments a backend must offer before the frontend uses indirect
/// descriptors: NetBSD xbd needs MAXPHYS/PAGE_SIZE + 1 = 17; Linux blkfront uses any offer
/// above the 11 direct segments.
pub const FRONTEND_MIN_INDIRECT_SEGMENTS: u32 = if cfg!(feature = "ring-netbsd") { 17 } else { 12 };

/// Whether the frontend grants pages of write requests read-only when persistence is off
/// (NetBSD xbd); Linux always grants read-write.
pub const FRONTEND_READONLY_WRITE_GRANTS: bool = cfg!(feature = "ring-netbsd");

// The build config was validated against this profile by build.rs; check it again here.
#[allow(clippy::absurd_extreme_comparisons)]
const _: () = assert!(MAX_RING_ORDER <= crate::proto::ring::MAX_RING_ORDER);
#[allow(clippy::absurd_extreme_comparisons)]
const _: () = assert!(crate::config::RING_ORDER <= MAX_RING_ORDER, "config ring.order exceeds the profile");
const _: () = assert!(crate::config::RING_QUEUES as u32 <= MAX_QUEUES, "config ring.queues exceeds the profile");

#[cfg(test)]
mod tests {
    #[test]
    fn config_was_generated_for_this_profile() {
        assert_eq!(super::NAME, crate::config::PROFILE);
    }
}
