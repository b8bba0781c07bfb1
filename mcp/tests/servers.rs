//! The MCP client against real MCP servers (the reference servers from npm and PyPI that
//! `cargo test-all` installs) and against a server that misbehaves on request
//! (`fake_server.py`): every fault gives a clear error for its call and nothing else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reaper_core::config::{Config, McpConfig};
use reaper_mcp::{McpError, McpServers, Root, PROTOCOL_VERSIONS};
use serde_json::{json, Value};

/// An `[mcp.servers.NAME]` configuration of one server.
fn config(name: &str, command: &Path, args: &[&str], timeout_ms: u64) -> McpConfig {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "[mcp.servers.{name}]\ncommand = {:?}\nargs = [{}]\ntimeout_ms = {timeout_ms}\n",
        command.display().to_string(),
        args.join(", ")
    );
    Config::from_toml(&text, "test").unwrap().mcp
}

fn npm_bin(name: &str) -> PathBuf {
    reaper_testkit::node_modules().join(".bin").join(name)
}

fn venv_bin(name: &str) -> PathBuf {
    reaper_testkit::python().with_file_name(name)
}

/// The fake server in `mode`, logging what it receives to a file in `dir`.
fn fake(mode: &str, dir: &Path, timeout_ms: u64) -> (McpServers, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_server.py");
    let log = dir.join(format!("{mode}.log"));
    let servers = McpServers::new(&config(
        "fake",
        &reaper_testkit::python(),
        &[script.to_str().unwrap(), mode, log.to_str().unwrap()],
        timeout_ms,
    ));
    (servers, log)
}

/// What the fake server received, one message per line.
fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (5 s at most) until the fake server has received a message satisfying `check`.
async fn wait_received(log: &Path, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(found) = received(log).into_iter().find(&check) {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            received(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn the_everything_server_lists_calls_reports_progress_and_asks_for_the_roots() {
    let servers = McpServers::new(&config(
        "everything",
        &npm_bin("mcp-server-everything"),
        &[],
        30_000,
    ));
    let workdir = tempfile::tempdir().unwrap();
    let root = Root::directory(workdir.path());
    servers.set_roots(vec![root.clone()]).await;
    let session = servers.session("everything").await.unwrap();
    let info = session.info();
    assert_eq!(info.protocol_version, PROTOCOL_VERSIONS[0]);
    assert_eq!(info.name, "mcp-servers/everything");

    let tools = servers.tools("everything").await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    for wanted in [
        "echo",
        "get-sum",
        "trigger-long-running-operation",
        "get-roots-list",
    ] {
        assert!(names.contains(&wanted), "{names:?}");
    }
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(echo.input_schema["type"], "object");

    let result = servers
        .call_tool("everything", "echo", json!({"message": "hi"}), None)
        .await
        .unwrap();
    assert_eq!(result.text(), "Echo: hi");
    assert!(!result.is_error);
    let sum = servers
        .call_tool("everything", "get-sum", json!({"a": 2, "b": 3}), None)
        .await
        .unwrap();
    assert_eq!(sum.text(), "The sum of 2 and 3 is 5.");

    // A long operation reports its progress as it goes.
    let (progress, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let long = servers
        .call_tool(
            "everything",
            "trigger-long-running-operation",
            json!({"duration": 1, "steps": 3}),
            Some(progress),
        )
        .await
        .unwrap();
    assert!(long.text().contains("completed"), "{}", long.text());
    let mut seen = Vec::new();
    while let Ok(update) = updates.try_recv() {
        seen.push((update.progress, update.total));
    }
    assert_eq!(seen, [(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))]);

    // The server asks for the roots (the task's working directory) and gets ours.
    let roots = servers
        .call_tool("everything", "get-roots-list", json!({}), None)
        .await
        .unwrap();
    assert!(roots.text().contains(&root.uri), "{}", roots.text());

    let resources = session.list_resources().await.unwrap();
    assert!(!resources.is_empty());
    let contents = session.read_resource(&resources[0].uri).await.unwrap();
    assert!(!contents.is_empty());
    let prompts = session.list_prompts().await.unwrap();
    assert!(
        prompts.iter().any(|p| p.name == "simple-prompt"),
        "{prompts:?}"
    );
    // It announces tool changes (it does at start); the list is read again after one.
    assert!(*session.tools_changed().borrow() >= 1);

    let pid = session.pid().unwrap();
    drop(session);
    servers.shutdown().await;
    assert!(!process_exists(pid), "the server was stopped");
}

#[tokio::test]
async fn the_filesystem_server_reads_inside_its_directory_and_refuses_outside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "remember the milk\n").unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let servers = McpServers::new(&config(
        "fs",
        &npm_bin("mcp-server-filesystem"),
        &[dir_path.to_str().unwrap()],
        30_000,
    ));
    let tools = servers.tools("fs").await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"list_directory"), "{names:?}");
    let listing = servers
        .call_tool("fs", "list_directory", json!({"path": dir_path}), None)
        .await
        .unwrap();
    assert!(!listing.is_error);
    assert!(listing.text().contains("notes.txt"), "{}", listing.text());
    let outside = servers
        .call_tool("fs", "list_directory", json!({"path": "/etc"}), None)
        .await
        .unwrap();
    assert!(outside.is_error, "{}", outside.text());
    assert!(outside.text().contains("outside"), "{}", outside.text());
    servers.shutdown().await;
}

#[tokio::test]
async fn the_git_and_time_servers_from_pypi_answer() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        reaper_testkit::workspace::git(repo.path(), args);
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.path().join("a.txt"), "a\n").unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.path().join("b.txt"), "b\n").unwrap();
    let repo_path = repo.path().to_str().unwrap();

    let servers = McpServers::new(&config(
        "git",
        &venv_bin("mcp-server-git"),
        &["--repository", repo_path],
        30_000,
    ));
    let status = servers
        .call_tool("git", "git_status", json!({"repo_path": repo_path}), None)
        .await
        .unwrap();
    assert!(status.text().contains("b.txt"), "{}", status.text());
    servers.shutdown().await;

    let servers = McpServers::new(&config(
        "time",
        &venv_bin("mcp-server-time"),
        &["--local-timezone", "UTC"],
        30_000,
    ));
    let now = servers
        .call_tool("time", "get_current_time", json!({"timezone": "UTC"}), None)
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&now.text()).unwrap();
    assert_eq!(answer["timezone"], "UTC");
    assert!(answer["datetime"].as_str().unwrap().starts_with("20"));
    servers.shutdown().await;
}

#[tokio::test]
async fn listings_follow_every_page_and_a_changed_list_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, log) = fake("normal", dir.path(), 5_000);
    let tools = servers.tools("fake").await.unwrap();
    assert_eq!(tools.len(), 7, "three pages: {tools:?}");
    let pages: Vec<Value> = received(&log)
        .into_iter()
        .filter(|m| m["method"] == "tools/list")
        .collect();
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[1]["params"]["cursor"], "3");
    // Cached while nothing changes.
    servers.tools("fake").await.unwrap();
    servers
        .call_tool("fake", "changed", json!({}), None)
        .await
        .unwrap();
    let tools = servers.tools("fake").await.unwrap();
    assert_eq!(tools.len(), 8);
    assert_eq!(tools[7].name, "added");
    servers.shutdown().await;
}

#[tokio::test]
async fn garbage_costs_the_call_waiting_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _log) = fake("normal", dir.path(), 5_000);
    let error = servers
        .call_tool("fake", "garbage", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(error, McpError::Protocol { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("not JSON-RPC") && text.contains("Traceback"),
        "{text}"
    );
    let echo = servers
        .call_tool("fake", "echo", json!({"x": 1}), None)
        .await
        .unwrap();
    assert_eq!(echo.text(), r#"{"x": 1}"#);
    // An unknown tool is the server's error, with its words.
    let error = servers
        .call_tool("fake", "nope", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "MCP server fake answered tools/call with error -32602: Unknown tool: nope"
    );
    servers.shutdown().await;
}

#[tokio::test]
async fn a_call_that_hangs_times_out_and_one_given_up_is_cancelled_at_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, log) = fake("normal", dir.path(), 400);
    let started = Instant::now();
    let error = servers
        .call_tool("fake", "slow", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(error, McpError::TimedOut { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let cancel = wait_received(&log, |m| m["method"] == "notifications/cancelled").await;
    assert_eq!(cancel["params"]["reason"], "timed out");

    // A call whose caller goes away.
    let dir = tempfile::tempdir().unwrap();
    let (servers, log) = fake("normal", dir.path(), 30_000);
    servers.session("fake").await.unwrap();
    let call = tokio::time::timeout(
        Duration::from_millis(300),
        servers.call_tool("fake", "slow", json!({}), None),
    )
    .await;
    assert!(call.is_err(), "the caller gave up");
    let call_id = wait_received(&log, |m| m["params"]["name"] == "slow").await["id"].clone();
    let cancel = wait_received(&log, |m| m["method"] == "notifications/cancelled").await;
    assert_eq!(cancel["params"]["requestId"], call_id);
    assert_eq!(cancel["params"]["reason"], "the request was cancelled");
    // The session is fine.
    servers
        .call_tool("fake", "echo", json!({}), None)
        .await
        .unwrap();
    servers.shutdown().await;
}

#[tokio::test]
async fn a_server_that_dies_mid_call_says_why_and_is_started_again_after_a_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _log) = fake("normal", dir.path(), 5_000);
    let first = servers.session("fake").await.unwrap().pid().unwrap();
    let error = servers
        .call_tool("fake", "die", json!({}), None)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, McpError::Exited { .. }), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("fatal: the fake server fell over"), "{text}");
    // The next use starts it again.
    let echo = servers
        .call_tool("fake", "echo", json!({"again": true}), None)
        .await
        .unwrap();
    assert_eq!(echo.text(), r#"{"again": true}"#);
    let second = servers.session("fake").await.unwrap().pid().unwrap();
    assert_ne!(first, second);
    assert!(!process_exists(first));

    // A server that cannot even start rests between attempts.
    let missing = McpServers::new(&config("gone", Path::new("/nonexistent/mcp"), &[], 5_000));
    let error = missing.session("gone").await.unwrap_err();
    assert!(matches!(error, McpError::Spawn { .. }), "{error}");
    let error = missing.session("gone").await.unwrap_err();
    assert!(matches!(error, McpError::Resting { .. }), "{error}");
    assert!(
        error.to_string().contains("started again in 1 s"),
        "{error}"
    );
    servers.shutdown().await;
}

#[tokio::test]
async fn a_protocol_version_reaper_does_not_speak_is_refused_with_both_named() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _log) = fake("old", dir.path(), 5_000);
    let error = servers.session("fake").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "MCP server fake speaks protocol version 1999-01-01; reaper speaks {}: update one of them",
            PROTOCOL_VERSIONS.join(", ")
        )
    );
    let error = servers.session("nobody").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "no MCP server is named \"nobody\": the servers are fake"
    );
}

#[tokio::test]
async fn roots_asked_for_by_the_server_are_the_ones_set() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _log) = fake("normal", dir.path(), 5_000);
    let root = Root::directory(Path::new("/work/a project"));
    servers.set_roots(vec![root]).await;
    let result = servers
        .call_tool("fake", "roots", json!({}), None)
        .await
        .unwrap();
    let roots: Value = serde_json::from_str(&result.text()).unwrap();
    assert_eq!(
        roots,
        json!({"roots": [{"uri": "file:///work/a%20project", "name": "a project"}]})
    );
    servers.shutdown().await;
}
