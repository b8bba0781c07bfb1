//! Bringing a workspace's index up to date with its files: which to read again and which are
//! gone, at a cost proportional to what changed.
//!
//! The watcher names the paths that changed; only they (and, for a directory, what is under
//! it) are walked, with the same walker and rules as the first build, so a file is indexed or
//! skipped for the same reasons either way (`.gitignore` at every level, hidden files, the
//! deny rules, size and binary checks). A walk limited to some paths still reads the listing
//! of each directory above them, which is what lets the walker apply the ignore files on the
//! way. When the watcher lost track (an overflow, an error, an ignore file changed), the
//! whole tree is walked instead, but a file whose size and modification time are unchanged is
//! not read again: a rescan costs a `stat` per file, not a rebuild.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::corpus::{Corpus, Stamp, UpdateStats};
use crate::workspace::{Deny, IndexLimits};

/// Bytes read to decide whether a file is binary.
const BINARY_SNIFF: usize = 8192;

/// What to look at again.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every file of the workspace (the first build, or after the watcher lost track).
    All,
    /// These paths, files or directories, existing or gone.
    Paths(Vec<PathBuf>),
}

/// A workspace's index and what the indexing thread knows of it: when each indexed file was
/// read.
#[derive(Debug, Default)]
pub struct Index {
    /// The current snapshot (what predictions read).
    pub corpus: Arc<Corpus>,
    stamps: HashMap<PathBuf, Stamp>,
    bytes: u64,
}

/// What one reconciliation did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reconciled {
    /// Files read (new or changed).
    pub read: usize,
    /// Files whose old text was dropped (changed or gone).
    pub dropped: usize,
    /// The sorting it took.
    pub sorted: UpdateStats,
    /// How long it took.
    pub elapsed: Duration,
}

impl Index {
    /// Looks at `scope` under `root` again and makes the next snapshot; `None` when nothing
    /// changed, or when `stop` said to give up (an evicted workspace stops indexing at once).
    pub fn reconcile(
        &mut self,
        root: &Path,
        scope: &Scope,
        limits: IndexLimits,
        deny: &Deny,
        stop: &dyn Fn() -> bool,
    ) -> Option<Reconciled> {
        let started = Instant::now();
        let mut walk = ignore::WalkBuilder::new(root);
        if let Scope::Paths(paths) = scope {
            // Down the directories above each path, and everything under it.
            let paths: Arc<[PathBuf]> = paths.clone().into();
            walk.filter_entry(move |entry| {
                let at = entry.path();
                paths.iter().any(|p| p.starts_with(at) || at.starts_with(p))
            });
        }
        let in_scope = |path: &Path| match scope {
            Scope::All => true,
            Scope::Paths(paths) => paths.iter().any(|p| path.starts_with(p)),
        };

        let mut added = self.corpus.builder();
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut stamps: Vec<(PathBuf, Stamp)> = Vec::new();
        let mut bytes = self.bytes;
        let mut over_budget = false;
        for (n, entry) in walk.build().filter_map(Result::ok).enumerate() {
            if n % 256 == 0 && stop() {
                return None;
            }
            if !entry.file_type().is_some_and(|t| t.is_file()) || deny.excludes(entry.path()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.len() > limits.max_file_bytes {
                continue;
            }
            let stamp = Stamp {
                len: meta.len(),
                modified: meta.modified().ok(),
            };
            let path = entry.into_path();
            let before = self.stamps.get(&path);
            if before == Some(&stamp) {
                seen.insert(path);
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            if text[..text.len().min(BINARY_SNIFF)].contains(&0) {
                continue;
            }
            // Saturating: a file can change between its stat and its read.
            let grown = bytes.saturating_sub(before.map_or(0, |s| s.len)) + text.len() as u64;
            if grown > limits.max_workspace_bytes as u64 {
                over_budget = true;
                // The old copy, if any, stays: it is still the best this index has.
                if before.is_some() {
                    seen.insert(path);
                }
                continue;
            }
            if added.add_stamped(path.clone(), &text, Some(stamp)) {
                bytes = grown;
                stamps.push((path.clone(), stamp));
                seen.insert(path);
            }
        }
        if over_budget {
            tracing::warn!(root = %root.display(), limit = limits.max_workspace_bytes, "workspace over [providers.offline] max_workspace_bytes: indexed in part");
        }

        // Dropped: what was indexed in scope and is now gone, ignored or changed.
        let changed: HashSet<&PathBuf> = stamps.iter().map(|(p, _)| p).collect();
        let removed: HashSet<PathBuf> = self
            .stamps
            .keys()
            .filter(|p| changed.contains(p) || (in_scope(p) && !seen.contains(*p)))
            .cloned()
            .collect();
        if removed.is_empty() && added.is_empty() {
            return None;
        }
        for path in &removed {
            if let Some(old) = self.stamps.remove(path) {
                // A changed file's old size was taken off already, when its new text was
                // counted.
                if !changed.contains(path) {
                    bytes -= old.len.min(bytes);
                }
            }
        }
        let read = stamps.len();
        let dropped = removed.len();
        self.stamps.extend(stamps);
        let (next, sorted) = self.corpus.updated(&removed, added);
        self.corpus = Arc::new(next);
        self.bytes = bytes;
        Some(Reconciled {
            read,
            dropped,
            sorted,
            elapsed: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IndexLimits = IndexLimits {
        max_file_bytes: 1 << 20,
        max_workspace_bytes: 1 << 24,
    };

    fn live(index: &Index, word: &str) -> usize {
        let hits = index.corpus.find(word.as_bytes());
        index.corpus.positions(&hits, 100).count()
    }

    #[test]
    fn only_what_changed_is_read_and_what_went_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        // The walker applies .gitignore inside a repository only.
        std::fs::create_dir(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(root.join(".gitignore"), "build/\n").unwrap();
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        std::fs::create_dir_all(root.join("build")).unwrap();
        std::fs::write(root.join("src/a.rs"), "fn alpha_one() {}\n").unwrap();
        std::fs::write(root.join("src/deep/b.rs"), "fn beta_one() {}\n").unwrap();
        std::fs::write(root.join("build/out.rs"), "fn built_one() {}\n").unwrap();
        let never = || false;
        let mut index = Index::default();
        let first = index
            .reconcile(&root, &Scope::All, LIMITS, &Deny::default(), &never)
            .unwrap();
        assert_eq!(
            first.read, 2,
            "two sources: not the ignored one, not the hidden .gitignore"
        );
        assert_eq!(
            (live(&index, "alpha_one"), live(&index, "built_one")),
            (1, 0)
        );

        // One file changed, one created in an ignored directory: only the first is read.
        std::fs::write(root.join("src/a.rs"), "fn alpha_two() {}\n").unwrap();
        std::fs::write(root.join("build/more.rs"), "fn built_two() {}\n").unwrap();
        let scope = Scope::Paths(vec![root.join("src/a.rs"), root.join("build/more.rs")]);
        let step = index
            .reconcile(&root, &scope, LIMITS, &Deny::default(), &never)
            .unwrap();
        assert_eq!((step.read, step.dropped), (1, 1));
        assert_eq!(live(&index, "alpha_one"), 0);
        assert_eq!(live(&index, "alpha_two"), 1);
        assert_eq!(
            live(&index, "built_two"),
            0,
            "ignored below the root's .gitignore"
        );

        // A directory removed: everything under it goes, nothing is read.
        std::fs::remove_dir_all(root.join("src/deep")).unwrap();
        let scope = Scope::Paths(vec![root.join("src/deep")]);
        let step = index
            .reconcile(&root, &scope, LIMITS, &Deny::default(), &never)
            .unwrap();
        assert_eq!((step.read, step.dropped), (0, 1));
        assert_eq!(live(&index, "beta_one"), 0);

        // Nothing changed: a rescan reads nothing and makes no new snapshot.
        assert!(index
            .reconcile(&root, &Scope::All, LIMITS, &Deny::default(), &never)
            .is_none());
        // A directory renamed into place is read whole.
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        std::fs::write(root.join("elsewhere/c.rs"), "fn gamma_one() {}\n").unwrap();
        std::fs::rename(root.join("elsewhere"), root.join("src/moved")).unwrap();
        let scope = Scope::Paths(vec![root.join("elsewhere"), root.join("src/moved")]);
        let step = index
            .reconcile(&root, &scope, LIMITS, &Deny::default(), &never)
            .unwrap();
        assert_eq!((step.read, step.dropped), (1, 0));
        assert_eq!(live(&index, "gamma_one"), 1);
        assert_eq!(index.corpus.file_count(), 2, "a.rs and the moved c.rs");
    }

    #[test]
    fn a_stop_request_ends_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..600 {
            std::fs::write(dir.path().join(format!("f{i}.rs")), "fn x() {}\n").unwrap();
        }
        let mut index = Index::default();
        let stop = || true;
        assert!(index
            .reconcile(dir.path(), &Scope::All, LIMITS, &Deny::default(), &stop)
            .is_none());
        assert_eq!(index.corpus.file_count(), 0);
    }
}
