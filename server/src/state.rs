//! The daemon's state directory: its TLS identity, its token and the endpoint it bound.
//!
//! Everything a client needs to reach the daemon safely is here, so the directory is private to
//! its user (0700) and the secrets in it are 0600. Files are created on first start and reused
//! after, so clients keep their pin across restarts.
//!
//! Nobody else may have planted anything in it: an existing directory must belong to the
//! daemon's user and be closed to others (the daemon never chmods a directory it did not
//! create: `state_dir = "/tmp"` would otherwise have closed /tmp to everyone), the private key
//! and token must be 0600, and files are written through temporary files created exclusively
//! (`O_CREAT|O_EXCL`, which does not follow a symlink planted in their place).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::RngCore;
use reaper_core::paths::files;
use reaper_core::Token;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An opened state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates the directory (0700) if needed; an existing one must be the daemon user's own
    /// and closed to others.
    pub fn open(path: PathBuf) -> anyhow::Result<StateDir> {
        let existed = path.exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create state directory {}", path.display()))?;
        // The directory itself, not what a symlink in its place points at.
        let meta = fs::symlink_metadata(&path)?;
        if !meta.is_dir() {
            bail!(
                "state directory {} is not a directory (a symlink or a file): give a directory of its own",
                path.display()
            );
        }
        let me = effective_uid();
        if me.is_none() {
            tracing::warn!(dir = %path.display(), "cannot tell this process's user (/proc/self/status unreadable): the state directory's owner is not checked");
        }
        if let Some(me) = me {
            if meta.uid() != me {
                bail!(
                    "state directory {} belongs to uid {}, not to this daemon's user (uid {me}): anyone who owns it could plant a token there; use a directory of your own",
                    path.display(),
                    meta.uid()
                );
            }
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            if existed {
                bail!(
                    "state directory {} is open to others (mode {mode:o}): run `chmod 700 {}`, or use a directory of its own",
                    path.display(),
                    path.display()
                );
            }
            // Created just now, under a umask that left it open: ours to close.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "cannot make state directory {} private (0700)",
                    path.display()
                )
            })?;
        }
        Ok(StateDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the certificate and key, creating a self-signed pair on first start.
    pub fn identity(&self) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let cert_path = self.path.join(files::CERT);
        let key_path = self.path.join(files::KEY);
        if !cert_path.exists() || !key_path.exists() {
            let names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            let generated = rcgen::generate_simple_self_signed(names)
                .context("cannot generate a self-signed certificate")?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
            write_atomic(&cert_path, generated.cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "created a self-signed certificate");
        }
        require_private(&key_path, "private key")?;
        let cert = CertificateDer::from_pem_file(&cert_path)
            .with_context(|| format!("cannot read certificate {}", cert_path.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("cannot read private key {}", key_path.display()))?;
        Ok((cert, key))
    }

    /// Loads the token, creating a random 256-bit one on first start.
    pub fn token(&self) -> anyhow::Result<Token> {
        let path = self.path.join(files::TOKEN);
        if !path.exists() {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            write_private(&path, Token::from_bytes(bytes).to_hex().as_bytes())?;
            tracing::info!(path = %path.display(), "created a new access token");
        }
        require_private(&path, "token file")?;
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read token {}", path.display()))?;
        Token::from_hex(&text).with_context(|| format!("token file {}", path.display()))
    }

    /// Records the bound address, for clients (and tests that listen on port 0).
    pub fn write_endpoint(&self, addr: SocketAddr) -> anyhow::Result<()> {
        write_atomic(
            &self.path.join(files::ENDPOINT),
            format!("{addr}\n").as_bytes(),
            0o644,
        )
    }

    /// Removes the endpoint file at shutdown, so clients do not dial a daemon that is gone.
    pub fn remove_endpoint(&self) {
        let _ = fs::remove_file(self.path.join(files::ENDPOINT));
    }
}

/// Refuses a secret that is not a regular file of ours closed to others.
fn require_private(path: &Path, what: &str) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{what} {} is not a regular file (a symlink?): delete it to get a new one",
            path.display()
        );
    }
    if let Some(me) = effective_uid().filter(|me| *me != meta.uid()) {
        bail!(
            "{what} {} belongs to uid {}, not to this daemon's user (uid {me}): delete it to get a new one",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} is readable by others (mode {mode:o}): run `chmod 600 {}` or delete it to get a new one",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The process's effective user id, from `/proc/self/status` (`Uid:` real, effective, …).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file whole or not at all: a temporary file beside it, then a rename. The temporary
/// file is created exclusively: whatever sits at its name (a leftover, or a symlink planted to
/// make the daemon write its key elsewhere) is removed first, never followed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => tracing::warn!(path = %tmp.display(), "removed a leftover temporary file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", tmp.display())),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_private_files_and_later_starts_reuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        let (cert, _) = state.identity().unwrap();
        let token = state.token().unwrap();
        let mode = |name: &str| {
            fs::metadata(state.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            fs::metadata(state.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(mode(files::TOKEN), 0o600);
        assert_eq!(mode(files::KEY), 0o600);
        let again = StateDir::open(dir.path().join("state")).unwrap();
        assert_eq!(again.identity().unwrap().0, cert);
        assert_eq!(again.token().unwrap(), token);
    }

    #[test]
    fn a_token_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        state.token().unwrap();
        fs::set_permissions(
            state.path().join(files::TOKEN),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = state.token().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    /// Issue 13, finding 7: nothing planted in the state directory is trusted or followed.
    #[test]
    fn a_directory_of_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = if effective_uid() == Some(0) {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            theirs
        } else {
            // Not root: a directory root owns is someone else's.
            PathBuf::from("/usr/share")
        };
        let err = StateDir::open(theirs).unwrap_err().to_string();
        assert!(err.contains("belongs to uid"), "{err}");
    }

    #[test]
    fn an_open_directory_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(open.clone()).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        assert_eq!(
            fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o755,
            "a directory the daemon did not create is never chmodded"
        );
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        state.identity().unwrap();
        fs::set_permissions(
            state.path().join(files::KEY),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = state.identity().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        let elsewhere = dir.path().join("world-readable.pem");
        fs::write(&elsewhere, "").unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.path().join("key.tmp")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.path().join("endpoint.tmp")).unwrap();
        state.identity().unwrap();
        state
            .write_endpoint("127.0.0.1:1".parse().unwrap())
            .unwrap();
        assert_eq!(
            fs::read_to_string(&elsewhere).unwrap(),
            "",
            "the key went through the planted link"
        );
        let key = fs::symlink_metadata(state.path().join(files::KEY)).unwrap();
        assert!(key.is_file());
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
}
