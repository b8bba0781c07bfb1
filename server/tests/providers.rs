//! End to end: completions from AI providers through a real `reaperd` over QUIC, against a
//! real llama.cpp server (OpenAI and Anthropic formats) and local servers in Ollama's and
//! Copilot's documented formats; every fault answered with a status and a message while the
//! daemon keeps serving; cancellation reaching the model server.

mod daemon;

use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::Daemon;
use reaper_client::schema::*;
use reaper_client::{CallOptions, Client, Code, Encoding, Error};
use reaper_testkit::ollama::{self, OllamaServer, Trouble};
use reaper_testkit::{copilot, CopilotServer, LlamaOptions, LlamaServer, WireServer};

const CODER: &str = "qwen2.5-coder:1.5b";

async fn connect(daemon: &Daemon) -> Client {
    let mut options = daemon.options();
    options.encoding = Encoding::Rkyv;
    Client::connect(options).await.unwrap()
}

fn request(file: &str, prefix: &str) -> CompletionRequest {
    CompletionRequest {
        prefix: prefix.into(),
        suffix: "\n}\n".into(),
        language: "rust".into(),
        file_path: Some(file.into()),
        context: None,
    }
}

/// Waits (bounded) until `Provider.list` shows `name` with `status`; returns its entry.
async fn wait_status(client: &Client, name: &str, status: ProviderStatus) -> ProviderInfo {
    let start = Instant::now();
    loop {
        let list = client.providers().await.unwrap();
        let entry = list
            .providers
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap();
        if entry.status == status {
            return entry;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never became {status:?}: {entry:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn complete_within(
    client: &Client,
    request: &CompletionRequest,
    ms: u64,
) -> Result<CompletionResponse, Error> {
    let options = CallOptions {
        deadline: Some(Duration::from_millis(ms)),
    };
    client.complete(request, options).await
}

#[tokio::test]
async fn a_llama_cpp_server_answers_through_reaperd_as_openai_and_as_anthropic() {
    let llama = LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 2,
    });
    for kind in ["openai", "anthropic"] {
        let base = if kind == "openai" {
            format!("{}/v1", llama.base_url())
        } else {
            llama.base_url().to_owned()
        };
        let config = format!(
            "[providers.local]\nkind = \"{kind}\"\nbase_url = \"{base}\"\nmodel = \"{}\"\nmax_tokens = 12\ntimeout_ms = 20000\n",
            llama.model()
        );
        let daemon = Daemon::start_with(&config, &[]);
        let client = connect(&daemon).await;
        let local = wait_status(&client, "local", ProviderStatus::Available).await;
        assert_eq!(
            (local.kind.as_str(), local.model.as_str()),
            (kind, llama.model())
        );
        assert_eq!(local.auth_status, AuthStatus::NotRequired);
        let req = request("/nowhere/demo.rs", "fn main() {\n    let greeting = ");
        let first = complete_within(&client, &req, 30_000).await.unwrap();
        // A 135M chat model may have nothing to fill a hole with; then the offline model
        // (last resort) answers. Either way somebody answered, and said who.
        assert!(
            ["local", "offline"].contains(&first.provider.as_str()),
            "{first:?}"
        );
        if first.provider == "local" && !first.completion.is_empty() {
            let again = complete_within(&client, &req, 30_000).await.unwrap();
            assert!(again.cached, "the model's answer is cached like any other");
            assert_eq!(again.completion, first.completion);
        }
        let health = client.health().await.unwrap();
        let stats = health.providers.iter().find(|p| p.name == "local").unwrap();
        assert_eq!(stats.errors, 0, "{stats:?}");
        assert!(stats.answered >= 1, "{stats:?}");
        client.close().await;
    }
}

#[tokio::test]
async fn ollama_and_copilot_answer_through_reaperd() {
    let ollama = OllamaServer::start(ollama::Script::answering(CODER, "settings.apply();"));
    let copilot = CopilotServer::start(copilot::Script {
        oauth_token: "gho_e2e".into(),
        refresh_in: 1500,
        answer: "vec![1, 2, 3]".into(),
        pace: Duration::from_millis(5),
    });
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("github-copilot")).unwrap();
    std::fs::write(
        home.path().join("github-copilot/hosts.json"),
        r#"{"github.com":{"user":"octo","oauth_token":"gho_e2e"}}"#,
    )
    .unwrap();
    let config = format!(
        "[providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"{CODER}\"\n\n\
         [providers.copilot]\nkind = \"copilot\"\nbase_url = \"{}\"\npriority = 1\n",
        ollama.url(),
        copilot.url()
    );
    let home_str = home.path().display().to_string();
    let daemon = Daemon::start_with(&config, &[("XDG_CONFIG_HOME", &home_str)]);
    let client = connect(&daemon).await;
    wait_status(&client, "ollama", ProviderStatus::Available).await;
    let copilot_info = wait_status(&client, "copilot", ProviderStatus::Available).await;
    assert_eq!(copilot_info.auth_status, AuthStatus::Authenticated);
    let answer = complete_within(&client, &request("/w/a.rs", "fn a() {\n    "), 5000)
        .await
        .unwrap();
    assert_eq!(
        (answer.provider.as_str(), answer.completion.as_str()),
        ("ollama", "settings.apply();")
    );
    drop(ollama);
    // Ollama gone: the next completion falls through to Copilot, and the status says why.
    let answer = complete_within(&client, &request("/w/b.rs", "fn b() {\n    "), 5000)
        .await
        .unwrap();
    assert_eq!(
        (answer.provider.as_str(), answer.completion.as_str()),
        ("copilot", "vec![1, 2, 3]")
    );
    let list = client.providers().await.unwrap();
    let down = list.providers.iter().find(|p| p.name == "ollama").unwrap();
    assert_eq!(down.status, ProviderStatus::Unavailable);
    assert!(
        down.message
            .as_deref()
            .unwrap_or("")
            .contains("cannot reach"),
        "{down:?}"
    );
    let cli = daemon.cli(&["providers"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        text.contains("ollama") && text.contains("cannot reach"),
        "{text}"
    );
}

/// One fault of a provider, as the client sees it through the daemon.
struct Case {
    name: &'static str,
    /// The provider's table (its base_url is filled in).
    table: &'static str,
    trouble: Option<Trouble>,
    /// Expected code with the offline fallback disabled, and a piece of the message.
    code: Code,
    says: &'static str,
}

#[tokio::test]
async fn every_provider_fault_gets_a_status_and_a_message_and_the_daemon_keeps_serving() {
    let status = |status, error: &str, headers: Vec<(String, String)>| {
        Some(Trouble::Status {
            status,
            error: error.into(),
            headers,
        })
    };
    let cases = vec![
        Case {
            name: "connection refused",
            table: "",
            trouble: None,
            code: Code::Unavailable,
            says: "cannot reach",
        },
        Case {
            name: "hang past the budget",
            table: "timeout_ms = 300\n",
            trouble: Some(Trouble::Hang),
            code: Code::DeadlineExceeded,
            says: "did not answer within 300 ms",
        },
        Case {
            name: "401",
            table: "",
            trouble: status(401, "unauthorized", vec![]),
            code: Code::FailedPrecondition,
            says: "refused the credentials (HTTP 401",
        },
        Case {
            name: "429 + Retry-After",
            table: "",
            trouble: status(
                429,
                "rate limit exceeded",
                vec![("Retry-After".into(), "7".into())],
            ),
            code: Code::ResourceExhausted,
            says: "asking again in 7 s",
        },
        Case {
            name: "500 with a JSON error",
            table: "",
            trouble: status(500, "CUDA error: out of memory", vec![]),
            code: Code::Unavailable,
            says: "HTTP 500: CUDA error: out of memory",
        },
        Case {
            name: "malformed NDJSON line",
            table: "",
            trouble: Some(Trouble::MalformedLine),
            code: Code::Unavailable,
            says: "malformed answer",
        },
        Case {
            name: "stream dropped mid-answer",
            table: "",
            trouble: Some(Trouble::DropMidStream),
            code: Code::Unavailable,
            says: "closed the stream",
        },
        Case {
            name: "slow first byte (600 ms)",
            table: "",
            trouble: Some(Trouble::SlowFirstByte(Duration::from_millis(600))),
            code: Code::Ok,
            says: "",
        },
    ];
    let mut table = Vec::new();
    for case in cases {
        let mut script = ollama::Script::answering(CODER, "let answer = 42;");
        script.trouble = case.trouble.clone();
        let server = OllamaServer::start(script);
        let url = if case.trouble.is_none() {
            WireServer::refused_url()
        } else {
            server.url()
        };
        for offline in [false, true] {
            let config = format!(
                "[providers.model]\nkind = \"ollama\"\nbase_url = \"{url}\"\nmodel = \"{CODER}\"\n{}\n[providers.offline]\nenabled = {offline}\n",
                case.table
            );
            let daemon = Daemon::start_with(&config, &[]);
            let client = connect(&daemon).await;
            let started = Instant::now();
            let result =
                complete_within(&client, &request("/w/f.rs", "fn f() {\n    "), 3000).await;
            let took = started.elapsed();
            let (code, message, provider) = match &result {
                Ok(r) => (Code::Ok, String::new(), r.provider.clone()),
                Err(e) => (e.status().code, e.status().message.clone(), String::new()),
            };
            if offline {
                // With the fallback on, the editor always gets an answer in time.
                assert_eq!(code, Code::Ok, "{}: {message}", case.name);
                let expected = if case.code == Code::Ok {
                    "model"
                } else {
                    "offline"
                };
                assert_eq!(provider, expected, "{}", case.name);
            } else {
                assert_eq!(code, case.code, "{}: {message}", case.name);
                assert!(message.contains(case.says), "{}: {message}", case.name);
            }
            // And the daemon goes on serving everyone else.
            client.health().await.unwrap();
            table.push(format!(
                "| {} | offline {} | {} | {} ms | {} |",
                case.name,
                if offline { "on" } else { "off" },
                if code == Code::Ok {
                    format!("OK from {provider}")
                } else {
                    code.name().to_owned()
                },
                took.as_millis(),
                message.replace('|', "/")
            ));
            if case.code == Code::ResourceExhausted && !offline {
                let list = client.providers().await.unwrap();
                assert_eq!(list.providers[0].status, ProviderStatus::RateLimited);
            }
            client.close().await;
        }
    }
    eprintln!(
        "| fault | fallback | client saw | time to answer | message |\n|---|---|---|---|---|\n{}",
        table.join("\n")
    );
}

/// The model request whose connection the client closed before the stream ended, waiting
/// (3 s at most) for one.
async fn closed_early(server: &Arc<OllamaServer>) -> Option<reaper_testkit::Seen> {
    let server = server.clone();
    tokio::task::spawn_blocking(move || {
        server.wire().wait_for(Duration::from_secs(3), |s| {
            s.request.path == "/api/generate" && s.closed_early
        })
    })
    .await
    .unwrap()
}

/// A completion running in a task of its own, with a 20 s deadline.
fn spawn_completion(
    client: &Arc<Client>,
    file: &'static str,
    prefix: &'static str,
) -> tokio::task::JoinHandle<Result<CompletionResponse, Error>> {
    let client = client.clone();
    tokio::spawn(async move { complete_within(&client, &request(file, prefix), 20_000).await })
}

/// A daemon whose one provider streams 200 tokens at 20 ms each (4 s), with a client on it.
async fn slow_model() -> (Arc<OllamaServer>, Daemon, Arc<Client>) {
    let mut script = ollama::Script::answering(CODER, &"word ".repeat(200));
    script.pace = Duration::from_millis(20);
    let server = Arc::new(OllamaServer::start(script));
    let config = format!(
        "[providers.model]\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"{CODER}\"\ntimeout_ms = 20000\n",
        server.url()
    );
    let daemon = Daemon::start_with(&config, &[]);
    let client = Arc::new(connect(&daemon).await);
    wait_status(&client, "model", ProviderStatus::Available).await;
    (server, daemon, client)
}

#[tokio::test]
async fn a_superseded_completion_closes_its_request_to_the_model() {
    let (server, _daemon, client) = slow_model().await;
    let older = spawn_completion(&client, "/w/s.rs", "fn s() { x");
    // Let the older request reach the model and stream a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let superseded_at = Instant::now();
    // The user typed on: a newer completion for the same file.
    let newer = spawn_completion(&client, "/w/s.rs", "fn s() { xy");
    let err = older.await.unwrap().unwrap_err();
    assert_eq!(err.status().code, Code::Cancelled, "{err}");
    let seen = closed_early(&server)
        .await
        .expect("the model server saw the superseded request's connection close");
    assert!(!seen.finished);
    let after = seen.ended.saturating_duration_since(superseded_at);
    eprintln!(
        "the model server saw the connection close {} ms after the newer call was sent",
        after.as_millis()
    );
    assert!(after < Duration::from_secs(1), "{after:?}");
    newer.abort();
    let health = client.health().await.unwrap();
    assert!(health.providers[0].cancelled >= 1, "{:?}", health.providers);
}

#[test]
fn check_config_names_each_missing_key_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reaper.toml");
    std::fs::write(
        &config,
        "[providers.claude]\nkind = \"anthropic\"\nmodel = \"claude-haiku-4-5\"\napi_key_env = \"REAPER_TEST_UNSET_KEY\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(daemon::reaperd_bin())
        .args(["--config", config.to_str().unwrap(), "--check-config"])
        .env_remove("REAPER_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("provider claude: kind anthropic"),
        "{stdout}"
    );
    assert!(
        stdout.contains("REAPER_TEST_UNSET_KEY, which is not set"),
        "{stdout}"
    );
    let output = std::process::Command::new(daemon::reaperd_bin())
        .args(["--config", config.to_str().unwrap(), "--check-config"])
        .env("REAPER_TEST_UNSET_KEY", "sk-ant-secret-value")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stdout).contains("sk-ant-secret-value"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[providers.claude]\nkind = \"anthropic\"\n").unwrap();
    let output = std::process::Command::new(daemon::reaperd_bin())
        .args(["--config", bad.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("[providers.claude]") && stderr.contains("missing key `model`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_editor_that_disconnects_stops_its_completions_at_the_model() {
    let (server, _daemon, client) = slow_model().await;
    let call = spawn_completion(&client, "/w/d.rs", "fn d() { x");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The editor goes away (closed, crashed, restarted) with the completion in flight.
    client.close().await;
    let closed_at = Instant::now();
    let _ = call.await;
    let seen = closed_early(&server)
        .await
        .expect("the model server saw the orphaned request's connection close");
    assert!(seen.ended.saturating_duration_since(closed_at) < Duration::from_secs(1));
    // 200 tokens at 20 ms: the stream would have run 4 s.
    assert!(
        seen.ended - seen.arrived < Duration::from_secs(2),
        "{:?}",
        seen.ended - seen.arrived
    );
}

#[tokio::test]
async fn the_model_is_shown_related_code_from_the_workspace_and_its_answer_is_tidied() {
    // A workspace with the type the cursor uses defined in another file, a .env beside it.
    let shop = reaper_testkit::workspace::Shop::new();
    let root = shop.root();
    // The model closes the call the editor already closed.
    let ollama = OllamaServer::start(ollama::Script::answering(CODER, "policy.max_attempts);"));
    let config = format!(
        "[providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"{CODER}\"\n",
        ollama.url()
    );
    let daemon = Daemon::start_with(&config, &[]);
    let client = connect(&daemon).await;
    wait_status(&client, "ollama", ProviderStatus::Available).await;
    let file = root.join("src/client.rs").display().to_string();

    // The workspace is indexed on its first completion, in the background: ask (new text
    // each time, so no cache hit) until a prompt carries the other file.
    let start = Instant::now();
    let mut asked = 0;
    let prompt = loop {
        asked += 1;
        let mut req = request(
            &file,
            &format!("fn call_{asked}(policy: &RetryPolicy, attempt: u32) -> u64 {{\n    let wait = policy.next_delay(attempt);\n    check("),
        );
        req.suffix = ");\n}\n".into();
        let answer = complete_within(&client, &req, 5000).await.unwrap();
        assert_eq!(answer.provider, "ollama");
        assert_eq!(
            answer.completion, "policy.max_attempts",
            "the doubled `);` is cut"
        );
        let seen = ollama.wire().seen();
        let prompt = seen.last().unwrap().request.json()["prompt"]
            .as_str()
            .unwrap()
            .to_owned();
        if prompt.contains("// Path: src/retry.rs") {
            break prompt;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no prompt carried the related file: {prompt}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(prompt.contains("//     pub max_attempts: u32,"), "{prompt}");
    assert!(
        prompt.contains("// Path: src/client.rs\nfn call_"),
        "{prompt}"
    );
    assert!(!prompt.contains(reaper_testkit::workspace::ENV_SECRET));
    client.close().await;
}
