//! The text a model is shown for a completion, and what is done to its answer.
//!
//! The prefix and suffix are cut to a budget ([`Around`]); the repository context
//! ([`context`]) takes its bytes from the prefix's budget, so a prompt never grows past what a
//! 2,048-token model holds. [`fim`] arranges them with the tokens of the model's family (or
//! the user's `fim_template`), or as a hole-filling instruction for chat models; [`tidy`]
//! fixes the answer before an editor shows it.

pub mod context;
pub mod fim;
pub mod tidy;

use reaper_core::schema::CompletionRequest;
use reaper_core::text::head;

pub use context::{RepoContext, Snippet};
pub use fim::{Family, Template};

/// Bytes of the text before the cursor and of the repository context a model is shown
/// together (about 1,500 tokens of code: enough context for a line, small enough for a
/// 2,048-token context and a fast prompt evaluation).
pub const PREFIX_BUDGET: usize = 6 * 1024;
/// The step in which the start of the prefix a model is shown moves through a file.
///
/// A model server keeps the previous prompt's evaluation and reuses the part the next prompt
/// begins with (llama.cpp's `cache_prompt`, Ollama's context). A prefix cut at exactly the
/// last 6 KiB starts one byte later after every keystroke, so no two prompts share a
/// beginning and every keystroke pays for the whole prompt again: measured with
/// `reaper-bench keystrokes` deep in a file, the model never answered before the next key.
/// Cut on a 1 KiB grid (then at the next line's start), the start stays put for a thousand
/// keystrokes and each prompt re-evaluates only what was typed.
pub const PREFIX_STEP: usize = 1024;

/// Bytes of the text after the cursor a model is shown.
pub const SUFFIX_BUDGET: usize = 2 * 1024;

/// Where a completion stops unless the model ends it first: at the end of its line when one
/// line is wanted ([`tidy::wants_block`]), else at a blank line (the end of the block).
pub fn stop(request: &CompletionRequest) -> &'static [&'static str] {
    if tidy::wants_block(&request.prefix, &request.suffix) {
        &["\n\n"]
    } else {
        &["\n"]
    }
}

/// The text around the cursor within budget.
#[derive(Debug, Clone, Copy)]
pub struct Around<'a> {
    /// The end of the text before the cursor.
    pub prefix: &'a str,
    /// The start of the text after the cursor.
    pub suffix: &'a str,
}

impl<'a> Around<'a> {
    /// The budgeted text around the cursor of `request`, leaving what `context` takes in a
    /// prompt out of the prefix's budget (at most half of it).
    pub fn of(request: &'a CompletionRequest, context: &RepoContext) -> Around<'a> {
        let prefix_budget = PREFIX_BUDGET - context.prompt_bytes().min(PREFIX_BUDGET / 2);
        Around {
            prefix: steady_tail(&request.prefix, prefix_budget),
            suffix: head(&request.suffix, SUFFIX_BUDGET),
        }
    }

    /// `template` with `{prefix}` and `{suffix}` replaced (each once, left to right, so text
    /// that itself contains "{suffix}" is not touched again).
    pub fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + self.prefix.len() + self.suffix.len());
        let mut rest = template;
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{prefix}") {
                out.push_str(self.prefix);
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{suffix}") {
                out.push_str(self.suffix);
                rest = after;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

/// At most the last `budget` bytes of `text`, starting on a [`PREFIX_STEP`] grid counted from
/// the start of `text`, at the start of a line when one begins within the next step, and on a
/// character boundary.
fn steady_tail(text: &str, budget: usize) -> &str {
    if text.len() <= budget {
        return text;
    }
    let earliest = text.len() - budget;
    let mut start = earliest.div_ceil(PREFIX_STEP) * PREFIX_STEP;
    if start >= text.len() {
        // A budget smaller than a step: the plain cut.
        start = earliest;
    }
    if let Some(newline) = text.as_bytes()[start..(start + PREFIX_STEP).min(text.len())]
        .iter()
        .position(|&b| b == b'\n')
    {
        start += newline + 1;
    }
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Instructions for a chat model asked to fill the hole at the cursor.
pub const HOLE_FILLER_SYSTEM: &str = "You are a code completion engine inside an editor. \
You are shown a file with the marker <CURSOR> where the user's cursor is. Reply with exactly \
the code to insert at <CURSOR>: no explanation, no markdown fences, no repetition of the code \
before or after the cursor. If nothing should be inserted, reply with nothing.";

/// The user message for a hole-filling chat model.
pub fn hole_filler_user(
    request: &CompletionRequest,
    around: Around<'_>,
    context: &RepoContext,
) -> String {
    let file = request.file_path.as_deref().unwrap_or("untitled");
    let mut message = String::new();
    if !context.is_empty() {
        message.push_str("Related code from other files of the repository:\n");
        message.push_str(&context.as_plain_text());
        message.push('\n');
    }
    message.push_str(&format!(
        "File {file} ({}):\n{}<CURSOR>{}",
        request.language, around.prefix, around.suffix
    ));
    message
}

/// What a chat model sends back around the code: a markdown fence some add despite being
/// told not to.
pub fn strip_fences(answer: &str) -> &str {
    let trimmed = answer.trim_start_matches('\n');
    let Some(rest) = trimmed.strip_prefix("```") else {
        return answer;
    };
    // Drop the fence line (it may name a language), and the closing fence if there is one.
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.rsplit_once("```")
        .map_or(body, |(inside, _)| inside)
        .trim_end_matches('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_once_each() {
        let around = Around {
            prefix: "let a = {suffix};",
            suffix: "}",
        };
        let filled = around.fill("<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>{other}");
        assert_eq!(
            filled,
            "<fim_prefix>let a = {suffix};<fim_suffix>}<fim_middle>{other}"
        );
    }

    #[test]
    fn budgets_keep_the_text_nearest_the_cursor() {
        let request = CompletionRequest {
            prefix: format!("{}near", "x".repeat(PREFIX_BUDGET)),
            suffix: format!("after{}", "y".repeat(SUFFIX_BUDGET)),
            language: "rust".into(),
            file_path: None,
            context: None,
        };
        let around = Around::of(&request, &RepoContext::EMPTY);
        assert!(around.prefix.ends_with("near") && around.prefix.len() <= PREFIX_BUDGET);
        assert!(around.prefix.len() > PREFIX_BUDGET - PREFIX_STEP);
        let context = RepoContext::new(
            "r".into(),
            "a.rs".into(),
            vec![Snippet {
                path: "b.rs".into(),
                text: "x\n".repeat(500),
            }],
        );
        let around = Around::of(&request, &context);
        assert!(context.prompt_bytes() > 1000);
        assert!(
            around.prefix.len() <= PREFIX_BUDGET - context.prompt_bytes(),
            "context takes from the prefix"
        );
        assert!(around.suffix.starts_with("after") && around.suffix.len() == SUFFIX_BUDGET);
    }

    #[test]
    fn the_prefix_start_stays_put_while_the_user_types() {
        // A file of 40-byte lines, typed one character at a time past the budget: the text
        // shown starts at the same line for a whole step, so a model server's prompt cache
        // is reused from one keystroke to the next.
        let file: String = (0..400)
            .map(|i| format!("let value_{i:04} = compute({i:05});\n"))
            .collect();
        let mut starts = std::collections::BTreeSet::new();
        for typed in 7000..7000 + PREFIX_STEP {
            let shown = steady_tail(&file[..typed], PREFIX_BUDGET);
            assert!(shown.len() <= PREFIX_BUDGET);
            assert!(shown.starts_with("let value_"), "a whole line first");
            starts.insert(typed - shown.len());
        }
        assert!(
            starts.len() <= 2,
            "the start moved {} times in one step",
            starts.len() - 1
        );
        assert_eq!(steady_tail("short", PREFIX_BUDGET), "short");
        assert_eq!(steady_tail("ééééé", 3), "é", "never inside a character");
    }

    #[test]
    fn fences_around_a_chat_answer_are_dropped() {
        assert_eq!(strip_fences("```rust\nlet x = 1;\n```"), "let x = 1;");
        assert_eq!(strip_fences("\n```\nfoo()\n"), "foo()");
        assert_eq!(strip_fences("x.len()"), "x.len()");
    }
}
