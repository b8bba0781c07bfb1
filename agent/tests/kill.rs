//! `kill -9` at any moment of an atomic write leaves the file whole: its old contents or its
//! new ones. The test runs itself as the writer (a child process with `REAPER_TEST_WRITER` set),
//! kills it with SIGKILL at random moments, and checks the file each time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: usize = 8 * 1024 * 1024;
const WRITER: &str = "REAPER_TEST_WRITER";

/// Version `n` of the file: `SIZE` bytes of `n`.
fn version(n: u8) -> Vec<u8> {
    vec![n; SIZE]
}

/// The child: writes versions 1, 2, 3… of the file until it is killed.
fn write_forever(path: &Path) {
    let mut n = 1u8;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        reaper_agent::atomic::write(path, &version(n)).unwrap();
        n = n.wrapping_add(1).max(1);
    }
}

#[test]
fn a_writer_killed_at_any_moment_leaves_the_file_old_or_new() {
    if let Some(path) = std::env::var_os(WRITER) {
        write_forever(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, version(0)).unwrap();
    let mut versions_seen = std::collections::BTreeSet::new();
    for round in 0..12u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "a_writer_killed_at_any_moment_leaves_the_file_old_or_new",
                "--exact",
                "--nocapture",
            ])
            .env(WRITER, &path)
            .spawn()
            .unwrap();
        // Somewhere between the start of a write and the middle of a later one.
        std::thread::sleep(Duration::from_millis(20 + round * 37 % 180));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len(), SIZE, "round {round}: a torn file");
        let first = contents[0];
        assert!(
            contents.iter().all(|&b| b == first),
            "round {round}: a mix of two versions"
        );
        versions_seen.insert(first);
    }
    // No temporary file is left where a rename never happened… except the one being written
    // when the writer died, which a later write does not trip over (a new name each time).
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count() - 1;
    eprintln!(
        "killed 12 writers: the file was always whole (versions seen {versions_seen:?}); {leftovers} temporary file(s) left by the kills"
    );
    assert!(versions_seen.len() > 1, "the writer got to write");
}
