//! What the scripted model servers share: the faults a streamed answer can have, and how a
//! stream of tokens is laid out with them, whatever the API's own format.

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
