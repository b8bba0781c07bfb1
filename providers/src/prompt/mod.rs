//! The text a model is shown for a completion, until per-family FIM templates arrive: the
//! prefix and suffix cut to a budget, a user's `fim_template` filled in, or a hole-filling
//! instruction for chat models. And the little that is done to what comes back: a completion
//! made only of whitespace is no completion.

use reaper_core::schema::CompletionRequest;
use reaper_core::text::{head, tail};

/// Bytes of the text before the cursor a model is shown (about 1,500 tokens of code: enough
/// context for a line, small enough for a 2,048-token context and a fast prompt evaluation).
pub const PREFIX_BUDGET: usize = 6 * 1024;
/// Bytes of the text after the cursor a model is shown.
pub const SUFFIX_BUDGET: usize = 2 * 1024;

/// Where a completion stops unless the model ends it first: a blank line ends the block the
/// cursor is in.
pub const STOP: &[&str] = &["\n\n"];

/// The text around the cursor within budget.
#[derive(Debug, Clone, Copy)]
pub struct Around<'a> {
    /// The end of the text before the cursor.
    pub prefix: &'a str,
    /// The start of the text after the cursor.
    pub suffix: &'a str,
}

impl<'a> Around<'a> {
    /// The budgeted text around the cursor of `request`.
    pub fn of(request: &'a CompletionRequest) -> Around<'a> {
        Around {
            prefix: tail(&request.prefix, PREFIX_BUDGET),
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

/// Instructions for a chat model asked to fill the hole at the cursor.
pub const HOLE_FILLER_SYSTEM: &str = "You are a code completion engine inside an editor. \
You are shown a file with the marker <CURSOR> where the user's cursor is. Reply with exactly \
the code to insert at <CURSOR>: no explanation, no markdown fences, no repetition of the code \
before or after the cursor. If nothing should be inserted, reply with nothing.";

/// The user message for a hole-filling chat model.
pub fn hole_filler_user(request: &CompletionRequest, around: Around<'_>) -> String {
    let file = request.file_path.as_deref().unwrap_or("untitled");
    format!(
        "File {file} ({}):\n{}<CURSOR>{}",
        request.language, around.prefix, around.suffix
    )
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

/// A completion is nothing when it is only whitespace.
pub fn nothing_if_blank(text: String) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        text
    }
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
        let around = Around::of(&request);
        assert!(around.prefix.ends_with("near") && around.prefix.len() == PREFIX_BUDGET);
        assert!(around.suffix.starts_with("after") && around.suffix.len() == SUFFIX_BUDGET);
    }

    #[test]
    fn fences_around_a_chat_answer_are_dropped() {
        assert_eq!(strip_fences("```rust\nlet x = 1;\n```"), "let x = 1;");
        assert_eq!(strip_fences("\n```\nfoo()\n"), "foo()");
        assert_eq!(strip_fences("x.len()"), "x.len()");
        assert_eq!(nothing_if_blank(" \n\t".into()), "");
        assert_eq!(nothing_if_blank(" x".into()), " x");
    }
}
