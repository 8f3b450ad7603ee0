//! From source text to a validated [`Config`]: line splitting and limits,
//! key resolution, evaluation, validation.

use crate::diag::{Diagnostic, Diagnostics};
use crate::keys::{self, DERIVED, KEYS, KeySpec, Kind, derived_index, key_index, ranges_text, suggest};
use crate::syntax::{self, Expr, Line, Op, PKind};
use crate::{Config, DerivedValue, Profile, Setting, Source, Value};

/// Longest line, in bytes (without the line break).
pub const MAX_LINE_LEN: usize = 4096;
/// Largest file, in bytes.
pub const MAX_FILE_LEN: usize = 1 << 20;

/// A value during evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    Int(i128),
    Bool(bool),
}

impl Val {
    fn kind(self) -> Kind {
        match self {
            Val::Int(_) => Kind::Int,
            Val::Bool(_) => Kind::Bool,
        }
    }
}

/// An evaluation error. `rem` is a position in the source the expression
/// was parsed from; `None` until a caller knows where to point.
#[derive(Debug)]
enum EErr {
    At {
        rem: Option<usize>,
        msg: String,
        notes: Vec<String>,
    },
    /// Caused by an error reported elsewhere.
    Silent,
}

impl EErr {
    fn at(rem: usize, msg: impl Into<String>) -> EErr {
        EErr::At { rem: Some(rem), msg: msg.into(), notes: Vec::new() }
    }

    fn unplaced(msg: impl Into<String>) -> EErr {
        EErr::At { rem: None, msg: msg.into(), notes: Vec::new() }
    }

    /// Points an error at `rem` (replacing any position in another source)
    /// and adds `note`.
    fn moved(self, rem: usize, note: Option<String>) -> EErr {
        match self {
            EErr::At { msg, mut notes, .. } => {
                notes.extend(note);
                EErr::At { rem: Some(rem), msg, notes }
            }
            EErr::Silent => EErr::Silent,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Pending,
    Done(Val),
    Failed,
}

struct Assignment {
    /// 1-based line.
    line: usize,
    /// Index into `Eval::lines`.
    idx: usize,
    /// Length of the line without its comment (positions count from there).
    code_len: usize,
    key: usize,
    section: Option<String>,
    /// `None` when the value did not parse (already reported): the key
    /// still counts as set, so its default does not stand in for it.
    value: Option<Expr>,
}

impl Assignment {
    fn value_offset(&self) -> usize {
        self.code_len - self.value.as_ref().map_or(0, Expr::rem)
    }
}

/// Where a name is being read.
struct Ctx<'s> {
    /// Keys set on this line or later do not have their final value yet.
    line: usize,
    /// Current `[section]`, for relative names.
    section: Option<&'s str>,
}

const AFTER_ALL: usize = usize::MAX;

struct Eval<'a> {
    lines: Vec<&'a str>,
    profile: Profile,
    assigns: Vec<Assignment>,
    /// Per key: index into `assigns` of the (first) assignment.
    set_by: Vec<Option<usize>>,
    slots: Vec<Slot>,
    defaults: Vec<Expr>,
    diags: Diagnostics,
}

fn parsed_defaults() -> Vec<Expr> {
    KEYS.iter()
        .map(|k| {
            syntax::expression(k.default).unwrap_or_else(|e| panic!("default of `{}` does not parse: {e:?}", k.name))
        })
        .collect()
}

/// Strips one trailing `\r` (CRLF files).
fn chomp(l: &str) -> &str {
    l.strip_suffix('\r').unwrap_or(l)
}

pub(crate) fn evaluate(file: &str, src: &str, profile: Profile) -> Result<Config, Diagnostics> {
    if src.len() > MAX_FILE_LEN {
        return Err(file_too_large(file, src));
    }
    let diags = Diagnostics::new(file);
    let mut ev = Eval {
        lines: src.split('\n').map(chomp).collect(),
        profile,
        assigns: Vec::new(),
        set_by: vec![None; KEYS.len()],
        slots: vec![Slot::Pending; KEYS.len()],
        defaults: parsed_defaults(),
        diags,
    };
    ev.parse_lines();
    ev.eval_assignments();
    ev.validate();
    if !ev.diags.is_empty() {
        ev.diags.sort();
        return Err(ev.diags);
    }
    Ok(ev.build(file))
}

/// The error for a file over [`MAX_FILE_LEN`]; `src` is (at least the
/// start of) its text. It points at the first byte past the limit.
pub(crate) fn file_too_large(file: &str, src: &str) -> Diagnostics {
    let mut diags = Diagnostics::new(file);
    let head = &src[..floor_boundary(src, MAX_FILE_LEN.min(src.len()))];
    let line = head.matches('\n').count() + 1;
    let start = head.rfind('\n').map_or(0, |p| p + 1);
    let text = chomp(src[start..].split('\n').next().unwrap_or(""));
    diags.push(Diagnostic::at(
        line,
        text,
        head.len() - start,
        format!("file too large: more than {MAX_FILE_LEN} bytes (the limit is 1 MiB)"),
    ));
    diags
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn suggestion_note(s: Option<String>) -> String {
    s.map(|s| format!("; {s}")).unwrap_or_default()
}

impl Eval<'_> {
    fn mk(&self, idx: usize, offset: usize, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at(idx + 1, self.lines[idx], offset, msg)
    }

    fn diag_at(&mut self, idx: usize, offset: usize, msg: impl Into<String>) {
        let d = self.mk(idx, offset, msg);
        self.diags.push(d);
    }

    fn push_notes(&mut self, idx: usize, offset: usize, msg: String, notes: Vec<String>) {
        let mut d = self.mk(idx, offset, msg);
        d.notes = notes;
        self.diags.push(d);
    }

    /// Pass 1: syntax, sections, key names, duplicates.
    fn parse_lines(&mut self) {
        // `Some(None)`: inside an unknown section (its lines are skipped).
        let mut section: Option<Option<String>> = None;
        for idx in 0..self.lines.len() {
            let raw = self.lines[idx];
            // A broken section header leaves us not knowing the section:
            // skip the keys below it rather than report each as unknown.
            let looks_like_header = raw.trim_start().starts_with('[');
            if raw.len() > MAX_LINE_LEN {
                if looks_like_header {
                    section = Some(None);
                }
                self.diag_at(
                    idx,
                    MAX_LINE_LEN,
                    format!("line too long: {} bytes (the limit is {MAX_LINE_LEN})", raw.len()),
                );
                continue;
            }
            let code = syntax::strip_comment(raw);
            let parsed = match syntax::line(code) {
                Ok(l) => l,
                Err(e) => {
                    let off = code.len() - e.rem;
                    let msg = match e.kind {
                        PKind::Generic => "syntax error".to_string(),
                        PKind::Msg(m) => m,
                        PKind::Unclosed { open } => {
                            let open_off = code.len() - open;
                            let col = code[..open_off].chars().count() + 1;
                            format!("expected `)` to close the `(` at column {col}")
                        }
                    };
                    self.diag_at(idx, off, msg);
                    if looks_like_header {
                        section = Some(None);
                    }
                    self.record_broken(idx, code, &section);
                    continue;
                }
            };
            match parsed {
                Line::Blank => {}
                Line::Section { name, rem } => {
                    if keys::is_section(&name) {
                        section = Some(Some(name));
                    } else {
                        let hint = suggest(&name, &name, &keys::sections());
                        let d = self
                            .mk(idx, code.len() - rem, format!("unknown section `[{name}]`{}", suggestion_note(hint)))
                            .note(format!(
                                "the sections are {}",
                                keys::sections().iter().map(|s| format!("`[{s}]`")).collect::<Vec<_>>().join(", ")
                            ));
                        self.diags.push(d);
                        section = Some(None);
                    }
                }
                Line::Assign { key, key_rem, value } => {
                    let key_off = code.len() - key_rem;
                    let sec = match &section {
                        Some(None) => continue,
                        Some(Some(s)) => Some(s.clone()),
                        None => None,
                    };
                    let full = match &sec {
                        Some(s) => format!("{s}.{key}"),
                        None => key.clone(),
                    };
                    if let Some(d) = derived_index(&full) {
                        let spec = &DERIVED[d];
                        let d = self
                            .mk(idx, key_off, format!("`{full}` is derived and cannot be set"))
                            .note(format!("it is computed as `{}`", spec.formula));
                        self.diags.push(d);
                        continue;
                    }
                    let Some(k) = key_index(&full) else {
                        self.unknown_key(idx, key_off, &key, &full, sec.as_deref());
                        continue;
                    };
                    if let Some(first) = self.set_by[k] {
                        let first_line = self.assigns[first].line;
                        self.diag_at(idx, key_off, format!("duplicate key `{full}` (first set on line {first_line})"));
                        continue;
                    }
                    self.set_by[k] = Some(self.assigns.len());
                    self.assigns.push(Assignment {
                        line: idx + 1,
                        idx,
                        code_len: code.len(),
                        key: k,
                        section: sec,
                        value: Some(value),
                    });
                }
            }
        }
    }

    /// After a syntax error on `key = ...`: if `key` is known and not yet
    /// set, record it as set (with a broken value), so that later errors do
    /// not blame its default.
    fn record_broken(&mut self, idx: usize, code: &str, section: &Option<Option<String>>) {
        let Some(key) = syntax::key_prefix(code) else {
            return;
        };
        let full = match section {
            Some(None) => return,
            Some(Some(s)) => format!("{s}.{key}"),
            None => key,
        };
        if let Some(k) = key_index(&full)
            && self.set_by[k].is_none()
        {
            self.set_by[k] = Some(self.assigns.len());
            self.assigns.push(Assignment {
                line: idx + 1,
                idx,
                code_len: code.len(),
                key: k,
                section: None,
                value: None,
            });
        }
    }

    fn unknown_key(&mut self, idx: usize, off: usize, written: &str, full: &str, sec: Option<&str>) {
        let mut notes = Vec::new();
        let mut hint = suggest(written, full, &keys::settable_names());
        if let Some(s) = sec
            && key_index(written).is_some()
        {
            hint = None;
            match written.strip_prefix(&format!("{s}.")) {
                    Some(rel) => notes.push(format!(
                        "keys inside `[{s}]` are relative to it: write `{rel}` there, or `{written}` before the first section header"
                    )),
                    None => notes.push(format!(
                        "`{written}` is not in `[{s}]`: set it before the first section header, or in its own section"
                    )),
                }
        }
        let derived = keys::DERIVED.iter().find(|d| d.name == written);
        if let Some(d) = derived {
            notes.push(format!("`{}` is derived and cannot be set", d.name));
        }
        self.push_notes(idx, off, format!("unknown key `{full}`{}", suggestion_note(hint)), notes);
    }

    /// Pass 2: evaluate every assignment in file order.
    fn eval_assignments(&mut self) {
        for a in 0..self.assigns.len() {
            let (line, idx, k) = {
                let a = &self.assigns[a];
                (a.line, a.idx, a.key)
            };
            let section = self.assigns[a].section.clone();
            let ctx = Ctx { line, section: section.as_deref() };
            let Some(value) = self.assigns[a].value.clone() else {
                self.slots[k] = Slot::Failed;
                continue;
            };
            let result = self.eval(&value, &ctx);
            let code_len = self.assigns[a].code_len;
            let value_off = self.assigns[a].value_offset();
            let spec = &KEYS[k];
            match result {
                Ok(v) if v.kind() == spec.kind => self.slots[k] = Slot::Done(v),
                Ok(v) => {
                    self.slots[k] = Slot::Failed;
                    let msg = match spec.kind {
                        Kind::Bool => format!(
                            "type error: `{}` is a boolean (`true`/`false`, `yes`/`no`, `on`/`off`), but the value is an {}",
                            spec.name,
                            v.kind().word()
                        ),
                        Kind::Int => {
                            format!("type error: `{}` is an integer, but the value is a {}", spec.name, v.kind().word())
                        }
                    };
                    self.diag_at(idx, value_off, msg);
                }
                Err(EErr::Silent) => self.slots[k] = Slot::Failed,
                Err(EErr::At { rem, msg, notes }) => {
                    self.slots[k] = Slot::Failed;
                    let off = rem.map_or(value_off, |r| code_len - r);
                    self.push_notes(idx, off, msg, notes);
                }
            }
        }
    }

    fn eval(&self, e: &Expr, ctx: &Ctx<'_>) -> Result<Val, EErr> {
        match e {
            Expr::Int { value, .. } => Ok(Val::Int(*value)),
            Expr::Bool { value, .. } => Ok(Val::Bool(*value)),
            Expr::Name { rem, name } => self.eval_name(name, *rem, ctx),
            Expr::Paren { inner, .. } => self.eval(inner, ctx),
            Expr::Neg { rem, inner } => match self.eval(inner, ctx)? {
                Val::Int(v) => v.checked_neg().map(Val::Int).ok_or_else(|| EErr::at(*rem, "arithmetic overflow")),
                Val::Bool(_) => Err(EErr::at(inner.rem(), "type error: booleans cannot be used in arithmetic")),
            },
            Expr::Chain { first, rest } => {
                let mut acc = self.eval(first, ctx)?;
                let mut acc_rem = first.rem();
                for (op, op_rem, operand) in rest {
                    let rhs = self.eval(operand, ctx)?;
                    let (Val::Int(l), Val::Int(r)) = (acc, rhs) else {
                        let bad = if matches!(acc, Val::Bool(_)) { acc_rem } else { operand.rem() };
                        return Err(EErr::at(
                            bad,
                            format!("type error: booleans cannot be used in arithmetic (`{}`)", op.symbol()),
                        ));
                    };
                    let v = match op {
                        Op::Add => l.checked_add(r),
                        Op::Sub => l.checked_sub(r),
                        Op::Mul => l.checked_mul(r),
                        Op::Div => {
                            if r == 0 {
                                return Err(EErr::at(*op_rem, "division by zero"));
                            }
                            l.checked_div(r)
                        }
                    };
                    acc = Val::Int(v.ok_or_else(|| EErr::at(*op_rem, "arithmetic overflow"))?);
                    acc_rem = first.rem();
                }
                Ok(acc)
            }
        }
    }

    fn eval_name(&self, name: &str, rem: usize, ctx: &Ctx<'_>) -> Result<Val, EErr> {
        let mut candidates = Vec::with_capacity(2);
        if let Some(s) = ctx.section {
            candidates.push(format!("{s}.{name}"));
        }
        candidates.push(name.to_string());
        for c in &candidates {
            if let Some(k) = key_index(c) {
                return self.key_value(k, ctx).map_err(|e| e.moved(rem, None));
            }
            if let Some(d) = derived_index(c) {
                return self.derived_value(d, ctx).map_err(|e| e.moved(rem, None));
            }
        }
        let full = candidates.first().expect("non-empty");
        let hint = suggest(name, full, &keys::readable_names());
        Err(EErr::at(rem, format!("unknown name `{name}`{}", suggestion_note(hint))))
    }

    /// The final value of key `k`, as seen from `ctx`.
    fn key_value(&self, k: usize, ctx: &Ctx<'_>) -> Result<Val, EErr> {
        let spec = &KEYS[k];
        if let Some(a) = self.set_by[k] {
            let set_line = self.assigns[a].line;
            if set_line == ctx.line {
                return Err(EErr::unplaced(format!("`{}` cannot be used in its own value", spec.name)));
            }
            if set_line > ctx.line {
                let mut e = EErr::unplaced(format!("`{}` is used before it is set (on line {set_line})", spec.name));
                if let EErr::At { notes, .. } = &mut e {
                    notes.push("a name stands for the key's final value: set a key before using it".to_string());
                }
                return Err(e);
            }
            return match self.slots[k] {
                Slot::Done(v) if self.check(spec, v, "").is_ok() => Ok(v),
                _ => Err(EErr::Silent),
            };
        }
        // Not set in the file: the default, which may read other keys.
        let dctx = Ctx { line: ctx.line, section: None };
        let v = self.eval(&self.defaults[k], &dctx).map_err(|e| match e {
            EErr::At { msg, mut notes, .. } => {
                notes.push(format!(
                    "`{}` is not set in this file, so it stands for its default `{}`",
                    spec.name, spec.default
                ));
                EErr::At { rem: None, msg, notes }
            }
            EErr::Silent => EErr::Silent,
        })?;
        if v.kind() != spec.kind || self.check(spec, v, "").is_err() {
            return Err(EErr::Silent);
        }
        Ok(v)
    }

    fn derived_value(&self, d: usize, ctx: &Ctx<'_>) -> Result<Val, EErr> {
        let spec = &DERIVED[d];
        let mut args = Vec::with_capacity(spec.deps.len());
        for dep in spec.deps {
            let v = match (key_index(dep), derived_index(dep)) {
                (Some(k), _) => self.key_value(k, ctx)?,
                (None, Some(d)) => self.derived_value(d, ctx)?,
                (None, None) => unreachable!("derived `{}` depends on unknown `{dep}`", spec.name),
            };
            match v {
                Val::Int(i) => args.push(i),
                Val::Bool(_) => return Err(EErr::Silent),
            }
        }
        Ok(Val::Int((spec.compute)(&args)))
    }

    /// Type, sign, range and profile checks of one value. `how` describes
    /// where the value came from, for the message.
    fn check(&self, spec: &KeySpec, v: Val, how: &str) -> Result<(), (String, Vec<String>)> {
        let name = spec.name;
        let Val::Int(n) = v else {
            return if spec.kind == Kind::Bool {
                Ok(())
            } else {
                Err((format!("type error: `{name}`{how} is an integer, but the value is a boolean"), Vec::new()))
            };
        };
        if spec.kind == Kind::Bool {
            return Err((format!("type error: `{name}`{how} is a boolean, but the value is an integer"), Vec::new()));
        }
        if n < 0 {
            return Err((format!("`{name}`{how} must not be negative (the value is {n})"), Vec::new()));
        }
        if !spec.allowed.iter().any(|r| r.contains(n)) {
            let mut notes = Vec::new();
            if let Some(note) = spec.range_note {
                notes.push(note.to_string());
            }
            return Err((
                format!("`{name}` = {n}{how} is out of range (allowed: {})", ranges_text(spec.allowed)),
                notes,
            ));
        }
        for rule in spec.profile_rules {
            if rule.profile == self.profile && !rule.allowed.iter().any(|r| r.contains(n)) {
                return Err((
                    format!(
                        "`{name}` = {n}{how} is not allowed with profile {}: {}",
                        self.profile.as_str(),
                        rule.reason
                    ),
                    vec![format!(
                        "with profile {} `{name}` must be {}",
                        self.profile.as_str(),
                        ranges_text(rule.allowed)
                    )],
                ));
            }
        }
        Ok(())
    }

    /// Every key the default of `k` reads, transitively.
    fn default_deps(&self, k: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut todo = Vec::new();
        self.defaults[k].names(&mut todo);
        while let Some(n) = todo.pop() {
            if let Some(i) = key_index(&n) {
                if !out.contains(&i) {
                    out.push(i);
                    if self.set_by[i].is_none() {
                        self.defaults[i].names(&mut todo);
                    }
                }
            } else if let Some(d) = derived_index(&n) {
                todo.extend(DERIVED[d].deps.iter().map(|s| s.to_string()));
            }
        }
        out
    }

    /// The final value of `k` (after the whole file). `Silent` after an
    /// error reported elsewhere.
    fn final_value(&self, k: usize) -> Result<Val, EErr> {
        let ctx = Ctx { line: AFTER_ALL, section: None };
        match self.set_by[k] {
            Some(_) => match self.slots[k] {
                Slot::Done(v) => Ok(v),
                _ => Err(EErr::Silent),
            },
            None => self.eval(&self.defaults[k], &ctx),
        }
    }

    /// Pass 3: every key's final value against its rules.
    fn validate(&mut self) {
        let ctx = Ctx { line: AFTER_ALL, section: None };
        for (k, spec) in KEYS.iter().enumerate() {
            let v = match self.final_value(k) {
                Ok(v) => v,
                Err(EErr::Silent) => continue,
                Err(EErr::At { msg, notes, .. }) => {
                    let mut d = Diagnostic::file(format!(
                        "the default of `{}` (`{}`) cannot be computed: {msg}",
                        spec.name, spec.default
                    ));
                    d.notes = notes;
                    self.diags.push(d);
                    continue;
                }
            };
            // Where to point: the value, or for a default the latest line
            // that set something it depends on.
            let (place, how) = match self.set_by[k] {
                Some(a) => (Some(a), String::new()),
                None => {
                    let latest = self
                        .default_deps(k)
                        .into_iter()
                        .filter_map(|d| self.set_by[d])
                        .max_by_key(|a| self.assigns[*a].line);
                    (latest, format!(" (its default, `{}`)", spec.default))
                }
            };
            let mut problem = self.check(spec, v, &how).err();
            if problem.is_none()
                && let (Some(al), Val::Int(n)) = (spec.at_least, v)
            {
                let bound = syntax::expression(al.expr).ok().and_then(|e| self.eval(&e, &ctx).ok());
                if let Some(Val::Int(min)) = bound
                    && n < min
                {
                    problem = Some((
                        al.message.replace("{}", &min.to_string()),
                        vec![format!(
                            "`{}` = {n}{how}, and one full request needs `{}` = {min} grants",
                            spec.name, al.expr
                        )],
                    ));
                }
            }
            let Some((msg, mut notes)) = problem else {
                continue;
            };
            match place {
                Some(a) => {
                    let (idx, off) = (self.assigns[a].idx, self.assigns[a].value_offset());
                    if self.set_by[k].is_none() {
                        notes.push(format!(
                            "`{}` is not set in this file; its default depends on `{}`, set here; set `{}` explicitly",
                            spec.name, KEYS[self.assigns[a].key].name, spec.name
                        ));
                    }
                    self.push_notes(idx, off, msg, notes);
                }
                None => {
                    let mut d = Diagnostic::file(msg);
                    d.notes = notes;
                    self.diags.push(d);
                }
            }
        }
    }

    fn build(&self, file: &str) -> Config {
        let mut values = Vec::with_capacity(KEYS.len());
        for (k, spec) in KEYS.iter().enumerate() {
            let Ok(v) = self.final_value(k) else { unreachable!("`{}` of a valid config has a value", spec.name) };
            let value = match v {
                Val::Int(n) => Value::Int(u64::try_from(n).expect("validated")),
                Val::Bool(b) => Value::Bool(b),
            };
            let source = match self.set_by[k] {
                Some(a) => Source::File { line: self.assigns[a].line },
                None => Source::Default,
            };
            values.push(Setting { spec, value, source });
        }
        let ctx = Ctx { line: AFTER_ALL, section: None };
        let derived = DERIVED
            .iter()
            .enumerate()
            .map(|(d, spec)| {
                let v = match self.derived_value(d, &ctx) {
                    Ok(Val::Int(n)) => u64::try_from(n).expect("validated"),
                    _ => unreachable!("derived values of a valid config"),
                };
                DerivedValue { spec, value: v }
            })
            .collect();
        Config::from_parts(file.to_string(), self.profile, values, derived)
    }
}
