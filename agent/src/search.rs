//! `search`: where a text occurs in the task's working directory.
//!
//! Through the offline model's index of the repository when it has one (a suffix array: a
//! lookup, however large the repository), else by reading the files (respecting `.gitignore`,
//! at most [`SCAN_BUDGET`] bytes). Either way only files under the working directory are
//! reported, and never one that may hold credentials: the index leaves those out, and the
//! scan asks the same rule.

use std::path::{Path, PathBuf};

use reaper_offline::Corpus;

/// Hits reported at most.
pub const MAX_HITS: usize = 50;
/// Bytes a scan without an index reads at most.
pub const SCAN_BUDGET: u64 = 64 * 1024 * 1024;
/// Files larger than this are not scanned.
const MAX_SCANNED_FILE: u64 = 1024 * 1024;
/// Longest line shown for a hit.
const MAX_LINE: usize = 200;

/// One place the text occurs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The file.
    pub path: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// The line's text (cut at [`MAX_LINE`] bytes).
    pub text: String,
}

/// Where it was looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The offline model's index.
    Index,
    /// The files, read one by one.
    Scan,
}

/// Finds `pattern` under `root`: through `index` when given, else by a scan that skips what
/// `excluded` says.
pub fn search(
    root: &Path,
    pattern: &str,
    index: Option<&Corpus>,
    excluded: &dyn Fn(&Path) -> bool,
) -> (Vec<Hit>, Source) {
    if pattern.is_empty() {
        return (Vec::new(), Source::Scan);
    }
    match index {
        Some(corpus) => (in_index(corpus, root, pattern), Source::Index),
        None => (scan(root, pattern, excluded), Source::Scan),
    }
}

fn in_index(corpus: &Corpus, root: &Path, pattern: &str) -> Vec<Hit> {
    let hits = corpus.find(pattern.as_bytes());
    let mut found: Vec<Hit> = Vec::new();
    // More positions than hits shown: some are outside the working directory.
    for pos in corpus.positions(&hits, MAX_HITS * 4) {
        let Some((path, range)) = corpus.file_range_at(pos) else {
            continue;
        };
        if !path.starts_with(root) {
            continue;
        }
        let file = corpus.slice(range.clone());
        let at = pos - range.start;
        let hit = hit_at(path, file, at);
        if !found.contains(&hit) {
            found.push(hit);
        }
        if found.len() == MAX_HITS {
            break;
        }
    }
    found.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    found
}

/// The hit at byte `at` of `file`.
fn hit_at(path: &Path, file: &[u8], at: usize) -> Hit {
    let start = file[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = file[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(file.len(), |i| at + i);
    let line = file[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let text = String::from_utf8_lossy(&file[start..end]);
    Hit {
        path: path.to_path_buf(),
        line,
        text: reaper_core::text::head(text.trim_end(), MAX_LINE).to_owned(),
    }
}

fn scan(root: &Path, pattern: &str, excluded: &dyn Fn(&Path) -> bool) -> Vec<Hit> {
    let finder = memchr::memmem::Finder::new(pattern.as_bytes());
    let mut found = Vec::new();
    let mut budget = SCAN_BUDGET;
    for entry in ignore::WalkBuilder::new(root).build().flatten() {
        let path = entry.path();
        let small = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_SCANNED_FILE);
        if !small || excluded(path) {
            continue;
        }
        let Ok(bytes) = crate::atomic::read(path) else {
            continue;
        };
        budget = budget.saturating_sub(bytes.len() as u64);
        if budget == 0 {
            break;
        }
        if bytes[..bytes.len().min(8192)].contains(&0) {
            continue; // binary
        }
        for at in finder.find_iter(&bytes) {
            found.push(hit_at(path, &bytes, at));
            if found.len() == MAX_HITS {
                return found;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_finds_lines_and_skips_what_is_excluded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(
            dir.path().join("src/a.rs"),
            "fn one() {}\nfn retry_after() {}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".env"), "retry_after=sk-secret\n").unwrap();
        let excluded = |p: &Path| p.file_name().is_some_and(|n| n == ".env");
        let (hits, source) = search(dir.path(), "retry_after", None, &excluded);
        assert_eq!(source, Source::Scan);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].line, 2);
        assert_eq!(hits[0].text, "fn retry_after() {}");
    }

    #[test]
    fn the_index_answers_with_files_under_the_root_only() {
        let mut builder = reaper_offline::CorpusBuilder::with_policy(Default::default());
        builder.add(PathBuf::from("/repo/app/main.rs"), b"let x = backoff_ms;\n");
        builder.add(
            PathBuf::from("/repo/lib/util.rs"),
            b"// backoff_ms\nconst backoff_ms: u64 = 5;\n",
        );
        let corpus = builder.build();
        let (hits, source) = search(Path::new("/repo/lib"), "backoff_ms", Some(&corpus), &|_| {
            false
        });
        assert_eq!(source, Source::Index);
        assert_eq!(
            hits.iter().map(|h| h.line).collect::<Vec<_>>(),
            [1, 2],
            "{hits:?}"
        );
        assert!(hits.iter().all(|h| h.path.starts_with("/repo/lib")));
    }
}
