//! Workspaces: which directory a file belongs to, and its index, built and kept current in the
//! background.
//!
//! A file's workspace is its git root (the nearest ancestor with `.git`), never a home
//! directory or `/`: a file outside any repository is completed from its buffer alone, unless
//! `[providers.offline] roots` names its directory. The first completion in a workspace starts a
//! thread that indexes it (respecting `.gitignore`, skipping binaries and large files) and then
//! watches it with `notify`; changes (outside ignored paths and `.git`) are batched until
//! [`REBUILD_DEBOUNCE`] passes without one, then only the changed paths are looked at again
//! ([`crate::reconcile`]) and the next snapshot, which shares every segment the change did not
//! touch ([`crate::corpus`]), is swapped in, so predictions never wait on indexing and never
//! see a half-built index.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::corpus::Corpus;
use crate::reconcile::{Index, Scope};

/// How long changes settle before the index is rebuilt.
pub const REBUILD_DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a rebuild waits for a stream of changes to settle.
const REBUILD_MAX_WAIT: Duration = Duration::from_secs(3);
/// Workspaces indexed at once at most (each holds a thread, a watcher and an index); a new
/// one past it evicts the least recently used.
pub const MAX_WORKSPACES: usize = 32;
/// How often an indexing thread waiting for changes looks whether it was evicted.
const EVICTION_CHECK: Duration = Duration::from_secs(1);

/// Limits of indexing.
#[derive(Debug, Clone, Copy)]
pub struct IndexLimits {
    /// Larger files are skipped.
    pub max_file_bytes: u64,
    /// Indexing stops past this many bytes.
    pub max_workspace_bytes: usize,
}

/// Paths the user said never to read (`[providers.offline] deny`, in `.gitignore` syntax),
/// on top of the built-in [`holds_secrets`]: never indexed, never shown to a model.
#[derive(Debug, Clone, Default)]
pub struct Deny(Option<Arc<ignore::gitignore::Gitignore>>);

impl Deny {
    /// The matcher for `patterns`; an error names the pattern that is not one.
    pub fn new(patterns: &[String]) -> Result<Deny, String> {
        if patterns.is_empty() {
            return Ok(Deny(None));
        }
        let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
        for pattern in patterns {
            // The matcher is rooted at `/`, where `.gitignore` would anchor a pattern with a
            // slash in it (`config/secrets.yaml`) and so never match inside a workspace: such
            // a pattern matches at any depth instead; a leading `/` still means an absolute
            // path.
            let inner = pattern.trim_end_matches('/');
            let anywhere =
                !pattern.starts_with('/') && !pattern.starts_with("**/") && inner.contains('/');
            let line = if anywhere {
                format!("**/{pattern}")
            } else {
                pattern.clone()
            };
            builder
                .add_line(None, &line)
                .map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        }
        builder
            .build()
            .map(|g| Deny(Some(Arc::new(g))))
            .map_err(|e| e.to_string())
    }

    /// Whether `path` (absolute) or a directory above it is denied.
    pub fn denies(&self, path: &Path) -> bool {
        let Some(matcher) = &self.0 else {
            return false;
        };
        // The matcher's root is `/`: only an absolute path can be matched with its parents.
        path.is_absolute() && matcher.matched_path_or_any_parents(path, false).is_ignore()
    }

    /// Whether a file must never be read: a credentials file, or one the user denied.
    pub fn excludes(&self, path: &Path) -> bool {
        holds_secrets(path) || self.denies(path)
    }
}

/// One workspace and its current index.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    corpus: RwLock<Option<Arc<Corpus>>>,
    builds: Mutex<BuildStats>,
    /// When a completion last asked for it (least recently used goes first).
    last_used: Mutex<Instant>,
    /// Set when it is evicted: its thread stops and its index is dropped.
    evicted: std::sync::atomic::AtomicBool,
    /// Configured by the user (`[providers.offline] roots`): never evicted.
    pinned: bool,
}

/// What the index holds and what its last update did.
#[derive(Debug, Clone, Default)]
pub struct BuildStats {
    /// Updates so far, the first build included.
    pub builds: u64,
    /// Files in the current index.
    pub files: usize,
    /// Bytes of text indexed.
    pub bytes: usize,
    /// Segments of the current index.
    pub segments: usize,
    /// How long the last update took.
    pub last_build: Duration,
    /// Files the last update read.
    pub last_read: usize,
    /// Bytes of text the last update sorted (the work it did).
    pub last_sorted_bytes: usize,
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

    /// Whether it was evicted (its index is gone and will not come back).
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(std::sync::atomic::Ordering::Acquire)
    }

    fn touch(&self) {
        if let Ok(mut at) = self.last_used.lock() {
            *at = Instant::now();
        }
    }

    fn last_used(&self) -> Instant {
        self.last_used
            .lock()
            .map(|at| *at)
            .unwrap_or_else(|_| Instant::now())
    }

    fn memory_bytes(&self) -> usize {
        self.corpus().map_or(0, |c| c.memory_bytes())
    }

    fn evict(&self) {
        self.evicted
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(mut corpus) = self.corpus.write() {
            *corpus = None;
        }
    }
}

/// Every workspace the daemon has seen.
#[derive(Debug, Clone)]
pub struct Workspaces {
    known: Known,
    limits: IndexLimits,
    deny: Deny,
}

/// Every workspace indexed now, and the memory their indexes may take together.
#[derive(Debug, Clone)]
struct Known {
    map: Arc<Mutex<HashMap<PathBuf, Arc<Workspace>>>>,
    max_total_bytes: usize,
}

impl Known {
    /// Evicts the least recently used workspaces, other than `keep`, until the indexes fit the
    /// budget and a place is free for `adding` more.
    fn make_room(&self, keep: Option<&Path>, adding: usize) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.make_room_in(&mut map, keep, adding);
    }

    /// [`Known::make_room`] with the map already locked (so that a caller can insert under
    /// the same lock, and concurrent opens never take the count past [`MAX_WORKSPACES`]).
    fn make_room_in(
        &self,
        map: &mut HashMap<PathBuf, Arc<Workspace>>,
        keep: Option<&Path>,
        adding: usize,
    ) {
        loop {
            let total: usize = map.values().map(|w| w.memory_bytes()).sum();
            let over = total > self.max_total_bytes || map.len() + adding > MAX_WORKSPACES;
            if !over {
                return;
            }
            let victim = map
                .values()
                .filter(|w| Some(w.root()) != keep && !w.pinned)
                .min_by_key(|w| w.last_used())
                .cloned();
            let Some(victim) = victim else { return };
            map.remove(victim.root());
            victim.evict();
            tracing::info!(
                root = %victim.root().display(),
                index_bytes = total,
                budget = self.max_total_bytes,
                workspaces = map.len(),
                "evicted the least recently used workspace's index"
            );
        }
    }
}

impl Workspaces {
    /// No workspaces yet.
    pub fn new(limits: IndexLimits) -> Workspaces {
        Workspaces::with_deny(limits, Deny::default())
    }

    /// No workspaces yet; `deny` is never indexed.
    pub fn with_deny(limits: IndexLimits, deny: Deny) -> Workspaces {
        Workspaces::with_budget(limits, deny, usize::MAX)
    }

    /// No workspaces yet; `deny` is never indexed, and the indexes together take at most
    /// `max_total_bytes` of memory (the least recently used are evicted past it).
    pub fn with_budget(limits: IndexLimits, deny: Deny, max_total_bytes: usize) -> Workspaces {
        Workspaces {
            known: Known {
                map: Arc::default(),
                max_total_bytes,
            },
            limits,
            deny,
        }
    }

    /// The workspace of `file` (an absolute path; it need not exist yet), starting its
    /// indexing if it is new. `None` when no existing directory contains it.
    pub fn for_file(&self, file: &Path) -> Option<Arc<Workspace>> {
        let root = workspace_root(file)?;
        self.open(root)
    }

    /// The workspace rooted at `root`, starting its indexing if it is new (past
    /// [`MAX_WORKSPACES`], the least recently used one is evicted to make room).
    pub fn open(&self, root: PathBuf) -> Option<Arc<Workspace>> {
        self.open_as(root, false)
    }

    /// [`Workspaces::open`] for a root the user configured: it is never evicted.
    pub fn open_pinned(&self, root: PathBuf) -> Option<Arc<Workspace>> {
        self.open_as(root, true)
    }

    fn open_as(&self, root: PathBuf, pinned: bool) -> Option<Arc<Workspace>> {
        {
            let known = self.known.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(workspace) = known.get(&root) {
                workspace.touch();
                return Some(workspace.clone());
            }
        }
        let mut known = self.known.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(workspace) = known.get(&root) {
            // Opened by another completion meanwhile.
            return Some(workspace.clone());
        }
        self.known.make_room_in(&mut known, None, 1);
        let workspace = Arc::new(Workspace {
            root: root.clone(),
            corpus: RwLock::new(None),
            builds: Mutex::new(BuildStats::default()),
            last_used: Mutex::new(Instant::now()),
            evicted: std::sync::atomic::AtomicBool::new(false),
            pinned,
        });
        known.insert(root.clone(), workspace.clone());
        drop(known);
        let limits = self.limits;
        let deny = self.deny.clone();
        let indexed = workspace.clone();
        let budget = self.known.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("index {}", root.display()))
            .spawn(move || index_and_watch(&indexed, limits, &deny, &budget));
        if let Err(error) = spawned {
            tracing::warn!(root = %root.display(), %error, "cannot start the indexing thread");
        }
        Some(workspace)
    }

    /// All workspaces indexed now.
    pub fn all(&self) -> Vec<Arc<Workspace>> {
        let known = self.known.map.lock().unwrap_or_else(|e| e.into_inner());
        known.values().cloned().collect()
    }
}

/// The git root of `file` (it need not exist yet), resolved canonically: `..` and symlinks are
/// resolved first, so one directory is one workspace however a path names it, and no path
/// reaches above the rules below. Never `/`, the home directory or anything above it, even
/// when they hold a `.git` (dotfile repositories): indexing a whole home is never what anyone
/// wants. A `.git` counts when it is a repository (a directory) or a work tree's pointer (a
/// file saying `gitdir:`), not any entry of that name.
pub fn workspace_root(file: &Path) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    workspace_root_under(file, home.as_deref())
}

/// [`workspace_root`] with the home directory given.
fn workspace_root_under(file: &Path, home: Option<&Path>) -> Option<PathBuf> {
    let home = home.map(|h| h.canonicalize().unwrap_or_else(|_| h.to_path_buf()));
    let mut dir = file.parent()?;
    while !dir.is_dir() {
        dir = dir.parent()?;
    }
    let dir = dir.canonicalize().ok()?;
    let mut cursor = Some(dir.as_path());
    while let Some(d) = cursor {
        // The home directory and every directory above it (a home at /home/me must not make
        // /home a workspace either).
        let too_wide = d.parent().is_none() || home.as_deref().is_some_and(|h| h.starts_with(d));
        if too_wide {
            return None;
        }
        if is_repository(&d.join(".git")) {
            return Some(d.to_path_buf());
        }
        cursor = d.parent();
    }
    None
}

/// Whether `git` is a repository's `.git`: a directory holding `HEAD` (a symlink to one too, as
/// some checkout tools make), or a work tree's or submodule's file pointing at one.
fn is_repository(git: &Path) -> bool {
    match std::fs::metadata(git) {
        Ok(meta) if meta.is_dir() => git.join("HEAD").exists() || git.join("objects").is_dir(),
        Ok(meta) if meta.is_file() => {
            std::fs::read(git).is_ok_and(|text| text.len() < 4096 && text.starts_with(b"gitdir:"))
        }
        _ => false,
    }
}

/// What the watcher saw.
enum Change {
    /// These paths changed (created, written, removed or renamed).
    Paths(Vec<PathBuf>),
    /// Track was lost (an error, an overflow, an ignore file changed): look at everything.
    Rescan,
}

/// Paths gathered in one batch at most; past it the whole tree is looked at instead.
const MAX_BATCH_PATHS: usize = 1024;

fn index_and_watch(workspace: &Workspace, limits: IndexLimits, deny: &Deny, budget: &Known) {
    let (tx, rx) = mpsc::channel();
    let root = workspace.root.clone();
    let (ignored, _) = ignore::gitignore::Gitignore::new(root.join(".gitignore"));
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (our own, while indexing, among them) change nothing, and neither do writes
        // to ignored paths (a build's output) or to `.git`.
        let event = match event {
            Ok(event) if !event.need_rescan() => event,
            _ => {
                let _ = tx.send(Change::Rescan);
                return;
            }
        };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let mut relevant = Vec::new();
        for path in event.paths {
            let Ok(relative) = path.strip_prefix(&root) else {
                continue;
            };
            if relative.components().any(|c| c.as_os_str() == ".git") {
                continue;
            }
            // New ignore rules can hide or reveal anything.
            if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some(".gitignore" | ".ignore")
            ) {
                let _ = tx.send(Change::Rescan);
                return;
            }
            if !ignored
                .matched_path_or_any_parents(&path, false)
                .is_ignore()
            {
                relevant.push(path);
            }
        }
        if !relevant.is_empty() {
            let _ = tx.send(Change::Paths(relevant));
        }
    })
    .and_then(|mut w| {
        w.watch(&workspace.root, RecursiveMode::Recursive)
            .map(|()| w)
    });
    if let Err(error) = &watcher {
        tracing::warn!(root = %workspace.root.display(), %error, "cannot watch for changes; the index will not follow edits");
    }
    let mut index = Index::default();
    update(workspace, &mut index, &Scope::All, limits, deny, budget);
    if watcher.is_err() {
        return;
    }
    loop {
        // Wait for a change, then let the burst settle; an evicted workspace's thread ends
        // (and its watcher with it).
        let first = match rx.recv_timeout(EVICTION_CHECK) {
            _ if workspace.is_evicted() => return,
            Ok(change) => change,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut paths: HashSet<PathBuf> = HashSet::new();
        let mut rescan = false;
        let mut take = |change: Change| match change {
            Change::Rescan => rescan = true,
            Change::Paths(changed) => paths.extend(changed),
        };
        take(first);
        let give_up = Instant::now() + REBUILD_MAX_WAIT;
        loop {
            let wait = REBUILD_DEBOUNCE.min(give_up.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(wait) {
                Ok(change) if Instant::now() < give_up => take(change),
                Ok(change) => {
                    take(change);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if workspace.is_evicted() {
            return;
        }
        let scope = if rescan || paths.len() > MAX_BATCH_PATHS {
            Scope::All
        } else {
            Scope::Paths(paths.into_iter().collect())
        };
        update(workspace, &mut index, &scope, limits, deny, budget);
    }
}

/// Brings `index` up to date for `scope` and publishes it.
fn update(
    workspace: &Workspace,
    index: &mut Index,
    scope: &Scope,
    limits: IndexLimits,
    deny: &Deny,
    budget: &Known,
) {
    let stop = || workspace.is_evicted();
    let first = matches!(scope, Scope::All) && workspace.corpus().is_none();
    let Some(done) = index.reconcile(&workspace.root, scope, limits, deny, &stop) else {
        // Nothing changed; the first build still publishes its (empty) index.
        if first && !workspace.is_evicted() {
            publish(workspace, index, budget);
        }
        return;
    };
    if workspace.is_evicted() {
        return;
    }
    publish(workspace, index, budget);
    let corpus = &index.corpus;
    if let Ok(mut stats) = workspace.builds.lock() {
        stats.builds += 1;
        stats.files = corpus.file_count();
        stats.bytes = corpus.text_bytes();
        stats.segments = corpus.segment_count();
        stats.last_build = done.elapsed;
        stats.last_read = done.read;
        stats.last_sorted_bytes = done.sorted.sorted_bytes;
    }
    tracing::info!(
        root = %workspace.root.display(),
        files = corpus.file_count(),
        bytes = corpus.text_bytes(),
        segments = corpus.segment_count(),
        read = done.read,
        dropped = done.dropped,
        sorted_bytes = done.sorted.sorted_bytes,
        ms = done.elapsed.as_millis() as u64,
        "{}",
        if first { "indexed workspace" } else { "updated workspace index" }
    );
}

/// Makes `index` the one predictions read.
fn publish(workspace: &Workspace, index: &Index, budget: &Known) {
    if let Ok(mut current) = workspace.corpus.write() {
        *current = Some(index.corpus.clone());
    }
    // The new index may take the whole set past the budget: the least recently used others go.
    budget.make_room(Some(workspace.root()), 0);
}

/// Reads every source-like file under `root` into a corpus.
pub fn build_corpus(root: &Path, limits: IndexLimits) -> (Corpus, usize, usize) {
    build_corpus_except(root, limits, &Deny::default())
}

/// [`build_corpus`], never reading what `deny` excludes.
pub fn build_corpus_except(
    root: &Path,
    limits: IndexLimits,
    deny: &Deny,
) -> (Corpus, usize, usize) {
    let mut index = Index::default();
    index.reconcile(root, &Scope::All, limits, deny, &|| false);
    let corpus = Arc::unwrap_or_clone(index.corpus);
    let (files, bytes) = (corpus.file_count(), corpus.text_bytes());
    (corpus, files, bytes)
}

/// Whether a file is of a kind that holds credentials (`.env`, private keys, token stores).
/// Such files are never indexed: what is indexed can be proposed as a completion and shown to
/// a remote model as context, and a secret must reach neither. A `.gitignore` usually covers
/// them already; this holds when it does not.
pub fn holds_secrets(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    let name = name.to_ascii_lowercase();
    let extension = name.rsplit_once('.').map_or("", |(_, e)| e);
    let stem = name.split('.').next().unwrap_or("");
    let example = name.ends_with(".example") || name.ends_with(".sample");
    name == ".env"
        || name.starts_with(".env.") && !example
        // `creds.env`, `prod.env`: the same as `.env` (an AWS key came back as a completion
        // from one).
        || extension == "env"
        // `credentials.json`, `secrets.yaml`: data files by those names, not code that handles
        // them (`secrets.py`, `credentials.go` are source).
        || !example
            && matches!(stem, "credentials" | "creds" | "secrets" | "secret")
            && matches!(
                extension,
                "json" | "yml" | "yaml" | "toml" | "txt" | "ini" | "conf" | "cfg" | "csv"
                    | "xml" | "properties" | "env" | "credentials" | "creds" | "secrets"
                    | "secret"
            )
        // SSH keys of every kind (`id_rsa`, `id_ed25519`, `id_ecdsa_sk`…), not their `.pub`.
        || name.starts_with("id_") && !name.contains('.')
        || matches!(
            name.as_str(),
            ".netrc"
                | ".npmrc"
                | ".pypirc"
                | ".git-credentials"
                | "credentials"
                | "credentials.json"
                | "apps.json"
                | "hosts.json"
                | ".htpasswd"
        )
        || name.starts_with("id_rsa")
        || name.starts_with("id_ed25519")
        || name.starts_with("id_ecdsa")
        || matches!(
            extension,
            "pem" | "key" | "p12" | "pfx" | "keystore" | "jks" | "asc" | "gpg" | "kdbx" | "age"
        )
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
        std::fs::write(dir.path().join("repo/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::create_dir_all(dir.path().join("repo/src/deep")).unwrap();
        let file = dir.path().join("repo/src/deep/x.rs");
        assert_eq!(workspace_root(&file).unwrap(), dir.path().join("repo"));
        let missing = dir.path().join("repo/src/not/yet/there.rs");
        assert_eq!(workspace_root(&missing).unwrap(), dir.path().join("repo"));
        assert_eq!(
            workspace_root(Path::new("/nonexistent-dir-xyz/file.rs")),
            None
        );
        std::fs::create_dir(dir.path().join("loose")).unwrap();
        let loose = dir.path().join("loose/file.rs");
        assert_eq!(
            workspace_root(&loose),
            None,
            "outside a repository: no workspace"
        );
    }

    fn repo(path: &Path) {
        std::fs::create_dir_all(path.join(".git")).unwrap();
        std::fs::write(path.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    }

    /// Issue 13, finding 8: the "never index $HOME" rule held only for the path as written.
    #[test]
    fn home_is_never_a_workspace_however_a_path_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home/me");
        repo(&home); // a dotfile repository
        std::fs::create_dir_all(home.join("sub")).unwrap();
        std::os::unix::fs::symlink(&home, dir.path().join("link")).unwrap();
        let under = |p: &Path| workspace_root_under(p, Some(&home));
        assert_eq!(under(&home.join("x.rs")), None);
        assert_eq!(
            under(&home.join("sub/../x.rs")),
            None,
            "`..` resolved first"
        );
        assert_eq!(
            under(&dir.path().join("link/x.rs")),
            None,
            "symlinks resolved first"
        );
        // Above home: /home is not a workspace either, even with a .git.
        repo(&dir.path().join("home"));
        assert_eq!(under(&dir.path().join("home/x.rs")), None);
        // A real project under home is one, named canonically however it is reached.
        let project = home.join("src/shop");
        repo(&project);
        let canonical = project.canonicalize().unwrap();
        for path in [
            project.join("lib.rs"),
            home.join("src/shop/../shop/lib.rs"),
            dir.path().join("link/src/shop/lib.rs"),
        ] {
            assert_eq!(under(&path), Some(canonical.clone()), "{}", path.display());
        }
    }

    #[test]
    fn a_git_entry_that_is_not_a_repository_does_not_make_a_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake");
        std::fs::create_dir_all(fake.join(".git")).unwrap(); // empty: no HEAD
        assert_eq!(workspace_root_under(&fake.join("x.rs"), None), None);
        let planted = dir.path().join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::write(planted.join(".git"), "anything").unwrap();
        assert_eq!(workspace_root_under(&planted.join("x.rs"), None), None);
        let worktree = dir.path().join("worktree");
        std::fs::create_dir_all(&worktree).unwrap();
        std::fs::write(
            worktree.join(".git"),
            "gitdir: /elsewhere/.git/worktrees/w\n",
        )
        .unwrap();
        assert_eq!(
            workspace_root_under(&worktree.join("x.rs"), None),
            Some(worktree.canonicalize().unwrap())
        );
    }

    /// Issue 13, finding 2: indexes were kept forever, and the 33rd workspace was never
    /// indexed. Past the budget (or 32 workspaces) the least recently used index goes.
    #[test]
    fn the_least_recently_used_index_is_evicted_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let root = dir.path().join(name);
            repo(&root);
            std::fs::write(
                root.join("lib.rs"),
                format!("fn {name}_symbol() {{}}\n").repeat(200),
            )
            .unwrap();
            root.canonicalize().unwrap()
        };
        let (a, b, c) = (make("alpha"), make("beta"), make("gamma"));
        let one = {
            let probe = Workspaces::new(LIMITS);
            let ws = probe.for_file(&a.join("lib.rs")).unwrap();
            wait_for("a first build", || ws.corpus().is_some());
            ws.corpus().unwrap().memory_bytes()
        };
        // Room for two indexes, not three.
        let workspaces = Workspaces::with_budget(LIMITS, Deny::default(), 2 * one + one / 2);
        let wa = workspaces.for_file(&a.join("lib.rs")).unwrap();
        wait_for("alpha", || wa.corpus().is_some());
        std::thread::sleep(Duration::from_millis(5));
        let wb = workspaces.for_file(&b.join("lib.rs")).unwrap();
        wait_for("beta", || wb.corpus().is_some());
        std::thread::sleep(Duration::from_millis(5));
        workspaces.for_file(&a.join("lib.rs")); // alpha used again: beta is now the oldest
        let wc = workspaces.for_file(&c.join("lib.rs")).unwrap();
        wait_for("gamma, and beta evicted", || {
            wc.corpus().is_some() && wb.is_evicted()
        });
        assert!(wb.corpus().is_none(), "an evicted index is dropped");
        assert!(!wa.is_evicted() && wa.corpus().is_some());
        let roots: Vec<PathBuf> = workspaces
            .all()
            .iter()
            .map(|w| w.root().to_path_buf())
            .collect();
        assert_eq!(roots.len(), 2, "{roots:?}");
        // Asked for again, beta is indexed anew (the 33rd workspace used never to be).
        let wb = workspaces.for_file(&b.join("lib.rs")).unwrap();
        wait_for("beta again", || wb.corpus().is_some());
    }

    #[test]
    fn concurrent_opens_never_keep_more_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = (0..MAX_WORKSPACES + 16)
            .map(|i| {
                let root = dir.path().join(format!("r{i}"));
                repo(&root);
                root.canonicalize().unwrap()
            })
            .collect();
        let workspaces = Workspaces::new(LIMITS);
        std::thread::scope(|scope| {
            for chunk in roots.chunks(6) {
                let workspaces = &workspaces;
                scope.spawn(move || {
                    for root in chunk {
                        workspaces.open(root.clone());
                        assert!(workspaces.all().len() <= MAX_WORKSPACES);
                    }
                });
            }
        });
        assert_eq!(workspaces.all().len(), MAX_WORKSPACES);
    }

    #[test]
    fn denied_patterns_are_never_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        repo(&root);
        std::fs::create_dir_all(root.join("private")).unwrap();
        std::fs::write(root.join("lib.rs"), "fn visible_symbol() {}").unwrap();
        std::fs::write(root.join("notes.secret"), "fn denied_by_extension() {}").unwrap();
        std::fs::write(root.join("private/plan.rs"), "fn denied_by_directory() {}").unwrap();
        std::fs::create_dir_all(root.join("config")).unwrap();
        std::fs::write(root.join("config/prod.yaml"), "denied_by_path: yes").unwrap();
        let deny = Deny::new(&[
            "*.secret".to_owned(),
            "private/".to_owned(),
            "config/prod.yaml".to_owned(),
        ])
        .unwrap();
        let workspaces = Workspaces::with_deny(LIMITS, deny);
        let ws = workspaces.for_file(&root.join("lib.rs")).unwrap();
        wait_for("first build", || ws.corpus().is_some());
        let corpus = ws.corpus().unwrap();
        assert_eq!(corpus.find(b"visible_symbol").len(), 1);
        assert!(corpus.find(b"denied_by_extension").is_empty());
        assert!(corpus.find(b"denied_by_directory").is_empty());
        assert!(
            corpus.find(b"denied_by_path").is_empty(),
            "a pattern with a slash matches inside the workspace"
        );
        let bad = Deny::new(&["{unclosed".to_owned()]).unwrap_err();
        assert!(bad.contains("{unclosed"), "{bad}");
    }

    #[test]
    fn files_that_hold_credentials_are_recognised() {
        for name in [
            ".env",
            ".env.local",
            "creds.env",
            "prod.env",
            "credentials",
            "credentials.yml",
            "secrets.json",
            "creds.txt",
            "id_rsa",
            "id_ed25519_sk",
            "id_dsa",
            "server.key",
            "cert.pem",
            "vault.kdbx",
            ".netrc",
            ".git-credentials",
        ] {
            assert!(holds_secrets(Path::new(name)), "{name}");
        }
        for name in [
            "main.rs",
            ".env.example",
            "secrets.example",
            "id_generator.rs",
            "environment.rs",
            "secret_handshake.rs",
            "credentials_test.go",
            "secrets.py",
            "credentials.go",
            "secret.rs",
            "creds.ts",
        ] {
            assert!(!holds_secrets(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn indexing_respects_gitignore_skips_binaries_and_follows_edits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        std::fs::create_dir(root.join("target")).unwrap();
        std::fs::write(root.join("target/gen.rs"), "fn ignored_symbol() {}").unwrap();
        std::fs::write(root.join("lib.rs"), "fn visible_symbol() {}").unwrap();
        std::fs::write(root.join("blob.bin"), b"binary\0stuff visible_symbol").unwrap();
        std::fs::write(root.join(".env"), "OPENAI_API_KEY=sk-secret_in_env").unwrap();
        std::fs::write(root.join("server.key"), "secret_in_key_file").unwrap();
        std::fs::write(root.join("id_ed25519"), "secret_in_ssh_key").unwrap();
        let workspaces = Workspaces::new(LIMITS);
        let ws = workspaces.for_file(&root.join("lib.rs")).unwrap();
        wait_for("first build", || ws.corpus().is_some());
        let corpus = ws.corpus().unwrap();
        assert_eq!(corpus.find(b"visible_symbol").len(), 1, "binary skipped");
        assert!(
            corpus.find(b"secret_in_env").is_empty(),
            ".env never indexed"
        );
        assert!(
            corpus.find(b"secret_in_key_file").is_empty(),
            "key files never indexed"
        );
        assert!(
            corpus.find(b"secret_in_ssh_key").is_empty(),
            "private keys never indexed"
        );
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

    /// Issue 13, finding 2: appending to one file rebuilt the whole index (three times a
    /// minute on a 200 MB repository, old and new side by side). Now an edit sorts that file
    /// alone and the next index shares the rest with the one before.
    #[test]
    fn an_edit_sorts_only_the_edited_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        repo(&root);
        for i in 0..40 {
            let lines: String = (0..1000)
                .map(|n| format!("    let value_{i}_{n} = compute({n});\n"))
                .collect();
            std::fs::write(root.join(format!("f{i}.rs")), lines).unwrap();
        }
        std::fs::write(root.join("edited.rs"), "fn first_version() {}\n").unwrap();
        let workspaces = Workspaces::new(LIMITS);
        let ws = workspaces.for_file(&root.join("edited.rs")).unwrap();
        wait_for("first build", || ws.corpus().is_some());
        let first = ws.corpus().unwrap();
        let total = ws.stats().bytes;
        assert!(total > 1 << 20, "{total} bytes");
        let untouched = first
            .positions(&first.find(b"value_7_500 "), 1)
            .next()
            .unwrap();

        let mut text = String::from("fn first_version() {}\n");
        for round in 0..3 {
            text.push_str(&format!("fn appended_{round}() {{}}\n"));
            std::fs::write(root.join("edited.rs"), &text).unwrap();
            let word = format!("appended_{round}");
            wait_for("the edit", || {
                ws.corpus()
                    .is_some_and(|c| c.positions(&c.find(word.as_bytes()), 4).count() == 1)
            });
            let stats = ws.stats();
            assert_eq!(stats.last_read, 1, "one file read");
            assert!(
                stats.last_sorted_bytes <= text.len() + 1,
                "sorted {} bytes of {total} for a {}-byte file",
                stats.last_sorted_bytes,
                text.len()
            );
        }
        let now = ws.corpus().unwrap();
        assert!(
            now.shares_segment_at(untouched, &first),
            "the big segment is shared, not rebuilt"
        );
        assert_eq!(now.file_count(), 41);
        assert_eq!(
            now.positions(&now.find(b"first_version"), 4).count(),
            1,
            "one live copy"
        );
    }
}
