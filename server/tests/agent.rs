//! End to end: `reaper.Agent/execute` through a real `reaperd` over QUIC, its model a local
//! server in the OpenAI format that answers with tool calls step by step (decided from the
//! conversation it is sent, as a model would), in a temporary git repository; a real MCP
//! server's tool; llama.cpp with SmolLM2 as the model; and `reaper agent` driven as a user
//! would.

mod daemon;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::Daemon;
use futures::StreamExt;
use reaper_client::schema::*;
use reaper_client::{AgentControlHandle, CallOptions, Client, Code, Error, ResponseStream};
use reaper_testkit::openai::{self, OpenAiServer};
use reaper_testkit::{
    assistant_turns, last_tool_result, LlamaOptions, LlamaServer, ModelTurn, Responder,
};
use serde_json::json;

const MODEL: &str = "coder";

/// A git repository with a few files.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(
            root.join("src/retry.rs"),
            "pub fn next_delay(attempt: u32) -> u64 {\n    100 << attempt\n}\n",
        )
        .unwrap();
        std::fs::write(root.join("README.md"), "# retry\n\nBacks off.\n").unwrap();
        std::fs::write(root.join(".env"), "API_KEY=sk-live-do-not-leak\n").unwrap();
        let git = |args: &[&str]| reaper_testkit::workspace::git(root, args);
        git(&["init", "-q"]);
        git(&["add", "src", "README.md"]);
        git(&["commit", "-qm", "start"]);
        Repo { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path)).unwrap()
    }

    /// Every file under the root (`.git` aside), path to bytes.
    fn tree(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, root: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.file_name().is_some_and(|n| n == ".git") {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, root, into);
                } else {
                    into.insert(
                        path.strip_prefix(root).unwrap().to_path_buf(),
                        std::fs::read(&path).unwrap(),
                    );
                }
            }
        }
        let mut tree = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut tree);
        tree
    }
}

fn config(server: &OpenAiServer, extra: &str) -> String {
    format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"{MODEL}\"\n{extra}",
        server.url()
    )
}

/// What a task's call showed: its updates and how it ended.
struct Seen {
    updates: Vec<StepUpdate>,
    ended: Result<(), Error>,
}

impl Seen {
    fn code(&self) -> Code {
        match &self.ended {
            Ok(()) => Code::Ok,
            Err(e) => e.status().code,
        }
    }

    fn last(&self) -> &StepUpdate {
        self.updates.last().expect("at least one update")
    }

    fn task_id(&self) -> &str {
        &self.updates[0].task_id
    }

    fn messages(&self) -> String {
        self.updates
            .iter()
            .filter_map(|u| u.message.as_deref())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs a task, answering each approval with `decide(update)`.
async fn run_task(
    client: &Client,
    cwd: &Path,
    instruction: &str,
    mut decide: impl FnMut(&StepUpdate) -> Option<AgentAction>,
) -> Seen {
    let task = AgentTask {
        instruction: instruction.into(),
        cwd: cwd.display().to_string(),
        timeout: Some(60),
    };
    let (mut stream, control) = client.agent(&task, CallOptions::default()).await.unwrap();
    read_all(&mut stream, &control, &mut decide).await
}

async fn read_all(
    stream: &mut ResponseStream<StepUpdate>,
    control: &AgentControlHandle,
    decide: &mut impl FnMut(&StepUpdate) -> Option<AgentAction>,
) -> Seen {
    let mut updates = Vec::new();
    let ended = loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("an update within 60 s");
        match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(update)) => {
                if update.needs_approval {
                    if let Some(action) = decide(&update) {
                        control
                            .send(&AgentControl {
                                action,
                                step: Some(update.step),
                            })
                            .await
                            .unwrap();
                    }
                }
                updates.push(update);
            }
        }
    };
    Seen { updates, ended }
}

fn approve_all(_: &StepUpdate) -> Option<AgentAction> {
    Some(AgentAction::Approve)
}

/// The model of the first tests: reads the file, edits it, reads it again to verify, then
/// says what it did.
fn fixer() -> Responder {
    Responder::steps(vec![
        ModelTurn {
            text: "Let me look at the code first.".into(),
            calls: vec![("read_file".into(), json!({"path": "src/retry.rs"}))],
        },
        ModelTurn::calls(
            "edit_file",
            json!({"path": "src/retry.rs", "old_text": "100 << attempt", "new_text": "100u64 << attempt.min(10)"}),
        ),
        ModelTurn::calls(
            "write_file",
            json!({"path": "docs/retry.md", "content": "Delays are capped at attempt 10.\n"}),
        ),
        ModelTurn::calls("read_file", json!({"path": "src/retry.rs"})),
        ModelTurn::says("Capped the shift at 10 and documented it in docs/retry.md."),
    ])
}

#[tokio::test]
async fn a_task_reads_edits_and_verifies_files_and_undo_puts_the_tree_back() {
    let repo = Repo::new();
    let before = repo.tree();
    let model = OpenAiServer::start(openai::Script::acting(MODEL, fixer()));
    let daemon = Daemon::start_with(&config(&model, ""), &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    let mut asked = Vec::new();
    let seen = run_task(&client, &repo.root(), "Cap the retry delay.", |u| {
        asked.push((u.step, u.tool.clone(), u.detail.clone()));
        Some(AgentAction::Approve)
    })
    .await;
    assert_eq!(
        seen.code(),
        Code::Ok,
        "{:?}\n{}",
        seen.ended.as_ref().err(),
        daemon.log()
    );
    // Every update names the task; the phases come in order.
    let id = seen.task_id().to_owned();
    assert_eq!(id.len(), 12);
    assert!(seen.updates.iter().all(|u| u.task_id == id));
    let statuses: Vec<StepStatus> = seen.updates.iter().map(|u| u.status.clone()).collect();
    assert_eq!(statuses.first(), Some(&StepStatus::Planning));
    assert!(statuses.contains(&StepStatus::Executing));
    assert!(statuses.contains(&StepStatus::Verifying));
    assert_eq!(seen.last().status, StepStatus::Completed);
    let steps: Vec<u32> = seen.updates.iter().map(|u| u.step).collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "steps only go up: {steps:?}"
    );
    // Reading is allowed; the edit and the new file were asked, each with its diff.
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0].1.as_deref(), Some("edit_file"));
    let diff = asked[0].2.as_deref().unwrap();
    assert!(
        diff.contains("-    100 << attempt") && diff.contains("+    100u64 << attempt.min(10)"),
        "{diff}"
    );
    assert_eq!(asked[1].1.as_deref(), Some("write_file"));
    // The files changed, and the model was given what it read back.
    assert!(repo.read("src/retry.rs").contains("attempt.min(10)"));
    assert_eq!(
        repo.read("docs/retry.md"),
        "Delays are capped at attempt 10.\n"
    );
    let last_request = model.wire().seen().last().unwrap().request.json();
    let result = last_tool_result(&last_request["messages"]).unwrap();
    assert!(result.contains("100u64 << attempt.min(10)"), "{result}");
    let messages = seen.messages();
    assert!(messages.contains("read back and verified"), "{messages}");
    assert!(
        messages.contains("2 file(s) hold what the task wrote"),
        "{messages}"
    );
    let done = seen.last().message.as_deref().unwrap();
    assert!(
        done.contains("Capped the shift") && done.contains(&format!("reaper agent undo {id}")),
        "{done}"
    );
    // Nothing of the .env reached the model.
    for s in model.wire().seen() {
        assert!(!String::from_utf8_lossy(&s.request.body).contains("sk-live"));
    }

    // Undo, through the CLI as a user would: the tree is back byte for byte.
    let out = daemon.cli(&["agent", "undo", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("restored") && said.contains("removed"),
        "{said}"
    );
    assert_eq!(
        repo.tree(),
        before,
        "undo restores every file and removes the new one"
    );
    let again = daemon.cli(&["agent", "undo", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("undone already"));
    let unknown = daemon.cli(&["agent", "undo", "ffffffffffff"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).starts_with("NOT_FOUND"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_denied_write_is_told_to_the_model_which_tries_another_way() {
    let repo = Repo::new();
    // Tries a write; told it was denied, an edit; told that too, gives up.
    let responder = Responder::new(|messages| match assistant_turns(messages) {
        0 => ModelTurn::calls(
            "write_file",
            json!({"path": "src/retry.rs", "content": "// gone\n"}),
        ),
        1 => ModelTurn::calls(
            "edit_file",
            json!({"path": "src/retry.rs", "old_text": "100", "new_text": "200"}),
        ),
        _ => ModelTurn::says(&format!(
            "Stopping: {}",
            last_tool_result(messages).unwrap_or_default()
        )),
    });
    let model = OpenAiServer::start(openai::Script::acting(MODEL, responder));
    let daemon = Daemon::start_with(
        &config(&model, "[agent.policy]\nedit_file = \"deny\"\n"),
        &[],
    );
    let client = Client::connect(daemon.options()).await.unwrap();
    let seen = run_task(&client, &repo.root(), "Rewrite retry.", |_| {
        Some(AgentAction::Reject)
    })
    .await;
    assert_eq!(seen.code(), Code::Ok, "{:?}", seen.ended);
    assert_eq!(
        repo.read("src/retry.rs"),
        "pub fn next_delay(attempt: u32) -> u64 {\n    100 << attempt\n}\n"
    );
    let messages = seen.messages();
    assert!(
        messages.contains("not run: the user denied it"),
        "{messages}"
    );
    // The other way is denied by policy, without asking.
    assert!(
        messages.contains("edit_file is denied by the user's policy"),
        "{messages}"
    );
    assert_eq!(seen.updates.iter().filter(|u| u.needs_approval).count(), 1);
    assert!(seen
        .last()
        .message
        .as_deref()
        .unwrap()
        .starts_with("Stopping: not run: edit_file is denied"));
    // The model read the first refusal before it tried the other way.
    let second = model
        .wire()
        .seen()
        .iter()
        .filter(|s| s.request.method == "POST")
        .nth(1)
        .unwrap()
        .request
        .json();
    assert_eq!(
        last_tool_result(&second["messages"]).unwrap(),
        "not run: the user denied it"
    );
}

#[tokio::test]
async fn paths_that_leave_the_working_directory_are_refused_steps() {
    let repo = Repo::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.root().join("link")).unwrap();
    let escapes = vec![
        ("read_file", json!({"path": "../../../../etc/passwd"})),
        ("read_file", json!({"path": "/etc/passwd"})),
        ("read_file", json!({"path": "link/secret.txt"})),
        (
            "write_file",
            json!({"path": "link/planted.txt", "content": "x"}),
        ),
        (
            "write_file",
            json!({"path": format!("{}/planted.txt", outside.path().display()), "content": "x"}),
        ),
        (
            "edit_file",
            json!({"path": "src/../../x.rs", "old_text": "a", "new_text": "b"}),
        ),
        ("list_dir", json!({"path": "link"})),
        ("read_file", json!({"path": ".env"})),
    ];
    let count = escapes.len();
    let responder = Responder::steps(vec![
        ModelTurn {
            text: String::new(),
            calls: escapes
                .into_iter()
                .map(|(n, a)| (n.to_owned(), a))
                .collect(),
        },
        ModelTurn::says("Could not get out."),
    ]);
    let model = OpenAiServer::start(openai::Script::acting(MODEL, responder));
    let daemon = Daemon::start_with(
        &config(&model, "[agent.policy]\nwrite_file = \"allow\"\n"),
        &[],
    );
    let client = Client::connect(daemon.options()).await.unwrap();
    let seen = run_task(&client, &repo.root(), "Escape.", approve_all).await;
    assert_eq!(seen.code(), Code::Ok, "{:?}", seen.ended);
    let refused: Vec<&StepUpdate> = seen
        .updates
        .iter()
        .filter(|u| {
            u.message
                .as_deref()
                .is_some_and(|m| m.starts_with("refused:"))
        })
        .collect();
    assert_eq!(refused.len(), count, "{}", seen.messages());
    let messages = seen.messages();
    for expected in [
        "goes up with \"..\"",
        "outside the task's working directory",
        "leads through a symlink",
        "may hold credentials",
    ] {
        assert!(messages.contains(expected), "{expected}: {messages}");
    }
    assert!(!outside.path().join("planted.txt").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    // The model was told each refusal, and the daemon serves on.
    let request = model.wire().seen().last().unwrap().request.json();
    let results = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(results, count);
    for s in model.wire().seen() {
        let body = String::from_utf8_lossy(&s.request.body).into_owned();
        assert!(
            !body.contains("root:x:0:0")
                && !body.contains("sk-live")
                && !body.contains("\"outside\"")
        );
    }
    assert!(client.health().await.is_ok());
}

#[tokio::test]
async fn kill_9_of_the_daemon_during_a_large_write_leaves_the_file_whole() {
    let repo = Repo::new();
    const SIZE: usize = 12 * 1024 * 1024;
    let old = "o".repeat(SIZE);
    let new = "n".repeat(SIZE);
    std::fs::write(repo.root().join("big.txt"), &old).unwrap();
    let responder = {
        let new = new.clone();
        Responder::steps(vec![
            ModelTurn::calls("write_file", json!({"path": "big.txt", "content": new})),
            ModelTurn::says("Rewrote it."),
        ])
    };
    let model = OpenAiServer::start(openai::Script::acting(MODEL, responder));
    let mut daemon = Daemon::start_with(
        &config(&model, "[agent.policy]\nwrite_file = \"allow\"\n"),
        &[],
    );
    let mut outcomes = Vec::new();
    for (round, delay_ms) in [0u64, 3, 10, 30, 80, 200].into_iter().enumerate() {
        std::fs::write(repo.root().join("big.txt"), &old).unwrap();
        let client = Client::connect(daemon.options()).await.unwrap();
        let task = AgentTask {
            instruction: "Rewrite big.txt.".into(),
            cwd: repo.root().display().to_string(),
            timeout: Some(60),
        };
        let (mut stream, _control) = client.agent(&task, CallOptions::default()).await.unwrap();
        // Kill once the write is announced (it starts right after: writes are allowed).
        let task_id = loop {
            let update = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if update.tool.as_deref() == Some("write_file")
                && update.status == StepStatus::Executing
            {
                break update.task_id;
            }
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.crash_and_restart(Duration::ZERO);
        let now = std::fs::read(repo.root().join("big.txt")).unwrap();
        let whole =
            now.len() == SIZE && (now.iter().all(|&b| b == b'o') || now.iter().all(|&b| b == b'n'));
        assert!(
            whole,
            "round {round}: a file of {} bytes, neither old nor new",
            now.len()
        );
        let wrote = now[0] == b'n';
        outcomes.push(if wrote { "new" } else { "old" });
        // Undo works from the journal left by the killed daemon.
        let out = daemon.cli(&["agent", "undo", &task_id]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(repo.root().join("big.txt")).unwrap(),
            old.as_bytes(),
            "round {round}"
        );
        let leftovers: Vec<String> = std::fs::read_dir(repo.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".reaper-"))
            .collect();
        eprintln!("round {round}: killed {delay_ms} ms after the write was announced: the file was {}, temporaries left {leftovers:?}", outcomes[round]);
    }
    eprintln!("outcomes: {outcomes:?}");
}

#[tokio::test]
async fn cancel_stops_a_task_waiting_for_approval_and_one_whose_model_is_writing() {
    let repo = Repo::new();
    let model = OpenAiServer::start(openai::Script::acting(MODEL, fixer()));
    let daemon = Daemon::start_with(&config(&model, ""), &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    // Stray approvals for a step that does not exist first: the cancel is never lost behind
    // them.
    let task = AgentTask {
        instruction: "Cap it.".into(),
        cwd: repo.root().display().to_string(),
        timeout: Some(60),
    };
    let (mut stream, control) = client.agent(&task, CallOptions::default()).await.unwrap();
    for _ in 0..40 {
        control
            .send(&AgentControl {
                action: AgentAction::Approve,
                step: Some(999),
            })
            .await
            .unwrap();
    }
    let seen = read_all(&mut stream, &control, &mut |_: &StepUpdate| {
        Some(AgentAction::Cancel)
    })
    .await;
    assert_eq!(seen.code(), Code::Cancelled, "{:?}", seen.ended);
    assert_eq!(seen.last().status, StepStatus::Failed);
    assert!(seen
        .last()
        .message
        .as_deref()
        .unwrap()
        .contains("cancelled by the client"));
    assert!(
        repo.read("src/retry.rs").contains("100 << attempt"),
        "nothing was changed"
    );

    // A model writing slowly: the cancel is heard mid-answer, and its request is dropped.
    let slow = OpenAiServer::start(openai::Script {
        pace: Duration::from_millis(100),
        ..openai::Script::acting(
            MODEL,
            Responder::steps(vec![ModelTurn::says(&"word ".repeat(200))]),
        )
    });
    let daemon = Daemon::start_with(&config(&slow, ""), &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    let task = AgentTask {
        instruction: "Talk.".into(),
        cwd: repo.root().display().to_string(),
        timeout: None,
    };
    let (mut stream, control) = client.agent(&task, CallOptions::default()).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.status, StepStatus::Planning);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    control
        .send(&AgentControl {
            action: AgentAction::Cancel,
            step: None,
        })
        .await
        .unwrap();
    let seen = read_all(&mut stream, &control, &mut approve_all).await;
    assert_eq!(seen.code(), Code::Cancelled);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "cancelled in {took:?}");
    let gone = slow
        .wire()
        .wait_for(Duration::from_secs(5), |s| s.closed_early);
    assert!(gone.is_some(), "the model's request was dropped");
}

#[tokio::test]
async fn a_step_calls_a_tool_of_a_real_mcp_server() {
    let repo = Repo::new();
    let everything = reaper_testkit::node_modules().join(".bin/mcp-server-everything");
    let responder = Responder::new(|messages| match last_tool_result(messages) {
        None => ModelTurn::calls("everything__echo", json!({"message": "hi from reaper"})),
        Some(result) if result.starts_with("Echo") => ModelTurn::calls(
            "everything__trigger-long-running-operation",
            json!({"duration": 1, "steps": 4}),
        ),
        Some(result) => ModelTurn::says(&format!("MCP said: {result}")),
    });
    let model = OpenAiServer::start(openai::Script::acting(MODEL, responder));
    let extra = format!(
        "[agent.policy]\nmcp = \"allow\"\n[mcp.servers.everything]\ncommand = {:?}\n",
        everything.display().to_string()
    );
    let daemon = Daemon::start_with(&config(&model, &extra), &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    let seen = run_task(&client, &repo.root(), "Say hi.", approve_all).await;
    assert_eq!(seen.code(), Code::Ok, "{:?}\n{}", seen.ended, daemon.log());
    let messages = seen.messages();
    assert!(messages.contains("Echo: hi from reaper"), "{messages}");
    // The long operation's progress came as step updates.
    let progress = seen
        .updates
        .iter()
        .filter(|u| {
            u.message
                .as_deref()
                .is_some_and(|m| m.starts_with("progress "))
        })
        .count();
    assert!(progress >= 2, "{messages}");
    // The model was offered the server's tools by their full names.
    let first = model
        .wire()
        .seen()
        .into_iter()
        .find(|s| s.request.method == "POST")
        .unwrap()
        .request
        .json();
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"everything__echo") && names.contains(&"read_file"),
        "{names:?}"
    );
    // The daemon stops the server with itself: no process left.
    let children = children_of(daemon.pid());
    assert!(
        !children.is_empty(),
        "the MCP server runs as the daemon's child"
    );
    drop(client);
    let mut daemon = daemon;
    daemon.signal("TERM");
    let start = Instant::now();
    while daemon.try_status().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reaperd did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "MCP server {pid} outlived the daemon"
        );
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis: state, then the parent's pid.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(parent)
        {
            children.push(pid);
        }
    }
    children
}

#[tokio::test]
async fn bad_tasks_and_control_messages_get_clear_statuses() {
    let model = OpenAiServer::start(openai::Script::acting(
        MODEL,
        Responder::steps(vec![ModelTurn::says("ok")]),
    ));
    let daemon = Daemon::start_with(&config(&model, ""), &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    let repo = Repo::new();
    for (task, code, words) in [
        (
            AgentTask {
                instruction: " ".into(),
                cwd: repo.root().display().to_string(),
                timeout: None,
            },
            Code::InvalidArgument,
            "instruction is empty",
        ),
        (
            AgentTask {
                instruction: "x".into(),
                cwd: "relative/dir".into(),
                timeout: None,
            },
            Code::InvalidArgument,
            "not an absolute path",
        ),
        (
            AgentTask {
                instruction: "x".into(),
                cwd: "/no/such/dir".into(),
                timeout: None,
            },
            Code::InvalidArgument,
            "/no/such/dir",
        ),
    ] {
        let (mut stream, _) = client.agent(&task, CallOptions::default()).await.unwrap();
        let error = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e.status(),
                None => panic!("{task:?} was accepted"),
            }
        };
        assert_eq!(error.code, code, "{error:?}");
        assert!(error.message.contains(words), "{error:?}");
    }
    // A task over the whole home directory is refused: every key the user has is there.
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().canonicalize().unwrap();
    let with_home = Daemon::start_with(
        &config(&model, ""),
        &[("HOME", home_path.to_str().unwrap())],
    );
    let client_home = Client::connect(with_home.options()).await.unwrap();
    let seen = run_task(&client_home, &home_path, "x", approve_all).await;
    assert_eq!(seen.code(), Code::InvalidArgument);
    assert!(seen
        .ended
        .unwrap_err()
        .status()
        .message
        .contains("too wide"));
    // No provider that calls tools: a setup to fix, said so.
    let offline_only = Daemon::start();
    let client = Client::connect(offline_only.options()).await.unwrap();
    let seen = run_task(&client, &repo.root(), "x", approve_all).await;
    assert_eq!(seen.code(), Code::FailedPrecondition);
    assert!(seen
        .ended
        .unwrap_err()
        .status()
        .message
        .contains("no provider that calls tools"));
}

#[tokio::test]
async fn reaper_agent_shows_steps_asks_on_stdin_and_prints_json() {
    let repo = Repo::new();
    let model = OpenAiServer::start(openai::Script::acting(MODEL, fixer()));
    let daemon = Daemon::start_with(&config(&model, ""), &[]);
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(daemon::reaper_bin())
            .arg("--state-dir")
            .arg(daemon.state_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let cwd = repo.root().display().to_string();
    // Approves the edit, denies the new file ("n"), then end of input.
    let out = run(&["agent", "Cap the delay.", "--cwd", &cwd], "y\nn\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reaper agent: task "), "{stderr}");
    assert!(
        stdout.contains("executing edit_file src/retry.rs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+    100u64 << attempt.min(10)"),
        "the diff is shown: {stdout}"
    );
    assert!(stdout.contains("not run: the user denied it"), "{stdout}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(repo.read("src/retry.rs").contains("min(10)"));
    assert!(!repo.root().join("docs/retry.md").exists());

    // --json: one object per update, each with the task's id; --yes approves.
    let out = run(
        &["--json", "agent", "Cap the delay.", "--cwd", &cwd, "--yes"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = lines[0]["task_id"].as_str().unwrap().to_owned();
    assert!(lines.iter().all(|l| l["task_id"] == id.as_str()));
    assert_eq!(lines.last().unwrap()["status"], "completed");
    assert!(lines.iter().any(|l| l["needs_approval"] == true));
}

/// SmolLM2-135M behind llama.cpp as the agent's model: the task must end, clearly, whatever
/// the model makes of the tools (what it did is printed for the record).
#[tokio::test]
async fn llama_cpp_with_smollm2_runs_a_task_to_its_end() {
    let llama = LlamaServer::start(LlamaOptions::default());
    let repo = Repo::new();
    let table = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{}\"\n[agent]\nmax_steps = 3\n",
        llama.base_url(),
        llama.model()
    );
    let daemon = Daemon::start_with(&table, &[]);
    let client = Client::connect(daemon.options()).await.unwrap();
    let seen = run_task(
        &client,
        &repo.root(),
        "Read src/retry.rs and say what next_delay returns.",
        |_| Some(AgentAction::Reject),
    )
    .await;
    for u in &seen.updates {
        eprintln!(
            "[{}] {:?} {} {:?} {:?}",
            u.step,
            u.status,
            u.description,
            u.tool,
            u.message
                .as_deref()
                .map(|m| m.chars().take(160).collect::<String>())
        );
    }
    let last = seen.last();
    match seen.code() {
        Code::Ok => assert_eq!(last.status, StepStatus::Completed),
        Code::ResourceExhausted => assert!(last.message.as_deref().unwrap().contains("max_steps")),
        other => panic!("{other:?}: {:?}\n{}", seen.ended, daemon.log()),
    }
    assert!(
        repo.read("src/retry.rs").contains("100 << attempt"),
        "nothing approved, nothing changed"
    );
}

#[test]
fn reaper_mcp_list_shows_each_servers_state_version_and_tools() {
    let dir = tempfile::tempdir().unwrap();
    let everything = reaper_testkit::node_modules().join(".bin/mcp-server-everything");
    let config = dir.path().join("reaper.toml");
    std::fs::write(
        &config,
        format!(
            "[mcp.servers.everything]\ncommand = {:?}\n[mcp.servers.broken]\ncommand = \"/nonexistent/mcp-server\"\n",
            everything.display().to_string()
        ),
    )
    .unwrap();
    let list = |json: bool| {
        let mut command = Command::new(daemon::reaper_bin());
        if json {
            command.arg("--json");
        }
        command
            .args(["mcp", "list"])
            .env("REAPER_CONFIG", &config)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = list(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("everything") && text.contains("running"),
        "{text}"
    );
    assert!(text.contains("(protocol 20"), "{text}");
    assert!(text.contains("echo"), "{text}");
    assert!(text.contains("broken") && text.contains("failed"), "{text}");
    let out = list(true);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["state"], "running");
    assert!(lines[0]["tools"].as_array().unwrap().len() > 5);
    assert_ne!(lines[1]["state"], "running");
}
