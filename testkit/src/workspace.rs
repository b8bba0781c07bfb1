//! A small repository on disk for tests of the repository context: a type defined in one file
//! that the cursor's code uses from another, and a `.env` beside them that must never reach
//! a prompt.

use std::path::{Path, PathBuf};

/// The text of `src/retry.rs`.
pub const RETRY_RS: &str = "pub struct RetryPolicy {\n    pub max_attempts: u32,\n    pub backoff_ms: u64,\n}\n\nimpl RetryPolicy {\n    pub fn next_delay(&self, attempt: u32) -> u64 {\n        self.backoff_ms << attempt\n    }\n}\n";

/// A secret in `src/.env` that no prompt may contain.
pub const ENV_SECRET: &str = "never_in_a_prompt";

/// A git repository named `shop` in a temporary directory (removed when dropped), with
/// `src/retry.rs` ([`RETRY_RS`]) and `src/.env`.
#[derive(Debug)]
pub struct Shop {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Shop {
    /// Writes the repository.
    pub fn new() -> Shop {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("shop");
        std::fs::create_dir_all(root.join(".git")).expect("shop/.git");
        std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").expect("shop/.git/HEAD");
        std::fs::create_dir_all(root.join("src")).expect("shop/src");
        std::fs::write(root.join("src/retry.rs"), RETRY_RS).expect("src/retry.rs");
        std::fs::write(root.join("src/.env"), format!("API_TOKEN={ENV_SECRET}\n"))
            .expect("src/.env");
        Shop { _dir: dir, root }
    }

    /// The repository's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `relative` in it.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

impl Default for Shop {
    fn default() -> Shop {
        Shop::new()
    }
}

/// Runs `git ARGS` in `dir` with a fixed author and committer (tests commit without a user's
/// git configuration); panics with git's message if it fails. Returns its standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
