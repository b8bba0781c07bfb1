//! What is done to a model's answer before an editor shows it: the fixes for what users of
//! every assistant complain about — the duplicated `)` or `}`, whole lines that are already
//! below the cursor, a second line proposed in the middle of a line, ten lines where one was
//! wanted, answers made of whitespace.
//!
//! The rules, in order:
//! 1. **Mid-line**: when the line after the cursor has text, only the answer's first line is
//!    kept (a line is being edited, not written).
//! 2. **Lines**: more than one line is kept only at the start of a block — the text before the
//!    cursor on its line ends with an opener (`{`, `(`, `[`, `:`, `=>`, `->`, `do`, `then`), or
//!    the line is blank and the last non-blank line ends with one. There, the block's lines
//!    are kept until one leaves the block (less indented than the block's body), and at most
//!    [`MAX_LINES`].
//! 3. **Repeats of the text after the cursor**: the answer is cut before a line that is the
//!    next non-blank line after the cursor (the duplicated `}` or statement), at the first
//!    occurrence of the rest of the cursor's line when that is distinctive (4 or more
//!    characters), and the end of the answer that the rest of the line already has (an
//!    auto-closed `)`, `"`, `;`) is dropped.
//! 4. **Nothing**: an answer of whitespace is no answer; trailing whitespace is dropped unless
//!    the cursor is mid-line (where a space may separate the insertion from what follows).

/// Lines a completion may have at most.
pub const MAX_LINES: usize = 12;

/// Whether more than one line is wanted at the cursor (rules 1 and 2). Decided before a
/// model is asked, so that a one-line answer is asked to stop at the end of its line: a model
/// left to its blank-line stop writes its whole budget of tokens (64 for SmolLM2 in the
/// keystroke replay, about a second) of which only the first line is kept.
pub fn wants_block(prefix: &str, suffix: &str) -> bool {
    let rest_of_line = suffix.split('\n').next().unwrap_or("");
    rest_of_line.trim().is_empty() && starts_block(prefix)
}

/// The answer as an editor should show it, given the text before and after the cursor.
pub fn tidy(prefix: &str, suffix: &str, answer: &str) -> String {
    let answer = answer.replace("\r\n", "\n");
    let rest_of_line = suffix.split('\n').next().unwrap_or("");
    let mid_line = !rest_of_line.trim().is_empty();
    let next_line = suffix
        .split('\n')
        .skip(1)
        .find(|l| !l.trim().is_empty())
        .map(str::trim);

    let mut text: &str = &answer;
    if !wants_block(prefix, suffix) {
        text = text.split('\n').next().unwrap_or("");
    } else {
        text = keep_block(prefix, text, next_line);
    }

    // The rest of the cursor's line, when distinctive, marks where the answer starts
    // repeating it.
    let rest = rest_of_line.trim();
    let first_line = text.split('\n').next().unwrap_or("");
    if rest.chars().count() >= 4 {
        if let Some(at) = first_line.find(rest) {
            text = &text[..at];
        }
    }
    // Its end that the line after the cursor already has.
    if !rest.is_empty() && !text.contains('\n') {
        let overlap = (1..=text.len().min(rest.len()))
            .rev()
            .find(|&k| rest.is_char_boundary(k) && text.ends_with(&rest[..k]));
        if let Some(k) = overlap {
            text = &text[..text.len() - k];
        }
    }

    let text = if mid_line { text } else { text.trim_end() };
    if text.trim().is_empty() {
        String::new()
    } else {
        text.to_owned()
    }
}

/// Whether the cursor is at the start of a block, where a multi-line answer is wanted.
fn starts_block(prefix: &str) -> bool {
    let (before_line, current) = prefix.rsplit_once('\n').unwrap_or(("", prefix));
    let line = if current.trim().is_empty() {
        match before_line.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => line,
            None => return false,
        }
    } else {
        current
    };
    let line = line.trim_end();
    ["{", "(", "[", ":", "=>", "->", " do", " then", "="]
        .iter()
        .any(|opener| line.ends_with(opener))
        && !line.ends_with("::")
}

/// The lines of `text` that belong to the block the cursor opens, at most [`MAX_LINES`],
/// stopping before the suffix's next line or the first line that leaves the block.
fn keep_block<'a>(prefix: &str, text: &'a str, next_line: Option<&str>) -> &'a str {
    let current = prefix.rsplit('\n').next().unwrap_or(prefix);
    // The body's indentation: the first line of the answer that starts a line, or the
    // cursor's own column when the answer continues a blank line.
    let cursor_indent = if current.trim().is_empty() {
        Some(current.len())
    } else {
        None
    };
    let mut body_indent = cursor_indent;
    let mut end = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i >= MAX_LINES {
            break;
        }
        let content = line.trim_end_matches('\n');
        let starts_line = i > 0 || cursor_indent.is_some();
        if starts_line && !content.trim().is_empty() {
            let indent = if i == 0 {
                current.len() + indent_of(content)
            } else {
                indent_of(content)
            };
            if next_line.is_some_and(|n| n == content.trim()) {
                break;
            }
            match body_indent {
                None => body_indent = Some(indent),
                Some(body) if indent < body => {
                    // The line closing the block is kept when the text after the cursor
                    // does not close it already; anything else belongs elsewhere.
                    if is_closer(content.trim()) && i > 0 {
                        end += content.len();
                    }
                    break;
                }
                Some(_) => {}
            }
        }
        end += line.len();
    }
    &text[..end]
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_closer(line: &str) -> bool {
    line.starts_with(['}', ')', ']']) || line == "end" || line == "fi" || line == "done"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auto_closed_bracket_is_not_doubled() {
        // The editor closed the parenthesis; the model closes it again.
        assert_eq!(tidy("let n = compute(", ");\n", "a, b);"), "a, b");
        assert_eq!(tidy("println!(\"", "\");\n", "hello\");"), "hello");
    }

    #[test]
    fn a_closing_brace_already_below_is_not_repeated() {
        let prefix = "fn main() {\n    ";
        assert_eq!(
            tidy(prefix, "\n}\n", "println!(\"hi\");\n}"),
            "println!(\"hi\");"
        );
    }

    #[test]
    fn lines_already_below_the_cursor_are_not_repeated() {
        let prefix = "fn run(&mut self) {\n    ";
        let suffix = "\n    self.cleanup();\n}\n";
        let answer = "let a = self.start();\n    self.wait(a);\n    self.cleanup();\n}";
        assert_eq!(
            tidy(prefix, suffix, answer),
            "let a = self.start();\n    self.wait(a);"
        );
    }

    #[test]
    fn mid_line_keeps_one_line_and_stops_where_the_line_resumes() {
        // Cursor between `foo(` and `bar)`: the model writes the argument and then the rest.
        assert_eq!(
            tidy("let x = foo(", "bar);\n", "baz, bar);\nlet y = 2;"),
            "baz, "
        );
        assert_eq!(
            tidy("if ready ", "{\n", "&& !closed {\n    go();\n}"),
            "&& !closed "
        );
    }

    #[test]
    fn outside_a_block_start_one_line_is_kept() {
        assert_eq!(
            tidy("let a = 1;\nlet b", "\n", " = 2;\nlet c = 3;"),
            " = 2;"
        );
    }

    #[test]
    fn a_block_start_gets_the_block_and_no_more() {
        let prefix = "def area(r):\n    ";
        let answer = "pi = 3.14159\n    return pi * r * r\nprint(area(2))";
        assert_eq!(
            tidy(prefix, "", answer),
            "pi = 3.14159\n    return pi * r * r"
        );
        // A new block at the end of a file: its closing brace is wanted.
        let prefix = "impl Point {\n    fn norm(&self) -> f64 {\n        ";
        let answer = "(self.x * self.x + self.y * self.y).sqrt()\n    }\n\n    fn other() {}";
        assert_eq!(
            tidy(prefix, "", answer),
            "(self.x * self.x + self.y * self.y).sqrt()\n    }"
        );
    }

    #[test]
    fn long_answers_are_capped() {
        let answer: String = (0..30).map(|i| format!("    step({i});\n")).collect();
        let tidied = tidy("fn many() {\n", "\n}", &answer);
        assert_eq!(tidied.lines().count(), MAX_LINES);
    }

    #[test]
    fn whitespace_is_no_answer() {
        assert_eq!(tidy("let a = ", "\n", " \n\t"), "");
        assert_eq!(tidy("fn f() {\n    ", "\n}", "\n\n"), "");
        assert_eq!(tidy("let a = ", "\n", "1;  \n"), "1;");
    }
}
