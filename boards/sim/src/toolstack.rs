//! Toolstack helpers (what libxl does): creating and detaching virtual block devices.

use xenblk::platform::{Result, Tx};
use xenblk::proto::grant::DomId;

use crate::hv::Hypervisor;
use crate::xenstore::{Perm, Perms, Store};

/// A virtual block device to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdSpec {
    /// Guest domain.
    pub frontend: DomId,
    /// Domain serving the disk.
    pub backend: DomId,
    /// Virtual device number (e.g. 51712 = xvda, `202 << 8`).
    pub devid: u32,
    /// `"w"` or `"r"`.
    pub mode: String,
    /// What to serve (private to the backend).
    pub params: String,
    /// Backend `dev` key (guest-visible name), e.g. `"xvda"`.
    pub dev: String,
    /// Backend `type` key: `"phy"`, `"file"`, ...
    pub kind: String,
    /// Frontend `device-type`: `"disk"`, `"cdrom"`.
    pub device_type: String,
    /// Frontend `trusted` (XSA-403: `false` means the frontend must not trust the backend).
    pub trusted: bool,
    /// Backend `discard-enable`.
    pub discard_enable: bool,
    /// Backend `removable`.
    pub removable: bool,
    /// Backend `bootable`.
    pub bootable: bool,
    /// Write `physical-device`, `physical-device-path` and `hotplug-status=connected` at
    /// once (the hotplug script already ran). With `false`, call
    /// [`Hypervisor::run_hotplug`] later.
    pub hotplug: bool,
    /// Backend `physical-device` (hex `MAJ:MIN`).
    pub physical_device: String,
    /// Backend `physical-device-path`.
    pub physical_device_path: String,
}

impl VbdSpec {
    /// A writable disk `devid` of `frontend` served by `backend`, with the libxl defaults
    /// (`type=phy`, `device-type=disk`, `trusted=1`, `discard-enable=1`, `removable=0`,
    /// `bootable=1`, hotplug done, `physical-device=fd:<n>`).
    pub fn new(frontend: DomId, backend: DomId, devid: u32) -> VbdSpec {
        VbdSpec {
            frontend,
            backend,
            devid,
            mode: "w".into(),
            params: format!("/dev/sim/vbd-{}-{devid}", frontend.0),
            dev: "xvda".into(),
            kind: "phy".into(),
            device_type: "disk".into(),
            trusted: true,
            discard_enable: true,
            removable: false,
            bootable: true,
            hotplug: true,
            physical_device: format!("fd:{:x}", frontend.0),
            physical_device_path: format!("/dev/sim/vbd-{}-{devid}", frontend.0),
        }
    }

    /// `/local/domain/<frontend>/device/vbd/<devid>`.
    pub fn frontend_path(&self) -> String {
        frontend_path(self.frontend, self.devid)
    }

    /// `/local/domain/<backend>/backend/vbd/<frontend>/<devid>`.
    pub fn backend_path(&self) -> String {
        backend_path(self.backend, self.frontend, self.devid)
    }
}

/// `/local/domain/<frontend>/device/vbd/<devid>`.
pub fn frontend_path(frontend: DomId, devid: u32) -> String {
    format!("/local/domain/{}/device/vbd/{devid}", frontend.0)
}

/// `/local/domain/<backend>/backend/vbd/<frontend>/<devid>`.
pub fn backend_path(backend: DomId, frontend: DomId, devid: u32) -> String {
    format!("/local/domain/{}/backend/vbd/{}/{devid}", backend.0, frontend.0)
}

fn b(v: bool) -> &'static [u8] {
    if v { b"1" } else { b"0" }
}

fn put(s: &mut Store, dir: &str, key: &str, v: &[u8]) -> Result<()> {
    s.write(DomId::DOM0, Tx::NONE, &format!("{dir}/{key}"), v)
}

impl Hypervisor {
    /// Attaches a vbd: creates the frontend directory (owned by the frontend, readable by the
    /// backend) and the backend directory (owned by the backend, readable by the frontend)
    /// with the keys libxl writes, both `state=1`. Done under one xenstore lock, so a watcher
    /// woken by the first write reads the complete result.
    pub fn add_vbd(&self, spec: &VbdSpec) -> Result<()> {
        let fe = spec.frontend_path();
        let be = spec.backend_path();
        let mut s = self.xs_locked();
        let s = &mut *s;
        // Backend directory.
        s.write(DomId::DOM0, Tx::NONE, &be, b"")?;
        s.set_perms(DomId::DOM0, Tx::NONE, &be, &Perms::owned_by(spec.backend).with(spec.frontend, Perm::Read))?;
        put(s, &be, "frontend", fe.as_bytes())?;
        put(s, &be, "frontend-id", spec.frontend.0.to_string().as_bytes())?;
        put(s, &be, "online", b"1")?;
        put(s, &be, "removable", b(spec.removable))?;
        put(s, &be, "bootable", b(spec.bootable))?;
        put(s, &be, "state", b"1")?;
        put(s, &be, "dev", spec.dev.as_bytes())?;
        put(s, &be, "type", spec.kind.as_bytes())?;
        put(s, &be, "mode", spec.mode.as_bytes())?;
        put(s, &be, "params", spec.params.as_bytes())?;
        put(s, &be, "discard-enable", b(spec.discard_enable))?;
        if spec.hotplug {
            put(s, &be, "physical-device", spec.physical_device.as_bytes())?;
            put(s, &be, "physical-device-path", spec.physical_device_path.as_bytes())?;
            put(s, &be, "hotplug-status", b"connected")?;
        }
        // Frontend directory.
        s.write(DomId::DOM0, Tx::NONE, &fe, b"")?;
        s.set_perms(DomId::DOM0, Tx::NONE, &fe, &Perms::owned_by(spec.frontend).with(spec.backend, Perm::Read))?;
        put(s, &fe, "backend", be.as_bytes())?;
        put(s, &fe, "backend-id", spec.backend.0.to_string().as_bytes())?;
        put(s, &fe, "state", b"1")?;
        put(s, &fe, "virtual-device", spec.devid.to_string().as_bytes())?;
        put(s, &fe, "device-type", spec.device_type.as_bytes())?;
        put(s, &fe, "trusted", b(spec.trusted))?;
        Ok(())
    }

    /// What the hotplug script writes when it has set the device up: `physical-device`,
    /// `physical-device-path` and `hotplug-status=connected`.
    pub fn run_hotplug(&self, spec: &VbdSpec) -> Result<()> {
        let be = spec.backend_path();
        let mut s = self.xs_locked();
        put(&mut s, &be, "physical-device", spec.physical_device.as_bytes())?;
        put(&mut s, &be, "physical-device-path", spec.physical_device_path.as_bytes())?;
        put(&mut s, &be, "hotplug-status", b"connected")
    }

    /// Toolstack detach: backend `online=0`, then backend `state=5` (Closing). The drivers
    /// then close; remove the directories with [`destroy_vbd`](Self::destroy_vbd).
    pub fn remove_vbd(&self, frontend: DomId, backend: DomId, devid: u32) -> Result<()> {
        let be = backend_path(backend, frontend, devid);
        let mut s = self.xs_locked();
        put(&mut s, &be, "online", b"0")?;
        put(&mut s, &be, "state", b"5")
    }

    /// Removes both directories of a vbd (the toolstack's final cleanup).
    pub fn destroy_vbd(&self, frontend: DomId, backend: DomId, devid: u32) -> Result<()> {
        let mut s = self.xs_locked();
        let r1 = s.remove(DomId::DOM0, Tx::NONE, &frontend_path(frontend, devid));
        let r2 = s.remove(DomId::DOM0, Tx::NONE, &backend_path(backend, frontend, devid));
        r1.and(r2)
    }
}
