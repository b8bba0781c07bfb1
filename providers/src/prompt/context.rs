//! The repository context a model is shown before the text around the cursor: snippets of
//! other files (related code from the workspace index, the places the user edited recently,
//! the editor's symbols), and how a prompt spells them — comment lines with a `Path:` header
//! (the form Copilot's prompts made common, which any code model reads as more code), or a
//! family's own file separators ([`super::fim`]).

/// A piece of another file, or of what the editor knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snippet {
    /// Where it comes from: a path relative to the repository's root, or what it is.
    pub path: String,
    /// Its text, whole lines, with lines that look like credentials already removed.
    pub text: String,
}

/// Everything beyond the file itself that a model is shown, within the request's budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoContext {
    repo_name: String,
    current_path: String,
    /// Most relevant first.
    snippets: Vec<Snippet>,
}

impl RepoContext {
    /// No context.
    pub const EMPTY: RepoContext = RepoContext {
        repo_name: String::new(),
        current_path: String::new(),
        snippets: Vec::new(),
    };

    /// Context for the file at `current_path` (relative to the repository named `repo_name`),
    /// `snippets` most relevant first.
    pub fn new(repo_name: String, current_path: String, snippets: Vec<Snippet>) -> RepoContext {
        RepoContext {
            repo_name,
            current_path,
            snippets,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(repo: &str, current: &str, snippets: Vec<Snippet>) -> RepoContext {
        RepoContext::new(repo.to_owned(), current.to_owned(), snippets)
    }

    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.snippets.is_empty()
    }

    /// Bytes of snippet text.
    pub fn bytes(&self) -> usize {
        self.snippets
            .iter()
            .map(|s| s.path.len() + s.text.len())
            .sum()
    }

    /// Bytes the context takes in a prompt at most: its text with a comment mark per line and
    /// a header per snippet (the largest of the forms it is shown in).
    pub fn prompt_bytes(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        let snippets: usize = self
            .snippets
            .iter()
            .map(|s| s.path.len() + 16 + s.text.len() + 4 * (s.text.lines().count() + 1))
            .sum();
        snippets + self.current_path().len() + 16
    }

    /// The snippets, most relevant first.
    pub fn snippets(&self) -> &[Snippet] {
        &self.snippets
    }

    /// The snippets in prompt order: the most relevant last, nearest the cursor, where a model
    /// attends most.
    pub fn snippets_far_to_near(&self) -> impl Iterator<Item = &Snippet> {
        self.snippets.iter().rev()
    }

    /// The repository's name (its root directory's).
    pub fn repo_name(&self) -> &str {
        if self.repo_name.is_empty() {
            "repository"
        } else {
            &self.repo_name
        }
    }

    /// The path of the file being edited, relative to the repository.
    pub fn current_path(&self) -> &str {
        if self.current_path.is_empty() {
            "untitled"
        } else {
            &self.current_path
        }
    }

    /// The snippets as line comments of `language`, each under a `Path:` header, then the
    /// current file's header; empty when there are none.
    pub fn as_comments(&self, language: &str) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mark = comment_mark(language);
        let mut out = String::with_capacity(self.bytes() * 11 / 10 + 64);
        for snippet in self.snippets_far_to_near() {
            out.push_str(mark);
            out.push_str(" Path: ");
            out.push_str(&snippet.path);
            out.push('\n');
            for line in snippet.text.trim_end_matches('\n').lines() {
                out.push_str(mark);
                if !line.is_empty() {
                    out.push(' ');
                    out.push_str(line);
                }
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(mark);
        out.push_str(" Path: ");
        out.push_str(self.current_path());
        out.push('\n');
        out
    }

    /// The snippets as plain text for a chat model's message.
    pub fn as_plain_text(&self) -> String {
        let mut out = String::new();
        for snippet in self.snippets_far_to_near() {
            out.push_str(&format!(
                "--- {}\n{}\n",
                snippet.path,
                snippet.text.trim_end()
            ));
        }
        out
    }
}

/// What starts a line comment in `language` (its LSP language identifier).
fn comment_mark(language: &str) -> &'static str {
    match language.to_ascii_lowercase().as_str() {
        "python" | "ruby" | "shellscript" | "shell" | "bash" | "sh" | "zsh" | "fish" | "toml"
        | "yaml" | "perl" | "r" | "elixir" | "makefile" | "dockerfile" | "julia" | "nim"
        | "powershell" | "crystal" | "coffeescript" | "cmake" => "#",
        "lua" | "sql" | "haskell" | "elm" | "ada" | "purescript" => "--",
        "lisp" | "clojure" | "scheme" | "racket" | "commonlisp" => ";",
        "erlang" | "latex" | "tex" | "matlab" | "prolog" => "%",
        "vim" | "viml" => "\"",
        _ => "//",
    }
}

/// `text` without the lines that look like they hold a credential: a known key prefix
/// (`sk-`, `ghp_`, `AKIA`, a PEM header, ...), or an assignment to something named like a key,
/// token, secret or password from a long string literal. What a model is shown may leave the
/// machine; a line of code lost from context costs little, a leaked key a great deal.
pub fn without_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !looks_secret(line) {
            out.push_str(line);
        }
    }
    out
}

fn looks_secret(line: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "sk-",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "AKIA",
        "AIza",
        "-----BEGIN",
        "glpat-",
        "hf_",
    ];
    if PREFIXES.iter().any(|p| {
        line.match_indices(p).any(|(at, _)| {
            // At a word's start, followed by enough of a key to be one.
            let before = line[..at].chars().next_back();
            let after = &line[at + p.len()..];
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .count()
                    >= 8
                || *p == "-----BEGIN"
        })
    }) {
        return true;
    }
    let lower = line.to_ascii_lowercase();
    let named = ["key", "token", "secret", "password", "passwd", "credential"]
        .iter()
        .any(|n| lower.contains(n));
    named && (lower.contains('=') || lower.contains(':')) && has_long_literal(line)
}

/// Whether `line` has a quoted string of 12 or more characters without spaces.
fn has_long_literal(line: &str) -> bool {
    for quote in ['"', '\''] {
        let mut parts = line.split(quote);
        parts.next();
        while let Some(inside) = parts.next() {
            if inside.len() >= 12 && !inside.contains(' ') {
                return true;
            }
            parts.next();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_context() {
        let text = "let url = base.join(\"v1/models\")?;\n\
                    let token = session.token.header(\"Bearer \");\n\
                    const API_KEY: &str = \"sk-proj-abcdefghijklmnop\";\n\
                    password = 'hunter2hunter2xx'\n\
                    aws = \"AKIAIOSFODNN7EXAMPLE\"\n\
                    -----BEGIN OPENSSH PRIVATE KEY-----\n\
                    let task = tokio::spawn(run());\n";
        assert_eq!(
            without_secrets(text),
            "let url = base.join(\"v1/models\")?;\n\
             let token = session.token.header(\"Bearer \");\n\
             let task = tokio::spawn(run());\n"
        );
        // A word that merely contains a prefix is code, not a key.
        assert_eq!(
            without_secrets("let mask-value = 1;\n"),
            "let mask-value = 1;\n"
        );
    }

    #[test]
    fn comments_follow_the_language() {
        let context = RepoContext::for_tests(
            "r",
            "app/main.lua",
            vec![
                Snippet {
                    path: "a.lua".into(),
                    text: "local a = 1\n\nreturn a\n".into(),
                },
                Snippet {
                    path: "b.lua".into(),
                    text: "x()".into(),
                },
            ],
        );
        assert_eq!(
            context.as_comments("lua"),
            "-- Path: b.lua\n-- x()\n\n-- Path: a.lua\n-- local a = 1\n--\n-- return a\n\n-- Path: app/main.lua\n"
        );
        assert_eq!(RepoContext::default().as_comments("rust"), "");
        // What the prompt budget reserves covers what the comments take.
        assert!(context.prompt_bytes() >= context.as_comments("lua").len());
        assert!(context.prompt_bytes() >= context.as_plain_text().len());
        assert!(context.as_comments("go").starts_with("// Path: b.lua"));
    }
}
