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
    /// SHA-256 of what the task left (hex); `None` if the task removed it.
    pub after: Option<String>,
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

    /// Saves what `path` holds now, if this task has not changed it yet: call before changing
    /// it.
    pub fn before_change(&mut self, path: &Path) -> io::Result<()> {
        if self.entries.iter().any(|e| e.path == path) {
            return Ok(());
        }
        let (backup, mode) = match atomic::read(path) {
            Ok(contents) => {
                let name = format!("{:04}.bak", self.entries.len() + 1);
                atomic::write(&self.dir.join(&name), &contents)?;
                let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
                (Some(name), Some(mode))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(e),
        };
        self.entries.push(Entry {
            path: path.to_path_buf(),
            backup,
            mode,
            after: None,
        });
        self.save()
    }

    /// Records what `path` holds after a change (`None`: removed).
    pub fn after_change(&mut self, path: &Path, now: Option<&[u8]>) -> io::Result<()> {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.path == path) {
            entry.after = now.map(digest);
        }
        self.save()
    }

    /// Puts every file back as it was before the task, or, if any changed since, nothing.
    pub fn undo(&self) -> Result<Undone, UndoError> {
        let io_error = |path: &Path, source: io::Error| UndoError::Io {
            task: self.task.clone(),
            path: path.display().to_string(),
            source,
        };
        let mut changed = Vec::new();
        for entry in &self.entries {
            let now = match atomic::read(&entry.path) {
                Ok(contents) => Some(digest(&contents)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_error(&entry.path, e)),
            };
            if now != entry.after {
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
        Ok(undone)
    }
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
        journal.before_change(path).unwrap();
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

        let journal = find(state.path(), "t1").unwrap();
        assert_eq!(journal.entries.len(), 3, "one entry per file");
        let undone = journal.undo().unwrap();
        assert_eq!(fs::read(&edited).unwrap(), b"fn main() {}\n");
        assert_eq!(
            fs::metadata(&edited).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read(&removed).unwrap(), b"old\n");
        assert!(!created.exists());
        assert_eq!(undone.removed, [created]);
        assert_eq!(undone.restored.len(), 2);
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
