//! Line syntax and expressions, parsed with nom.
//!
//! Every parser works on a suffix of the line being parsed. Positions are
//! stored as the length of the remaining input ("rem"), which turns into a
//! byte offset within the line as `line.len() - rem`; no parser needs to know
//! where the line starts.

use nom::{
    Err as NomErr, IResult, Parser,
    branch::alt,
    bytes::complete::{tag, tag_no_case, take_while, take_while1},
    character::complete::{char, one_of, satisfy, space0},
    combinator::{eof, opt, recognize},
    error::{ErrorKind, ParseError},
    sequence::pair,
};

use crate::keys::{BOOL_WORDS, SUFFIXES};

/// Deepest nesting of parentheses and unary minus.
pub const MAX_DEPTH: u32 = 32;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }
}

/// An expression. `rem` fields are positions (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Int {
        rem: usize,
        value: i128,
    },
    Bool {
        rem: usize,
        value: bool,
    },
    Name {
        rem: usize,
        name: String,
    },
    Neg {
        rem: usize,
        inner: Box<Expr>,
    },
    Paren {
        rem: usize,
        inner: Box<Expr>,
    },
    /// A left-associative chain of one precedence level. Kept flat so that
    /// `1+1+1+...` does not build (and later recurse through) a deep tree.
    Chain {
        first: Box<Expr>,
        rest: Vec<(Op, usize, Expr)>,
    },
}

impl Expr {
    /// Position of the expression's first token.
    pub fn rem(&self) -> usize {
        match self {
            Expr::Int { rem, .. }
            | Expr::Bool { rem, .. }
            | Expr::Name { rem, .. }
            | Expr::Neg { rem, .. }
            | Expr::Paren { rem, .. } => *rem,
            Expr::Chain { first, .. } => first.rem(),
        }
    }

    /// Every name the expression reads, in order.
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            Expr::Int { .. } | Expr::Bool { .. } => {}
            Expr::Name { name, .. } => out.push(name.clone()),
            Expr::Neg { inner, .. } | Expr::Paren { inner, .. } => inner.names(out),
            Expr::Chain { first, rest } => {
                first.names(out);
                for (_, _, e) in rest {
                    e.names(out);
                }
            }
        }
    }
}

/// What went wrong, before it is turned into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PKind {
    /// A nom failure without a message of ours; the caller words it from
    /// context.
    Generic,
    /// A complete message.
    Msg(String),
    /// `(` without `)`. `open` is the position of the `(`.
    Unclosed { open: usize },
}

/// The parse error type: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PErr {
    /// Position (remaining length) of the offending token.
    pub rem: usize,
    /// What.
    pub kind: PKind,
}

impl PErr {
    fn msg(i: &str, m: impl Into<String>) -> PErr {
        PErr { rem: i.len(), kind: PKind::Msg(m.into()) }
    }
}

impl ParseError<&str> for PErr {
    fn from_error_kind(input: &str, _kind: ErrorKind) -> Self {
        PErr { rem: input.len(), kind: PKind::Generic }
    }

    fn append(_input: &str, _kind: ErrorKind, other: Self) -> Self {
        other
    }

    fn or(self, other: Self) -> Self {
        // Keep the error that says something, else the one that got further.
        match (&self.kind, &other.kind) {
            (PKind::Generic, PKind::Generic) => {
                if self.rem <= other.rem {
                    self
                } else {
                    other
                }
            }
            (PKind::Generic, _) => other,
            _ => self,
        }
    }
}

type R<'a, O> = IResult<&'a str, O, PErr>;

fn fail<O>(i: &str, m: impl Into<String>) -> R<'_, O> {
    Err(NomErr::Failure(PErr::msg(i, m)))
}

/// Shows the token at the start of `i` for messages: a word, or one char.
pub fn token_at(i: &str) -> String {
    let word: String = i.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').take(40).collect();
    if !word.is_empty() {
        return word;
    }
    match i.chars().next() {
        Some(c) if c.is_control() => format!("{c:?}").trim_matches('\'').to_string(),
        Some(c) => c.to_string(),
        None => String::new(),
    }
}

fn ident(i: &str) -> R<'_, &str> {
    recognize(pair(
        satisfy(|c| c.is_ascii_alphabetic() || c == '_'),
        take_while(|c: char| c.is_ascii_alphanumeric() || c == '_'),
    ))
    .parse(i)
}

/// A dotted name: `ident ( '.' ident )*`.
fn dotted(i: &str) -> R<'_, &str> {
    let start = i;
    let (mut i, _) = ident(i)?;
    while let Some(after_dot) = i.strip_prefix('.') {
        match ident(after_dot) {
            Ok((j, _)) => i = j,
            Err(_) => return fail(after_dot, "expected a name after `.`"),
        }
    }
    let used = start.len() - i.len();
    Ok((i, &start[..used]))
}

fn digits(i: &str) -> R<'_, (&str, u32)> {
    let hex = (tag_no_case("0x"), take_while(|c: char| c.is_ascii_hexdigit() || c == '_'));
    let dec = recognize((satisfy(|c| c.is_ascii_digit()), take_while(|c: char| c.is_ascii_digit() || c == '_')));
    alt((hex.map(|(_, d): (&str, &str)| (d, 16)), dec.map(|d| (d, 10)))).parse(i)
}

fn number(i: &str) -> R<'_, Expr> {
    let start = i;
    let (i, (text, radix)) = digits(i)?;
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    if clean.is_empty() {
        return fail(i, "expected hexadecimal digits after `0x`");
    }
    let value = match u64::from_str_radix(&clean, radix) {
        Ok(v) => i128::from(v),
        Err(_) => return fail(start, "integer literal does not fit in 64 bits"),
    };
    if let Some(rest) = i.strip_prefix('.')
        && rest.starts_with(|c: char| c.is_ascii_digit())
    {
        return fail(i, "only integers are supported (no fractions)");
    }
    // Optional size suffix, optionally after spaces.
    let (after_space, _) = space0(i)?;
    let (i, value) = match suffix_word(after_space) {
        Some(word) => {
            let rest = &after_space[word.len()..];
            match SUFFIXES.iter().find(|(s, _)| *s == word) {
                Some((_, mult)) => match value.checked_mul(*mult) {
                    Some(v) => (rest, v),
                    None => return fail(after_space, "arithmetic overflow"),
                },
                None => return fail(after_space, bad_suffix_message(word)),
            }
        }
        None => (i, value),
    };
    Ok((i, Expr::Int { rem: start.len(), value }))
}

fn suffix_word(i: &str) -> Option<&str> {
    let r: IResult<&str, &str, PErr> = take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_').parse(i);
    match r {
        Ok((_, w)) if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => Some(w),
        _ => None,
    }
}

fn bad_suffix_message(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    let hint = match lower.as_str() {
        "k" | "kb" | "kib" | "ki" => Some("KiB"),
        "m" | "mb" | "mib" | "mi" => Some("MiB"),
        "g" | "gb" | "gib" | "gi" => Some("GiB"),
        _ => None,
    };
    let shown: String = word.chars().take(40).collect();
    match hint {
        Some(h) => {
            format!("unknown size suffix `{shown}` (the suffixes are `KiB`, `MiB` and `GiB`); did you mean `{h}`?")
        }
        None => format!("unknown size suffix `{shown}` (the suffixes are `KiB`, `MiB` and `GiB`)"),
    }
}

fn name_or_bool(i: &str) -> R<'_, Expr> {
    let (j, name) = dotted(i)?;
    let rem = i.len();
    if let Some((_, value)) = BOOL_WORDS.iter().find(|(w, _)| *w == name) {
        return Ok((j, Expr::Bool { rem, value: *value }));
    }
    Ok((j, Expr::Name { rem, name: name.to_string() }))
}

fn paren(i: &str, depth: u32) -> R<'_, Expr> {
    let (j, _) = char('(').parse(i)?;
    if depth >= MAX_DEPTH {
        return fail(i, format!("expression nested too deeply (the limit is {MAX_DEPTH} levels)"));
    }
    let (j, _) = space0(j)?;
    let (j, inner) = sum(j, depth + 1).map_err(to_failure)?;
    let (j, _) = space0(j)?;
    match char::<&str, PErr>(')').parse(j) {
        Ok((j, _)) => Ok((j, Expr::Paren { rem: i.len(), inner: Box::new(inner) })),
        Err(_) => Err(NomErr::Failure(PErr { rem: j.len(), kind: PKind::Unclosed { open: i.len() } })),
    }
}

fn to_failure(e: NomErr<PErr>) -> NomErr<PErr> {
    match e {
        NomErr::Error(e) => NomErr::Failure(e),
        other => other,
    }
}

fn primary(i: &str, depth: u32) -> R<'_, Expr> {
    let r = alt((number, name_or_bool, |x| paren(x, depth))).parse(i);
    match r {
        Err(NomErr::Error(_)) => {
            let what = if i.is_empty() {
                "expected a value at the end of the line".to_string()
            } else {
                format!("expected a value (a number, a boolean, a name or `(`), found `{}`", token_at(i))
            };
            fail(i, what)
        }
        other => other,
    }
}

fn unary(i: &str, depth: u32) -> R<'_, Expr> {
    if let Ok((j, _)) = char::<&str, PErr>('-').parse(i) {
        if depth >= MAX_DEPTH {
            return fail(i, format!("expression nested too deeply (the limit is {MAX_DEPTH} levels)"));
        }
        let (j, _) = space0(j)?;
        let (j, inner) = unary(j, depth + 1)?;
        return Ok((j, Expr::Neg { rem: i.len(), inner: Box::new(inner) }));
    }
    primary(i, depth)
}

fn chain<'a>(i: &'a str, depth: u32, ops: &'static str, operand: fn(&'a str, u32) -> R<'a, Expr>) -> R<'a, Expr> {
    let (mut i, first) = operand(i, depth)?;
    let mut rest = Vec::new();
    loop {
        let (j, _) = space0(i)?;
        let Ok((k, c)) = one_of::<&str, &str, PErr>(ops).parse(j) else {
            break;
        };
        let op = match c {
            '+' => Op::Add,
            '-' => Op::Sub,
            '*' => Op::Mul,
            _ => Op::Div,
        };
        let (k, _) = space0(k)?;
        let (k, e) = operand(k, depth)?;
        rest.push((op, j.len(), e));
        i = k;
    }
    if rest.is_empty() {
        return Ok((i, first));
    }
    Ok((i, Expr::Chain { first: Box::new(first), rest }))
}

fn product(i: &str, depth: u32) -> R<'_, Expr> {
    chain(i, depth, "*/", unary)
}

fn sum(i: &str, depth: u32) -> R<'_, Expr> {
    chain(i, depth, "+-", product)
}

/// Parses a whole expression: it must use all of `src` but trailing spaces.
pub fn expression(src: &str) -> Result<Expr, PErr> {
    let r = (|i| sum(i, 0), space0, opt(eof)).parse(src);
    match r {
        Ok((rest, (e, _, Some(_)))) => {
            debug_assert!(rest.is_empty());
            Ok(e)
        }
        Ok((rest, (_, _, None))) => Err(PErr::msg(
            rest,
            format!(
                "unexpected `{}`; expected an operator (`+`, `-`, `*`, `/`) or the end of the line",
                token_at(rest)
            ),
        )),
        Err(NomErr::Error(e) | NomErr::Failure(e)) => Err(e),
        Err(NomErr::Incomplete(_)) => Err(PErr { rem: 0, kind: PKind::Generic }),
    }
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Blank or comment only.
    Blank,
    /// `[name]`.
    Section { name: String, rem: usize },
    /// `key = value`.
    Assign { key: String, key_rem: usize, value: Expr },
}

/// Strips a trailing comment.
pub fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(p) => &line[..p],
        None => line,
    }
}

fn section(i: &str) -> R<'_, Line> {
    let (j, _) = char('[').parse(i)?;
    let (j, _) = space0(j)?;
    let name_rem = j.len();
    let (j, name) = match dotted(j) {
        Ok(x) => x,
        Err(NomErr::Error(_)) => return fail(j, "expected a section name after `[`"),
        Err(e) => return Err(e),
    };
    let (j, _) = space0(j)?;
    let Ok((j, _)) = tag::<&str, &str, PErr>("]").parse(j) else {
        let found = if j.is_empty() { String::new() } else { format!(", found `{}`", token_at(j)) };
        return fail(j, format!("expected `]` to end the section header{found}"));
    };
    let (j, _) = space0(j)?;
    if !j.is_empty() {
        return fail(j, format!("unexpected `{}` after the section header", token_at(j)));
    }
    Ok((j, Line::Section { name: name.to_string(), rem: name_rem }))
}

fn assignment(i: &str) -> Result<Line, PErr> {
    let key_rem = i.len();
    let (j, key) = match dotted(i) {
        Ok(x) => x,
        Err(NomErr::Error(_)) => {
            return Err(PErr::msg(i, format!("expected a key or a `[section]` header, found `{}`", token_at(i))));
        }
        Err(NomErr::Failure(e)) => return Err(e),
        Err(NomErr::Incomplete(_)) => unreachable!("complete parsers only"),
    };
    let (j, _) = space0::<&str, PErr>(j).map_err(|_| PErr::msg(j, "internal"))?;
    let Some(value_src) = j.strip_prefix('=') else {
        let m = if j.is_empty() {
            format!("expected `=` and a value after `{key}`")
        } else if j.starts_with(|c: char| c.is_ascii_punctuation() && c != '=') {
            format!("unexpected `{}` in key `{key}`: keys are letters, digits, `_` and `.`", token_at(j))
        } else {
            format!("expected `=` after `{key}`, found `{}`", token_at(j))
        };
        return Err(PErr::msg(j, m));
    };
    let trimmed = value_src.trim_start_matches([' ', '\t']);
    if trimmed.trim_end_matches([' ', '\t']).is_empty() {
        return Err(PErr::msg(trimmed, format!("missing value after `{key} =`")));
    }
    let value = expression(trimmed)?;
    Ok(Line::Assign { key: key.to_string(), key_rem, value })
}

/// The key of a line that starts like `key =`, whatever follows.
pub fn key_prefix(code: &str) -> Option<String> {
    let (body, _) = space0::<&str, PErr>(code).ok()?;
    let (rest, key) = dotted(body).ok()?;
    let (rest, _) = space0::<&str, PErr>(rest).ok()?;
    rest.starts_with('=').then(|| key.to_string())
}

/// Parses one line (comment already stripped or not: both work).
pub fn line(src: &str) -> Result<Line, PErr> {
    let code = strip_comment(src);
    let (body, _) = space0::<&str, PErr>(code).map_err(|_| PErr::msg(code, "internal"))?;
    if body.trim_end_matches([' ', '\t']).is_empty() {
        return Ok(Line::Blank);
    }
    if body.starts_with('[') {
        return match section(body) {
            Ok((_, l)) => Ok(l),
            Err(NomErr::Error(e) | NomErr::Failure(e)) => Err(e),
            Err(NomErr::Incomplete(_)) => unreachable!("complete parsers only"),
        };
    }
    assignment(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(rem: usize, value: i128) -> Expr {
        Expr::Int { rem, value }
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(expression("0x10").unwrap(), int(4, 16));
        assert_eq!(expression("1_000").unwrap(), int(5, 1000));
        assert_eq!(expression("4KiB").unwrap(), int(4, 4096));
        assert_eq!(expression("4 MiB").unwrap(), int(5, 4 << 20));
        assert_eq!(expression("1\tGiB ").unwrap(), int(6, 1 << 30));
        assert_eq!(expression("0X_ff_").unwrap(), int(6, 255));
    }

    #[test]
    fn chains_are_flat() {
        let src = vec!["1"; 1000].join("+");
        match expression(&src).unwrap() {
            Expr::Chain { rest, .. } => assert_eq!(rest.len(), 999),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parser_alone_survives_huge_nesting() {
        let src = "(".repeat(100_000) + "1" + &")".repeat(100_000);
        let e = expression(&src).unwrap_err();
        assert_eq!(src.len() - e.rem, MAX_DEPTH as usize);
        assert!(matches!(e.kind, PKind::Msg(ref m) if m.contains("nested too deeply")));
        let src = "-".repeat(100_000) + "1";
        let e = expression(&src).unwrap_err();
        assert_eq!(src.len() - e.rem, MAX_DEPTH as usize);
    }

    #[test]
    fn lines() {
        assert_eq!(line("  # hi").unwrap(), Line::Blank);
        assert_eq!(line("").unwrap(), Line::Blank);
        assert!(matches!(line("[ring]").unwrap(), Line::Section { ref name, rem: 5 } if name == "ring"));
        assert!(matches!(
            line(strip_comment("a.b = 1 # c")).unwrap(),
            Line::Assign { ref key, key_rem: 8, .. } if key == "a.b"
        ));
    }
}
