//! The key table: every setting the language knows, as data.
//!
//! The parser, the validator, `explain`, the generated Rust and
//! `configs/REFERENCE.md` are all driven from [`KEYS`], [`DERIVED`] and
//! [`FOOTPRINT`], so a key is added or changed in exactly one place.

use crate::Profile;

/// The type of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer (the language evaluates in 128-bit signed arithmetic; every
    /// key is unsigned, so the final value must not be negative).
    Int,
    /// `true`/`false` (also `yes`/`no`, `on`/`off`).
    Bool,
}

impl Kind {
    /// The word used in documentation and type errors.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Int => "integer",
            Kind::Bool => "boolean",
        }
    }
}

/// An inclusive integer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Smallest allowed value.
    pub lo: i128,
    /// Largest allowed value.
    pub hi: i128,
}

impl Range {
    const fn new(lo: i128, hi: i128) -> Range {
        Range { lo, hi }
    }

    /// Whether `v` lies in the range.
    pub fn contains(&self, v: i128) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// Renders a list of ranges as `0 or 17..=4096`.
pub fn ranges_text(ranges: &[Range]) -> String {
    let parts: Vec<String> =
        ranges.iter().map(|r| if r.lo == r.hi { r.lo.to_string() } else { format!("{}..={}", r.lo, r.hi) }).collect();
    parts.join(" or ")
}

/// A tighter rule that applies under one ring profile only.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRule {
    /// The profile the rule applies to.
    pub profile: Profile,
    /// Values allowed under that profile.
    pub allowed: &'static [Range],
    /// Why (shown in the error message).
    pub reason: &'static str,
}

/// A lower bound that depends on other keys, checked after the whole file
/// has been evaluated.
#[derive(Debug, Clone, Copy)]
pub struct AtLeast {
    /// The bound, as an expression in the config language.
    pub expr: &'static str,
    /// The error message; `{}` is replaced by the bound's value.
    pub message: &'static str,
}

/// One settable key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// Dotted name, as written in a config file.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// Default value, as an expression in the config language. It may use
    /// other keys and derived names; they stand for their final values.
    pub default: &'static str,
    /// Allowed values (integers only; empty for booleans).
    pub allowed: &'static [Range],
    /// Extra explanation shown with an out-of-range error.
    pub range_note: Option<&'static str>,
    /// Profile-specific restrictions.
    pub profile_rules: &'static [ProfileRule],
    /// Lower bound depending on other keys.
    pub at_least: Option<AtLeast>,
    /// What the key means (one or two sentences, Markdown).
    pub doc: &'static str,
    /// Name of the generated Rust constant.
    pub const_name: &'static str,
    /// Type of the generated Rust constant.
    pub rust_ty: &'static str,
}

/// A read-only name computed from keys. Usable in expressions, never
/// assignable.
#[derive(Debug, Clone, Copy)]
pub struct DerivedSpec {
    /// Dotted name.
    pub name: &'static str,
    /// Keys (or derived names) it is computed from, in the order `compute`
    /// receives them.
    pub deps: &'static [&'static str],
    /// The formula, for people.
    pub formula: &'static str,
    /// The formula, for the machine. Only ever called with values that passed
    /// their own key's validation.
    pub compute: fn(&[i128]) -> i128,
    /// What it means.
    pub doc: &'static str,
    /// Name of the generated Rust constant.
    pub const_name: &'static str,
    /// Type of the generated Rust constant.
    pub rust_ty: &'static str,
}

/// Segments described by one indirect descriptor page.
pub const SEGMENTS_PER_INDIRECT_PAGE: i128 = 512;
/// Segments a request can carry without indirect descriptors.
pub const DIRECT_SEGMENTS: i128 = 11;

const fn r(lo: i128, hi: i128) -> Range {
    Range::new(lo, hi)
}

/// Every settable key, in the order `explain`, the reference and the
/// generated code list them.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "guests",
        kind: Kind::Int,
        default: "1",
        allowed: &[r(1, 1024)],
        range_note: None,
        profile_rules: &[],
        at_least: None,
        doc: "Number of guests (frontends) the backend serves.",
        const_name: "GUESTS",
        rust_ty: "usize",
    },
    KeySpec {
        name: "ring.order",
        kind: Kind::Int,
        default: "0",
        allowed: &[r(0, 4)],
        range_note: Some("log2 of the number of ring pages"),
        profile_rules: &[ProfileRule {
            profile: Profile::Netbsd,
            allowed: &[r(0, 0)],
            reason: "ring-netbsd offers a single-page ring only",
        }],
        at_least: None,
        doc: "log2 of the number of shared pages per ring (`max-ring-page-order`).",
        const_name: "RING_ORDER",
        rust_ty: "u32",
    },
    KeySpec {
        name: "ring.queues",
        kind: Kind::Int,
        default: "1",
        allowed: &[r(1, 16)],
        range_note: None,
        profile_rules: &[ProfileRule {
            profile: Profile::Netbsd,
            allowed: &[r(1, 1)],
            reason: "ring-netbsd offers a single queue only",
        }],
        at_least: None,
        doc: "Number of rings (queues) per device (`multi-queue-max-queues`).",
        const_name: "RING_QUEUES",
        rust_ty: "usize",
    },
    KeySpec {
        name: "request.max_segments",
        kind: Kind::Int,
        default: "11",
        allowed: &[r(11, 4096)],
        range_note: Some(
            "11 = no indirect descriptors; more uses indirect descriptors, \
             512 segments per indirect page, at most 8 pages",
        ),
        profile_rules: &[],
        at_least: None,
        doc: "Largest number of data segments (pages) in one request. 11 needs no \
              indirect descriptors; more uses indirect descriptor pages \
              (512 segments each, at most 8).",
        const_name: "MAX_SEGMENTS",
        rust_ty: "usize",
    },
    KeySpec {
        name: "frontend.pool_grants",
        kind: Kind::Int,
        default: "ring.slots * (request.max_segments + request.indirect_pages)",
        allowed: &[r(0, 65536)],
        range_note: None,
        profile_rules: &[],
        at_least: Some(AtLeast {
            expr: "request.max_segments + request.indirect_pages",
            message: "pool smaller than one full request (needs at least {} grants)",
        }),
        doc: "Pages in the frontend's persistent-grant pool: data pages plus \
              indirect descriptor pages. Must hold at least one full request \
              (`request.max_segments + request.indirect_pages`); the default \
              holds a full ring.",
        const_name: "FRONTEND_POOL_GRANTS",
        rust_ty: "usize",
    },
    KeySpec {
        name: "frontend.persistent",
        kind: Kind::Bool,
        default: "true",
        allowed: &[],
        range_note: None,
        profile_rules: &[],
        at_least: None,
        doc: "Whether the frontend offers `feature-persistent`.",
        const_name: "FRONTEND_PERSISTENT",
        rust_ty: "bool",
    },
    KeySpec {
        name: "backend.max_grants",
        kind: Kind::Int,
        default: "1056",
        allowed: &[r(0, 65536)],
        range_note: None,
        profile_rules: &[],
        at_least: None,
        doc: "Most persistent grants the backend keeps mapped per ring \
              (Linux blkback's default is 1056).",
        const_name: "BACKEND_MAX_GRANTS",
        rust_ty: "usize",
    },
    KeySpec {
        name: "backend.total_grants",
        kind: Kind::Int,
        default: "guests * ring.queues * backend.max_grants",
        allowed: &[r(0, 16_777_216)],
        range_note: None,
        profile_rules: &[],
        at_least: None,
        doc: "Budget of persistent grants over all guests. It may be smaller than \
              `guests * ring.queues * backend.max_grants`; guests then get fewer.",
        const_name: "BACKEND_TOTAL_GRANTS",
        rust_ty: "usize",
    },
    KeySpec {
        name: "backend.persistent",
        kind: Kind::Bool,
        default: "true",
        allowed: &[],
        range_note: None,
        profile_rules: &[],
        at_least: None,
        doc: "Whether the backend offers `feature-persistent`.",
        const_name: "BACKEND_PERSISTENT",
        rust_ty: "bool",
    },
    KeySpec {
        name: "backend.grant_idle_secs",
        kind: Kind::Int,
        default: "60",
        allowed: &[r(0, 86400)],
        range_note: Some("0 = never expire"),
        profile_rules: &[],
        at_least: None,
        doc: "Seconds a cached persistent grant may stay unused before the backend \
              unmaps it; 0 = never expire.",
        const_name: "BACKEND_GRANT_IDLE_SECS",
        rust_ty: "u32",
    },
    KeySpec {
        name: "backend.max_indirect_segments",
        kind: Kind::Int,
        default: "256",
        allowed: &[r(0, 0), r(17, 4096)],
        range_note: Some(
            "0 = do not offer indirect descriptors; NetBSD frontends use them \
             only when offered at least 17",
        ),
        profile_rules: &[],
        at_least: None,
        doc: "Segments per request the backend offers with indirect descriptors \
              (`feature-max-indirect-segments`); 0 = do not offer indirect. \
              NetBSD frontends use indirect only when offered at least 17.",
        const_name: "BACKEND_MAX_INDIRECT_SEGMENTS",
        rust_ty: "usize",
    },
];

fn pages(d: &[i128]) -> i128 {
    1i128 << d[0]
}

fn slots(d: &[i128]) -> i128 {
    32i128 << d[0]
}

fn indirect_pages(d: &[i128]) -> i128 {
    let n = d[0];
    if n <= DIRECT_SEGMENTS { 0 } else { (n + SEGMENTS_PER_INDIRECT_PAGE - 1) / SEGMENTS_PER_INDIRECT_PAGE }
}

/// Read-only names computed from keys.
pub const DERIVED: &[DerivedSpec] = &[
    DerivedSpec {
        name: "ring.pages",
        deps: &["ring.order"],
        formula: "1 << ring.order",
        compute: pages,
        doc: "Shared pages per ring.",
        const_name: "RING_PAGES",
        rust_ty: "usize",
    },
    DerivedSpec {
        name: "ring.slots",
        deps: &["ring.order"],
        formula: "32 << ring.order",
        compute: slots,
        doc: "Request slots per ring (32 per 4 KiB page).",
        const_name: "RING_SLOTS",
        rust_ty: "usize",
    },
    DerivedSpec {
        name: "request.indirect_pages",
        deps: &["request.max_segments"],
        formula: "0 if request.max_segments = 11, else ceil(request.max_segments / 512)",
        compute: indirect_pages,
        doc: "Indirect descriptor pages one maximal request needs.",
        const_name: "INDIRECT_PAGES",
        rust_ty: "usize",
    },
];

/// Size of one page (and one grant) in bytes.
pub const PAGE_SIZE: u64 = 4096;
/// Estimated bytes of bookkeeping per frontend pool grant.
pub const POOL_GRANT_META_BYTES: u64 = 16;
/// Estimated bytes of the frontend's shadow copy of one in-flight request.
pub const SHADOW_BYTES: u64 = 128;
/// Estimated bytes of the backend's record of one cached persistent grant.
pub const BACKEND_GRANT_META_BYTES: u64 = 32;

/// One term of the static memory footprint estimate.
#[derive(Debug, Clone, Copy)]
pub struct FootprintTerm {
    /// Short label.
    pub label: &'static str,
    /// The formula, for people.
    pub formula: &'static str,
    /// The formula, for the machine.
    pub bytes: fn(&crate::Config) -> u64,
}

fn fp_ring(c: &crate::Config) -> u64 {
    c.ring_queues as u64 * c.ring_pages as u64 * PAGE_SIZE
}

fn fp_pool(c: &crate::Config) -> u64 {
    c.frontend_pool_grants as u64 * PAGE_SIZE
}

fn fp_pool_meta(c: &crate::Config) -> u64 {
    c.frontend_pool_grants as u64 * POOL_GRANT_META_BYTES
}

fn fp_shadow(c: &crate::Config) -> u64 {
    c.ring_queues as u64 * c.ring_slots as u64 * SHADOW_BYTES
}

fn fp_backend(c: &crate::Config) -> u64 {
    let per_guest = c.ring_queues as u64 * c.backend_max_grants as u64;
    let live = (c.guests as u64 * per_guest).min(c.backend_total_grants as u64);
    live * BACKEND_GRANT_META_BYTES
}

/// The static memory footprint estimate, term by term. It estimates the
/// driver's static storage (both roles) excluding code, and excluding the
/// guests' own pages that a backend maps.
pub const FOOTPRINT: &[FootprintTerm] = &[
    FootprintTerm { label: "frontend rings", formula: "ring.queues * ring.pages * 4096", bytes: fp_ring },
    FootprintTerm { label: "frontend pool data", formula: "frontend.pool_grants * 4096", bytes: fp_pool },
    FootprintTerm { label: "frontend pool metadata", formula: "frontend.pool_grants * 16", bytes: fp_pool_meta },
    FootprintTerm { label: "frontend request shadows", formula: "ring.queues * ring.slots * 128", bytes: fp_shadow },
    FootprintTerm {
        label: "backend grant cache",
        formula: "min(backend.total_grants, guests * ring.queues * backend.max_grants) * 32",
        bytes: fp_backend,
    },
];

/// Bool literal words and their values.
pub const BOOL_WORDS: &[(&str, bool)] =
    &[("true", true), ("false", false), ("yes", true), ("no", false), ("on", true), ("off", false)];

/// Size suffixes and their multipliers.
pub const SUFFIXES: &[(&str, i128)] = &[("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)];

/// Index of a settable key by exact name.
pub fn key_index(name: &str) -> Option<usize> {
    KEYS.iter().position(|k| k.name == name)
}

/// Index of a derived name by exact name.
pub fn derived_index(name: &str) -> Option<usize> {
    DERIVED.iter().position(|d| d.name == name)
}

/// Whether `name` is a section (the part before the last `.` of some key).
pub fn is_section(name: &str) -> bool {
    sections().contains(&name)
}

/// All section names, in table order, without repeats.
pub fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        if let Some((sec, _)) = k.name.rsplit_once('.')
            && !out.contains(&sec)
        {
            out.push(sec);
        }
    }
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A "did you mean ...?" for an unknown name. `written` is the name as it
/// appears in the file, `full` the name after applying the current section
/// (equal to `written` outside sections); `candidates` are the names that
/// would have been accepted.
pub fn suggest(written: &str, full: &str, candidates: &[&'static str]) -> Option<String> {
    // An exact hit on the name as written means a section got in the way.
    if written != full && candidates.contains(&written) {
        return Some(format!("did you mean the top-level `{written}`?"));
    }
    let last = written.rsplit('.').next().unwrap_or(written);
    let by_last: Vec<&str> = candidates.iter().copied().filter(|c| c.rsplit('.').next() == Some(last)).collect();
    if !by_last.is_empty() && by_last.len() <= 3 {
        return Some(did_you_mean(&by_last));
    }
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(full, c)
            .min(edit_distance(written, c))
            .min(edit_distance(last, c.rsplit('.').next().unwrap_or(c)) + 1);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (written.chars().count() / 3).clamp(1, 3);
    (d <= limit).then(|| did_you_mean(&[c]))
}

fn did_you_mean(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        1 => format!("did you mean {}?", quoted[0]),
        _ => {
            let (last, rest) = quoted.split_last().expect("non-empty");
            format!("did you mean {} or {last}?", rest.join(", "))
        }
    }
}

/// Names that can be assigned.
pub fn settable_names() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.name).collect()
}

/// Names that can be read in expressions.
pub fn readable_names() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.name).chain(DERIVED.iter().map(|d| d.name)).collect()
}
