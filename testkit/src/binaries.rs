//! The daemon and the CLI, built together for tests that need both.
//!
//! Cargo builds only a package's own binaries for its tests, so reaperd's tests need `reaper`
//! built and the CLI's tests need `reaperd`. Both are built by this one command, whichever test
//! asks first: one cargo invocation with one feature set, so the second asker finds both fresh
//! instead of relinking them with its own package's features (which cost 12 s per switch).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory holding freshly built `reaperd` and `reaper`, in the profile of `beside` (a
/// binary of the calling test's package, from `env!("CARGO_BIN_EXE_…")`).
pub fn binaries(beside: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = beside.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut build =
                Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            build.args([
                "build",
                "--quiet",
                "-p",
                "reaper-server",
                "-p",
                "reaper-cli",
                "--bins",
            ]);
            if dir.file_name() == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building reaperd and reaper failed");
            dir
        })
        .clone()
}
