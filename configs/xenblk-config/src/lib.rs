//! The xenblk build-time configuration language.
//!
//! A config file (`configs/*.cfg`) sets the sizes xenblk is built with:
//! guests, ring order and queues, request segments, grant pools. This crate
//! parses and validates such a file ([`load`], [`parse_str`]), reports errors
//! located as `FILE:LINE:COL: message` with the offending line and a caret
//! ([`Diagnostics`]), and turns a valid [`Config`] into Rust constants
//! ([`render_rust`]) for xenblk's `build.rs`. The `xenblk-config` binary's
//! `explain` prints a config as a table.
//!
//! The language and every key are described in `configs/REFERENCE.md`,
//! which is generated from the key table in [`keys`] ([`reference_markdown`]).

use std::fmt;
use std::io::Read;
use std::path::Path;

mod diag;
mod eval;
pub mod keys;
mod render;
mod syntax;

#[cfg(test)]
mod tests;

pub use diag::{Diagnostic, Diagnostics, Location, MAX_DIAGNOSTICS};
pub use eval::{MAX_FILE_LEN, MAX_LINE_LEN};
pub use keys::{DerivedSpec, KeySpec};
pub use render::{explain, reference_markdown, render_rust};
pub use syntax::MAX_DEPTH;

/// The ring profile a config is validated against (xenblk's `ring-linux` /
/// `ring-netbsd` features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Linux-compatible rings: multi-page, multi-queue.
    Linux,
    /// NetBSD-compatible rings: one page, one queue.
    Netbsd,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 2] = [Profile::Linux, Profile::Netbsd];

    /// `linux` or `netbsd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Linux => "linux",
            Profile::Netbsd => "netbsd",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Profile, String> {
        match s {
            "linux" => Ok(Profile::Linux),
            "netbsd" => Ok(Profile::Netbsd),
            _ => Err(format!("unknown profile `{s}` (the profiles are `linux` and `netbsd`)")),
        }
    }
}

/// A key's final value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// An integer key.
    Int(u64),
    /// A boolean key.
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Where a key's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Set on this (1-based) line of the config file.
    File {
        /// 1-based line number.
        line: usize,
    },
    /// Not set: the key's default.
    Default,
}

/// One key and its final value.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key.
    pub spec: &'static KeySpec,
    /// Its value.
    pub value: Value,
    /// Where the value came from.
    pub source: Source,
}

/// One derived name and its value.
#[derive(Debug, Clone, Copy)]
pub struct DerivedValue {
    /// The derived name.
    pub spec: &'static DerivedSpec,
    /// Its value.
    pub value: u64,
}

/// A valid configuration: every key's value (set or default), the derived
/// sizes, and where each value came from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file's name, as given.
    pub file: String,
    /// The profile it was validated against.
    pub profile: Profile,
    /// `guests`.
    pub guests: usize,
    /// `ring.order`.
    pub ring_order: u32,
    /// `ring.queues`.
    pub ring_queues: usize,
    /// `request.max_segments`.
    pub max_segments: usize,
    /// `frontend.pool_grants`.
    pub frontend_pool_grants: usize,
    /// `frontend.persistent`.
    pub frontend_persistent: bool,
    /// `backend.max_grants`.
    pub backend_max_grants: usize,
    /// `backend.total_grants`.
    pub backend_total_grants: usize,
    /// `backend.persistent`.
    pub backend_persistent: bool,
    /// `backend.grant_idle_secs`.
    pub backend_grant_idle_secs: u32,
    /// `backend.max_indirect_segments`.
    pub backend_max_indirect_segments: usize,
    /// Derived `ring.pages`.
    pub ring_pages: usize,
    /// Derived `ring.slots`.
    pub ring_slots: usize,
    /// Derived `request.indirect_pages`.
    pub indirect_pages: usize,
    /// Every key, in [`keys::KEYS`] order.
    pub settings: Vec<Setting>,
    /// Every derived name, in [`keys::DERIVED`] order.
    pub derived: Vec<DerivedValue>,
}

impl Config {
    fn from_parts(file: String, profile: Profile, settings: Vec<Setting>, derived: Vec<DerivedValue>) -> Config {
        let int = |name: &str| -> u64 {
            let v = settings
                .iter()
                .find(|s| s.spec.name == name)
                .map(|s| s.value)
                .or_else(|| derived.iter().find(|d| d.spec.name == name).map(|d| Value::Int(d.value)));
            match v {
                Some(Value::Int(n)) => n,
                other => unreachable!("`{name}` is {other:?}"),
            }
        };
        let flag = |name: &str| -> bool {
            match settings.iter().find(|s| s.spec.name == name).map(|s| s.value) {
                Some(Value::Bool(b)) => b,
                other => unreachable!("`{name}` is {other:?}"),
            }
        };
        // Every value passed its range check, so these conversions are exact.
        let us = |name: &str| usize::try_from(int(name)).expect("validated range");
        let u32_ = |name: &str| u32::try_from(int(name)).expect("validated range");
        Config {
            guests: us("guests"),
            ring_order: u32_("ring.order"),
            ring_queues: us("ring.queues"),
            max_segments: us("request.max_segments"),
            frontend_pool_grants: us("frontend.pool_grants"),
            frontend_persistent: flag("frontend.persistent"),
            backend_max_grants: us("backend.max_grants"),
            backend_total_grants: us("backend.total_grants"),
            backend_persistent: flag("backend.persistent"),
            backend_grant_idle_secs: u32_("backend.grant_idle_secs"),
            backend_max_indirect_segments: us("backend.max_indirect_segments"),
            ring_pages: us("ring.pages"),
            ring_slots: us("ring.slots"),
            indirect_pages: us("request.indirect_pages"),
            file,
            profile,
            settings,
            derived,
        }
    }

    /// A key's or derived name's value.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.settings
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| s.value)
            .or_else(|| self.derived.iter().find(|d| d.spec.name == name).map(|d| Value::Int(d.value)))
    }

    /// Where a key's value came from (`None` for unknown and derived names).
    pub fn source(&self, name: &str) -> Option<Source> {
        self.settings.iter().find(|s| s.spec.name == name).map(|s| s.source)
    }

    /// `FILE:LINE` or `default`.
    pub fn source_text(&self, source: Source) -> String {
        match source {
            Source::File { line } => format!("{}:{line}", self.file),
            Source::Default => "default".to_string(),
        }
    }

    /// Grants one maximal request uses: `request.max_segments + request.indirect_pages`.
    pub fn grants_per_request(&self) -> usize {
        self.max_segments + self.indirect_pages
    }

    /// Grants a completely full ring uses:
    /// `ring.slots * (request.max_segments + request.indirect_pages)`.
    pub fn grants_per_full_ring(&self) -> usize {
        self.ring_slots * self.grants_per_request()
    }

    /// The static memory footprint estimate, term by term
    /// ([`keys::FOOTPRINT`]): label, formula, bytes.
    pub fn footprint(&self) -> Vec<(&'static str, &'static str, u64)> {
        keys::FOOTPRINT.iter().map(|t| (t.label, t.formula, (t.bytes)(self))).collect()
    }

    /// The sum of [`Config::footprint`]: an estimate of the driver's static
    /// storage in bytes (both roles), excluding code and the guest pages a
    /// backend maps.
    pub fn static_footprint_bytes(&self) -> u64 {
        self.footprint().iter().map(|t| t.2).sum()
    }
}

/// Parses and validates `src`; `name` is the file name used in messages.
pub fn parse_str(name: &str, src: &str, profile: Profile) -> Result<Config, Diagnostics> {
    eval::evaluate(name, src, profile)
}

/// Like [`parse_str`] for raw bytes: invalid UTF-8 is a located error.
pub fn parse_bytes(name: &str, src: &[u8], profile: Profile) -> Result<Config, Diagnostics> {
    match std::str::from_utf8(src) {
        Ok(s) => parse_str(name, s, profile),
        Err(e) => {
            let good = &src[..e.valid_up_to()];
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let line_no = good.iter().filter(|b| **b == b'\n').count() + 1;
            let line_end = src[line_start..].iter().position(|b| *b == b'\n').map_or(src.len(), |p| line_start + p);
            let text = String::from_utf8_lossy(&src[line_start..line_end]);
            let text = text.strip_suffix('\r').unwrap_or(&text);
            // Column: the valid characters before the bad byte, plus one.
            let prefix = std::str::from_utf8(&src[line_start..e.valid_up_to()]).unwrap_or("");
            let mut d = Diagnostics::new(name);
            d.push(Diagnostic::at(
                line_no,
                text,
                // Lossy decoding keeps the valid prefix byte for byte.
                prefix.len(),
                "invalid UTF-8 (config files are UTF-8 text)",
            ));
            Err(d)
        }
    }
}

/// Reads and validates the file at `path`, naming it `name` in messages
/// (build.rs uses this to show the path as the user wrote it).
pub fn load_as(path: &Path, name: &str, profile: Profile) -> Result<Config, Diagnostics> {
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| {
        // Read one byte past the limit so that a too-large file is still
        // reported as such, without reading all of it.
        f.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        let mut d = Diagnostics::new(name);
        d.push(Diagnostic::file(format!("cannot read config file: {e}")));
        return Err(d);
    }
    if bytes.len() > MAX_FILE_LEN {
        // Too large, unless invalid UTF-8 comes first (a multi-byte
        // character cut by the read limit does not count).
        let (valid, cut_at_end) = match std::str::from_utf8(&bytes) {
            Ok(_) => (bytes.len(), true),
            Err(e) => (e.valid_up_to(), e.error_len().is_none()),
        };
        if cut_at_end || valid > MAX_FILE_LEN {
            let text = std::str::from_utf8(&bytes[..valid]).expect("valid prefix");
            return Err(eval::file_too_large(name, text));
        }
    }
    parse_bytes(name, &bytes, profile)
}

/// Reads and validates the file at `path` (named as displayed in messages).
pub fn load(path: &Path, profile: Profile) -> Result<Config, Diagnostics> {
    load_as(path, &path.display().to_string(), profile)
}
