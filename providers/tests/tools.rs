//! An agent's steps (tool calling) in each API's own format: the tools and the conversation
//! as each API takes them, and the model's calls as each streams them (OpenAI's `tool_calls`
//! by index, Anthropic's `tool_use` blocks with `input_json_delta`, Ollama's whole
//! `tool_calls`), against local servers that follow the documented formats; llama.cpp takes
//! the same requests for real.

mod common;

use common::provider;
use std::time::Duration;

use futures::StreamExt;
use reaper_providers::{ChatPiece, ConverseInput, Provider, ToolCall, ToolSpec, Turn};
use reaper_testkit::{
    anthropic, last_tool_result, ollama, openai, AnthropicServer, LlamaOptions, LlamaServer,
    ModelTurn, OllamaServer, OpenAiServer, Responder,
};
use serde_json::json;

fn read_file_tool() -> ToolSpec {
    ToolSpec {
        name: "read_file".into(),
        description: "Reads a file of the workspace.".into(),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    }
}

/// A model that reads `src/lib.rs` and `Cargo.toml` at once, then says what the first held.
fn reader() -> Responder {
    Responder::new(|messages| match last_tool_result(messages) {
        None => ModelTurn {
            text: "Reading.".into(),
            calls: vec![
                ("read_file".into(), json!({"path": "src/lib.rs"})),
                (
                    "read_file".into(),
                    json!({"path": "Cargo.toml", "note": "ünïcode ✓"}),
                ),
            ],
        },
        Some(result) => ModelTurn::says(&format!("The last file said: {result}")),
    })
}

/// One step: its text, its calls, whether usage came.
async fn step(provider: &dyn Provider, turns: &[Turn]) -> (String, Vec<ToolCall>, bool) {
    let tools = [read_file_tool()];
    let input = ConverseInput {
        turns,
        tools: &tools,
        max_tokens: 64,
    };
    let mut stream = provider.converse(input).await.expect("the step starts");
    let (mut text, mut calls, mut usage) = (String::new(), Vec::new(), false);
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a piece within 30 s")
    {
        match piece.expect("no error") {
            ChatPiece::Text(t) => text.push_str(&t),
            ChatPiece::ToolCall(call) => calls.push(call),
            ChatPiece::Usage(_) => usage = true,
        }
    }
    (text, calls, usage)
}

/// Two steps against `provider`: the calls come whole, their results go back under their ids,
/// and the model's last words are read.
async fn two_steps(provider: &dyn Provider) -> Vec<Turn> {
    let mut turns = vec![
        Turn::System("You are a careful agent.".into()),
        Turn::User("What is in src/lib.rs?".into()),
    ];
    let (text, calls, usage) = step(provider, &turns).await;
    assert_eq!(text, "Reading.");
    assert!(usage, "the counts are reported");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].name, "read_file");
    assert_eq!(calls[0].arguments, json!({"path": "src/lib.rs"}));
    assert_eq!(calls[1].arguments["note"], "ünïcode ✓");
    assert_ne!(calls[0].id, calls[1].id, "each call has its own id");
    turns.push(Turn::Assistant {
        text,
        calls: calls.clone(),
    });
    for (call, content) in calls
        .iter()
        .zip(["pub fn answer() -> u32 { 42 }", "[package]"])
    {
        turns.push(Turn::Tool {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: content.into(),
            is_error: false,
        });
    }
    let (text, calls, _) = step(provider, &turns).await;
    assert!(calls.is_empty());
    assert_eq!(text, "The last file said: [package]");
    turns
}

#[tokio::test]
async fn openai_tool_calls_stream_in_pieces_and_results_go_back_by_id() {
    let server = OpenAiServer::start(openai::Script::acting("coder", reader()));
    let provider = provider(
        &format!(
            "kind = \"openai\"\nbase_url = \"{}\"\nmodel = \"coder\"",
            server.url()
        ),
        &[],
    );
    assert!(provider.capabilities().tools);
    two_steps(&*provider).await;
    let seen = server.wire().seen();
    let first = seen[0].request.json();
    assert_eq!(first["tools"][0]["type"], "function");
    assert_eq!(first["tools"][0]["function"]["name"], "read_file");
    assert_eq!(
        first["tools"][0]["function"]["parameters"]["required"][0],
        "path"
    );
    let second = seen[1].request.json();
    let messages = second["messages"].as_array().unwrap();
    let calls = &messages[2]["tool_calls"];
    assert_eq!(calls[0]["type"], "function");
    // OpenAI takes the arguments back as the JSON text it sent.
    assert!(calls[0]["function"]["arguments"].is_string());
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], calls[0]["id"]);
    assert_eq!(messages[4]["tool_call_id"], calls[1]["id"]);
}

#[tokio::test]
async fn anthropic_tool_use_blocks_and_results_in_one_user_turn() {
    let server = AnthropicServer::start(anthropic::Script {
        responder: Some(reader()),
        ..anthropic::Script::answering("claude-haiku-4-5", "sk-ant-test", "")
    });
    let provider = provider(
        &format!(
            "kind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-haiku-4-5\"\napi_key_env = \"KEY\"",
            server.url()
        ),
        &[("KEY", "sk-ant-test")],
    );
    two_steps(&*provider).await;
    let seen = server.wire().seen();
    let post = |i: usize| {
        seen.iter()
            .filter(|s| s.request.method == "POST")
            .nth(i)
            .unwrap()
            .request
            .json()
    };
    let first = post(0);
    assert_eq!(first["system"], "You are a careful agent.");
    assert_eq!(first["tools"][0]["input_schema"]["required"][0], "path");
    let second = post(1);
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "user, assistant, one user turn of results: {messages:?}"
    );
    let uses = &messages[1]["content"];
    assert_eq!(uses[1]["type"], "tool_use");
    assert_eq!(uses[1]["input"], json!({"path": "src/lib.rs"}));
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["type"], "tool_result");
    assert_eq!(results[0]["tool_use_id"], uses[1]["id"]);
    assert_eq!(results[1]["tool_use_id"], uses[2]["id"]);
}

#[tokio::test]
async fn ollama_tool_calls_come_whole_with_object_arguments() {
    let server = OllamaServer::start(ollama::Script {
        responder: Some(reader()),
        ..ollama::Script::answering("qwen2.5-coder:1.5b", "")
    });
    let provider = provider(
        &format!(
            "kind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"qwen2.5-coder:1.5b\"",
            server.url()
        ),
        &[],
    );
    two_steps(&*provider).await;
    let seen = server.wire().seen();
    let chats: Vec<_> = seen
        .iter()
        .filter(|s| s.request.path == "/api/chat")
        .map(|s| s.request.json())
        .collect();
    assert_eq!(chats[0]["tools"][0]["function"]["name"], "read_file");
    let messages = chats[1]["messages"].as_array().unwrap();
    // Ollama takes the arguments back as an object, and results by tool name.
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["arguments"],
        json!({"path": "src/lib.rs"})
    );
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_name"], "read_file");
}

#[tokio::test]
async fn copilot_says_it_does_not_call_tools() {
    let provider = provider(
        "kind = \"copilot\"\nbase_url = \"http://127.0.0.1:9\"\nmodel = \"gpt-4o\"",
        &[],
    );
    assert!(!provider.capabilities().tools);
    let turns = [Turn::User("hi".into())];
    let input = ConverseInput {
        turns: &turns,
        tools: &[],
        max_tokens: 8,
    };
    let Err(error) = provider.converse(input).await else {
        panic!("copilot conversed");
    };
    assert!(error.to_string().contains("tool"), "{error}");
}

/// llama.cpp (jinja templates on, as xllamacpp starts it) takes a conversation with tools,
/// tool calls and results in both its formats; what SmolLM2-135M does with them is its own
/// (it answers in prose: too small to choose a tool).
#[tokio::test]
async fn llama_cpp_takes_tools_and_results_in_both_formats() {
    let llama = LlamaServer::start(LlamaOptions::default());
    let turns = vec![
        Turn::System("You are a coding agent.".into()),
        Turn::User("What does src/lib.rs hold?".into()),
        Turn::Assistant {
            text: String::new(),
            calls: vec![ToolCall {
                id: "call_1".into(),
                name: "read_file".into(),
                arguments: json!({"path": "src/lib.rs"}),
            }],
        },
        Turn::Tool {
            call_id: "call_1".into(),
            name: "read_file".into(),
            content: "pub fn answer() -> u32 { 42 }".into(),
            is_error: false,
        },
    ];
    for table in [
        format!(
            "kind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{}\"",
            llama.base_url(),
            llama.model()
        ),
        format!(
            "kind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"{}\"",
            llama.base_url(),
            llama.model()
        ),
    ] {
        let provider = provider(&table, &[]);
        let (text, calls, _) = step(&*provider, &turns).await;
        assert!(!text.is_empty() || !calls.is_empty(), "{table}: an answer");
    }
}
