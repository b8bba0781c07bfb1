//! The daemon's state directory: its TLS identity, its token and the endpoint it bound.
//!
//! Everything a client needs to reach the daemon safely is here, so the directory is private to
//! its user (0700) and the secrets in it are 0600. Files are created on first start and reused
//! after, so clients keep their pin across restarts.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
    /// Creates the directory if needed and makes sure only its owner can enter it.
    pub fn open(path: PathBuf) -> anyhow::Result<StateDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create state directory {}", path.display()))?;
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "cannot make state directory {} private (0700)",
                    path.display()
                )
            })?;
            if mode & 0o077 != 0 {
                tracing::warn!(dir = %path.display(), "state directory was open to others (mode {mode:o}); made it 0700");
            }
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
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "token file {} is readable by others (mode {mode:o}): run `chmod 600` on it or delete it to get a new one",
                path.display()
            );
        }
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

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file whole or not at all: a temporary file beside it, then a rename.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
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
        let state = StateDir::open(dir.path().to_path_buf()).unwrap();
        state.token().unwrap();
        fs::set_permissions(
            dir.path().join(files::TOKEN),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = state.token().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
