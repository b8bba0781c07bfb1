//! `docs/protocol.md` must show the bytes this code really produces: the hex dumps of a
//! complete `Health.check` call in it are checked here.

use reaper_core::schema::*;
use reaper_core::wire::{self, RequestHead};
use reaper_core::{Encoding, Method, Status, Token, WireMessage};

/// The example token used in the document (never a real one).
fn example_token() -> Token {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    Token::from_bytes(bytes)
}

fn example_response() -> HealthResponse {
    HealthResponse {
        status: ServingStatus::Serving,
        version: "0.1.0".into(),
        uptime_s: 42,
        connections: 1,
        requests: 7,
        errors: 0,
        error_rate: 0.0,
        // Every method, in the order the daemon lists them.
        calls: Method::ALL
            .iter()
            .map(|m| {
                let (served, failed) = match m {
                    Method::CompletionComplete => (3, 0),
                    Method::HealthCheck => (4, 0),
                    _ => (0, 0),
                };
                MethodCalls {
                    method: m.path().into(),
                    served,
                    failed,
                }
            })
            .collect(),
        latency: LatencySummary {
            count: 7,
            p50_us: 18,
            p90_us: 25,
            p99_us: 31,
            p999_us: 31,
            max_us: 31,
            mean_us: 19.5,
        },
        cache: CacheStats {
            entries: 3,
            hits: 2,
            misses: 3,
            evictions: 0,
            typed_through: 1,
        },
        providers: vec![ProviderStats {
            name: "offline".into(),
            answered: 3,
            errors: 0,
            cancelled: 0,
            hedged: 0,
            chats: 0,
            chat_yields: 0,
            p50_us: 96,
            p95_us: 180,
        }],
        feedback: FeedbackStats {
            shown: 2,
            accepted: 1,
            rejected: 0,
            accepted_chars: 17,
        },
        budgets: BudgetStats {
            buffered_request_bytes: 0,
            max_buffered_requests: 67_108_864,
            handshakes: 0,
            max_handshakes: 64,
            index_bytes: 1_048_576,
            max_index_bytes: 2_147_483_648,
            workspaces: 1,
            connection_window: 4_194_304,
            unauthenticated_window: 65_536,
        },
    }
}

/// The chat call the document shows: one question, and its answer in two deltas.
fn chat_request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: "Say hi.".into(),
            timestamp: 1_796_330_103,
        }],
        model: None,
        max_tokens: Some(16),
        provider: None,
    }
}

fn chat_chunks() -> Vec<ChatChunk> {
    let text = |delta: &str| ChatChunk {
        delta: delta.into(),
        done: false,
        provider: None,
        model: None,
        usage: None,
    };
    vec![
        text("Hi"),
        text("!"),
        ChatChunk {
            delta: String::new(),
            done: true,
            provider: Some("local".into()),
            model: Some("qwen2.5-coder-1.5b".into()),
            usage: Some(ChatUsage {
                input_tokens: 9,
                output_tokens: 2,
            }),
        },
    ]
}

fn chat_request_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    RequestHead {
        method: Method::ChatSend.path().into(),
        encoding: Encoding::Json,
        deadline_ms: 30_000,
        token: example_token(),
    }
    .encode(&mut out);
    let mut message = Vec::new();
    chat_request().encode(Encoding::Json, &mut message).unwrap();
    wire::encode_message(&message, &mut out);
    out
}

fn chat_response_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chat_chunks() {
        let mut message = Vec::new();
        chunk.encode(Encoding::Json, &mut message).unwrap();
        wire::encode_message(&message, &mut out);
    }
    wire::encode_trailer(&Status::ok(), &mut out);
    out
}

fn request_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    RequestHead {
        method: "reaper.Health/check".into(),
        encoding: Encoding::Json,
        deadline_ms: 1000,
        token: example_token(),
    }
    .encode(&mut out);
    let mut message = Vec::new();
    HealthRequest {}
        .encode(Encoding::Json, &mut message)
        .unwrap();
    wire::encode_message(&message, &mut out);
    out
}

fn response_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    let mut message = Vec::new();
    example_response()
        .encode(Encoding::Json, &mut message)
        .unwrap();
    wire::encode_message(&message, &mut out);
    wire::encode_trailer(&Status::ok(), &mut out);
    out
}

/// 16 bytes a line: offset, hex, and the printable characters.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = line
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:04x}  {:<47}  {}\n",
            i * 16,
            hex.join(" "),
            text
        ));
    }
    out
}

fn block(doc: &str, tag: &str) -> String {
    let fence = format!("```text {tag}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/protocol.md has no block tagged `{tag}`"))
        + fence.len();
    let end = start + doc[start..].find("```").expect("block is closed");
    doc[start..end].to_owned()
}

#[test]
fn the_documents_hex_dumps_are_what_the_code_produces() {
    let doc = include_str!("../../docs/protocol.md");
    let request = hex_dump(&request_bytes());
    let response = hex_dump(&response_bytes());
    assert_eq!(
        block(doc, "request"),
        request,
        "request dump in docs/protocol.md is stale:\n{request}"
    );
    assert_eq!(
        block(doc, "response"),
        response,
        "response dump in docs/protocol.md is stale:\n{response}"
    );
    let json = String::from_utf8(response_bytes()[5..response_bytes().len() - 6].to_vec()).unwrap();
    assert!(
        doc.contains(&json),
        "the response JSON shown in the document is stale:\n{json}"
    );
}

#[test]
fn the_documents_chat_dumps_are_what_the_code_produces() {
    let doc = include_str!("../../docs/protocol.md");
    let request = hex_dump(&chat_request_bytes());
    let response = hex_dump(&chat_response_bytes());
    assert_eq!(
        block(doc, "chat-request"),
        request,
        "chat request dump in docs/protocol.md is stale:\n{request}"
    );
    assert_eq!(
        block(doc, "chat-response"),
        response,
        "chat response dump in docs/protocol.md is stale:\n{response}"
    );
    for chunk in chat_chunks() {
        let json = serde_json::to_string(&chunk).unwrap();
        assert!(doc.contains(&json), "the document lacks the chunk {json}");
    }
    let json = serde_json::to_string(&chat_request()).unwrap();
    assert!(doc.contains(&json), "the document lacks the request {json}");
}

#[test]
fn the_example_token_is_the_one_the_document_shows() {
    let doc = include_str!("../../docs/protocol.md");
    assert!(doc.contains(&example_token().to_hex()));
}

/// Prints every dump and JSON the document shows, for updating it after a schema change:
/// `cargo test -p reaper-core --test protocol_doc -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_the_documents_dumps() {
    println!("request\n{}", hex_dump(&request_bytes()));
    println!("response\n{}", hex_dump(&response_bytes()));
    let response = response_bytes();
    println!(
        "response JSON\n{}\n",
        String::from_utf8_lossy(&response[5..response.len() - 6])
    );
    println!("chat-request\n{}", hex_dump(&chat_request_bytes()));
    println!("chat-response\n{}", hex_dump(&chat_response_bytes()));
    println!(
        "chat JSON\n{}",
        serde_json::to_string(&chat_request()).unwrap()
    );
    for chunk in chat_chunks() {
        println!("{}", serde_json::to_string(&chunk).unwrap());
    }
}
