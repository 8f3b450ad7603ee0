//! Located error messages.

use std::fmt;

/// Most diagnostics kept for one file; the rest are counted.
pub const MAX_DIAGNOSTICS: usize = 20;

/// Widest source excerpt shown under a message, in characters.
const EXCERPT_WIDTH: usize = 100;

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// The offending line, as written (without the line break).
    pub text: String,
}

/// One error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where, if the error belongs to a place in the file.
    pub location: Option<Location>,
    /// What went wrong.
    pub message: String,
    /// Further lines of explanation.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic at byte offset `offset` of line `line` (1-based) whose
    /// text is `text`.
    pub fn at(line: usize, text: &str, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        Diagnostic {
            location: Some(Location { line, col: text[..offset].chars().count() + 1, text: text.to_string() }),
            message: message.into(),
            notes: Vec::new(),
        }
    }

    /// A diagnostic about the file as a whole.
    pub fn file(message: impl Into<String>) -> Diagnostic {
        Diagnostic { location: None, message: message.into(), notes: Vec::new() }
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// `LINE:COL`, or an empty string.
    pub fn line_col(&self) -> String {
        match &self.location {
            Some(l) => format!("{}:{}", l.line, l.col),
            None => String::new(),
        }
    }

    /// Renders the diagnostic for file `file`.
    pub fn render(&self, file: &str, out: &mut String) {
        match &self.location {
            Some(loc) => {
                out.push_str(&format!("{file}:{}:{}: {}\n", loc.line, loc.col, self.message));
                let (excerpt, caret_col) = excerpt(&loc.text, loc.col);
                out.push_str("    ");
                out.push_str(&excerpt);
                out.push('\n');
                out.push_str("    ");
                for c in excerpt.chars().take(caret_col - 1) {
                    out.push(if c == '\t' { '\t' } else { ' ' });
                }
                let shown = excerpt.chars().count();
                for _ in shown..caret_col - 1 {
                    out.push(' ');
                }
                out.push_str("^\n");
            }
            None => out.push_str(&format!("{file}: {}\n", self.message)),
        }
        for n in &self.notes {
            out.push_str(&format!("    = note: {n}\n"));
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The part of `text` to show and the caret's column within it. Control
/// characters are shown as `?` (tabs are kept so the caret lines up).
fn excerpt(text: &str, col: usize) -> (String, usize) {
    let chars: Vec<char> = text.chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect();
    if chars.len() <= EXCERPT_WIDTH {
        return (chars.into_iter().collect(), col);
    }
    let start = col.saturating_sub(EXCERPT_WIDTH * 2 / 3).min(chars.len());
    let end = (start + EXCERPT_WIDTH).min(chars.len());
    let mut s = String::new();
    let mut caret = col - start;
    if start > 0 {
        s.push_str("...");
        caret += 3;
    }
    s.extend(&chars[start..end]);
    if end < chars.len() {
        s.push_str("...");
    }
    (s, caret)
}

/// Every error found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file's name, as shown in messages.
    pub file: String,
    /// The errors, in file order (at most [`MAX_DIAGNOSTICS`]).
    pub items: Vec<Diagnostic>,
    /// Errors found beyond [`MAX_DIAGNOSTICS`].
    pub omitted: usize,
}

impl Diagnostics {
    /// An empty set for `file`.
    pub fn new(file: &str) -> Diagnostics {
        Diagnostics { file: file.to_string(), items: Vec::new(), omitted: 0 }
    }

    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        if self.items.len() < MAX_DIAGNOSTICS {
            self.items.push(d);
        } else {
            self.omitted += 1;
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorts by position; file-wide errors last.
    pub(crate) fn sort(&mut self) {
        self.items.sort_by_key(|d| match &d.location {
            Some(l) => (0, l.line, l.col),
            None => (1, 0, 0),
        });
    }

    /// The first diagnostic's one-line headline (`FILE:LINE:COL: message`).
    pub fn headline(&self) -> String {
        self.headlines().into_iter().next().unwrap_or_default()
    }

    /// Every diagnostic's headline.
    pub fn headlines(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                let mut s = String::new();
                d.render(&self.file, &mut s);
                s.lines().next().unwrap_or_default().to_string()
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        for d in &self.items {
            d.render(&self.file, &mut s);
        }
        if self.omitted > 0 {
            s.push_str(&format!("{}: {} more error(s) not shown\n", self.file, self.omitted));
        }
        f.write_str(s.trim_end_matches('\n'))
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_column() {
        let d = Diagnostic::at(3, "a\tb = x", 6, "boom");
        let mut s = String::new();
        d.render("f.cfg", &mut s);
        assert_eq!(s, "f.cfg:3:7: boom\n    a\tb = x\n     \t    ^\n");
    }

    #[test]
    fn long_lines_are_windowed() {
        let text = "x".repeat(5000);
        let d = Diagnostic::at(1, &text, 4096, "line too long");
        let mut s = String::new();
        d.render("f", &mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[1].len() < 120, "{}", lines[1]);
        let caret = lines[2].find('^').unwrap();
        assert_eq!(&lines[1][caret - 1..caret + 1], "xx");
        assert!(lines[0].starts_with("f:1:4097: "));
    }
}
