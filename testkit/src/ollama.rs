//! A local server that speaks Ollama's API as Ollama documents it (`docs/api.md`) and as its
//! source writes it (`server/routes.go`): `/api/tags`, `/api/show`, `/api/generate` and
//! `/api/chat`, streamed as newline-delimited JSON (`application/x-ndjson`, chunked), one
//! line per token at the pace of a small model, Go's field order, `done_reason` and timings
//! on the last line; errors as `{"error": "..."}` with Ollama's statuses and words (404
//! `model 'x' not found`, 400 `... does not support insert`), or as a last line mid-stream.
//! No Ollama server installs from the registries these machines reach, so this is what the
//! `ollama` kind is tested against.

use std::time::Duration;

use serde_json::json;

use crate::wire::{Fault, Reply, Request, WireServer};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// The model it has pulled, e.g. `qwen2.5-coder:1.5b`.
    pub model: String,
    /// Whether the model's template uses `.Suffix` (capability `insert`).
    pub insert: bool,
    /// The tokens of every answer.
    pub tokens: Vec<String>,
    /// The pause before each token (a 1.5B model on a laptop: about 15–30 ms).
    pub pace: Duration,
    /// How `/api/generate` misbehaves, if it does.
    pub trouble: Option<Trouble>,
}

impl Script {
    /// A FIM-capable model that answers `answer`, a token per word-ish piece, at 10 ms.
    pub fn answering(model: &str, answer: &str) -> Script {
        Script {
            model: model.to_owned(),
            insert: true,
            tokens: tokens(answer),
            pace: Duration::from_millis(10),
            trouble: None,
        }
    }
}

/// Splits `text` into token-like pieces: runs of word characters and single others.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in text.chars() {
        match out.last_mut() {
            Some(last) if c.is_alphanumeric() && last.chars().all(char::is_alphanumeric) => {
                last.push(c)
            }
            _ => out.push(c.to_string()),
        }
    }
    out
}

/// What can go wrong at the generation endpoint.
#[derive(Debug, Clone)]
pub enum Trouble {
    /// The request is read and never answered.
    Hang,
    /// An error status with Ollama's JSON body, and optional headers.
    Status {
        /// The status.
        status: u16,
        /// The `error` text.
        error: String,
        /// Extra headers (e.g. `Retry-After`).
        headers: Vec<(String, String)>,
    },
    /// After two tokens, a line that is not JSON.
    MalformedLine,
    /// After two tokens, an `{"error": ...}` line and the end of the stream (what Ollama does
    /// when the runner fails mid-answer).
    ErrorLine(String),
    /// After two tokens, the connection closes.
    DropMidStream,
    /// Nothing is sent for this long, then the answer.
    SlowFirstByte(Duration),
}

/// An Ollama-format server; stopped when dropped.
#[derive(Debug)]
pub struct OllamaServer {
    server: WireServer,
}

impl OllamaServer {
    /// Starts it with `script`.
    pub fn start(script: Script) -> OllamaServer {
        OllamaServer {
            server: WireServer::start(move |request| route(&script, request)),
        }
    }

    /// `http://127.0.0.1:PORT` (Ollama's base URL has no `/v1`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The underlying server, for what it saw.
    pub fn wire(&self) -> &WireServer {
        &self.server
    }
}

const CREATED_AT: &str = "2026-11-30T09:15:27.123456789Z";

fn route(script: &Script, request: &Request) -> Reply {
    let body = request.json();
    let asked = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or("");
    let known = asked == script.model || format!("{asked}:latest") == script.model;
    match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/api/tags") => Reply::json(
            200,
            &json!({"models": [{
                "name": script.model,
                "model": script.model,
                "modified_at": "2026-11-02T10:11:12.131415161+01:00",
                "size": 986_061_892u64,
                "digest": "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
                "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"], "parameter_size": "1.5B", "quantization_level": "Q4_K_M"},
            }]}),
        ),
        ("POST", "/api/show") if known => {
            let template = if script.insert {
                "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{- else }}{{ .Prompt }}{{- end }}"
            } else {
                "{{ .Prompt }}"
            };
            let mut capabilities = vec!["completion"];
            if script.insert {
                capabilities.push("insert");
            }
            Reply::json(
                200,
                &json!({
                    "modelfile": format!("# Modelfile generated by \"ollama show\"\nFROM {}\n", script.model),
                    "parameters": "stop                           \"<|endoftext|>\"",
                    "template": template,
                    "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"], "parameter_size": "1.5B", "quantization_level": "Q4_K_M"},
                    "model_info": {"general.architecture": "qwen2"},
                    "capabilities": capabilities,
                    "modified_at": "2026-11-02T10:11:12.131415161+01:00",
                }),
            )
        }
        ("POST", "/api/show" | "/api/generate" | "/api/chat") if !known => {
            Reply::json(404, &json!({"error": format!("model '{asked}' not found")}))
        }
        ("POST", "/api/generate") => {
            let suffix = body["suffix"].as_str().unwrap_or("");
            if !suffix.is_empty() && !script.insert {
                return Reply::json(
                    400,
                    &json!({"error": format!("registry.ollama.ai/library/{} does not support insert", script.model)}),
                );
            }
            let raw = body["raw"].as_bool().unwrap_or(false);
            stream(
                script,
                |token| json!({"model": asked, "created_at": CREATED_AT, "response": token, "done": false}),
                |n| {
                    let mut last = json!({"model": asked, "created_at": CREATED_AT, "response": "", "done": true, "done_reason": "stop"});
                    if !raw {
                        last["context"] = json!([151644, 8948, 198]);
                    }
                    for (key, value) in timings(n) {
                        last[key] = json!(value);
                    }
                    last
                },
            )
        }
        ("POST", "/api/chat") => stream(
            script,
            |token| json!({"model": asked, "created_at": CREATED_AT, "message": {"role": "assistant", "content": token}, "done": false}),
            |n| {
                let mut last = json!({"model": asked, "created_at": CREATED_AT, "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop"});
                for (key, value) in timings(n) {
                    last[key] = json!(value);
                }
                last
            },
        ),
        _ => Reply::Body {
            status: 404,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"404 page not found".to_vec(),
        },
    }
}

/// The timing fields of a last line after `n` tokens, in nanoseconds.
fn timings(n: usize) -> [(&'static str, u64); 6] {
    [
        ("total_duration", 412_000_000 + n as u64 * 18_000_000),
        ("load_duration", 9_800_000),
        ("prompt_eval_count", 26),
        ("prompt_eval_duration", 130_079_000),
        ("eval_count", n as u64),
        ("eval_duration", n as u64 * 18_000_000),
    ]
}

/// An NDJSON stream of `line(token)` per token and `last(n)`, with the script's trouble.
fn stream(
    script: &Script,
    line: impl Fn(&str) -> serde_json::Value,
    last: impl Fn(usize) -> serde_json::Value,
) -> Reply {
    let ndjson = |value: serde_json::Value| {
        // Go's encoder escapes <, > and & in strings.
        let text = value
            .to_string()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026");
        format!("{text}\n").into_bytes()
    };
    let mut pieces: Vec<(Duration, Vec<u8>)> = script
        .tokens
        .iter()
        .map(|t| (script.pace, ndjson(line(t))))
        .collect();
    let mut fault = None;
    match &script.trouble {
        None => pieces.push((script.pace, ndjson(last(script.tokens.len())))),
        Some(Trouble::Hang) => return Reply::Hang,
        Some(Trouble::Status {
            status,
            error,
            headers,
        }) => {
            let mut reply = Reply::json(*status, &json!({ "error": error }));
            for (name, value) in headers {
                reply = reply.with_header(name, value);
            }
            return reply;
        }
        Some(Trouble::MalformedLine) => {
            pieces.truncate(2);
            pieces.push((
                script.pace,
                b"{\"model\":\"x\",\"response\":\"unterminated\n".to_vec(),
            ));
            pieces.push((script.pace, ndjson(last(2))));
        }
        Some(Trouble::ErrorLine(error)) => {
            pieces.truncate(2);
            pieces.push((script.pace, ndjson(json!({ "error": error }))));
        }
        Some(Trouble::DropMidStream) => {
            pieces.truncate(2);
            fault = Some(Fault::Drop);
        }
        Some(Trouble::SlowFirstByte(delay)) => {
            pieces.push((script.pace, ndjson(last(script.tokens.len()))));
            return Reply::Delayed(
                *delay,
                Box::new(Reply::Stream {
                    status: 200,
                    content_type: "application/x-ndjson".into(),
                    pieces,
                    fault: None,
                }),
            );
        }
    }
    Reply::Stream {
        status: 200,
        content_type: "application/x-ndjson".into(),
        pieces,
        fault,
    }
}
