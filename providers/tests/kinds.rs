//! Each provider kind against a real server where one installs (llama.cpp for the OpenAI and
//! Anthropic formats), and against a local server that follows the documented wire format
//! where none does (Ollama, Copilot's token exchange). No daemon: the providers alone.

mod common;

use common::provider;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reaper_core::schema::{ChatMessage, CompletionRequest, Role};
use reaper_providers::prompt::RepoContext;
use reaper_providers::{
    ChatInput, ChatPiece, CompletionInput, Provider, ProviderError, TokenUsage,
};
use reaper_testkit::ollama::{self, OllamaServer, Trouble};
use reaper_testkit::{copilot, CopilotServer, LlamaOptions, LlamaServer, Reply, WireServer};

fn request(prefix: &str, suffix: &str) -> CompletionRequest {
    CompletionRequest {
        prefix: prefix.into(),
        suffix: suffix.into(),
        language: "rust".into(),
        file_path: Some("/work/demo/src/main.rs".into()),
        context: None,
    }
}

async fn complete(
    provider: &dyn Provider,
    request: &CompletionRequest,
) -> Result<String, ProviderError> {
    let input = CompletionInput {
        request,
        deadline: Instant::now() + Duration::from_secs(30),
        context: &RepoContext::EMPTY,
    };
    tokio::time::timeout(Duration::from_secs(30), provider.complete(input))
        .await
        .expect("a completion ends within 30 s")
        .map(|p| p.text)
}

async fn chat(provider: &dyn Provider, question: &str) -> Result<String, ProviderError> {
    chat_counted(provider, question).await.map(|(text, _)| text)
}

/// A chat answer's text, and the token counts the server reported.
async fn chat_counted(
    provider: &dyn Provider,
    question: &str,
) -> Result<(String, Option<TokenUsage>), ProviderError> {
    let messages = [ChatMessage {
        role: Role::User,
        content: question.into(),
        timestamp: 0,
    }];
    let input = ChatInput {
        messages: &messages,
        system: Some("Answer briefly."),
        max_tokens: 24,
    };
    let mut stream = provider.chat(input).await?;
    let mut text = String::new();
    let mut deltas = 0;
    let mut usage = None;
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a chat piece within 30 s")
    {
        match piece? {
            ChatPiece::Text(delta) => {
                assert!(usage.is_none(), "the counts come after the text");
                text.push_str(&delta);
                deltas += 1;
            }
            ChatPiece::Usage(counted) => usage = Some(counted),
            ChatPiece::ToolCall(call) => panic!("a plain chat made a call: {call:?}"),
        }
    }
    assert!(deltas >= 1);
    Ok((text, usage))
}

// ---- Ollama (a local server in Ollama's documented format) ----

const CODER: &str = "qwen2.5-coder:1.5b";

fn ollama_table(url: &str, model: &str) -> String {
    format!("kind = \"ollama\"\nbase_url = \"{url}\"\nmodel = \"{model}\"\n")
}

#[tokio::test]
async fn ollama_fills_in_the_middle_with_the_suffix_and_keeps_the_model_loaded() {
    let server = OllamaServer::start(ollama::Script::answering(CODER, "settings.apply();"));
    let p = provider(&ollama_table(&server.url(), CODER), &[]);
    let report = p.probe().await.unwrap();
    assert_eq!(report.note, None, "a FIM model needs no note");
    let text = complete(&*p, &request("fn main() {\n    ", "\n}\n"))
        .await
        .unwrap();
    assert_eq!(text, "settings.apply();");
    let generate = server
        .wire()
        .wait_for(Duration::from_secs(2), |s| {
            s.request.path == "/api/generate" && s.finished
        })
        .expect("the whole answer went out");
    let body = generate.request.json();
    assert_eq!(body["suffix"], "\n}\n");
    assert_eq!(body["prompt"], "fn main() {\n    ");
    assert_eq!(body["keep_alive"], "30m");
    assert_eq!(body["stream"], true);
    assert_eq!(body["options"]["num_predict"], 64);
    assert!(body.get("raw").is_none());
}

#[tokio::test]
async fn an_ollama_model_without_fim_is_given_the_prefix_raw_and_says_so() {
    let mut script = ollama::Script::answering("mistral-chat", "x + 1");
    script.insert = false;
    let server = OllamaServer::start(script);
    let p = provider(&ollama_table(&server.url(), "mistral-chat"), &[]);
    // Before any probe, the first `suffix` is refused (400 "does not support insert"): the
    // provider learns, and asks again without it, in the same call.
    let text = complete(&*p, &request("let y = ", ";")).await.unwrap();
    assert_eq!(text, "x + 1");
    let bodies: Vec<_> = server
        .wire()
        .seen()
        .iter()
        .map(|s| s.request.json())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[1]["raw"], true);
    assert!(bodies[1].get("suffix").is_none());
    assert!(!p.capabilities().fim);
    let note = p.probe().await.unwrap().note.unwrap();
    assert!(note.contains("no FIM"), "{note}");
}

#[tokio::test]
async fn an_ollama_model_of_a_known_family_without_insert_gets_its_fim_tokens_raw() {
    // A model imported without a FIM template, but named for its family: reaper writes the
    // family's tokens itself.
    let mut script = ollama::Script::answering("starcoder2-local", "x + 1");
    script.insert = false;
    let server = OllamaServer::start(script);
    let p = provider(&ollama_table(&server.url(), "starcoder2-local"), &[]);
    let text = complete(&*p, &request("let y = ", ";")).await.unwrap();
    assert_eq!(text, "x + 1");
    let seen = server.wire().seen();
    let last = seen.last().expect("a request").request.json();
    assert_eq!(
        last["prompt"],
        "<fim_prefix>let y = <fim_suffix>;<fim_middle>"
    );
    assert_eq!(last["raw"], true);
    assert_eq!(
        last["options"]["stop"],
        // Mid-line: one line is wanted, so the answer stops at its end.
        serde_json::json!(["\n", "<|endoftext|>", "<file_sep>", "<fim_prefix>"])
    );
    assert!(p.capabilities().fim);
}

#[tokio::test]
async fn an_ollama_model_that_is_not_pulled_says_how_to_pull_it() {
    let server = OllamaServer::start(ollama::Script::answering(CODER, "x"));
    let p = provider(&ollama_table(&server.url(), "llama9"), &[]);
    let error = p.probe().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::ModelNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("ollama pull llama9"), "{error}");
    let error = complete(&*p, &request("a", "")).await.unwrap_err();
    assert!(
        error.to_string().contains("model 'llama9' not found"),
        "{error}"
    );
}

#[tokio::test]
async fn ollama_chat_streams_its_deltas() {
    let server = OllamaServer::start(ollama::Script::answering(CODER, "Use a mutex here."));
    let p = provider(&ollama_table(&server.url(), CODER), &[]);
    let (text, usage) = chat_counted(&*p, "How?").await.unwrap();
    assert_eq!(text, "Use a mutex here.");
    // Ollama's last line counts the prompt (26 in the test server) and the answer's tokens.
    assert_eq!(
        usage,
        Some(TokenUsage {
            input: 26,
            output: ollama::tokens("Use a mutex here.").len() as u32
        })
    );
    let body = server.wire().seen()[0].request.json();
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "How?");
}

#[tokio::test]
async fn ollama_faults_become_errors_that_say_what_happened() {
    let cases: Vec<(Trouble, &str)> = vec![
        (Trouble::MalformedLine, "malformed answer"),
        (
            Trouble::ErrorLine("llama runner process has terminated".into()),
            "llama runner process has terminated",
        ),
        (Trouble::DropMidStream, "closed the stream"),
        (
            Trouble::Status {
                status: 500,
                error: "CUDA out of memory".into(),
                headers: vec![],
            },
            "HTTP 500: CUDA out of memory",
        ),
        (
            Trouble::Status {
                status: 429,
                error: "slow down".into(),
                headers: vec![("Retry-After".into(), "3".into())],
            },
            "asking again in 3 s",
        ),
    ];
    for (trouble, expected) in cases {
        let mut script = ollama::Script::answering(CODER, "let a = b;");
        script.trouble = Some(trouble.clone());
        let server = OllamaServer::start(script);
        let p = provider(&ollama_table(&server.url(), CODER), &[]);
        let error = complete(&*p, &request("x", "")).await.unwrap_err();
        assert!(
            error.to_string().contains(expected),
            "{trouble:?} -> {error}"
        );
    }
}

#[tokio::test]
async fn dropping_a_completion_closes_the_connection_before_the_stream_ends() {
    let mut script = ollama::Script::answering(CODER, &"token ".repeat(100));
    script.pace = Duration::from_millis(20);
    let server = OllamaServer::start(script);
    let p = provider(&ollama_table(&server.url(), CODER), &[]);
    let task = tokio::spawn(async move { complete(&*p, &request("x", "")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    task.abort();
    let seen = tokio::task::spawn_blocking(move || {
        let seen = server.wire().wait_for(Duration::from_secs(2), |s| {
            s.request.path == "/api/generate" && (s.closed_early || s.finished)
        });
        (seen, server)
    })
    .await
    .unwrap()
    .0
    .expect("the server noticed the request end");
    assert!(seen.closed_early && !seen.finished, "{seen:?}");
    // 200 tokens at 20 ms would take 4 s; the connection closed right after the abort.
    assert!(
        seen.ended - seen.arrived < Duration::from_secs(1),
        "{:?}",
        seen.ended - seen.arrived
    );
}

#[tokio::test]
async fn a_keep_alive_connection_the_server_closed_is_not_a_failure() {
    // The second request reuses the first one's connection, which the server closes without
    // answering (it had timed it out); the third, on a new connection, is answered.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let server = WireServer::start(move |_| {
        let models = Reply::json(
            200,
            &serde_json::json!({"data": [{"id": "m", "owned_by": "vllm"}]}),
        );
        match counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            1 => Reply::Close,
            _ => models,
        }
    });
    let table = format!(
        "kind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"m\"\n",
        server.url()
    );
    let p = provider(&table, &[]);
    p.probe().await.expect("first probe");
    p.probe()
        .await
        .expect("the closed connection is retried on a new one");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    // A server that closes every connection unanswered is still a failure, not a loop.
    let closing = WireServer::start(|_| Reply::Close);
    let table = format!(
        "kind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"m\"\n",
        closing.url()
    );
    assert!(provider(&table, &[]).probe().await.is_err());
    assert_eq!(closing.seen().len(), 2, "one request and one retry");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_with_the_url() {
    let url = WireServer::refused_url();
    let p = provider(&ollama_table(&url, CODER), &[]);
    let error = complete(&*p, &request("x", "")).await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unreachable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&url), "{error}");
}

// ---- Copilot (a local server in Copilot's format) ----

fn copilot_script() -> copilot::Script {
    copilot::Script {
        oauth_token: "gho_test_oauth".into(),
        refresh_in: 1500,
        answer: "vec![1, 2, 3]".into(),
        pace: Duration::from_millis(5),
    }
}

/// A Copilot provider whose GitHub token comes from `api_key_env` (the one the server takes).
fn copilot_with_key(server: &CopilotServer) -> Arc<dyn Provider> {
    let table = format!(
        "kind = \"copilot\"\nbase_url = \"{}\"\napi_key_env = \"GH_OAUTH\"\n",
        server.url()
    );
    provider(&table, &[("GH_OAUTH", "gho_test_oauth")])
}

fn sign_in(dir: &std::path::Path, token: &str) {
    let copilot = dir.join("github-copilot");
    std::fs::create_dir_all(&copilot).unwrap();
    std::fs::write(
        copilot.join("apps.json"),
        format!(r#"{{"github.com:Iv1.b507a08c87ecfe98":{{"user":"octo","oauth_token":"{token}","githubAppId":"Iv1.b507a08c87ecfe98"}}}}"#),
    )
    .unwrap();
}

#[tokio::test]
async fn copilot_exchanges_the_editor_sign_in_once_and_completes() {
    let server = CopilotServer::start(copilot_script());
    let home = tempfile::tempdir().unwrap();
    sign_in(home.path(), "gho_test_oauth");
    let config_home = home.path().display().to_string();
    let p = provider(
        &format!("kind = \"copilot\"\nbase_url = \"{}\"\n", server.url()),
        &[("XDG_CONFIG_HOME", &config_home)],
    );
    assert_eq!(
        p.probe().await.unwrap().note,
        None,
        "gpt-41-copilot is listed"
    );
    for _ in 0..2 {
        let text = complete(&*p, &request("let v = ", ";")).await.unwrap();
        assert_eq!(text, "vec![1, 2, 3]");
    }
    assert_eq!(
        server.exchanges(),
        1,
        "the Copilot token is reused until refresh_in"
    );
    let seen = server.wire().seen();
    let call = seen
        .iter()
        .find(|s| s.request.path == "/v1/engines/gpt-41-copilot/completions")
        .unwrap();
    assert_eq!(call.request.json()["suffix"], ";");
    assert_eq!(call.request.header("openai-intent"), Some("copilot-ghost"));
    assert!(call.request.header("editor-version").is_some());
    assert_eq!(chat(&*p, "What is this?").await.unwrap(), "vec![1, 2, 3]");
}

#[tokio::test]
async fn copilot_refreshes_its_token_after_refresh_in() {
    let mut script = copilot_script();
    script.refresh_in = 1;
    let server = CopilotServer::start(script);
    let p = copilot_with_key(&server);
    complete(&*p, &request("a", "")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    complete(&*p, &request("a", "")).await.unwrap();
    assert_eq!(server.exchanges(), 2);
}

#[tokio::test]
async fn a_copilot_token_refused_early_is_exchanged_again_within_the_call() {
    let server = CopilotServer::start(copilot_script());
    let p = copilot_with_key(&server);
    complete(&*p, &request("a", "")).await.unwrap();
    server.revoke_tokens();
    assert_eq!(
        complete(&*p, &request("a", "")).await.unwrap(),
        "vec![1, 2, 3]"
    );
    assert_eq!(server.exchanges(), 2);
}

#[tokio::test]
async fn copilot_without_a_sign_in_says_how_to_sign_in() {
    let server = CopilotServer::start(copilot_script());
    let home = tempfile::tempdir().unwrap();
    let config_home = home.path().display().to_string();
    let table = format!("kind = \"copilot\"\nbase_url = \"{}\"\n", server.url());
    let p = provider(&table, &[("XDG_CONFIG_HOME", &config_home)]);
    let error = p.probe().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::NotSignedIn { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("apps.json"), "{error}");
    sign_in(home.path(), "gho_revoked");
    let error = p.probe().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("Bad credentials"), "{error}");
    assert_eq!(server.exchanges(), 1);
}

// ---- OpenAI-compatible servers that are not llama.cpp ----

/// An OpenAI-compatible server that, like LM Studio, answers a route it does not have with
/// 200 and a JSON error, and completes with SSE.
fn lm_studio_like() -> WireServer {
    WireServer::start(|request| {
        match request.path.as_str() {
        "/v1/models" => Reply::json(200, &serde_json::json!({"object": "list", "data": [{"id": "qwen2.5-coder-7b", "object": "model", "owned_by": "organization_owner"}]})),
        "/v1/completions" => Reply::Stream {
            status: 200,
            content_type: "text/event-stream".into(),
            pieces: vec![
                (Duration::ZERO, b"data: {\"choices\":[{\"index\":0,\"text\":\"42\",\"finish_reason\":null}]}\n\n".to_vec()),
                (Duration::ZERO, b"data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n".to_vec()),
                (Duration::ZERO, b"data: [DONE]\n\n".to_vec()),
            ],
            fault: None,
        },
        "/moved/v1/models" => Reply::Body {
            status: 307,
            headers: vec![("Location".into(), "http://elsewhere.example/v1/models".into())],
            body: Vec::new(),
        },
        _ => Reply::json(200, &serde_json::json!({"error": format!("Unexpected endpoint or method. ({} {})", request.method, request.path)})),
    }
    })
}

#[tokio::test]
async fn a_server_without_infill_that_answers_200_still_gets_completions() {
    let server = lm_studio_like();
    // Without a probe first: /infill answers 200 with a JSON error, which is not an answer.
    let p = provider(&openai_table(&server.url(), "qwen2.5-coder-7b"), &[]);
    assert_eq!(
        complete(&*p, &request("let x = ", ";")).await.unwrap(),
        "42"
    );
    assert_eq!(
        complete(&*p, &request("let x = ", ";")).await.unwrap(),
        "42"
    );
    let infills = server
        .seen()
        .iter()
        .filter(|s| s.request.path == "/infill")
        .count();
    assert_eq!(infills, 1, "tried once, then never again");
    // With a probe first: not llama.cpp, so /infill is never tried.
    let p = provider(&openai_table(&server.url(), "qwen2.5-coder-7b"), &[]);
    p.probe().await.unwrap();
    complete(&*p, &request("let x = ", ";")).await.unwrap();
    let infills = server
        .seen()
        .iter()
        .filter(|s| s.request.path == "/infill")
        .count();
    assert_eq!(infills, 1);
}

#[tokio::test]
async fn redirects_are_refused_not_followed() {
    let server = lm_studio_like();
    let p = provider(&openai_table(&format!("{}/moved", server.url()), "m"), &[]);
    let error = p.probe().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("redirected to http://elsewhere.example/v1/models"),
        "{error}"
    );
}

// ---- llama.cpp, for real: the OpenAI and Anthropic formats ----

/// One llama.cpp server for the tests of this binary that only read from it.
fn llama() -> &'static LlamaServer {
    static SERVER: OnceLock<LlamaServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        LlamaServer::start(LlamaOptions {
            api_key: None,
            parallel: 2,
        })
    })
}

fn openai_table(base: &str, model: &str) -> String {
    format!("kind = \"openai\"\nbase_url = \"{base}/v1\"\nmodel = \"{model}\"\nmax_tokens = 12\n")
}

#[tokio::test]
async fn openai_kind_completes_against_llama_cpp_falling_back_from_infill() {
    let server = llama();
    let p = provider(&openai_table(server.base_url(), server.model()), &[]);
    p.probe().await.unwrap();
    assert!(
        p.capabilities().fim,
        "not known yet: /infill is tried first"
    );
    let text = complete(&*p, &request("def add(a, b):\n    return", "\n"))
        .await
        .unwrap();
    assert!(!text.trim().is_empty(), "{text:?}");
    // SmolLM2 has no FIM tokens: llama.cpp answered /infill with 501, and the provider
    // completed with /v1/completions instead, and says so from now on.
    assert!(!p.capabilities().fim);
    let note = p.probe().await.unwrap().note.unwrap();
    // llama.cpp says how many requests it serves at once (`/props`): two here.
    assert_eq!(p.backend_slots(), Some(2));
    assert!(note.contains("no FIM"), "{note}");
    let (answer, usage) = chat_counted(&*p, "Say hello.").await.unwrap();
    assert!(!answer.trim().is_empty());
    // Asked for with stream_options.include_usage: llama.cpp counts both sides.
    let usage = usage.expect("llama.cpp reports the tokens used");
    assert!(
        usage.input > 0 && usage.output > 0 && usage.output <= 24,
        "{usage:?}"
    );
}

#[tokio::test]
async fn openai_kind_reports_a_model_the_server_does_not_serve() {
    let server = llama();
    let p = provider(&openai_table(server.base_url(), "gpt-5"), &[]);
    let error = p.probe().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::ModelNotFound { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("smollm2"),
        "lists what is served: {error}"
    );
}

#[tokio::test]
async fn anthropic_kind_fills_the_hole_and_chats_against_llama_cpp() {
    let server = llama();
    let table = format!(
        "kind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"{}\"\nmax_tokens = 16\n",
        server.base_url(),
        server.model()
    );
    let p = provider(&table, &[]);
    p.probe().await.unwrap();
    let text = complete(&*p, &request("fn main() {\n    println!(", ");\n}\n")).await;
    // A 135M model may answer with nothing worth proposing; the stream must still parse.
    text.unwrap();
    let (answer, usage) = chat_counted(&*p, "Say hello.").await.unwrap();
    assert!(!answer.trim().is_empty());
    // message_start counts the prompt, message_delta the answer.
    let usage = usage.expect("the Messages stream reports the tokens used");
    assert!(
        usage.input > 0 && usage.output > 0 && usage.output <= 24,
        "{usage:?}"
    );
}

#[tokio::test]
async fn keys_are_read_from_the_named_variable_and_refusals_say_which() {
    let server = LlamaServer::start(LlamaOptions {
        api_key: Some("sekret".into()),
        parallel: 1,
    });
    let table = format!(
        "{}api_key_env = \"TEST_KEY\"\n",
        openai_table(server.base_url(), server.model())
    );
    let missing = provider(&table, &[]);
    let error = missing.probe().await.unwrap_err();
    assert!(matches!(error, ProviderError::MissingKey { .. }), "{error}");
    assert!(error.to_string().contains("TEST_KEY"));
    let wrong = provider(&table, &[("TEST_KEY", "guess")]);
    let error = wrong.probe().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("$TEST_KEY"), "{error}");
    assert!(
        !error.to_string().contains("guess"),
        "the key never appears: {error}"
    );
    let right = provider(&table, &[("TEST_KEY", "sekret")]);
    right.probe().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_completion_stops_llama_cpp_generating() {
    let server = Arc::new(LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 1,
    }));
    let table = format!(
        "kind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{}\"\nmax_tokens = 4000\ntimeout_ms = 60000\n",
        server.base_url(),
        server.model()
    );
    let p = provider(&table, &[]);
    let task = tokio::spawn(async move {
        let long = request("Once upon a time, in a land far away, there lived", "");
        complete(&*p, &long).await
    });
    let watcher = server.clone();
    let started = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while !watcher.generating() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "llama.cpp never started generating"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    started.await.unwrap();
    task.abort();
    let aborted = Instant::now();
    let watcher = server.clone();
    let stopped = tokio::task::spawn_blocking(move || {
        while watcher.generating() {
            if aborted.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(aborted.elapsed())
    })
    .await
    .unwrap();
    // 4,000 tokens at ~100-130 tokens/s would keep the slot busy for over 30 s.
    let took = stopped.expect("llama.cpp stopped generating within 5 s of the cancel");
    eprintln!(
        "llama.cpp stopped generating {} ms after the cancel",
        took.as_millis()
    );
}

/// A chat that gave way to a completion is asked again with what it said as the assistant's
/// last message; the server goes on from there instead of starting over. llama.cpp does in both
/// formats (deterministic here: SmolLM2 counts on).
#[tokio::test]
async fn llama_cpp_goes_on_from_a_prefilled_answer_in_both_formats() {
    let server = llama();
    let messages = [
        ChatMessage {
            role: Role::User,
            content: "Count from one to ten in words.".into(),
            timestamp: 0,
        },
        ChatMessage {
            role: Role::Assistant,
            content: "One, two, three, four,".into(),
            timestamp: 0,
        },
    ];
    for table in [
        openai_table(server.base_url(), server.model()),
        format!(
            "kind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"{}\"\n",
            server.base_url(),
            server.model()
        ),
    ] {
        let p = provider(&table, &[]);
        let input = ChatInput {
            messages: &messages,
            system: None,
            max_tokens: 4,
        };
        let mut stream = p.chat(input).await.unwrap();
        let mut text = String::new();
        while let Some(piece) = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
        {
            if let ChatPiece::Text(delta) = piece.unwrap() {
                text.push_str(&delta);
            }
        }
        assert!(text.starts_with(" five"), "{table}: {text:?}");
    }
}
