//! Fill-in-the-middle prompts per model family.
//!
//! A code model fills the hole at the cursor only when the prompt uses the special tokens it
//! was trained with; any other arrangement and it continues the suffix, or chats. The family
//! is recognised from the model's name (`qwen2.5-coder:7b-base`, `bigcode/starcoder2-3b`,
//! `codellama:7b-code`, ...), and `fim_template` in `reaper.toml` overrides it, either with a
//! family's name or with a template of the user's own. A model of no known family is given the
//! text before the cursor alone (it can still continue code), except chat-only models, which
//! get the hole-filling instruction instead. Each family also has the tokens that end its
//! answer, sent as stop sequences so a server that does not stop on them by itself does not
//! ramble into another file.
//!
//! The templates follow each model's card: StarCoder's and CodeGemma's `<fim_*>` tokens, Code
//! Llama's `<PRE> <SUF> <MID>`, DeepSeek-Coder's `<｜fim▁begin｜>` (full-width bars), Qwen2.5-
//! Coder's `<|fim_*|>` with its repository form (`<|repo_name|>`, `<|file_sep|>` before each
//! file), and Codestral's suffix-first `[SUFFIX]…[PREFIX]…`.

use reaper_core::schema::CompletionRequest;

use super::context::RepoContext;
use super::Around;

/// A family of models that share FIM tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Family {
    /// StarCoder, StarCoder2, SantaCoder, StableCode, Refact.
    StarCoder,
    /// Code Llama (the base and code variants).
    CodeLlama,
    /// DeepSeek-Coder (V1 and V2).
    DeepSeekCoder,
    /// Qwen2.5-Coder (and Qwen3-Coder, which kept its tokens).
    QwenCoder,
    /// Mistral's Codestral.
    Codestral,
    /// Google's CodeGemma.
    CodeGemma,
    /// A chat-only model (GPT-4o, Claude, ...): asked to fill the hole in words.
    Chat,
    /// Unknown: completes from the text before the cursor.
    Plain,
}

/// Every family with the name `fim_template` can give it, and the names it is known by.
const FAMILIES: &[(Family, &str)] = &[
    (Family::StarCoder, "starcoder"),
    (Family::CodeLlama, "codellama"),
    (Family::DeepSeekCoder, "deepseek-coder"),
    (Family::QwenCoder, "qwen-coder"),
    (Family::Codestral, "codestral"),
    (Family::CodeGemma, "codegemma"),
    (Family::Chat, "chat"),
    (Family::Plain, "none"),
];

impl Family {
    /// The family `fim_template` names, if it names one.
    pub fn named(name: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|&(f, _)| f)
    }

    /// The names `fim_template` accepts.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FAMILIES.iter().map(|&(_, n)| n)
    }

    /// The family of a model, from its name as the server knows it.
    pub fn of_model(model: &str) -> Family {
        let m = model.to_ascii_lowercase();
        let m = m.rsplit('/').next().unwrap_or(&m);
        let has = |s: &str| m.contains(s);
        if has("starcoder") || has("santacoder") || has("stable-code") || has("refact") {
            Family::StarCoder
        } else if has("codellama") || has("code-llama") || has("code_llama") {
            Family::CodeLlama
        } else if has("deepseek-coder") || has("deepseek_coder") {
            Family::DeepSeekCoder
        } else if has("qwen") && has("coder") {
            Family::QwenCoder
        } else if has("codestral") {
            Family::Codestral
        } else if has("codegemma") {
            Family::CodeGemma
        } else if is_chat_only(m) {
            Family::Chat
        } else {
            Family::Plain
        }
    }

    /// Its name in `reaper.toml` and in logs.
    pub fn name(self) -> &'static str {
        FAMILIES
            .iter()
            .find(|&&(f, _)| f == self)
            .map_or("none", |&(_, n)| n)
    }

    /// Whether its prompt shows the model the text after the cursor.
    pub fn fills_in_the_middle(self) -> bool {
        !matches!(self, Family::Plain)
    }

    /// The tokens that end its answers (at most three: OpenAI's API takes four stop
    /// sequences, and the blank line that ends a block is the fourth).
    pub fn stop(self) -> &'static [&'static str] {
        match self {
            Family::StarCoder => &["<|endoftext|>", "<file_sep>", "<fim_prefix>"],
            Family::CodeLlama => &["<EOT>", "<PRE>", "<SUF>"],
            Family::DeepSeekCoder => &["<｜end▁of▁sentence｜>", "<｜EOT｜>", "<｜fim▁begin｜>"],
            Family::QwenCoder => &["<|endoftext|>", "<|file_sep|>", "<|fim_prefix|>"],
            Family::Codestral => &["</s>", "[PREFIX]", "[SUFFIX]"],
            Family::CodeGemma => &["<|file_separator|>", "<|fim_prefix|>", "<end_of_turn>"],
            Family::Chat | Family::Plain => &[],
        }
    }

    /// The raw prompt for the hole at the cursor, with the repository context before it.
    /// `None` for [`Family::Chat`], which is asked in a conversation instead.
    pub fn prompt(
        self,
        around: &Around<'_>,
        context: &RepoContext,
        language: &str,
    ) -> Option<String> {
        let (p, s) = (around.prefix, around.suffix);
        let comments = || context.as_comments(language);
        Some(match self {
            Family::Chat => return None,
            Family::Plain => format!("{}{p}", comments()),
            Family::StarCoder => {
                format!("<fim_prefix>{}{p}<fim_suffix>{s}<fim_middle>", comments())
            }
            Family::CodeGemma => format!(
                "<|fim_prefix|>{}{p}<|fim_suffix|>{s}<|fim_middle|>",
                comments()
            ),
            Family::CodeLlama => format!("<PRE> {}{p} <SUF>{s} <MID>", comments()),
            Family::DeepSeekCoder => {
                format!(
                    "<｜fim▁begin｜>{}{p}<｜fim▁hole｜>{s}<｜fim▁end｜>",
                    comments()
                )
            }
            Family::Codestral => format!("[SUFFIX]{s}[PREFIX]{}{p}", comments()),
            Family::QwenCoder => {
                // The repository form the model was trained with: each file after a
                // `<|file_sep|>` and its path, the file being edited last.
                let mut out = String::with_capacity(context.bytes() + p.len() + s.len() + 128);
                if !context.is_empty() {
                    out.push_str("<|repo_name|>");
                    out.push_str(context.repo_name());
                    out.push('\n');
                    for snippet in context.snippets_far_to_near() {
                        out.push_str("<|file_sep|>");
                        out.push_str(&snippet.path);
                        out.push('\n');
                        out.push_str(snippet.text.trim_end_matches('\n'));
                        out.push('\n');
                    }
                    out.push_str("<|file_sep|>");
                    out.push_str(context.current_path());
                    out.push('\n');
                }
                out.push_str("<|fim_prefix|>");
                out.push_str(p);
                out.push_str("<|fim_suffix|>");
                out.push_str(s);
                out.push_str("<|fim_middle|>");
                out
            }
        })
    }
}

/// Models served only through a chat API: OpenAI's GPT-4 and later and its o-series, Claude,
/// Gemini. (`gpt-3.5-turbo-instruct` still has `/v1/completions`.)
fn is_chat_only(model: &str) -> bool {
    let chat = [
        "gpt-4",
        "gpt-5",
        "gpt-3.5-turbo",
        "chatgpt",
        "claude",
        "gemini",
    ];
    (chat.iter().any(|c| model.starts_with(c))
        || ["o1", "o3", "o4"]
            .iter()
            .any(|o| model == *o || model.starts_with(&format!("{o}-"))))
        && !model.contains("instruct")
}

/// How a provider builds a completion prompt: a family's template, or the user's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// A known family's tokens.
    Family(Family),
    /// The user's `fim_template`, with `{prefix}` and `{suffix}` in it.
    Custom(String),
}

impl Template {
    /// The template for a provider: `fim_template` if set (a family's name or a template),
    /// else the family recognised from the model's name.
    pub fn choose(configured: Option<&str>, model: &str) -> Template {
        match configured {
            Some(value) => Family::named(value)
                .map_or_else(|| Template::Custom(value.to_owned()), Template::Family),
            None => Template::Family(Family::of_model(model)),
        }
    }

    /// The family, unless the template is the user's own.
    pub fn family(&self) -> Option<Family> {
        match self {
            Template::Family(family) => Some(*family),
            Template::Custom(_) => None,
        }
    }

    /// Whether the prompt shows the text after the cursor.
    pub fn fills_in_the_middle(&self) -> bool {
        match self {
            Template::Family(family) => family.fills_in_the_middle(),
            Template::Custom(template) => template.contains("{suffix}"),
        }
    }

    /// The raw prompt; `None` when the model is asked in a conversation instead.
    pub fn prompt(
        &self,
        around: &Around<'_>,
        context: &RepoContext,
        language: &str,
    ) -> Option<String> {
        match self {
            Template::Family(family) => family.prompt(around, context, language),
            Template::Custom(template) => {
                let context = context.as_comments(language);
                let around = Around {
                    prefix: &format!("{context}{}", around.prefix),
                    suffix: around.suffix,
                };
                Some(around.fill(template))
            }
        }
    }

    /// The stop sequences for `request`: the end of the line or of the block
    /// ([`super::stop`]), then the family's.
    pub fn stop(&self, request: &CompletionRequest) -> Vec<&'static str> {
        let mut stop = super::stop(request).to_vec();
        if let Some(family) = self.family() {
            stop.extend_from_slice(family.stop());
        }
        stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::context::Snippet;

    #[test]
    fn families_are_recognised_from_the_names_servers_use() {
        let cases = [
            ("qwen2.5-coder:7b-base", Family::QwenCoder),
            ("Qwen/Qwen2.5-Coder-1.5B", Family::QwenCoder),
            ("bigcode/starcoder2-3b", Family::StarCoder),
            ("starcoder2:3b", Family::StarCoder),
            ("stable-code:3b-code", Family::StarCoder),
            ("codellama:7b-code", Family::CodeLlama),
            ("deepseek-coder:6.7b-base", Family::DeepSeekCoder),
            ("deepseek-coder-v2:16b", Family::DeepSeekCoder),
            ("codestral-latest", Family::Codestral),
            ("codegemma:2b", Family::CodeGemma),
            ("gpt-4o-mini", Family::Chat),
            ("o3-mini", Family::Chat),
            ("claude-sonnet-4-5", Family::Chat),
            ("gpt-3.5-turbo-instruct", Family::Plain),
            ("smollm2", Family::Plain),
            ("llama3.2:3b", Family::Plain),
        ];
        for (model, family) in cases {
            assert_eq!(Family::of_model(model), family, "{model}");
        }
        assert_eq!(Family::named("Qwen-Coder"), Some(Family::QwenCoder));
        assert_eq!(Family::named("<fim_prefix>{prefix}"), None);
        for name in Family::names() {
            assert_eq!(Family::named(name).map(Family::name), Some(name));
        }
        // The names the configuration accepts are exactly these.
        assert_eq!(
            Family::names().collect::<Vec<_>>(),
            reaper_core::config::FIM_FAMILIES
        );
    }

    #[test]
    fn each_family_gets_its_own_tokens() {
        let around = Around {
            prefix: "fn add(a: i32, b: i32) -> i32 {\n    ",
            suffix: "\n}\n",
        };
        let none = RepoContext::default();
        let p = "fn add(a: i32, b: i32) -> i32 {\n    ";
        let expected = [
            (
                Family::StarCoder,
                format!("<fim_prefix>{p}<fim_suffix>\n}}\n<fim_middle>"),
            ),
            (Family::CodeLlama, format!("<PRE> {p} <SUF>\n}}\n <MID>")),
            (
                Family::DeepSeekCoder,
                format!("<｜fim▁begin｜>{p}<｜fim▁hole｜>\n}}\n<｜fim▁end｜>"),
            ),
            (
                Family::QwenCoder,
                format!("<|fim_prefix|>{p}<|fim_suffix|>\n}}\n<|fim_middle|>"),
            ),
            (Family::Codestral, format!("[SUFFIX]\n}}\n[PREFIX]{p}")),
            (
                Family::CodeGemma,
                format!("<|fim_prefix|>{p}<|fim_suffix|>\n}}\n<|fim_middle|>"),
            ),
        ];
        let prompt = |f: Family| f.prompt(&around, &none, "rust").unwrap();
        for (family, text) in expected {
            assert_eq!(prompt(family), text, "{family:?}");
        }
        assert_eq!(prompt(Family::Plain), around.prefix);
        assert_eq!(Family::Chat.prompt(&around, &none, "rust"), None);
        for (family, _) in FAMILIES {
            assert!(
                family.stop().len() <= 3,
                "{family:?}: OpenAI takes four stops"
            );
        }
        let mut request = CompletionRequest {
            prefix: "fn main() {\n    ".into(),
            suffix: "\n}\n".into(),
            language: "rust".into(),
            file_path: None,
            context: None,
        };
        // At the start of a block the answer may run to a blank line...
        assert_eq!(
            Template::Family(Family::QwenCoder).stop(&request)[0],
            "\n\n"
        );
        // ...in the middle of a line, to the end of the line.
        request.prefix = "let total = compute(".into();
        request.suffix = ");\n".into();
        assert_eq!(
            Template::Family(Family::QwenCoder).stop(&request),
            ["\n", "<|endoftext|>", "<|file_sep|>", "<|fim_prefix|>"]
        );
    }

    #[test]
    fn qwen_sees_other_files_in_its_repository_form_and_others_as_comments() {
        let around = Around {
            prefix: "let p = RetryPolicy::",
            suffix: "",
        };
        let context = RepoContext::for_tests(
            "reaper",
            "src/client.rs",
            vec![Snippet {
                path: "src/retry.rs".into(),
                text: "pub struct RetryPolicy;\n".into(),
            }],
        );
        assert_eq!(
            Family::QwenCoder.prompt(&around, &context, "rust").unwrap(),
            "<|repo_name|>reaper\n<|file_sep|>src/retry.rs\npub struct RetryPolicy;\n<|file_sep|>src/client.rs\n<|fim_prefix|>let p = RetryPolicy::<|fim_suffix|><|fim_middle|>"
        );
        assert_eq!(
            Family::StarCoder.prompt(&around, &context, "python").unwrap(),
            "<fim_prefix># Path: src/retry.rs\n# pub struct RetryPolicy;\n\n# Path: src/client.rs\nlet p = RetryPolicy::<fim_suffix><fim_middle>"
        );
    }

    #[test]
    fn the_users_template_wins_and_may_name_a_family() {
        assert_eq!(
            Template::choose(Some("codellama"), "qwen2.5-coder"),
            Template::Family(Family::CodeLlama)
        );
        let custom = Template::choose(Some("<A>{prefix}<B>{suffix}<C>"), "qwen2.5-coder");
        let around = Around {
            prefix: "x = ",
            suffix: "\n",
        };
        assert_eq!(
            custom
                .prompt(&around, &RepoContext::default(), "python")
                .unwrap(),
            "<A>x = <B>\n<C>"
        );
        let block = CompletionRequest {
            prefix: "def f():\n    ".into(),
            suffix: String::new(),
            language: "python".into(),
            file_path: None,
            context: None,
        };
        assert_eq!(custom.stop(&block), vec!["\n\n"]);
        assert!(Template::choose(None, "smollm2") == Template::Family(Family::Plain));
    }
}
