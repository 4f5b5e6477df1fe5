//! Making stored text safe to print on a terminal: control characters (ANSI/OSC escapes, carriage returns,
//! backspaces, C1 controls) come out as visible `\u{..}` escapes, and table cells are bounded in width.

/// `text` with every control character except `keep_newlines`' `\n` written as `\u{hex}`.
pub fn control(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Most characters of one table cell; longer text is cut and ends in `…`.
pub const CELL_MAX: usize = 64;

/// One table cell: escaped, on one line, at most [`CELL_MAX`] characters.
pub fn cell(text: &str) -> String {
    let mut out: String = text.chars().take(CELL_MAX * 2).collect();
    out = control(&out, false);
    if out.chars().count() > CELL_MAX || text.chars().count() > CELL_MAX * 2 {
        out = out.chars().take(CELL_MAX - 1).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_and_bounds_cells() {
        let evil = "1.0\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{9b}x";
        let shown = control(evil, false);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert_eq!(control("a\nb", true), "a\nb");
        assert_eq!(control("a\nb", false), "a\\u{a}b");
        let long = "v".repeat(1 << 20);
        assert_eq!(cell(&long).chars().count(), CELL_MAX);
        assert_eq!(cell("0.1.0"), "0.1.0");
    }
}
