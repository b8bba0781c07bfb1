//! End to end: `reaper.Chat/send` through a real `reaperd` over QUIC, from a real llama.cpp
//! server (OpenAI and Anthropic formats) and from local servers in the OpenAI, Anthropic and
//! Ollama formats for exact tokens, large answers and faults; `reaper chat` driven as a user
//! would.

mod daemon;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::Daemon;
use futures::StreamExt;
use reaper_client::schema::*;
use reaper_client::{CallOptions, Client, Code, Encoding, Error, Method};
use reaper_core::wire;
use reaper_testkit::anthropic::{self, AnthropicServer};
use reaper_testkit::ollama::{self, OllamaServer};
use reaper_testkit::openai::{self, OpenAiServer};
use reaper_testkit::{LlamaOptions, LlamaServer, Trouble};

async fn connect(daemon: &Daemon, encoding: Encoding) -> Client {
    let mut options = daemon.options();
    options.encoding = encoding;
    Client::connect(options).await.unwrap()
}

fn question(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: text.into(),
            timestamp: 1_796_330_103,
        }],
        model: None,
        max_tokens: None,
        provider: None,
    }
}

/// An answer as the client saw it: its chunks, and how the call ended.
struct Seen {
    chunks: Vec<ChatChunk>,
    /// When each chunk arrived, from the call's start.
    at: Vec<Duration>,
    ended: Result<(), Error>,
}

impl Seen {
    fn text(&self) -> String {
        self.chunks.iter().map(|c| c.delta.as_str()).collect()
    }

    fn last(&self) -> &ChatChunk {
        self.chunks.last().expect("at least one chunk")
    }

    fn status(&self) -> (Code, String) {
        match &self.ended {
            Ok(()) => (Code::Ok, String::new()),
            Err(e) => (e.status().code, e.status().message),
        }
    }
}

async fn chat(client: &Client, request: &ChatRequest, deadline: Option<Duration>) -> Seen {
    let started = Instant::now();
    let mut seen = Seen {
        chunks: Vec::new(),
        at: Vec::new(),
        ended: Ok(()),
    };
    let mut stream = match client.chat(request, CallOptions { deadline }).await {
        Ok(stream) => stream,
        Err(e) => {
            seen.ended = Err(e);
            return seen;
        }
    };
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("a chunk or the end within 60 s");
        match next {
            Some(Ok(chunk)) => {
                seen.chunks.push(chunk);
                seen.at.push(started.elapsed());
            }
            Some(Err(e)) => {
                seen.ended = Err(e);
                break;
            }
            None => break,
        }
    }
    seen
}

fn openai_table(name: &str, url: &str, model: &str) -> String {
    format!("[providers.{name}]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"{model}\"\n")
}

#[tokio::test]
async fn llama_cpp_answers_in_several_deltas_in_both_encodings_and_both_formats() {
    let llama = LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 1,
    });
    for kind in ["openai", "anthropic"] {
        let base = match kind {
            "openai" => format!("{}/v1", llama.base_url()),
            _ => llama.base_url().to_owned(),
        };
        let config = format!(
            "[providers.local]\nkind = \"{kind}\"\nbase_url = \"{base}\"\nmodel = \"{}\"\n",
            llama.model()
        );
        let daemon = Daemon::start_with(&config, &[]);
        for encoding in [Encoding::Json, Encoding::Rkyv] {
            let client = connect(&daemon, encoding).await;
            let mut request = question("Name three colours.");
            request.max_tokens = Some(24);
            let seen = chat(&client, &request, None).await;
            assert!(seen.ended.is_ok(), "{kind}: {:?}", seen.status());
            let texts = seen.chunks.iter().filter(|c| !c.delta.is_empty()).count();
            assert!(texts >= 3, "{kind}: {texts} deltas");
            // Only the last chunk is done, and it says who answered and what it cost.
            assert!(seen.chunks[..seen.chunks.len() - 1].iter().all(|c| !c.done));
            let last = seen.last();
            assert!(last.done);
            assert_eq!(last.provider.as_deref(), Some("local"));
            assert_eq!(last.model.as_deref(), Some(llama.model()));
            let usage = last.usage.expect("llama.cpp counts the tokens");
            assert!(usage.input_tokens > 0, "{usage:?}");
            assert!(
                (texts as u32..=24).contains(&usage.output_tokens),
                "{kind}: {usage:?} for {texts} deltas"
            );
            assert!(!seen.text().trim().is_empty());
            client.close().await;
        }
        let client = connect(&daemon, Encoding::Json).await;
        let health = client.health().await.unwrap();
        let chat = health
            .calls
            .iter()
            .find(|c| c.method == Method::ChatSend.path())
            .unwrap();
        assert_eq!((chat.served, chat.failed), (2, 0), "{kind}");
    }
}

#[tokio::test]
async fn cancelling_mid_answer_stops_llama_cpp_generating() {
    let llama = LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 1,
    });
    let daemon = Daemon::start_with(
        &openai_table("local", &format!("{}/v1", llama.base_url()), llama.model()),
        &[],
    );
    let client = connect(&daemon, Encoding::Rkyv).await;
    let mut request = question("Write a long story about a lighthouse keeper.");
    request.max_tokens = Some(1500);
    let mut stream = client.chat(&request, CallOptions::default()).await.unwrap();
    for _ in 0..3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!chunk.done);
    }
    assert!(llama.generating(), "llama.cpp is generating the answer");
    let cancelled = Instant::now();
    drop(stream);
    // 1,500 tokens take llama.cpp over 10 s here; it stops as soon as the daemon drops the
    // HTTP request.
    while llama.generating() {
        assert!(
            cancelled.elapsed() < Duration::from_secs(5),
            "llama.cpp still generating 5 s after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "llama.cpp stopped generating {} ms after the client cancelled",
        cancelled.elapsed().as_millis()
    );
    let health = client.health().await.unwrap();
    let chat = health
        .calls
        .iter()
        .find(|c| c.method == Method::ChatSend.path())
        .unwrap();
    assert_eq!((chat.served, chat.failed), (0, 1));
}

#[tokio::test]
async fn deltas_are_forwarded_in_order_as_they_are_generated() {
    let words: Vec<String> = (0..60).map(|i| format!("w{i:02} ")).collect();
    let server = OpenAiServer::start(openai::Script {
        model: "coder".into(),
        tokens: words.clone(),
        pace: Duration::from_millis(20),
        trouble: None,
        responder: None,
    });
    let daemon = Daemon::start_with(&openai_table("local", &server.url(), "coder"), &[]);
    let client = connect(&daemon, Encoding::Json).await;
    let seen = chat(&client, &question("Count."), None).await;
    assert!(seen.ended.is_ok(), "{:?}", seen.status());
    assert_eq!(seen.text(), words.concat());
    // Each token is a chunk of its own, the moment it arrives: the first long before the
    // last (60 tokens at 20 ms take 1.2 s).
    assert_eq!(seen.chunks.len(), 61);
    let (first, last) = (seen.at[0], *seen.at.last().unwrap());
    assert!(
        first * 4 < last,
        "first delta at {first:?}, last at {last:?}: buffered?"
    );
    assert_eq!(
        seen.last().usage,
        Some(ChatUsage {
            input_tokens: 19,
            output_tokens: 60
        })
    );
    let body = server
        .wire()
        .seen()
        .into_iter()
        .find(|s| s.request.path == "/v1/chat/completions")
        .unwrap()
        .request
        .json();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0]["content"], "Count.");
    assert_eq!(body["max_tokens"], 1024, "the default answer length");
}

/// Opens a JSON chat on `conn` asking `question`, sending the request whole.
async fn open_chat(
    daemon: &Daemon,
    conn: &quinn::Connection,
    question_text: &str,
) -> quinn::RecvStream {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut bytes = daemon::head_json(daemon, Method::ChatSend);
    let request = serde_json::to_vec(&question(question_text)).unwrap();
    wire::encode_message(&request, &mut bytes);
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    recv
}

/// Reads a chat's answer to its OK trailer: the text.
async fn read_answer(recv: &mut quinn::RecvStream) -> String {
    let mut decoder = wire::FrameDecoder::new(wire::Side::Response, 8 << 20);
    let mut text = String::new();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "read it all within 60 s"
        );
        let Some(chunk) = recv.read_chunk(1 << 20, true).await.unwrap() else {
            panic!("the stream ended without a trailer");
        };
        decoder.push(chunk.bytes);
        while let Some(frame) = decoder.next_frame().unwrap() {
            match frame {
                wire::Frame::Message(m) => {
                    let chunk: ChatChunk = serde_json::from_slice(&m).unwrap();
                    text.push_str(&chunk.delta);
                }
                wire::Frame::Trailer(status) => {
                    assert_eq!(status.code, Code::Ok, "{status}");
                    return text;
                }
                wire::Frame::Head(_) => unreachable!(),
            }
        }
    }
}

/// A piece of an answer larger than a chunk is sent in several, whole characters each, far
/// below the client's message limit.
#[tokio::test]
async fn a_piece_larger_than_a_chunk_is_cut_at_a_character() {
    let huge = "é".repeat(100_001);
    let server = OpenAiServer::start(openai::Script {
        model: "coder".into(),
        tokens: vec!["a".into(), huge.clone(), "z".into()],
        pace: Duration::from_millis(5),
        trouble: None,
        responder: None,
    });
    let daemon = Daemon::start_with(&openai_table("local", &server.url(), "coder"), &[]);
    let client = connect(&daemon, Encoding::Rkyv).await;
    let seen = chat(&client, &question("Say it."), None).await;
    assert!(seen.ended.is_ok(), "{:?}", seen.status());
    assert_eq!(seen.text(), format!("a{huge}z"));
    assert!(seen.chunks.len() >= 5, "{} chunks", seen.chunks.len());
    assert!(seen.chunks.iter().all(|c| c.delta.len() <= 64 * 1024));
}

/// A client that opens a chat and reads nothing, while the model streams 22 MB as fast as it
/// can: the daemon takes what the client's QUIC window, the call's unsent budget and its
/// credit hold, then stops reading the model's HTTP body (the model server is held back by
/// TCP). Once the client reads, everything arrives, in order.
#[tokio::test]
async fn a_reader_that_stops_reading_holds_the_model_back_within_a_memory_bound() {
    const TOKENS: usize = 20_000;
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| format!("{i:06}{}", "x".repeat(1018)))
        .collect();
    let server = OpenAiServer::start(openai::Script {
        model: "firehose".into(),
        tokens: tokens.clone(),
        pace: Duration::ZERO,
        trouble: None,
        responder: None,
    });
    let daemon = Daemon::start_with(&openai_table("local", &server.url(), "firehose"), &[]);
    let (_endpoint, conn) = daemon::raw_connection(&daemon).await;
    // A whole answer read at full speed first: what any chat allocates (the HTTP
    // connection, buffers, the provider threads' stacks) is in the baseline.
    let started = Instant::now();
    let mut recv = open_chat(&daemon, &conn, "Stream.").await;
    let warm = read_answer(&mut recv).await;
    assert!(warm == tokens.concat(), "every token, in order");
    eprintln!(
        "a reader at full speed: {} MB in {} ms",
        warm.len() / 1_000_000,
        started.elapsed().as_millis()
    );
    let before = daemon.rss_kib();
    let mut recv = open_chat(&daemon, &conn, "Stream again.").await;
    // Nothing is read for 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled = daemon.rss_kib();
    let seen = server.wire().seen();
    let chats: Vec<_> = seen
        .iter()
        .filter(|s| s.request.path == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2);
    assert!(
        !chats[1].finished,
        "the model server is held back, not drained"
    );
    let growth = stalled.saturating_sub(before);
    eprintln!(
        "stalled reader: daemon RSS {before} KiB before, {stalled} KiB after 3 s (+{growth} KiB) while the model had {} MB more to send",
        TOKENS * 1100 / 1_000_000
    );
    assert!(
        growth < 8 * 1024,
        "RSS grew {growth} KiB with a stalled reader"
    );
    // Now read it all: every token, in order, then OK.
    let text = read_answer(&mut recv).await;
    assert!(text == tokens.concat(), "every token, in order");
}

/// One fault of a provider mid-chat, as the client sees it through the daemon.
struct Fault {
    name: &'static str,
    trouble: Trouble,
    code: Code,
    says: &'static str,
    /// Text the client saw before the end (faults after the first words keep them).
    before: &'static str,
}

#[tokio::test]
async fn faults_end_the_answer_with_the_providers_own_words_and_the_daemon_serves_on() {
    let answer = "one two three four";
    let status = |status, error: &str, headers: Vec<(&str, &str)>| Trouble::Status {
        status,
        error: error.into(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
    };
    let faults = [
        Fault {
            name: "500 before the first byte",
            trouble: status(500, "CUDA error: out of memory", vec![]),
            code: Code::Unavailable,
            says: "HTTP 500: CUDA error: out of memory",
            before: "",
        },
        Fault {
            name: "429 + Retry-After",
            trouble: status(429, "Rate limit reached", vec![("Retry-After", "7")]),
            code: Code::ResourceExhausted,
            says: "asking again in 7 s",
            before: "",
        },
        Fault {
            name: "dropped mid-answer",
            trouble: Trouble::DropMidStream,
            code: Code::Unavailable,
            says: "closed the stream before the answer was complete",
            before: "one ",
        },
        Fault {
            name: "malformed event",
            trouble: Trouble::MalformedLine,
            code: Code::Unavailable,
            says: "malformed answer",
            before: "one ",
        },
        Fault {
            name: "error chunk mid-answer",
            trouble: Trouble::ErrorLine("the KV cache is full".into()),
            code: Code::Unavailable,
            says: "the KV cache is full",
            before: "one ",
        },
    ];
    let mut table = Vec::new();
    for fault in faults {
        let mut script = openai::Script::answering("coder", answer);
        script.trouble = Some(fault.trouble.clone());
        let server = OpenAiServer::start(script);
        let daemon = Daemon::start_with(&openai_table("local", &server.url(), "coder"), &[]);
        let client = connect(&daemon, Encoding::Rkyv).await;
        let seen = chat(&client, &question("Count."), None).await;
        let (code, message) = seen.status();
        assert_eq!(code, fault.code, "{}: {message}", fault.name);
        assert!(message.contains(fault.says), "{}: {message}", fault.name);
        assert_eq!(seen.text(), fault.before, "{}", fault.name);
        assert!(seen.chunks.iter().all(|c| !c.done), "{}", fault.name);
        table.push(format!(
            "| {} | {} | {:?} | {} |",
            fault.name,
            code.name(),
            seen.text(),
            message.replace('|', "/")
        ));
        if code == Code::ResourceExhausted {
            let list = client.providers().await.unwrap();
            assert_eq!(list.providers[0].status, ProviderStatus::RateLimited);
        }
        // The daemon serves on.
        client.health().await.unwrap();
        client.close().await;
    }

    // Anthropic's overloaded_error after the first words: RESOURCE_EXHAUSTED, in its words.
    let mut script = anthropic::Script::answering("claude-haiku-4-5", "sk-ant-test", answer);
    script.trouble = Some(Trouble::ErrorLine("overloaded_error".into()));
    let server = AnthropicServer::start(script);
    let config = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-haiku-4-5\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\n",
        server.url()
    );
    let env = [("TEST_ANTHROPIC_KEY", "sk-ant-test")];
    let says = "overloaded_error: Overloaded";
    let row = mid_answer(&config, &env, Code::ResourceExhausted, says).await;
    table.push(format!("| anthropic overloaded_error mid-answer {row}"));

    // Ollama's runner failing mid-answer.
    let mut script = ollama::Script::answering("llama3.2", answer);
    let says = "llama runner process has terminated";
    script.trouble = Some(Trouble::ErrorLine(says.into()));
    let server = OllamaServer::start(script);
    let config = format!(
        "[providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"llama3.2\"\n",
        server.url()
    );
    let row = mid_answer(&config, &[], Code::Unavailable, says).await;
    table.push(format!("| ollama error line mid-answer {row}"));
    eprintln!(
        "| fault | client saw | text before | message |\n|---|---|---|---|\n{}",
        table.join("\n")
    );
}

/// A chat through a daemon with `config` whose provider fails after the first words: it ends
/// with `code` and a message that `says` the provider's own words, after "one ". The rest of a
/// table row.
async fn mid_answer(config: &str, env: &[(&str, &str)], code: Code, says: &str) -> String {
    let daemon = Daemon::start_with(config, env);
    let client = connect(&daemon, Encoding::Json).await;
    let seen = chat(&client, &question("Count."), None).await;
    let (got, message) = seen.status();
    assert_eq!(got, code, "{message}");
    assert!(message.contains(says), "{message}");
    assert_eq!(seen.text(), "one ");
    client.close().await;
    format!("| {} | {:?} | {message} |", code.name(), seen.text())
}

#[tokio::test]
async fn anthropic_and_ollama_answers_stream_with_their_counts() {
    let mut script =
        anthropic::Script::answering("claude-haiku-4-5", "sk-ant-test", "Use a mutex.");
    script.pace = Duration::from_millis(2);
    let claude = AnthropicServer::start(script);
    let mut script = ollama::Script::answering("llama3.2", "Use a channel.");
    script.pace = Duration::from_millis(2);
    let ollama = OllamaServer::start(script);
    let config = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-haiku-4-5\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\npriority = 1\n\n[providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"llama3.2\"\npriority = 2\n",
        claude.url(),
        ollama.url()
    );
    let daemon = Daemon::start_with(&config, &[("TEST_ANTHROPIC_KEY", "sk-ant-test")]);
    let client = connect(&daemon, Encoding::Rkyv).await;
    // The pool's first choice.
    let seen = chat(&client, &question("How?"), None).await;
    assert!(seen.ended.is_ok(), "{:?}", seen.status());
    assert_eq!(seen.text(), "Use a mutex.");
    let last = seen.last();
    assert_eq!(last.provider.as_deref(), Some("claude"));
    assert_eq!(
        last.usage,
        Some(ChatUsage {
            input_tokens: 25,
            output_tokens: 6
        })
    );
    // By model, and by provider.
    let mut by_model = question("How?");
    by_model.model = Some("llama3.2".into());
    let seen = chat(&client, &by_model, None).await;
    assert_eq!(seen.text(), "Use a channel.");
    assert_eq!(seen.last().provider.as_deref(), Some("ollama"));
    assert_eq!(
        seen.last().usage,
        Some(ChatUsage {
            input_tokens: 26,
            output_tokens: 6
        })
    );
    let mut by_provider = question("How?");
    by_provider.provider = Some("ollama".into());
    assert_eq!(
        chat(&client, &by_provider, None).await.text(),
        "Use a channel."
    );
    // The system message went the way each API takes it.
    let mut with_system = question("How?");
    with_system.messages.insert(
        0,
        ChatMessage {
            role: Role::System,
            content: "Be brief.".into(),
            timestamp: 0,
        },
    );
    assert!(chat(&client, &with_system, None).await.ended.is_ok());
    let sent = claude.wire().seen();
    let body = sent.last().unwrap().request.json();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failing_provider_gives_way_before_the_first_words() {
    let mut script = openai::Script::answering("coder", "never");
    script.trouble = Some(Trouble::Status {
        status: 503,
        error: "Loading model".into(),
        headers: vec![],
    });
    let down = OpenAiServer::start(script);
    let up = OpenAiServer::start(openai::Script::answering("coder", "from the second"));
    let config = format!(
        "{}priority = 1\n\n{}priority = 2\n",
        openai_table("first", &down.url(), "coder"),
        openai_table("second", &up.url(), "coder")
    );
    let daemon = Daemon::start_with(&config, &[]);
    let client = connect(&daemon, Encoding::Rkyv).await;
    let seen = chat(&client, &question("Who?"), None).await;
    assert!(seen.ended.is_ok(), "{:?}", seen.status());
    assert_eq!(seen.text(), "from the second");
    assert_eq!(seen.last().provider.as_deref(), Some("second"));
    let list = client.providers().await.unwrap();
    let first = list.providers.iter().find(|p| p.name == "first").unwrap();
    assert!(
        first
            .message
            .as_deref()
            .unwrap_or("")
            .contains("Loading model"),
        "{first:?}"
    );
}

#[tokio::test]
async fn a_deadline_ends_the_answer_and_drops_the_models_request() {
    let mut script = openai::Script::answering("coder", &"word ".repeat(100));
    script.pace = Duration::from_millis(50);
    let server = OpenAiServer::start(script);
    let daemon = Daemon::start_with(
        &format!(
            "{}\n[rpc]\nchat_timeout = 700\n",
            openai_table("local", &server.url(), "coder")
        ),
        &[],
    );
    let client = connect(&daemon, Encoding::Rkyv).await;
    let seen = chat(&client, &question("Talk."), None).await;
    let (code, message) = seen.status();
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("chat_timeout"), "{message}");
    assert!(
        !seen.text().is_empty(),
        "what was said before the deadline stands"
    );
    let dropped = server.wire().wait_for(Duration::from_secs(3), |s| {
        s.request.path == "/v1/chat/completions" && s.closed_early
    });
    assert!(dropped.is_some(), "the model's request was dropped");
}

#[tokio::test]
async fn wrong_names_are_refused_naming_what_exists_and_no_provider_says_how_to_add_one() {
    let server = OpenAiServer::start(openai::Script::answering("coder", "x"));
    let daemon = Daemon::start_with(&openai_table("local", &server.url(), "coder"), &[]);
    let client = connect(&daemon, Encoding::Json).await;
    let mut request = question("x");
    request.model = Some("gpt-5".into());
    let (code, message) = chat(&client, &request, None).await.status();
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(
        message,
        "no provider serves model \"gpt-5\": the models are coder (local)"
    );
    let mut request = question("x");
    request.provider = Some("offline".into());
    let (code, message) = chat(&client, &request, None).await.status();
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("does not chat"), "{message}");
    let mut request = question("x");
    request.messages.clear();
    let (code, message) = chat(&client, &request, None).await.status();
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("no user message"), "{message}");
    let mut request = question("x");
    request.max_tokens = Some(0);
    assert_eq!(
        chat(&client, &request, None).await.status().0,
        Code::InvalidArgument
    );
    assert_eq!(
        server
            .wire()
            .seen()
            .iter()
            .filter(|s| s.request.method == "POST")
            .count(),
        0,
        "no refused request reached the model"
    );

    // The embedded defaults: no chat provider at all.
    let daemon = Daemon::start();
    let client = connect(&daemon, Encoding::Rkyv).await;
    let (code, message) = chat(&client, &question("x"), None).await.status();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("no chat provider is configured"),
        "{message}"
    );
}

/// The CLI's stdout as it comes, read on a thread.
struct Output {
    text: Arc<Mutex<String>>,
}

impl Output {
    fn of(mut stdout: impl Read + Send + 'static) -> Output {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Output { text }
    }

    fn now(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits (10 s at most) until the output holds `piece`.
    fn wait_for(&self, piece: &str) {
        let start = Instant::now();
        while !self.now().contains(piece) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never printed {piece:?}: {:?}",
                self.now()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn reaper_chat_prints_as_it_streams_keeps_the_conversation_and_ctrl_c_stops_only_the_answer() {
    let mut script = openai::Script::answering("coder", "alpha beta gamma delta");
    script.pace = Duration::from_millis(150);
    let server = OpenAiServer::start(script);
    let daemon = Daemon::start_with(&openai_table("local", &server.url(), "coder"), &[]);

    // One question, --json: one object per chunk, the last with who answered.
    let out = daemon.cli(&["--json", "chat", "Greek letters?"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(
        lines[0],
        serde_json::json!({"delta": "alpha", "done": false})
    );
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["provider"], "local");
    assert_eq!(last["usage"]["output_tokens"], 7);

    // A conversation on standard input.
    let mut child = Command::new(daemon::reaper_bin())
        .arg("--state-dir")
        .arg(daemon.state_dir())
        .args(["chat", "--system", "Be brief."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let output = Output::of(child.stdout.take().unwrap());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let errors =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    writeln!(stdin, "first question").unwrap();
    output.wait_for("alpha beta gamma delta\n");
    // The second answer is stopped with Ctrl-C after its first word: the session goes on.
    writeln!(stdin, "second question").unwrap();
    let printed = output.now().len();
    let start = Instant::now();
    while output.now().len() <= printed + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no second answer"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let dropped = server.wire().wait_for(Duration::from_secs(5), |s| {
        s.request.path == "/v1/chat/completions" && s.closed_early
    });
    assert!(dropped.is_some(), "Ctrl-C dropped the model's request");
    writeln!(stdin, "third question").unwrap();
    let start = Instant::now();
    while output.now().matches("alpha beta gamma delta\n").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            output.now()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap().join("\n");
    assert!(status.success(), "{status}: {errors}");
    assert!(
        errors.contains("(stopped; not kept in the conversation)"),
        "{errors}"
    );
    // The third question went with the first exchange and the system message, without the
    // stopped one.
    let asked: Vec<serde_json::Value> = server
        .wire()
        .seen()
        .iter()
        .filter(|s| s.request.path == "/v1/chat/completions")
        .map(|s| s.request.json())
        .collect();
    let third = &asked.last().unwrap()["messages"];
    let said: Vec<(&str, &str)> = third
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        said,
        [
            ("system", "Be brief."),
            ("user", "first question"),
            ("assistant", "alpha beta gamma delta"),
            ("user", "third question"),
        ]
    );
}

/// A keystroke's completion while a long chat streams from the same one-slot llama.cpp: with
/// `chat_yields` the completion is answered before the chat's last chunk (the chat stopped for
/// it and went on after); without it, the completion waits for the whole answer.
#[tokio::test]
async fn a_completion_on_a_shared_local_model_does_not_wait_behind_a_chat() {
    let llama = LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 1,
    });
    for yields in [true, false] {
        let config = format!(
            "{}max_tokens = 8\ntimeout_ms = 60000\nchat_yields = {yields}\n\n[providers.offline]\nenabled = false\n\n[cache]\nenabled = false\n\n[rpc]\ncompletion_timeout = 60000\n",
            openai_table("local", &format!("{}/v1", llama.base_url()), llama.model())
        );
        let daemon = Daemon::start_with(&config, &[]);
        let client = Arc::new(connect(&daemon, Encoding::Rkyv).await);
        // The probe has told the daemon what the server is (llama.cpp, one slot).
        let start = Instant::now();
        while client.providers().await.unwrap().providers[0].status != ProviderStatus::Available {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "llama.cpp never probed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut request = question("Write a long story about a lighthouse keeper and the sea.");
        request.max_tokens = Some(250);
        let mut stream = client.chat(&request, CallOptions::default()).await.unwrap();
        for _ in 0..5 {
            let chunk = stream.next().await.unwrap().unwrap();
            assert!(!chunk.done, "the story is longer than five tokens");
        }
        let started = Instant::now();
        let completion = tokio::spawn({
            let client = client.clone();
            async move {
                let request = CompletionRequest {
                    prefix: "def greet(name):\n    return ".into(),
                    suffix: "\n".into(),
                    language: "python".into(),
                    file_path: None,
                    context: None,
                };
                let options = CallOptions {
                    deadline: Some(Duration::from_secs(60)),
                };
                let answer = client.complete(&request, options).await;
                (answer, started.elapsed())
            }
        });
        let mut story = Vec::new();
        let mut chat_ended = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            if chunk.done {
                chat_ended = Some(started.elapsed());
            }
            story.push(chunk);
        }
        let chat_ended = chat_ended.expect("the chat ends with its last chunk");
        let (answer, completed) = completion.await.unwrap();
        let answer = answer.unwrap();
        assert_eq!(answer.provider, "local");
        let health = client.health().await.unwrap();
        let local = health.providers.iter().find(|p| p.name == "local").unwrap();
        eprintln!(
            "chat_yields = {yields}: the completion took {} ms; the chat's last chunk came at {} ms; yields {}",
            completed.as_millis(),
            chat_ended.as_millis(),
            local.chat_yields
        );
        assert_eq!(local.chats, 1);
        if yields {
            assert!(
                completed < chat_ended,
                "the completion did not wait for the chat"
            );
            assert!(local.chat_yields >= 1);
            assert!(
                story.last().unwrap().usage.is_none(),
                "counts after a yield would cover only the last part"
            );
        } else {
            assert!(
                completed > chat_ended,
                "one slot: the completion waited for the chat"
            );
            assert_eq!(local.chat_yields, 0);
        }
    }
}
