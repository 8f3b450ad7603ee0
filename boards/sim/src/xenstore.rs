//! Xenstore: a tree of nodes with values, per-node permissions, transactions, watches and
//! quotas, with the semantics of xenstored where the driver can observe them.
//!
//! * Paths are absolute (`/local/domain/5/device/...`) or relative to the caller's home
//!   `/local/domain/<id>`. Names use `[A-Za-z0-9_@-]`; at most 3072 bytes.
//! * Permissions: the owner and dom0 have full access; other domains get their ACL entry's
//!   permission, else the node's default. New nodes inherit the parent's permissions, and a
//!   node created by an unprivileged domain is owned by it. Writing a missing node needs
//!   write permission on its nearest existing ancestor (missing parents are created empty).
//! * Transactions see a snapshot taken at start plus their own changes; at commit the
//!   transaction fails with `Again` if any node it read or wrote (a directory counts as its
//!   parent: adding or removing a child changes the parent) was changed since it started.
//! * A watch fires once when registered and then for every change at or below its path; a
//!   removal also fires watches set below the removed node. Events are delivered only to
//!   domains that may read the node, and coalesce: at most one pending event per
//!   (watch, token) (XSA-349). `@introduceDomain` / `@releaseDomain` fire on domain creation
//!   and destruction.
//! * Quotas: nodes owned per unprivileged domain, value size, watches and open transactions
//!   per domain; exceeding one is `NoSpace`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use xenblk::platform::{PlatformError, Result, Tx};
use xenblk::proto::grant::DomId;

use crate::domain::Domain;
use crate::stats::bump;

/// Access a domain has to a node (xenstored's `n`, `r`, `w`, `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Perm {
    /// No access.
    None,
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    Both,
}

impl Perm {
    /// May read.
    pub fn can_read(self) -> bool {
        matches!(self, Perm::Read | Perm::Both)
    }
    /// May write.
    pub fn can_write(self) -> bool {
        matches!(self, Perm::Write | Perm::Both)
    }
    /// xenstored's letter.
    pub fn letter(self) -> char {
        match self {
            Perm::None => 'n',
            Perm::Read => 'r',
            Perm::Write => 'w',
            Perm::Both => 'b',
        }
    }
}

/// A node's permissions: the owner (full access), the default for every other domain, and
/// per-domain entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Owner: full access. Dom0 always has full access too.
    pub owner: DomId,
    /// Access of domains not listed in `acl`.
    pub others: Perm,
    /// Per-domain access.
    pub acl: Vec<(DomId, Perm)>,
}

impl Perms {
    /// Owned by `owner`, no access for anyone else.
    pub fn owned_by(owner: DomId) -> Perms {
        Perms { owner, others: Perm::None, acl: Vec::new() }
    }

    /// Adds (or replaces) the entry for `dom`.
    pub fn with(mut self, dom: DomId, perm: Perm) -> Perms {
        self.acl.retain(|(d, _)| *d != dom);
        self.acl.push((dom, perm));
        self
    }

    /// Sets the default access for unlisted domains.
    pub fn others(mut self, perm: Perm) -> Perms {
        self.others = perm;
        self
    }

    /// The access `dom` has.
    pub fn access(&self, dom: DomId) -> Perm {
        if dom == DomId::DOM0 || dom == self.owner {
            return Perm::Both;
        }
        self.acl.iter().find(|(d, _)| *d == dom).map_or(self.others, |(_, p)| *p)
    }
}

/// Xenstore quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsLimits {
    /// Nodes an unprivileged domain may own.
    pub nodes_per_domain: usize,
    /// Largest value in bytes.
    pub max_value: usize,
    /// Watches per domain.
    pub watches_per_domain: usize,
    /// Open transactions per domain.
    pub transactions_per_domain: usize,
}

impl Default for XsLimits {
    fn default() -> Self {
        XsLimits { nodes_per_domain: 1000, max_value: 4096, watches_per_domain: 128, transactions_per_domain: 10 }
    }
}

/// Longest absolute path.
pub const MAX_PATH: usize = 3072;

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    perms: Perms,
    children: BTreeSet<String>,
    seq: u64,
}

#[derive(Clone, Debug, Default)]
struct Tree {
    nodes: HashMap<String, Node>,
    /// Nodes owned per domain.
    owned: HashMap<u16, usize>,
}

/// A change, for firing watches.
#[derive(Clone, Debug)]
struct Event {
    path: String,
    perms: Perms,
    /// A removal: watches set below `path` fire too.
    removed: bool,
}

/// What a transaction has looked at and changed.
#[derive(Debug, Default)]
struct Tracker {
    /// Generation of every node touched, as it was at the start (None: absent).
    accessed: HashMap<String, Option<u64>>,
    /// Nodes changed (created, written, removed, children changed).
    modified: BTreeSet<String>,
    events: Vec<Event>,
}

#[derive(Debug)]
struct Txn {
    dom: DomId,
    tree: Tree,
    track: Tracker,
}

#[derive(Debug)]
struct Watch {
    dom: Arc<Domain>,
    domid: DomId,
    /// Absolute path or `@special`.
    path: String,
    token: u32,
    /// Registered relative to the domain's home: events are reported relative too.
    relative: bool,
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") }
}

/// Whether `path` is `base` or lies below it.
fn at_or_below(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len() && path.starts_with(base) && path.as_bytes()[base.len()] == b'/')
}

/// The home directory of a domain.
pub fn home(dom: DomId) -> String {
    format!("/local/domain/{}", dom.0)
}

/// Canonicalises `path` for `dom`: returns the absolute path and whether it was relative.
fn canon(dom: DomId, path: &str) -> Result<(String, bool)> {
    if path.is_empty() {
        return Err(PlatformError::Invalid);
    }
    let (abs, rel) =
        if path.starts_with('/') { (path.to_owned(), false) } else { (format!("{}/{path}", home(dom)), true) };
    let ok_chars = abs.bytes().all(|c| c.is_ascii_alphanumeric() || b"-/_@".contains(&c));
    if !ok_chars || abs.len() > MAX_PATH || (abs != "/" && abs.ends_with('/')) || abs.contains("//") {
        return Err(PlatformError::Invalid);
    }
    Ok((abs, rel))
}

fn touch(tree: &Tree, track: &mut Option<&mut Tracker>, path: &str) {
    if let Some(t) = track {
        t.accessed.entry(path.to_owned()).or_insert_with(|| tree.nodes.get(path).map(|n| n.seq));
    }
}

fn modified(track: &mut Option<&mut Tracker>, path: &str) {
    if let Some(t) = track {
        t.modified.insert(path.to_owned());
    }
}

impl Tree {
    fn new_root() -> Tree {
        let mut t = Tree::default();
        t.nodes.insert(
            "/".to_owned(),
            Node { value: Vec::new(), perms: Perms::owned_by(DomId::DOM0), children: BTreeSet::new(), seq: 0 },
        );
        t
    }

    fn owned_inc(&mut self, d: DomId, n: usize) {
        *self.owned.entry(d.0).or_default() += n;
    }

    fn owned_dec(&mut self, d: DomId) {
        if let Some(c) = self.owned.get_mut(&d.0) {
            *c = c.saturating_sub(1);
        }
    }

    fn readable(&self, track: &mut Option<&mut Tracker>, dom: DomId, path: &str) -> Result<&Node> {
        touch(self, track, path);
        let n = self.nodes.get(path).ok_or(PlatformError::NotFound)?;
        if !n.perms.access(dom).can_read() {
            return Err(PlatformError::Denied);
        }
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        track: &mut Option<&mut Tracker>,
        seq: &mut u64,
        lim: &XsLimits,
        dom: DomId,
        path: &str,
        value: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<()> {
        if value.len() > lim.max_value {
            return Err(PlatformError::NoSpace);
        }
        touch(self, track, path);
        if let Some(n) = self.nodes.get_mut(path) {
            if !n.perms.access(dom).can_write() {
                return Err(PlatformError::Denied);
            }
            *seq += 1;
            n.value = value.to_vec();
            n.seq = *seq;
            events.push(Event { path: path.to_owned(), perms: n.perms.clone(), removed: false });
            modified(track, path);
            return Ok(());
        }
        // Find the nearest existing ancestor; everything below it is created.
        let mut missing = vec![path];
        let mut anc = parent(path);
        loop {
            touch(self, track, anc);
            if self.nodes.contains_key(anc) {
                break;
            }
            missing.push(anc);
            anc = parent(anc);
        }
        let anc_perms = self.nodes[anc].perms.clone();
        if !anc_perms.access(dom).can_write() {
            return Err(PlatformError::Denied);
        }
        if dom != DomId::DOM0 && self.owned.get(&dom.0).copied().unwrap_or(0) + missing.len() > lim.nodes_per_domain {
            return Err(PlatformError::NoSpace);
        }
        let mut perms = anc_perms;
        if dom != DomId::DOM0 {
            perms.owner = dom;
        }
        let mut dir = anc.to_owned();
        for p in missing.iter().rev() {
            *seq += 1;
            let pn = self.nodes.get_mut(&dir).expect("parent exists");
            pn.children.insert(basename(p).to_owned());
            pn.seq = *seq;
            modified(track, &dir);
            let v = if *p == path { value.to_vec() } else { Vec::new() };
            self.nodes
                .insert((*p).to_owned(), Node { value: v, perms: perms.clone(), children: BTreeSet::new(), seq: *seq });
            self.owned_inc(perms.owner, 1);
            modified(track, p);
            dir = (*p).to_owned();
        }
        events.push(Event { path: path.to_owned(), perms, removed: false });
        Ok(())
    }

    fn remove(
        &mut self,
        track: &mut Option<&mut Tracker>,
        seq: &mut u64,
        dom: DomId,
        path: &str,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        if path == "/" {
            return Err(PlatformError::Invalid);
        }
        touch(self, track, path);
        let Some(n) = self.nodes.get(path) else {
            // xenstored: removing a missing node whose parent exists succeeds.
            let par = parent(path);
            touch(self, track, par);
            return if self.nodes.contains_key(par) { Ok(()) } else { Err(PlatformError::NotFound) };
        };
        if !n.perms.access(dom).can_write() {
            return Err(PlatformError::Denied);
        }
        let perms = n.perms.clone();
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            touch(self, track, &p);
            if let Some(n) = self.nodes.remove(&p) {
                self.owned_dec(n.perms.owner);
                modified(track, &p);
                stack.extend(n.children.iter().map(|c| join(&p, c)));
            }
        }
        let par = parent(path);
        touch(self, track, par);
        if let Some(pn) = self.nodes.get_mut(par) {
            *seq += 1;
            pn.children.remove(basename(path));
            pn.seq = *seq;
            modified(track, par);
        }
        events.push(Event { path: path.to_owned(), perms, removed: true });
        Ok(())
    }

    fn set_perms(
        &mut self,
        track: &mut Option<&mut Tracker>,
        seq: &mut u64,
        dom: DomId,
        path: &str,
        perms: &Perms,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        touch(self, track, path);
        let n = self.nodes.get_mut(path).ok_or(PlatformError::NotFound)?;
        if dom != DomId::DOM0 && dom != n.perms.owner {
            return Err(PlatformError::Denied);
        }
        let old = n.perms.owner;
        *seq += 1;
        n.perms = perms.clone();
        n.seq = *seq;
        modified(track, path);
        self.owned_dec(old);
        self.owned_inc(perms.owner, 1);
        events.push(Event { path: path.to_owned(), perms: perms.clone(), removed: false });
        Ok(())
    }
}

/// The store.
#[derive(Debug)]
pub(crate) struct Store {
    tree: Tree,
    seq: u64,
    txs: HashMap<u32, Txn>,
    next_tx: u32,
    watches: Vec<Watch>,
    pub(crate) limits: XsLimits,
}

impl Store {
    pub(crate) fn new(limits: XsLimits) -> Store {
        Store { tree: Tree::new_root(), seq: 0, txs: HashMap::new(), next_tx: 1, watches: Vec::new(), limits }
    }

    /// Runs `f` on the tree `tx` names (the live tree or a transaction's snapshot). Events go
    /// to the watches at once (live) or at commit (transaction).
    fn with_tree<R>(
        &mut self,
        dom: DomId,
        tx: Tx,
        f: impl FnOnce(&mut Tree, &mut Option<&mut Tracker>, &mut u64, &XsLimits, &mut Vec<Event>) -> Result<R>,
    ) -> Result<R> {
        let mut events = Vec::new();
        let lim = self.limits;
        if tx == Tx::NONE {
            let r = f(&mut self.tree, &mut None, &mut self.seq, &lim, &mut events);
            self.fire(&events);
            r
        } else {
            let t = self.txs.get_mut(&tx.0).filter(|t| t.dom == dom).ok_or(PlatformError::NotFound)?;
            // Generations inside a snapshot are irrelevant (commit assigns fresh ones).
            let mut g = 0;
            let r = f(&mut t.tree, &mut Some(&mut t.track), &mut g, &lim, &mut events);
            t.track.events.extend(events);
            r
        }
    }

    pub(crate) fn read(&mut self, dom: DomId, tx: Tx, path: &str) -> Result<Vec<u8>> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, _, _, _| Ok(t.readable(tr, dom, &abs)?.value.clone()))
    }

    /// Reads into `buf` without allocating the value.
    pub(crate) fn read_into(&mut self, dom: DomId, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, _, _, _| {
            let v = &t.readable(tr, dom, &abs)?.value;
            let dst = buf.get_mut(..v.len()).ok_or(PlatformError::Invalid)?;
            dst.copy_from_slice(v);
            Ok(v.len())
        })
    }

    pub(crate) fn directory(&mut self, dom: DomId, tx: Tx, path: &str) -> Result<Vec<String>> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, _, _, _| Ok(t.readable(tr, dom, &abs)?.children.iter().cloned().collect()))
    }

    pub(crate) fn get_perms(&mut self, dom: DomId, tx: Tx, path: &str) -> Result<Perms> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, _, _, _| Ok(t.readable(tr, dom, &abs)?.perms.clone()))
    }

    pub(crate) fn write(&mut self, dom: DomId, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, g, lim, ev| t.write(tr, g, lim, dom, &abs, value, ev))
    }

    pub(crate) fn remove(&mut self, dom: DomId, tx: Tx, path: &str) -> Result<()> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, g, _, ev| t.remove(tr, g, dom, &abs, ev))
    }

    pub(crate) fn set_perms(&mut self, dom: DomId, tx: Tx, path: &str, perms: &Perms) -> Result<()> {
        let (abs, _) = canon(dom, path)?;
        self.with_tree(dom, tx, |t, tr, g, _, ev| t.set_perms(tr, g, dom, &abs, perms, ev))
    }

    pub(crate) fn transaction_start(&mut self, dom: DomId) -> Result<Tx> {
        let open = self.txs.values().filter(|t| t.dom == dom).count();
        if dom != DomId::DOM0 && open >= self.limits.transactions_per_domain {
            return Err(PlatformError::NoSpace);
        }
        let mut id = self.next_tx;
        while id == 0 || self.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        self.txs.insert(id, Txn { dom, tree: self.tree.clone(), track: Tracker::default() });
        Ok(Tx(id))
    }

    pub(crate) fn transaction_end(&mut self, dom: DomId, tx: Tx, commit: bool) -> Result<()> {
        match self.txs.get(&tx.0) {
            Some(t) if t.dom == dom => {}
            _ => return Err(PlatformError::NotFound),
        }
        let t = self.txs.remove(&tx.0).expect("checked");
        if !commit {
            return Ok(());
        }
        // Conflict: anything this transaction touched changed since it started.
        for (p, g0) in &t.track.accessed {
            if self.tree.nodes.get(p).map(|n| n.seq) != *g0 {
                return Err(PlatformError::Again);
            }
        }
        // Quota of the committing domain against the live counts.
        if dom != DomId::DOM0 {
            let mut delta: isize = 0;
            for p in &t.track.modified {
                if self.tree.nodes.get(p).is_some_and(|n| n.perms.owner == dom) {
                    delta -= 1;
                }
                if t.tree.nodes.get(p).is_some_and(|n| n.perms.owner == dom) {
                    delta += 1;
                }
            }
            let now = self.tree.owned.get(&dom.0).copied().unwrap_or(0) as isize;
            if delta > 0 && now + delta > self.limits.nodes_per_domain as isize {
                return Err(PlatformError::NoSpace);
            }
        }
        for p in &t.track.modified {
            if let Some(old) = self.tree.nodes.remove(p) {
                self.tree.owned_dec(old.perms.owner);
            }
            if let Some(n) = t.tree.nodes.get(p) {
                self.seq += 1;
                let mut n = n.clone();
                n.seq = self.seq;
                self.tree.owned_inc(n.perms.owner, 1);
                self.tree.nodes.insert(p.clone(), n);
            }
        }
        self.fire(&t.track.events);
        Ok(())
    }

    pub(crate) fn watch(&mut self, d: &Arc<Domain>, path: &str, token: u32) -> Result<()> {
        let dom = d.id;
        let (abs, relative) = if path.starts_with('@') {
            if path != "@introduceDomain" && path != "@releaseDomain" {
                return Err(PlatformError::Invalid);
            }
            (path.to_owned(), false)
        } else {
            canon(dom, path)?
        };
        if self.watches.iter().any(|w| w.domid == dom && w.token == token && w.path == abs) {
            return Err(PlatformError::Invalid);
        }
        let mine = self.watches.iter().filter(|w| w.domid == dom).count();
        if dom != DomId::DOM0 && mine >= self.limits.watches_per_domain {
            return Err(PlatformError::NoSpace);
        }
        // Fires once at registration, with the watch's own path.
        d.queue_watch(&abs, token, path.to_owned());
        self.watches.push(Watch { dom: d.clone(), domid: dom, path: abs, token, relative });
        Ok(())
    }

    pub(crate) fn unwatch(&mut self, dom: DomId, path: &str, token: u32) -> Result<()> {
        let abs = if path.starts_with('@') { path.to_owned() } else { canon(dom, path)?.0 };
        let i = self
            .watches
            .iter()
            .position(|w| w.domid == dom && w.token == token && w.path == abs)
            .ok_or(PlatformError::NotFound)?;
        let w = self.watches.remove(i);
        w.dom.drop_watch_events(&w.path, w.token);
        Ok(())
    }

    fn report(w: &Watch, path: &str) -> String {
        if w.relative {
            let h = home(w.domid);
            if let Some(rest) = path.strip_prefix(h.as_str()).and_then(|r| r.strip_prefix('/')) {
                return rest.to_owned();
            }
        }
        path.to_owned()
    }

    fn fire(&self, events: &[Event]) {
        for e in events {
            for w in &self.watches {
                if w.path.starts_with('@') || !e.perms.access(w.domid).can_read() {
                    continue;
                }
                if at_or_below(&e.path, &w.path) {
                    w.dom.queue_watch(&w.path, w.token, Self::report(w, &e.path));
                } else if e.removed && at_or_below(&w.path, &e.path) {
                    w.dom.queue_watch(&w.path, w.token, Self::report(w, &w.path));
                }
            }
        }
    }

    /// Fires a special watch (`@introduceDomain`, `@releaseDomain`) for every domain.
    pub(crate) fn fire_special(&self, name: &str) {
        for w in self.watches.iter().filter(|w| w.path == name) {
            w.dom.queue_watch(&w.path, w.token, name.to_owned());
        }
    }

    /// A domain went away: drop its watches and transactions.
    pub(crate) fn forget_domain(&mut self, dom: DomId) {
        self.watches.retain(|w| w.domid != dom);
        self.txs.retain(|_, t| t.dom != dom);
    }

    /// Drops every watch (breaks the `Arc<Domain>` references at teardown).
    pub(crate) fn clear_watches(&mut self) {
        self.watches.clear();
    }

    /// Nodes owned by `dom`.
    pub(crate) fn owned(&self, dom: DomId) -> usize {
        self.tree.owned.get(&dom.0).copied().unwrap_or(0)
    }
}

pub(crate) fn count_request(d: &Domain) {
    bump(&d.stats.xs_requests);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert!(at_or_below("/a/b", "/a"));
        assert!(!at_or_below("/ab", "/a"));
        assert!(at_or_below("/x", "/"));
        assert_eq!(canon(DomId(3), "device/vbd").unwrap(), ("/local/domain/3/device/vbd".to_owned(), true));
        for bad in ["", "/a/", "/a//b", "/a b", "/a.b"] {
            assert_eq!(canon(DomId(3), bad), Err(PlatformError::Invalid), "{bad:?}");
        }
    }
}
