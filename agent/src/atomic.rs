//! Writing a file so that whatever happens — a crash, `kill -9`, a full disk — it holds
//! either its old contents or its new ones, never part of either.
//!
//! The new contents go to a temporary file in the same directory (created exclusively, never
//! through a symlink), are flushed to disk, and the temporary file is renamed over the target,
//! which POSIX makes atomic; then the directory is flushed so the rename itself survives a
//! power cut. The file keeps its permissions.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` atomically (see the module docs), creating missing parent
/// directories. A symlink at `path` is refused, not followed.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    };
    fs::create_dir_all(dir)?;
    let mode = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symlink: written files must be plain files",
            ))
        }
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a directory",
            ))
        }
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0o644,
        Err(e) => return Err(e),
    };
    let temporary = dir.join(format!(
        ".{}.reaper-{:016x}.tmp",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(contents)?;
        // The mode asked for is masked by the umask: set it as it was.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_dir(dir)
}

/// Removes `path` (a plain file) durably.
pub fn remove(path: &Path) -> io::Result<()> {
    fs::remove_file(path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Reads `path`, refusing a symlink (the kernel refuses it at open: no race with a check).
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_plain(path)?;
    let mut contents = Vec::new();
    file.read_to_end(&mut contents)?;
    Ok(contents)
}

/// Opens a plain file for reading: not through a symlink, and never blocking on a FIFO or a
/// device (opened without waiting, then refused unless it is a regular file).
fn open_plain(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads at most `limit` bytes of `path` (refusing a symlink, as [`read`]): what was read,
/// and the file's whole size.
pub fn read_at_most(path: &Path, limit: u64) -> io::Result<(Vec<u8>, u64)> {
    let file = open_plain(path)?;
    let size = file.metadata()?.len();
    let mut contents = Vec::with_capacity(size.min(limit) as usize);
    file.take(limit).read_to_end(&mut contents)?;
    Ok((contents, size))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_keeps_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/script.sh");
        write(&path, b"echo one\n").unwrap();
        assert_eq!(read(&path).unwrap(), b"echo one\n");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        write(&path, b"echo two\n").unwrap();
        assert_eq!(read(&path).unwrap(), b"echo two\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["script.sh"]);
    }

    #[test]
    fn symlinks_are_neither_written_through_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.txt");
        fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write(&link, b"overwritten").is_err());
        assert!(read(&link).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn a_fifo_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = read(&fifo).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    }
}
