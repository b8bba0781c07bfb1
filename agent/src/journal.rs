//! What a task changed, kept so that `reaper agent undo TASK_ID` can put every file back.
//!
//! Before a task first changes a file, its contents (or the fact that it did not exist) are
//! saved in the task's journal directory; after every change the journal records a digest
//! (SHA-256) of what the task left there. Undo restores each file — rewriting the old contents
//! atomically, or removing a file the task created — but only if every file is still what the
//! task left: a file changed since (by the user, or another task) makes the whole undo refuse,
//! naming it, rather than lose that change. The journal itself is written atomically after
//! each change, so a task killed at any moment leaves a journal that matches the files.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic;

/// The journal's file in its directory.
const JOURNAL: &str = "journal.json";

/// One file a task changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The file (resolved, absolute).
    pub path: PathBuf,
    /// Where its contents from before the task are, in the journal directory; `None` if the
    /// task created it.
    pub backup: Option<String>,
    /// Its permissions from before the task.
    pub mode: Option<u32>,
    /// SHA-256 of what it held before the task; `None` if it did not exist.
    #[serde(default)]
    pub before: Option<String>,
    /// SHA-256 of what the task left (hex); `None` if the task removed it (or, before its
    /// first change, if it did not exist).
    pub after: Option<String>,
    /// SHA-256 of what the change under way writes (empty: it removes the file), until it is
    /// done: a task killed mid-change leaves the file as `after` or as this, and either is
    /// the task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// The record of one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    /// The task.
    pub task: String,
    /// Its working directory.
    pub root: PathBuf,
    /// What it changed, in the order it first changed each file.
    pub entries: Vec<Entry>,
    /// Whether it has been undone.
    #[serde(default)]
    pub undone: bool,
    #[serde(skip)]
    dir: PathBuf,
}

/// Why an undo did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UndoError {
    /// No journal for that task.
    #[error(
        "no task {task} is recorded in {dir}: `reaper agent` prints each task's id as it starts"
    )]
    Unknown {
        /// The task.
        task: String,
        /// Where journals are.
        dir: String,
    },
    /// The task is still running: its journal is not finished.
    #[error("task {task} is still running: cancel it first (Ctrl-C in `reaper agent`), then undo")]
    Running {
        /// The task.
        task: String,
    },
    /// Undone already.
    #[error("task {task} was undone already")]
    AlreadyUndone {
        /// The task.
        task: String,
    },
    /// Files changed since the task: nothing was undone.
    #[error("nothing was undone: {} changed since task {task} ({}); undo would lose those changes", if .changed.len() == 1 { "a file" } else { "files" }, .changed.join(", "))]
    Changed {
        /// The task.
        task: String,
        /// The files changed since.
        changed: Vec<String>,
    },
    /// Reading or writing failed.
    #[error("undo of task {task} failed at {path}: {source}")]
    Io {
        /// The task.
        task: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What an undo did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Undone {
    /// Files put back as they were.
    pub restored: Vec<PathBuf>,
    /// Files the task had created, removed.
    pub removed: Vec<PathBuf>,
}

/// SHA-256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Journal {
    /// A new, empty journal for `task` in `dir` (created, private to the user).
    pub fn create(dir: &Path, task: &str, root: &Path) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let journal = Journal {
            task: task.to_owned(),
            root: root.to_path_buf(),
            entries: Vec::new(),
            undone: false,
            dir: dir.to_path_buf(),
        };
        journal.save()?;
        Ok(journal)
    }

    /// The journal kept in `dir`.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        let text = fs::read(dir.join(JOURNAL))?;
        let mut journal: Journal = serde_json::from_slice(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        journal.dir = dir.to_path_buf();
        Ok(journal)
    }

    fn save(&self) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        atomic::write(&self.dir.join(JOURNAL), &text)
    }

    /// Saves what `path` holds now, if this task has not changed it yet, and notes the change
    /// about to be made (`intended`: the new contents, `None` to remove it): call before
    /// changing it.
    pub fn before_change(&mut self, path: &Path, intended: Option<&[u8]>) -> io::Result<()> {
        let pending = Some(intended.map(digest).unwrap_or_default());
        if let Some(entry) = self.entries.iter_mut().find(|e| e.path == path) {
            entry.pending = pending;
            return self.save();
        }
        let (backup, mode, now) = match atomic::read(path) {
            Ok(contents) => {
                let name = format!("{:04}.bak", self.entries.len() + 1);
                atomic::write(&self.dir.join(&name), &contents)?;
                let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
                (Some(name), Some(mode), Some(digest(&contents)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None, None),
            Err(e) => return Err(e),
        };
        // Until the change is done, what the task "left" is what was there.
        self.entries.push(Entry {
            path: path.to_path_buf(),
            backup,
            mode,
            before: now.clone(),
            after: now,
            pending,
        });
        self.save()
    }

    /// The files the task changed: those whose contents differ from before it.
    pub fn changed(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.after != e.before)
    }

    /// Records what `path` holds after a change (`None`: removed).
    pub fn after_change(&mut self, path: &Path, now: Option<&[u8]>) -> io::Result<()> {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.path == path) {
            entry.after = now.map(digest);
            entry.pending = None;
        }
        self.save()
    }

    /// Puts every file back as it was before the task, or, if any changed since, nothing.
    pub fn undo(&mut self) -> Result<Undone, UndoError> {
        let io_error = |path: &Path, source: io::Error| UndoError::Io {
            task: self.task.clone(),
            path: path.display().to_string(),
            source,
        };
        if self.undone {
            return Err(UndoError::AlreadyUndone {
                task: self.task.clone(),
            });
        }
        let mut changed = Vec::new();
        for entry in &self.entries {
            let now = match atomic::read(&entry.path) {
                Ok(contents) => Some(digest(&contents)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_error(&entry.path, e)),
            };
            // A change cut short by a crash may or may not have happened: both are the task's.
            let pending = entry.pending.as_ref().is_some_and(|p| match &now {
                Some(digest) => digest == p,
                None => p.is_empty(),
            });
            // An undo cut short put some files back already: those are done.
            let restored = now == entry.before;
            if now != entry.after && !pending && !restored {
                changed.push(entry.path.display().to_string());
            }
        }
        if !changed.is_empty() {
            return Err(UndoError::Changed {
                task: self.task.clone(),
                changed,
            });
        }
        let mut undone = Undone::default();
        // The last change first: a file created in a directory the task also created is gone
        // before anything else is.
        for entry in self.entries.iter().rev() {
            if entry.after == entry.before && entry.pending.is_none() {
                continue; // never changed (a change that failed)
            }
            match &entry.backup {
                Some(name) => {
                    let contents = fs::read(self.dir.join(name))
                        .map_err(|e| io_error(&self.dir.join(name), e))?;
                    atomic::write(&entry.path, &contents).map_err(|e| io_error(&entry.path, e))?;
                    if let Some(mode) = entry.mode {
                        fs::set_permissions(&entry.path, fs::Permissions::from_mode(mode))
                            .map_err(|e| io_error(&entry.path, e))?;
                    }
                    undone.restored.push(entry.path.clone());
                }
                None => {
                    match atomic::remove(&entry.path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error(&entry.path, e)),
                    }
                    undone.removed.push(entry.path.clone());
                }
            }
        }
        self.undone = true;
        self.save()
            .map_err(|e| io_error(&self.dir.join(JOURNAL), e))?;
        Ok(undone)
    }
}

/// The lock a running task holds on its journal (released when dropped, or when the
/// process dies, `kill -9` included: the kernel drops it).
#[derive(Debug)]
pub struct TaskLock(#[allow(dead_code)] fs::File);

/// The lock file in a journal's directory.
const LOCK: &str = "lock";

/// Takes the lock of the journal in `dir`; `Ok(None)` if someone holds it.
pub fn lock(dir: &Path) -> io::Result<Option<TaskLock>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(TaskLock(file))),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Keeps the newest `keep` journals in `journals` (by when they were last written), removing
/// the rest, but never one whose task is running: the journals' disk use has a bound.
pub fn prune(journals: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(journals) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let written = fs::metadata(e.path().join(JOURNAL))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (written, e.path())
        })
        .collect();
    if all.len() <= keep {
        return;
    }
    all.sort_by_key(|(written, _)| std::cmp::Reverse(*written));
    for (_, dir) in all.into_iter().skip(keep) {
        if let Ok(Some(held)) = lock(&dir) {
            let removed = fs::remove_dir_all(&dir);
            drop(held);
            if let Err(error) = removed {
                tracing::warn!(dir = %dir.display(), %error, "an old agent journal could not be removed");
            }
        }
    }
}

/// Undoes task `task` from its journal in `journals`: refused while the task runs.
pub fn undo_task(journals: &Path, task: &str) -> Result<Undone, UndoError> {
    // The lock first, then the journal: read before, it could be older than what the task
    // (ending meanwhile) last wrote.
    find(journals, task)?;
    let dir = journals.join(task);
    let io_error = |source| UndoError::Io {
        task: task.to_owned(),
        path: dir.display().to_string(),
        source,
    };
    let Some(_held) = lock(&dir).map_err(io_error)? else {
        return Err(UndoError::Running {
            task: task.to_owned(),
        });
    };
    find(journals, task)?.undo()
}

/// The journal of `task` among those kept in `journals` (one directory per task).
pub fn find(journals: &Path, task: &str) -> Result<Journal, UndoError> {
    let plain = !task.is_empty() && task.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let unknown = || UndoError::Unknown {
        task: task.to_owned(),
        dir: journals.display().to_string(),
    };
    if !plain {
        return Err(unknown());
    }
    Journal::open(&journals.join(task)).map_err(|_| unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's changes through the journal, as the agent makes them.
    fn change(journal: &mut Journal, path: &Path, contents: Option<&[u8]>) {
        journal.before_change(path, contents).unwrap();
        match contents {
            Some(bytes) => atomic::write(path, bytes).unwrap(),
            None => atomic::remove(path).unwrap(),
        }
        journal.after_change(path, contents).unwrap();
    }

    #[test]
    fn undo_restores_the_tree_byte_for_byte() {
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let edited = work.path().join("src/lib.rs");
        let removed = work.path().join("old.txt");
        fs::create_dir(work.path().join("src")).unwrap();
        fs::write(&edited, b"fn main() {}\n").unwrap();
        fs::set_permissions(&edited, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(&removed, b"old\n").unwrap();
        let created = work.path().join("docs/new.md");

        let mut journal = Journal::create(&state.path().join("t1"), "t1", work.path()).unwrap();
        change(&mut journal, &edited, Some(b"fn main() { println!(); }\n"));
        change(
            &mut journal,
            &edited,
            Some(b"fn main() { println!(\"hi\"); }\n"),
        );
        change(&mut journal, &created, Some(b"# New\n"));
        change(&mut journal, &removed, None);

        drop(journal);
        let held = lock(&state.path().join("t1")).unwrap();
        assert!(matches!(
            undo_task(state.path(), "t1"),
            Err(UndoError::Running { .. })
        ));
        drop(held);
        let journal = find(state.path(), "t1").unwrap();
        assert_eq!(journal.entries.len(), 3, "one entry per file");
        let undone = undo_task(state.path(), "t1").unwrap();
        assert_eq!(fs::read(&edited).unwrap(), b"fn main() {}\n");
        assert_eq!(
            fs::metadata(&edited).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read(&removed).unwrap(), b"old\n");
        assert!(!created.exists());
        assert_eq!(undone.removed, [created]);
        assert_eq!(undone.restored.len(), 2);
        assert!(matches!(
            undo_task(state.path(), "t1"),
            Err(UndoError::AlreadyUndone { .. })
        ));
    }

    #[test]
    fn a_change_cut_short_by_a_crash_is_undone_whichever_side_it_stopped() {
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = work.path().join("f.txt");
        for written in [false, true] {
            fs::write(&file, b"old").unwrap();
            let task = format!("crash{written}");
            let mut journal =
                Journal::create(&state.path().join(&task), &task, work.path()).unwrap();
            journal.before_change(&file, Some(b"new")).unwrap();
            if written {
                atomic::write(&file, b"new").unwrap();
            }
            // Killed here: after_change never ran.
            drop(journal);
            undo_task(state.path(), &task).unwrap();
            assert_eq!(fs::read(&file).unwrap(), b"old", "written: {written}");
        }
        // Someone else's contents are still refused.
        let mut journal = Journal::create(&state.path().join("c"), "c", work.path()).unwrap();
        journal.before_change(&file, Some(b"new")).unwrap();
        fs::write(&file, b"the user's").unwrap();
        assert!(matches!(journal.undo(), Err(UndoError::Changed { .. })));
    }

    #[test]
    fn only_the_newest_journals_are_kept() {
        let state = tempfile::tempdir().unwrap();
        for i in 0..5 {
            Journal::create(&state.path().join(format!("t{i}")), "t", state.path()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let running = lock(&state.path().join("t0")).unwrap();
        prune(state.path(), 2);
        let mut left: Vec<String> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["t0", "t3", "t4"], "the running one stays");
        drop(running);
    }

    #[test]
    fn undo_refuses_when_a_file_changed_since_and_touches_nothing() {
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let a = work.path().join("a.txt");
        let b = work.path().join("b.txt");
        fs::write(&a, b"a0").unwrap();
        fs::write(&b, b"b0").unwrap();
        let mut journal = Journal::create(&state.path().join("t2"), "t2", work.path()).unwrap();
        change(&mut journal, &a, Some(b"a1"));
        change(&mut journal, &b, Some(b"b1"));
        fs::write(&b, b"b1 and the user's own edit").unwrap();
        let error = journal.undo().unwrap_err();
        assert!(matches!(error, UndoError::Changed { .. }), "{error}");
        assert!(error.to_string().contains("b.txt"), "{error}");
        assert_eq!(fs::read(&a).unwrap(), b"a1", "nothing undone");
        assert!(matches!(
            find(state.path(), "../etc"),
            Err(UndoError::Unknown { .. })
        ));
        assert!(matches!(
            find(state.path(), "nope"),
            Err(UndoError::Unknown { .. })
        ));
    }
}
