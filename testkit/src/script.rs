//! What the scripted model servers share: the faults a streamed answer can have, and how a
//! stream of tokens is laid out with them, whatever the API's own format.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::{Fault, Reply};

/// What can go wrong at a generation endpoint.
#[derive(Debug, Clone)]
pub enum Trouble {
    /// The request is read and never answered.
    Hang,
    /// An error status with the API's JSON error body, and optional headers.
    Status {
        /// The status.
        status: u16,
        /// The error's text.
        error: String,
        /// Extra headers (e.g. `Retry-After`).
        headers: Vec<(String, String)>,
    },
    /// After two tokens, a line (or event) that is not the API's JSON.
    MalformedLine,
    /// After two tokens, the API's error object in the stream, and its end (what Ollama does
    /// when the runner fails mid-answer, Anthropic's `overloaded_error` event, an OpenAI-style
    /// `{"error": ...}` chunk). The text is the error's message (for Anthropic, its type).
    ErrorLine(String),
    /// After two tokens, the connection closes.
    DropMidStream,
    /// Nothing is sent for this long, then the answer.
    SlowFirstByte(Duration),
}

/// How one API writes a streamed answer.
pub(crate) struct Format<'a> {
    /// `Content-Type` of the stream.
    pub content_type: &'a str,
    /// A piece that breaks the format.
    pub malformed: &'a [u8],
    /// The API's error object in the stream, for [`Trouble::ErrorLine`].
    pub error_piece: &'a dyn Fn(&str) -> Vec<u8>,
    /// The API's error answer, for [`Trouble::Status`].
    pub error_reply: &'a dyn Fn(u16, &str) -> Reply,
}

/// A streamed answer: what opens it, a piece per token, and what closes it.
pub(crate) struct Answer {
    /// Sent before the tokens, whatever the trouble (Anthropic's `message_start`).
    pub head: Vec<Vec<u8>>,
    /// One piece per token.
    pub tokens: Vec<Vec<u8>>,
    /// The pieces that close the stream.
    pub end: Vec<Vec<u8>>,
}

/// The reply streaming `answer`, each piece after `pace`, with `trouble` if any (faults
/// mid-answer come after two tokens).
pub(crate) fn streamed(
    format: &Format<'_>,
    pace: Duration,
    answer: Answer,
    trouble: Option<&Trouble>,
) -> Reply {
    let Answer { head, tokens, end } = answer;
    let opened = head.len();
    let mut pieces: Vec<(Duration, Vec<u8>)> =
        head.into_iter().chain(tokens).map(|p| (pace, p)).collect();
    let ending = |pieces: &mut Vec<(Duration, Vec<u8>)>| {
        pieces.extend(end.iter().map(|p| (pace, p.clone())));
    };
    let mut fault = None;
    match trouble {
        None => ending(&mut pieces),
        Some(Trouble::Hang) => return Reply::Hang,
        Some(Trouble::Status {
            status,
            error,
            headers,
        }) => {
            let mut reply = (format.error_reply)(*status, error);
            for (name, value) in headers {
                reply = reply.with_header(name, value);
            }
            return reply;
        }
        Some(Trouble::MalformedLine) => {
            pieces.truncate(opened + 2);
            pieces.push((pace, format.malformed.to_vec()));
            ending(&mut pieces);
        }
        Some(Trouble::ErrorLine(error)) => {
            pieces.truncate(opened + 2);
            pieces.push((pace, (format.error_piece)(error)));
        }
        Some(Trouble::DropMidStream) => {
            pieces.truncate(opened + 2);
            fault = Some(Fault::Drop);
        }
        Some(Trouble::SlowFirstByte(delay)) => {
            ending(&mut pieces);
            return Reply::Delayed(
                *delay,
                Box::new(Reply::Stream {
                    status: 200,
                    content_type: format.content_type.into(),
                    pieces,
                    fault: None,
                }),
            );
        }
    }
    Reply::Stream {
        status: 200,
        content_type: format.content_type.into(),
        pieces,
        fault,
    }
}

/// A model's turn in an agent's conversation, as a test scripts it: text, then tool calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTurn {
    /// What it says.
    pub text: String,
    /// The tools it calls, by name, with their arguments.
    pub calls: Vec<(String, serde_json::Value)>,
}

impl ModelTurn {
    /// A turn that only speaks (the end of a task).
    pub fn says(text: &str) -> ModelTurn {
        ModelTurn {
            text: text.to_owned(),
            calls: Vec::new(),
        }
    }

    /// A turn that calls one tool.
    pub fn calls(name: &str, arguments: serde_json::Value) -> ModelTurn {
        ModelTurn {
            text: String::new(),
            calls: vec![(name.to_owned(), arguments)],
        }
    }
}

type Decide = dyn Fn(&serde_json::Value) -> ModelTurn + Send + Sync;

/// What a scripted model answers, decided from the request's conversation (its `messages`) as
/// a model would: the same conversation, the same answer.
#[derive(Clone)]
pub struct Responder(Arc<Decide>);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl Responder {
    /// Answers with `decide(messages)`.
    pub fn new(decide: impl Fn(&serde_json::Value) -> ModelTurn + Send + Sync + 'static) -> Self {
        Responder(Arc::new(decide))
    }

    /// Answers the n-th turn with `turns[n]` (n: the assistant turns already in the
    /// conversation), and with the last one after that.
    pub fn steps(turns: Vec<ModelTurn>) -> Responder {
        Responder::new(move |messages| {
            let n = assistant_turns(messages);
            turns.get(n).or(turns.last()).cloned().unwrap_or_default()
        })
    }

    /// The turn for `messages`.
    pub fn turn(&self, messages: &serde_json::Value) -> ModelTurn {
        (self.0)(messages)
    }
}

/// The assistant turns in a request's `messages`.
pub fn assistant_turns(messages: &serde_json::Value) -> usize {
    messages
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
}

/// The text of the last tool result in a request's `messages`, in any of the three formats
/// (OpenAI's and Ollama's `tool` messages, Anthropic's `tool_result` blocks).
pub fn last_tool_result(messages: &serde_json::Value) -> Option<String> {
    let last = messages.as_array()?.last()?;
    if last["role"] == "tool" {
        return last["content"].as_str().map(str::to_owned);
    }
    let blocks = last["content"].as_array()?;
    let block = blocks.iter().rev().find(|b| b["type"] == "tool_result")?;
    match &block["content"] {
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// A call's arguments as a JSON text cut in pieces of a few bytes (at character boundaries),
/// as models stream them; at most about 256 pieces (a file of megabytes in a call comes in
/// larger ones).
pub(crate) fn argument_pieces(arguments: &serde_json::Value) -> Vec<String> {
    let text = arguments.to_string();
    let size = (text.len() / 256).max(7);
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for c in text.chars() {
        piece.push(c);
        if piece.len() >= size {
            pieces.push(std::mem::take(&mut piece));
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}
