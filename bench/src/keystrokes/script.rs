//! What the person types and when: a region of a real file, replayed key by key at a human
//! pace; the workspace the file lives in (without the file); and how a ghost text is scored
//! against what the person really typed next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reaper_client::schema::CompletionRequest;

/// Files larger than this are not copied into the workspace.
const MAX_COPIED_FILE: u64 = 512 * 1024;
/// Files copied into the workspace at most.
const MAX_COPIED_FILES: usize = 5_000;

/// How the person types.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Time between two keys.
    pub ms_per_key: u64,
    /// Extra time after a newline.
    pub newline_pause_ms: u64,
    /// A longer pause (thinking) every 40 to 80 characters.
    pub think_pause_ms: u64,
    /// Seed of the jitter and of where the thinking pauses fall.
    pub seed: u64,
}

/// One key press.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// When it is pressed, from the start of the run.
    pub at: Duration,
    /// Bytes of the file before the cursor after it (the typed text ends here).
    pub cursor: usize,
}

/// The replay: a file, the region of it that is typed, and the keys.
#[derive(Debug)]
pub struct Script {
    /// The whole file as it really is.
    pub text: String,
    /// Where the typed region starts and ends (line boundaries).
    pub region: std::ops::Range<usize>,
    /// The keys, in order.
    pub keys: Vec<Key>,
    /// The path requests name (inside the temporary workspace).
    pub file_path: String,
}

impl Script {
    /// Types `chars` bytes (extended to the end of their line) of `text` from the start of
    /// `line` (1-based), at `pace`. A newline key also types the next line's indentation, as
    /// an editor's auto-indent does.
    pub fn new(
        text: String,
        line: usize,
        chars: usize,
        pace: Pace,
        file_path: String,
    ) -> anyhow::Result<Script> {
        let Some(start) = line_start(&text, line) else {
            bail!("the file has fewer than {line} lines");
        };
        let mut end = (start + chars).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
        if end <= start {
            bail!("nothing to type at line {line}");
        }
        let mut rng = StdRng::seed_from_u64(pace.seed);
        let mut keys = Vec::new();
        let mut at_ms = 0u64;
        let mut next_think = rng.random_range(40..=80);
        let mut cursor = start;
        let mut since_think = 0;
        while cursor < end {
            let c = text[cursor..].chars().next().unwrap_or('\n');
            cursor += c.len_utf8();
            if c == '\n' {
                // Auto-indent: the next line's leading spaces come with the newline.
                let line = &text[cursor..end];
                cursor += line.len() - line.trim_start_matches([' ', '\t']).len();
            }
            keys.push(Key {
                at: Duration::from_millis(at_ms),
                cursor,
            });
            // ±30 % around the pace, then the pauses this key earns.
            let jitter = rng.random_range(0.7..1.3);
            at_ms += (pace.ms_per_key as f64 * jitter) as u64;
            if c == '\n' {
                at_ms += pace.newline_pause_ms;
            }
            since_think += 1;
            if since_think >= next_think {
                at_ms += pace.think_pause_ms;
                since_think = 0;
                next_think = rng.random_range(40..=80);
            }
        }
        Ok(Script {
            text,
            region: start..end,
            keys,
            file_path,
        })
    }

    /// The request an editor sends after key `i`: the typed text before the cursor, the rest
    /// of the file after the region after it.
    pub fn request(&self, i: usize) -> CompletionRequest {
        let cursor = self.keys[i].cursor;
        CompletionRequest {
            prefix: self.text[..cursor].to_owned(),
            suffix: self.text[self.region.end..].to_owned(),
            language: "rust".to_owned(),
            file_path: Some(self.file_path.clone()),
            context: None,
        }
    }

    /// What the person really types after key `i`: the file from the cursor on.
    pub fn truth(&self, i: usize) -> &str {
        &self.text[self.keys[i].cursor..]
    }

    /// How long the replay takes.
    pub fn duration(&self) -> Duration {
        self.keys.last().map_or(Duration::ZERO, |k| k.at)
    }
}

/// Where 1-based `line` of `text` starts; `None` past the last line.
fn line_start(text: &str, line: usize) -> Option<usize> {
    if line <= 1 {
        return Some(0);
    }
    let (at, _) = text.match_indices('\n').nth(line - 2)?;
    (at + 1 < text.len()).then_some(at + 1)
}

/// How good one ghost text is against what was really typed next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    /// It completes the current line exactly: its text up to the end of its first line with
    /// code on it is what was typed, and that line really ends there.
    pub exact_line: bool,
    /// Characters a Tab would have accepted correctly: the ghost text's length when all of it
    /// is what was typed next, else 0.
    pub accepted_chars: usize,
}

/// Scores `ghost` against `truth` (the real text from the cursor on).
pub fn score(ghost: &str, truth: &str) -> Score {
    let accepted_chars = if !ghost.is_empty() && truth.starts_with(ghost) {
        ghost.chars().count()
    } else {
        0
    };
    let exact_line = match ghost.find(|c: char| !c.is_whitespace()) {
        None => false,
        Some(code) => {
            let end = ghost[code..].find('\n').map_or(ghost.len(), |i| code + i);
            let line = ghost[..end].trim_end_matches([' ', '\t', '\r']);
            truth.starts_with(line)
                && truth[line.len()..]
                    .trim_start_matches([' ', '\t', '\r'])
                    .chars()
                    .next()
                    .is_none_or(|c| c == '\n')
        }
    };
    Score {
        exact_line,
        accepted_chars,
    }
}

/// A temporary git workspace holding a copy of the typed file's repository without the typed
/// file (a saved copy would give the answer away): what the offline index and the repository
/// context see.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
    /// Files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
}

impl Workspace {
    /// Copies the repository of `typed` (its git root: the nearest ancestor with `.git`),
    /// respecting its `.gitignore`, leaving `typed` out.
    pub fn copy_without(typed: &Path) -> anyhow::Result<(Workspace, PathBuf)> {
        let typed = typed
            .canonicalize()
            .with_context(|| format!("cannot read {}", typed.display()))?;
        let root = typed
            .ancestors()
            .skip(1)
            .find(|d| d.join(".git").exists())
            .with_context(|| format!("{} is not inside a git repository", typed.display()))?
            .to_path_buf();
        let dir = tempfile::tempdir()?;
        let copy_root = dir.path().join("repo");
        std::fs::create_dir_all(copy_root.join(".git"))?;
        std::fs::write(copy_root.join(".git/HEAD"), "ref: refs/heads/main\n")?;
        let mut files = 0;
        let mut bytes = 0;
        for entry in ignore::WalkBuilder::new(&root).build() {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if !entry.file_type().is_some_and(|t| t.is_file()) || path == typed {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.len() > MAX_COPIED_FILE {
                continue;
            }
            let Ok(relative) = path.strip_prefix(&root) else {
                continue;
            };
            let target = copy_root.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(path, &target)
                .with_context(|| format!("cannot copy {}", path.display()))?;
            files += 1;
            bytes += meta.len();
            if files >= MAX_COPIED_FILES {
                break;
            }
        }
        let relative = typed.strip_prefix(&root).unwrap_or(&typed);
        let typed_copy = copy_root.join(relative);
        Ok((Workspace { dir, files, bytes }, typed_copy))
    }

    /// The workspace's root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_texts_score_against_what_was_typed() {
        let truth = "let x = 1;\n    let y = 2;\n";
        let whole = score("let x = 1;", truth);
        assert_eq!((whole.exact_line, whole.accepted_chars), (true, 10));
        let two_lines = score("let x = 1;\n    let y = 3;", truth);
        assert_eq!((two_lines.exact_line, two_lines.accepted_chars), (true, 0));
        let short = score("let x", truth);
        assert_eq!((short.exact_line, short.accepted_chars), (false, 5));
        assert_eq!(score("\n", truth), Score::default());
        // At a line's end, the next line counts.
        let next = score("\n    let y = 2;", "\n    let y = 2;\n}");
        assert!(next.exact_line);
    }

    #[test]
    fn newlines_bring_the_indentation_and_pauses_are_deterministic() {
        let text = "fn a() {\n    x();\n}\n".to_owned();
        let pace = Pace {
            ms_per_key: 80,
            newline_pause_ms: 400,
            think_pause_ms: 1000,
            seed: 7,
        };
        let script = Script::new(text.clone(), 1, 100, pace, "a.rs".into()).unwrap();
        let cursors: Vec<usize> = script.keys.iter().map(|k| k.cursor).collect();
        // After "fn a() {\n" the cursor skips the four spaces.
        assert!(cursors.contains(&13) && !cursors.contains(&10));
        assert_eq!(*cursors.last().unwrap(), text.len());
        let again = Script::new(text.clone(), 1, 100, pace, "a.rs".into()).unwrap();
        assert_eq!(script.duration(), again.duration());
        let second = Script::new(text, 2, 1, pace, "a.rs".into()).unwrap();
        assert_eq!(second.region, 9..18);
    }
}
