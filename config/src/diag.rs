//! Located diagnostics: one problem in one config file, with its line and column, and the collector that turns byte
//! offsets from the parsers into those positions.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem (error or warning) at a place in a config file. Lines and columns count from 1; columns count
/// characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Maps byte offsets of one source text to 1-based line and column.
#[derive(Debug)]
pub(crate) struct LineIndex<'s> {
    source: &'s str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        let starts =
            std::iter::once(0).chain(source.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1));
        Self { source, starts: starts.collect() }
    }

    /// Line and column of a byte offset; offsets past the end map to the end of the text.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        // Count characters; an offset inside a multi-byte character counts as that character.
        let column = self.source.get(start..offset).map_or_else(
            || self.source[start..].char_indices().take_while(|&(i, _)| start + i < offset).count(),
            |s| s.chars().count(),
        );
        (line, column + 1)
    }
}

/// A place in a file, for diagnostics raised after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Loc {
    pub(crate) fn diag(self, file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic { file: file.to_path_buf(), line: self.line, column: self.column, message: message.into() }
    }
}

/// Collects the diagnostics of one file, converting byte offsets as they arrive.
#[derive(Debug)]
pub(crate) struct Diags<'s> {
    file: PathBuf,
    index: LineIndex<'s>,
    pub(crate) items: Vec<(usize, Diagnostic)>,
}

impl<'s> Diags<'s> {
    pub(crate) fn new(file: &Path, source: &'s str) -> Self {
        Self { file: file.to_path_buf(), index: LineIndex::new(source), items: Vec::new() }
    }

    /// Records a problem at a byte offset of the source.
    pub(crate) fn at(&mut self, offset: usize, message: impl Into<String>) {
        let (line, column) = self.index.position(offset);
        let d = Diagnostic { file: self.file.clone(), line, column, message: message.into() };
        self.items.push((offset, d));
    }

    /// The line and column of a byte offset, kept for diagnostics raised later (after both files are read).
    pub(crate) fn loc(&self, offset: usize) -> Loc {
        let (line, column) = self.index.position(offset);
        Loc { line, column }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The diagnostics in source order (stable for problems at the same place).
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by_key(|(offset, _)| *offset);
        self.items.into_iter().map(|(_, d)| d).collect()
    }
}

/// Formats a list of diagnostics one per line, as `ConfigError` displays them.
pub(crate) fn list(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let idx = LineIndex::new("ab\ncdé\nx");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(2), (1, 3)); // the newline itself
        assert_eq!(idx.position(3), (2, 1));
        // 'é' is two bytes: the 'x' on line 3 follows it.
        assert_eq!(idx.position(8), (3, 1));
        assert_eq!(idx.position(7), (2, 4)); // the newline after 'é'
        assert_eq!(idx.position(1000), (3, 2));
    }

    #[test]
    fn display_is_file_line_column_message() {
        let mut d = Diags::new(Path::new("dir/clients.xml"), "a\nbc");
        d.at(2, "second");
        d.at(0, "first");
        let all = d.into_sorted();
        assert_eq!(all[0].to_string(), "dir/clients.xml:1:1: first");
        assert_eq!(all[1].to_string(), "dir/clients.xml:2:1: second");
        assert_eq!(list(&all), "dir/clients.xml:1:1: first\ndir/clients.xml:2:1: second");
    }
}
