//! Workspaces: which directory a file belongs to, and its index, built and kept current in the
//! background.
//!
//! A file's workspace is its git root (the nearest ancestor with `.git`), else its directory.
//! The first completion in a workspace starts a thread that indexes it (respecting
//! `.gitignore`, skipping binaries and large files) and then watches it with `notify`; changes
//! are batched for [`REBUILD_DEBOUNCE`] and the index is rebuilt and swapped in whole, so
//! predictions never wait on indexing and never see a half-built index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::corpus::{Corpus, CorpusBuilder};

/// How long changes settle before the index is rebuilt.
pub const REBUILD_DEBOUNCE: Duration = Duration::from_millis(300);
/// Bytes read to decide whether a file is binary.
const BINARY_SNIFF: usize = 8192;

/// Limits of indexing.
#[derive(Debug, Clone, Copy)]
pub struct IndexLimits {
    /// Larger files are skipped.
    pub max_file_bytes: u64,
    /// Indexing stops past this many bytes.
    pub max_workspace_bytes: usize,
}

/// One workspace and its current index.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    corpus: RwLock<Option<Arc<Corpus>>>,
    builds: Mutex<BuildStats>,
}

/// What the last index build did.
#[derive(Debug, Clone, Default)]
pub struct BuildStats {
    /// Builds so far.
    pub builds: u64,
    /// Files and bytes in the current index.
    pub files: usize,
    /// Bytes of text indexed.
    pub bytes: usize,
    /// How long the last build took.
    pub last_build: Duration,
}

impl Workspace {
    /// The workspace's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The current index, if the first build has finished.
    pub fn corpus(&self) -> Option<Arc<Corpus>> {
        self.corpus.read().ok().and_then(|c| c.clone())
    }

    /// Statistics of the builds so far.
    pub fn stats(&self) -> BuildStats {
        self.builds.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Every workspace the daemon has seen.
#[derive(Debug, Clone)]
pub struct Workspaces {
    known: Arc<Mutex<HashMap<PathBuf, Arc<Workspace>>>>,
    limits: IndexLimits,
}

impl Workspaces {
    /// No workspaces yet.
    pub fn new(limits: IndexLimits) -> Workspaces {
        Workspaces {
            known: Arc::default(),
            limits,
        }
    }

    /// The workspace of `file` (an absolute path; it need not exist yet), starting its
    /// indexing if it is new. `None` when no existing directory contains it.
    pub fn for_file(&self, file: &Path) -> Option<Arc<Workspace>> {
        let root = workspace_root(file)?;
        Some(self.open(root))
    }

    /// The workspace rooted at `root`, starting its indexing if it is new.
    pub fn open(&self, root: PathBuf) -> Arc<Workspace> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(workspace) = known.get(&root) {
            return workspace.clone();
        }
        let workspace = Arc::new(Workspace {
            root: root.clone(),
            corpus: RwLock::new(None),
            builds: Mutex::new(BuildStats::default()),
        });
        known.insert(root.clone(), workspace.clone());
        let limits = self.limits;
        let indexed = workspace.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("index {}", root.display()))
            .spawn(move || index_and_watch(&indexed, limits));
        if let Err(error) = spawned {
            tracing::warn!(root = %root.display(), %error, "cannot start the indexing thread");
        }
        workspace
    }

    /// All workspaces known.
    pub fn all(&self) -> Vec<Arc<Workspace>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.values().cloned().collect()
    }
}

/// The git root of `file`, else its directory if that exists. Never `/`, and never a guess: a
/// file in a directory that does not exist, outside any repository, has no workspace.
pub fn workspace_root(file: &Path) -> Option<PathBuf> {
    let parent = file.parent()?;
    let mut dir = parent;
    while !dir.is_dir() {
        dir = dir.parent()?;
    }
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.join(".git").exists() {
            return Some(d.to_path_buf());
        }
        cursor = d.parent();
    }
    (parent.is_dir() && parent.parent().is_some()).then(|| parent.to_path_buf())
}

fn index_and_watch(workspace: &Workspace, limits: IndexLimits) {
    let (tx, rx) = mpsc::channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (our own, while indexing, among them) change nothing.
        let changes = event.map_or(true, |e| !matches!(e.kind, notify::EventKind::Access(_)));
        if changes {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        w.watch(&workspace.root, RecursiveMode::Recursive)
            .map(|()| w)
    });
    if let Err(error) = &watcher {
        tracing::warn!(root = %workspace.root.display(), %error, "cannot watch for changes; the index will not follow edits");
    }
    rebuild(workspace, limits);
    if watcher.is_err() {
        return;
    }
    loop {
        // Wait for a change, then let the burst settle.
        match rx.recv() {
            Ok(_) => {}
            Err(_) => return,
        }
        let settle = Instant::now() + REBUILD_DEBOUNCE;
        loop {
            match rx.recv_timeout(settle.saturating_duration_since(Instant::now())) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        rebuild(workspace, limits);
    }
}

fn rebuild(workspace: &Workspace, limits: IndexLimits) {
    let started = Instant::now();
    let (corpus, files, bytes) = build_corpus(&workspace.root, limits);
    let elapsed = started.elapsed();
    if let Ok(mut current) = workspace.corpus.write() {
        *current = Some(Arc::new(corpus));
    }
    if let Ok(mut stats) = workspace.builds.lock() {
        stats.builds += 1;
        stats.files = files;
        stats.bytes = bytes;
        stats.last_build = elapsed;
    }
    tracing::info!(
        root = %workspace.root.display(),
        files,
        bytes,
        ms = elapsed.as_millis() as u64,
        "indexed workspace"
    );
}

/// Reads every source-like file under `root` into a corpus.
pub fn build_corpus(root: &Path, limits: IndexLimits) -> (Corpus, usize, usize) {
    let mut builder = CorpusBuilder::default();
    let mut files = 0;
    for entry in ignore::WalkBuilder::new(root)
        .build()
        .filter_map(Result::ok)
    {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let too_big = entry
            .metadata()
            .map_or(true, |m| m.len() > limits.max_file_bytes);
        if too_big {
            continue;
        }
        let Ok(text) = std::fs::read(entry.path()) else {
            continue;
        };
        if text[..text.len().min(BINARY_SNIFF)].contains(&0) {
            continue;
        }
        if builder.len() + text.len() > limits.max_workspace_bytes {
            tracing::warn!(root = %root.display(), limit = limits.max_workspace_bytes, "workspace over [providers.offline] max_workspace_bytes: indexed in part");
            break;
        }
        if builder.add(entry.into_path(), &text) {
            files += 1;
        }
    }
    let bytes = builder.len();
    (builder.build(), files, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IndexLimits = IndexLimits {
        max_file_bytes: 1 << 20,
        max_workspace_bytes: 1 << 24,
    };

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn roots_are_git_roots_or_directories_never_slash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/.git")).unwrap();
        std::fs::create_dir_all(dir.path().join("repo/src/deep")).unwrap();
        let file = dir.path().join("repo/src/deep/x.rs");
        assert_eq!(workspace_root(&file).unwrap(), dir.path().join("repo"));
        let missing = dir.path().join("repo/src/not/yet/there.rs");
        assert_eq!(workspace_root(&missing).unwrap(), dir.path().join("repo"));
        assert_eq!(
            workspace_root(Path::new("/nonexistent-dir-xyz/file.rs")),
            None
        );
        let loose = dir.path().join("loose/file.rs");
        assert_eq!(
            workspace_root(&loose),
            None,
            "no repository, no directory: no workspace"
        );
        std::fs::create_dir(dir.path().join("loose")).unwrap();
        assert_eq!(workspace_root(&loose).unwrap(), dir.path().join("loose"));
    }

    #[test]
    fn indexing_respects_gitignore_skips_binaries_and_follows_edits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join(".git")).unwrap();
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        std::fs::create_dir(root.join("target")).unwrap();
        std::fs::write(root.join("target/gen.rs"), "fn ignored_symbol() {}").unwrap();
        std::fs::write(root.join("lib.rs"), "fn visible_symbol() {}").unwrap();
        std::fs::write(root.join("blob.bin"), b"binary\0stuff visible_symbol").unwrap();
        let workspaces = Workspaces::new(LIMITS);
        let ws = workspaces.for_file(&root.join("lib.rs")).unwrap();
        wait_for("first build", || ws.corpus().is_some());
        let corpus = ws.corpus().unwrap();
        assert_eq!(corpus.find(b"visible_symbol").len(), 1, "binary skipped");
        assert_eq!(
            corpus.find(b"ignored_symbol").len(),
            0,
            ".gitignore respected"
        );

        std::fs::write(root.join("new.rs"), "fn freshly_written() {}").unwrap();
        wait_for("rebuild after an edit", || {
            ws.corpus()
                .is_some_and(|c| c.find(b"freshly_written").len() == 1)
        });
        assert!(ws.stats().builds >= 2);
    }
}
