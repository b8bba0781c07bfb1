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

use crate::script::{streamed, Answer, Format, Trouble};
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
}

impl Script {
    /// A model that answers `answer`, a token per word-ish piece, at 10 ms.
    pub fn answering(model: &str, answer: &str) -> Script {
        Script {
            model: model.to_owned(),
            tokens: crate::ollama::tokens(answer),
            pace: Duration::from_millis(10),
            trouble: None,
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
            chat(script, body["stream_options"]["include_usage"] == true)
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

fn chat(script: &Script, include_usage: bool) -> Reply {
    let model = script.model.as_str();
    let tokens = script
        .tokens
        .iter()
        .map(|t| event(chunk(model, json!({ "content": t }), None)))
        .collect();
    let mut end = vec![event(chunk(model, json!({}), Some("stop")))];
    if include_usage {
        let n = script.tokens.len();
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
