//! What agent-supplied text may hold: shared by the report families and command output, below both.

/// Longest agent-supplied text (names, paths, hosts, versions), in bytes.
pub const MAX_TEXT: usize = 512;

/// Whether `c` may not appear in agent-supplied text: every C0 control (tab and newline included), DEL, every C1
/// control, and the Unicode bidirectional formatting characters (embeddings, overrides, isolates and marks) that
/// can make a terminal, a mail reader or a log viewer show text other than what was sent.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}
