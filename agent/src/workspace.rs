//! The directory an agent task works in, and the only place it may read or write.
//!
//! Every path a model names goes through [`Workspace::resolve`]: relative to the task's
//! working directory, no `..`, no absolute path outside it, and nothing that leads out through
//! a symlink (each existing part is resolved by the kernel, and the result must still be
//! inside). Files are then opened with `O_NOFOLLOW`, so a symlink planted between the check
//! and the open is refused by the kernel rather than followed. A refused path is an error for
//! the step, never a crash.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Empty, or with a NUL byte.
    #[error("{0:?} is not a path")]
    Invalid(String),
    /// It climbs out with `..`.
    #[error("{0:?} goes up with \"..\": paths stay inside the task's working directory")]
    Parent(String),
    /// It is absolute and outside the working directory.
    #[error("{path:?} is outside the task's working directory {root}")]
    Outside {
        /// The path as given.
        path: String,
        /// The working directory.
        root: String,
    },
    /// A symlink on the way leads outside.
    #[error(
        "{path:?} leads through a symlink to {target}, outside the task's working directory {root}"
    )]
    Escapes {
        /// The path as given.
        path: String,
        /// Where it leads.
        target: String,
        /// The working directory.
        root: String,
    },
    /// The working directory itself is not usable.
    #[error("the working directory {root} cannot be used: {reason}")]
    Root {
        /// The directory.
        root: String,
        /// Why.
        reason: String,
    },
}

/// A task's working directory.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// The working directory `root` (resolved: `..` and symlinks first), which must be an
    /// existing directory.
    pub fn new(root: &Path) -> Result<Workspace, PathError> {
        let shown = root.display().to_string();
        let refuse = |reason: String| PathError::Root {
            root: shown.clone(),
            reason,
        };
        if !root.is_absolute() {
            return Err(refuse("it must be an absolute path".to_owned()));
        }
        let root = fs::canonicalize(root).map_err(|e| refuse(e.to_string()))?;
        if !root.is_dir() {
            return Err(refuse("it is not a directory".to_owned()));
        }
        Ok(Workspace { root })
    }

    /// The directory, resolved.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path `path` names inside the working directory: for reading (it must
    /// exist) or for writing (its parent must, or may be created inside). The path given may
    /// be relative to the working directory or absolute within it.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, PathError> {
        if path.is_empty() || path.contains('\0') {
            return Err(PathError::Invalid(path.to_owned()));
        }
        let given = Path::new(path);
        if given.components().any(|c| c == Component::ParentDir) {
            return Err(PathError::Parent(path.to_owned()));
        }
        let joined = if given.is_absolute() {
            if !given.starts_with(&self.root) {
                return Err(self.outside(path));
            }
            given.to_path_buf()
        } else {
            self.root.join(given)
        };
        // The longest part that exists is resolved by the kernel; the rest is plain names.
        let mut existing = joined.as_path();
        let mut rest = Vec::new();
        let real = loop {
            match fs::canonicalize(existing) {
                Ok(real) => break real,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match (existing.parent(), existing.file_name()) {
                        (Some(parent), Some(name)) => {
                            rest.push(name.to_owned());
                            existing = parent;
                        }
                        _ => return Err(self.outside(path)),
                    }
                }
                Err(_) => return Err(self.outside(path)),
            }
        };
        if !real.starts_with(&self.root) {
            return Err(PathError::Escapes {
                path: path.to_owned(),
                target: real.display().to_string(),
                root: self.root.display().to_string(),
            });
        }
        let mut resolved = real;
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        Ok(resolved)
    }

    /// `path` relative to the working directory, for showing (the root itself is `.`).
    pub fn relative(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    fn outside(&self, path: &str) -> PathError {
        PathError::Outside {
            path: path.to_owned(),
            root: self.root.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("src"), dir.path().join("inner")).unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        let root = ws.root().to_path_buf();

        assert_eq!(ws.resolve("src/lib.rs").unwrap(), root.join("src/lib.rs"));
        assert_eq!(ws.resolve("./src/new.rs").unwrap(), root.join("src/new.rs"));
        assert_eq!(ws.resolve("a/b/c.txt").unwrap(), root.join("a/b/c.txt"));
        let absolute = root.join("src/lib.rs");
        assert_eq!(ws.resolve(absolute.to_str().unwrap()).unwrap(), absolute);
        // A symlink that stays inside is followed.
        assert_eq!(ws.resolve("inner/lib.rs").unwrap(), root.join("src/lib.rs"));

        assert!(matches!(ws.resolve("../x"), Err(PathError::Parent(_))));
        assert!(matches!(
            ws.resolve("src/../../x"),
            Err(PathError::Parent(_))
        ));
        assert!(matches!(
            ws.resolve("/etc/passwd"),
            Err(PathError::Outside { .. })
        ));
        assert!(matches!(
            ws.resolve("passwd"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            ws.resolve("out/new.txt"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(ws.resolve(""), Err(PathError::Invalid(_))));
        let error = ws.resolve("out/x").unwrap_err().to_string();
        assert!(
            error.contains("symlink") && error.contains("outside"),
            "{error}"
        );
    }

    #[test]
    fn the_working_directory_must_be_an_absolute_directory() {
        assert!(Workspace::new(Path::new("relative")).is_err());
        assert!(Workspace::new(Path::new("/nonexistent/dir")).is_err());
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(Workspace::new(file.path()).is_err());
    }
}
