//! A local server in Anthropic's Messages format, as Anthropic documents its streaming
//! (`POST /v1/messages` with `"stream": true`): `message_start` (with the prompt's
//! `input_tokens`), `content_block_start`, a `ping`, one `content_block_delta` (`text_delta`)
//! per token, `content_block_stop`, `message_delta` (with the cumulative `output_tokens`),
//! `message_stop`; an `error` event in their place when the API fails mid-answer
//! (`overloaded_error`), and errors as `{"type": "error", "error": {"type", "message"}}` with
//! the API's statuses (429 `rate_limit_error`, 529 `overloaded_error`). `GET /v1/models` lists
//! the model. Requests without `anthropic-version`, or without the configured `x-api-key`, are
//! refused as the API refuses them. llama.cpp's `/v1/messages` is tested too; this one is for
//! exact tokens at a set pace and the faults.

use std::time::Duration;

use serde_json::json;

use crate::script::{argument_pieces, streamed, Answer, Format, ModelTurn, Responder, Trouble};
use crate::wire::{Reply, Request, WireServer};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// The model it serves, e.g. `claude-haiku-4-5`.
    pub model: String,
    /// The API key it demands in `x-api-key`.
    pub api_key: String,
    /// The tokens of every answer.
    pub tokens: Vec<String>,
    /// The pause before each token.
    pub pace: Duration,
    /// How `/v1/messages` misbehaves, if it does. `ErrorLine`'s text is the error's type
    /// (`overloaded_error`).
    pub trouble: Option<Trouble>,
    /// An agent's model: answers (text and `tool_use` blocks) decided from the conversation,
    /// in place of `tokens`.
    pub responder: Option<Responder>,
}

impl Script {
    /// A model that answers `answer`, a token per word-ish piece, at 10 ms.
    pub fn answering(model: &str, api_key: &str, answer: &str) -> Script {
        Script {
            model: model.to_owned(),
            api_key: api_key.to_owned(),
            tokens: crate::ollama::tokens(answer),
            pace: Duration::from_millis(10),
            trouble: None,
            responder: None,
        }
    }
}

/// An Anthropic-format server; stopped when dropped.
#[derive(Debug)]
pub struct AnthropicServer {
    server: WireServer,
}

impl AnthropicServer {
    /// Starts it with `script`.
    pub fn start(script: Script) -> AnthropicServer {
        AnthropicServer {
            server: WireServer::start(move |request| route(&script, request)),
        }
    }

    /// The base URL to configure (the API's paths start with `/v1`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The underlying server, for what it saw.
    pub fn wire(&self) -> &WireServer {
        &self.server
    }
}

/// The error type the API names for `status`.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({
            "type": "error",
            "error": {"type": error_type(status), "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }),
    )
}

fn route(script: &Script, request: &Request) -> Reply {
    if request.header("anthropic-version").is_none() {
        return error(400, "anthropic-version: header is required");
    }
    if request.header("x-api-key") != Some(script.api_key.as_str()) {
        return error(401, "invalid x-api-key");
    }
    match (
        request.method.as_str(),
        request.path.split('?').next().unwrap_or(""),
    ) {
        ("GET", "/v1/models") => Reply::json(
            200,
            &json!({
                "data": [{"type": "model", "id": script.model, "display_name": script.model, "created_at": "2025-10-01T00:00:00Z"}],
                "has_more": false,
                "first_id": script.model,
                "last_id": script.model,
            }),
        ),
        ("POST", "/v1/messages") => {
            let body = request.json();
            if body["model"] != script.model.as_str() {
                return error(404, &format!("model: {}", body["model"]));
            }
            let turn = match &script.responder {
                Some(responder) => responder.turn(&body["messages"]),
                None => ModelTurn::default(),
            };
            messages(script, &turn)
        }
        _ => error(404, "Not found"),
    }
}

fn event(name: &str, data: serde_json::Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The answer: a text block of the script's tokens (or the turn's text), then a `tool_use`
/// block per call with its input streamed as `input_json_delta` pieces, as Anthropic streams
/// them, and the `stop_reason` that says which (`tool_use` or `end_turn`).
fn messages(script: &Script, turn: &ModelTurn) -> Reply {
    let text_tokens = match &script.responder {
        Some(_) => crate::ollama::tokens(&turn.text),
        None => script.tokens.clone(),
    };
    let head = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                "content": [], "model": script.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let mut tokens: Vec<Vec<u8>> = text_tokens
        .iter()
        .map(|t| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            )
        })
        .collect();
    tokens.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    for (n, (name, input)) in turn.calls.iter().enumerate() {
        let index = n + 1;
        tokens.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": format!("toolu_01A09q90qw90lq917835lq{index}"), "name": name, "input": {}}}),
        ));
        for piece in argument_pieces(input) {
            tokens.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        tokens.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop_reason = if turn.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let end = vec![
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": text_tokens.len()}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ];
    let format = Format {
        content_type: "text/event-stream; charset=utf-8",
        malformed:
            b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\n\n",
        error_piece: &|kind| {
            let message = if kind == "overloaded_error" {
                "Overloaded"
            } else {
                "Internal server error"
            };
            event(
                "error",
                json!({"type": "error", "error": {"type": kind, "message": message}}),
            )
        },
        error_reply: &error,
    };
    let answer = Answer { head, tokens, end };
    streamed(&format, script.pace, answer, script.trouble.as_ref())
}
