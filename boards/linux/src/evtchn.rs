//! Event channels over `/dev/xen/evtchn`.
//!
//! Binding returns a local port. A notification for a bound port makes the fd readable;
//! `read(2)` returns the pending ports as u32s, and each port stays masked until it is
//! written back (`write(2)` of the u32s), which unmasks it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use xenblk::platform::{PlatformError, Port, Result};
use xenblk::proto::grant::DomId;

use crate::sys;

/// Device path.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// `errno` of the last failed call, as a platform error.
pub(crate) fn last_err() -> PlatformError {
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) => PlatformError::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) => PlatformError::Denied,
        Some(libc::EAGAIN) => PlatformError::Again,
        Some(libc::ENOMEM) | Some(libc::ENOSPC) => PlatformError::NoSpace,
        Some(libc::EINVAL) => PlatformError::Invalid,
        Some(n) => PlatformError::Errno(n),
        None => PlatformError::Errno(libc::EIO),
    }
}

/// An open `/dev/xen/evtchn` (non-blocking).
#[derive(Debug)]
pub struct Evtchn {
    f: File,
}

impl Evtchn {
    /// Opens the device.
    pub fn open() -> Result<Evtchn> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(EVTCHN_PATH)
            .map_err(|_| last_err())?;
        Ok(Evtchn { f })
    }

    /// The fd to `poll(2)`.
    pub fn fd(&self) -> RawFd {
        self.f.as_raw_fd()
    }

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T) -> Result<u32> {
        // SAFETY: `req` is one of the evtchn ioctls whose argument is exactly `T` (the
        // numbers encode `size_of::<T>()`, checked against the UAPI header by the tests);
        // `arg` is a valid, exclusively borrowed `T` for the duration of the call.
        let r = unsafe { libc::ioctl(self.fd(), req, arg as *mut T) };
        if r < 0 { Err(last_err()) } else { Ok(r as u32) }
    }

    /// Allocates a port that `remote` may bind (`IOCTL_EVTCHN_BIND_UNBOUND_PORT`).
    pub fn bind_unbound(&self, remote: DomId) -> Result<Port> {
        let mut a = sys::EvtchnBindUnboundPort { remote_domain: remote.0.into() };
        self.ioctl(sys::IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut a).map(Port)
    }

    /// Binds to `remote`'s `port` (`IOCTL_EVTCHN_BIND_INTERDOMAIN`).
    pub fn bind_interdomain(&self, remote: DomId, port: Port) -> Result<Port> {
        let mut a = sys::EvtchnBindInterdomain { remote_domain: remote.0.into(), remote_port: port.0 };
        self.ioctl(sys::IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut a).map(Port)
    }

    /// Signals the peer of a local port.
    pub fn notify(&self, port: Port) -> Result<()> {
        let mut a = sys::EvtchnPort { port: port.0 };
        self.ioctl(sys::IOCTL_EVTCHN_NOTIFY, &mut a).map(|_| ())
    }

    /// Closes a local port.
    pub fn unbind(&self, port: Port) -> Result<()> {
        let mut a = sys::EvtchnPort { port: port.0 };
        self.ioctl(sys::IOCTL_EVTCHN_UNBIND, &mut a).map(|_| ())
    }

    /// Reads the pending ports (without blocking) into `out`; returns how many.
    pub fn pending(&mut self, out: &mut [Port]) -> Result<usize> {
        let mut raw = [0u8; 4 * 64];
        let want = (out.len().min(64)) * 4;
        match self.f.read(&mut raw[..want]) {
            Ok(n) => {
                let k = n / 4;
                for (i, p) in out.iter_mut().take(k).enumerate() {
                    *p = Port(u32::from_ne_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]));
                }
                Ok(k)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e.raw_os_error().map_or(PlatformError::Errno(libc::EIO), PlatformError::Errno)),
        }
    }

    /// Unmasks ports returned by [`pending`](Self::pending).
    pub fn unmask(&mut self, ports: &[Port]) -> Result<()> {
        let mut raw = Vec::with_capacity(ports.len() * 4);
        for p in ports {
            raw.extend_from_slice(&p.0.to_ne_bytes());
        }
        self.f
            .write_all(&raw)
            .map_err(|e| e.raw_os_error().map_or(PlatformError::Errno(libc::EIO), PlatformError::Errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fails_cleanly_without_xen() {
        if std::path::Path::new(EVTCHN_PATH).exists() {
            return; // in a real domain: covered by the rig
        }
        assert!(matches!(Evtchn::open(), Err(PlatformError::NotFound)));
    }
}
