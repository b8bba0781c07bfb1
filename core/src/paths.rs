//! Where the daemon's files are, by the lookup order both the daemon and its clients follow.
//!
//! Pure functions over the environment (passed in), so the rules are tested here and the two
//! binaries cannot drift apart.

use std::path::PathBuf;

/// Name of the environment variable that overrides the state directory.
pub const STATE_DIR_ENV: &str = "REAPER_STATE_DIR";
/// Name of the environment variable that names the config file.
pub const CONFIG_ENV: &str = "REAPER_CONFIG";

/// The state directory: `explicit` (a `--state-dir` flag), else `REAPER_STATE_DIR`, else
/// `configured` (`[daemon] state_dir`), else `$XDG_RUNTIME_DIR/reaper`, else
/// `~/.local/state/reaper`, else `./.reaper` when not even `HOME` is set.
pub fn state_dir(
    explicit: Option<PathBuf>,
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> PathBuf {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    explicit
        .or_else(|| non_empty(STATE_DIR_ENV).map(PathBuf::from))
        .or_else(|| configured.map(PathBuf::from))
        .or_else(|| non_empty("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("reaper")))
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".local/state/reaper")))
        .unwrap_or_else(|| PathBuf::from(".reaper"))
}

/// Config files to try, in order: `explicit` (`--config`), `REAPER_CONFIG`, `./reaper.toml`,
/// `$XDG_CONFIG_HOME/reaper/reaper.toml` (or `~/.config/reaper/reaper.toml`). The first that
/// exists wins; an explicit path that does not exist is an error for the caller to report.
pub fn config_candidates(
    explicit: Option<PathBuf>,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = explicit.or_else(|| non_empty(CONFIG_ENV).map(PathBuf::from)) {
        return vec![path];
    }
    let mut candidates = vec![PathBuf::from("reaper.toml")];
    if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
        candidates.push(PathBuf::from(dir).join("reaper/reaper.toml"));
    } else if let Some(home) = non_empty("HOME") {
        candidates.push(PathBuf::from(home).join(".config/reaper/reaper.toml"));
    }
    candidates
}

/// File names inside the state directory.
pub mod files {
    /// The daemon's self-signed certificate (PEM), pinned by clients.
    pub const CERT: &str = "cert.pem";
    /// Its private key (PEM, mode 0600).
    pub const KEY: &str = "key.pem";
    /// The access token (64 hex digits, mode 0600).
    pub const TOKEN: &str = "token";
    /// The address the daemon bound, written once it is ready.
    pub const ENDPOINT: &str = "endpoint";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn state_dir_follows_the_documented_order() {
        let all = [
            ("REAPER_STATE_DIR", "/env"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            state_dir(Some("/flag".into()), Some("/cfg"), env(&all)),
            PathBuf::from("/flag")
        );
        assert_eq!(
            state_dir(None, Some("/cfg"), env(&all)),
            PathBuf::from("/env")
        );
        assert_eq!(
            state_dir(None, Some("/cfg"), env(&all[1..])),
            PathBuf::from("/cfg")
        );
        assert_eq!(
            state_dir(None, None, env(&all[1..])),
            PathBuf::from("/run/user/1/reaper")
        );
        assert_eq!(
            state_dir(None, None, env(&all[2..])),
            PathBuf::from("/home/u/.local/state/reaper")
        );
        assert_eq!(state_dir(None, None, env(&[])), PathBuf::from(".reaper"));
    }

    #[test]
    fn config_lookup_prefers_explicit_then_env_then_files() {
        assert_eq!(
            config_candidates(Some("/a.toml".into()), env(&[("REAPER_CONFIG", "/b.toml")])),
            vec![PathBuf::from("/a.toml")]
        );
        assert_eq!(
            config_candidates(None, env(&[("REAPER_CONFIG", "/b.toml")])),
            vec![PathBuf::from("/b.toml")]
        );
        assert_eq!(
            config_candidates(None, env(&[("HOME", "/h")])),
            vec![
                PathBuf::from("reaper.toml"),
                PathBuf::from("/h/.config/reaper/reaper.toml")
            ]
        );
    }
}
