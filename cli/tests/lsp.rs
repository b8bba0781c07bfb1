//! `reaper lsp` against real clients and a real reaperd (which the bridge starts itself):
//! pygls's client through pytest-lsp (`tests/lsp/*.py`), and raw JSON-RPC for what no client
//! library sends (three editors at once, malformed messages).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn reaper_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reaper"))
}

/// reaperd, built beside `reaper` (where the bridge looks for it; see
/// `reaper_testkit::binaries`).
fn build_reaperd() {
    reaper_testkit::binaries(&reaper_bin());
}

/// A git repository whose files repeat one call, so the offline model is sure of it.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    for (name, functions) in [("a.rs", 6), ("b.rs", 6)] {
        let mut text = String::from("use std::time::Duration;\n\n");
        for i in 0..functions {
            text.push_str(&format!(
                "fn attempt_{i}() {{\n    let retry = RetryPolicy::new(3, Duration::from_millis(100));\n    retry.run_{i}();\n}}\n\n"
            ));
        }
        std::fs::write(dir.path().join("src").join(name), text).unwrap();
    }
    dir
}

/// Stops every reaperd serving `state_dir` (the bridge started it in a group of its own, so it
/// outlives the bridge) and waits until it is gone.
fn stop_daemons(state_dir: &Path) -> usize {
    let pids = daemons(state_dir);
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let started = Instant::now();
    while !daemons(state_dir).is_empty() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    pids.len()
}

/// Process ids of the reaperd processes whose command line names `state_dir`.
fn daemons(state_dir: &Path) -> Vec<u32> {
    let needle = state_dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')));
        if !zombie && args.first().is_some_and(|a| a.ends_with("reaperd")) && args.contains(&needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A config of the test's own (the repository's reaper.toml is not the test's): a free port,
/// so that daemons of tests running at once do not meet on 50051.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("reaper.toml");
    std::fs::write(&path, "[daemon]\nport = 0\n").unwrap();
    path
}

/// What a client script printed, and how many daemons the bridges it drove had started.
struct ClientRun {
    success: bool,
    text: String,
    daemons: usize,
}

/// Runs a client script (pygls or Node) against `reaper lsp`, with the environment every
/// script reads (see their headers): a workspace, and two empty state directories, one for a
/// daemon whose provider answers after 1.5 s. Stops the daemons the bridges started.
fn run_client(client: Command) -> ClientRun {
    build_reaperd();
    // Bounded whatever the client does: coreutils' timeout ends it (and, 10 s later, kills it).
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", "300"])
        .arg(client.get_program())
        .args(client.get_args());
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let ws = workspace();
    let scratch = tempfile::tempdir().unwrap();
    let (state, slow_state) = (scratch.path().join("state"), scratch.path().join("slow"));
    let output = command
        .env("REAPER_BIN", reaper_bin())
        .env("REAPER_WORKSPACE", ws.path())
        .env("REAPER_STATE_DIR", &state)
        .env("REAPER_SLOW_STATE_DIR", &slow_state)
        .env("REAPER_CONFIG", config(scratch.path()))
        .current_dir(scratch.path())
        .output()
        .expect("the client runs");
    let daemons = stop_daemons(&state) + stop_daemons(&slow_state);
    let mut text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        for log in [
            state.join("lsp.log"),
            state.join("reaperd.log"),
            slow_state.join("lsp.log"),
            slow_state.join("reaperd.log"),
        ] {
            text.push_str(&format!(
                "\n--- {}\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    }
    println!("{text}");
    ClientRun {
        success: output.status.success(),
        text,
        daemons,
    }
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lsp")
}

#[test]
fn pygls_drives_the_bridge_through_a_real_daemon() {
    let mut pytest = Command::new(reaper_testkit::python());
    pytest
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=strict",
        ])
        .arg(tests_dir().join("test_inline_completion.py"));
    let run = run_client(pytest);
    assert!(run.success, "pytest-lsp failed");
    assert!(run.text.contains("4 passed"), "every pygls test ran");
    assert_eq!(
        run.daemons, 2,
        "one daemon per state directory, started by the bridge"
    );
}

#[test]
fn vscode_languageserver_protocol_drives_the_bridge_through_a_real_daemon() {
    let mut node = Command::new("node");
    node.arg(tests_dir().join("vscode_client.js"))
        .env("NODE_PATH", reaper_testkit::node_modules());
    let run = run_client(node);
    assert!(
        run.success,
        "the vscode-languageserver-protocol client failed"
    );
    assert_eq!(
        run.text.matches("ok: ").count(),
        8,
        "every check of the Node client ran"
    );
    assert_eq!(
        run.daemons, 2,
        "one daemon per state directory, started by the bridge"
    );
}

#[test]
fn neovim_drives_the_bridge_through_a_real_daemon() {
    let mut nvim = Command::new("nvim");
    nvim.args(["--headless", "--clean", "-c"]).arg(format!(
        "luafile {}",
        tests_dir().join("nvim_client.lua").display()
    ));
    let run = run_client(nvim);
    assert!(run.success, "Neovim's LSP client failed");
    assert_eq!(
        run.text.matches("ok: ").count(),
        7,
        "every check of the Neovim client ran"
    );
    assert_eq!(run.daemons, 1, "the bridge started one daemon");
}

/// One `reaper lsp` process spoken to in raw JSON-RPC.
struct Editor {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Editor {
    fn start(state: &Path, config: &Path) -> Editor {
        let mut child = Command::new(reaper_bin())
            .arg("lsp")
            .env("REAPER_STATE_DIR", state)
            .env("REAPER_CONFIG", config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Editor {
            child,
            stdin,
            stdout,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        self.send_raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    /// The next message from the bridge.
    fn next(&mut self) -> Value {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the bridge closed stdout"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(n) = line.strip_prefix("Content-Length: ") {
                length = n.parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The response to request `id`, skipping notifications (bounded).
    fn response(&mut self, id: i64) -> Value {
        for _ in 0..100 {
            let message = self.next();
            if message["id"] == json!(id) {
                return message;
            }
        }
        panic!("no response to request {id} among 100 messages");
    }

    fn initialize(&mut self, root: &Path) {
        self.send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "capabilities": {}, "rootUri": format!("file://{}", root.display())}}),
        );
        let response = self.response(1);
        assert_eq!(
            response["result"]["capabilities"]["inlineCompletionProvider"],
            json!(true)
        );
        self.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    }

    fn open(&mut self, root: &Path, text: &str) -> String {
        let uri = format!("file://{}/src/next.rs", root.display());
        self.send(
            json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
            "textDocument": {"uri": uri, "languageId": "rust", "version": 1, "text": text}}}),
        );
        uri
    }

    /// Asks at the end of line `line` until the list is non-empty (bounded); the item's text.
    fn complete_until_answered(&mut self, uri: &str, line: u32, character: u32) -> String {
        let started = Instant::now();
        for id in 100.. {
            self.send(json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/inlineCompletion",
                "params": {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 1}}}));
            let response = self.response(id);
            assert!(response.get("error").is_none(), "{response}");
            if let Some(text) = response["result"]["items"][0]["insertText"].as_str() {
                return text.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no completion in 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        unreachable!()
    }

    fn shutdown(mut self) -> std::process::ExitStatus {
        self.send(json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}));
        assert_eq!(self.response(2)["result"], Value::Null);
        self.send(json!({"jsonrpc": "2.0", "method": "exit"}));
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the bridge did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LINE: &str = "    let retry = RetryPolicy::new(";

#[test]
fn three_editors_at_once_start_exactly_one_daemon() {
    build_reaperd();
    let ws = workspace();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    let config = config(scratch.path());
    let text = format!("fn next() {{\n{LINE}\n}}\n");
    let mut editors: Vec<Editor> = (0..3).map(|_| Editor::start(&state, &config)).collect();
    for editor in &mut editors {
        editor.initialize(ws.path());
    }
    for editor in &mut editors {
        let uri = editor.open(ws.path(), &text);
        let answer = editor.complete_until_answered(&uri, 1, LINE.len() as u32);
        assert_eq!(answer, "3, Duration::from_millis(100));");
    }
    let running = daemons(&state);
    let statuses: Vec<_> = editors.into_iter().map(Editor::shutdown).collect();
    let stopped = stop_daemons(&state);
    assert_eq!(running.len(), 1, "three bridges, one daemon: {running:?}");
    assert_eq!(stopped, 1);
    assert!(
        statuses.iter().all(|s| s.success()),
        "shutdown then exit ends with 0: {statuses:?}"
    );
}

#[test]
fn malformed_messages_get_errors_and_the_bridge_keeps_serving() {
    build_reaperd();
    let ws = workspace();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    let mut editor = Editor::start(&state, &config(scratch.path()));
    // Before initialize: ServerNotInitialized.
    editor.send(
        json!({"jsonrpc": "2.0", "id": 9, "method": "textDocument/inlineCompletion", "params": {}}),
    );
    assert_eq!(editor.response(9)["error"]["code"], json!(-32002));
    editor.initialize(ws.path());
    // Not JSON: a parse error with a null id.
    editor.send_raw(b"Content-Length: 9\r\n\r\n{not json");
    let error = editor.next();
    assert_eq!(
        (error["id"].clone(), error["error"]["code"].clone()),
        (Value::Null, json!(-32700))
    );
    // A header that is not one, then an announced 1 GiB body that never comes is not held:
    // the bridge answers the header and goes on to the next well-formed message.
    editor.send_raw(b"garbage\r\n\r\n");
    assert_eq!(editor.next()["error"]["code"], json!(-32700));
    // Bad params for a request, an unknown method, a notification with bad params.
    editor.send(json!({"jsonrpc": "2.0", "id": 10, "method": "textDocument/inlineCompletion", "params": {"x": 1}}));
    assert_eq!(editor.response(10)["error"]["code"], json!(-32602));
    editor.send(json!({"jsonrpc": "2.0", "id": 11, "method": "textDocument/hover", "params": {}}));
    assert_eq!(editor.response(11)["error"]["code"], json!(-32601));
    editor.send(json!({"jsonrpc": "2.0", "id": 12, "method": "workspace/executeCommand", "params": {"command": "rm"}}));
    assert_eq!(editor.response(12)["error"]["code"], json!(-32602));
    editor.send(
        json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"nope": true}}),
    );
    // Still serving: a completion.
    let uri = editor.open(ws.path(), &format!("fn next() {{\n{LINE}\n}}\n"));
    assert_eq!(
        editor.complete_until_answered(&uri, 1, LINE.len() as u32),
        "3, Duration::from_millis(100));"
    );
    assert!(editor.shutdown().success());
    assert_eq!(stop_daemons(&state), 1);
}
