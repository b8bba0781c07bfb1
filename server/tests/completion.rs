//! End to end: `Completion.complete` through a real `reaperd` over QUIC.

mod daemon;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::Daemon;
use reaper_client::schema::*;
use reaper_client::{CallOptions, Client, Code, Encoding, Method};

/// A small git repository whose files repeat a pattern.
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    let body = "    let settings = Settings::from_file(\"app.toml\").expect(\"settings file is readable\");\n";
    std::fs::write(
        root.join("src/load.rs"),
        format!("pub fn load() {{\n{body}}}\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("src/reload.rs"),
        format!("pub fn reload() {{\n{body}    settings.apply();\n}}\n"),
    )
    .unwrap();
    std::fs::write(root.join("README.md"), "# demo\n").unwrap();
    dir
}

fn request(file: &Path, prefix: &str) -> CompletionRequest {
    CompletionRequest {
        prefix: prefix.into(),
        suffix: "\n}\n".into(),
        language: "rust".into(),
        file_path: Some(file.display().to_string()),
        context: None,
    }
}

const PREFIX: &str = "pub fn again() {\n    let settings = Settings::from_";
const EXPECTED: &str = "file(\"app.toml\").expect(\"settings file is readable\");";

async fn connect(daemon: &Daemon, encoding: Encoding) -> Client {
    let mut options = daemon.options();
    options.encoding = encoding;
    Client::connect(options).await.unwrap()
}

/// Asks until the workspace is indexed (the first request starts indexing), bounded.
async fn complete_when_indexed(client: &Client, file: &Path) -> CompletionResponse {
    let start = Instant::now();
    loop {
        let response = client
            .complete(&request(file, PREFIX), CallOptions::default())
            .await
            .unwrap();
        if !response.completion.is_empty() {
            return response;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the workspace was never indexed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A completion running in a task of its own, for tests that act while it is in flight.
fn spawn_completion(
    client: &Arc<Client>,
    file: &Path,
    prefix: &'static str,
) -> tokio::task::JoinHandle<Result<CompletionResponse, reaper_client::Error>> {
    let (client, file) = (client.clone(), file.to_path_buf());
    tokio::spawn(async move {
        client
            .complete(&request(&file, prefix), CallOptions::default())
            .await
    })
}

fn served(health: &HealthResponse) -> (u64, u64) {
    let calls = &health.calls[Method::CompletionComplete.index()];
    (calls.served, calls.failed)
}

#[tokio::test]
async fn repeats_a_pattern_of_the_repository_and_caches_it() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start();
    for encoding in [Encoding::Rkyv, Encoding::Json] {
        let client = connect(&daemon, encoding).await;
        let first = complete_when_indexed(&client, &file).await;
        assert_eq!(first.completion, EXPECTED);
        assert_eq!(first.provider, "offline");
        assert!(
            first.confidence > 0.3 && first.confidence <= 1.0,
            "{first:?}"
        );
        let before = client.health().await.unwrap().cache;
        let second = client
            .complete(&request(&file, PREFIX), CallOptions::default())
            .await
            .unwrap();
        assert!(second.cached, "the identical call is a cache hit");
        assert_eq!(second.completion, EXPECTED);
        let after = client.health().await.unwrap().cache;
        assert_eq!(after.hits, before.hits + 1, "Health counts the hit");

        // Typing the first characters of the suggestion: the rest of it, from the cache path.
        let typed = format!("{PREFIX}file(\"app");
        let rest = client
            .complete(&request(&file, &typed), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(
            rest.completion,
            ".toml\").expect(\"settings file is readable\");"
        );
        assert!(rest.cached);
        assert_eq!(
            client.health().await.unwrap().cache.typed_through,
            after.typed_through + 1
        );
        client.close().await;
    }
}

#[tokio::test]
async fn the_index_follows_edits() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start();
    let client = connect(&daemon, Encoding::Rkyv).await;
    complete_when_indexed(&client, &file).await;
    std::fs::write(
        repo.path().join("src/extra.rs"),
        "fn x() { telemetry::record_event(\"boot\", Level::Info); }\n",
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let r = client
            .complete(
                &request(&file, "fn y() { telemetry::record_"),
                CallOptions::default(),
            )
            .await
            .unwrap();
        if r.completion == "event(\"boot\", Level::Info); }" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the edit never reached the index: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_and_the_next_call_is_served() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start_with("[completion]\nmax_prefix_bytes = 4096\n", &[]);
    let client = connect(&daemon, Encoding::Rkyv).await;
    let mut empty_language = request(&file, PREFIX);
    empty_language.language = String::new();
    let mut huge = request(&file, &"x".repeat(5000));
    huge.prefix.push_str(PREFIX);
    let mut relative = request(&file, PREFIX);
    relative.file_path = Some("src/new.rs".into());
    let mut long_path = request(&file, PREFIX);
    long_path.file_path = Some(format!("/{}", "d/".repeat(3000)));
    let mut symbols = request(&file, PREFIX);
    symbols.context = Some(ContextMetadata {
        lsp_symbols: Some("fn symbol_name(x: u32)\n".repeat(20_000)),
        git_status: None,
        project_files: None,
    });
    for (what, bad) in [
        ("empty language", empty_language),
        ("prefix over the limit", huge),
        ("relative path", relative),
        ("a path over PATH_MAX", long_path),
        ("480 KB of symbols", symbols),
    ] {
        let err = client
            .complete(&bad, CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.status().code, Code::InvalidArgument, "{what}: {err}");
    }
    // A file that does not exist, in a directory that does not exist: an answer from the
    // prefix alone (here, the pattern it repeats), not an error.
    let nowhere = PathBuf::from("/nonexistent-reaper-test/dir/file.rs");
    let local = "fn a() { log_event(\"one\", 1); }\nfn b() { log_";
    let r = client
        .complete(&request(&nowhere, local), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(r.completion, "event(\"one\", 1); }");
    // Invalid UTF-8 inside JSON.
    let status = daemon::raw_call(
        &daemon,
        Method::CompletionComplete,
        Encoding::Json,
        b"{\"prefix\":\"\xff\",\"suffix\":\"\",\"language\":\"rust\"}",
    )
    .await;
    assert_eq!(status.code, Code::InvalidArgument, "{status}");
    let status = daemon::raw_call(
        &daemon,
        Method::CompletionComplete,
        Encoding::Rkyv,
        b"\xff\xff not an archive",
    )
    .await;
    assert_eq!(status.code, Code::InvalidArgument, "{status}");
    let ok = complete_when_indexed(&client, &file).await;
    assert_eq!(ok.completion, EXPECTED);
}

/// Issue 13, finding 8: a secret in `creds.env` (not a name the deny-list knew) was indexed and
/// came back as a completion; and a repository reached through `$HOME/sub/..` or a symlink to
/// `$HOME` was indexed whole.
#[tokio::test]
async fn secrets_and_home_never_reach_a_completion() {
    let repo = repository();
    let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let creds = format!("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY={key}\n");
    std::fs::write(repo.path().join("creds.env"), creds.repeat(3)).unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".git")).unwrap();
    std::fs::write(home.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(home.path().join("sub")).unwrap();
    let private = "let vault_passphrase = unlock_vault(\"correct horse battery staple\");\n";
    std::fs::write(home.path().join("notes.rs"), private.repeat(4)).unwrap();
    let link = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(home.path(), link.path().join("home")).unwrap();
    let home_str = home.path().to_str().unwrap();
    let daemon = Daemon::start_with("", &[("HOME", home_str)]);
    let client = connect(&daemon, Encoding::Rkyv).await;
    let file = repo.path().join("src/deploy.rs");
    complete_when_indexed(&client, &file).await;
    let mut asked = request(&file, "export AWS_SECRET_ACCESS_KEY=");
    asked.suffix = String::new();
    let answer = client
        .complete(&asked, CallOptions::default())
        .await
        .unwrap();
    assert!(!answer.completion.contains("EXAMPLEKEY"), "{answer:?}");
    for path in [
        home.path().join("sub/../new.rs"),
        link.path().join("home/new.rs"),
    ] {
        for _ in 0..10 {
            let r = client
                .complete(
                    &request(&path, "fn f() {\n    let vault_passphrase = unlock_"),
                    CallOptions::default(),
                )
                .await
                .unwrap();
            assert!(
                !r.completion.contains("battery"),
                "{}: {r:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Issue 13, finding 4: cache keys copied `language` and `file_path` at any length, so 100
/// completions with a 3 MB `language` kept 357 MB for the cache's TTL. Such requests are now
/// refused before anything is kept (RSS read from /proc).
#[tokio::test]
async fn huge_key_fields_are_refused_and_not_kept() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start();
    let client = connect(&daemon, Encoding::Rkyv).await;
    let before = daemon.rss_kib();
    let mut bad = request(&file, PREFIX);
    bad.language = "r".repeat(3 * 1024 * 1024);
    for _ in 0..100 {
        let err = client
            .complete(&bad, CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.status().code, Code::InvalidArgument, "{err}");
    }
    let after = daemon.rss_kib();
    println!("RSS {before} KiB -> {after} KiB after 100 completions with a 3 MB language");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

#[tokio::test]
async fn a_newer_completion_for_the_same_file_supersedes_the_older() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start_with("", &[("REAPER_DEBUG_PROVIDER_DELAY_MS", "300")]);
    let client = Arc::new(connect(&daemon, Encoding::Rkyv).await);
    let older = spawn_completion(&client, &file, "fn a() { x");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let newer = client
        .complete(&request(&file, "fn a() { xy"), CallOptions::default())
        .await;
    let older = older.await.unwrap();
    let err = older.unwrap_err();
    assert_eq!(err.status().code, Code::Cancelled, "{err}");
    assert!(err.status().message.contains("superseded"));
    newer.unwrap();
    // Another file on the same connection is not superseded.
    let other = repo.path().join("src/other.rs");
    let (first, second) = (request(&file, "fn q() {"), request(&other, "fn q() {"));
    let (a, b) = tokio::join!(
        client.complete(&first, CallOptions::default()),
        client.complete(&second, CallOptions::default()),
    );
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn deadlines_end_calls_and_cancelled_calls_stop() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start_with(
        "[rpc]\ncompletion_timeout = 100\n",
        &[("REAPER_DEBUG_PROVIDER_DELAY_MS", "400")],
    );
    let client = Arc::new(connect(&daemon, Encoding::Rkyv).await);
    // The daemon's own deadline ([rpc] completion_timeout): the client sets none.
    let started = Instant::now();
    let err = client
        .complete(&request(&file, "fn d() {"), CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status().code, Code::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "ended at the deadline, not when the work finished"
    );
    let health = client.health().await.unwrap();
    assert_eq!(served(&health), (0, 1));

    // A call the client abandons: the daemon counts it cancelled and never answers it late.
    let task = spawn_completion(&client, &file, "fn e() {");
    tokio::time::sleep(Duration::from_millis(30)).await;
    task.abort();
    let start = Instant::now();
    loop {
        let health = client.health().await.unwrap();
        if served(&health) == (0, 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cancel never reached the daemon: {:?}\n{}",
            served(&health),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served(&client.health().await.unwrap()),
        (0, 2),
        "no late answer was counted"
    );
}

#[test]
fn cli_complete_prints_json() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start();
    let prefix_file = repo.path().join("prefix.txt");
    std::fs::write(&prefix_file, PREFIX).unwrap();
    daemon::reaper_bin(); // built before the clock starts
    let start = Instant::now();
    let answer: serde_json::Value = loop {
        let output = daemon.cli(&[
            "complete",
            "--language",
            "rust",
            "--file",
            file.to_str().unwrap(),
            "--prefix-file",
            prefix_file.to_str().unwrap(),
            "--suffix",
            "\n}\n",
            "--json",
        ]);
        assert!(output.status.success(), "{output:?}");
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if answer["completion"] != "" {
            break answer;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{answer}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answer["completion"], EXPECTED);
    assert_eq!(answer["provider"], "offline");
    assert!(answer["confidence"].as_f64().unwrap() > 0.0);
    assert!(answer["latency_ms"].is_u64());
    assert_eq!(answer["cached"], false);
    let output = daemon.cli(&[
        "complete",
        "--language",
        "rust",
        "--file",
        file.to_str().unwrap(),
        "--prefix",
        PREFIX,
        "--suffix",
        "\n}\n",
        "--json",
    ]);
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(again["cached"], true);

    let output = daemon.cli(&["complete", "--language", "rust"]);
    assert!(!output.status.success(), "a prefix is required");
}

#[tokio::test]
async fn editor_symbols_complete_identifiers_the_workspace_lacks() {
    let repo = repository();
    let file = repo.path().join("src/new.rs");
    let daemon = Daemon::start();
    let client = connect(&daemon, Encoding::Json).await;
    complete_when_indexed(&client, &file).await;
    let mut req = request(&file, "fn z() {\n    let pool = ThreadPoolBuil");
    let without = client.complete(&req, CallOptions::default()).await.unwrap();
    assert_eq!(without.completion, "", "nothing in the workspace says so");
    req.context = Some(ContextMetadata {
        lsp_symbols: Some("struct ThreadPoolBuilder\nfn build(self) -> ThreadPool".into()),
        git_status: None,
        project_files: None,
    });
    let with = client.complete(&req, CallOptions::default()).await.unwrap();
    assert_eq!(with.completion, "der");
    assert!(with.confidence > 0.0 && with.confidence <= 0.5);
}

/// The daemon's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(daemon: &Daemon) -> u64 {
    daemon.proc_status_kib("VmHWM:")
}

/// Issue 13, finding 2: appending to one file of an indexed repository rebuilt the whole index
/// each time, the old and new side by side (a 200 MB repository peaked at 2.1 GB). Now an edit
/// sorts the edited file alone: the daemon's peak memory, read from /proc, stays where the
/// first build left it.
#[tokio::test]
async fn an_edit_does_not_rebuild_the_index_beside_the_old_one() {
    let repo = repository();
    for i in 0..240 {
        let lines: String = (0..2000)
            .map(|n| format!("    let value_{i}_{n} = compute_{}({n});\n", n % 97))
            .collect();
        std::fs::write(repo.path().join(format!("src/gen{i}.rs")), lines).unwrap();
    }
    let file = repo.path().join("src/load.rs");
    let daemon = Daemon::start();
    let client = connect(&daemon, Encoding::Rkyv).await;
    client
        .complete(
            &request(&file, "fn a() {\n    let settings = Sett"),
            CallOptions::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let index_bytes = loop {
        if daemon.log().contains("indexed workspace") {
            break client.health().await.unwrap().budgets.index_bytes;
        }
        assert!(Instant::now() < deadline, "never indexed: {}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(index_bytes > 80 << 20, "index of {index_bytes} bytes");
    let first_peak = peak_rss_kib(&daemon);

    let mut text = std::fs::read_to_string(&file).unwrap();
    for round in 1..=3 {
        text.push_str(&format!("fn appended_{round}() {{}}\n"));
        std::fs::write(&file, &text).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.log().matches("updated workspace index").count() < round {
            assert!(
                Instant::now() < deadline,
                "edit {round} never indexed: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let log = daemon.log();
    for line in log
        .lines()
        .filter(|l| l.contains("updated workspace index"))
    {
        let sorted: usize = line
            .split("sorted_bytes=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sorted_bytes in {line}"));
        assert!(
            sorted <= text.len() + 1,
            "an edit sorted {sorted} bytes: {line}"
        );
    }
    let last_peak = peak_rss_kib(&daemon);
    println!(
        "index {} MiB; peak RSS {} MiB after the first build, {} MiB after 3 edits",
        index_bytes >> 20,
        first_peak >> 10,
        last_peak >> 10
    );
    assert!(
        (last_peak - first_peak) * 1024 < index_bytes / 4,
        "peak RSS grew from {first_peak} to {last_peak} KiB with an index of {index_bytes} bytes"
    );
}
