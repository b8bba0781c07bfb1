//! An open document's text and LSP positions in it.
//!
//! LSP counts a position's `character` in UTF-16 code units unless client and server agreed on
//! UTF-8 at `initialize` (`positionEncoding`); lines end at `\n`, `\r\n` or `\r`. A position
//! past the end of its line means the end of the line, and a line past the last means the end
//! of the text (the specification's rule, which editors rely on after a deletion). A position
//! inside a character (between the two halves of a surrogate pair, or inside a UTF-8 sequence)
//! is not one an editor sends; it is taken as the start of that character, never as a byte
//! offset that would split it.

use lsp_types::{Position, Range};

/// How a position's `character` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionEncoding {
    /// UTF-16 code units: LSP's default, what VS Code and most clients use.
    Utf16,
    /// Bytes of UTF-8: offered by Neovim and others; no conversion at all.
    Utf8,
}

impl PositionEncoding {
    /// The encoding's name in `initialize` (`utf-16`, `utf-8`).
    pub fn name(self) -> &'static str {
        match self {
            PositionEncoding::Utf16 => "utf-16",
            PositionEncoding::Utf8 => "utf-8",
        }
    }

    fn units(self, c: char) -> u32 {
        match self {
            PositionEncoding::Utf16 => c.len_utf16() as u32,
            PositionEncoding::Utf8 => c.len_utf8() as u32,
        }
    }
}

/// An open document, as the editor last described it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The whole text.
    pub text: String,
    /// The editor's `languageId` (`rust`, `python`, `typescriptreact`…).
    pub language: String,
    /// The editor's version of the text.
    pub version: i32,
}

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The document would grow past the bridge's budget for one document.
    #[error(
        "the document would be {bytes} bytes, over the bridge's limit of {limit}: it is kept as it was"
    )]
    TooLarge {
        /// Its size after the edit.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

impl Document {
    /// Replaces `range` (or the whole text when `None`) with `new_text`, unless the result
    /// would be larger than `limit` bytes.
    pub fn apply(
        &mut self,
        range: Option<Range>,
        new_text: &str,
        encoding: PositionEncoding,
        limit: usize,
    ) -> Result<(), EditError> {
        let (start, end) = match range {
            None => (0, self.text.len()),
            Some(range) => {
                let a = offset(&self.text, range.start, encoding);
                let b = offset(&self.text, range.end, encoding);
                (a.min(b), a.max(b))
            }
        };
        let bytes = self.text.len() - (end - start) + new_text.len();
        if bytes > limit {
            return Err(EditError::TooLarge { bytes, limit });
        }
        self.text.replace_range(start..end, new_text);
        Ok(())
    }
}

/// The byte offset of `position` in `text` (always on a character boundary).
pub fn offset(text: &str, position: Position, encoding: PositionEncoding) -> usize {
    let Some(start) = line_start(text, position.line) else {
        return text.len();
    };
    let mut units = 0u32;
    for (i, c) in text[start..].char_indices() {
        if c == '\n' || c == '\r' {
            return start + i;
        }
        let next = units + encoding.units(c);
        if next > position.character {
            return start + i;
        }
        units = next;
    }
    text.len()
}

/// The position of byte `offset` in `text` (an offset inside a character counts as its start).
pub fn position(text: &str, offset: usize, encoding: PositionEncoding) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let mut line = 0u32;
    let mut line_start = 0usize;
    let bytes = text.as_bytes();
    for (i, &b) in bytes[..offset].iter().enumerate() {
        let ends_line = b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
        if ends_line {
            line += 1;
            line_start = i + 1;
        }
    }
    // A `\r` just before the offset whose `\n` is after it: the offset sits inside a line
    // break, which is the end of the line the `\r` ends.
    let line_text = &before[line_start..];
    let line_text = line_text.strip_suffix('\r').unwrap_or(line_text);
    let character = line_text.chars().map(|c| encoding.units(c)).sum();
    Position { line, character }
}

/// The byte offset where line `line` (0-based) starts, if the text has that many lines.
fn line_start(text: &str, line: u32) -> Option<usize> {
    if line == 0 {
        return Some(0);
    }
    let bytes = text.as_bytes();
    let mut seen = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' || b == b'\r' {
            if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            seen += 1;
            if seen == line {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

/// The last `max` bytes of `text`, starting on a character boundary, preferably at a line
/// start when one falls within the first eighth of what is kept (a prompt that starts mid-line
/// reads as garbage to a model).
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut from = text.len() - max;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let slack = max / 8;
    if let Some(newline) = text[from..].find('\n').filter(|&n| n < slack) {
        from += newline + 1;
    }
    &text[from..]
}

/// The first `max` bytes of `text`, ending on a character boundary.
pub fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut to = max;
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    &text[..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Position {
        Position { line, character }
    }

    #[test]
    fn positions_count_utf16_units_or_utf8_bytes() {
        // "é" is 2 bytes, 1 UTF-16 unit; "😀" is 4 bytes, 2 UTF-16 units (a surrogate pair).
        let text = "let é = \"😀\"; x\nsecond";
        let x = text.find('x').unwrap();
        assert_eq!(offset(text, pos(0, 14), PositionEncoding::Utf16), x);
        assert_eq!(offset(text, pos(0, x as u32), PositionEncoding::Utf8), x);
        assert_eq!(position(text, x, PositionEncoding::Utf16), pos(0, 14));
        assert_eq!(position(text, x, PositionEncoding::Utf8), pos(0, x as u32));
        let second = text.find("second").unwrap();
        assert_eq!(offset(text, pos(1, 0), PositionEncoding::Utf16), second);
        assert_eq!(offset(text, pos(1, 3), PositionEncoding::Utf16), second + 3);
    }

    #[test]
    fn a_position_inside_a_character_is_its_start() {
        let text = "a😀b";
        // UTF-16: 'a' = 0, the emoji = 1..3, 'b' = 3. Character 2 is between the surrogates.
        assert_eq!(offset(text, pos(0, 2), PositionEncoding::Utf16), 1);
        assert_eq!(offset(text, pos(0, 3), PositionEncoding::Utf16), 5);
        // UTF-8: byte 3 is inside the emoji's four bytes.
        assert_eq!(offset(text, pos(0, 3), PositionEncoding::Utf8), 1);
        assert_eq!(position(text, 3, PositionEncoding::Utf16), pos(0, 1));
    }

    #[test]
    fn past_the_end_of_a_line_or_the_text_clamps() {
        let text = "ab\r\ncd\rlast";
        assert_eq!(offset(text, pos(0, 99), PositionEncoding::Utf16), 2);
        assert_eq!(offset(text, pos(1, 0), PositionEncoding::Utf16), 4);
        assert_eq!(offset(text, pos(2, 1), PositionEncoding::Utf16), 8);
        assert_eq!(offset(text, pos(7, 0), PositionEncoding::Utf16), text.len());
        assert_eq!(position(text, 4, PositionEncoding::Utf16), pos(1, 0));
        assert_eq!(position(text, 3, PositionEncoding::Utf16), pos(0, 2));
        assert_eq!(
            position(text, text.len(), PositionEncoding::Utf8),
            pos(2, 4)
        );
    }

    #[test]
    fn incremental_and_full_edits_apply_in_order() {
        let mut doc = Document {
            text: "fn main() {\n    let 😀 = 1;\n}\n".to_owned(),
            language: "rust".to_owned(),
            version: 1,
        };
        let range = |a: Position, b: Position| Some(Range { start: a, end: b });
        // Replace the emoji (UTF-16 characters 8..10 of line 1) with "x".
        doc.apply(
            range(pos(1, 8), pos(1, 10)),
            "x",
            PositionEncoding::Utf16,
            1 << 20,
        )
        .unwrap();
        assert_eq!(doc.text, "fn main() {\n    let x = 1;\n}\n");
        // Insert a line, then delete across lines.
        doc.apply(
            range(pos(2, 0), pos(2, 0)),
            "    x\n",
            PositionEncoding::Utf16,
            1 << 20,
        )
        .unwrap();
        doc.apply(
            range(pos(1, 14), pos(2, 5)),
            "",
            PositionEncoding::Utf16,
            1 << 20,
        )
        .unwrap();
        assert_eq!(doc.text, "fn main() {\n    let x = 1;\n}\n");
        doc.apply(None, "new", PositionEncoding::Utf8, 1 << 20)
            .unwrap();
        assert_eq!(doc.text, "new");
        let too_big = doc.apply(None, "0123456789", PositionEncoding::Utf8, 8);
        assert_eq!(
            too_big,
            Err(EditError::TooLarge {
                bytes: 10,
                limit: 8
            })
        );
        assert_eq!(doc.text, "new", "a refused edit loses nothing");
    }

    #[test]
    fn bounded_prefix_and_suffix_keep_characters_whole() {
        assert_eq!(tail("ééé\nabc", 5), "\nabc");
        let lines = format!("{}\n{}", "x".repeat(30), "a".repeat(60));
        assert_eq!(
            tail(&lines, 64),
            "a".repeat(60),
            "starts at the line start near the cut"
        );
        assert_eq!(tail("aéb", 2), "b");
        assert_eq!(head("aéb", 2), "a");
        assert_eq!(head("abc", 10), "abc");
        assert_eq!(tail("abc", 10), "abc");
    }
}
