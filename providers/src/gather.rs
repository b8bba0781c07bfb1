//! Gathering a completion's repository context, within `[completion] context_bytes`:
//!
//! 1. snippets of other files related to the cursor's surroundings, from the offline index of
//!    the file's workspace ([`reaper_offline::related`]) — the index every editor connected
//!    to the daemon shares, so a second editor costs no second index;
//! 2. the places recently edited in other files of the workspace: every completion request
//!    says where the user is typing, so the daemon keeps the last few cursor surroundings
//!    ([`MAX_RECENT`]) and shows those of other files (a quarter of the budget at most);
//! 3. the editor's `context.lsp_symbols` (256 bytes at most).
//!
//! The context stays the same while the cursor stays within [`STEADY_LINES`] lines of where
//! it was gathered (for [`STEADY_FOR`] at most): it goes first in the prompt, and a model
//! server reuses the evaluation of the part of a prompt that the previous one began with, so
//! context that changed on every keystroke would make every keystroke pay for the whole
//! prompt again (measured with `reaper-bench keystrokes`: 12,000 prompt tokens evaluated and
//! nothing shown in 1,400 keys, `docs/perf.md`).
//!
//! Nothing comes from a file that holds credentials ([`reaper_offline::workspace::holds_secrets`]),
//! and lines that look like one are dropped from every snippet
//! ([`crate::prompt::context::without_secrets`]). A request *on* such a file is not sent to
//! a remote model at all ([`Gatherer::is_private`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_core::schema::CompletionRequest;
use reaper_core::text::{head, tail};
use reaper_offline::workspace::holds_secrets;

use crate::offline::OfflineProvider;
use crate::prompt::context::without_secrets;
use crate::prompt::{RepoContext, Snippet};

/// Cursor surroundings remembered, one per file, the latest first.
pub const MAX_RECENT: usize = 8;
/// Recently edited places shown, at most.
const RECENT_SHOWN: usize = 2;
/// Bytes before and after the cursor kept of a recently edited place.
const RECENT_BEFORE: usize = 300;
const RECENT_AFTER: usize = 120;
/// Bytes of the editor's symbols shown, at most.
const SYMBOLS_BYTES: usize = 256;
/// Lines the cursor may move before a file's context is gathered again. A new context costs
/// the model server a whole prompt's evaluation (1,700 tokens: 19 s for SmolLM2 on one busy
/// core, a fraction of a second on a GPU), so it changes when the user has moved on to other
/// code, not with every few lines typed: at 3 lines, `reaper-bench keystrokes` saw llama.cpp
/// spend the whole replay re-evaluating prompts and generate 9 tokens.
pub const STEADY_LINES: usize = 40;
/// Longest a file's context is kept.
pub const STEADY_FOR: Duration = Duration::from_secs(300);
/// Files whose context is kept, at most.
const STEADY_FILES: usize = 8;

/// A file's context as last gathered.
#[derive(Debug)]
struct Steady {
    path: String,
    line: usize,
    at: Instant,
    context: RepoContext,
}

/// Where a completion's repository context comes from.
#[derive(Debug)]
pub struct Gatherer {
    offline: Option<Arc<OfflineProvider>>,
    budget: usize,
    recent: Mutex<VecDeque<(String, String)>>,
    steady: Mutex<VecDeque<Steady>>,
}

impl Gatherer {
    /// Context from `offline`'s workspaces, at most `budget` bytes per completion (0: none).
    pub fn new(offline: Option<Arc<OfflineProvider>>, budget: usize) -> Gatherer {
        Gatherer {
            offline,
            budget,
            recent: Mutex::new(VecDeque::with_capacity(MAX_RECENT)),
            steady: Mutex::new(VecDeque::with_capacity(STEADY_FILES)),
        }
    }

    /// The offline provider whose index it reads.
    pub fn offline(&self) -> Option<&Arc<OfflineProvider>> {
        self.offline.as_ref()
    }

    /// Whether `request` is on a file that holds credentials (`.env`, a private key) or that
    /// `[providers.offline] deny` names: such a buffer is never sent to a remote model.
    pub fn is_private(&self, request: &CompletionRequest) -> bool {
        request.file_path.as_deref().is_some_and(|p| {
            let path = Path::new(p);
            holds_secrets(path) || self.offline.as_ref().is_some_and(|o| o.excludes(path))
        })
    }

    /// Remembers where `request` was typed.
    pub fn note(&self, request: &CompletionRequest) {
        let Some(path) = request.file_path.as_deref().filter(|p| !p.is_empty()) else {
            return;
        };
        if self.is_private(request) {
            return;
        }
        let before = tail(&request.prefix, RECENT_BEFORE);
        // Whole lines only.
        let before = before.split_once('\n').map_or(before, |(_, rest)| rest);
        let after = head(&request.suffix, RECENT_AFTER);
        let after = after.rsplit_once('\n').map_or(after, |(lines, _)| lines);
        let text = format!("{before}{after}");
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(p, _)| p != path);
        if recent.len() == MAX_RECENT {
            recent.pop_back();
        }
        recent.push_front((path.to_owned(), text));
    }

    /// The context for `request`, at most the budget: the one gathered for its file a moment
    /// ago if the cursor is still near where it was.
    pub fn gather(&self, request: &CompletionRequest) -> RepoContext {
        let Some(path) = request.file_path.as_deref().filter(|p| !p.is_empty()) else {
            return RepoContext::default();
        };
        if self.budget == 0 {
            return RepoContext::default();
        }
        let line = memchr::memchr_iter(b'\n', request.prefix.as_bytes()).count();
        let now = Instant::now();
        {
            let steady = self.steady.lock().unwrap_or_else(|e| e.into_inner());
            let kept = steady.iter().find(|s| {
                s.path == path
                    && s.line.abs_diff(line) <= STEADY_LINES
                    && now.saturating_duration_since(s.at) < STEADY_FOR
            });
            if let Some(kept) = kept {
                return kept.context.clone();
            }
        }
        let (context, complete) = self.gather_now(request, path);
        if !complete {
            // The workspace's index is still being built: the next keystroke may find more.
            return context;
        }
        let mut steady = self.steady.lock().unwrap_or_else(|e| e.into_inner());
        steady.retain(|s| s.path != path);
        if steady.len() == STEADY_FILES {
            steady.pop_back();
        }
        steady.push_front(Steady {
            path: path.to_owned(),
            line,
            at: now,
            context: context.clone(),
        });
        context
    }

    /// The context for `request` on the file at `path`, gathered now, and whether it is all
    /// there will be (not while the workspace's index is still being built).
    fn gather_now(&self, request: &CompletionRequest, path: &str) -> (RepoContext, bool) {
        // The index names files canonically: so must every comparison with it.
        let own = crate::offline::canonical_file(Path::new(path));
        let own = own.as_path();
        let workspace = self.offline.as_ref().and_then(|o| o.workspace_of(own));
        let root = workspace.as_ref().map(|w| w.root().to_path_buf());
        let relative = |p: &Path| match root.as_deref().and_then(|r| p.strip_prefix(r).ok()) {
            Some(rel) => rel.display().to_string(),
            None => p.display().to_string(),
        };
        let mut left = self.budget;
        let mut snippets = Vec::new();

        // Recently edited places in other files of the same workspace.
        let mut recent_budget = self.budget / 4;
        let recent: Vec<(String, String)> = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent
                .iter()
                .filter(|(p, _)| p != path)
                .filter(|(p, _)| {
                    let p = crate::offline::canonical_file(Path::new(p));
                    p != own && root.as_deref().is_some_and(|r| p.starts_with(r))
                })
                .take(RECENT_SHOWN)
                .cloned()
                .collect()
        };
        let mut recent_snippets = Vec::new();
        for (p, text) in recent {
            let text = without_secrets(&text);
            if text.trim().is_empty() || text.len() > recent_budget {
                continue;
            }
            recent_budget -= text.len();
            left -= text.len();
            recent_snippets.push(Snippet {
                path: relative(&crate::offline::canonical_file(Path::new(&p))),
                text,
            });
        }

        // Related code from the index.
        let corpus = workspace.as_ref().and_then(|w| w.corpus());
        let complete = workspace.is_none() || corpus.is_some();
        if let Some(corpus) = corpus {
            for found in reaper_offline::related::related(
                &corpus,
                &request.prefix,
                &request.suffix,
                Some(own),
                left,
            ) {
                let text = without_secrets(&found.text);
                if text.trim().is_empty() {
                    continue;
                }
                left = left.saturating_sub(text.len());
                snippets.push(Snippet {
                    path: relative(&found.path),
                    text,
                });
            }
        }
        snippets.extend(recent_snippets);

        if let Some(symbols) = request
            .context
            .as_ref()
            .and_then(|c| c.lsp_symbols.as_deref())
        {
            let shown = head(symbols, SYMBOLS_BYTES.min(left));
            let shown = match shown.rsplit_once('\n') {
                Some((lines, _)) if shown.len() < symbols.len() => lines,
                _ => shown,
            };
            if !shown.trim().is_empty() {
                snippets.push(Snippet {
                    path: "symbols from the editor".to_owned(),
                    text: without_secrets(shown),
                });
            }
        }
        let repo_name = root
            .as_deref()
            .and_then(|r| r.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            RepoContext::new(repo_name, relative(own), snippets),
            complete,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, prefix: &str, suffix: &str) -> CompletionRequest {
        CompletionRequest {
            prefix: prefix.into(),
            suffix: suffix.into(),
            language: "rust".into(),
            file_path: Some(path.into()),
            context: None,
        }
    }

    #[test]
    fn recent_places_are_bounded_and_never_from_secret_files() {
        let gatherer = Gatherer::new(None, 2048);
        for i in 0..20 {
            gatherer.note(&request(&format!("/ws/f{i}.rs"), "fn a() {\n    x", "\n}"));
        }
        gatherer.note(&request("/ws/.env", "KEY=", "\n"));
        let recent = gatherer.recent.lock().unwrap();
        assert_eq!(recent.len(), MAX_RECENT);
        assert_eq!(recent[0].0, "/ws/f19.rs", "the latest first");
        assert!(recent.iter().all(|(p, _)| !p.ends_with(".env")));
        let gatherer = Gatherer::new(None, 0);
        assert!(gatherer.is_private(&request("/ws/.env", "", "")));
        assert!(gatherer.is_private(&request("/home/u/.ssh/id_ed25519", "", "")));
        assert!(!gatherer.is_private(&request("/ws/env.rs", "", "")));
    }

    #[test]
    fn a_files_context_holds_while_the_cursor_stays_near() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        let ws = |f: &str| dir.path().join(f).display().to_string();
        let offline = Arc::new(OfflineProvider::new(&Default::default()));
        // A context is kept only once the workspace's index is built.
        let workspace = offline.workspace_of(Path::new(&ws("main.rs"))).unwrap();
        let start = Instant::now();
        while workspace.corpus().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the index is built"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let gatherer = Gatherer::new(Some(offline), 2048);
        gatherer.note(&request(
            &ws("other.rs"),
            "fn helper_one() {\n    helper_two(",
            "\n}",
        ));
        let typed = |prefix: &str| request(&ws("main.rs"), prefix, "\n}");
        // The context holds the other file's recent place; it is kept as the user types on,
        // even after a third file is edited...
        let first = gatherer.gather(&typed("fn main() {\n    let a"));
        assert_eq!(first.snippets()[0].path, "other.rs");
        gatherer.note(&request(&ws("third.rs"), "fn third() {\n    go(", "\n}"));
        assert_eq!(gatherer.gather(&typed("fn main() {\n    let ab")), first);
        assert_eq!(
            gatherer.gather(&typed("fn main() {\n    let ab;\n\n\n    x")),
            first
        );
        // ...and gathered again once the cursor is further away.
        let far = format!("fn main() {{\n{}    y", "    z;\n".repeat(STEADY_LINES + 1));
        let again = gatherer.gather(&typed(&far));
        assert_ne!(again, first);
        assert_eq!(
            again.snippets()[0].path,
            "third.rs",
            "the latest place first"
        );
    }

    #[test]
    fn no_budget_no_context() {
        let gatherer = Gatherer::new(None, 0);
        gatherer.note(&request("/ws/a.rs", "let a", ""));
        assert!(gatherer
            .gather(&request("/ws/b.rs", "let b", ""))
            .is_empty());
    }
}
