//! A local server in the OpenAI chat-completions format, as OpenAI documents its streaming
//! (`POST /v1/chat/completions` with `"stream": true`: server-sent events, one
//! `chat.completion.chunk` per token with the text in `choices[0].delta.content`, a last chunk
//! with `finish_reason`, the `usage` chunk (empty `choices`) when the request asked for it
//! with `stream_options.include_usage`, then `data: [DONE]`) and `GET /v1/models`. llama.cpp
//! speaks the same for real (the tests use it too); this one is for what a real server does
//! not do on demand: exact tokens at a set pace, answers of any size, and faults — an error
//! status (with `Retry-After` for 429), an `{"error": ...}` chunk mid-answer, a malformed
//! event, a dropped connection, a hang.

use std::time::Duration;

use serde_json::json;

use crate::script::{argument_pieces, streamed, Answer, Format, ModelTurn, Responder, Trouble};
use crate::wire::{Reply, Request, WireServer};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// The model it serves.
    pub model: String,
    /// The tokens of every answer.
    pub tokens: Vec<String>,
    /// The pause before each token.
    pub pace: Duration,
    /// How the chat endpoint misbehaves, if it does.
    pub trouble: Option<Trouble>,
    /// An agent's model: answers (text and tool calls) decided from the conversation, in
    /// place of `tokens`.
    pub responder: Option<Responder>,
}

impl Script {
    /// A model that answers `answer`, a token per word-ish piece, at 10 ms.
    pub fn answering(model: &str, answer: &str) -> Script {
        Script {
            model: model.to_owned(),
            tokens: crate::ollama::tokens(answer),
            pace: Duration::from_millis(10),
            trouble: None,
            responder: None,
        }
    }

    /// A model that answers each step of an agent's conversation as `responder` decides.
    pub fn acting(model: &str, responder: Responder) -> Script {
        Script {
            responder: Some(responder),
            ..Script::answering(model, "")
        }
    }
}

/// An OpenAI-format server; stopped when dropped.
#[derive(Debug)]
pub struct OpenAiServer {
    server: WireServer,
}

impl OpenAiServer {
    /// Starts it with `script`.
    pub fn start(script: Script) -> OpenAiServer {
        OpenAiServer {
            server: WireServer::start(move |request| route(&script, request)),
        }
    }

    /// The base URL to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", self.server.url())
    }

    /// The underlying server, for what it saw.
    pub fn wire(&self) -> &WireServer {
        &self.server
    }
}

const CREATED: u64 = 1_796_330_103;

fn route(script: &Script, request: &Request) -> Reply {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v1/models") => Reply::json(
            200,
            &json!({"object": "list", "data": [{"id": script.model, "object": "model", "created": CREATED, "owned_by": "organization-owner"}]}),
        ),
        ("POST", "/v1/chat/completions") => {
            let body = request.json();
            let asked = body["model"].as_str().unwrap_or("");
            if asked != script.model {
                return error(
                    404,
                    &format!("The model `{asked}` does not exist or you do not have access to it."),
                );
            }
            let turn = match &script.responder {
                Some(responder) => responder.turn(&body["messages"]),
                None => ModelTurn {
                    text: script.tokens.concat(),
                    calls: Vec::new(),
                },
            };
            let tokens = match &script.responder {
                Some(_) => crate::ollama::tokens(&turn.text),
                None => script.tokens.clone(),
            };
            chat(
                script,
                &tokens,
                &turn,
                body["stream_options"]["include_usage"] == true,
            )
        }
        _ => error(404, "Unknown request URL"),
    }
}

/// OpenAI's error body.
fn error(status: u16, message: &str) -> Reply {
    let kind = match status {
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    Reply::json(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
}

/// A short id that differs from answer to answer, as real ids do.
fn assistant_id(tokens: &[String]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

fn event(value: serde_json::Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

fn chunk(model: &str, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The answer: `tokens` of text, then `turn`'s tool calls, each opened with its id and name
/// and its arguments streamed in pieces, as OpenAI streams them (by `index`), and the
/// `finish_reason` that says which (`tool_calls` or `stop`).
fn chat(script: &Script, tokens: &[String], turn: &ModelTurn, include_usage: bool) -> Reply {
    let model = script.model.as_str();
    let mut pieces: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| event(chunk(model, json!({ "content": t }), None)))
        .collect();
    for (index, (name, arguments)) in turn.calls.iter().enumerate() {
        let id = format!("call_{}{index}", assistant_id(tokens));
        pieces.push(event(chunk(
            model,
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        )));
        for piece in argument_pieces(arguments) {
            pieces.push(event(chunk(
                model,
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                None,
            )));
        }
    }
    let tokens = pieces;
    let finish = if turn.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let mut end = vec![event(chunk(model, json!({}), Some(finish)))];
    if include_usage {
        let n = tokens.len();
        end.push(event(json!({
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 19, "completion_tokens": n, "total_tokens": 19 + n},
        })));
    }
    end.push(b"data: [DONE]\n\n".to_vec());
    let answer = Answer {
        // The first chunk names the role, with empty content.
        head: vec![event(chunk(
            model,
            json!({"role": "assistant", "content": ""}),
            None,
        ))],
        tokens,
        end,
    };
    let format = Format {
        content_type: "text/event-stream; charset=utf-8",
        malformed: b"data: {\"choices\":[{\"delta\":{\"content\":\"unterminated\n\n",
        error_piece: &|message| {
            event(
                json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}),
            )
        },
        error_reply: &error,
    };
    streamed(&format, script.pace, answer, script.trouble.as_ref())
}
