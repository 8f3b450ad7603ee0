//! Xenbus states and the xenstore key names of the vbd handshake, as typed constants.
//!
//! Values in xenstore are decimal strings (`"4"`, `"1"`); [`parse_u64`] and [`parse_bool`]
//! read them strictly (a hostile peer's `"4x"` or `"99999999999999999999"` is an error, not a
//! guess).

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum XenbusState {
    /// 0.
    Unknown = 0,
    /// 1.
    Initialising = 1,
    /// 2: the backend has published its limits and waits for the frontend.
    InitWait = 2,
    /// 3: the frontend has published its rings.
    Initialised = 3,
    /// 4.
    Connected = 4,
    /// 5.
    Closing = 5,
    /// 6.
    Closed = 6,
    /// 7 (unused by blkif).
    Reconfiguring = 7,
    /// 8 (unused by blkif).
    Reconfigured = 8,
}

impl XenbusState {
    /// From the numeric value.
    pub fn from_u64(v: u64) -> Option<XenbusState> {
        use XenbusState::*;
        Some(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// Parses the xenstore value (`"4"`); a missing or malformed node reads as `None`.
    pub fn parse(s: &[u8]) -> Option<XenbusState> {
        parse_u64(s).and_then(Self::from_u64)
    }

    /// The decimal string written to xenstore.
    pub const fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }
}

/// Parses a decimal xenstore value strictly: digits only (a trailing NUL or newline is
/// tolerated, as some writers add one), no sign, no overflow.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let s = match s {
        [rest @ .., b'\0'] | [rest @ .., b'\n'] => rest,
        _ => s,
    };
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Parses a boolean feature key: `"1"` is true, `"0"` false, anything else `None`.
pub fn parse_bool(s: &[u8]) -> Option<bool> {
    match parse_u64(s)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Formats `v` in decimal into `buf`, returning the digits.
pub fn fmt_u64(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Key names (relative to the frontend's or backend's device directory).
pub mod keys {
    /// Xenbus state of the directory's owner.
    pub const STATE: &str = "state";
    /// Frontend: path of the backend directory (toolstack).
    pub const BACKEND: &str = "backend";
    /// Frontend: backend domain id (toolstack).
    pub const BACKEND_ID: &str = "backend-id";
    /// Backend: path of the frontend directory (toolstack).
    pub const FRONTEND: &str = "frontend";
    /// Backend: frontend domain id (toolstack).
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Backend: `0` asks for teardown after Closed (toolstack).
    pub const ONLINE: &str = "online";
    /// Backend: removable media (toolstack).
    pub const REMOVABLE: &str = "removable";
    /// Backend: bootable (toolstack).
    pub const BOOTABLE: &str = "bootable";
    /// Frontend: virtual device number (toolstack).
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
    /// Frontend: extended virtual device number (toolstack).
    pub const VIRTUAL_DEVICE_EXT: &str = "virtual-device-ext";
    /// Frontend: "disk", "cdrom" (toolstack).
    pub const DEVICE_TYPE: &str = "device-type";
    /// Frontend: `0` means the backend is not trusted (toolstack, XSA-403).
    pub const TRUSTED: &str = "trusted";
    /// Backend: what to serve (toolstack, private to the backend).
    pub const PARAMS: &str = "params";
    /// Backend: "r" or "w" (toolstack).
    pub const MODE: &str = "mode";
    /// Backend: "phy", "file", ... (toolstack).
    pub const TYPE: &str = "type";
    /// Backend: "MAJ:MIN" in hex (hotplug script).
    pub const PHYSICAL_DEVICE: &str = "physical-device";
    /// Backend: path of the device (hotplug script).
    pub const PHYSICAL_DEVICE_PATH: &str = "physical-device-path";
    /// Backend: "connected" once the hotplug script ran.
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
    /// Backend: `0` forbids offering discard (toolstack).
    pub const DISCARD_ENABLE: &str = "discard-enable";
    /// Backend feature: WRITE_BARRIER.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend feature: FLUSH_DISKCACHE.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend feature: DISCARD.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Backend: discard granularity in bytes.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Backend: discard alignment in bytes.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// Backend: secure discard honoured.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// Both: willingness to use persistent grants (capability, not decision).
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend: segments per indirect request; absent means no BLKIF_OP_INDIRECT.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Backend: largest ring order accepted.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Backend (deprecated scheme): largest number of ring pages.
    pub const MAX_RING_PAGES: &str = "max-ring-pages";
    /// Frontend: ring order in use, written only for more than one page.
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend (deprecated scheme): ring pages in use.
    pub const NUM_RING_PAGES: &str = "num-ring-pages";
    /// Backend: most queues accepted.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Frontend: queues in use.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// Frontend: grant ref of a single-page ring.
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: event channel port.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: `x86_32-abi`, `x86_64-abi` or `arm-abi`.
    pub const PROTOCOL: &str = "protocol";
    /// Backend: disk size in 512-byte sectors.
    pub const SECTORS: &str = "sectors";
    /// Backend: logical block size.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend: physical block size.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Backend: VDISK_* bitmap.
    pub const INFO: &str = "info";
    /// Frontend (deprecated): large sector sizes understood.
    pub const FEATURE_LARGE_SECTOR_SIZE: &str = "feature-large-sector-size";
}

/// Formats `ring-ref<i>` into `buf`.
pub fn ring_ref_key(i: u32, buf: &mut [u8; 32]) -> &str {
    prefixed_key(b"ring-ref", i, buf)
}

/// Formats `queue-<i>` into `buf`.
pub fn queue_dir(i: u32, buf: &mut [u8; 32]) -> &str {
    prefixed_key(b"queue-", i, buf)
}

fn prefixed_key<'a>(prefix: &[u8], i: u32, buf: &'a mut [u8; 32]) -> &'a str {
    let mut d = [0u8; 20];
    let digits = fmt_u64(i as u64, &mut d);
    let n = prefix.len() + digits.len();
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..n].copy_from_slice(digits);
    // Only ASCII was written.
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        assert_eq!(parse_u64(b"4"), Some(4));
        assert_eq!(parse_u64(b"4\0"), Some(4));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"4x", b"-1", b" 4", b"18446744073709551616", b"0x10"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"2"), None);
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"9"), None);
        for s in 0..=8u64 {
            let st = XenbusState::from_u64(s).unwrap();
            assert_eq!(XenbusState::parse(st.as_str().as_bytes()), Some(st));
        }
    }

    #[test]
    fn key_formatting() {
        let mut b = [0u8; 32];
        assert_eq!(ring_ref_key(15, &mut b), "ring-ref15");
        assert_eq!(queue_dir(0, &mut b), "queue-0");
        let mut d = [0u8; 20];
        assert_eq!(fmt_u64(u64::MAX, &mut d), b"18446744073709551615");
    }
}
